"""SIGKILL in the middle of a transfer, SIGTERM with work in flight, idle peers at shutdown."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

from pydicom import dcmread

from appliance.dicom_classes import VERIFICATION_SOP_CLASS
from tests.factories import write_ct_series
from tests.peers import LOOPBACK
from tests.scp_helpers import (
    ARCHIVE,
    associate_rq_pdu,
    client_ae,
    echoscu,
    files_under,
    index_rows,
    indexed_uids,
    instance_count,
    read_pdu,
    sop_instance_uid_of,
    storescu_cmd,
    succeeded_files,
)


def _start_storescu(daemon, paths, log: Path, calling: str) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            storescu_cmd(daemon, paths, calling=calling), stdout=out, stderr=subprocess.STDOUT
        )


def _wait_for_instances(daemon, count: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while instance_count(daemon.data_dir) < count:
        assert proc.poll() is None, "storescu finished before the daemon was stopped"
        assert time.monotonic() < deadline, "instances did not arrive"
        time.sleep(0.005)


def _assert_archive_consistent(data_dir: Path) -> set[str]:
    """Every row points at a complete, readable file of its instance; no stray files."""
    archive = data_dir / ARCHIVE
    leftovers = [p for p in files_under(data_dir) if p.name.endswith(".part")]
    assert leftovers == []
    rows = index_rows(data_dir, "SELECT sop_instance_uid, path, size FROM instances")
    for uid, relative, size in rows:
        path = archive / relative
        assert path.is_file(), f"index row {uid} points at a missing file"
        assert path.stat().st_size == size
        ds = dcmread(path)
        assert ds.SOPInstanceUID == uid
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
    assert files_under(archive) == {archive / relative for _, relative, _ in rows}
    return {uid for uid, _, _ in rows}


def test_sigkill_mid_transfer_keeps_every_acknowledged_instance(daemon_factory, tmp_path):
    daemon = daemon_factory().start()
    paths = write_ct_series(tmp_path / "in", 300)
    uid_of = {str(p): sop_instance_uid_of(p) for p in paths}
    log = tmp_path / "storescu.log"
    proc = _start_storescu(daemon, paths, log, "CRASHTEST")
    try:
        _wait_for_instances(daemon, 120, proc)
        daemon.kill()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    acknowledged = {uid_of[name] for name in succeeded_files(log.read_text(errors="replace"))}
    # The kill really landed in the middle of the transfer.
    assert 100 <= len(acknowledged) < 300

    daemon.start()  # same data folder: recovery runs before listening
    indexed = _assert_archive_consistent(daemon.data_dir)
    assert acknowledged <= indexed
    assert indexed <= set(uid_of.values())
    assert echoscu(daemon).returncode == 0


def test_sigterm_lets_in_flight_stores_finish_and_exits_zero(daemon_factory, tmp_path):
    daemon = daemon_factory().start()
    paths = write_ct_series(tmp_path / "in", 200)
    uid_of = {str(p): sop_instance_uid_of(p) for p in paths}
    log = tmp_path / "storescu.log"
    proc = _start_storescu(daemon, paths, log, "TERMTEST")
    try:
        _wait_for_instances(daemon, 20, proc)
        daemon.proc.send_signal(signal.SIGTERM)
        # No new associations once shutting down...
        deadline = time.monotonic() + 5
        while echoscu(daemon).returncode == 0:
            assert time.monotonic() < deadline, "still accepting associations after SIGTERM"
            time.sleep(0.1)
        # ...but the running one is served to its end.
        proc.wait(timeout=120)
        finished = time.monotonic()
        daemon.proc.wait(timeout=60)  # one SIGTERM only: stop() would send another
        exited = time.monotonic()
        code = daemon.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text(errors="replace")
    assert code == 0, daemon.log()
    assert proc.returncode == 0, output
    acknowledged = {uid_of[name] for name in succeeded_files(output)}
    assert acknowledged == set(uid_of.values())
    assert acknowledged <= indexed_uids(daemon.data_dir)
    # It left as soon as the last association ended, not at shutdown_timeout (30 s).
    assert exited - finished < 10, daemon.log()
    assert "received SIGTERM" in daemon.log()


def test_sigterm_with_nothing_running_exits_promptly(daemon):
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 5, daemon.log()


def test_idle_association_does_not_outlive_shutdown_timeout(daemon_factory):
    daemon = daemon_factory(shutdown_timeout=2).start()
    ae = client_ae("IDLER")
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    assoc = ae.associate(LOOPBACK, daemon.port, ae_title=daemon.ae_title)
    assert assoc.is_established
    started = time.monotonic()
    code = daemon.stop(timeout=60)
    elapsed = time.monotonic() - started
    assert code == 0, daemon.log()
    assert 1.5 <= elapsed < 8, daemon.log()
    deadline = time.monotonic() + 5
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted
    assert "IDLER" in daemon.log()


def test_unresponsive_peer_does_not_outlive_shutdown_timeout(daemon_factory):
    """A peer that associates and then neither reads nor closes cannot hold the daemon."""
    daemon = daemon_factory(shutdown_timeout=1, association_timeout=60).start()
    with socket.create_connection((LOOPBACK, daemon.port), timeout=10) as sock:
        sock.sendall(associate_rq_pdu(daemon.ae_title, "FROZEN"))
        assert read_pdu(sock)[0] == 0x02  # A-ASSOCIATE-AC
        started = time.monotonic()
        code = daemon.stop(timeout=90)
        elapsed = time.monotonic() - started
    assert code == 0, daemon.log()
    assert elapsed < 8, daemon.log()


def test_peer_stalling_inside_a_pdu_does_not_hold_up_shutdown(daemon_factory):
    """SIGTERM must not wait for a peer that sent half a PDU and went quiet."""
    daemon = daemon_factory(shutdown_timeout=1, association_timeout=60, network_timeout=60)
    daemon.start()
    with (
        socket.create_connection((LOOPBACK, daemon.port), timeout=10) as before_association,
        socket.create_connection((LOOPBACK, daemon.port), timeout=10) as after_association,
    ):
        before_association.sendall(b"\x01\x00" + struct.pack(">I", 1000) + b"\x00" * 10)
        after_association.sendall(associate_rq_pdu(daemon.ae_title, "STALLER"))
        assert read_pdu(after_association)[0] == 0x02
        after_association.sendall(b"\x04\x00" + struct.pack(">I", 5000) + b"\x00" * 10)
        time.sleep(0.5)
        started = time.monotonic()
        code = daemon.stop(timeout=90)
        elapsed = time.monotonic() - started
    assert code == 0, daemon.log()
    assert elapsed < 8, daemon.log()
