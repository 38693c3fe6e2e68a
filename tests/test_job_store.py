"""The job store: persistence, history shards, crash recovery, corrupt files, pruning, listing."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from appliance import job_store
from appliance.job_store import ACTIVE_FILE, JOBS_DIR, JobStore
from appliance.jobs import InstanceResult, Job, JobState

NOW = 1_800_000_000.0


def new_job(kind: str = "send", target: str = "PACS", *, instances: int = 2, **kw) -> Job:
    job = Job(kind=kind, target=target, params={"paths": ["/in/a", "/in/b"]}, **kw)
    job.instances = [InstanceResult(f"1.2.3.{i}", path=f"/in/a/{i}.dcm") for i in range(instances)]
    job.summary = {"patient_name": "DOE^JANE", "studies": 1}
    return job


def finish(store: JobStore, job: Job, state: str = JobState.SUCCEEDED, at: float = NOW) -> Job:
    job.state = JobState(state)
    job.finished = job.updated = at
    for instance in job.instances:
        instance.status, instance.status_code = "success", "0x0000"
    job.note(f"finished: {state}", at)
    store.save(job)
    return job


def files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / JOBS_DIR).iterdir())


def stored_ids(path: Path) -> set[int]:
    return {int(k) for k in json.loads(path.read_text()).get("jobs", {})}


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(job_store, "SHARD_MAX_JOBS", 3)


def test_add_assigns_increasing_ids_and_persists(data_dir: Path):
    store = JobStore(data_dir)
    jobs = [store.add(new_job(priority=n)) for n in range(5)]
    assert [j.id for j in jobs] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        store.add(jobs[0])  # already has an id
    store.close()

    store = JobStore(data_dir)
    assert [j.id for j in store.active()] == [1, 2, 3, 4, 5]
    assert store.get(3) == jobs[2]
    assert store.get(99) is None
    assert store.add(new_job()).id == 6
    # Compact JSON (no indentation), read back by plain json.
    text = (data_dir / JOBS_DIR / ACTIVE_FILE).read_text()
    assert "\n" not in text and stored_ids(data_dir / JOBS_DIR / ACTIVE_FILE) == set(range(1, 7))


def test_stored_form_is_to_doc(data_dir: Path):
    """The store's fast conversions give what Job.to_doc / Job.from_doc give."""
    store = JobStore(data_dir)
    job = new_job(instances=3)
    job.progress = {"completed": 2}
    job.note("hello", NOW)
    job.instances[1].status, job.instances[1].retryable = "failed", False
    store.add(job)
    doc = json.loads((data_dir / JOBS_DIR / ACTIVE_FILE).read_text())["jobs"]["1"]
    expected = json.loads(json.dumps(job.to_doc()))
    assert {k: v for k, v in doc.items() if k != "_rev"} == expected
    assert store.get(job.id) == Job.from_doc(expected)


def test_returned_jobs_are_copies(data_dir: Path):
    store = JobStore(data_dir)
    job = store.add(new_job())
    job.params["paths"].append("/changed-by-caller")  # the caller's object is not the store's
    copy = store.get(job.id)
    assert copy is not None and copy.params["paths"] == ["/in/a", "/in/b"]
    copy.params["paths"].clear()
    copy.instances[0].status = "failed"
    copy.summary["patient_name"] = "X"
    copy.log.append([0, "x"])
    again = store.get(job.id)
    assert again is not None
    assert again.params["paths"] == ["/in/a", "/in/b"]
    assert again.instances[0].status == "pending" and again.summary["patient_name"] == "DOE^JANE"
    assert again.log == [] and store.active()[0] is not store.active()[0]
    assert store.list()[0].params["paths"] == ["/in/a", "/in/b"]


def test_final_job_moves_to_history_and_back(data_dir: Path):
    store = JobStore(data_dir)
    jobs = [store.add(new_job()) for _ in range(3)]
    jobs[1].state = JobState.RUNNING
    store.save(jobs[1])
    finish(store, jobs[1], JobState.PARTIALLY_FAILED)
    active_path = data_dir / JOBS_DIR / ACTIVE_FILE
    shard = data_dir / JOBS_DIR / "history-000001.json"
    # Finishing writes the history only; the active file drops its older copy with its next write.
    assert stored_ids(shard) == {2} and stored_ids(active_path) == {1, 2, 3}
    assert [j.id for j in store.active()] == [1, 3]
    assert store.counts()["partially-failed"] == 1 and store.counts()["queued"] == 2
    store.close()
    assert stored_ids(active_path) == {1, 3}

    store = JobStore(data_dir)
    got = store.get(2)
    assert got is not None and got.state == JobState.PARTIALLY_FAILED
    # A finished job saved again stays in the history, changed.
    got.note("looked at", NOW)
    store.save(got)
    assert store.get(2).log[-1][1] == "looked at"  # type: ignore[union-attr]
    # Made active again (an operator's retry): back to the active file.
    got.state, got.finished = JobState.QUEUED, None
    store.save(got)
    assert stored_ids(active_path) == {1, 2, 3} and not shard.exists()
    assert [j.id for j in store.active()] == [1, 2, 3]
    store.close()
    assert [j.id for j in JobStore(data_dir).active()] == [1, 2, 3]


