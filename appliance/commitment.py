"""Storage Commitment Push Model (PS3.4 Annex J), as SCP and as SCU.

SCP: a node asks us with N-ACTION to take responsibility for instances it sent us. The request is
written to ``commitments.json`` in the data folder before the N-ACTION response goes out; each
referenced instance is then checked in the archive and the result sent with N-EVENT-REPORT: on
the same association while the requester is still on it, otherwise on a new association to the
node, on which we are the requestor and, by SCP/SCU role selection, the SCP (PS3.4 J.3.3).
Reports not yet delivered are kept in the file, sent again when the daemon starts, and retried
with a growing delay.

SCU: after a send we ask the node to commit the instances it accepted. Its report arrives on our
association or, on a new association, at the daemon, which records it against the request by
Transaction UID. Instances without a report within ``commitment_timeout`` are shown uncommitted.

The Transaction UID of a report is always that of its request (PS3.4 J.3.3.1), never a new one.
"""

from __future__ import annotations

import fcntl
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_ACTION, N_EVENT_REPORT
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import (
    A_ABORT,
    A_P_ABORT,
    A_RELEASE,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext
from tinydb import Query, TinyDB

from appliance import tls
from appliance.archive import Archive, content_hash
from appliance.config import AtomicJSONStorage, Node, Settings
from appliance.dicom_classes import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from appliance.network import error_status
from appliance.scu import (
    _disable_nagle,
    describe_failed_association,
    note_tls_failure,
    requestor_ae,
)

if TYPE_CHECKING:
    from appliance.network import DicomServer, EventHandlers

LOG = logging.getLogger("appliance.commitment")

SOP_CLASS = "1.2.840.10008.1.20.1"
# The well-known SOP Instance of the Storage Commitment Push Model SOP Class (PS3.4 J.3.1)
SOP_INSTANCE = "1.2.840.10008.1.20.1.1"
COMMITMENTS_FILE = "commitments.json"
ACTION_REQUEST_COMMITMENT = 1
EVENT_ALL_COMMITTED = 1
EVENT_FAILURES = 2

# Failure Reason (0008,1197), PS3.3 C.14.1.1
REASON_PROCESSING_FAILURE = 0x0110
REASON_NO_SUCH_INSTANCE = 0x0112
REASON_CLASS_INSTANCE_CONFLICT = 0x0119
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0119: "class/instance conflict",
    0x0122: "referenced SOP class not supported",
    0x0131: "duplicate transaction UID",
    0x0213: "resource limitation",
}

# DIMSE statuses of our N-ACTION and N-EVENT-REPORT responses (PS3.7 C)
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_NO_SUCH_SOP_INSTANCE = 0x0112
STATUS_NO_SUCH_EVENT_TYPE = 0x0113
STATUS_INVALID_ARGUMENT = 0x0115
STATUS_NO_SUCH_ACTION = 0x0123

# Proposed for our own associations, explicit first; accepted: every uncompressed syntax.
PROPOSED_TRANSFER_SYNTAXES = [EXPLICIT_VR_LE, IMPLICIT_VR_LE]

# A new-association report that fails is tried again after these delays (seconds), then given
# up; a daemon start tries every pending one at once.
REPORT_RETRY_DELAYS: tuple[float, ...] = (10.0, 30.0, 90.0, 270.0, 810.0)
# Requesters that expect the report on a new association release theirs right after the
# N-ACTION response (Orthanc does); wait this long for that before using the association.
SAME_ASSOCIATION_GRACE = 0.5
# Finished transactions older than this are dropped from commitments.json at daemon start.
KEEP_FINISHED_SECONDS = 30 * 86400

# States of a request we serve (SCP)
RECEIVED = "received"  # recorded, instances not checked yet
REPORTING = "reporting"  # checked; being reported on the requester's association
QUEUED = "queued"  # checked; waiting for a report on a new association
DELIVERED = "delivered"
GAVE_UP = "failed"  # every new-association attempt failed

# States of a request we make (SCU)
REQUESTING = "requesting"  # recorded, N-ACTION not answered yet
WAITING = "waiting"  # N-ACTION accepted, waiting for the report
REPORTED = "reported"
REFUSED = "refused"  # no association, or the N-ACTION was not accepted

# Per-instance outcome of a request we make
COMMITTED = "committed"
FAILED = "failed"
PENDING = "pending"  # no report yet, still within the timeout
UNCOMMITTED = "uncommitted"  # no report within the timeout, or left out of the report

Reference = tuple[str, str]  # (SOP Class UID, SOP Instance UID)
Failure = tuple[str, str, int]  # (SOP Class UID, SOP Instance UID, Failure Reason)


def reason_text(reason: int) -> str:
    return FAILURE_REASONS.get(reason, "unknown reason")


def _valid_uid(value: object) -> bool:
    text = str(value or "")
    return 0 < len(text) <= 64 and all(part.isdigit() for part in text.split("."))


# --- records ---------------------------------------------------------------------------------


def _from_mapping(cls: type, data: dict[str, Any]) -> Any:
    """A record from its JSON form; lists of lists come back as lists of tuples."""
    values = {}
    for f in fields(cls):
        if f.name in data:
            value = data[f.name]
            if isinstance(value, list):
                value = [tuple(item) if isinstance(item, list) else item for item in value]
            values[f.name] = value
    return cls(**values)


