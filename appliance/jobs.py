"""The job model: kinds, states, operator actions, per-instance results and retry policy.

Every long operation (send, retrieve, commitment, forward, print, burn, import, anonymize) is a
``Job``. This module is pure data and rules; the store (``job_store``) persists jobs and the
engine (``job_engine``) runs them.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

JOB_KINDS = ("send", "retrieve", "commitment", "forward", "print", "burn", "import", "anonymize")
LOG_LIMIT = 100


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING_RETRY = "waiting-retry"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    PARTIALLY_FAILED = "partially-failed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATES = frozenset(
    {JobState.QUEUED, JobState.RUNNING, JobState.WAITING_RETRY, JobState.PAUSED}
)
FINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.PARTIALLY_FAILED, JobState.FAILED, JobState.CANCELLED}
)

ACTIONS = ("pause", "resume", "cancel", "retry", "retry-failed", "reroute", "priority")

# Outcome of one instance inside a job.
PENDING = "pending"
SUCCESS = "success"
WARNING = "warning"
FAILED = "failed"
INSTANCE_OUTCOMES = (PENDING, SUCCESS, WARNING, FAILED)
DONE_OUTCOMES = frozenset({SUCCESS, WARNING})


class JobError(ValueError):
    """An operator action or a job request that cannot be carried out; the text says why."""


@dataclass
class InstanceResult:
    """One instance of a job: what the peer said about it, and how often we tried."""

    sop_instance_uid: str
    status: str = PENDING  # pending | success | warning | failed
    status_code: str | None = None  # the peer's DIMSE status, "0xA700"
    error: str = ""
    attempts: int = 0
    # A failed instance that another attempt may fix (A7xx, a lost association). False for
    # statuses that will not change by trying again (A9xx, Cxxx, an unsupported SOP class).
    retryable: bool = True
    path: str | None = None
    sop_class_uid: str | None = None
    # Storage commitment of a send with commit: None = not asked (yet), True = committed,
    # False = the node did not commit it (the error says why).
    committed: bool | None = None

    @property
    def done(self) -> bool:
        return self.status in DONE_OUTCOMES

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> InstanceResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})


@dataclass
class Job:
    kind: str
    target: str  # node name (or printer / drive name for their kinds)
    params: dict[str, Any] = field(default_factory=dict)
    id: int = 0  # assigned by the store, increasing
    state: str = JobState.QUEUED
    priority: int = 0  # higher runs first
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    next_retry: float | None = None
    error: str = ""  # why the last attempt did not finish the job
    stage: str = ""  # what a running job is doing now ("sending", "committing", ...)
    # For display: patient name and ID, study description and date, number of studies.
    summary: dict[str, Any] = field(default_factory=dict)
    instances: list[InstanceResult] = field(default_factory=list)
    # Instances not known up front (a retrieve) report progress here instead.
    progress: dict[str, int] = field(default_factory=dict)
    log: list[list[Any]] = field(default_factory=list)  # [[time, text], ...], oldest first
    # An action asked of a running job, honoured by its worker at the next instance boundary.
    requested: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise JobError(f"unknown job kind {self.kind!r}: one of {', '.join(JOB_KINDS)}")
        self.state = JobState(self.state)

    # --- serialisation ---------------------------------------------------------------------

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["state"] = str(self.state)
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Job:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in doc.items() if k in known}
        values["instances"] = [InstanceResult.from_doc(i) for i in doc.get("instances", [])]
        return cls(**values)

    def brief(self) -> dict[str, Any]:
        """Everything but the per-instance list and the log: what a job table shows. Copied
        field by field (``to_doc`` would copy every instance result, only to drop them: a
        page of 300 briefs took 80 ms that way instead of 10)."""
        doc = {
            f.name: copy.deepcopy(getattr(self, f.name))
            for f in fields(self)
            if f.name not in ("instances", "log")
        }
        doc["state"] = str(self.state)
        doc["counts"] = self.counts()
        return doc

    # --- derived ---------------------------------------------------------------------------

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    def counts(self) -> dict[str, int]:
        counts = {outcome: 0 for outcome in INSTANCE_OUTCOMES}
        for instance in self.instances:
            counts[instance.status] = counts.get(instance.status, 0) + 1
        counts["total"] = len(self.instances)
        if not self.instances and self.progress:
            counts.update({k: int(v) for k, v in self.progress.items()})
        return counts

    def instance(self, sop_instance_uid: str) -> InstanceResult | None:
        for instance in self.instances:
            if instance.sop_instance_uid == sop_instance_uid:
                return instance
        return None

    def outstanding(self) -> list[InstanceResult]:
        """Instances the next attempt must still do: not done and not failed for good."""
        return [
            i for i in self.instances if i.status == PENDING or (i.status == FAILED and i.retryable)
        ]

    def note(self, text: str, now: float | None = None) -> None:
        self.log.append([now if now is not None else time.time(), text])
        if len(self.log) > LOG_LIMIT:
            del self.log[: len(self.log) - LOG_LIMIT]

    def final_state(self) -> JobState:
        """The end state once nothing is outstanding, from the per-instance outcomes."""
        if not self.instances:
            return JobState.FAILED if self.error else JobState.SUCCEEDED
        done = sum(1 for i in self.instances if i.done)
        if done == len(self.instances):
            return JobState.SUCCEEDED
        return JobState.PARTIALLY_FAILED if done else JobState.FAILED


# --- operator actions on a job that is not running ---------------------------------------------


def apply_action(job: Job, action: str, *, now: float, **args: Any) -> None:
    """Change ``job`` for an operator action, or raise JobError saying why it cannot be done.

    A running job is the engine's business (it asks the worker via ``job.requested``); this
    function handles every job that no worker holds.
    """
    state = JobState(job.state)
    if action == "pause":
        if state not in (JobState.QUEUED, JobState.WAITING_RETRY):
            raise JobError(f"job {job.id} is {state}: only queued or waiting jobs can be paused")
        job.state = JobState.PAUSED
        job.note("paused by the operator", now)
    elif action == "resume":
        if state is not JobState.PAUSED:
            raise JobError(f"job {job.id} is {state}, not paused")
        job.state = JobState.QUEUED
        job.next_retry = None
        job.note("resumed by the operator", now)
    elif action == "cancel":
        if state in FINAL_STATES:
            raise JobError(f"job {job.id} has already ended ({state})")
        job.state = JobState.CANCELLED
        job.finished = now
        job.next_retry = None
        job.note("cancelled by the operator", now)
    elif action == "retry":
        if state in (JobState.QUEUED, JobState.RUNNING):
            raise JobError(f"job {job.id} is already {state}")
        if state in FINAL_STATES:
            for instance in job.instances:
                if not instance.done:
                    instance.status, instance.retryable = PENDING, True
            job.attempts = 0
        job.state = JobState.QUEUED
        job.next_retry = None
        job.finished = None
        job.note("retry now, asked by the operator", now)
    elif action == "retry-failed":
        if state not in (JobState.PARTIALLY_FAILED, JobState.FAILED, JobState.CANCELLED):
            raise JobError(
                f"job {job.id} is {state}: only a failed, partially failed or cancelled job "
                "can retry its failed instances"
            )
        failed = [i for i in job.instances if i.status == FAILED]
        if job.instances and not failed:
            raise JobError(f"job {job.id} has no failed instances")
        for instance in failed:
            instance.status, instance.retryable, instance.error = PENDING, True, ""
        # Instances never tried (a cancelled job) stay as they are: "failed only" means failed.
        job.params["only_failed"] = True
        job.attempts = 0
        job.state = JobState.QUEUED
        job.next_retry = None
        job.finished = None
        job.error = ""
        job.note(f"retry of {len(failed)} failed instance(s), asked by the operator", now)
    elif action == "reroute":
        target = str(args.get("target") or "")
        if not target:
            raise JobError("reroute needs a target node")
        if state is JobState.RUNNING:
            raise JobError(f"job {job.id} is running: pause it first")
        old = job.target
        job.target = target
        # The new node has none of the instances yet, whatever the old one said.
        for instance in job.instances:
            instance.status, instance.status_code, instance.error = PENDING, None, ""
            instance.retryable, instance.attempts, instance.committed = True, 0, None
        job.attempts = 0
        job.error = ""
        if state in FINAL_STATES or state is JobState.WAITING_RETRY:
            job.state = JobState.QUEUED
            job.finished = None
        job.next_retry = None
        job.note(f"rerouted from {old} to {target} by the operator", now)
    elif action == "priority":
        try:
            priority = int(args.get("priority"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise JobError("priority must be an integer (higher runs first)") from None
        if state in FINAL_STATES:
            raise JobError(f"job {job.id} has already ended ({state})")
        job.priority = priority
        job.note(f"priority set to {priority} by the operator", now)
    else:
        raise JobError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
    job.updated = now


# --- retry policy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon a job is tried again (defaults as dcm4chee's)."""

    max_attempts: int = 10
    first_delay: float = 30.0
    multiplier: float = 2.0
    max_delay: float = 600.0

    def delay(self, attempts_made: int) -> float:
        """Seconds to wait after the ``attempts_made``-th failed attempt (1 for the first)."""
        exponent = max(0, attempts_made - 1)
        try:
            raw = self.first_delay * self.multiplier**exponent
        except OverflowError:
            raw = self.max_delay
        return float(min(raw, self.max_delay))

    def exhausted(self, attempts_made: int) -> bool:
        return attempts_made >= self.max_attempts

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def validated(cls, values: dict[str, Any], base: RetryPolicy | None = None) -> RetryPolicy:
        """``base`` with ``values`` over it; JobError names the first bad field."""
        merged = asdict(base or cls())
        for key, value in values.items():
            if key not in merged:
                raise JobError(f"retry.{key}: unknown; one of {', '.join(cls.fields())}")
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise JobError(f"retry.{key}: {value!r} is not a number") from None
            merged[key] = number
        if not (1 <= merged["max_attempts"] <= 1000) or merged["max_attempts"] != int(
            merged["max_attempts"]
        ):
            raise JobError(f"retry.max_attempts: {merged['max_attempts']} is not in 1..1000")
        if not 0 <= merged["first_delay"] <= 86400:
            raise JobError(f"retry.first_delay: {merged['first_delay']} is not in 0..86400 s")
        if not 1 <= merged["multiplier"] <= 10:
            raise JobError(f"retry.multiplier: {merged['multiplier']} is not in 1..10")
        if not 0 <= merged["max_delay"] <= 86400:
            raise JobError(f"retry.max_delay: {merged['max_delay']} is not in 0..86400 s")
        merged["max_attempts"] = int(merged["max_attempts"])
        return cls(**merged)


# --- which failures are worth another attempt --------------------------------------------------


def store_status_retryable(code: int) -> bool:
    """Whether a failed C-STORE status may clear on a later attempt.

    A7xx (out of resources) clears when the peer frees space. A9xx and Cxxx (the data set does
    not match the class, or cannot be understood), 0122 (class not supported), 0124 (not
    authorised) and the rest do not change by sending the same object again: they need an
    operator (fix the object, reconfigure the peer) and then "retry failed".
    """
    return 0xA700 <= code <= 0xA7FF or code == 0x0110 or code == 0x0213
