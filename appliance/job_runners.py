"""What each kind of job does in one attempt: send, forward, retrieve, commitment.

A runner gets a ``RunContext`` and records per-instance results as the peer answers. Its rules:

- an instance is ``success`` or ``warning`` only when the peer answered with that status;
- a failed C-STORE status is retried when ``store_status_retryable`` says so (A7xx, 0110, 0213)
  and not otherwise (A9xx, Cxxx, 0122, 0124, ...);
- when the association fails (refused connection, rejection, abort, timeout) the instances not
  answered stay ``pending`` and the attempt raises ``AttemptFailed`` (retryable);
- a problem no retry can fix (an unreadable file, an instance gone from the archive, a target
  node that is no longer configured) fails that instance, or the job, for good.

Parameters (``job.params``):

- ``send`` / ``forward``: ``paths`` (absolute paths of files or folders, scanned on the first
  attempt), ``sop_instance_uids`` and ``study_uids`` (instances of the archive), ``commit``
  (then a storage commitment request for the instances stored). Forward jobs (auto-routing)
  usually give ``sop_instance_uids``.
- ``retrieve``: ``study_uids``, ``series_uids``, ``sop_instance_uids``, ``patient_ids`` as
  ``qr_scu.plan_retrieve`` takes them, ``model`` (study or patient), ``method`` (move or get;
  default: the node's retrieve_method).
- ``commitment``: ``instances``: [{"sop_class_uid": ..., "sop_instance_uid": ...}].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread

from appliance import scu
from appliance.config import RETRIEVE_METHODS, ConfigError, ConfigStore, Node
from appliance.job_engine import AttemptFailed, RunContext
from appliance.jobs import (
    FAILED,
    PENDING,
    SUCCESS,
    WARNING,
    InstanceResult,
    JobError,
    store_status_retryable,
)

if TYPE_CHECKING:
    from appliance.job_engine import JobEngine
    from appliance.qr_scu import RetrieveRequest

SEND_SOURCES = ("paths", "sop_instance_uids", "study_uids")
RETRIEVE_KEYS = ("patient_ids", "study_uids", "series_uids", "sop_instance_uids")
SUMMARY_TAGS = ("PatientName", "PatientID", "StudyDescription", "StudyDate", "StudyInstanceUID")


def register_all(engine: JobEngine) -> None:
    engine.register("send", run_send, validate=validate_send)
    engine.register("forward", run_send, validate=validate_send)
    engine.register("retrieve", run_retrieve, validate=validate_retrieve)
    engine.register("commitment", run_commitment, validate=validate_commitment)


# --- shared ------------------------------------------------------------------------------------


def _check_node(target: str, config: ConfigStore) -> Node:
    try:
        return config.node(target)
    except ConfigError as exc:
        raise JobError(str(exc)) from None


def _node(ctx: RunContext) -> Node:
    try:
        return ctx.node()
    except ConfigError as exc:
        raise AttemptFailed(
            f"{exc}: reroute the job to a configured node", retryable=False
        ) from None


def _uid_list(params: dict[str, Any], key: str) -> list[str]:
    value = params.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise JobError(f"{key} must be a list of UIDs")
    return [v.strip() for v in value]


# --- send and forward --------------------------------------------------------------------------


def validate_send(
    target: str,
    params: dict[str, Any],
    config: ConfigStore,
    instances: Sequence[InstanceResult] = (),
) -> None:
    _check_node(target, config)
    paths = params.get("paths") or []
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise JobError("paths must be a list of file or folder paths")
    relative = [p for p in paths if not Path(p).is_absolute()]
    if relative:
        raise JobError(
            f"paths must be absolute (the daemon has its own working folder): {relative[0]}"
        )
    if paths:
        params["paths"] = paths
    for key in ("sop_instance_uids", "study_uids"):
        uids = _uid_list(params, key)
        if uids:
            params[key] = uids
    if not any(params.get(key) for key in SEND_SOURCES) and not instances:
        raise JobError("nothing to send: give paths, sop_instance_uids or study_uids")
    if "commit" in params and not isinstance(params["commit"], bool):
        raise JobError("commit must be true or false")


def run_send(ctx: RunContext) -> None:
    job = ctx.job
    node = _node(ctx)
    if not job.instances:
        ctx.set_stage("scanning")
        found = _instances_to_send(ctx)
        if ctx.should_stop():
            return
        ctx.add_instances(found)
        if not any(i.sop_instance_uid for i in found):
            raise AttemptFailed("no DICOM instances to send", retryable=False)
    candidates = _candidates(ctx)
    if candidates:
        ctx.set_stage("sending")
        association_failures: list[str] = []

        def on_result(result: scu.InstanceResult) -> None:
            if result.association_failure:
                association_failures.append(result.message)
            uid = result.sop_instance_uid or ""
            before = ctx.instance(uid)
            ctx.record(_job_result(result, before))

        scu.send_candidates(ctx.settings, node, candidates, on_result, should_stop=ctx.should_stop)
        if ctx.should_stop():
            return
        if association_failures:
            raise AttemptFailed(association_failures[0])
    if job.params.get("commit") and not job.outstanding():
        _commit_sent(ctx, node)


def _job_result(result: scu.InstanceResult, before: InstanceResult | None) -> InstanceResult:
    """The job's record of an instance from the storage SCU's result."""
    uid = result.sop_instance_uid or ""
    base = InstanceResult(
        sop_instance_uid=uid,
        path=before.path if before else str(result.path),
        sop_class_uid=(before.sop_class_uid if before else None) or result.sop_class_uid,
    )
    if result.outcome in (scu.SUCCESS, scu.WARNING):
        status = SUCCESS if result.outcome == scu.SUCCESS else WARNING
        message = "" if status == SUCCESS and result.message == "Success" else result.message
        return replace(
            base, status=status, status_code=result.status_hex, error=message, retryable=False
        )
    if result.association_failure:
        # Not answered: it stays to do, and the next attempt sends it again.
        return replace(base, status=PENDING, error=result.message, retryable=True)
    if result.status is not None:
        return replace(
            base,
            status=FAILED,
            status_code=result.status_hex,
            error=result.message,
            retryable=store_status_retryable(result.status),
        )
    # The file, or the negotiated contexts, will not change by trying again.
    return replace(base, status=FAILED, error=result.message, retryable=False)


def _failed_file(path: Path, message: str) -> InstanceResult:
    return InstanceResult(
        sop_instance_uid="", status=FAILED, error=message, retryable=False, path=str(path)
    )


def _instances_to_send(ctx: RunContext) -> list[InstanceResult]:
    """The first attempt's list of what the job sends: files scanned, archive resolved."""
    params = ctx.job.params
    found: list[InstanceResult] = []
    seen: set[str] = set()

    def add(result: InstanceResult) -> None:
        if result.sop_instance_uid and result.sop_instance_uid in seen:
            ctx.log(f"{result.path or result.sop_instance_uid}: same instance twice, sent once")
            return
        seen.add(result.sop_instance_uid)
        found.append(result)

    first_file: Path | None = None
    if params.get("paths"):
        files, problems = scu.collect_files(Path(p) for p in params["paths"])
        for problem in problems:
            add(_failed_file(problem.path, problem.message))
        for path in files:
            if ctx.should_stop():
                return found
            inspected = scu.inspect_file(path)
            if isinstance(inspected, scu.Candidate):
                first_file = first_file or path
                add(
                    InstanceResult(
                        inspected.sop_instance_uid,
                        path=str(path),
                        sop_class_uid=inspected.sop_class_uid,
                    )
                )
            elif inspected.outcome == scu.SKIPPED:
                ctx.log(f"{path}: {inspected.message}")
            else:
                add(_failed_file(path, inspected.message))
    studies: list[str] = []
    for uid in _uid_list(params, "sop_instance_uids"):
        record = ctx.archive.instance(uid)
        if record is None:
            add(InstanceResult(uid, status=FAILED, error="not in the archive", retryable=False))
        else:
            studies.append(record.study_uid)
            add(InstanceResult(uid, sop_class_uid=record.sop_class_uid))
    wanted_studies = _uid_list(params, "study_uids")
    if wanted_studies:
        for record in _study_instances(ctx, wanted_studies):
            studies.append(record.study_uid)
            add(InstanceResult(record.sop_instance_uid, sop_class_uid=record.sop_class_uid))
        for study in wanted_studies:
            if study not in studies:
                ctx.log(f"study {study}: no instances in the archive")
    if not ctx.job.summary:
        summary = _archive_summary(ctx, studies) if studies else _file_summary(first_file)
        if summary:
            ctx.set_summary(summary)
    return found