def test_save_of_unknown_or_pruned_job(data_dir: Path):
    store = JobStore(data_dir)
    with pytest.raises(ValueError):
        store.save(new_job())  # never added
    job = finish(store, store.add(new_job()))
    assert store.prune(max_age_days=None, max_count=0) == 1
    with pytest.raises(KeyError):
        store.save(job)


def test_history_shards_are_sealed_and_indexed(data_dir: Path, small_shards, monkeypatch):
    store = JobStore(data_dir)
    jobs = [store.add(new_job()) for _ in range(10)]
    for job in jobs[:8]:
        finish(store, job)
    assert files(data_dir) == [
        "active.json",
        "history-000001.index.json",
        "history-000001.json",
        "history-000002.index.json",
        "history-000002.json",
        "history-000003.json",  # open: 2 of 3 jobs
    ]
    store.close()

    # Opening reads the index files of sealed shards, not the shards themselves.
    parsed: list[int] = []
    real = JobStore._parse_shard

    def spy(self: JobStore, shard: int):
        if self._shard_path(shard).exists():
            parsed.append(shard)
        return real(self, shard)

    monkeypatch.setattr(JobStore, "_parse_shard", spy)
    store = JobStore(data_dir)
    assert parsed == [3]
    assert store.counts()["succeeded"] == 8 and store.counts()["queued"] == 2
    finish(store, jobs[8])  # fills shard 3, which is sealed
    finish(store, jobs[9])  # starts shard 4
    assert "history-000003.index.json" in files(data_dir)
    assert stored_ids(data_dir / JOBS_DIR / "history-000004.json") == {10}
    assert [j.id for j in store.list(limit=3)] == [10, 9, 8]
    assert parsed == [3]  # the newest jobs come from shards already in memory
    assert store.get(1).state == JobState.SUCCEEDED  # type: ignore[union-attr]
    assert parsed == [3, 1]


def test_stale_or_broken_index_file_is_rebuilt(data_dir: Path, small_shards):
    store = JobStore(data_dir)
    jobs = [finish(store, store.add(new_job(kind="send"))) for _ in range(4)]
    store.close()
    jobs_dir = data_dir / JOBS_DIR
    index = jobs_dir / "history-000001.index.json"
    good = index.read_text()
    # Shard 1 rewritten behind the index's back (as if a crash fell between the two writes).
    shard = jobs_dir / "history-000001.json"
    data = json.loads(shard.read_text())
    data["jobs"]["2"]["state"] = "failed"
    shard.write_text(json.dumps(data))
    store = JobStore(data_dir)
    assert store.counts()["failed"] == 1 and store.counts()["succeeded"] == 3
    assert index.read_text() != good
    store.close()
    index.write_text("{not json")
    store = JobStore(data_dir)
    assert store.counts()["failed"] == 1 and len(store.list()) == 4
    assert json.loads(index.read_text())["rows"][0][0] == jobs[0].id


def test_crash_between_history_and_active_write(data_dir: Path, monkeypatch):
    """A job that finished is written to the history first; dying before the active file is
    rewritten leaves it in both, and reopening keeps the finished copy, once."""
    store = JobStore(data_dir)
    jobs = [store.add(new_job()) for _ in range(3)]
    jobs[0].state = JobState.RUNNING
    store.save(jobs[0])

    # Finished, then killed before anything else wrote the active file: the job is in both
    # files, at its older revision in the active one.
    finish(store, jobs[0])
    jobs_dir = data_dir / JOBS_DIR
    assert 1 in stored_ids(jobs_dir / ACTIVE_FILE) and 1 in stored_ids(
        jobs_dir / "history-000001.json"
    )
    killed = store  # never closed, as after SIGKILL

    # The running store knows the job is done...
    again = killed.get(1)
    assert again is not None and again.state == JobState.SUCCEEDED
    assert [j.id for j in killed.active()] == [2, 3]
    # ... and so does a fresh one opened on the files as the kill left them; the duplicate is
    # gone from the active file.
    store = JobStore(data_dir)
    assert [j.id for j in store.active()] == [2, 3]
    assert [j.id for j in store.list()] == [3, 2, 1]
    assert store.counts()["succeeded"] == 1 and store.counts()["running"] == 0
    assert 1 not in stored_ids(jobs_dir / ACTIVE_FILE)
    assert store.add(new_job()).id == 4


