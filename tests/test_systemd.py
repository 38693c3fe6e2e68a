"""The daemon under systemd: readiness notification and a hardened unit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from tests.peers import appliance_cmd, free_port, run

REPO = Path(__file__).resolve().parents[1]


def test_daemon_notifies_ready_after_the_listener_is_bound_and_stopping_on_sigterm(tmp_path):
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(30)
    port = free_port()
    data = tmp_path / "data"
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    proc = subprocess.Popen(
        appliance_cmd("serve", "--data-dir", str(data), "--port", str(port)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "daemon.log", "wb"),
    )
    try:
        ready = listener.recv(4096).decode()
        assert ready.startswith("READY=1")
        assert f"port {port}" in ready
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        proc.send_signal(signal.SIGTERM)
        assert listener.recv(4096).decode() == "STOPPING=1"
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        listener.close()


def test_unit_is_hardened_per_systemd_analyze_security():
    unit = REPO / "systemd" / "dicom-appliance.service"
    # The threshold is on a 0..100 scale: 25 means "exposure 2.5" or better.
    result = run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=25", str(unit)], timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = unit.read_text()
    assert "Type=notify" in text
    assert "NoNewPrivileges=yes" in text
