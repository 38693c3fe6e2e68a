"""A long job history in a daemon's data folder, written before the daemon starts.

Used by the console's scale test and by ``bench/console``: finished jobs go in through the
store's bulk loader (``JobStore.add_history``) a shard's worth at a time, and the active jobs of
each stretch are added after it, so they are spread through the history by id. The active jobs
are ``paused`` or ``waiting-retry`` with the next retry a day away: jobs that wait, so the
daemon stays idle while the console is measured (a ``queued`` one would start at once).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.job_store import SHARD_MAX_JOBS, JobStore
from appliance.jobs import InstanceResult, Job, JobState

TARGETS = ("PACS", "PACS2", "WORKSTATION", "ARCHIVE")
UID_ROOT = "1.2.826.0.1.3680043.10.1234."


@dataclass
class History:
    """What ``seed_jobs`` stored: every id by state."""

    ids: dict[str, list[int]] = field(default_factory=dict)

    def of(self, *states: str) -> list[int]:
        return sorted(i for s in states for i in self.ids.get(s, []))

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.ids.values())


def history_job(n: int, state: JobState, now: float, instances: int = 4) -> Job:
    """Job number ``n`` of the history (older for smaller ``n``), in ``state``."""
    created = now - 10 * 86400 + n * 60.0
    study = f"{UID_ROOT}{n}"
    job = Job(
        kind="send" if n % 3 else "retrieve",
        target=TARGETS[n % len(TARGETS)],
        params={"study_uids": [study]},
        state=state,
        created=created,
        updated=created,
        summary={
            "patient_name": f"PATIENT^{n}",
            "patient_id": f"ID{n:07d}",
            "study_description": "CT CHEST",
            "study_date": "20240101",
            "studies": 1,
        },
    )
    final = state in (JobState.SUCCEEDED, JobState.FAILED, JobState.PARTIALLY_FAILED)
    failed = state in (JobState.FAILED, JobState.PARTIALLY_FAILED)
    job.instances = [
        InstanceResult(
            sop_instance_uid=f"{study}.1.{i}",
            status=("failed" if failed and i % 2 == 0 else "success") if final else "pending",
            status_code=("0xA700" if failed and i % 2 == 0 else "0x0000") if final else None,
            attempts=1 if final else 0,
            path=f"archive/{study}/{study}.1/{study}.1.{i}.dcm",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        )
        for i in range(instances)
    ]
    job.note("queued", created)
    if final:
        job.started, job.finished, job.attempts = created + 1, created + 20, 1
        job.updated = job.finished
        job.note(f"finished: {state}", created + 20)
        if failed:
            job.error = "association rejected by the node"
    elif state is JobState.WAITING_RETRY:
        job.attempts = 1
        job.next_retry = time.time() + 86400
        job.error = "connection refused"
    return job


def seed_jobs(
    data_dir: Path,
    total: int = 10_000,
    *,
    failed_every: int = 33,
    active_every: int = 40,
    block: int = SHARD_MAX_JOBS,
) -> History:
    """Store ``total`` jobs in ``data_dir``'s job store: one in ``active_every`` active (paused or
    waiting-retry), one in ``failed_every`` failed or partially-failed, the rest succeeded.

    Finished jobs are bulk-loaded ``block`` at a time (a full history shard, as a daemon's
    history has), and the active jobs of each block are added after it: they come in small
    groups spread through the history."""
    now = time.time()
    history = History()
    store = JobStore(data_dir)
    try:
        for first in range(1, total + 1, block):
            finished: list[Job] = []
            active: list[Job] = []
            for n in range(first, min(first + block, total + 1)):
                if n % active_every == 0:
                    paused = n % (2 * active_every)
                    state = JobState.PAUSED if paused else JobState.WAITING_RETRY
                    active.append(history_job(n, state, now))
                elif n % failed_every == 0:
                    failed = n % (2 * failed_every)
                    state = JobState.FAILED if failed else JobState.PARTIALLY_FAILED
                    finished.append(history_job(n, state, now))
                else:
                    finished.append(history_job(n, JobState.SUCCEEDED, now))
            if finished:
                store.add_history(finished)
            for job in active:
                store.add(job)
            for job in finished + active:
                history.ids.setdefault(str(job.state), []).append(job.id)
    finally:
        store.close()
    return history
