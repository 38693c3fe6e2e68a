"""``tls.*`` (and other security ops) of the control API.

``appliance.api.Operations`` registers these. Reading the certificate state is open to
technologists (the console shows expiry); every change of key material is service-only.
Other security ops (``audit.list``, ``signatures.verify``) are added here next to ``tls.*``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from appliance import audit, certificates
from appliance.certificates import CertificateError
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
            # The audit trail names patients: service only.
            "audit.list": self.audit_list,
        }
        for op, handler in open_to_all.items():
            control.register(op, handler)
        for op, handler in service_only.items():
            control.register(op, handler, service_only=True)

    # --- audit.* -------------------------------------------------------------------------

    def audit_list(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Audit messages, newest ``limit`` (oldest first): {since, event, text, limit, xml}."""
        try:
            return audit.list_op(self.data_dir, args)
        except ValueError as exc:
            raise ApiError("invalid", str(exc)) from exc

    # --- tls.* ---------------------------------------------------------------------------

    def _warning_days(self) -> int:
        settings = self.config.settings()
        return int(getattr(settings, "tls_expiry_warning_days", certificates.DEFAULT_WARNING_DAYS))

    @staticmethod
    def _requestor(caller: Caller) -> audit.Participant:
        return audit.os_user(caller.uid, caller.pid)

    @staticmethod
    def _identity(args: dict[str, Any], settings: Any) -> tuple[str, list[str]]:
        cn = args.get("cn")
        if cn is not None and not isinstance(cn, str):
            raise ApiError("bad-request", "cn must be text")
        sans = args.get("sans")
        if isinstance(sans, str):
            sans = [sans]
        if sans is not None and (
            not isinstance(sans, list) or not all(isinstance(v, str) for v in sans)
        ):
            raise ApiError("bad-request", "sans must be a list of DNS:name / IP:address")
        return (cn or "").strip() or settings.ae_title, sans or certificates.default_sans()

    @staticmethod
    def _new_key_args(args: dict[str, Any]) -> tuple[int | None, bytes | None]:
        rsa_bits = args.get("rsa")
        if rsa_bits is not None and (isinstance(rsa_bits, bool) or not isinstance(rsa_bits, int)):
            raise ApiError("bad-request", "rsa must be a key size in bits (2048, 3072, 4096)")
        passphrase = args.get("passphrase")
        if passphrase is not None:
            if not isinstance(passphrase, str) or "\n" in passphrase or "\r" in passphrase:
                raise ApiError("bad-request", "passphrase must be one line of text")
            if len(passphrase) < 8:
                raise ApiError("bad-request", "passphrase must have at least 8 characters")
        return rsa_bits, passphrase.encode("utf-8") if passphrase else None

    @staticmethod
    def _pem_or_path(args: dict[str, Any], pem_key: str, path_key: str) -> tuple[bytes, str]:
        """Certificate data given as PEM text, or as a path the daemon reads."""
        pem, path = args.get(pem_key), args.get(path_key)
        if isinstance(pem, str) and pem.strip():
            return pem.encode("ascii", "replace"), pem_key
        if isinstance(path, str) and path.strip():
            try:
                return Path(path).read_bytes(), path
            except OSError as exc:
                raise ApiError("invalid", f"{path}: {exc.strerror or exc}") from None
        raise ApiError("bad-request", f"{path_key} (a file) or {pem_key} (PEM text) is required")

    def tls_show(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Key, certificate, chain, trusted CAs, CRLs, last request and warnings."""
        return certificates.show(self.data_dir, self._warning_days())

    def tls_generate(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """{cn?, sans?, days?, rsa?, passphrase?, force?} -> the new certificate."""
        cn, sans = self._identity(args, self.config.settings())
        rsa_bits, passphrase = self._new_key_args(args)
        days = args.get("days", certificates.DEFAULT_DAYS)
        if isinstance(days, bool) or not isinstance(days, int):
            raise ApiError("bad-request", "days must be an integer")
        with _refused_as_invalid():
            return certificates.generate(
                self.data_dir,
                cn=cn,
                sans=sans,
                days=days,
                rsa_bits=rsa_bits,
                passphrase=passphrase,
                force=bool(args.get("force", False)),
                requestor=self._requestor(caller),
            )

    def tls_csr(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """{cn?, sans?, rsa?, passphrase?} -> {pem, subject, sans, key, new_key, path}."""
        cn, sans = self._identity(args, self.config.settings())
        rsa_bits, passphrase = self._new_key_args(args)
        with _refused_as_invalid():
            pem, info = certificates.make_csr(
                self.data_dir,
                cn=cn,
                sans=sans,
                rsa_bits=rsa_bits,
                passphrase=passphrase,
                requestor=self._requestor(caller),
            )
        return {"pem": pem.decode("ascii"), **info}

    def tls_import_cert(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """{path | pem, chain_path? | chain_pem?} -> the installed certificate and chain."""
        data, source = self._pem_or_path(args, "pem", "path")
        chain: tuple[bytes, str] | None = None
        if args.get("chain_pem") or args.get("chain_path"):
            chain = self._pem_or_path(args, "chain_pem", "chain_path")
        with _refused_as_invalid():
            return certificates.import_cert(
                self.data_dir,
                data,
                chain[0] if chain else None,
                source=source,
                chain_source=chain[1] if chain else "chain",
                warning_days=self._warning_days(),
                requestor=self._requestor(caller),
            )

    def tls_trust(self, args: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        """{path | pem} -> each certificate with its file name and "added"/"already trusted"."""
        data, source = self._pem_or_path(args, "pem", "path")
        with _refused_as_invalid():
            return certificates.trust(
                self.data_dir, data, source=source, requestor=self._requestor(caller)
            )

    def tls_untrust(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """{name}: file name, common name or SHA-256 fingerprint -> the removed CA."""
        name = args.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ApiError("bad-request", "name is required: file name, common name or fingerprint")
        with _refused_as_invalid():
            return certificates.untrust(self.data_dir, name, requestor=self._requestor(caller))


@contextmanager
def _refused_as_invalid() -> Iterator[None]:
    try:
        yield
    except CertificateError as exc:
        raise ApiError("invalid", str(exc)) from None
