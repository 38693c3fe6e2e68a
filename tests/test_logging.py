"""What the daemon's log says about associations and failures: enough to find the peer."""

from __future__ import annotations

import re
import time

from appliance.dicom_classes import VERIFICATION_SOP_CLASS
from tests.factories import write_ct_series
from tests.peers import LOOPBACK, disk_free_mb
from tests.scp_helpers import client_ae, echoscu, sop_instance_uid_of, storescu

ADDRESS = re.compile(r"127\.0\.0\.1:\d+")


def _lines_with(log: str, text: str) -> list[str]:
    return [line for line in log.splitlines() if text in line]


def _settled_log(daemon, *calling_ae_titles: str) -> str:
    """The daemon's log once each peer's association-closed line is in it: a DICOM tool exits
    as soon as it has sent its release or abort, and the daemon logs the close a moment later."""
    deadline = time.monotonic() + 10
    while True:
        log = daemon.log()
        closed = [
            any(word in line for line in _lines_with(log, ae) for word in ("released", "aborted"))
            for ae in calling_ae_titles
        ]
        if all(closed) or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


def test_one_line_per_released_association_with_peer_and_address(daemon, tmp_path):
    assert echoscu(daemon, calling="ECHOLOG").returncode == 0
    paths = write_ct_series(tmp_path / "in", 2)
    assert storescu(daemon, paths, calling="STORELOG").returncode == 0

    log = _settled_log(daemon, "ECHOLOG", "STORELOG")
    [echo_line] = _lines_with(log, "ECHOLOG")
    assert ADDRESS.search(echo_line) and "released" in echo_line
    [store_line] = _lines_with(log, "STORELOG")
    assert ADDRESS.search(store_line) and "released" in store_line
    assert "2 stored, 0 failed" in store_line


def test_aborted_association_is_logged_once(daemon):
    ae = client_ae("ABORTLOG")
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    assoc = ae.associate(LOOPBACK, daemon.port, ae_title=daemon.ae_title)
    assert assoc.is_established
    assoc.abort()
    assert echoscu(daemon).returncode == 0  # by now the abort has been handled

    [line] = _lines_with(_settled_log(daemon, "ABORTLOG"), "ABORTLOG")
    assert ADDRESS.search(line) and "aborted" in line


def test_one_line_per_rejected_association_with_peer_address_and_reason(daemon_factory):
    daemon = daemon_factory(accept_unknown_calling_ae=False).start()
    assert echoscu(daemon, calling="REJECTLOG").returncode != 0

    [line] = _lines_with(daemon.log(), "REJECTLOG")
    assert ADDRESS.search(line) and "rejected" in line
    assert "not known" in line


def test_every_failed_store_is_logged_with_peer_instance_and_status(daemon_factory, tmp_path):
    daemon = daemon_factory(disk_reserve_mb=disk_free_mb(tmp_path) + 100_000).start()
    paths = write_ct_series(tmp_path / "in", 3)
    storescu(daemon, paths, "-nh", calling="FAILLOG")

    log = _settled_log(daemon, "FAILLOG")
    failures = [line for line in _lines_with(log, "FAILLOG") if "0xA700" in line]
    assert len(failures) == 3, log
    for path, line in zip(paths, failures, strict=True):
        assert ADDRESS.search(line)
        assert sop_instance_uid_of(path) in line
    [summary] = [line for line in _lines_with(log, "FAILLOG") if "released" in line]
    assert "0 stored, 3 failed" in summary


def test_association_rejected_by_the_protocol_layer_is_logged_once(daemon_factory):
    daemon = daemon_factory(check_called_ae=True).start()
    assert echoscu(daemon, calling="CALLEDLOG", called="NOT_US").returncode != 0

    [line] = _lines_with(daemon.log(), "CALLEDLOG")
    assert ADDRESS.search(line) and "rejected" in line