@dataclass
class IncomingRequest:
    """A commitment request a node made to us, and our answer to it."""

    transaction_uid: str
    requester_ae: str
    requester_address: str
    received_at: float
    references: list[Reference]
    state: str = RECEIVED
    succeeded: list[Reference] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str = ""
    delivered_at: float | None = None
    delivered_via: str = ""

    @property
    def event_type(self) -> int:
        return EVENT_FAILURES if self.failed else EVENT_ALL_COMMITTED

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["direction"] = "incoming"
        return data


@dataclass
class OutgoingRequest:
    """A commitment request we made to a node, and its report."""

    transaction_uid: str
    node: str
    ae_title: str
    host: str
    port: int
    requested_at: float
    deadline: float
    references: list[Reference]
    state: str = REQUESTING
    error: str = ""
    event_type: int | None = None
    committed: list[Reference] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    reported_at: float | None = None
    reported_by: str = ""
    report_via: str = ""

    def outcomes(self, now: float | None = None) -> list[tuple[Reference, str, int | None]]:
        """Each referenced instance with its outcome and, if it failed, the reason."""
        now = time.time() if now is None else now
        committed = {uid for _cls, uid in self.committed}
        failed = {uid: reason for _cls, uid, reason in self.failed}
        waiting = self.state in (REQUESTING, WAITING) and now < self.deadline
        result = []
        for reference in self.references:
            uid = reference[1]
            if uid in failed:
                result.append((reference, FAILED, failed[uid]))
            elif uid in committed:
                result.append((reference, COMMITTED, None))
            else:
                result.append((reference, PENDING if waiting else UNCOMMITTED, None))
        return result

    def counts(self, now: float | None = None) -> dict[str, int]:
        counts = {COMMITTED: 0, FAILED: 0, PENDING: 0, UNCOMMITTED: 0}
        for _reference, outcome, _reason in self.outcomes(now):
            counts[outcome] += 1
        return counts

    def status(self, now: float | None = None) -> str:
        """committed, failed, uncommitted, pending or refused, for the whole request."""
        if self.state == REFUSED:
            return REFUSED
        counts = self.counts(now)
        if counts[FAILED]:
            return FAILED
        if counts[UNCOMMITTED]:
            return UNCOMMITTED
        if counts[PENDING]:
            return PENDING
        return COMMITTED

    def summary(self, now: float | None = None) -> str:
        counts = self.counts(now)
        text = (
            f"commitment {self.transaction_uid} by {self.node} ({self.ae_title}): "
            f"{self.status(now)}: {counts[COMMITTED]} committed, {counts[FAILED]} failed, "
            f"{counts[UNCOMMITTED] + counts[PENDING]} uncommitted"
        )
        if self.state == REFUSED:
            text += f" ({self.error})"
        elif counts[UNCOMMITTED] and self.reported_at is None:
            text += f" (no report within {self.deadline - self.requested_at:g} s)"
        elif self.reported_at is not None:
            text += f" (report from {self.reported_by} on the {self.report_via})"
        return text

    def lines(self, now: float | None = None) -> list[str]:
        """The summary, then one line for each instance not committed."""
        lines = [self.summary(now)]
        for (_cls, uid), outcome, reason in self.outcomes(now):
            if outcome == FAILED:
                lines.append(f"  FAILED       {uid}: {reason_text(reason or 0)} (0x{reason:04X})")
            elif outcome != COMMITTED:
                lines.append(f"  {outcome:<12} {uid}")
        return lines

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        data = asdict(self)
        data["direction"] = "outgoing"
        data["status"] = self.status(now)
        data["counts"] = self.counts(now)
        data["instances"] = [
            {
                "sop_class_uid": cls,
                "sop_instance_uid": uid,
                "outcome": outcome,
                "failure_reason": None if reason is None else f"0x{reason:04X}",
            }
            for (cls, uid), outcome, reason in self.outcomes(now)
        ]
        return data


