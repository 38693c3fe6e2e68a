"""SCU side: C-ECHO and C-STORE to remote nodes."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from appliance import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, tls
from appliance.config import Node, Settings
from appliance.dicom_classes import (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    VERIFICATION_SOP_CLASS,
    transfer_syntax_name,
)
from appliance.network import apply_timeouts

# PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255, so 128 per association.
MAX_CONTEXTS_PER_ASSOCIATION = 128
MEDIA_STORAGE_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"

SUCCESS = "success"
WARNING = "warning"
FAILURE = "failure"
SKIPPED = "skipped"


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
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.maximum_pdu_size = settings.max_pdu
    apply_timeouts(ae, settings)
    return ae


def associate(
    ae: AE,
    settings: Settings,
    node: Node,
    contexts: list[PresentationContext],
    *,
    ext_neg: list[Any] | None = None,
    evt_handlers: list[tuple[evt.EventType, Callable]] | None = None,
) -> tuple[Association, bool]:
    """Request an association for our requests only; also says whether the TCP connection was
    ever made, which pynetdicom 3 does not (a refused connection looks like an aborted
    association).

    The peer never sends us requests on it, except the C-STOREs of our own C-GET: pynetdicom's
    C-GET loop serves those itself (with the EVT_C_STORE handler in ``evt_handlers``, and SCP
    role selection items in ``ext_neg``), so a C-STORE the reactor picks up and puts back on
    the queue is still served."""
    connected = threading.Event()

    def on_open(event: evt.Event) -> None:
        connected.set()
        _disable_nagle(event.assoc)
        _keep_responses_for_the_caller(event.assoc)

    tls_args = tls.tls_args(settings, node)
    assoc = ae.associate(
        node.host,
        node.port,
        contexts=contexts,
        ae_title=node.ae_title,
        # AE.associate() offers its own default, not ae.maximum_pdu_size, unless told.
        max_pdu=settings.max_pdu,
        ext_neg=ext_neg,
        evt_handlers=[(evt.EVT_CONN_OPEN, on_open), *(evt_handlers or [])],
        tls_args=tls_args,  # type: ignore[arg-type]
    )
    note_tls_failure(assoc, tls_args)
    return assoc, connected.is_set()


def note_tls_failure(assoc: Association, tls_args: tuple[tls.RecordingContext, str] | None) -> None:
    """Keep a failed TLS handshake's reason on the association for describe_failed_association."""
    failure = tls.failure_of(tls_args)
    if failure:
        assoc.tls_failure = failure  # type: ignore[attr-defined]


def _disable_nagle(assoc: Association) -> None:
    # pynetdicom writes a C-STORE as several small sends; with Nagle's algorithm the later
    # ones wait for the peer's delayed ACK, about 40 ms per instance, which dominates the time
    # for small images. pynetdicom has no option for it, so reach the raw socket.
    raw = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if raw is None:
        return
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def _keep_responses_for_the_caller(assoc: Association) -> None:
    # pynetdicom 3.0 pauses the association's reactor thread around send_c_store() with a
    # flag that can read "paused" just before the reactor takes one more message off the
    # DIMSE queue. When that message is our C-STORE response the reactor drops it and
    # send_c_store() waits out the DIMSE timeout; under CPU load this happens every few
    # hundred instances. A requestor-only association has no request to serve, so whatever
    # the reactor picks up goes back on the queue for send_c_store() to read.
    def requeue(msg: object, context_id: int) -> None:
        assoc.dimse.msg_queue.put((context_id, msg))  # type: ignore[arg-type]

    assoc._serve_request = requeue  # type: ignore[method-assign]


def echo(settings: Settings, node: Node) -> EchoResult:
    ae = requestor_ae(settings)
    assoc, connected = associate(ae, settings, node, [build_context(VERIFICATION_SOP_CLASS)])
    if not assoc.is_established:
        return EchoResult(node, None, describe_failed_association(assoc, connected=connected))
    try:
        response = assoc.send_c_echo()
    finally:
        assoc.release()
    status = response.get("Status") if response else None
    if status is None:
        return EchoResult(node, None, "no response (DIMSE timeout or aborted)")
    return EchoResult(node, int(status), f"status 0x{int(status):04X}")


