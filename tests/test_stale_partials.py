"""Temporary files of a writer killed mid-write are removed when the daemon starts."""

from __future__ import annotations

import os
import subprocess
import sys

from appliance.fileio import remove_stale_partials


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_partials_of_dead_writers_are_removed_and_live_writers_kept(tmp_path):
    dead = tmp_path / f".config.json.{_dead_pid()}.7f00aa.part"
    live = tmp_path / f".config.json.{os.getppid()}.7f00bb.part"
    unrelated = tmp_path / "config.json"
    for path in (dead, live, unrelated):
        path.write_text("{")
    removed = remove_stale_partials(tmp_path)
    assert removed == [dead]
    assert not dead.exists()
    assert live.exists() and unrelated.exists()


def test_daemon_start_removes_a_killed_writers_partial(daemon_factory):
    daemon = daemon_factory()
    leftover = daemon.data_dir / f".commitments.json.{_dead_pid()}.7f00cc.part"
    leftover.write_text('{"incoming": {')
    daemon.start()
    assert not leftover.exists()
    assert "left by a writer that was killed" in daemon.log()