class CommitmentStore:
    """``commitments.json``: the requests made to us and by us, shared by daemon and CLI.

    One writer at a time, across processes (a thread lock and an advisory file lock); every
    write replaces the file atomically, and every read looks at the file again, since the
    other process may have written since.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / COMMITMENTS_FILE
        self._lock = threading.RLock()
        self._db = TinyDB(str(self.path), storage=AtomicJSONStorage)
        self._incoming = self._db.table("incoming")
        self._outgoing = self._db.table("outgoing")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, open(self.path.with_name(COMMITMENTS_FILE + ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._incoming.clear_cache()
                self._outgoing.clear_cache()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # --- requests made to us (SCP) ---------------------------------------------------------

    @staticmethod
    def _incoming_key(transaction_uid: str, requester_ae: str) -> Any:
        q = Query()
        return (q.transaction_uid == transaction_uid) & (q.requester_ae == requester_ae)

    def add_incoming(self, request: IncomingRequest) -> None:
        """Record a request (a repeated one, same Transaction UID and AE, replaces it)."""
        with self._locked():
            self._incoming.remove(self._incoming_key(request.transaction_uid, request.requester_ae))
            self._incoming.insert(asdict(request))

    def update_incoming(self, request: IncomingRequest) -> None:
        with self._locked():
            self._incoming.update(
                asdict(request), self._incoming_key(request.transaction_uid, request.requester_ae)
            )

    def incoming(self, states: Sequence[str] | None = None) -> list[IncomingRequest]:
        with self._locked():
            docs = self._incoming.all()
        requests = [_from_mapping(IncomingRequest, dict(doc)) for doc in docs]
        if states is not None:
            requests = [r for r in requests if r.state in states]
        return sorted(requests, key=lambda r: r.received_at)

    # --- requests we make (SCU) ------------------------------------------------------------

    def add_outgoing(self, request: OutgoingRequest) -> None:
        with self._locked():
            self._outgoing.remove(Query().transaction_uid == request.transaction_uid)
            self._outgoing.insert(asdict(request))

    def outgoing(self, transaction_uid: str | None = None) -> list[OutgoingRequest]:
        with self._locked():
            if transaction_uid is None:
                docs = self._outgoing.all()
            else:
                docs = self._outgoing.search(Query().transaction_uid == transaction_uid)
        requests = [_from_mapping(OutgoingRequest, dict(doc)) for doc in docs]
        return sorted(requests, key=lambda r: r.requested_at)

    def get_outgoing(self, transaction_uid: str) -> OutgoingRequest | None:
        found = self.outgoing(transaction_uid)
        return found[0] if found else None

    def set_outgoing(self, transaction_uid: str, **changes: Any) -> None:
        with self._locked():
            self._outgoing.update(changes, Query().transaction_uid == transaction_uid)

    def record_report(
        self,
        transaction_uid: str,
        event_type: int,
        committed: list[Reference],
        failed: list[Failure],
        *,
        reported_by: str,
        via: str,
    ) -> OutgoingRequest | None:
        """Record a report against our request; None when no request has this Transaction
        UID."""
        with self._locked():
            q = Query().transaction_uid == transaction_uid
            if not self._outgoing.search(q):
                return None
            self._outgoing.update(
                {
                    "state": REPORTED,
                    "event_type": event_type,
                    "committed": [list(r) for r in committed],
                    "failed": [list(f) for f in failed],
                    "reported_at": time.time(),
                    "reported_by": reported_by,
                    "report_via": via,
                },
                q,
            )
            doc = self._outgoing.search(q)[0]
        return _from_mapping(OutgoingRequest, dict(doc))

    # --- housekeeping ----------------------------------------------------------------------

    def prune(self, older_than: float) -> int:
        """Drop finished transactions last touched before ``older_than`` (a time.time())."""
        q = Query()
        finished_incoming = q.state.one_of([DELIVERED, GAVE_UP]) & (q.received_at < older_than)
        finished_outgoing = q.state.one_of([REPORTED, REFUSED, WAITING, REQUESTING]) & (
            q.deadline < older_than
        )
        dropped = 0
        with self._locked():
            # tinydb rewrites the file on every remove(), even one that matches nothing.
            if self._incoming.contains(finished_incoming):
                dropped += len(self._incoming.remove(finished_incoming))
            if self._outgoing.contains(finished_outgoing):
                dropped += len(self._outgoing.remove(finished_outgoing))
        return dropped


# --- Action and Event Information ------------------------------------------------------------


def _reference_item(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def action_information(transaction_uid: str, references: Sequence[Reference]) -> Dataset:
    """The N-ACTION Action Information of a commitment request (PS3.4 Table J.3-1)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = [_reference_item(c, i) for c, i in references]
    return ds


