"""Who may associate, with which presentation contexts, and how many at a time."""

from __future__ import annotations

import socket
import time

import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from appliance.dicom_classes import (
    DICOMSCOPE_SHUTDOWN_SOP_CLASS,
    STORAGE_SOP_CLASSES,
)
from appliance.dicom_classes import VERIFICATION_SOP_CLASS as Verification
from tests.factories import ct_dataset
from tests.peers import LOOPBACK
from tests.scp_helpers import (
    ac_context_results,
    associate_rq_pdu,
    client_ae,
    echoscu,
    index_rows,
    indexed_uids,
    read_pdu,
    read_stored,
)

PRIVATE_STORAGE_CLASS = "1.2.3.4.5.6"


def _associate(daemon, calling="PYCLIENT", called=None, contexts=((Verification, None),)):
    ae = client_ae(calling)
    for abstract, transfer_syntaxes in contexts:
        if transfer_syntaxes is None:
            ae.add_requested_context(abstract)
        else:
            ae.add_requested_context(abstract, transfer_syntaxes)
    return ae.associate(LOOPBACK, daemon.port, ae_title=called or daemon.ae_title)


def _associate_when_free(daemon, calling, timeout=5.0):
    """Associate, retrying while a just-finished association's thread still holds its slot."""
    deadline = time.monotonic() + timeout
    while True:
        assoc = _associate(daemon, calling=calling)
        if assoc.is_established or time.monotonic() > deadline:
            return assoc
        time.sleep(0.2)


def _rejection(assoc):
    assert assoc.is_rejected, "association was not rejected"
    rj = assoc.acceptor.primitive
    return rj.result, rj.result_source, rj.diagnostic


def _still_serving(daemon):
    assert daemon.proc.poll() is None, "daemon exited"
    result = echoscu(daemon)
    assert result.returncode == 0, result.stdout + result.stderr


# --- calling and called AE titles -------------------------------------------------------------


def test_unknown_calling_ae_is_rejected_permanently_when_access_control_is_on(daemon_factory):
    daemon = daemon_factory(accept_unknown_calling_ae=False).start()

    assoc = _associate(daemon, calling="STRANGER")
    # permanent, service user, calling AE title not recognised
    assert _rejection(assoc) == (0x01, 0x01, 0x03)

    result = echoscu(daemon, calling="STRANGER")
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stdout + result.stderr
    assert daemon.proc.poll() is None


def test_configured_node_ae_title_is_accepted_with_access_control_on(daemon_factory):
    daemon = daemon_factory(accept_unknown_calling_ae=False)
    added = daemon.cli(
        "node", "add", "ct1", "--ae-title", "CT_SCANNER", "--host", LOOPBACK, "--port", "104"
    )
    assert added.returncode == 0, added.stderr
    daemon.start()

    result = echoscu(daemon, calling="CT_SCANNER")
    assert result.returncode == 0, result.stdout + result.stderr
    assoc = _associate(daemon, calling="CT_SCANNER")
    assert assoc.is_established
    assoc.release()
    # A node added while the daemon runs is honoured without a restart.
    assert echoscu(daemon, calling="LATE_NODE").returncode != 0
    added = daemon.cli(
        "node", "add", "late", "--ae-title", "LATE_NODE", "--host", LOOPBACK, "--port", "104"
    )
    assert added.returncode == 0, added.stderr
    assert echoscu(daemon, calling="LATE_NODE").returncode == 0


def _add_node(daemon, name, ae_title, *extra):
    added = daemon.cli(
        "node", "add", name, "--ae-title", ae_title, "--host", LOOPBACK, "--port", "104", *extra
    )
    assert added.returncode == 0, added.stderr


def test_access_control_does_not_fail_open_while_config_is_unreadable(daemon_factory):
    daemon = daemon_factory(accept_unknown_calling_ae=False)
    _add_node(daemon, "ct1", "CT_SCANNER")
    daemon.start()
    config = daemon.data_dir / "config.json"
    good = config.read_text()
    config.write_text("{ half-edited")  # an operator's editor, mid-save
    try:
        assert _rejection(_associate(daemon, calling="STRANGER")) == (0x01, 0x01, 0x03)
        assoc = _associate(daemon, calling="CT_SCANNER")
        assert assoc.is_established
        assoc.release()
    finally:
        config.write_text(good)
    assert "configuration unreadable" in daemon.log()


def test_node_permissions_do_not_fail_open_while_config_is_unreadable(daemon_factory):
    daemon = daemon_factory()
    _add_node(daemon, "ct1", "ECHO_ONLY", "--services", "echo")
    daemon.start()
    (daemon.data_dir / "config.json").write_text("[]")
    ds = ct_dataset()
    assoc = _associate(
        daemon,
        calling="ECHO_ONLY",
        contexts=((Verification, None), (CTImageStorage, [ExplicitVRLittleEndian])),
    )
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(ds).Status == 0x0124
    finally:
        assoc.release()
    assert indexed_uids(daemon.data_dir) == set()


