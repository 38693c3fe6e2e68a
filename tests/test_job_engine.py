"""The job engine in-process: scheduling, priorities, per-node concurrency, operator actions on
queued and running jobs, retry policies, restart recovery and retention, over the real job
store, configuration and archive, with DCMTK storescp as the peer where a job talks DICOM."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from appliance.job_engine import AttemptFailed, JobEngine, JobNotFound, RunContext
from appliance.jobs import SUCCESS, InstanceResult, Job, JobError, JobState
from tests.factories import write_ct_series
from tests.job_helpers import Env, make_env, wait_for
from tests.peers import StoreSCP, free_port


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from make_env(tmp_path)


class Gate:
    """A runner for "print" jobs (a kind without a runner of its own yet): notes the order in
    which jobs start and holds each until the test releases it, stopping when asked to."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.lock = threading.Lock()
        self.gates: dict[int, threading.Event] = {}

    def gate(self, job_id: int) -> threading.Event:
        with self.lock:
            return self.gates.setdefault(job_id, threading.Event())

    def release(self, job_id: int) -> None:
        self.gate(job_id).set()

    def running(self, job_id: int) -> bool:
        with self.lock:
            return job_id in self.started

    def __call__(self, ctx: RunContext) -> None:
        with self.lock:
            self.started.append(ctx.job.id)
        gate = self.gate(ctx.job.id)
        while not gate.wait(0.02):
            if ctx.should_stop():
                return
        ctx.record(InstanceResult(f"1.2.826.0.1.3680043.8.498.{ctx.job.id}", status=SUCCESS))


@pytest.fixture
def gate() -> Gate:
    return Gate()


def printer_job(engine: JobEngine, target: str = "printer1", priority: int = 0) -> Job:
    return engine.submit("print", target, {}, priority=priority)


# --- scheduling ------------------------------------------------------------------------------


def test_higher_priority_first_then_oldest_first(env, gate):
    env.config.set("job_workers", 1)
    engine = env.engine()
    engine.register("print", gate)
    blocker = printer_job(engine)
    wait_for(lambda: gate.running(blocker.id), what="the first job")
    low1 = printer_job(engine, "p2", priority=0)
    high1 = printer_job(engine, "p3", priority=5)
    low2 = printer_job(engine, "p4", priority=0)
    high2 = printer_job(engine, "p5", priority=5)
    # A change of priority while queued counts too.
    engine.act(low2.id, "priority", priority=9)

    for job_id in [blocker.id, low2.id, high1.id, high2.id, low1.id]:
        wait_for(lambda job_id=job_id: gate.running(job_id), what=f"job {job_id} to start")
        assert len(gate.started) == len(set(gate.started))
        gate.release(job_id)
        env.wait_state(job_id, "succeeded")

    assert gate.started == [blocker.id, low2.id, high1.id, high2.id, low1.id]


def test_one_job_per_target_at_a_time_and_others_go_ahead(env, gate):
    env.config.set("job_workers", 4)
    engine = env.engine()
    engine.register("print", gate)
    first = printer_job(engine, "slow")
    second = printer_job(engine, "slow")
    other = printer_job(engine, "fast")

    wait_for(lambda: gate.running(first.id) and gate.running(other.id), what="two targets")
    time.sleep(0.3)
    assert not gate.running(second.id)
    assert env.state(second.id) == "queued"
    gate.release(other.id)
    env.wait_state(other.id, "succeeded")
    assert not gate.running(second.id)
    gate.release(first.id)
    wait_for(lambda: gate.running(second.id), what="the second job of the slow target")
    gate.release(second.id)
    env.wait_state(second.id, "succeeded")


