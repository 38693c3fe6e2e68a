"""``tls.*`` (and other security ops) of the control API.

``appliance.api.Operations`` registers these. Reading the certificate state is open to
technologists (the console shows expiry); every change of key material is service-only.
Other security ops (``audit.list``, ``signatures.verify``) are added here next to ``tls.*``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.config import ConfigStore
from appliance.control import ApiError, Caller, ControlServer


class SecurityOperations:
    """The security ops, bound to the daemon's data folder and configuration."""

    def __init__(self, *, data_dir: Path, config: ConfigStore) -> None:
        self.data_dir = Path(data_dir)
        self.config = config

    def register(self, control: ControlServer) -> None:
        open_to_all: dict[str, Callable[[dict[str, Any], Caller], Any]] = {
            "tls.show": self.tls_show,
        }
        service_only: dict[str, Callable[[dict[str, Any], Caller], Any]] = {
            "tls.generate": self.tls_generate,
            "tls.csr": self.tls_csr,
            "tls.import_cert": self.tls_import_cert,
            "tls.trust": self.tls_trust,
            "tls.untrust": self.tls_untrust,
        }
        for op, handler in open_to_all.items():
            control.register(op, handler)
        for op, handler in service_only.items():
            control.register(op, handler, service_only=True)

    # --- tls.* ---------------------------------------------------------------------------

    def tls_show(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        raise ApiError("unavailable", "certificate management is not ready")

    def tls_generate(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        raise ApiError("unavailable", "certificate management is not ready")

    def tls_csr(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        raise ApiError("unavailable", "certificate management is not ready")

    def tls_import_cert(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        raise ApiError("unavailable", "certificate management is not ready")

    def tls_trust(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        raise ApiError("unavailable", "certificate management is not ready")

    def tls_untrust(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        raise ApiError("unavailable", "certificate management is not ready")