def event_information(
    transaction_uid: str,
    succeeded: Sequence[Reference],
    failed: Sequence[Failure],
    retrieve_ae_title: str,
) -> Dataset:
    """The N-EVENT-REPORT Event Information of a commitment result (PS3.4 Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    if succeeded:
        ds.RetrieveAETitle = retrieve_ae_title
        ds.ReferencedSOPSequence = [_reference_item(c, i) for c, i in succeeded]
    if failed:
        items = []
        for sop_class, sop_instance, reason in failed:
            item = _reference_item(sop_class, sop_instance)
            item.FailureReason = reason
            items.append(item)
        ds.FailedSOPSequence = items
    return ds


def parse_action_information(info: Dataset) -> tuple[str, list[Reference]] | str:
    """Transaction UID and references of a request, or why the request is invalid."""
    transaction_uid = str(info.get("TransactionUID", "") or "").strip()
    if not _valid_uid(transaction_uid):
        return "Transaction UID (0008,1195) missing or not a valid UID"
    items = info.get("ReferencedSOPSequence")
    if not items:
        return "Referenced SOP Sequence (0008,1199) missing or empty"
    references: list[Reference] = []
    for number, item in enumerate(items, start=1):
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not _valid_uid(sop_class) or not _valid_uid(sop_instance):
            return f"Referenced SOP Sequence item {number} lacks a valid SOP Class/Instance UID"
        references.append((sop_class, sop_instance))
    return transaction_uid, list(dict.fromkeys(references))


def parse_event_information(info: Dataset) -> tuple[str, list[Reference], list[Failure]] | str:
    """Transaction UID, committed and failed instances of a report, or why it is invalid."""
    transaction_uid = str(info.get("TransactionUID", "") or "").strip()
    if not _valid_uid(transaction_uid):
        return "Transaction UID (0008,1195) missing or not a valid UID"
    committed: list[Reference] = []
    for item in info.get("ReferencedSOPSequence") or []:
        committed.append(
            (
                str(item.get("ReferencedSOPClassUID", "") or ""),
                str(item.get("ReferencedSOPInstanceUID", "") or ""),
            )
        )
    failed: list[Failure] = []
    for item in info.get("FailedSOPSequence") or []:
        reason = item.get("FailureReason")
        failed.append(
            (
                str(item.get("ReferencedSOPClassUID", "") or ""),
                str(item.get("ReferencedSOPInstanceUID", "") or ""),
                int(reason) if reason is not None else REASON_PROCESSING_FAILURE,
            )
        )
    return transaction_uid, committed, failed


# --- associations ----------------------------------------------------------------------------


class _ResponseKeeper:
    """Keeps the response to our own request for the thread that waits for it.

    pynetdicom 3.0 pauses an association's reactor around send_n_action() and the like with a
    flag that can read "paused" just before the reactor takes one more message off the DIMSE
    queue; it then drops our response as unexpected and the sender waits out the DIMSE timeout.
    While we wait, a response the reactor takes goes back on the queue. Requests the peer sends
    (the report on our N-ACTION association) are still served, unlike ``scu.associate()``'s
    requeue-everything, which is only for associations on which the peer never asks anything.
    """

    def __init__(self, assoc: Association) -> None:
        self._assoc = assoc
        self._serve = assoc._serve_request
        self._waiting = 0
        assoc._serve_request = self._serve_request  # type: ignore[method-assign]

    _installing = threading.Lock()

    @classmethod
    def on(cls, assoc: Association) -> _ResponseKeeper:
        """The association's keeper, installed on first use."""
        with cls._installing:
            keeper = assoc.__dict__.get("_commitment_keeper")
            if keeper is None:
                keeper = assoc.__dict__["_commitment_keeper"] = cls(assoc)
        return keeper  # type: ignore[no-any-return]

    def _serve_request(self, msg: Any, context_id: int) -> None:
        if self._waiting and not msg.is_valid_request:
            self._assoc.dimse.msg_queue.put((context_id, msg))
            return
        self._serve(msg, context_id)

    @contextmanager
    def waiting(self) -> Iterator[None]:
        self._waiting += 1
        try:
            yield
        finally:
            self._waiting -= 1


def _associate(
    settings: Settings,
    node: Node,
    *,
    ext_neg: list[Any] | None = None,
    handlers: list[tuple[evt.EventType, Callable]] | None = None,
) -> tuple[Association, bool]:
    """An association to ``node`` with the Storage Commitment context; whether TCP connected.

    Not ``scu.associate()``: the peer may send us its report (a request) on it.
    """
    connected = threading.Event()

    def on_open(event: evt.Event) -> None:
        connected.set()
        _disable_nagle(event.assoc)

    ae: AE = requestor_ae(settings)
    contexts: list[PresentationContext] = [build_context(SOP_CLASS, PROPOSED_TRANSFER_SYNTAXES)]
    tls_args = tls.tls_args(settings, node)
    assoc = ae.associate(
        node.host,
        node.port,
        contexts=contexts,
        ae_title=node.ae_title,
        max_pdu=settings.max_pdu,
        ext_neg=ext_neg,
        evt_handlers=[(evt.EVT_CONN_OPEN, on_open), *(handlers or [])],
        tls_args=tls_args,  # type: ignore[arg-type]
    )
    note_tls_failure(assoc, tls_args)
    if assoc.is_established:
        _ResponseKeeper.on(assoc)
    return assoc, connected.is_set()


def _peer_leaving(assoc: Association) -> bool:
    """Whether the peer has released or aborted, or asked to."""
    if not assoc.is_established:
        return True
    pending = assoc.dul.peek_next_pdu()
    return isinstance(pending, A_RELEASE | A_ABORT | A_P_ABORT)


def _report_request(event_type: int, ds: Dataset, transfer_syntax: UID, msg_id: int) -> Any:
    req = N_EVENT_REPORT()
    req.MessageID = msg_id
    req.AffectedSOPClassUID = UID(SOP_CLASS)
    req.AffectedSOPInstanceUID = UID(SOP_INSTANCE)
    req.EventTypeID = event_type
    encoded = encode(
        ds, transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian,
        transfer_syntax.is_deflated,
    )  # fmt: skip
    if encoded is None:
        raise ValueError("cannot encode the Event Information")
    req.EventInformation = BytesIO(encoded)
    return req


def _association_lock(assoc: Association) -> threading.Lock:
    return assoc.__dict__.setdefault("_commitment_report_lock", threading.Lock())  # type: ignore[no-any-return]


def report_on_requester_association(
    assoc: Association, context_id: int, request: IncomingRequest, settings: Settings
) -> tuple[bool, str]:
    """Send the report on the association that carried the N-ACTION (we are its acceptor).

    The reactor is paused meanwhile, so nothing else is served until the requester answers;
    a requester that releases or aborts instead ends the wait at once. Returns (delivered,
    what happened).
    """
    context = assoc._accepted_cx.get(context_id)
    if context is None:
        return False, "the request's presentation context is gone"
    ds = event_information(
        request.transaction_uid, request.succeeded, request.failed, settings.ae_title
    )
    keeper = _ResponseKeeper.on(assoc)
    with _association_lock(assoc):
        msg_id = assoc.__dict__.get("_commitment_msg_id", 0) % 0xFFFF + 1
        assoc.__dict__["_commitment_msg_id"] = msg_id
        req = _report_request(request.event_type, ds, context.transfer_syntax[0], msg_id)
        assoc._reactor_checkpoint.clear()
        try:
            paused_by = time.monotonic() + 5.0
            while not assoc._is_paused and time.monotonic() < paused_by:
                time.sleep(0.001)
            if _peer_leaving(assoc):
                return False, "the requester released the association"
            with keeper.waiting():
                assoc.dimse.send_msg(req, context_id)
                return _await_report_response(assoc, msg_id, settings.dimse_timeout)
        finally:
            assoc._reactor_checkpoint.set()