def test_node_concurrency_two_runs_two_jobs_of_one_target(env, gate):
    env.config.set("node_concurrency", 2)
    engine = env.engine()
    engine.register("print", gate)
    jobs = [printer_job(engine, "shared") for _ in range(3)]
    wait_for(lambda: gate.running(jobs[0].id) and gate.running(jobs[1].id), what="two jobs")
    time.sleep(0.3)
    assert not gate.running(jobs[2].id)
    assert sorted(engine.running()) == [jobs[0].id, jobs[1].id]
    for job in jobs:
        gate.release(job.id)
    for job in jobs:
        env.wait_state(job.id, "succeeded")


def test_job_workers_bounds_running_jobs(env, gate):
    env.config.set("job_workers", 2)
    engine = env.engine()
    engine.register("print", gate)
    jobs = [printer_job(engine, f"printer{n}") for n in range(4)]
    wait_for(lambda: len(engine.running()) == 2, what="two running jobs")
    time.sleep(0.3)
    assert len(gate.started) == 2
    for job in jobs:
        gate.release(job.id)
    for job in jobs:
        env.wait_state(job.id, "succeeded")


def test_every_transition_is_stored_before_its_event(env, gate):
    engine = env.engine()
    engine.register("print", gate)
    subscription = env.events.subscribe({"job"})
    job = printer_job(engine)
    seen: list[str] = []
    wait_for(lambda: gate.running(job.id))
    gate.release(job.id)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "succeeded" not in seen:
        event = subscription.get(timeout=0.5)
        if event is None or event.data["id"] != job.id:
            continue
        state = event.data["state"]
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == "succeeded":
            # Already in the store when the event is out.
            assert env.state(job.id) == "succeeded"
            assert event.data["counts"]["success"] == 1
    subscription.close()
    assert seen == ["queued", "running", "succeeded"]


def test_progress_is_saved_at_most_every_half_second_and_never_lost(env):
    release = threading.Event()

    def busy(ctx: RunContext) -> None:
        for number in range(300):
            ctx.record(InstanceResult(f"1.2.3.{number}", status=SUCCESS))
        # A runner busy elsewhere (a slow association release): its progress is saved for it.
        release.wait(10)

    engine = env.engine()
    engine.register("print", busy)
    subscription = env.events.subscribe({"job"})
    started = time.monotonic()
    job = printer_job(engine)
    wait_for(lambda: env.store.get(job.id).counts()["success"] == 300, what="saved progress")
    assert env.state(job.id) == "running"
    release.set()
    env.wait_state(job.id, "succeeded")
    elapsed = time.monotonic() - started
    events = 0
    while (event := subscription.get(timeout=0.2)) is not None:
        events += event.data["id"] == job.id
    subscription.close()
    # queued, running, the end, and progress at most twice a second (plus the first record).
    assert events <= 4 + elapsed / 0.5 + 1, (events, elapsed)


# --- operator actions ------------------------------------------------------------------------


def test_pause_resume_and_cancel_of_queued_jobs(env, gate):
    env.config.set("job_workers", 1)
    engine = env.engine()
    engine.register("print", gate)
    blocker = printer_job(engine)
    wait_for(lambda: gate.running(blocker.id))
    paused = printer_job(engine, "p2")
    cancelled = printer_job(engine, "p3")

    assert engine.act(paused.id, "pause").state == "paused"
    assert engine.act(cancelled.id, "cancel").state == "cancelled"
    with pytest.raises(JobError, match="already ended"):
        engine.act(cancelled.id, "cancel")
    with pytest.raises(JobNotFound):
        engine.act(9999, "pause")
    gate.release(blocker.id)
    env.wait_state(blocker.id, "succeeded")
    time.sleep(0.3)
    assert gate.started == [blocker.id]
    assert env.state(paused.id) == "paused"

    engine.act(paused.id, "resume")
    wait_for(lambda: gate.running(paused.id), what="the resumed job")
    gate.release(paused.id)
    env.wait_state(paused.id, "succeeded")
    assert cancelled.id not in gate.started
    texts = [text for _, text in env.store.get(paused.id).log]
    assert "paused by the operator" in texts and "resumed by the operator" in texts


