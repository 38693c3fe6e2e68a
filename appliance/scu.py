"""SCU side: C-ECHO and C-STORE to remote nodes."""

from __future__ import annotations

from dataclasses import dataclass

from pynetdicom import AE

from appliance.config import Node, Settings
from appliance.dicom_classes import VERIFICATION_SOP_CLASS
from appliance.network import apply_timeouts


@dataclass(frozen=True)
class EchoResult:
    node: Node
    status: int | None
    message: str

    @property
    def ok(self) -> bool:
        return self.status == 0x0000

    def describe(self) -> str:
        target = f"{self.node.name} ({self.node.ae_title}@{self.node.host}:{self.node.port})"
        if self.ok:
            return f"echo {target}: success"
        return f"echo {target}: FAILED: {self.message}"


def requestor_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    apply_timeouts(ae, settings)
    return ae


def echo(settings: Settings, node: Node) -> EchoResult:
    ae = requestor_ae(settings)
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    if not assoc.is_established:
        return EchoResult(node, None, describe_failed_association(assoc))
    try:
        response = assoc.send_c_echo()
    finally:
        assoc.release()
    status = response.get("Status") if response else None
    if status is None:
        return EchoResult(node, None, "no response (DIMSE timeout or aborted)")
    return EchoResult(node, int(status), f"status 0x{int(status):04X}")


def describe_failed_association(assoc: object) -> str:
    if getattr(assoc, "is_rejected", False):
        rj = assoc.acceptor.primitive  # type: ignore[attr-defined]
        return (
            f"association rejected (result {rj.result_str}, source {rj.source_str}, "
            f"reason {rj.reason_str})"
        )
    if getattr(assoc, "is_aborted", False):
        return "association aborted by the peer"
    return "cannot connect (connection refused or timed out)"