def _study_instances(ctx: RunContext, study_uids: list[str]) -> list[Any]:
    from pydicom.dataset import Dataset

    from appliance import query

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uids if len(study_uids) > 1 else study_uids[0]
    try:
        return query.resolve_instances(ctx.archive, identifier, query.STUDY_ROOT)
    except query.QueryError as exc:
        raise AttemptFailed(
            f"cannot list the studies in the archive: {exc}", retryable=False
        ) from None


def _archive_summary(ctx: RunContext, study_uids: list[str]) -> dict[str, Any]:
    unique = list(dict.fromkeys(study_uids))
    row = ctx.archive.study(unique[0]) or {}
    return {
        "patient_name": row.get("patient_name") or "",
        "patient_id": row.get("patient_id") or "",
        "study_description": row.get("study_description") or "",
        "study_date": row.get("study_date") or "",
        "studies": len(unique),
    }


def _file_summary(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=list(SUMMARY_TAGS))
    except Exception:
        return {}
    return {
        "patient_name": str(ds.get("PatientName", "") or ""),
        "patient_id": str(ds.get("PatientID", "") or ""),
        "study_description": str(ds.get("StudyDescription", "") or ""),
        "study_date": str(ds.get("StudyDate", "") or ""),
    }


def _candidates(ctx: RunContext) -> list[scu.Candidate]:
    """The outstanding instances, checked again: a file may have changed, an archive instance
    may have been removed since the last attempt."""
    candidates: list[scu.Candidate] = []
    for instance in ctx.job.outstanding():
        uid = instance.sop_instance_uid
        if not uid:
            continue
        if instance.path:
            inspected = scu.inspect_file(Path(instance.path))
            if not isinstance(inspected, scu.Candidate):
                problem = inspected.message
            elif inspected.sop_instance_uid != uid:
                problem = f"the file now holds another instance ({inspected.sop_instance_uid})"
            else:
                candidates.append(inspected)
                continue
        else:
            record = ctx.archive.instance(uid)
            if record is not None:
                candidates.append(
                    scu.Candidate(record.path, record.sop_class_uid, uid, record.transfer_syntax)
                )
                continue
            problem = "no longer in the archive"
        ctx.record(replace(instance, status=FAILED, error=problem, retryable=False))
    return candidates