def test_pause_and_cancel_of_a_running_job_take_effect_between_instances(env, gate):
    engine = env.engine()
    engine.register("print", gate)
    job = printer_job(engine)
    wait_for(lambda: gate.running(job.id))

    asked = engine.act(job.id, "pause")
    assert asked.state == "running" and asked.requested == "pause"
    paused = env.wait_state(job.id, "paused")
    assert paused.requested is None
    assert paused.attempts == 0  # an attempt the operator cut short does not count

    engine.act(job.id, "resume")
    wait_for(lambda: gate.started.count(job.id) == 2, what="the second run")
    engine.act(job.id, "cancel")
    with pytest.raises(JobError, match="cancelled"):
        engine.act(job.id, "pause")
    cancelled = env.wait_state(job.id, "cancelled")
    assert cancelled.finished is not None
    assert "cancelled by the operator" in [text for _, text in cancelled.log]


def test_retry_only_failed_is_refused_while_running_and_priority_applies(env, gate):
    engine = env.engine()
    engine.register("print", gate)
    job = printer_job(engine)
    wait_for(lambda: gate.running(job.id))
    with pytest.raises(JobError):
        engine.act(job.id, "retry")
    assert engine.act(job.id, "priority", priority=3).priority == 3
    gate.release(job.id)
    done = env.wait_state(job.id, "succeeded")
    assert done.priority == 3


# --- retries ---------------------------------------------------------------------------------


class Flaky:
    """A runner whose attempts fail (retryable or not) a given number of times."""

    def __init__(self, failures: int, retryable: bool = True) -> None:
        self.failures = failures
        self.retryable = retryable
        self.calls: list[float] = []

    def __call__(self, ctx: RunContext) -> None:
        self.calls.append(time.time())
        if len(self.calls) <= self.failures:
            raise AttemptFailed(f"peer away ({len(self.calls)})", retryable=self.retryable)
        ctx.record(InstanceResult("1.2.3.4", status=SUCCESS))


def test_retry_policy_backoff_and_exhaustion(env):
    flaky = Flaky(failures=10)
    engine = env.engine()
    engine.register("print", flaky)
    job = printer_job(engine)

    failed = env.wait_state(job.id, "failed")

    # retry_max_attempts 3, first delay 0.2 s, doubling: attempts 0.2 s and 0.4 s apart.
    assert len(flaky.calls) == 3 and failed.attempts == 3
    gaps = [b - a for a, b in zip(flaky.calls, flaky.calls[1:], strict=False)]
    assert 0.2 <= gaps[0] < 0.2 + 0.5
    assert 0.4 <= gaps[1] < 0.4 + 0.5
    assert failed.error == "peer away (3)"
    assert "no attempts left (3 made)" in failed.log[-1][1]
    texts = [text for _, text in failed.log]
    assert any("attempt 1 failed: peer away (1); next attempt at" in t for t in texts)


def test_kind_and_node_retry_overrides(env):
    env.config.set_retry_policy("kind:print", {"max_attempts": 2, "first_delay": 0.05})
    flaky = Flaky(failures=5)
    engine = env.engine()
    engine.register("print", flaky)
    job = printer_job(engine)
    failed = env.wait_state(job.id, "failed")
    assert failed.attempts == 2 and len(flaky.calls) == 2


def test_a_failure_that_will_not_change_is_not_retried_and_retry_runs_again(env):
    flaky = Flaky(failures=1, retryable=False)
    engine = env.engine()
    engine.register("print", flaky)
    job = printer_job(engine)
    failed = env.wait_state(job.id, "failed")
    assert len(flaky.calls) == 1 and failed.attempts == 1
    assert "not retried" in failed.log[-1][1]

    engine.act(job.id, "retry")
    done = env.wait_state(job.id, "succeeded")
    assert len(flaky.calls) == 2 and done.error == ""


