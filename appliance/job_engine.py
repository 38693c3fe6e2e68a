"""The job engine: a scheduler and workers that run queued jobs, with retries.

Jobs live in the job store (``job_store``); the engine takes the next eligible ones, runs an
attempt of each in a worker thread with the runner of its kind (``job_runners``) and decides what
comes next from the outcome:

- nothing left to do: the final state follows from the per-instance outcomes (succeeded,
  partially-failed, failed);
- retryable work left (instances not sent because the association failed, A7xx statuses, ...):
  ``waiting-retry`` until ``now + policy.delay(attempts)``, or failed / partially-failed once the
  job's retry policy (``ConfigStore.retry_policy(kind, target)``) has no attempts left;
- the attempt failed for good (``AttemptFailed(retryable=False)``): a final state at once.

Scheduling: at most ``job_workers`` attempts at a time and ``node_concurrency`` per target (one
association per node by default, so a slow node delays only its own jobs); higher priority
first, then older jobs. An operator's pause, cancel or reroute of a running job is a request
(``job.requested``) that the runner sees through ``RunContext.should_stop()`` between two
instances. Every state change is saved in the store before its event (topic ``job``, data
``job.brief()``) is published; progress is saved at most every ``SAVE_INTERVAL`` seconds.

On start, jobs the last run left ``running`` go back to ``queued`` (their instances already
sent stay done, so they are not sent again). Finished jobs are pruned by the retention
settings when the engine starts and every ``retention_interval`` seconds.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance import audit
from appliance.config import ConfigError, ConfigStore, Node, Settings
from appliance.events import EventBus
from appliance.jobs import (
    ACTIONS,
    FAILED,
    PENDING,
    InstanceResult,
    Job,
    JobError,
    JobState,
    apply_action,
)

if TYPE_CHECKING:
    from appliance.archive import Archive
    from appliance.job_store import JobStore

LOG = logging.getLogger("appliance.jobs")

SAVE_INTERVAL = 0.5  # seconds between saves of a running job's progress
IDLE_WAIT = 5.0  # the scheduler looks again at least this often
RETENTION_INTERVAL = 3600.0
# Kinds whose target is a configured DICOM node.
NODE_KINDS = frozenset({"send", "retrieve", "commitment", "forward"})
# Requests to a running job, honoured between two instances.
STOP_REQUESTS = ("pause", "cancel", "reroute")


class AttemptFailed(Exception):
    """The whole attempt failed: the association was rejected or aborted, the connection was
    refused, a timeout, or (``retryable=False``) something another attempt cannot fix."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class JobNotFound(JobError, LookupError):
    """No job with this id (never created, or pruned from the history)."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id


def _clock(timestamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def _copy(job: Job) -> Job:
    return copy.deepcopy(job)


class RunContext:
    """What a runner gets for one attempt of one job.

    The runner reads ``job`` and changes it only through these methods, which keep the store
    and the event subscribers up to date; an operator's request may arrive from another thread
    at any time (``should_stop``).
    """

    def __init__(self, engine: JobEngine, job: Job, settings: Settings) -> None:
        self.job = job
        self.settings = settings
        self.config: ConfigStore = engine.config
        self.archive: Archive = engine.archive
        self.data_dir: Path = engine.data_dir
        self.events: EventBus = engine.events
        self.lock = threading.RLock()
        self._engine = engine
        self._last_save = 0.0
        self._dirty = False
        self.ended = False  # the engine has recorded the end of the attempt
        self._index: dict[str, int] = {}
        self._reindex()

    def _reindex(self) -> None:
        self._index = {
            instance.sop_instance_uid: position
            for position, instance in enumerate(self.job.instances)
            if instance.sop_instance_uid
        }

    # --- for runners -----------------------------------------------------------------------

    def node(self) -> Node:
        """The job's target node (ConfigError when no such node is configured)."""
        return self.config.node(self.job.target)

    def instance(self, sop_instance_uid: str) -> InstanceResult | None:
        with self.lock:
            position = self._index.get(sop_instance_uid)
            return None if position is None else self.job.instances[position]

    def record(self, result: InstanceResult, *, attempted: bool = True) -> None:
        """Merge the result of one instance into the job (by SOP Instance UID; a result without
        one is added). ``attempted``: it was tried once more (its ``attempts`` count grows)."""
        with self.lock:
            position = self._index.get(result.sop_instance_uid) if result.sop_instance_uid else None
            if position is None:
                if attempted:
                    result.attempts = max(result.attempts, 1)
                self.job.instances.append(result)
                if result.sop_instance_uid:
                    self._index[result.sop_instance_uid] = len(self.job.instances) - 1
            else:
                before = self.job.instances[position]
                result.attempts = before.attempts + (1 if attempted else 0)
                self.job.instances[position] = result
            self._changed()

    def add_instances(self, results: Sequence[InstanceResult]) -> None:
        """Instances found by the runner (a scan of folders, a study in the archive, a
        listing before a retrieve); saved at once."""
        with self.lock:
            for result in results:
                if result.sop_instance_uid and result.sop_instance_uid in self._index:
                    continue
                self.job.instances.append(result)
                if result.sop_instance_uid:
                    self._index[result.sop_instance_uid] = len(self.job.instances) - 1
            self.flush()

    def set_stage(self, stage: str) -> None:
        with self.lock:
            if stage != self.job.stage:
                self.job.stage = stage
                self.flush()

    def set_progress(self, **counts: int) -> None:
        with self.lock:
            self.job.progress.update({key: int(value) for key, value in counts.items()})
            self._changed()

    def set_summary(self, summary: dict[str, Any]) -> None:
        with self.lock:
            self.job.summary = dict(summary)
            self._changed()

    def log(self, text: str) -> None:
        LOG.info("job %d (%s to %s): %s", self.job.id, self.job.kind, self.job.target, text)
        with self.lock:
            self.job.note(text)
            self._changed()

    def should_stop(self) -> bool:
        """Stop at the next instance boundary: the operator asked for a pause, a cancel or a
        reroute, or the daemon is stopping."""
        return self.job.requested is not None or self._engine.stopping

    # --- persistence -----------------------------------------------------------------------

    def _changed(self) -> None:
        self._dirty = True
        if time.monotonic() - self._last_save >= SAVE_INTERVAL:
            self.flush()

    def flush(self) -> None:
        """Save the job now and tell the subscribers."""
        with self.lock:
            self.job.updated = time.time()
            self._engine.store.save(self.job)
            self._last_save = time.monotonic()
            self._dirty = False
            brief = self.job.brief()
        self._engine.events.publish("job", brief)

    def flush_if_due(self) -> None:
        """Save changes not saved yet once SAVE_INTERVAL has passed (the scheduler calls this
        for runners busy elsewhere); nothing after the attempt has ended."""
        with self.lock:
            if (
                self._dirty
                and not self.ended
                and time.monotonic() - self._last_save >= SAVE_INTERVAL
            ):
                self.flush()

    def snapshot(self) -> Job:
        with self.lock:
            return _copy(self.job)