def describe_failed_association(assoc: object, *, connected: bool = True) -> str:
    tls_failure = getattr(assoc, "tls_failure", None)
    if tls_failure:
        return str(tls_failure)
    if not connected:
        timeout = getattr(assoc, "connection_timeout", None)
        waited = f" within {timeout:g} s" if timeout else ""
        return f"cannot connect (connection refused, unreachable, or no answer{waited})"
    if getattr(assoc, "is_rejected", False):
        rj = assoc.acceptor.primitive  # type: ignore[attr-defined]
        return (
            f"association rejected (result {rj.result_str}, source {rj.source_str}, "
            f"reason {rj.reason_str})"
        )
    if getattr(assoc, "is_aborted", False):
        # pynetdicom aborts by itself when the peer accepts the association but none of the
        # contexts; "aborted by the peer" would send the operator looking in the wrong place.
        if contexts_all_rejected(assoc):  # type: ignore[arg-type]
            rejected = list(assoc.rejected_contexts)  # type: ignore[attr-defined]
            reasons = sorted({cx.status for cx in rejected})
            return (
                f"peer accepted none of the {len(rejected)} proposed presentation contexts "
                f"({', '.join(reasons)})"
            )
        return "association aborted (by the peer, or no answer within the association timeout)"
    return "association failed (no usable answer from the peer)"


# --- C-STORE ---------------------------------------------------------------------------------


def status_outcome(status: int) -> str:
    """success / warning / failure for a C-STORE response status (PS3.4 B.2.3, PS3.7 C)."""
    if status == 0x0000:
        return SUCCESS
    # 0001 and Bxxx mean "stored, but not as sent": the operator must see them, not a success.
    if status == 0x0001 or 0xB000 <= status <= 0xBFFF:
        return WARNING
    return FAILURE


def status_text(status: int) -> str:
    known = STORAGE_SERVICE_CLASS_STATUS.get(status)
    if known:
        # pynetdicom leaves 0000's description empty; its category reads fine there.
        return str(known[1] or known[0])
    if 0xB000 <= status <= 0xBFFF:
        return "Warning"
    return "Unknown status"


@dataclass
class InstanceResult:
    """What happened to one file: sent (with the peer's status), refused, or never sent."""

    path: Path
    sop_instance_uid: str | None
    status: int | None
    outcome: str
    message: str
    sop_class_uid: str | None = None
    transfer_syntax: str | None = None  # as sent on the wire
    # No answer because the association failed (refused, rejected, aborted, timed out): the
    # instance may or may not have arrived, and another attempt may work. Never set for a status
    # the peer gave, nor for a problem of the file or of the negotiated contexts.
    association_failure: bool = False

    @property
    def status_hex(self) -> str | None:
        return None if self.status is None else f"0x{self.status:04X}"

    def line(self) -> str:
        label = {SUCCESS: "success", WARNING: "WARNING", FAILURE: "FAILURE", SKIPPED: "skipped"}
        status = self.status_hex or "-"
        uid = self.sop_instance_uid or "-"
        text = f"{label.get(self.outcome, self.outcome):<7}  {status:<6}  {uid}  {self.path}"
        return f"{text}: {self.message}" if self.message else text

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sop_instance_uid": self.sop_instance_uid,
            "sop_class_uid": self.sop_class_uid,
            "status": self.status_hex,
            "outcome": self.outcome,
            "message": self.message,
            "transfer_syntax": self.transfer_syntax,
        }


@dataclass
class SendReport:
    node: Node
    results: list[InstanceResult] = field(default_factory=list)
    associations: int = 0
    # The caller's stop callback said stop: files after that point were not sent and have no
    # result.
    stopped: bool = False

    def _with(self, outcome: str) -> list[InstanceResult]:
        return [r for r in self.results if r.outcome == outcome]

    @property
    def succeeded(self) -> list[InstanceResult]:
        return self._with(SUCCESS)

    @property
    def warnings(self) -> list[InstanceResult]:
        return self._with(WARNING)

    @property
    def failed(self) -> list[InstanceResult]:
        return self._with(FAILURE)

    @property
    def skipped(self) -> list[InstanceResult]:
        return self._with(SKIPPED)

    def summary(self) -> str:
        counted = len(self.results) - len(self.skipped)
        text = (
            f"sent {counted}: {len(self.succeeded)} success, {len(self.warnings)} warning, "
            f"{len(self.failed)} failed"
        )
        if self.skipped:
            text += f", {len(self.skipped)} skipped"
        return text

    def header(self) -> str:
        node = self.node
        return f"to {node.name} ({node.ae_title}@{node.host}:{node.port})"

    def lines(self) -> list[str]:
        return [self.header(), *(r.line() for r in self.results), self.summary()]

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node.name,
            "ae_title": self.node.ae_title,
            "host": self.node.host,
            "port": self.node.port,
            "associations": self.associations,
            "summary": {
                "sent": len(self.results) - len(self.skipped),
                "success": len(self.succeeded),
                "warning": len(self.warnings),
                "failed": len(self.failed),
                "skipped": len(self.skipped),
            },
            "instances": [r.as_dict() for r in self.results],
        }