def test_a_waiting_job_can_be_paused_and_retried_now(env):
    env.config.set("retry_first_delay", 30)
    env.config.set("retry_max_delay", 60)
    flaky = Flaky(failures=1)
    engine = env.engine()
    engine.register("print", flaky)
    job = printer_job(engine)
    waiting = env.wait_state(job.id, "waiting-retry")
    assert waiting.next_retry is not None and waiting.next_retry - time.time() > 20
    assert engine.act(job.id, "pause").state == "paused"
    engine.act(job.id, "retry")
    env.wait_state(job.id, "succeeded", timeout=5)
    assert len(flaky.calls) == 2


def test_a_runner_that_crashes_fails_its_job_and_the_engine_goes_on(env, gate):
    def broken(ctx: RunContext) -> None:
        raise RuntimeError("bug")

    engine = env.engine()
    engine.register("burn", broken)
    engine.register("print", gate)
    bad = engine.submit("burn", "drive1", {})
    failed = env.wait_state(bad.id, "failed")
    assert "internal error" in failed.error and "bug" in failed.error
    good = printer_job(engine)
    wait_for(lambda: gate.running(good.id))
    gate.release(good.id)
    env.wait_state(good.id, "succeeded")


def test_submit_refuses_bad_requests(env):
    engine = env.engine()
    env.add_node("pacs", free_port())
    with pytest.raises(JobError, match="not available"):
        engine.submit("anonymize", "x", {})
    with pytest.raises(JobError, match="unknown job kind"):
        engine.submit("teleport", "x", {})
    with pytest.raises(JobError, match="no node named"):
        engine.submit("send", "nowhere", {"paths": ["/tmp"]})
    with pytest.raises(JobError, match="absolute"):
        engine.submit("send", "pacs", {"paths": ["relative/file.dcm"]})
    with pytest.raises(JobError, match="nothing to send"):
        engine.submit("send", "pacs", {})
    with pytest.raises(JobError, match="sop_instance_uid"):
        engine.submit("commitment", "pacs", {"instances": [{"sop_class_uid": "1.2"}]})
    with pytest.raises(JobError, match="retrieve"):
        engine.submit("retrieve", "pacs", {})
    with pytest.raises(JobError, match="reroute needs a target"):
        engine.act(engine.submit("send", "pacs", {"study_uids": ["1.2.3"]}).id, "reroute")
    assert env.store.counts()["queued"] + env.store.counts()["running"] >= 1


def test_a_burn_job_reroutes_only_to_a_drive(env, gate, tmp_path):
    engine = env.engine()
    engine.register("burn", gate)
    job = engine.submit("burn", f"stdio:{tmp_path}/a.iso", {})
    wait_for(lambda: gate.running(job.id), what="the burn job")
    for bad in ("pacs", "stdio:relative.iso", f"stdio:{tmp_path}/"):
        with pytest.raises(JobError, match="drive|absolute|folder"):
            engine.act(job.id, "reroute", target=bad)
    engine.act(job.id, "reroute", target=f"stdio:{tmp_path}/b.iso")
    wait_for(lambda: engine.get(job.id).target == f"stdio:{tmp_path}/b.iso", what="the reroute")


# --- restart and stop ------------------------------------------------------------------------


def uids_received(folder: Path) -> list[str]:
    return [str(pydicom.dcmread(p).SOPInstanceUID) for p in folder.iterdir() if p.is_file()]