Runner = Callable[[RunContext], None]
# Checks (and may normalise) the parameters of a new job: (target, params, config, instances
# given with it); raises JobError.
Validator = Callable[[str, dict[str, Any], ConfigStore, Sequence[InstanceResult]], None]


class JobEngine:
    def __init__(
        self,
        store: JobStore,
        config: ConfigStore,
        archive: Archive,
        events: EventBus,
        data_dir: Path,
        *,
        runners: dict[str, Runner] | None = None,
        retention_interval: float = RETENTION_INTERVAL,
    ) -> None:
        self.store = store
        self.config = config
        self.archive = archive
        self.events = events
        self.data_dir = Path(data_dir)
        self.retention_interval = retention_interval
        self._runners: dict[str, Runner] = {}
        self._validators: dict[str, Validator] = {}
        self._lock = threading.RLock()
        self._running: dict[int, RunContext] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._next_prune = 0.0
        if runners is None:
            from appliance.job_runners import register_all

            register_all(self)
        else:
            for kind, runner in runners.items():
                self.register(kind, runner)

    # --- set-up ----------------------------------------------------------------------------

    def register(self, kind: str, runner: Runner, *, validate: Validator | None = None) -> None:
        """Run jobs of ``kind`` with ``runner``; ``validate`` checks a new job's parameters."""
        Job(kind=kind, target="-")  # JobError for an unknown kind
        with self._lock:
            self._runners[kind] = runner
            if validate is not None:
                self._validators[kind] = validate
            else:
                self._validators.pop(kind, None)
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def start(self) -> None:
        """Recover what the last run left running, prune the history, start scheduling."""
        now = time.time()
        with self._lock:
            for job in self.store.active():
                if job.state is JobState.RUNNING:
                    self._recover(job, now)
        self.prune()
        self._next_prune = time.monotonic() + self.retention_interval
        self._stopping.clear()
        self._scheduler = threading.Thread(target=self._schedule, name="job-scheduler", daemon=True)
        self._scheduler.start()

    def _recover(self, job: Job, now: float) -> None:
        requested, job.requested = job.requested, None
        job.stage = ""
        # The interrupted attempt does not count against the retry policy.
        job.attempts = max(0, job.attempts - 1)
        job.state = JobState.QUEUED
        job.note("interrupted by a daemon restart; queued again", now)
        if requested:
            self._apply_request(job, requested, now)
        job.updated = now
        self.store.save(job)
        LOG.warning("job %d (%s to %s) was running at the last stop", job.id, job.kind, job.target)
        self.events.publish("job", job.brief())

    def stop(self, timeout: float) -> None:
        """Stop scheduling; running jobs stop at their next instance boundary and go back to
        ``queued``. Waits up to ``timeout`` seconds for them."""
        deadline = time.monotonic() + max(0.0, timeout)
        self._stopping.set()
        self._wake.set()
        if self._scheduler is not None:
            self._scheduler.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = [ctx.job.id for ctx in self._running.values()]
        if left:
            LOG.warning("jobs still running at stop, queued again at the next start: %s", left)

    # --- queries ---------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        """The job (a copy); a running job as its worker has it now."""
        with self._lock:
            ctx = self._running.get(job_id)
        if ctx is not None:
            return ctx.snapshot()
        return self.store.get(job_id)

    def list(self, **filters: Any) -> list[Job]:
        """``JobStore.list`` (newest first; limit, states, kinds, target, before_id)."""
        return self.store.list(**filters)

    def counts(self) -> dict[str, int]:
        return self.store.counts()

    def running(self) -> list[int]:
        with self._lock:
            return sorted(self._running)

    # --- submitting and acting -------------------------------------------------------------

    def submit(
        self,
        kind: str,
        target: str,
        params: dict[str, Any] | None = None,
        *,
        priority: int = 0,
        summary: dict[str, Any] | None = None,
        instances: Sequence[InstanceResult] | None = None,
    ) -> Job:
        """Queue a new job; JobError says what is wrong with the request."""
        with self._lock:
            validate = self._validators.get(kind)
            known = kind in self._runners
        if not known:
            Job(kind=kind, target=target)  # JobError for an unknown kind
            raise JobError(f"{kind} jobs are not available on this appliance")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise JobError("priority must be an integer (higher runs first)")
        params = copy.deepcopy(dict(params or {}))
        given = [replace(i) for i in instances or ()]
        if validate is not None:
            validate(target, params, self.config, given)
        job = Job(
            kind=kind,
            target=target,
            params=params,
            priority=priority,
            summary=dict(summary or {}),
            instances=given,
        )
        job.note("queued")
        with self._lock:
            job = self.store.add(job)
            self.events.publish("job", job.brief())
        LOG.info("job %d queued: %s to %s", job.id, kind, target)
        self._wake.set()
        return job

    def act(self, job_id: int, action: str, **args: Any) -> Job:
        """An operator action (jobs.ACTIONS); JobError when it cannot be done, JobNotFound
        when there is no such job. A running job is asked to pause, cancel or reroute and does
        so at its next instance boundary."""
        if action not in ACTIONS:
            raise JobError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
        now = time.time()
        with self._lock:
            ctx = self._running.get(job_id)
            job = ctx.job if ctx is not None else self.store.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            if action == "reroute":
                self._check_reroute(job, args)
            if ctx is not None:
                with ctx.lock:
                    self._ask_running(ctx.job, action, now, **args)
                    ctx.flush()
                    result = _copy(ctx.job)
            else:
                apply_action(job, action, now=now, **args)
                self.store.save(job)
                self.events.publish("job", job.brief())
                result = job
        LOG.info("job %d: %s by the operator", job_id, action)
        self._wake.set()
        return result

    def _check_reroute(self, job: Job, args: dict[str, Any]) -> None:
        target = str(args.get("target") or "")
        if not target:
            raise JobError("reroute needs a target node")
        if job.kind in NODE_KINDS:
            try:
                self.config.node(target)
            except ConfigError as exc:
                raise JobError(str(exc)) from None
        elif job.kind == "print":
            try:
                self.config.printer(target)
            except ConfigError as exc:
                raise JobError(str(exc)) from None
        elif job.kind == "burn":
            # Imported here: the burn runner builds on this module.
            from appliance.media_burn import BurnError, check_device

            try:
                target = check_device(target)
            except BurnError as exc:
                raise JobError(str(exc)) from None
        if target == job.target:
            raise JobError(f"job {job.id} already goes to {target}")

    @staticmethod
    def _ask_running(job: Job, action: str, now: float, **args: Any) -> None:
        if action not in STOP_REQUESTS:
            # priority applies at once; retry, retry-failed and resume are refused for a
            # running job with apply_action's own words.
            apply_action(job, action, now=now, **args)
            return
        if job.requested == "cancel":
            raise JobError(f"job {job.id} is being cancelled already")
        job.requested = f"reroute:{args['target']}" if action == "reroute" else action
        what = f"reroute to {args['target']}" if action == "reroute" else action
        job.note(f"{what} asked by the operator: the job stops after the instance in progress", now)
        job.updated = now

    def _apply_request(self, job: Job, requested: str, now: float) -> None:
        """Carry out a request a running job has stopped for (job no longer running)."""
        action, _, target = requested.partition(":")
        if action == "cancel":
            job.state = JobState.CANCELLED
            job.finished = now
            job.next_retry = None
            job.note("cancelled by the operator", now)
        elif action == "pause":
            job.state = JobState.PAUSED
            job.note("paused by the operator", now)
        elif action == "reroute":
            job.state = JobState.WAITING_RETRY  # reroute queues a job in this state again
            apply_action(job, "reroute", now=now, target=target)
            job.state = JobState.QUEUED

    # --- retention -------------------------------------------------------------------------

    def prune(self) -> int:
        """Remove finished jobs past the retention settings; how many were removed."""
        try:
            settings = self.config.settings()
        except Exception as exc:  # config.json mid-edit: prune at the next interval instead
            LOG.error("job history not pruned: configuration unreadable: %s", exc)
            return 0
        try:
            removed = self.store.prune(
                max_age_days=settings.job_retention_days,
                max_count=settings.job_retention_count,
            )
        except Exception:
            LOG.exception("job history: pruning failed")
            return 0
        if removed:
            LOG.info("job history: %d finished jobs removed (retention)", removed)
        return removed

    # --- scheduling ------------------------------------------------------------------------

    def _schedule(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            wait = IDLE_WAIT
            try:
                next_due = self._dispatch()
                if next_due is not None:
                    wait = min(wait, max(0.01, next_due - time.time()))
            except Exception:
                LOG.exception("job scheduler")
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + self.retention_interval
                self.prune()
            if self._flush_dirty():
                wait = min(wait, SAVE_INTERVAL)
            self._wake.wait(wait)

    def _flush_dirty(self) -> bool:
        """Save the progress a runner recorded but did not save (it is within SAVE_INTERVAL of
        its last save, and busy); whether jobs are running."""
        with self._lock:
            running = list(self._running.values())
        for ctx in running:
            try:
                ctx.flush_if_due()
            except Exception:
                LOG.exception("job %d: cannot save its progress", ctx.job.id)
        return bool(running)

    def _dispatch(self) -> float | None:
        """Start every job that may start now; the time the next waiting one becomes due."""
        with self._lock:
            if self._stopping.is_set():
                return None
            settings = self.config.settings()
            free = settings.job_workers - len(self._running)
            now = time.time()
            next_due: float | None = None
            eligible: list[Job] = []
            for job in self.store.active():
                if job.id in self._running or job.kind not in self._runners:
                    continue
                if job.state is JobState.QUEUED:
                    eligible.append(job)
                elif job.state is JobState.WAITING_RETRY:
                    if job.next_retry is None or job.next_retry <= now:
                        eligible.append(job)
                    else:
                        next_due = (
                            job.next_retry if next_due is None else min(next_due, job.next_retry)
                        )
            eligible.sort(key=lambda j: (-j.priority, j.id))
            busy = Counter(ctx.job.target for ctx in self._running.values())
            for job in eligible:
                if free <= 0:
                    break
                if busy[job.target] >= settings.node_concurrency:
                    continue
                self._launch(job, settings, now)
                busy[job.target] += 1
                free -= 1
            return next_due

    def _launch(self, job: Job, settings: Settings, now: float) -> None:
        policy = self.config.retry_policy(job.kind, job.target)
        job.state = JobState.RUNNING
        job.attempts += 1
        job.started = job.started or now
        job.next_retry = None
        job.stage = ""
        job.requested = None
        job.updated = now
        job.note(f"attempt {job.attempts} of {policy.max_attempts} started", now)
        self.store.save(job)
        self.events.publish("job", job.brief())
        ctx = RunContext(self, job, settings)
        thread = threading.Thread(
            target=self._work, args=(ctx,), name=f"job-{job.id}-{job.kind}", daemon=True
        )
        self._running[job.id] = ctx
        self._threads[job.id] = thread
        thread.start()

    def _work(self, ctx: RunContext) -> None:
        job_id = ctx.job.id
        failure: AttemptFailed | None = None
        try:
            self._runners[ctx.job.kind](ctx)
        except AttemptFailed as exc:
            failure = exc
        except Exception as exc:
            LOG.exception("job %d: runner failed", job_id)
            failure = AttemptFailed(f"internal error: {exc!r}", retryable=False)
        # Data that left or entered the appliance (send, print, burn, import...) is audited.
        audit.job_attempt(ctx.job, ctx.archive, ctx.config, failure)
        try:
            self._finish(ctx, failure)
        except Exception:
            LOG.exception("job %d: cannot record the end of the attempt", job_id)
        finally:
            with self._lock:
                self._running.pop(job_id, None)
                self._threads.pop(job_id, None)
            self._wake.set()

    # --- the end of an attempt -------------------------------------------------------------

    def _finish(self, ctx: RunContext, failure: AttemptFailed | None) -> None:
        now = time.time()
        with self._lock, ctx.lock:
            job = ctx.job
            job.stage = ""
            requested, job.requested = job.requested, None
            outstanding = job.outstanding()
            work_done = bool(job.instances) and not outstanding and failure is None
            number = job.attempts
            if requested and not work_done:
                if not requested.startswith("cancel"):
                    job.attempts = max(0, job.attempts - 1)  # cut short: not a failed attempt
                job.note(f"attempt {number} stopped for the operator", now)
                self._apply_request(job, requested, now)
            elif self._stopping.is_set() and failure is None and not work_done:
                job.attempts = max(0, job.attempts - 1)
                job.state = JobState.QUEUED
                job.note("stopped with the daemon; continues at the next start", now)
            elif failure is not None and not failure.retryable:
                job.error = failure.message
                self._give_up(job, now, f"attempt {number} failed: {failure.message}; not retried")
            elif failure is not None or outstanding:
                job.error = failure.message if failure is not None else _outstanding_text(job)
                policy = self.config.retry_policy(job.kind, job.target)
                if policy.exhausted(job.attempts):
                    self._give_up(
                        job,
                        now,
                        f"attempt {number} failed: {job.error}; no attempts left "
                        f"({policy.max_attempts} made)",
                    )
                else:
                    delay = policy.delay(job.attempts)
                    job.state = JobState.WAITING_RETRY
                    job.next_retry = now + delay
                    job.note(
                        f"attempt {number} failed: {job.error}; next attempt at "
                        f"{_clock(job.next_retry)} (in {delay:g} s)",
                        now,
                    )
            else:
                if requested:
                    job.note(f"finished before the {requested.partition(':')[0]} took effect", now)
                self._complete(job, now)
            job.updated = now
            self.store.save(job)
            ctx.ended = True
            self._running.pop(job.id, None)
            brief = job.brief()
            LOG.info("job %d (%s to %s): %s", job.id, job.kind, job.target, job.log[-1][1])
        self.events.publish("job", brief)
        self._alert(brief, first_failure=number == 1 and failure is not None)

    def _alert(self, brief: dict[str, Any], *, first_failure: bool) -> None:
        """What an operator must notice: a job that ended badly, a node that stopped answering."""
        state = brief["state"]
        if state in (JobState.FAILED, JobState.PARTIALLY_FAILED):
            self.events.publish(
                "alert",
                {
                    "level": "error",
                    "source": "job",
                    "job_id": brief["id"],
                    "target": brief["target"],
                    "text": f"{brief['kind']} job {brief['id']} to {brief['target']} {state}: "
                    f"{brief['error']}",
                },
            )
        elif state == JobState.WAITING_RETRY and first_failure:
            self.events.publish(
                "alert",
                {
                    "level": "warning",
                    "source": "node",
                    "job_id": brief["id"],
                    "target": brief["target"],
                    "text": f"{brief['target']}: {brief['error']}; retrying",
                },
            )

    @staticmethod
    def _give_up(job: Job, now: float, text: str) -> None:
        """A final state: what is still outstanding has failed."""
        for position, instance in enumerate(job.instances):
            if instance.status == PENDING or (instance.status == FAILED and instance.retryable):
                job.instances[position] = replace(
                    instance,
                    status=FAILED,
                    error=instance.error or f"not sent: {job.error}",
                )
        job.state = job.final_state()
        job.finished = now
        job.next_retry = None
        job.note(text, now)

    @staticmethod
    def _complete(job: Job, now: float) -> None:
        job.state = job.final_state()
        job.finished = now
        job.next_retry = None
        counts = job.counts()
        failed = [i for i in job.instances if not i.done]
        if job.state is JobState.SUCCEEDED:
            job.error = ""
        elif failed:
            first = failed[0]
            code = f"{first.status_code} " if first.status_code else ""
            job.error = (
                f"{len(failed)} of {len(job.instances)} instance(s) failed, e.g. "
                f"{first.sop_instance_uid or first.path}: {code}{first.error}".rstrip()
            )
        summary = ", ".join(
            f"{counts[k]} {k}" for k in ("success", "warning", "failed") if counts.get(k)
        )
        job.note(f"{job.state}" + (f": {summary}" if summary else ""), now)


def _outstanding_text(job: Job) -> str:
    outstanding = job.outstanding()
    errors = [i for i in outstanding if i.error]
    text = f"{len(outstanding)} instance(s) still to do"
    if errors:
        first = errors[0]
        code = f"{first.status_code} " if first.status_code else ""
        text += f" ({code}{first.error})"
    return text
