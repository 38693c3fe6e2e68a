"""The DICOM listener may bind an address the host does not have yet.

The appliance's daemon starts before the network is configured; with ``bind_address`` set to one
of the box's own addresses, that address can come later (DHCP). The listener binds it anyway
(IP_FREEBIND) and answers once the address exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.peers import Daemon, appliance_cmd, dcmtk, free_port

# TEST-NET-1 (RFC 5737): never configured on a real host
ABSENT = "192.0.2.55"


def _wait_for_log(daemon: Daemon, proc: subprocess.Popen, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in daemon.log():
            return
        assert proc.poll() is None, f"the daemon exited ({proc.returncode}):\n{daemon.log()}"
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} in the log:\n{daemon.log()}")


def test_daemon_starts_on_an_address_the_host_does_not_have_yet(tmp_path):
    daemon = Daemon(tmp_path / "data")
    daemon.configure(bind_address=ABSENT, disk_reserve_mb=1)
    port = free_port()
    with daemon.log_path.open("ab") as log:
        proc = subprocess.Popen(
            appliance_cmd("serve", "--data-dir", str(daemon.data_dir), "--port", str(port)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_log(daemon, proc, "ready:")
        assert f"on {ABSENT}:{port}" in daemon.log()
        time.sleep(0.5)
        assert proc.poll() is None, "the daemon keeps running"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None,
    reason="needs root, unshare and ip (a network namespace of its own)",
)
def test_listener_answers_once_the_address_appears(tmp_path):
    """In a network namespace of its own: the daemon starts bound to an address the namespace
    does not have; echoscu fails; the address is added; echoscu succeeds without a restart."""
    data = tmp_path / "data"
    daemon = Daemon(data)
    daemon.configure(bind_address=ABSENT, disk_reserve_mb=1)
    port = free_port()
    serve = " ".join(appliance_cmd("serve", "--data-dir", str(data), "--port", str(port)))
    echo = f"{dcmtk('echoscu')} -to 5 -ta 5 -aec APPLIANCE {ABSENT} {port}"
    script = f"""
set -u
ip link set lo up
{serve} >{daemon.log_path} 2>&1 &
pid=$!
i=0
until grep -q 'ready:' {daemon.log_path}; do
    i=$((i + 1)); [ $i -lt 300 ] || {{ echo NOT-READY; exit 1; }}
    kill -0 $pid || {{ echo DAEMON-EXITED; exit 1; }}
    sleep 0.1
done
if {echo} >/dev/null 2>&1; then echo ECHO-BEFORE=ok; else echo ECHO-BEFORE=failed; fi
ip addr add {ABSENT}/32 dev lo
if {echo} >/dev/null 2>&1; then echo ECHO-AFTER=ok; else echo ECHO-AFTER=failed; fi
kill $pid
wait $pid
"""
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=os.getcwd(),
    )
    assert "ECHO-BEFORE=failed" in result.stdout, result.stdout + result.stderr + daemon.log()
    assert "ECHO-AFTER=ok" in result.stdout, result.stdout + result.stderr + daemon.log()