def _commit_sent(ctx: RunContext, node: Node) -> None:
    """Storage commitment for the instances the node stored and has not committed yet."""
    from appliance import commitment, commitment_cli

    stored = [
        i
        for i in ctx.job.instances
        if i.done and i.committed is not True and i.sop_class_uid and i.sop_instance_uid
    ]
    if not stored:
        return
    ctx.set_stage("committing")
    ctx.log(f"asking {node.name} to commit {len(stored)} instance(s)")
    references = [(str(i.sop_class_uid), i.sop_instance_uid) for i in stored]
    result = commitment_cli.request(ctx.settings, node, references, ctx.data_dir)
    if result.state == commitment.REFUSED:
        # Not committed: stored again and committed by the next attempt when the request may
        # work then (a lost association), failed for good when the node refused it.
        retryable = _commitment_retryable(result.error)
        for instance in stored:
            ctx.record(
                replace(
                    instance,
                    status=FAILED,
                    committed=False,
                    retryable=retryable,
                    error=f"stored but not committed: {result.error}",
                ),
                attempted=False,
            )
        raise AttemptFailed(f"storage commitment: {result.error}", retryable=retryable)
    waited = result.deadline - result.requested_at
    for (_sop_class, uid), outcome, reason in result.outcomes():
        before = ctx.instance(uid)
        if before is None:
            continue
        if outcome == commitment.COMMITTED:
            ctx.record(replace(before, committed=True), attempted=False)
            continue
        if outcome == commitment.FAILED:
            why = f"{commitment.reason_text(reason or 0)} (0x{reason or 0:04X})"
        else:
            why = f"no commitment report within {waited:g} s"
        stored_as = f" ({before.status_code})" if before.status_code else ""
        ctx.record(
            replace(
                before,
                status=FAILED,
                committed=False,
                retryable=False,
                error=f"stored{stored_as} but not committed: {why}",
            ),
            attempted=False,
        )
    ctx.log(result.summary())


def _commitment_retryable(error: str) -> bool:
    # The N-ACTION's own failure status will not change, nor a node without the Storage
    # Commitment SOP class; a lost or refused association may.
    return not error.startswith("N-ACTION answered") and "accepted none of the" not in error


# --- commitment --------------------------------------------------------------------------------


def validate_commitment(
    target: str,
    params: dict[str, Any],
    config: ConfigStore,
    instances: Sequence[InstanceResult] = (),
) -> None:
    _check_node(target, config)
    if instances and not params.get("instances"):
        return
    items = params.get("instances")
    if not isinstance(items, list) or not items:
        raise JobError("instances must be a non-empty list of {sop_class_uid, sop_instance_uid}")
    cleaned = []
    for item in items:
        if not isinstance(item, dict):
            raise JobError("each instance needs sop_class_uid and sop_instance_uid")
        sop_class, uid = item.get("sop_class_uid"), item.get("sop_instance_uid")
        if not isinstance(sop_class, str) or not sop_class or not isinstance(uid, str) or not uid:
            raise JobError("each instance needs sop_class_uid and sop_instance_uid")
        cleaned.append({"sop_class_uid": sop_class, "sop_instance_uid": uid})
    params["instances"] = cleaned


