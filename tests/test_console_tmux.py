"""`dicom-console` in a real terminal (tmux) against a real daemon: dashboard, then the jobs."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.factories import write_ct_series
from tests.peers import LOOPBACK

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


@pytest.fixture
def tmux_session() -> Iterator[str]:
    name = f"console-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def pane(session: str) -> str:
    result = subprocess.run(
        ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
    )
    return result.stdout


def wait_for_text(session: str, *texts: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        screen = pane(session)
        if all(text in screen for text in texts):
            return screen
        assert time.monotonic() < deadline, f"{texts} not on screen:\n{screen}"
        time.sleep(0.1)


def test_console_in_tmux_shows_the_dashboard_then_the_jobs(
    daemon, storescp, tmp_path, tmux_session
):
    result = daemon.cli(
        "node", "add", "pacs", "--ae-title", storescp.ae_title, "--host", LOOPBACK,
        "--port", str(storescp.port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = write_ct_series(tmp_path / "series", 2)
    sent = daemon.cli("send", "pacs", *map(str, files), "--wait")
    assert sent.returncode == 0, sent.stdout + sent.stderr

    command = shlex.join([sys.executable, "-m", "console.app", "--data-dir", str(daemon.data_dir)])
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", tmux_session, "-x", "100", "-y", "30",
         f"TERM=xterm-256color {command}"],
        check=True,
    )  # fmt: skip
    screen = wait_for_text(tmux_session, "Dashboard", "listening", str(daemon.port))
    assert "Traceback" not in screen

    subprocess.run(["tmux", "send-keys", "-t", tmux_session, "2"], check=True)
    screen = wait_for_text(tmux_session, "Jobs", "succeeded", "########## 2/2", "pacs")

    subprocess.run(["tmux", "send-keys", "-t", tmux_session, "q"], check=True)
    deadline = time.monotonic() + 20
    while subprocess.run(["tmux", "has-session", "-t", tmux_session]).returncode == 0:
        assert time.monotonic() < deadline, pane(tmux_session)
        time.sleep(0.1)
