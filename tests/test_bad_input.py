"""Hostile and broken input: full disk, malformed PDUs, mismatched, hostile and corrupt data."""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import _config

from tests.factories import ct_dataset, write_ct_series
from tests.peers import LOOPBACK, disk_free_mb
from tests.scp_helpers import (
    ARCHIVE,
    associate_rq_pdu,
    client_ae,
    echoscu,
    encode_dataset,
    files_under,
    indexed_uids,
    part10_bytes,
    read_pdu,
    read_stored,
    store_statuses,
    storescu,
)

STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000


def _assert_serving(daemon):
    assert daemon.proc.poll() is None, "daemon exited"
    result = echoscu(daemon)
    assert result.returncode == 0, result.stdout + result.stderr


def _archive_files(daemon) -> set[Path]:
    return files_under(daemon.data_dir / ARCHIVE)


@pytest.fixture
def raw_store(tmp_path, monkeypatch):
    """C-STORE arbitrary bytes: the command's SOP Class/Instance UIDs come from the File Meta,
    the data set is sent exactly as written after it (pynetdicom's chunked file sending)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    monkeypatch.setattr(_config, "ENFORCE_UID_CONFORMANCE", False)
    counter = iter(range(1_000_000))

    def send(daemon, sop_class: str, sop_instance: str, body: bytes, then=None) -> list[int]:
        folder = tmp_path / "raw"
        folder.mkdir(exist_ok=True)
        path = folder / f"raw{next(counter)}.bin"
        path.write_bytes(part10_bytes(sop_class, sop_instance, ExplicitVRLittleEndian, body))
        ae = client_ae("RAWSENDER")
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        if then is not None:
            ae.add_requested_context(str(then.SOPClassUID), ExplicitVRLittleEndian)
        assoc = ae.associate(LOOPBACK, daemon.port, ae_title=daemon.ae_title)
        assert assoc.is_established
        try:
            statuses = [int(assoc.send_c_store(path).Status)]
            if then is not None:
                # The same association goes on working after the refusal.
                statuses.append(int(assoc.send_c_store(then).Status))
        finally:
            if assoc.is_established:
                assoc.release()
        return statuses

    return send


# --- full disk ------------------------------------------------------------------------------


def test_full_disk_refuses_with_out_of_resources_and_leaves_nothing(daemon_factory, tmp_path):
    reserve = disk_free_mb(tmp_path) + 100_000
    daemon = daemon_factory(disk_reserve_mb=reserve).start()
    paths = write_ct_series(tmp_path / "in", 3)

    # -nh: go on after a failed C-STORE, so every instance gets an answer
    result = storescu(daemon, paths, "-nh", calling="FULLDISK", verbosity="-d")
    output = result.stdout + result.stderr
    assert store_statuses(output) == [(str(p), STATUS_OUT_OF_RESOURCES) for p in paths], output
    assert _archive_files(daemon) == set()
    assert indexed_uids(daemon.data_dir) == set()
    log = daemon.log()
    failures = [line for line in log.splitlines() if "0xA700" in line]
    assert len(failures) == 3, log
    assert all("FULLDISK" in line and "127.0.0.1:" in line for line in failures)
    _assert_serving(daemon)


# --- malformed and truncated PDUs -----------------------------------------------------------

GOOD_RQ = associate_rq_pdu("APPLIANCE", "RAWPEER")
MALFORMED = {
    "associate-rq with a garbage length": b"\x01\x00" + struct.pack(">I", 0xFFFFFF00) + b"x" * 64,
    "associate-rq with garbage inside": b"\x01\x00" + struct.pack(">I", 68) + os.urandom(68),
    "associate-rq cut short": GOOD_RQ[:40],
    "associate-rq with a wrong item length": GOOD_RQ[:80] + b"\x10\x00\xff\xff" + GOOD_RQ[84:],
    "header promises 1000 bytes": b"\x01\x00" + struct.pack(">I", 1000) + b"\x00" * 10,
    "random bytes": os.urandom(4096),
    "unknown pdu type": b"\x09\x00" + struct.pack(">I", 4) + b"abcd",
    "p-data before association": b"\x04\x00" + struct.pack(">I", 6) + b"\x00\x00\x00\x02\x01\x03",
    "calling ae all spaces": associate_rq_pdu("APPLIANCE", " " * 16),
    "nothing at all": b"",
}


def test_malformed_and_truncated_pdus_do_not_stop_the_daemon(daemon_factory):
    # A low limit also shows that the broken connections do not keep slots.
    daemon = daemon_factory(max_associations=2).start()
    for name, payload in MALFORMED.items():
        with socket.create_connection((LOOPBACK, daemon.port), timeout=5) as sock:
            sock.sendall(payload)
            time.sleep(0.05)
        assert daemon.proc.poll() is None, f"daemon died after {name}"
    time.sleep(0.5)
    for _ in range(3):
        _assert_serving(daemon)


def _wait_until_serving(daemon, timeout: float) -> float:
    started = time.monotonic()
    while echoscu(daemon).returncode != 0:
        assert time.monotonic() - started < timeout, "a stalled peer still holds the only slot"
        time.sleep(0.25)
    return time.monotonic() - started


def test_peer_stalling_inside_a_pdu_does_not_hold_a_slot_forever(daemon_factory):
    """A PDU header promising more than is sent, on a connection kept open (slowloris)."""
    daemon = daemon_factory(max_associations=1, association_timeout=2, network_timeout=2).start()
    _wait_until_serving(daemon, timeout=10)  # the start-up probe's connection is gone
    with socket.create_connection((LOOPBACK, daemon.port), timeout=30) as sock:
        sock.sendall(b"\x01\x00" + struct.pack(">I", 1000) + b"\x00" * 10)
        time.sleep(0.5)
        assert echoscu(daemon).returncode != 0  # the slot is taken for now...
        _wait_until_serving(daemon, timeout=15)  # ...but not for ever


def test_established_peer_stalling_inside_a_pdu_does_not_hold_a_slot_forever(daemon_factory):
    daemon = daemon_factory(max_associations=1, association_timeout=2, network_timeout=2).start()
    deadline = time.monotonic() + 10
    while True:  # until the one slot is free (the start-up probe's thread may linger briefly)
        sock = socket.create_connection((LOOPBACK, daemon.port), timeout=30)
        sock.sendall(associate_rq_pdu(daemon.ae_title, "STALLER"))
        if read_pdu(sock)[0] == 0x02:  # A-ASSOCIATE-AC
            break
        sock.close()
        assert time.monotonic() < deadline, "the daemon never accepted the association"
        time.sleep(0.2)
    with sock:
        sock.sendall(b"\x04\x00" + struct.pack(">I", 5000) + b"\x00" * 10)
        time.sleep(0.5)
        assert echoscu(daemon).returncode != 0
        _wait_until_serving(daemon, timeout=15)


def test_garbage_after_association_aborts_only_that_association(daemon):
    with socket.create_connection((LOOPBACK, daemon.port), timeout=10) as sock:
        sock.sendall(associate_rq_pdu(daemon.ae_title, "RAWPEER"))
        pdu_type, _ = read_pdu(sock)
        assert pdu_type == 0x02  # A-ASSOCIATE-AC
        # A P-DATA-TF whose PDV item claims more than the PDU holds.
        bogus_pdv = struct.pack(">I", 5000) + b"\x01\x03xxxx"
        sock.sendall(b"\x04\x00" + struct.pack(">I", len(bogus_pdv)) + bogus_pdv)
        sock.settimeout(10)
        try:
            pdu_type, _ = read_pdu(sock)
            assert pdu_type == 0x07  # A-ABORT
        except ConnectionError:
            pass  # closed without an A-ABORT is fine too
    _assert_serving(daemon)


# --- data sets that do not match or cannot be stored ----------------------------------------


def test_dataset_sop_instance_differing_from_command_is_refused_a900(daemon, raw_store):
    ds = ct_dataset()
    command_uid = generate_uid()
    statuses = raw_store(daemon, CTImageStorage, command_uid, encode_dataset(ds), then=ct_dataset())
    assert statuses == [STATUS_DATASET_MISMATCH, 0x0000]
    assert ds.SOPInstanceUID not in indexed_uids(daemon.data_dir)
    assert command_uid not in indexed_uids(daemon.data_dir)
    log = daemon.log()
    assert any(
        "RAWSENDER" in line and command_uid in line and "0xA900" in line
        for line in log.splitlines()
    ), log


def test_dataset_sop_class_differing_from_command_is_refused_a900(daemon, raw_store):
    ds = ct_dataset()
    ds.SOPClassUID = MRImageStorage
    statuses = raw_store(daemon, CTImageStorage, ds.SOPInstanceUID, encode_dataset(ds))
    assert statuses == [STATUS_DATASET_MISMATCH]
    assert indexed_uids(daemon.data_dir) == set()


TRAVERSAL_UIDS = [
    "../../etc/x",
    "1.2.3/../../x",
    "1.2.3/../../../../../../../../tmp/appliance-escape",
    "/tmp/appliance-escape-absolute",
    "1.2.3.4\x00../../x",
]


@pytest.mark.parametrize("uid", TRAVERSAL_UIDS)
def test_path_traversal_uid_is_refused_and_writes_nowhere(daemon, raw_store, tmp_path, uid):
    before = files_under(tmp_path)
    ds = ct_dataset()
    ds.SOPInstanceUID = uid
    statuses = raw_store(daemon, CTImageStorage, uid, encode_dataset(ds), then=ct_dataset())
    assert statuses == [STATUS_CANNOT_UNDERSTAND, 0x0000]

    new_files = files_under(tmp_path) - before
    escaped = [
        p
        for p in new_files
        if not p.is_relative_to(daemon.data_dir) and not p.is_relative_to(tmp_path / "raw")
    ]
    assert escaped == []
    # The archive holds only the one good instance, under a hashed name.
    archived = _archive_files(daemon)
    assert len(archived) == 1
    assert all(p.name.endswith(".dcm") and len(p.stem) == 64 for p in archived)
    assert not Path("/tmp/appliance-escape").exists()
    assert not Path("/tmp/appliance-escape-absolute").exists()
    assert uid not in indexed_uids(daemon.data_dir)


def test_traversal_uid_only_in_the_dataset_is_a_mismatch(daemon, raw_store):
    ds = ct_dataset()
    good_uid = ds.SOPInstanceUID
    ds.SOPInstanceUID = "../../etc/passwd"
    statuses = raw_store(daemon, CTImageStorage, good_uid, encode_dataset(ds))
    assert statuses == [STATUS_DATASET_MISMATCH]
    assert _archive_files(daemon) == set()


def test_garbage_dataset_is_refused_c000_and_the_daemon_keeps_serving(daemon, raw_store):
    ds = ct_dataset()
    garbage = os.urandom(3000)
    statuses = raw_store(daemon, CTImageStorage, ds.SOPInstanceUID, garbage, then=ct_dataset())
    assert statuses == [STATUS_CANNOT_UNDERSTAND, 0x0000]
    assert len(_archive_files(daemon)) == 1
    _assert_serving(daemon)


def test_truncated_dataset_is_refused_not_archived_broken(daemon, raw_store):
    """A data set cut off inside its pixel data must not become an indexed, unreadable file."""
    ds = ct_dataset()
    body = encode_dataset(ds)
    statuses = raw_store(daemon, CTImageStorage, ds.SOPInstanceUID, body[:-1000])
    assert statuses == [STATUS_CANNOT_UNDERSTAND]
    assert ds.SOPInstanceUID not in indexed_uids(daemon.data_dir)
    assert _archive_files(daemon) == set()


def test_well_formed_dataset_via_raw_sending_is_stored(daemon, raw_store):
    """Control for the refusals above: the same path with a good data set stores it."""
    ds = ct_dataset()
    statuses = raw_store(daemon, CTImageStorage, ds.SOPInstanceUID, encode_dataset(ds))
    assert statuses == [0x0000]
    assert read_stored(daemon.data_dir, ds.SOPInstanceUID).PixelData == ds.PixelData