@dataclass(frozen=True)
class Candidate:
    """A readable DICOM file, described from its header only, waiting to be sent."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str

    @property
    def context_key(self) -> tuple[str, tuple[str, ...]]:
        return self.sop_class_uid, proposed_transfer_syntaxes(self.transfer_syntax)


@dataclass
class Batch:
    """Files that go over one association, and the contexts proposed for them."""

    contexts: list[tuple[str, tuple[str, ...]]]
    candidates: list[Candidate]


def proposed_transfer_syntaxes(transfer_syntax: str) -> tuple[str, ...]:
    """The file's own syntax first, then the uncompressed ones we can always fall back to."""
    fallbacks = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
    return (transfer_syntax, *(ts for ts in fallbacks if ts != transfer_syntax))


def plan_batches(
    candidates: Sequence[Candidate], max_contexts: int = MAX_CONTEXTS_PER_ASSOCIATION
) -> list[Batch]:
    """Group files so that no association needs more than ``max_contexts`` contexts.

    Files keep their order within a batch; contexts are taken in order of first use.
    """
    keys: list[tuple[str, tuple[str, ...]]] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for candidate in candidates:
        if candidate.context_key not in seen:
            seen.add(candidate.context_key)
            keys.append(candidate.context_key)
    batches = []
    for start in range(0, len(keys), max_contexts):
        chunk = keys[start : start + max_contexts]
        wanted = set(chunk)
        members = [c for c in candidates if c.context_key in wanted]
        batches.append(Batch(contexts=chunk, candidates=members))
    return batches


def collect_files(paths: Iterable[Path]) -> tuple[list[Path], list[InstanceResult]]:
    """Expand folders (recursively, in a stable order); unusable arguments become failures."""
    files: list[Path] = []
    problems: list[InstanceResult] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append(path)

    for path in paths:
        if path.is_file():
            add(path)
        elif path.is_dir():
            found = []
            # os.walk does not follow directory symlinks, so a link loop cannot hang us.
            for root, dirs, names in os.walk(path):
                dirs.sort()
                found.extend(Path(root) / name for name in sorted(names))
            if not found:
                problems.append(_failure(path, "folder contains no files"))
            for entry in found:
                if entry.is_file():
                    add(entry)
                else:
                    # Never open these: a FIFO would block, a dangling link cannot be read.
                    problems.append(
                        _failure(entry, "not a regular file (dangling link, pipe or device)")
                    )
        elif path.exists():
            problems.append(_failure(path, "not a regular file or folder"))
        else:
            problems.append(_failure(path, "no such file or folder"))
    return files, problems


def _failure(
    path: Path,
    message: str,
    candidate: Candidate | None = None,
    *,
    association_failure: bool = False,
) -> InstanceResult:
    return InstanceResult(
        path=path,
        sop_instance_uid=candidate.sop_instance_uid if candidate else None,
        status=None,
        outcome=FAILURE,
        message=message,
        sop_class_uid=candidate.sop_class_uid if candidate else None,
        association_failure=association_failure,
    )


def inspect_file(path: Path) -> Candidate | InstanceResult:
    """Read just enough of ``path`` to plan its presentation context."""
    try:
        ds = dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID"],
        )
    except InvalidDicomError:
        return _failure(path, "not a DICOM file (no DICOM Part 10 header), not sent")
    except OSError as exc:
        return _failure(path, f"cannot read: {exc.strerror or exc}")
    except Exception as exc:  # pydicom raises many types on damaged files
        return _failure(path, f"cannot parse as DICOM: {exc}")
    meta = ds.file_meta
    if meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY_SOP_CLASS:
        return InstanceResult(path, None, None, SKIPPED, "DICOMDIR (media index), not sent")
    sop_class = ds.get("SOPClassUID")
    sop_instance = ds.get("SOPInstanceUID")
    transfer_syntax = meta.get("TransferSyntaxUID")
    if not sop_class or not sop_instance:
        return _failure(path, "no SOP Class UID or SOP Instance UID in the data set")
    if not transfer_syntax:
        return _failure(path, "no Transfer Syntax UID in the file meta information")
    return Candidate(path, str(sop_class), str(sop_instance), str(transfer_syntax))