def test_crash_while_moving_a_finished_job_back(data_dir: Path, monkeypatch):
    """A retried finished job is written to the active file first: dying before it leaves the
    history keeps the newer, active copy."""
    store = JobStore(data_dir)
    job = finish(store, store.add(new_job()), JobState.FAILED)
    finish(store, store.add(new_job()))  # so the shard is rewritten, not deleted
    real = job_store.atomic_write_bytes

    def crash_on_history(path: Path, *chunks: bytes) -> None:
        if Path(path).name.startswith("history-"):
            raise OSError("simulated crash")
        real(path, *chunks)

    monkeypatch.setattr(job_store, "atomic_write_bytes", crash_on_history)
    job.state, job.finished = JobState.QUEUED, None
    with pytest.raises(OSError):
        store.save(job)
    monkeypatch.setattr(job_store, "atomic_write_bytes", real)
    store.close()
    store = JobStore(data_dir)
    assert [(j.id, j.state) for j in store.list()] == [(2, "succeeded"), (1, "queued")]
    assert store.counts()["failed"] == 0 and [j.id for j in store.active()] == [1]
    assert stored_ids(data_dir / JOBS_DIR / "history-000001.json") == {2}


def test_failed_add_uses_no_id_twice(data_dir: Path, monkeypatch):
    store = JobStore(data_dir)
    store.add(new_job())

    def full_disk(path: Path, *chunks: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(job_store, "atomic_write_bytes", full_disk)
    job = new_job()
    with pytest.raises(OSError):
        store.add(job)
    assert job.id == 0
    monkeypatch.undo()
    assert store.add(job).id == 2
    assert [j.id for j in store.active()] == [1, 2]


def test_ids_never_reused_after_prune(data_dir: Path):
    store = JobStore(data_dir)
    for _ in range(3):
        finish(store, store.add(new_job()))
    assert store.prune(max_age_days=None, max_count=0) == 3
    assert store.list() == [] and sum(store.counts().values()) == 0
    store.close()
    store = JobStore(data_dir)
    assert store.add(new_job()).id == 4


def test_corrupt_active_file_is_moved_aside(data_dir: Path, caplog):
    store = JobStore(data_dir)
    finish(store, store.add(new_job()))
    store.add(new_job())
    store.add(new_job())
    store.close()
    active = data_dir / JOBS_DIR / ACTIVE_FILE
    damaged = active.read_text()[:-40]  # torn: not valid JSON
    active.write_text(damaged)

    with caplog.at_level(logging.ERROR, logger="appliance.jobs"):
        store = JobStore(data_dir)
    aside = [p for p in (data_dir / JOBS_DIR).iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].name.startswith("active.json.corrupt-")
    assert aside[0].read_text() == damaged
    assert any(
        str(active) in r.getMessage() and aside[0].name in r.getMessage() for r in caplog.records
    )
    # The history is intact, and no id of the lost file is handed out again.
    assert [j.id for j in store.list()] == [1]
    assert store.add(new_job()).id == 4


def test_corrupt_history_shard_is_moved_aside(data_dir: Path, small_shards, caplog):
    store = JobStore(data_dir)
    for _ in range(7):
        finish(store, store.add(new_job()))
    store.add(new_job())
    store.close()
    jobs_dir = data_dir / JOBS_DIR
    (jobs_dir / "history-000003.json").write_bytes(b"\x00\x00garbage")  # the open shard

    with caplog.at_level(logging.ERROR, logger="appliance.jobs"):
        store = JobStore(data_dir)
    assert any("history-000003.json" in r.getMessage() for r in caplog.records)
    assert any(p.name.startswith("history-000003.json.corrupt-") for p in jobs_dir.iterdir())
    assert [j.id for j in store.list()] == [8, 6, 5, 4, 3, 2, 1]
    assert store.add(new_job()).id == 9

    # A sealed shard found damaged when it is first read: its jobs drop out, the rest stays.
    store.close()
    (jobs_dir / "history-000001.json").write_text("[1, 2")
    store = JobStore(data_dir)  # its index file is stale now: rebuilt from the shard
    assert [j.id for j in store.list()] == [9, 8, 6, 5, 4]
    assert store.counts()["succeeded"] == 3


def test_prune_by_age_and_count_rewrites_only_affected_shards(data_dir: Path, small_shards):
    store = JobStore(data_dir)
    day = 86400.0
    # Finishing order = shard order: shard 1 holds 1-3, shard 2 holds 4-6, shard 3 holds 7-9.
    for n in range(9):
        finish(store, store.add(new_job()), at=NOW - (9 - n) * day)  # job 1 the oldest
    queued = store.add(new_job())
    jobs_dir = data_dir / JOBS_DIR
    untouched = {n: (jobs_dir / f"history-00000{n}.json").stat().st_ino for n in (2, 3)}

    # Older than 6.5 days: jobs 1-3 (9, 8, 7 days) -> shard 1 deleted, nothing else written.
    assert store.prune(max_age_days=6.5, max_count=None, now=NOW) == 3
    assert not (jobs_dir / "history-000001.json").exists()
    assert not (jobs_dir / "history-000001.index.json").exists()
    assert {n: (jobs_dir / f"history-00000{n}.json").stat().st_ino for n in (2, 3)} == untouched

    # Keep the newest 4: drops jobs 4 and 5 from shard 2 only.
    assert store.prune(max_age_days=None, max_count=4, now=NOW) == 2
    assert stored_ids(jobs_dir / "history-000002.json") == {6}
    assert (jobs_dir / "history-000003.json").stat().st_ino == untouched[3]
    assert store.prune(max_age_days=30, max_count=10, now=NOW) == 0
    assert [j.id for j in store.list()] == [queued.id, 9, 8, 7, 6]
    assert store.counts()["succeeded"] == 4 and store.counts()["queued"] == 1
    store.close()
    store = JobStore(data_dir)
    assert [j.id for j in store.list()] == [queued.id, 9, 8, 7, 6]
    assert store.get(4) is None


def test_list_filters_and_pages(data_dir: Path, small_shards):
    store = JobStore(data_dir)
    specs = [
        ("send", "PACS", JobState.SUCCEEDED),
        ("retrieve", "PACS", JobState.FAILED),
        ("send", "WS", JobState.SUCCEEDED),
        ("send", "PACS", None),
        ("forward", "WS", JobState.CANCELLED),
        ("send", "PACS", JobState.FAILED),
        ("retrieve", "WS", None),
        ("send", "PACS", JobState.SUCCEEDED),
    ]
    for kind, target, state in specs:
        job = store.add(new_job(kind, target))
        if state is not None:
            finish(store, job, state)
    ids = lambda jobs: [j.id for j in jobs]  # noqa: E731

    assert ids(store.list()) == [8, 7, 6, 5, 4, 3, 2, 1]
    assert ids(store.list(limit=3)) == [8, 7, 6]
    assert ids(store.list(limit=3, before_id=6)) == [5, 4, 3]
    assert ids(store.list(limit=3, before_id=3)) == [2, 1]
    assert ids(store.list(limit=0)) == []
    assert ids(store.list(states=["failed"])) == [6, 2]
    assert ids(store.list(states=["queued", "cancelled"])) == [7, 5, 4]
    assert ids(store.list(kinds=["retrieve"])) == [7, 2]
    assert ids(store.list(target="WS")) == [7, 5, 3]
    assert ids(store.list(kinds=["send"], target="PACS", states=["succeeded"])) == [8, 1]
    assert ids(store.list(kinds=["send"], target="PACS", before_id=8, limit=2)) == [6, 4]
    with pytest.raises(ValueError):
        store.list(states=["nonsense"])
    counts = store.counts()
    assert counts == {
        "queued": 2,
        "running": 0,
        "waiting-retry": 0,
        "paused": 0,
        "succeeded": 3,
        "partially-failed": 0,
        "failed": 2,
        "cancelled": 1,
    }


def test_add_history_bulk(data_dir: Path, small_shards):
    store = JobStore(data_dir)
    store.add(new_job())
    finish(store, store.add(new_job()))
    done = [new_job(state=JobState.SUCCEEDED, finished=NOW) for _ in range(7)]
    assert store.add_history(done) == list(range(3, 10))
    with pytest.raises(ValueError):
        store.add_history([new_job()])  # not finished
    assert store.add(new_job()).id == 10
    store.close()
    store = JobStore(data_dir)
    assert store.counts()["succeeded"] == 8 and store.counts()["queued"] == 2
    assert [j.id for j in store.list(limit=4)] == [10, 9, 8, 7]
    assert store.add(new_job()).id == 11


def test_threads_adding_and_saving(data_dir: Path, small_shards):
    store = JobStore(data_dir)
    errors: list[BaseException] = []
    per_thread = 25

    def worker(name: str) -> None:
        try:
            for _ in range(per_thread):
                job = store.add(new_job(target=name))
                job.state = JobState.RUNNING
                store.save(job)
                finish(store, job)
                store.list(limit=5)
                store.counts()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"N{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    total = 6 * per_thread
    assert sorted(j.id for j in store.list(limit=1000)) == list(range(1, total + 1))
    assert store.counts()["succeeded"] == total and store.active() == []
    store.close()
    store = JobStore(data_dir)
    assert store.counts()["succeeded"] == total
    assert len(store.list(limit=1000, target="N3")) == per_thread
    assert store.add(new_job()).id == total + 1


def test_closed_store_refuses(data_dir: Path):
    store = JobStore(data_dir)
    store.close()
    with pytest.raises(RuntimeError):
        store.add(new_job())
