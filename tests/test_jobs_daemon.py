"""Jobs through the running daemon: the CLI queues, the daemon retries, nothing is lost on SIGKILL,
and the control socket survives bad clients."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import pydicom
import pytest

from appliance.control import control_socket_path
from appliance.control_client import ControlClient
from tests.factories import write_ct_series
from tests.peers import LOOPBACK, StoreSCP, free_port
from tests.test_job_send import CT_ONLY_CONFIG, write_mr

FAST_RETRY = {
    "retry_first_delay": 1,
    "retry_multiplier": 2,
    "retry_max_delay": 4,
    "retry_max_attempts": 20,
}


def add_node(daemon, name: str, ae_title: str, port: int) -> None:
    result = daemon.cli(
        "node", "add", name, "--ae-title", ae_title, "--host", LOOPBACK, "--port", str(port)
    )
    assert result.returncode == 0, result.stderr


def job(daemon, job_id: int) -> dict:
    result = daemon.cli("jobs", "show", str(job_id), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_job(daemon, job_id: int, states: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        current = job(daemon, job_id)
        if current["state"] in states:
            return current
        assert time.monotonic() < deadline, f"job {job_id} still {current['state']}: {current}"
        time.sleep(0.2)


def queue_send(daemon, node: str, *paths: Path, extra: tuple[str, ...] = ()) -> int:
    result = daemon.cli("send", node, *map(str, paths), *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return int(result.stdout.split()[0])


def received_uids(scp: StoreSCP) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.files()]


def test_send_to_a_peer_that_is_not_up_yet_retries_with_backoff_then_succeeds(
    daemon_factory, tmp_path
):
    daemon = daemon_factory(**FAST_RETRY).start()
    port = free_port()
    add_node(daemon, "pacs", "STORESCP", port)
    files = write_ct_series(tmp_path / "series", 3)

    job_id = queue_send(daemon, "pacs", *files)
    waiting = wait_job(daemon, job_id, {"waiting-retry"})
    assert "refused" in waiting["error"] or "connect" in waiting["error"].lower()
    assert all(i["status"] == "pending" for i in waiting["instances"])
    # Backoff: 1 s, then 2 s, then 4 s (the cap): attempts keep coming, spaced out.
    deadline = time.monotonic() + 20
    while job(daemon, job_id)["attempts"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    third = job(daemon, job_id)
    delays = [
        int(m.group(1))
        for _, text in third["log"]
        if (m := re.search(r"next attempt at .* \(in (\d+) s\)", text))
    ]
    assert delays[:3] == [1, 2, 4]

    scp = StoreSCP(tmp_path / "storescp", port=port)
    try:
        done = wait_job(daemon, job_id, {"succeeded", "failed", "partially-failed"}, timeout=30)
        assert done["state"] == "succeeded", done
        assert sorted(received_uids(scp)) == sorted(
            i["sop_instance_uid"] for i in done["instances"]
        )
        assert all(
            i["status"] == "success" and i["status_code"] == "0x0000" for i in done["instances"]
        )
    finally:
        scp.stop()


def test_send_wait_exit_codes(daemon_factory, storescp, tmp_path):
    daemon = daemon_factory(**FAST_RETRY).start()
    add_node(daemon, "pacs", storescp.ae_title, storescp.port)
    files = write_ct_series(tmp_path / "series", 2)
    result = daemon.cli("send", "pacs", *map(str, files), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stdout
    assert len(storescp.files()) == 2

    # A file that is not DICOM fails for good: the job ends, --wait exits non-zero.
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    result = daemon.cli("send", "pacs", str(junk), str(files[0]), "--wait", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    final = json.loads(result.stdout)
    assert final["state"] == "partially-failed"
    failed = [i for i in final["instances"] if i["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["retryable"] is False


def test_sigkill_with_jobs_queued_and_running_loses_nothing(daemon_factory, tmp_path):
    daemon = daemon_factory(job_workers=2, node_concurrency=2, **FAST_RETRY).start()
    slow = StoreSCP(tmp_path / "slow", extra=("--sleep-during", "1"))
    add_node(daemon, "pacs", slow.ae_title, slow.port)
    ids = []
    sent_uids: set[str] = set()
    for n in range(22):
        files = write_ct_series(tmp_path / f"s{n}", 2, rows=16, columns=16)
        sent_uids.update(
            str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files
        )
        ids.append(queue_send(daemon, "pacs", *files))
    deadline = time.monotonic() + 30
    while True:
        listed = json.loads(daemon.cli("jobs", "list", "--limit", "100", "--json").stdout)
        running = [j for j in listed if j["state"] == "running"]
        if len(running) == 2:
            break
        assert time.monotonic() < deadline, listed
        time.sleep(0.05)
    daemon.kill()
    slow.stop()

    fast = StoreSCP(tmp_path / "fast", port=slow.port)
    try:
        daemon.start()
        listed = json.loads(daemon.cli("jobs", "list", "--limit", "100", "--json").stdout)
        assert sorted(j["id"] for j in listed) == sorted(ids)
        for job_id in ids:
            done = wait_job(daemon, job_id, {"succeeded", "failed", "partially-failed"}, 90)
            assert done["state"] == "succeeded", done
        # Every instance reached a peer; none is reported sent that no peer received.
        received = set(received_uids(fast)) | set(received_uids(slow))
        assert received == sent_uids
        listed = json.loads(daemon.cli("jobs", "list", "--limit", "100", "--json").stdout)
        assert len(listed) == 22
    finally:
        fast.stop()


def test_reroute_a_waiting_job_to_a_node_that_answers(daemon_factory, storescp, tmp_path):
    daemon = daemon_factory(**FAST_RETRY).start()
    add_node(daemon, "down", "NOBODY", free_port())
    add_node(daemon, "pacs", storescp.ae_title, storescp.port)
    files = write_ct_series(tmp_path / "series", 2)
    job_id = queue_send(daemon, "down", *files)
    wait_job(daemon, job_id, {"waiting-retry"})
    assert daemon.cli("jobs", "pause", str(job_id)).returncode == 0
    assert job(daemon, job_id)["state"] == "paused"
    result = daemon.cli("jobs", "reroute", str(job_id), "pacs")
    assert result.returncode == 0, result.stderr
    assert daemon.cli("jobs", "resume", str(job_id)).returncode == 0
    done = wait_job(daemon, job_id, {"succeeded", "failed", "partially-failed"})
    assert done["state"] == "succeeded" and done["target"] == "pacs"
    assert len(storescp.files()) == 2
    # Cancelling an ended job is refused with a reason.
    result = daemon.cli("jobs", "cancel", str(job_id))
    assert result.returncode != 0 and "ended" in result.stderr


def test_status_reports_services_disk_and_queue(daemon_factory):
    daemon = daemon_factory().start()
    result = daemon.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["services"][0]["port"] == daemon.port
    assert status["services"][0]["state"] == "listening"
    assert status["disk"]["free"] > 0
    assert set(status["jobs"]) >= {"queued", "running", "failed", "succeeded"}
    text = daemon.cli("status")
    assert text.returncode == 0 and str(daemon.port) in text.stdout


def test_bad_clients_get_errors_and_the_daemon_keeps_serving(daemon_factory):
    daemon = daemon_factory().start()
    path = control_socket_path(daemon.data_dir)

    def exchange(payload: bytes) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            try:
                sock.sendall(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused mid-way: the answer is already waiting
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data.splitlines()[0])

    assert exchange(b"{not json\n")["error"]["code"] == "bad-request"
    assert exchange(b'{"v": 99, "id": 1, "op": "status"}\n')["error"]["code"] == (
        "unsupported-version"
    )
    assert exchange(b'{"v": 1, "id": 2, "op": "no.such.op"}\n')["error"]["code"] == "unknown-op"
    assert exchange(b'{"v": 1, "id": 3, "op": "jobs.show", "args": {"id": "x"}}\n')["ok"] is False
    big = b'{"v": 1, "op": "status", "args": {"pad": "' + b"x" * (2 * 2**20) + b'"}}\n'
    assert exchange(big)["error"]["code"] == "too-large"

    with ControlClient(path, role="technologist") as technologist:
        assert technologist.call("status")["services"][0]["port"] == daemon.port
        with pytest.raises(Exception) as refused:
            technologist.call("config.set", key="ae_title", value="HACKED")
        assert getattr(refused.value, "code", "") == "forbidden"
    assert daemon.cli("config", "show", "--json").returncode == 0
    assert json.loads(daemon.cli("config", "show", "--json").stdout)["ae_title"] != "HACKED"
    assert daemon.cli("status").returncode == 0
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_refused_class_partially_fails_and_retry_failed_only_sends_it(daemon_factory, tmp_path):
    daemon = daemon_factory(**FAST_RETRY).start()
    config = tmp_path / "ct-only.cfg"
    config.write_text(CT_ONLY_CONFIG)
    ct_only = StoreSCP(tmp_path / "ct-only", extra=("-xf", str(config), "CTOnly"))
    add_node(daemon, "pacs", ct_only.ae_title, ct_only.port)
    cts = write_ct_series(tmp_path / "in", 2)
    mr_uid = write_mr(tmp_path / "in" / "mr.dcm")

    result = daemon.cli("send", "pacs", str(tmp_path / "in"), "--wait", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    partial = json.loads(result.stdout)
    assert partial["state"] == "partially-failed" and partial["attempts"] == 1
    (failed,) = [i for i in partial["instances"] if i["status"] == "failed"]
    assert failed["sop_instance_uid"] == mr_uid and "presentation context" in failed["error"]
    assert len(ct_only.files()) == len(cts)

    # Field service reconfigures the node; the technologist retries only what failed.
    ct_only.stop()
    everything = StoreSCP(tmp_path / "all", port=ct_only.port)
    try:
        result = daemon.cli("jobs", "retry", str(partial["id"]), "--failed-only")
        assert result.returncode == 0, result.stderr
        done = wait_job(daemon, partial["id"], {"succeeded", "failed", "partially-failed"})
        assert done["state"] == "succeeded"
        assert received_uids(everything) == [mr_uid]
    finally:
        everything.stop()