def run_commitment(ctx: RunContext) -> None:
    from appliance import commitment, commitment_cli

    job = ctx.job
    node = _node(ctx)
    if not job.instances:
        ctx.add_instances(
            [
                InstanceResult(item["sop_instance_uid"], sop_class_uid=item["sop_class_uid"])
                for item in job.params.get("instances", [])
            ]
        )
    todo = [i for i in job.outstanding() if i.sop_class_uid]
    if not todo:
        return
    ctx.set_stage("committing")
    references = [(str(i.sop_class_uid), i.sop_instance_uid) for i in todo]
    result = commitment_cli.request(ctx.settings, node, references, ctx.data_dir)
    if result.state == commitment.REFUSED:
        raise AttemptFailed(result.error, retryable=_commitment_retryable(result.error))
    waited = result.deadline - result.requested_at
    for (_sop_class, uid), outcome, reason in result.outcomes():
        before = ctx.instance(uid)
        if before is None:
            continue
        if outcome == commitment.COMMITTED:
            ctx.record(replace(before, status=SUCCESS, committed=True, error="", status_code=None))
        elif outcome == commitment.FAILED:
            code = reason or 0
            ctx.record(
                replace(
                    before,
                    status=FAILED,
                    committed=False,
                    status_code=f"0x{code:04X}",
                    error=f"not committed: {commitment.reason_text(code)}",
                    # A processing failure or a resource limitation may clear; the rest not.
                    retryable=store_status_retryable(code),
                )
            )
        else:
            ctx.record(
                replace(
                    before,
                    status=FAILED,
                    committed=False,
                    error=f"no commitment report within {waited:g} s",
                    retryable=True,
                )
            )
    ctx.log(result.summary())


# --- retrieve ----------------------------------------------------------------------------------


def _retrieve_request(params: dict[str, Any]) -> RetrieveRequest:
    from appliance.qr_scu import QueryError, plan_retrieve

    try:
        return plan_retrieve(
            model=str(params.get("model") or "study"),
            patients=_uid_list(params, "patient_ids"),
            studies=_uid_list(params, "study_uids"),
            series=_uid_list(params, "series_uids"),
            images=_uid_list(params, "sop_instance_uids"),
        )
    except QueryError as exc:
        raise JobError(str(exc)) from None


def validate_retrieve(
    target: str,
    params: dict[str, Any],
    config: ConfigStore,
    instances: Sequence[InstanceResult] = (),
) -> None:
    _check_node(target, config)
    _retrieve_request(params)
    method = params.get("method")
    if method is not None and method not in RETRIEVE_METHODS:
        raise JobError(f"method must be one of {', '.join(RETRIEVE_METHODS)}")


def run_retrieve(ctx: RunContext) -> None:
    from appliance import qr_scu

    job = ctx.job
    node = _node(ctx)
    try:
        request = _retrieve_request(job.params)
    except JobError as exc:
        raise AttemptFailed(str(exc), retryable=False) from None
    method = job.params.get("method") or node.retrieve_method
    ctx.set_stage("retrieving")

    def progress(step: qr_scu.Progress) -> None:
        counts = step.counts
        ctx.set_progress(
            completed=counts.completed,
            failed=counts.failed,
            warning=counts.warning,
            remaining=counts.remaining or 0,
        )

    try:
        report = qr_scu.retrieve(
            ctx.settings, node, request, ctx.data_dir, method=method, progress=progress
        )
    except qr_scu.QueryError as exc:
        raise AttemptFailed(str(exc), retryable=False) from None
    if report.error:
        raise AttemptFailed(report.error)
    if report.listing_problem:
        ctx.log(f"could not list the instances first ({report.listing_problem})")
    new: list[InstanceResult] = []
    for item in report.instances:
        result = _retrieved(item)
        before = ctx.instance(item.sop_instance_uid)
        if before is None:
            new.append(replace(result, attempts=1))
        elif not (before.done and not result.done):  # never undo an earlier success
            ctx.record(result)
    if new:
        ctx.add_instances(new)
    counts = report.counts
    ctx.set_progress(completed=counts.completed, failed=counts.failed, warning=counts.warning)
    ctx.log(report.summary())
    if not job.instances:
        if report.expected == []:
            raise AttemptFailed("the node has no instances for this request", retryable=False)
        if report.outcome == qr_scu.FAILURE:
            # No listing to check against: the node's answer is all there is.
            raise AttemptFailed(report.summary(), retryable=not report.expected)


def _retrieved(item: Any) -> InstanceResult:
    from appliance import qr_scu

    code = None if item.status is None else f"0x{item.status:04X}"
    base = InstanceResult(item.sop_instance_uid, sop_class_uid=item.sop_class_uid or None)
    if item.outcome == qr_scu.RECEIVED:
        return replace(base, status=SUCCESS, status_code=code, retryable=False)
    # Missing, or failed at the node or in our archive: the next attempt asks again, unless
    # our own archive refused it with a status that will not change.
    retryable = item.status is None or store_status_retryable(item.status)
    return replace(base, status=FAILED, status_code=code, error=item.message, retryable=retryable)
