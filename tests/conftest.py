from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import Daemon, Orthanc, StoreSCP


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator:
    """Make daemons (configure first, then start); all are stopped at teardown."""
    made: list[Daemon] = []

    def make(name: str = "data", ae_title: str = "APPLIANCE", **settings: object) -> Daemon:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        daemon = Daemon(folder, ae_title=ae_title)
        # Tests run on shared disks: keep the reserve small unless a test sets it.
        settings.setdefault("disk_reserve_mb", 1)
        daemon.configure(**settings)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.kill()


@pytest.fixture
def daemon(daemon_factory) -> Daemon:
    return daemon_factory().start()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path / "storescp")
    yield scp
    scp.stop()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc")
    yield server
    server.stop()