def test_unknown_calling_ae_is_accepted_when_access_control_is_off(daemon):
    assoc = _associate(daemon, calling="STRANGER")
    assert assoc.is_established
    assoc.release()


def test_wrong_called_ae_is_rejected_when_checked(daemon_factory):
    daemon = daemon_factory(check_called_ae=True).start()
    assoc = _associate(daemon, called="NOT_US")
    # permanent, service user, called AE title not recognised
    assert _rejection(assoc) == (0x01, 0x01, 0x07)
    assert echoscu(daemon, called="NOT_US").returncode != 0
    assert echoscu(daemon).returncode == 0


def test_wrong_called_ae_is_accepted_when_not_checked(daemon):
    assoc = _associate(daemon, called="NOT_US")
    assert assoc.is_established
    assoc.release()


# --- association limit ----------------------------------------------------------------------


def test_association_over_the_limit_is_rejected_transient(daemon_factory):
    daemon = daemon_factory(max_associations=2).start()
    held = [_associate_when_free(daemon, calling=f"HOLDER{n}") for n in range(2)]
    try:
        assert all(assoc.is_established for assoc in held)
        extra = _associate(daemon, calling="ONE_TOO_MANY")
        # transient, service provider (presentation), local limit exceeded
        assert _rejection(extra) == (0x02, 0x03, 0x02)
        assert echoscu(daemon).returncode != 0
    finally:
        held[0].release()
    # A freed slot can be used again.
    again = _associate_when_free(daemon, calling="NEXT", timeout=10)
    assert again.is_established
    again.release()
    held[1].release()


def test_connections_that_never_associate_do_not_use_up_the_limit(daemon_factory):
    """Port probes and broken peers must not lock real peers out until the ACSE timeout."""
    daemon = daemon_factory(max_associations=2, association_timeout=60).start()
    for _ in range(4):
        socket.create_connection((LOOPBACK, daemon.port), timeout=5).close()
    for payload in (b"\x01\x00\x00\x00\x00\x05hello", b"garbage!" * 4):
        with socket.create_connection((LOOPBACK, daemon.port), timeout=5) as sock:
            sock.sendall(payload)
    # Well under association_timeout: the broken connections must be gone by themselves.
    held = [_associate_when_free(daemon, calling=f"REAL{n}", timeout=5) for n in range(2)]
    try:
        assert all(assoc.is_established for assoc in held), [
            assoc.acceptor.primitive and assoc.acceptor.primitive.diagnostic for assoc in held
        ]
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()


# --- DICOMscope's private shutdown class ----------------------------------------------------


@pytest.mark.parametrize("accept_any", [False, True])
def test_dicomscope_shutdown_class_is_never_accepted(daemon_factory, accept_any):
    daemon = daemon_factory(accept_any_storage_class=accept_any).start()
    assoc = _associate(
        daemon,
        calling="DICOMSCOPE",
        contexts=((DICOMSCOPE_SHUTDOWN_SOP_CLASS, None), (Verification, None)),
    )
    if assoc.is_established:
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
        assert DICOMSCOPE_SHUTDOWN_SOP_CLASS not in accepted
        assert DICOMSCOPE_SHUTDOWN_SOP_CLASS in rejected
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    else:
        assert accept_any, "without accept-any only the context is to be rejected"
        assert assoc.is_rejected
    time.sleep(0.5)
    _still_serving(daemon)


@pytest.mark.parametrize("accept_any", [False, True])
def test_dicomscope_shutdown_class_alone_shuts_nothing_down(daemon_factory, tmp_path, accept_any):
    """The class proposed exactly as DICOMscope's own shutdown request does: alone, raw."""
    daemon = daemon_factory(accept_any_storage_class=accept_any).start()
    with socket.create_connection((LOOPBACK, daemon.port), timeout=10) as sock:
        sock.sendall(
            associate_rq_pdu(
                daemon.ae_title,
                "DICOMSCOPE",
                [(DICOMSCOPE_SHUTDOWN_SOP_CLASS, (ImplicitVRLittleEndian,))],
            )
        )
        pdu_type, body = read_pdu(sock)
    if accept_any:
        assert pdu_type == 0x03  # A-ASSOCIATE-RJ
    else:
        assert pdu_type == 0x02  # A-ASSOCIATE-AC, with the context rejected
        assert ac_context_results(body) == {1: 0x03}  # abstract syntax not supported
    time.sleep(0.5)
    _still_serving(daemon)


