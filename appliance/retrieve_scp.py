"""Query/Retrieve C-MOVE and C-GET SCP: send archived instances to a peer.

C-MOVE sends the matching instances over a new association to a configured node that may be a
move destination; C-GET sends them back over the requesting association, on the storage contexts
the requestor proposed with SCP/SCU role selection (PS3.4 C.4.2, C.4.3).

pynetdicom's own C-MOVE/C-GET loop is not used: it opens the destination association itself
(without scu.associate's guard against the pynetdicom 3 reactor stealing C-STORE responses),
answers a destination it cannot reach with A801 instead of A702, can only refuse a request (for
example 0124 for a node without permission) after associating with the destination, and re-encodes
every instance from a decoded data set. So each association's request dispatcher is wrapped, and
C-MOVE and C-GET requests on our contexts are served here in full.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import decode, encode
from pynetdicom.presentation import PresentationContext

from appliance import audit, scu
from appliance.archive import Archive, InstanceRecord
from appliance.config import Node, Settings
from appliance.dicom_classes import (
    IMPLICIT_VR_LE,
    STORAGE_SOP_CLASSES,
    UNCOMPRESSED_TRANSFER_SYNTAXES,
)
from appliance.network import DicomServer, EventHandlers, serve_requests_ourselves
from appliance.query import (
    PATIENT_ROOT,
    PATIENT_STUDY_ONLY,
    STATUS_IDENTIFIER_MISMATCH,
    STATUS_UNABLE_TO_PROCESS,
    STUDY_ROOT,
    QueryError,
    resolve_instances,
)

LOG = logging.getLogger("appliance.retrieve")

# The MOVE and GET SOP classes of the Query/Retrieve information models (PS3.4 C.6).
MOVE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.2.1.2": PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.2": STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.3.2": PATIENT_STUDY_ONLY,  # retired; GEMINI still offers it
}
GET_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.2.1.3": PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.3": STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.3.3": PATIENT_STUDY_ONLY,
}

# C-MOVE / C-GET response statuses (PS3.4 C.4.2.1.5 and C.4.3.1.4, PS3.7 C).
STATUS_SUCCESS = 0x0000
STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
STATUS_WARNING = 0xB000  # sub-operations complete, one or more failures or warnings
STATUS_NOT_AUTHORIZED = 0x0124
# A701 is "Refused: Out of Resources - Unable to calculate number of matches": the matching
# itself could not be done (index unreadable, or more matches than the 16-bit counters hold).
STATUS_UNABLE_TO_CALCULATE = 0xA701
# A702 is "Refused: Out of Resources - Unable to perform sub-operations": matches are known but
# no C-STORE succeeded, e.g. the destination refused the association or cannot be reached.
STATUS_UNABLE_TO_PERFORM = 0xA702
STATUS_DESTINATION_UNKNOWN = 0xA801

# Number of ... Sub-operations are US (PS3.7 E.1).
MAX_SUBOPERATIONS = 0xFFFF


class RetrieveRefused(Exception):
    """The request is answered with a single final status and no sub-operations."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


Resolver = Callable[[Archive, Dataset, str], list[InstanceRecord]]


@dataclass
class Tally:
    """Sub-operation counts of one retrieve (PS3.4 C.4.2.1.6)."""

    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    final: int | None = None  # the final status sent; None when the peer was gone
    seconds: float = 0.0

    def record(self, result: scu.InstanceResult, sop_instance_uid: str) -> None:
        self.remaining -= 1
        if result.outcome == scu.SUCCESS:
            self.completed += 1
        elif result.outcome == scu.WARNING:
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(sop_instance_uid)

    def fail_all(self, uids: Iterable[str]) -> None:
        for uid in uids:
            self.remaining -= 1
            self.failed += 1
            self.failed_uids.append(uid)

    def final_status(self) -> int:
        if not self.failed and not self.warning:
            return STATUS_SUCCESS
        if not self.completed and not self.warning:
            # Every sub-operation failed: PS3.4 C.4.2.3.1 wants a Refused or Failed status.
            return STATUS_UNABLE_TO_PERFORM
        return STATUS_WARNING


class _Cancelled(Exception):
    """The peer sent C-CANCEL for the request being served."""


