import time

from tests.peers import LOOPBACK, dcmtk, run


def test_dcmtk_echoscu_gets_success_from_the_daemon(daemon):
    result = run([dcmtk("echoscu"), "-aec", daemon.ae_title, LOOPBACK, str(daemon.port)])
    assert result.returncode == 0, result.stderr
    # echoscu is done once the release is sent; the daemon logs it a moment later.
    deadline = time.monotonic() + 10
    while "released" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "released" in daemon.log()


def test_dcmtk_storescu_stores_into_the_index(daemon, tmp_path):
    from tests.factories import write_ct_series

    paths = write_ct_series(tmp_path / "in", 3)
    result = run(
        [dcmtk("storescu"), "-aec", daemon.ae_title, LOOPBACK, str(daemon.port), *map(str, paths)]
    )
    assert result.returncode == 0, result.stderr
    listing = daemon.cli("node", "list")
    assert listing.returncode == 0
    import sqlite3

    with sqlite3.connect(daemon.data_dir / "index.sqlite") as db:
        assert db.execute("select count(*) from instances").fetchone()[0] == 3


def test_association_carries_our_implementation_class_uid_and_default_max_pdu(daemon):
    from pynetdicom import AE

    from appliance import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

    ae = AE(ae_title="PROBE")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(LOOPBACK, daemon.port, ae_title=daemon.ae_title)
    try:
        assert assoc.is_established
        assert assoc.acceptor.implementation_class_uid == IMPLEMENTATION_CLASS_UID
        assert assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
        # The reference statements announce 16384 (DICOMscope DS-01); it is our default too.
        assert assoc.acceptor.maximum_length == 16384
    finally:
        assoc.release()