def test_a_job_left_running_is_queued_again_and_sends_only_what_is_missing(env, tmp_path):
    scp = StoreSCP(tmp_path / "scp")
    try:
        env.add_node("pacs", scp.port)
        paths = write_ct_series(tmp_path / "in", 3)
        uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in paths]
        # What a daemon killed in the middle of a send leaves in the store.
        left = Job(
            kind="send",
            target="pacs",
            params={"paths": [str(tmp_path / "in")]},
            state=JobState.RUNNING,
            attempts=1,
            instances=[
                InstanceResult(uid, path=str(path), sop_class_uid=pydicom.dcmread(path).SOPClassUID)
                for uid, path in zip(uids, paths, strict=True)
            ],
        )
        left.instances[0].status, left.instances[0].status_code = SUCCESS, "0x0000"
        left.instances[0].attempts = 1
        job_id = env.store.add(left).id

        env.engine()
        done = env.wait_state(job_id, "succeeded")
    finally:
        scp.stop()

    texts = [text for _, text in done.log]
    assert any("interrupted by a daemon restart" in t for t in texts)
    assert sorted(uids_received(scp.folder)) == sorted(uids[1:])
    assert done.attempts == 1
    assert [i.attempts for i in done.instances] == [1, 1, 1]


def test_stop_leaves_a_running_send_queued_and_the_next_engine_finishes_it(env, tmp_path):
    scp = StoreSCP(tmp_path / "slow", extra=["--sleep-after", "1"])
    try:
        env.add_node("slow", scp.port)
        paths = write_ct_series(tmp_path / "in", 4)
        first = env.engine()
        job = first.submit("send", "slow", {"paths": [str(tmp_path / "in")]})
        wait_for(lambda: first.get(job.id).counts()["success"] >= 1, what="the first instance sent")
        first.stop(10)
        stopped = env.store.get(job.id)
        assert stopped.state == "queued"
        assert 1 <= stopped.counts()["success"] < 4
        assert "stopped with the daemon" in stopped.log[-1][1]

        env.engine()
        done = env.wait_state(job.id, "succeeded", timeout=30)
    finally:
        scp.stop()
    received = uids_received(scp.folder)
    assert sorted(received) == sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in paths)
    assert len(received) == 4  # nothing twice
    assert done.counts()["success"] == 4


# --- retention -------------------------------------------------------------------------------


def test_finished_jobs_beyond_the_retention_count_are_pruned(env):
    env.config.set("job_retention_count", 2)
    engine = env.engine(retention_interval=0.2)
    engine.register("print", lambda ctx: ctx.record(InstanceResult("1.2.3", status=SUCCESS)))
    jobs = [printer_job(engine, f"p{n}") for n in range(5)]

    def kept() -> list[int]:
        return [job.id for job in env.store.list(limit=10)]

    wait_for(lambda: kept() == [jobs[4].id, jobs[3].id], what="pruning", timeout=10)
    assert env.store.counts()["succeeded"] == 2
    assert engine.prune() == 0


def test_old_finished_jobs_are_pruned_at_start(env):
    env.config.set("job_retention_days", 1)
    old = Job(kind="send", target="pacs", state=JobState.SUCCEEDED)
    old.finished = old.updated = time.time() - 3 * 86400
    fresh = Job(kind="send", target="pacs", state=JobState.SUCCEEDED)
    fresh.finished = time.time()
    old_id = env.store.add(old).id
    fresh_id = env.store.add(fresh).id
    env.engine()
    assert env.store.get(old_id) is None
    assert env.store.get(fresh_id) is not None


def test_an_unreadable_config_at_start_or_at_a_prune_does_not_stop_the_scheduler(env, gate, caplog):
    # An operator's editor can leave config.json half-written at any moment, also while the
    # daemon starts or when the job history is pruned.
    config_file = env.data_dir / "config.json"
    good = config_file.read_text()
    config_file.write_text("{ half-edited")
    engine = env.engine(retention_interval=0.05)
    assert engine.prune() == 0
    time.sleep(0.3)  # several periodic prunes while the file is unreadable
    config_file.write_text(good)
    assert "job history not pruned: configuration unreadable" in caplog.text
    engine.register("print", gate)
    job = printer_job(engine)
    wait_for(lambda: gate.running(job.id), what="the job to start after the config is fixed")
    gate.release(job.id)
    env.wait_state(job.id, "succeeded")