@dataclass(frozen=True)
class _Route:
    send_as: str
    decompress: bool


def choose_route(transfer_syntax: str, accepted: Sequence[str]) -> _Route | str:
    """How a file in ``transfer_syntax`` can go out given the syntaxes the peer accepted for
    its SOP class (in context ID order); a string explains why it cannot.

    Mirrors pynetdicom's send_c_store choice (exact match first, then the first convertible
    context) so the syntax we report is the one on the wire.
    """
    ts = UID(transfer_syntax)
    names = ", ".join(transfer_syntax_name(t) for t in dict.fromkeys(accepted))
    if not accepted:
        return "the peer accepted no presentation context for this SOP class"
    if ts in accepted:
        return _Route(ts, decompress=False)
    plain_le = [t for t in accepted if not UID(t).is_compressed and UID(t).is_little_endian]
    if ts.is_compressed:
        if EXPLICIT_VR_LE in accepted:
            return _Route(EXPLICIT_VR_LE, decompress=True)
        if plain_le:
            return _Route(plain_le[0], decompress=True)
        return (
            f"the peer accepts only {names} for this SOP class; no conversion from "
            f"{transfer_syntax_name(ts)}"
        )
    if ts.is_little_endian and plain_le:
        # Explicit <-> implicit and deflate <-> inflate: pynetdicom re-encodes the data set.
        return _Route(plain_le[0], decompress=False)
    return (
        f"the peer accepts only {names} for this SOP class; no conversion from "
        f"{transfer_syntax_name(ts)}"
    )


def _accepted_syntaxes(assoc: Association) -> dict[str, list[str]]:
    accepted: dict[str, list[str]] = {}
    for cx in assoc.accepted_contexts:
        if cx.as_scu:
            accepted.setdefault(str(cx.abstract_syntax), []).append(str(cx.transfer_syntax[0]))
    return accepted


class _ConnectionLost(Exception):
    """No C-STORE response: the association cannot be used for the next instance."""


def _store_one(
    assoc: Association,
    candidate: Candidate,
    accepted: Sequence[str],
    msg_id: int,
    *,
    originator: tuple[str, int] | None = None,
) -> InstanceResult:
    """Send one file; raises _ConnectionLost (carrying the failure) when no answer came.

    ``originator`` is the (AE title, Message ID) of the C-MOVE this C-STORE is a
    sub-operation of.
    """

    def fail(message: str, *, association_failure: bool = False) -> InstanceResult:
        return _failure(candidate.path, message, candidate, association_failure=association_failure)

    route = choose_route(candidate.transfer_syntax, accepted)
    if isinstance(route, str):
        return fail(route)
    try:
        ds: Dataset = dcmread(candidate.path)
    except Exception as exc:
        return fail(f"cannot read: {exc}")
    notes = []
    if route.decompress:
        source = transfer_syntax_name(candidate.transfer_syntax)
        try:
            # pydicom mints a new SOP Instance UID by default; the pixels are unchanged, so
            # the peer must receive the same instance, not a duplicate under a new UID.
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:  # missing codec, corrupt fragments, unsupported layout
            return fail(f"cannot decompress {source}: {exc}")
        notes.append(f"decompressed from {source}")
    if route.send_as != candidate.transfer_syntax:
        notes.append(f"sent as {transfer_syntax_name(route.send_as)}")
    started = time.monotonic()
    try:
        response = assoc.send_c_store(
            ds,
            msg_id=msg_id,
            originator_aet=originator[0] if originator else None,
            originator_id=originator[1] if originator else None,
        )
    except (ValueError, AttributeError, RuntimeError) as exc:
        return fail(f"not sent: {exc}")
    if "Status" not in response:
        # pynetdicom gives the same empty answer for a timeout and for an abort or a dropped
        # connection; the time spent tells them apart.
        timeout = assoc.dimse_timeout
        if timeout is not None and time.monotonic() - started >= timeout - 0.5:
            raise _ConnectionLost(
                fail(
                    f"no response within the DIMSE timeout ({timeout:g} s)",
                    association_failure=True,
                )
            )
        raise _ConnectionLost(
            fail(
                "no response: the peer aborted the association or closed the connection",
                association_failure=True,
            )
        )
    status = int(response.Status)
    message = status_text(status)
    comment = response.get("ErrorComment")
    if comment:
        message += f" ({comment})"
    if notes:
        message += "; " + ", ".join(notes)
    return InstanceResult(
        candidate.path,
        candidate.sop_instance_uid,
        status,
        status_outcome(status),
        message,
        candidate.sop_class_uid,
        route.send_as,
    )


