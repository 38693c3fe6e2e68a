"""The job engine's test set-up: a real job store, configuration, archive and event bus in a
temporary data folder, with short retry delays."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.archive import Archive
from appliance.config import ConfigStore, Node
from appliance.events import EventBus
from appliance.job_engine import JobEngine
from appliance.job_store import JobStore
from appliance.jobs import Job
from tests.peers import LOOPBACK

FAST_RETRY = {
    "retry_first_delay": 0.2,
    "retry_multiplier": 2.0,
    "retry_max_delay": 1.0,
    "retry_max_attempts": 3,
}


def wait_for(condition: Callable[[], object], timeout: float = 20.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or condition}")


@dataclass
class Env:
    data_dir: Path
    config: ConfigStore
    store: JobStore
    archive: Archive
    events: EventBus
    engines: list[JobEngine] = field(default_factory=list)

    def engine(self, *, start: bool = True, **kwargs: object) -> JobEngine:
        engine = JobEngine(
            self.store, self.config, self.archive, self.events, self.data_dir, **kwargs
        )  # type: ignore[arg-type]
        self.engines.append(engine)
        if start:
            engine.start()
        return engine

    def state(self, job_id: int) -> str:
        job = self.store.get(job_id)
        assert job is not None
        return str(job.state)

    def wait_state(self, job_id: int, *states: str, timeout: float = 20.0) -> Job:
        wait_for(lambda: self.state(job_id) in states, timeout, f"job {job_id} {states}")
        job = self.store.get(job_id)
        assert job is not None
        return job

    def add_node(self, name: str, port: int, ae_title: str = "STORESCP") -> None:
        self.config.add_node(Node(name=name, ae_title=ae_title, host=LOOPBACK, port=port))


def make_env(tmp_path: Path) -> Iterator[Env]:
    """For a fixture: ``yield from make_env(tmp_path)``."""
    data_dir = tmp_path / "data"
    config = ConfigStore(data_dir)
    config.set("disk_reserve_mb", 1)
    for key, value in FAST_RETRY.items():
        config.set(key, value)
    made = Env(data_dir, config, JobStore(data_dir), Archive(data_dir), EventBus())
    yield made
    for engine in made.engines:
        engine.stop(10)
    made.store.close()
    made.archive.close()
    made.config.close()