@dataclass
class _Request:
    """One C-MOVE or C-GET being served."""

    assoc: Association
    primitive: C_MOVE | C_GET
    context: PresentationContext
    model: str
    peer: str

    @property
    def kind(self) -> str:
        return "C-MOVE" if isinstance(self.primitive, C_MOVE) else "C-GET"

    @property
    def message_id(self) -> int:
        return int(self.primitive.MessageID)

    def cancelled(self) -> bool:
        # C-CANCEL-RQs are kept apart from other messages by the DIMSE provider as they arrive,
        # keyed by the Message ID they cancel.
        return self.assoc.dimse.cancel_req.pop(self.message_id, None) is not None

    def respond(
        self,
        status: int,
        tally: Tally | None = None,
        *,
        comment: str = "",
        failed_list: bool = False,
    ) -> None:
        rsp = C_MOVE() if isinstance(self.primitive, C_MOVE) else C_GET()
        rsp.MessageIDBeingRespondedTo = self.primitive.MessageID
        rsp.AffectedSOPClassUID = self.primitive.AffectedSOPClassUID
        rsp.Status = status
        if comment:
            rsp.ErrorComment = comment[:64]  # LO
        if tally is not None:
            # Remaining is sent with Pending and Cancel only (PS3.4 C.4.2.1.6).
            if status in (STATUS_PENDING, STATUS_CANCEL):
                rsp.NumberOfRemainingSuboperations = tally.remaining
            rsp.NumberOfCompletedSuboperations = tally.completed
            rsp.NumberOfFailedSuboperations = tally.failed
            rsp.NumberOfWarningSuboperations = tally.warning
        if failed_list and tally is not None:
            identifier = Dataset()
            identifier.FailedSOPInstanceUIDList = list(tally.failed_uids)
            ts = UID(self.context.transfer_syntax[0])
            encoded = encode(identifier, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
            if encoded is not None:
                rsp.Identifier = BytesIO(encoded)
        self.assoc.dimse.send_msg(rsp, int(self.context.context_id))  # type: ignore[arg-type]


class RetrieveService:
    """C-MOVE and C-GET SCP for the Patient Root, Study Root and Patient/Study Only models."""

    def __init__(self, resolver: Resolver = resolve_instances) -> None:
        self._resolver = resolver
        self._server: DicomServer | None = None

    # --- ScpService --------------------------------------------------------------------

    def add_contexts(self, ae: AE, settings: Settings) -> None:
        # An identifier carries no pixel data: the configured uncompressed syntaxes, in their
        # order (Implicit VR Little Endian, the DICOM default, when none is configured).
        syntaxes = [ts for ts in settings.transfer_syntaxes if ts in UNCOMPRESSED_TRANSFER_SYNTAXES]
        for sop_class in (*MOVE_SOP_CLASSES, *GET_SOP_CLASSES):
            ae.add_supported_context(sop_class, syntaxes or [IMPLICIT_VR_LE])
        # C-GET sends its C-STOREs on the requestor's association, on storage contexts the
        # requestor proposed with SCP/SCU role selection; accept whatever roles it proposes
        # (a context proposed without role selection keeps the default roles).
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(
                sop_class, settings.transfer_syntaxes, scu_role=True, scp_role=True
            )

    def handlers(self, server: DicomServer) -> EventHandlers:
        self._server = server
        return [(evt.EVT_ACCEPTED, self._on_accepted)]

    # --- dispatch ----------------------------------------------------------------------

    def _on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        serve_requests_ourselves(
            assoc,
            (C_MOVE, C_GET),
            {*MOVE_SOP_CLASSES, *GET_SOP_CLASSES},
            lambda msg, context: self._serve(assoc, msg, context),
            "C-MOVE/C-GET",
        )

    def _serve(self, assoc: Association, msg: C_MOVE | C_GET, context: PresentationContext) -> None:
        abstract = str(context.abstract_syntax)
        model = MOVE_SOP_CLASSES.get(abstract) or GET_SOP_CLASSES[abstract]
        request = _Request(assoc, msg, context, model, _peer(assoc))
        if isinstance(msg, C_MOVE):
            self._move(request)
        else:
            self._get(request)

    # --- C-MOVE ------------------------------------------------------------------------

    def _move(self, request: _Request) -> None:
        assert isinstance(request.primitive, C_MOVE)
        destination_ae = _text(request.primitive.MoveDestination)
        what = f"C-MOVE from {request.peer} to {destination_ae or '(none)'}"
        try:
            self._check_permission(request, "move")
            identifier, level = self._identifier(request)
            node = self._destination(destination_ae)
            instances = self._resolve(identifier, request.model)
        except RetrieveRefused as refused:
            self._refuse(request, what, refused)
            return
        what = f"C-MOVE from {request.peer} to {_describe(node)}"
        tally = Tally(remaining=len(instances))
        if not instances:
            request.respond(STATUS_SUCCESS, tally)
            LOG.info("%s, %s level: nothing matched, status 0x0000", what, level)
            return
        self._run(request, tally, lambda: self._move_suboperations(request, node, instances, tally))
        self._finish(request, what, level, len(instances), tally)
        audit.retrieve(request.assoc, request.kind, self._server, instances, tally, node)

    def _destination(self, ae_title: str) -> Node:
        assert self._server is not None
        nodes = [
            node for node in self._server.nodes_with_ae_title(ae_title) if node.move_destination
        ]
        if not ae_title or not nodes:
            raise RetrieveRefused(
                STATUS_DESTINATION_UNKNOWN,
                f"Move Destination {ae_title!r} is not a configured move destination",
            )
        return nodes[0]

    def _move_suboperations(
        self, request: _Request, node: Node, instances: list[InstanceRecord], tally: Tally
    ) -> None:
        assert self._server is not None
        settings = self._server.settings
        candidates = [_candidate(record) for record in instances]
        # One AE per C-MOVE: nothing is shared between moves running at the same time.
        ae = scu.requestor_ae(settings)
        originator = (settings.ae_title, request.message_id)
        for batch in scu.plan_batches(candidates):
            if request.cancelled():
                raise _Cancelled
            contexts = [build_context(sop, list(syntaxes)) for sop, syntaxes in batch.contexts]
            sub_assoc, connected = scu.associate(ae, settings, node, contexts)
            if not sub_assoc.is_established:
                reason = scu.describe_failed_association(sub_assoc, connected=connected)
                LOG.error("%s to %s: %s", request.kind, _describe(node), reason)
                tally.fail_all(c.sop_instance_uid for c in batch.candidates)
                continue
            broken = False
            try:
                accepted = scu._accepted_syntaxes(sub_assoc)
                for number, candidate in enumerate(batch.candidates):
                    if request.cancelled():
                        raise _Cancelled
                    if not request.assoc.is_established:
                        return  # the C-MOVE requestor is gone: nobody to report to
                    if broken or not sub_assoc.is_established:
                        broken = True
                        tally.fail_all([candidate.sop_instance_uid])
                    else:
                        try:
                            result = scu._store_one(
                                sub_assoc,
                                candidate,
                                accepted.get(candidate.sop_class_uid, []),
                                number % 0xFFFF + 1,
                                originator=originator,
                            )
                        except scu._ConnectionLost as lost:
                            broken = True
                            result = lost.args[0]
                        _log_failure(request, candidate, result)
                        tally.record(result, candidate.sop_instance_uid)
                    request.respond(STATUS_PENDING, tally)
            finally:
                if broken:
                    sub_assoc.abort()
                elif sub_assoc.is_established:
                    sub_assoc.release()

    # --- C-GET -------------------------------------------------------------------------

    def _get(self, request: _Request) -> None:
        what = f"C-GET from {request.peer}"
        try:
            self._check_permission(request, "get")
            identifier, level = self._identifier(request)
            instances = self._resolve(identifier, request.model)
        except RetrieveRefused as refused:
            self._refuse(request, what, refused)
            return
        tally = Tally(remaining=len(instances))
        if not instances:
            request.respond(STATUS_SUCCESS, tally)
            LOG.info("%s, %s level: nothing matched, status 0x0000", what, level)
            return
        self._run(request, tally, lambda: self._get_suboperations(request, instances, tally))
        self._finish(request, what, level, len(instances), tally)
        audit.retrieve(request.assoc, request.kind, self._server, instances, tally)

    def _get_suboperations(
        self, request: _Request, instances: list[InstanceRecord], tally: Tally
    ) -> None:
        assoc = request.assoc
        accepted = _role_selected_syntaxes(assoc)
        for number, record in enumerate(instances):
            if request.cancelled():
                raise _Cancelled
            if not assoc.is_established:
                return
            candidate = _candidate(record)
            # Our Message IDs on this association must differ from the C-GET's.
            msg_id = (request.message_id + number) % 0xFFFF + 1
            syntaxes = accepted.get(candidate.sop_class_uid, [])
            if not syntaxes:
                result = scu.InstanceResult(
                    candidate.path,
                    candidate.sop_instance_uid,
                    None,
                    scu.FAILURE,
                    "SOP class not proposed with the SCP role on this association",
                    candidate.sop_class_uid,
                )
            else:
                try:
                    result = scu._store_one(assoc, candidate, syntaxes, msg_id)
                except scu._ConnectionLost as lost:
                    # pynetdicom has aborted the association: no response can reach the peer.
                    _log_failure(request, candidate, lost.args[0])
                    tally.record(lost.args[0], candidate.sop_instance_uid)
                    return
            _log_failure(request, candidate, result)
            tally.record(result, candidate.sop_instance_uid)
            request.respond(STATUS_PENDING, tally)

    # --- common ------------------------------------------------------------------------

    def _check_permission(self, request: _Request, service: str) -> None:
        assert self._server is not None
        event = evt.Event(request.assoc, evt.EVT_C_MOVE if service == "move" else evt.EVT_C_GET, {})
        refused = self._server.refuse_service(event, service)
        if refused is not None:
            # refuse_service has logged it.
            raise RetrieveRefused(int(refused.Status), str(refused.get("ErrorComment", "")))

    def _identifier(self, request: _Request) -> tuple[Dataset, str]:
        ts = UID(request.context.transfer_syntax[0])
        stream = request.primitive.Identifier
        if stream is None:
            raise RetrieveRefused(STATUS_IDENTIFIER_MISMATCH, "no identifier")
        try:
            identifier = decode(stream, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
            # pydicom decodes lazily: touch every element so a bad one fails here.
            for _element in identifier:
                pass
        except Exception as exc:
            raise RetrieveRefused(
                STATUS_UNABLE_TO_PROCESS, f"identifier cannot be decoded: {exc}"
            ) from exc
        try:
            level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        except Exception:  # resolve_instances says why
            level = ""
        return identifier, level or "(no level)"

    def _resolve(self, identifier: Dataset, model: str) -> list[InstanceRecord]:
        assert self._server is not None
        try:
            instances = self._resolver(self._server.archive, identifier, model)
        except QueryError as exc:
            # The identifier does not fit the model (A900) or cannot be processed (C000).
            raise RetrieveRefused(exc.status, exc.comment) from exc
        except (sqlite3.Error, OSError) as exc:
            LOG.exception("matching a retrieve identifier failed")
            raise RetrieveRefused(
                STATUS_UNABLE_TO_CALCULATE, f"cannot read the archive index: {exc}"
            ) from exc
        except Exception as exc:
            LOG.exception("matching a retrieve identifier failed")
            raise RetrieveRefused(STATUS_UNABLE_TO_CALCULATE, f"matching failed: {exc}") from exc
        if len(instances) > MAX_SUBOPERATIONS:
            raise RetrieveRefused(
                STATUS_UNABLE_TO_CALCULATE,
                f"{len(instances)} instances match, at most {MAX_SUBOPERATIONS} per request",
            )
        return instances

    def _refuse(self, request: _Request, what: str, refused: RetrieveRefused) -> None:
        request.respond(refused.status, comment=refused.comment)
        if refused.status != STATUS_NOT_AUTHORIZED:  # refuse_service has logged that one
            LOG.error("%s refused with 0x%04X: %s", what, refused.status, refused.comment)

    def _run(self, request: _Request, tally: Tally, suboperations: Callable[[], None]) -> None:
        started = time.monotonic()
        try:
            suboperations()
        except _Cancelled:
            if request.assoc.is_established:
                request.respond(STATUS_CANCEL, tally, failed_list=True)
                tally.final = STATUS_CANCEL
            return
        finally:
            tally.seconds = time.monotonic() - started
        if not request.assoc.is_established:
            return
        status = tally.final_status()
        request.respond(status, tally, failed_list=status != STATUS_SUCCESS)
        tally.final = status

    def _finish(self, request: _Request, what: str, level: str, matched: int, tally: Tally) -> None:
        final = tally.final
        outcome = "peer gone, no final response" if final is None else f"status 0x{final:04X}"
        if final == STATUS_CANCEL:
            outcome += " (cancelled)"
        LOG.log(
            logging.INFO if final in (STATUS_SUCCESS, STATUS_CANCEL) else logging.WARNING,
            "%s, %s level: %d matched, %d completed, %d failed, %d warning, %d not sent "
            "in %.1f s, %s",
            what,
            level,
            matched,
            tally.completed,
            tally.failed,
            tally.warning,
            tally.remaining,
            tally.seconds,
            outcome,
        )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value or "").strip()


def _peer(assoc: Association) -> str:
    requestor = assoc.requestor
    return f"{requestor.ae_title.strip()} at {requestor.address}:{requestor.port}"


def _describe(node: Node) -> str:
    return f"{node.ae_title} ({node.name}, {node.host}:{node.port})"


def _candidate(record: InstanceRecord) -> scu.Candidate:
    return scu.Candidate(
        record.path, record.sop_class_uid, record.sop_instance_uid, record.transfer_syntax
    )


def _role_selected_syntaxes(assoc: Association) -> dict[str, list[str]]:
    """Transfer syntaxes per SOP class on which we may send C-STOREs on the requestor's own
    association: contexts where we act as SCU, for classes the requestor offered the SCP role."""
    offered = {str(uid) for uid, item in assoc.requestor.role_selection.items() if item.scp_role}
    accepted: dict[str, list[str]] = {}
    for cx in assoc.accepted_contexts:
        if cx.as_scu and str(cx.abstract_syntax) in offered:
            accepted.setdefault(str(cx.abstract_syntax), []).append(str(cx.transfer_syntax[0]))
    return accepted


def _log_failure(request: _Request, candidate: scu.Candidate, result: scu.InstanceResult) -> None:
    if result.outcome == scu.SUCCESS:
        return
    LOG.warning(
        "%s from %s: C-STORE sub-operation for %s: %s (%s)",
        request.kind,
        request.peer,
        candidate.sop_instance_uid,
        result.message,
        result.status_hex or "not sent",
    )