def _await_report_response(assoc: Association, msg_id: int, timeout: float) -> tuple[bool, str]:
    stash: list[tuple[int, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False, f"no N-EVENT-REPORT response within {timeout:g} s"
            try:
                context_id, msg = assoc.dimse.msg_queue.get(timeout=min(0.1, remaining))
            except queue.Empty:
                if _peer_leaving(assoc):
                    return False, "the requester left the association without answering"
                continue
            if (
                isinstance(msg, N_EVENT_REPORT)
                and msg.is_valid_response
                and msg.MessageIDBeingRespondedTo == msg_id
            ):
                return _report_answer(msg.Status)
            # A request of the requester's own, served when the reactor runs again.
            stash.append((context_id, msg))
    finally:
        for item in stash:
            assoc.dimse.msg_queue.put(item)


def _report_answer(status: int | None) -> tuple[bool, str]:
    """Delivered only when the requester answers 0000: any other status says it did not take
    the result (a requester that wants reports on a new association may answer 0211
    unrecognised operation on its own), so the report goes out again."""
    if status == 0x0000:
        return True, "answered 0000"
    return False, f"the requester answered 0x{status or 0:04X}"


def send_report(settings: Settings, node: Node, request: IncomingRequest) -> tuple[bool, str]:
    """Send the report on a new association to ``node``; (delivered, what happened)."""
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = SOP_CLASS
    role.scu_role = False
    role.scp_role = True
    assoc, connected = _associate(settings, node, ext_neg=[role])
    if not assoc.is_established and connected:
        # A peer that does not take role selection may still accept the context without it.
        assoc, connected = _associate(settings, node)
    if not assoc.is_established:
        return False, describe_failed_association(assoc, connected=connected)
    try:
        ds = event_information(
            request.transaction_uid, request.succeeded, request.failed, settings.ae_title
        )
        with _ResponseKeeper.on(assoc).waiting():
            status, _reply = assoc.send_n_event_report(
                ds, request.event_type, SOP_CLASS, SOP_INSTANCE
            )
    except (RuntimeError, ValueError) as exc:
        assoc.abort()
        return False, f"cannot send the report: {exc}"
    if "Status" not in status:
        if assoc.is_established:
            assoc.abort()
        return False, "no N-EVENT-REPORT response (timeout or aborted)"
    if assoc.is_established:
        assoc.release()
    return _report_answer(int(status.Status))


# --- SCP: checking the archive ---------------------------------------------------------------


def check_instance(archive: Archive, sop_class: str, sop_instance: str) -> int | None:
    """None when the archive holds the instance intact, else the Failure Reason.

    Present in the index (else 0112), of the requested SOP class (else 0119), and its file
    readable, of the indexed size and with the checksum recorded when it was stored (else
    0110). A file indexed by recovery has no checksum: it must then parse completely as the
    instance. Checked twice before failing, since a duplicate being stored at that moment
    replaces file and row one after the other.
    """
    reason: int | None = None
    for _attempt in range(2):
        reason = _check_once(archive, sop_class, sop_instance)
        if reason != REASON_PROCESSING_FAILURE:
            return reason
    return reason


def _check_once(archive: Archive, sop_class: str, sop_instance: str) -> int | None:
    record = archive.instance(sop_instance)
    if record is None:
        return REASON_NO_SUCH_INSTANCE
    if record.sop_class_uid != sop_class:
        return REASON_CLASS_INSTANCE_CONFLICT
    try:
        data = record.path.read_bytes()
    except OSError as exc:
        LOG.error("commitment: %s: cannot read %s: %s", sop_instance, record.path, exc)
        return REASON_PROCESSING_FAILURE
    if len(data) != record.size:
        LOG.error(
            "commitment: %s: %s has %d bytes, %d when stored",
            sop_instance, record.path, len(data), record.size,
        )  # fmt: skip
        return REASON_PROCESSING_FAILURE
    stored_hash = archive.stored_content_hash(sop_instance)
    if stored_hash:
        if content_hash(data) != stored_hash:
            LOG.error("commitment: %s: %s changed since stored", sop_instance, record.path)
            return REASON_PROCESSING_FAILURE
        return None
    try:
        ds = dcmread(BytesIO(data))
        uids = (str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    except Exception as exc:  # pydicom raises assorted errors on damaged files
        LOG.error("commitment: %s: %s does not parse: %s", sop_instance, record.path, exc)
        return REASON_PROCESSING_FAILURE
    if uids != (sop_class, sop_instance):
        LOG.error("commitment: %s: %s holds another instance", sop_instance, record.path)
        return REASON_PROCESSING_FAILURE
    return None


def check_references(
    archive: Archive, references: Sequence[Reference]
) -> tuple[list[Reference], list[Failure]]:
    succeeded: list[Reference] = []
    failed: list[Failure] = []
    for sop_class, sop_instance in references:
        try:
            reason = check_instance(archive, sop_class, sop_instance)
        except Exception:
            LOG.exception("commitment: checking %s failed", sop_instance)
            reason = REASON_PROCESSING_FAILURE
        if reason is None:
            succeeded.append((sop_class, sop_instance))
        else:
            failed.append((sop_class, sop_instance, reason))
    return succeeded, failed


# --- SCP: the service ------------------------------------------------------------------------


def _watch_response(assoc: Association, message_id: int) -> threading.Event:
    """An event set once the response to request ``message_id`` has been queued for sending.

    The report must not overtake the N-ACTION response, and pynetdicom sends that response
    only after our handler has returned; this wraps the association's DIMSE send.
    """
    sent = threading.Event()
    dimse = assoc.dimse
    watchers: dict[int, threading.Event] | None = dimse.__dict__.get("_commitment_watchers")
    if watchers is None:
        watchers = {}
        send_msg = dimse.send_msg

        def send_and_tell(primitive: Any, context_id: int) -> None:
            send_msg(primitive, context_id)
            if isinstance(primitive, N_ACTION) and primitive.MessageIDBeingRespondedTo:
                waiting = watchers.pop(primitive.MessageIDBeingRespondedTo, None)
                if waiting is not None:
                    waiting.set()

        dimse.__dict__["_commitment_watchers"] = watchers
        dimse.send_msg = send_and_tell  # type: ignore[method-assign]
    watchers[message_id] = sent
    return sent


def _peer(assoc: Association) -> tuple[str, str]:
    requestor = assoc.requestor
    return requestor.ae_title.strip(), f"{requestor.address}:{requestor.port}"


class CommitmentService:
    """Storage Commitment Push Model SCP, and receiver of the reports to our own requests.

    A ``ScpService`` for ``DicomServer``; ``start()`` (after the server has started) runs the
    thread that sends reports on new associations, first the ones left from the last run.
    """

    def __init__(self, data_dir: Path) -> None:
        self.store = CommitmentStore(data_dir)
        self._server: DicomServer | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- ScpService ------------------------------------------------------------------------

    def add_contexts(self, ae: AE, settings: Settings) -> None:
        syntaxes = [ts for ts in settings.transfer_syntaxes if not UID(ts).is_compressed]
        # Both roles: a peer that reports on its own association proposes role selection with
        # itself as SCP (PS3.4 J.3.3), and we must take it as SCU there.
        ae.add_supported_context(
            SOP_CLASS, syntaxes or [IMPLICIT_VR_LE], scu_role=True, scp_role=True
        )

    def handlers(self, server: DicomServer) -> EventHandlers:
        self._server = server
        return [
            (evt.EVT_N_ACTION, self._on_n_action),
            (evt.EVT_N_EVENT_REPORT, self._on_n_event_report),
        ]

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, server: DicomServer | None = None) -> None:
        if server is not None:
            self._server = server
        assert self._server is not None, "handlers() or start(server) first"
        self._thread = threading.Thread(target=self._run, name="CommitmentReports", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending reports; those not sent stay in commitments.json for the next run."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        self.store.close()

    @property
    def server(self) -> DicomServer:
        assert self._server is not None
        return self._server

    # --- N-ACTION: a node asks us to commit ------------------------------------------------

    def _on_n_action(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        refused = self.server.refuse_service(event, "commitment")
        if refused is not None:
            return refused, None
        request = event.request
        calling, address = _peer(event.assoc)
        if str(request.RequestedSOPInstanceUID) != SOP_INSTANCE:
            return self._refuse(
                calling, STATUS_NO_SUCH_SOP_INSTANCE,
                f"Requested SOP Instance must be {SOP_INSTANCE}",
            )  # fmt: skip
        if request.ActionTypeID != ACTION_REQUEST_COMMITMENT:
            return self._refuse(
                calling, STATUS_NO_SUCH_ACTION, f"no Action Type {request.ActionTypeID}"
            )
        try:
            info = event.action_information
        except Exception as exc:
            return self._refuse(calling, STATUS_PROCESSING_FAILURE, f"cannot decode: {exc}")
        parsed = parse_action_information(info)
        if isinstance(parsed, str):
            return self._refuse(calling, STATUS_INVALID_ARGUMENT, parsed)
        transaction_uid, references = parsed
        incoming = IncomingRequest(transaction_uid, calling, address, time.time(), references)
        try:
            # Recorded before the response: once the requester has 0000, a crash must not
            # lose the request.
            self.store.add_incoming(incoming)
        except Exception as exc:
            LOG.exception("commitment request %s: cannot record it", transaction_uid)
            return self._refuse(calling, STATUS_PROCESSING_FAILURE, f"cannot record: {exc}")
        LOG.info(
            "commitment request %s from %s at %s: %d instances",
            transaction_uid, calling, address, len(references),
        )  # fmt: skip
        response_sent = _watch_response(event.assoc, request.MessageID)
        threading.Thread(
            target=self._serve_request,
            args=(event.assoc, event.context.context_id, incoming, response_sent),
            name=f"Commitment-{transaction_uid[-12:]}",
            daemon=True,
        ).start()
        return 0x0000, None

    @staticmethod
    def _refuse(calling: str, status: int, comment: str) -> tuple[Dataset, None]:
        LOG.error("commitment request from %s refused with 0x%04X: %s", calling, status, comment)
        return error_status(status, comment), None

    def _serve_request(
        self,
        assoc: Association,
        context_id: int,
        request: IncomingRequest,
        response_sent: threading.Event,
    ) -> None:
        try:
            self._check_and_report(assoc, context_id, request, response_sent)
        except Exception:
            # The request stays in commitments.json; the next start checks and reports it.
            LOG.exception("commitment request %s failed", request.transaction_uid)

    def _check_and_report(
        self,
        assoc: Association,
        context_id: int,
        request: IncomingRequest,
        response_sent: threading.Event,
    ) -> None:
        settings = self.server.settings
        responded = response_sent.wait(settings.dimse_timeout)
        responded_at = time.monotonic()
        request.succeeded, request.failed = check_references(
            self.server.archive, request.references
        )
        request.state = REPORTING
        self.store.update_incoming(request)
        if responded and self._requester_stays(assoc, responded_at):
            try:
                delivered, note = report_on_requester_association(
                    assoc, context_id, request, settings
                )
            except Exception as exc:
                LOG.exception("commitment report %s", request.transaction_uid)
                delivered, note = False, str(exc)
            if delivered:
                self._delivered(request, "same association", note)
                return
            LOG.info(
                "commitment report %s not sent on the requester's association (%s); "
                "sending it on a new one",
                request.transaction_uid, note,
            )  # fmt: skip
        request.state = QUEUED
        request.next_attempt_at = 0.0
        self.store.update_incoming(request)
        self._wake.set()

    def _requester_stays(self, assoc: Association, responded_at: float) -> bool:
        """Whether the requester is still on its association after the grace period."""
        while not _peer_leaving(assoc):
            if time.monotonic() - responded_at >= SAME_ASSOCIATION_GRACE:
                return True
            time.sleep(0.02)
        return False

    def _delivered(self, request: IncomingRequest, via: str, note: str) -> None:
        request.state = DELIVERED
        request.delivered_at = time.time()
        request.delivered_via = via
        request.last_error = ""
        self.store.update_incoming(request)
        LOG.info(
            "commitment report %s to %s sent on the %s (event type %d: %d committed, "
            "%d failed); the requester %s",
            request.transaction_uid, request.requester_ae, via, request.event_type,
            len(request.succeeded), len(request.failed), note,
        )  # fmt: skip

    # --- reports on new associations -------------------------------------------------------

    def _run(self) -> None:
        try:
            self._resume_after_restart()
        except Exception:
            LOG.exception("commitment: cannot resume the reports of the last run")
        start_up = True
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self._send_due_reports(everything=start_up)
            except Exception:
                LOG.exception("commitment: sending reports failed")
            start_up = False
            self._wake.wait(self._next_wait())

    def _resume_after_restart(self) -> None:
        self.store.prune(time.time() - KEEP_FINISHED_SECONDS)
        for request in self.store.incoming([RECEIVED, REPORTING]):
            if request.state == RECEIVED:
                # Stopped before the instances were checked: check them now.
                request.succeeded, request.failed = check_references(
                    self.server.archive, request.references
                )
            LOG.info(
                "commitment report %s to %s left from the last run",
                request.transaction_uid, request.requester_ae,
            )  # fmt: skip
            request.state = QUEUED
            request.next_attempt_at = 0.0
            self.store.update_incoming(request)

    def _send_due_reports(self, *, everything: bool) -> None:
        now = time.time()
        for request in self.store.incoming([QUEUED]):
            if self._stop.is_set():
                return
            if everything or request.next_attempt_at <= now:
                self._send_on_new_association(request)

    def _next_wait(self) -> float:
        due = [r.next_attempt_at for r in self.store.incoming([QUEUED])]
        if not due:
            return 60.0
        return max(0.05, min(60.0, min(due) - time.time()))

    def _node_for(self, request: IncomingRequest) -> Node | None:
        nodes = self.server.nodes_with_ae_title(request.requester_ae)
        host = request.requester_address.rsplit(":", 1)[0]
        # Several nodes may share an AE title: the one at the requester's address first.
        nodes.sort(key=lambda n: (n.host != host, not n.allows("commitment")))
        return nodes[0] if nodes else None

    def _send_on_new_association(self, request: IncomingRequest) -> None:
        node = self._node_for(request)
        if node is None:
            delivered, note = False, f"no configured node has AE title {request.requester_ae}"
        else:
            try:
                delivered, note = send_report(self.server.settings, node, request)
            except Exception as exc:
                LOG.exception("commitment report %s", request.transaction_uid)
                delivered, note = False, str(exc)
        if delivered:
            self._delivered(request, "new association", note)
            return
        request.attempts += 1
        request.last_error = note
        if request.attempts > len(REPORT_RETRY_DELAYS):
            request.state = GAVE_UP
            LOG.error(
                "commitment report %s to %s given up after %d attempts: %s",
                request.transaction_uid, request.requester_ae, request.attempts, note,
            )  # fmt: skip
        else:
            delay = REPORT_RETRY_DELAYS[request.attempts - 1]
            request.next_attempt_at = time.time() + delay
            LOG.warning(
                "commitment report %s to %s not sent (%s); trying again in %g s",
                request.transaction_uid, request.requester_ae, note, delay,
            )  # fmt: skip
        self.store.update_incoming(request)

    # --- N-EVENT-REPORT: the report to one of our requests ---------------------------------

    def _on_n_event_report(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        refused = self.server.refuse_service(event, "commitment")
        if refused is not None:
            return refused, None
        calling, _address = _peer(event.assoc)
        return receive_report(self.store, event, calling, via="new association"), None


def receive_report(
    store: CommitmentStore, event: evt.Event, calling_ae: str, *, via: str
) -> int | Dataset:
    """Record a report (the N-EVENT-REPORT ``event``) against our request; the status to
    answer."""
    request = event.request
    if request.EventTypeID not in (EVENT_ALL_COMMITTED, EVENT_FAILURES):
        return error_status(STATUS_NO_SUCH_EVENT_TYPE, f"no Event Type {request.EventTypeID}")
    try:
        info = event.event_information
    except Exception as exc:
        return error_status(STATUS_PROCESSING_FAILURE, f"cannot decode: {exc}")
    parsed = parse_event_information(info)
    if isinstance(parsed, str):
        LOG.error("commitment report from %s refused: %s", calling_ae, parsed)
        return error_status(STATUS_INVALID_ARGUMENT, parsed)
    transaction_uid, committed, failed = parsed
    recorded = store.record_report(
        transaction_uid,
        int(request.EventTypeID),
        committed,
        failed,
        reported_by=calling_ae,
        via=via,
    )
    if recorded is None:
        # Answered with success all the same: the node has done its part, and a failure
        # would only make it send the report again.
        LOG.warning(
            "commitment report %s from %s matches no request of ours",
            transaction_uid, calling_ae,
        )  # fmt: skip
    else:
        LOG.info(
            "commitment report %s from %s on the %s: %d committed, %d failed",
            transaction_uid, calling_ae, via, len(committed), len(failed),
        )  # fmt: skip
    return 0x0000


# --- SCU: asking a node to commit ------------------------------------------------------------


def request_commitment(
    settings: Settings,
    node: Node,
    references: Sequence[Reference],
    store: CommitmentStore,
    *,
    timeout: float | None = None,
    poll_interval: float = 0.2,
) -> OutgoingRequest:
    """Ask ``node`` to commit ``references`` and wait up to ``timeout`` (default: the setting
    ``commitment_timeout``) for its report, on our association or, through the daemon, on a
    new one. Never raises for a network problem: the result says what happened."""
    timeout = settings.commitment_timeout if timeout is None else timeout
    now = time.time()
    outgoing = OutgoingRequest(
        # A 2.25 UUID-derived UID: unique without a registered root.
        transaction_uid=generate_uid(prefix=None),
        node=node.name,
        ae_title=node.ae_title,
        host=node.host,
        port=node.port,
        requested_at=now,
        deadline=now + timeout,
        references=list(dict.fromkeys(references)),
    )
    transaction_uid = outgoing.transaction_uid
    # Recorded first: the report may reach the daemon before our N-ACTION response comes.
    store.add_outgoing(outgoing)
    reported = threading.Event()

    def on_report(event: evt.Event) -> tuple[int | Dataset, None]:
        status = receive_report(store, event, node.ae_title, via="same association")
        reported.set()
        # pynetdicom wants (status, Event Reply) from an N-EVENT-REPORT handler: a bare status
        # makes it abort the association instead of answering the report.
        return status, None

    assoc, connected = _associate(settings, node, handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    if not assoc.is_established:
        return _refused(
            store, transaction_uid, describe_failed_association(assoc, connected=connected)
        )
    try:
        with _ResponseKeeper.on(assoc).waiting():
            status, _reply = assoc.send_n_action(
                action_information(transaction_uid, outgoing.references),
                ACTION_REQUEST_COMMITMENT,
                SOP_CLASS,
                SOP_INSTANCE,
            )
    except (RuntimeError, ValueError) as exc:
        assoc.abort()
        return _refused(store, transaction_uid, f"N-ACTION not sent: {exc}")
    if "Status" not in status:
        if assoc.is_established:
            assoc.abort()
        return _refused(store, transaction_uid, "no N-ACTION response (timeout or aborted)")
    if int(status.Status) != 0x0000:
        comment = status.get("ErrorComment")
        if assoc.is_established:
            assoc.release()
        detail = f"N-ACTION answered 0x{int(status.Status):04X}"
        return _refused(store, transaction_uid, f"{detail}: {comment}" if comment else detail)
    current = store.get_outgoing(transaction_uid)
    if current is not None and current.state == REQUESTING:
        store.set_outgoing(transaction_uid, state=WAITING)
    try:
        # Held open until the report comes, on it or (to the daemon) on another association,
        # so a peer that reports on the requester's association can do so.
        while time.time() < outgoing.deadline:
            if reported.wait(poll_interval):
                break
            current = store.get_outgoing(transaction_uid)
            if current is not None and current.state == REPORTED:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    result = store.get_outgoing(transaction_uid)
    assert result is not None
    return result


def _refused(store: CommitmentStore, transaction_uid: str, error: str) -> OutgoingRequest:
    store.set_outgoing(transaction_uid, state=REFUSED, error=error)
    result = store.get_outgoing(transaction_uid)
    assert result is not None
    return result
