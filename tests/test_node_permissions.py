"""A configured node may use only the services listed for it."""

from __future__ import annotations

from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from tests.factories import ct_dataset


def _associate(daemon, calling_ae: str):
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", daemon.port, ae_title=daemon.ae_title)
    assert assoc.is_established
    return assoc


def test_a_node_without_store_permission_gets_not_authorized_and_nothing_is_stored(
    daemon_factory,
):
    daemon = daemon_factory()
    added = daemon.cli(
        "node",
        "add",
        "scanner",
        "--ae-title",
        "CT01",
        "--host",
        "127.0.0.1",
        "--port",
        "104",
        "--services",
        "echo",
    )
    assert added.returncode == 0, added.stderr
    daemon.start()
    assoc = _associate(daemon, "CT01")
    try:
        assert assoc.send_c_echo().Status == 0x0000
        status = assoc.send_c_store(ct_dataset())
        assert status.Status == 0x0124
    finally:
        assoc.release()
    assert not list((daemon.data_dir / "archive").rglob("*.dcm"))
    assert "not allowed to use store" in daemon.log()


def test_a_node_without_echo_permission_is_refused_echo_but_may_store(daemon_factory):
    daemon = daemon_factory()
    added = daemon.cli(
        "node",
        "add",
        "pacs",
        "--ae-title",
        "PACS1",
        "--host",
        "127.0.0.1",
        "--port",
        "104",
        "--services",
        "store,find",
    )
    assert added.returncode == 0, added.stderr
    daemon.start()
    assoc = _associate(daemon, "PACS1")
    try:
        assert assoc.send_c_echo().Status == 0x0124
        assert assoc.send_c_store(ct_dataset()).Status == 0x0000
    finally:
        assoc.release()


def test_an_unknown_peer_let_in_by_the_policy_may_use_every_service(daemon):
    assoc = _associate(daemon, "STRANGER")
    try:
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(ct_dataset()).Status == 0x0000
    finally:
        assoc.release()