def contexts_all_rejected(assoc: Association) -> bool:
    """The peer accepted the association but none of its presentation contexts (pynetdicom then
    aborts it): a matter of configuration, not of the network."""
    answer = getattr(getattr(assoc, "acceptor", None), "primitive", None)
    rejected = list(getattr(assoc, "rejected_contexts", []) or [])
    return answer is not None and getattr(answer, "result", None) == 0x00 and bool(rejected)


def _send_batch(
    ae: AE,
    settings: Settings,
    node: Node,
    batch: Batch,
    record: Callable[[InstanceResult], None],
    should_stop: Callable[[], bool] | None = None,
) -> bool:
    """Send one batch over one association; False when ``should_stop`` said stop (the files
    after that point have no result)."""
    contexts = [build_context(sop_class, list(syntaxes)) for sop_class, syntaxes in batch.contexts]
    assoc, connected = associate(ae, settings, node, contexts)
    if not assoc.is_established:
        reason = describe_failed_association(assoc, connected=connected)
        transient = not (connected and contexts_all_rejected(assoc))
        for candidate in batch.candidates:
            record(
                _failure(
                    candidate.path, f"not sent: {reason}", candidate, association_failure=transient
                )
            )
        return True
    broken = False
    try:
        accepted = _accepted_syntaxes(assoc)
        for number, candidate in enumerate(batch.candidates):
            # Between instances, never in the middle of one: a stop leaves every instance
            # either answered by the peer or not sent at all.
            if should_stop is not None and should_stop():
                return False
            # After a missing response the association may still look established for a
            # moment (pynetdicom handles the abort in its own thread); never reuse it, a
            # C-STORE on a dead connection only ends after the DIMSE timeout.
            if broken or not assoc.is_established:
                broken = True
                record(
                    _failure(
                        candidate.path,
                        "not sent: the association was aborted before this instance",
                        candidate,
                        association_failure=True,
                    )
                )
                continue
            # Message IDs are 16-bit; a batch may hold more instances than that.
            msg_id = number % 0xFFFF + 1
            try:
                result = _store_one(
                    assoc, candidate, accepted.get(candidate.sop_class_uid, []), msg_id
                )
            except _ConnectionLost as lost:
                broken = True
                result = lost.args[0]
            record(result)
    finally:
        if broken:
            assoc.abort()
        elif assoc.is_established:
            assoc.release()
    return True


def send_candidates(
    settings: Settings,
    node: Node,
    candidates: Sequence[Candidate],
    record: Callable[[InstanceResult], None],
    *,
    should_stop: Callable[[], bool] | None = None,
    max_contexts: int = MAX_CONTEXTS_PER_ASSOCIATION,
) -> tuple[int, bool]:
    """C-STORE inspected files to ``node``, calling ``record`` with each result as soon as it
    is known. ``should_stop`` is asked before each instance. Returns the number of associations
    used and whether every candidate got a result (False: stopped)."""
    if not candidates:
        return 0, True
    ae = requestor_ae(settings)
    associations = 0
    for batch in plan_batches(candidates, max_contexts):
        if should_stop is not None and should_stop():
            return associations, False
        associations += 1
        if not _send_batch(ae, settings, node, batch, record, should_stop):
            return associations, False
    return associations, True


def send(
    settings: Settings,
    node: Node,
    paths: Iterable[Path],
    *,
    progress: Callable[[InstanceResult], None] | None = None,
    max_contexts: int = MAX_CONTEXTS_PER_ASSOCIATION,
    should_stop: Callable[[], bool] | None = None,
) -> SendReport:
    """C-STORE every DICOM file under ``paths`` to ``node``; never raises for a bad file.

    ``progress`` is called with each result as soon as it is known. ``should_stop`` is asked
    between instances; once it says True the rest is not sent (``report.stopped``).
    """
    report = SendReport(node)

    def record(result: InstanceResult) -> None:
        report.results.append(result)
        if progress is not None:
            progress(result)

    files, problems = collect_files(paths)
    for problem in problems:
        record(problem)
    candidates: list[Candidate] = []
    for path in files:
        inspected = inspect_file(path)
        if isinstance(inspected, Candidate):
            candidates.append(inspected)
        else:
            record(inspected)
    report.associations, finished = send_candidates(
        settings, node, candidates, record, should_stop=should_stop, max_contexts=max_contexts
    )
    report.stopped = not finished
    return report