# --- storage SOP classes --------------------------------------------------------------------


def _private_instance():
    ds = ct_dataset(patient_id="PRIV01")
    ds.SOPClassUID = PRIVATE_STORAGE_CLASS
    ds.file_meta.MediaStorageSOPClassUID = PRIVATE_STORAGE_CLASS
    return ds


def test_private_storage_class_is_stored_with_accept_any(daemon_factory):
    daemon = daemon_factory(accept_any_storage_class=True).start()
    ds = _private_instance()
    assoc = _associate(daemon, contexts=((PRIVATE_STORAGE_CLASS, [ExplicitVRLittleEndian]),))
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0x0000
    stored = read_stored(daemon.data_dir, ds.SOPInstanceUID)
    assert stored.file_meta.MediaStorageSOPClassUID == PRIVATE_STORAGE_CLASS
    assert stored.SOPClassUID == PRIVATE_STORAGE_CLASS
    [(sop_class,)] = index_rows(daemon.data_dir, "SELECT sop_class_uid FROM instances")
    assert sop_class == PRIVATE_STORAGE_CLASS


def test_private_storage_class_is_rejected_without_accept_any(daemon):
    assoc = _associate(
        daemon,
        contexts=((PRIVATE_STORAGE_CLASS, [ExplicitVRLittleEndian]), (Verification, None)),
    )
    assert assoc.is_established
    assert PRIVATE_STORAGE_CLASS not in {cx.abstract_syntax for cx in assoc.accepted_contexts}
    with pytest.raises(ValueError):
        assoc.send_c_store(_private_instance())
    assoc.release()
    assert indexed_uids(daemon.data_dir) == set()


def test_every_supported_storage_class_can_be_stored(daemon):
    """Negotiating a class and then failing its C-STORE would be worse than rejecting it."""
    ae = client_ae()
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    statuses = {}
    assoc = None
    try:
        for number, sop_class in enumerate(STORAGE_SOP_CLASSES):
            if assoc is None or not assoc.is_established:
                # A failure may cost the association; go on with a new one.
                assoc = ae.associate(LOOPBACK, daemon.port, ae_title=daemon.ae_title)
                assert assoc.is_established
            ds = ct_dataset(patient_id="CLASSES", instance_number=number + 1, rows=8, columns=8)
            ds.SOPClassUID = sop_class
            ds.file_meta.MediaStorageSOPClassUID = sop_class
            statuses[sop_class] = assoc.send_c_store(ds).get("Status")
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
    failed = {uid: status for uid, status in statuses.items() if status != 0x0000}
    assert not failed
    stored = index_rows(daemon.data_dir, "SELECT sop_class_uid FROM instances")
    assert {row[0] for row in stored} == set(STORAGE_SOP_CLASSES)


# --- transfer syntax negotiation ------------------------------------------------------------


# Private classes are only negotiated with accept-any.
NEGOTIATION_CASES = [
    (False, CTImageStorage),
    (True, CTImageStorage),
    (True, PRIVATE_STORAGE_CLASS),
]


@pytest.mark.parametrize(("accept_any", "sop_class"), NEGOTIATION_CASES)
def test_our_transfer_syntax_order_wins(daemon_factory, accept_any, sop_class):
    daemon = daemon_factory(
        accept_any_storage_class=accept_any,
        transfer_syntaxes=f"{ExplicitVRBigEndian},{ExplicitVRLittleEndian},{JPEGBaseline8Bit}",
    ).start()
    assoc = _associate(
        daemon,
        contexts=((sop_class, [JPEGBaseline8Bit, ExplicitVRLittleEndian, ExplicitVRBigEndian]),),
    )
    assert assoc.is_established
    [context] = assoc.accepted_contexts
    assoc.release()
    assert context.transfer_syntax == [ExplicitVRBigEndian]


@pytest.mark.parametrize(("accept_any", "sop_class"), NEGOTIATION_CASES)
def test_transfer_syntax_we_do_not_accept_is_rejected(daemon_factory, accept_any, sop_class):
    daemon = daemon_factory(
        accept_any_storage_class=accept_any, transfer_syntaxes=ExplicitVRLittleEndian
    ).start()
    assoc = _associate(
        daemon,
        contexts=(
            (sop_class, [ImplicitVRLittleEndian, JPEGBaseline8Bit]),
            (Verification, [ExplicitVRLittleEndian]),
        ),
    )
    assert assoc.is_established
    rejected = {cx.abstract_syntax: cx.result for cx in assoc.rejected_contexts}
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    assoc.release()
    assert accepted == {Verification}
    # 0x04: transfer syntaxes not supported
    assert rejected == {sop_class: 0x04}
