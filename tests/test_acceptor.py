"""The event-driven acceptor still honours every way an association can end."""

from __future__ import annotations

import socket
import struct
import threading
import time

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.transport import AssociationSocket

from appliance import acceptor
from appliance.acceptor import EventDrivenAssociation, EventDrivenDUL
from tests.factories import ct_dataset
from tests.peers import LOOPBACK, dcmtk, run

VERIFICATION = "1.2.840.10008.1.1"


def requestor(*contexts: str) -> AE:
    ae = AE(ae_title="TESTSCU")
    for context in contexts or (VERIFICATION,):
        ae.add_requested_context(context, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_many_messages_on_one_association(daemon):
    assoc = requestor(VERIFICATION, CTImageStorage).associate(
        LOOPBACK, daemon.port, ae_title=daemon.ae_title
    )
    assert assoc.is_established
    try:
        for _ in range(50):
            assert assoc.send_c_echo().Status == 0x0000
        for number in range(1, 21):
            status = assoc.send_c_store(ct_dataset(instance_number=number))
            assert status.Status == 0x0000
    finally:
        assoc.release()
    assert assoc.is_released
    assert wait_for(lambda: "released" in daemon.log() and "20 stored" in daemon.log())


def test_peer_abort_ends_the_association(daemon):
    assoc = requestor().associate(LOOPBACK, daemon.port, ae_title=daemon.ae_title)
    assert assoc.is_established
    assoc.abort()
    assert wait_for(lambda: "aborted after" in daemon.log())
    # The daemon keeps serving.
    result = run([dcmtk("echoscu"), "-aec", daemon.ae_title, LOOPBACK, str(daemon.port)])
    assert result.returncode == 0, result.stderr


def test_idle_association_is_dropped_after_the_network_timeout(daemon_factory):
    daemon = daemon_factory(network_timeout=1).start()
    assoc = requestor().associate(LOOPBACK, daemon.port, ae_title=daemon.ae_title)
    assert assoc.is_established
    started = time.monotonic()
    assert wait_for(lambda: not assoc.is_established, timeout=15)
    assert assoc.is_aborted
    assert time.monotonic() - started < 10


def test_silent_connection_is_closed_after_the_association_timeout(daemon_factory):
    daemon = daemon_factory(association_timeout=1).start()
    with socket.create_connection((LOOPBACK, daemon.port), timeout=15) as sock:
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed without an A-ASSOCIATE-RQ ever sent
        assert time.monotonic() - started < 10


def test_dropped_connection_mid_store_leaves_the_daemon_serving(daemon, tmp_path):
    with socket.create_connection((LOOPBACK, daemon.port)) as sock:
        # A few bytes of a PDU, then the connection goes away.
        sock.sendall(b"\x01\x00\x00\x00\x01\x00")
    result = run([dcmtk("echoscu"), "-aec", daemon.ae_title, LOOPBACK, str(daemon.port)])
    assert result.returncode == 0, result.stderr


def test_forged_pdu_length_does_not_allocate_it(daemon):
    """A header claiming a 4 GB PDU must not make the daemon reserve 4 GB up front."""
    with socket.create_connection((LOOPBACK, daemon.port), timeout=10) as sock:
        sock.sendall(b"\x01\x00" + struct.pack(">I", 0xFFFFFF00) + b"x" * 64)
        time.sleep(1.0)  # the daemon is now waiting for the rest of the "PDU"
        rss_mb = rss_bytes(daemon.proc.pid) / 2**20
    assert rss_mb < 500, f"daemon RSS {rss_mb:.0f} MB"
    result = run([dcmtk("echoscu"), "-aec", daemon.ae_title, LOOPBACK, str(daemon.port)])
    assert result.returncode == 0, result.stderr


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_dul_reactor_wakes_for_kill_from_another_thread(monkeypatch):
    """Without socket traffic the reactor sits in select(); another thread must wake it."""
    monkeypatch.setattr(acceptor, "POLL_INTERVAL", 60.0)
    assoc = EventDrivenAssociation(AE(), "acceptor")
    dul = assoc.dul
    assert isinstance(dul, EventDrivenDUL)
    left, right = socket.socketpair()
    try:
        dul.socket = AssociationSocket(assoc, client_socket=left)
        dul.start()
        assert assoc._dul_ready.wait(5)
        time.sleep(0.2)  # let it settle into select()
        threading.Thread(target=lambda: setattr(dul, "_kill_thread", True)).start()
        dul.join(10)
        assert not dul.is_alive()
    finally:
        left.close()
        right.close()
