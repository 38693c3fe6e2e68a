from tests.peers import LOOPBACK, dcmtk, run


def test_dcmtk_echoscu_gets_success_from_the_daemon(daemon):
    result = run([dcmtk("echoscu"), "-aec", daemon.ae_title, LOOPBACK, str(daemon.port)])
    assert result.returncode == 0, result.stderr
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
