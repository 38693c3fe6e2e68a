"""Storage Commitment Push Model, both ways: Orthanc and small pynetdicom peers against us."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from appliance import commitment
from appliance.archive import Archive, relative_path_for
from tests.factories import ct_dataset
from tests.peers import LOOPBACK, Daemon, Orthanc, free_port

SOP_INSTANCE = "1.2.840.10008.1.20.1.1"
EXIT_OK, EXIT_FAILED = 0, 1


# --- helpers ---------------------------------------------------------------------------------


def wait_for(condition: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or condition}")


def add_node(daemon: Daemon, name: str, ae_title: str, port: int, services: str = "") -> None:
    args = ["node", "add", name, "--ae-title", ae_title, "--host", LOOPBACK, "--port", str(port)]
    if services:
        args += ["--services", services]
    result = daemon.cli(*args)
    assert result.returncode == 0, result.stderr


def store(daemon: Daemon, *datasets: Dataset, calling_ae: str = "MODALITY") -> None:
    ae = AE(calling_ae)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(LOOPBACK, daemon.port, ae_title=daemon.ae_title)
    assert assoc.is_established
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()


def write_files(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        path = folder / f"ct{number}.dcm"
        ct_dataset(instance_number=number + 1).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def reference(sop_instance: str, sop_class: str = CTImageStorage) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def action_info(transaction_uid: str, *items: Dataset) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = list(items)
    return ds


def incoming_records(daemon: Daemon) -> list[dict]:
    result = daemon.cli("commitment", "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["incoming"]


def outgoing_records(daemon: Daemon) -> list[dict]:
    result = daemon.cli("commitment", "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["outgoing"]


class Requester:
    """A modality asking us for commitment, on its own pynetdicom association."""

    def __init__(self, daemon: Daemon, ae_title: str = "MODALITY") -> None:
        self.reports: list[tuple[int, Dataset]] = []
        self.got_report = threading.Event()
        ae = AE(ae_title)
        ae.add_requested_context(StorageCommitmentPushModel)
        self.assoc = ae.associate(
            LOOPBACK,
            daemon.port,
            ae_title=daemon.ae_title,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)],
        )
        assert self.assoc.is_established

    def _on_report(self, event: evt.Event) -> tuple[int, None]:
        self.reports.append((event.request.EventTypeID, event.event_information))
        self.got_report.set()
        return 0x0000, None

    def request(self, info: Dataset, *, action_type: int = 1, instance: str = SOP_INSTANCE):
        # Keep our response from pynetdicom's reactor (see commitment._ResponseKeeper).
        with commitment._ResponseKeeper.on(self.assoc).waiting():
            status, _reply = self.assoc.send_n_action(
                info, action_type, StorageCommitmentPushModel, instance
            )
        return status

    def release(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


class CommitmentScp:
    """A small Storage Commitment SCP that reports on the requester's association (Orthanc
    only reports on a new one), or never reports."""

    def __init__(self, ae_title: str = "STUBSCP", *, report: bool = True) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.requests: list[Dataset] = []
        self.report = report
        ae = AE(ae_title)
        ae.add_supported_context(StorageCommitmentPushModel)
        self.server = ae.start_server(
            (LOOPBACK, self.port),
            block=False,
            evt_handlers=[(evt.EVT_N_ACTION, self._on_action)],
        )

    def _on_action(self, event: evt.Event) -> tuple[int, None]:
        info = event.action_information
        self.requests.append(info)
        if self.report:
            threading.Thread(target=self._report, args=(event.assoc, info), daemon=True).start()
        return 0x0000, None

    @staticmethod
    def _report(assoc, info: Dataset) -> None:
        time.sleep(0.3)  # after our N-ACTION response has gone out
        report = Dataset()
        report.TransactionUID = info.TransactionUID
        report.ReferencedSOPSequence = list(info.ReferencedSOPSequence)
        if assoc.is_established:
            assoc.send_n_event_report(report, 1, StorageCommitmentPushModel, SOP_INSTANCE)

    def stop(self) -> None:
        self.server.shutdown()


class ReportReceiver:
    """A requester's own SCP, where a report on a new association arrives."""

    def __init__(self, ae_title: str, port: int) -> None:
        self.reports: list[tuple[str, int, Dataset]] = []
        self.roles: list[tuple[str, bool | None, bool | None]] = []
        self.got_report = threading.Event()
        ae = AE(ae_title)
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self.server = ae.start_server(
            (LOOPBACK, port),
            block=False,
            evt_handlers=[
                (evt.EVT_N_EVENT_REPORT, self._on_report),
                (evt.EVT_REQUESTED, self._on_requested),
            ],
        )

    def _on_requested(self, event: evt.Event) -> None:
        for item in event.assoc.requestor.primitive.user_information:
            if hasattr(item, "scp_role"):
                self.roles.append((str(item.sop_class_uid), item.scu_role, item.scp_role))

    def _on_report(self, event: evt.Event) -> tuple[int, None]:
        calling = event.assoc.requestor.ae_title.strip()
        self.reports.append((calling, event.request.EventTypeID, event.event_information))
        self.got_report.set()
        return 0x0000, None

    def stop(self) -> None:
        self.server.shutdown()


def failed_reasons(info: Dataset) -> dict[str, int]:
    return {
        str(item.ReferencedSOPInstanceUID): int(item.FailureReason)
        for item in info.get("FailedSOPSequence") or []
    }


def committed_uids(info: Dataset) -> set[str]:
    return {str(item.ReferencedSOPInstanceUID) for item in info.get("ReferencedSOPSequence") or []}


# --- Orthanc, with the daemon known to it as a modality --------------------------------------


@pytest.fixture
def daemon_and_orthanc(daemon_factory, tmp_path: Path) -> Iterator[tuple[Daemon, Orthanc]]:
    daemon = daemon_factory(commitment_timeout=30)
    port = free_port()
    orthanc = Orthanc(
        tmp_path / "orthanc",
        DicomModalities={"appliance": {"AET": daemon.ae_title, "Host": LOOPBACK, "Port": port}},
    )
    try:
        add_node(daemon, "orthanc", orthanc.ae_title, orthanc.dicom_port)
        daemon.start(port)
        yield daemon, orthanc
    finally:
        orthanc.stop()


def orthanc_asks(orthanc: Orthanc, *instances: tuple[str, str]) -> dict:
    body = {"DicomInstances": [{"SOPClassUID": c, "SOPInstanceUID": i} for c, i in instances]}
    answer = orthanc.rest(
        "/modalities/appliance/storage-commitment", json.dumps(body).encode(), "POST"
    )
    return answer  # type: ignore[return-value]


def orthanc_report(orthanc: Orthanc, transaction_uid: str) -> dict:
    def done() -> dict | None:
        report = orthanc.rest(f"/storage-commitment/{transaction_uid}")
        return None if report["Status"] == "Pending" else report  # type: ignore[index]

    return wait_for(done, what="Orthanc's storage commitment report")  # type: ignore[return-value]


def test_orthanc_asks_us_and_its_report_shows_success_and_0112(daemon_and_orthanc):
    daemon, orthanc = daemon_and_orthanc
    kept = [ct_dataset(instance_number=n) for n in (1, 2)]
    store(daemon, *kept, calling_ae="ORTHANC")
    ours = [(CTImageStorage, str(ds.SOPInstanceUID)) for ds in kept]

    answer = orthanc_asks(orthanc, *ours)
    report = orthanc_report(orthanc, answer["ID"])
    assert report["Status"] == "Success"
    assert {item["SOPInstanceUID"] for item in report["Success"]} == {uid for _, uid in ours}
    assert report["Failures"] == []

    missing = generate_uid()
    answer = orthanc_asks(orthanc, *ours, (CTImageStorage, missing))
    report = orthanc_report(orthanc, answer["ID"])
    assert report["Status"] == "Failure"
    assert {item["SOPInstanceUID"] for item in report["Success"]} == {uid for _, uid in ours}
    [failure] = report["Failures"]
    assert failure["SOPInstanceUID"] == missing
    assert failure["FailureReason"] == 0x0112

    # Orthanc found its reports by Transaction UID: ours echoed the request's.
    records = {r["transaction_uid"]: r for r in incoming_records(daemon)}
    record = records[answer["ID"]]
    assert record["requester_ae"] == "ORTHANC"
    assert record["state"] == "delivered"
    # Orthanc releases right after the N-ACTION response: the report needs a new association.
    assert record["delivered_via"] == "new association"


def test_we_ask_orthanc_and_its_report_reaches_the_daemon(daemon_and_orthanc, tmp_path: Path):
    daemon, orthanc = daemon_and_orthanc
    files = write_files(tmp_path / "send", 3)

    result = daemon.cli("send", "orthanc", *map(str, files), "--commit", "--json", "--wait")
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    job = json.loads(result.stdout)
    assert job["state"] == "succeeded" and job["counts"]["success"] == 3
    assert all(i["committed"] is True for i in job["instances"])
    # Orthanc reports on a new association, to the daemon, which matched it by Transaction UID.
    (request,) = outgoing_records(daemon)
    assert request["report_via"] == "new association"
    assert request["reported_by"] == "ORTHANC"
    assert "matches no request" not in daemon.log()

    # An instance Orthanc never received: 0112.
    unsent = write_files(tmp_path / "unsent", 1)
    result = daemon.cli("commit", "orthanc", *map(str, unsent + files[:1]))
    assert result.returncode == EXIT_FAILED, result.stdout + result.stderr
    assert "failed: 1 committed, 1 failed, 0 uncommitted" in result.stdout
    assert "no such object instance (0x0112)" in result.stdout


def test_send_commit_text_output(daemon_and_orthanc, tmp_path: Path):
    daemon, _orthanc = daemon_and_orthanc
    files = write_files(tmp_path / "send", 2)
    result = daemon.cli("send", "orthanc", *map(str, files), "--commit", "--wait")
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("job 1 succeeded: 2 success, 0 warning, 0 failed")
    assert any(line.startswith("log: asking orthanc to commit 2 instance(s)") for line in lines)
    assert sum(line.startswith("success") for line in lines) == 2


# --- the same association --------------------------------------------------------------------


def test_a_requester_that_stays_gets_the_report_on_its_association(daemon_factory):
    daemon = daemon_factory().start()
    present, corrupted, other_class = (ct_dataset(instance_number=n) for n in (1, 2, 3))
    store(daemon, present, corrupted, other_class)
    # One byte of pixel data changed on disk: the checksum recorded at store time catches it.
    path = daemon.data_dir / "archive" / relative_path_for(str(corrupted.SOPInstanceUID))
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    missing = generate_uid()

    requester = Requester(daemon)
    try:
        transaction_uid = generate_uid()
        status = requester.request(
            action_info(
                transaction_uid,
                reference(str(present.SOPInstanceUID)),
                reference(str(corrupted.SOPInstanceUID)),
                reference(str(other_class.SOPInstanceUID), MRImageStorage),
                reference(missing),
            )
        )
        assert status.Status == 0x0000
        assert requester.got_report.wait(30)
    finally:
        requester.release()

    [(event_type, info)] = requester.reports
    assert event_type == 2
    assert info.TransactionUID == transaction_uid
    assert committed_uids(info) == {str(present.SOPInstanceUID)}
    assert failed_reasons(info) == {
        str(corrupted.SOPInstanceUID): 0x0110,
        str(other_class.SOPInstanceUID): 0x0119,
        missing: 0x0112,
    }
    [record] = incoming_records(daemon)
    assert record["delivered_via"] == "same association"


def test_all_committed_is_event_type_1(daemon_factory):
    daemon = daemon_factory().start()
    datasets = [ct_dataset(instance_number=n) for n in (1, 2)]
    store(daemon, *datasets)
    requester = Requester(daemon)
    try:
        transaction_uid = generate_uid()
        items = [reference(str(ds.SOPInstanceUID)) for ds in datasets]
        assert requester.request(action_info(transaction_uid, *items)).Status == 0x0000
        assert requester.got_report.wait(30)
    finally:
        requester.release()
    [(event_type, info)] = requester.reports
    assert event_type == 1
    assert info.TransactionUID == transaction_uid
    assert committed_uids(info) == {str(ds.SOPInstanceUID) for ds in datasets}
    assert "FailedSOPSequence" not in info


def test_requests_we_cannot_serve_are_refused(daemon_factory):
    daemon = daemon_factory()
    add_node(daemon, "scanner", "CT01", 104, services="echo,store")
    daemon.start()
    ok = action_info(generate_uid(), reference(generate_uid()))

    requester = Requester(daemon, "CT01")
    try:
        assert requester.request(ok).Status == 0x0124  # not authorized for commitment
    finally:
        requester.release()

    requester = Requester(daemon)
    try:
        assert requester.request(ok, action_type=2).Status == 0x0123
        assert requester.request(ok, instance="1.2.3.4").Status == 0x0112
        no_uid = Dataset()
        no_uid.ReferencedSOPSequence = [reference(generate_uid())]
        assert requester.request(no_uid).Status == 0x0115
        assert requester.request(action_info(generate_uid())).Status == 0x0115
    finally:
        requester.release()
    assert incoming_records(daemon) == []


def test_we_ask_a_node_that_reports_on_our_association(daemon_factory, tmp_path: Path):
    daemon = daemon_factory()  # not started: the report must come on our association
    scp = CommitmentScp()
    try:
        add_node(daemon, "stub", scp.ae_title, scp.port)
        files = write_files(tmp_path / "files", 2)
        result = daemon.cli("commit", "stub", *map(str, files), "--json")
        assert result.returncode == EXIT_OK, result.stdout + result.stderr
        output = json.loads(result.stdout)
    finally:
        scp.stop()
    assert output["status"] == "committed"
    assert output["report_via"] == "same association"
    [request] = scp.requests
    assert request.TransactionUID == output["transaction_uid"]
    assert len(request.ReferencedSOPSequence) == 2


def test_commit_a_study_from_our_archive(daemon_factory):
    daemon = daemon_factory().start()
    study_uid = generate_uid()
    datasets = [ct_dataset(study_uid=study_uid, instance_number=n) for n in (1, 2)]
    store(daemon, *datasets, ct_dataset())  # and one of another study
    scp = CommitmentScp()
    try:
        add_node(daemon, "stub", scp.ae_title, scp.port)
        result = daemon.cli("commit", "stub", "--study", study_uid, "--json")
    finally:
        scp.stop()
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    output = json.loads(result.stdout)
    assert output["status"] == "committed"
    assert {i["sop_instance_uid"] for i in output["instances"]} == {
        str(ds.SOPInstanceUID) for ds in datasets
    }
    unknown = daemon.cli("commit", "stub", "--study", generate_uid())
    assert unknown.returncode == EXIT_FAILED
    assert "not in the archive" in unknown.stderr


def test_no_report_in_time_shows_uncommitted(daemon_factory, tmp_path: Path):
    daemon = daemon_factory(commitment_timeout=2)
    scp = CommitmentScp(report=False)
    try:
        add_node(daemon, "silent", scp.ae_title, scp.port)
        files = write_files(tmp_path / "files", 2)
        started = time.monotonic()
        result = daemon.cli("commit", "silent", *map(str, files))
        assert time.monotonic() - started < 20
    finally:
        scp.stop()
    assert result.returncode == EXIT_FAILED
    assert "uncommitted: 0 committed, 0 failed, 2 uncommitted (no report within 2 s)" in (
        result.stdout
    )
    [record] = outgoing_records(daemon)
    assert record["status"] == "uncommitted"
    assert {i["outcome"] for i in record["instances"]} == {"uncommitted"}
    listing = daemon.cli("commitment", "list")
    assert "uncommitted" in listing.stdout


def test_a_node_that_cannot_be_reached_is_reported_refused(daemon_factory, tmp_path: Path):
    daemon = daemon_factory()
    add_node(daemon, "nowhere", "NOWHERE", free_port())
    result = daemon.cli("commit", "nowhere", *map(str, write_files(tmp_path / "f", 1)))
    assert result.returncode == EXIT_FAILED
    assert "refused" in result.stdout and "cannot connect" in result.stdout


# --- reports survive a restart ---------------------------------------------------------------


def test_a_pending_report_survives_sigkill_and_is_sent_at_start(daemon_factory):
    daemon = daemon_factory()
    requester_port = free_port()  # nothing listens there yet
    add_node(daemon, "modality", "MODALITY", requester_port)
    daemon.start()
    kept = ct_dataset()
    store(daemon, kept)

    requester = Requester(daemon)
    transaction_uid = generate_uid()
    status = requester.request(action_info(transaction_uid, reference(str(kept.SOPInstanceUID))))
    assert status.Status == 0x0000
    requester.release()  # gone: the report needs a new association, which is refused

    wait_for(
        lambda: any(r["attempts"] >= 1 for r in incoming_records(daemon)),
        what="a failed report attempt",
    )
    daemon.kill()
    [record] = incoming_records(daemon)
    assert record["state"] == "queued"
    assert record["transaction_uid"] == transaction_uid

    receiver = ReportReceiver("MODALITY", requester_port)
    try:
        daemon.start(daemon.port)
        assert receiver.got_report.wait(30), daemon.log()
    finally:
        receiver.stop()
    [(calling, event_type, info)] = receiver.reports
    assert calling == daemon.ae_title
    assert event_type == 1
    assert info.TransactionUID == transaction_uid
    assert committed_uids(info) == {str(kept.SOPInstanceUID)}
    # We opened that association as the SCP of Storage Commitment (PS3.4 J.3.3).
    assert ("1.2.840.10008.1.20.1", False, True) in receiver.roles
    wait_for(lambda: incoming_records(daemon)[0]["state"] == "delivered", what="delivered")


def test_a_request_recorded_but_not_checked_is_checked_and_reported_at_start(daemon_factory):
    daemon = daemon_factory()
    requester_port = free_port()
    add_node(daemon, "modality", "MODALITY", requester_port)
    # As a daemon killed between its N-ACTION response and the archive check leaves it.
    transaction_uid = generate_uid()
    missing = generate_uid()
    commitments = commitment.CommitmentStore(daemon.data_dir)
    commitments.add_incoming(
        commitment.IncomingRequest(
            transaction_uid,
            "MODALITY",
            f"{LOOPBACK}:1234",
            time.time(),
            [(CTImageStorage, missing)],
        )
    )
    commitments.close()

    receiver = ReportReceiver("MODALITY", requester_port)
    try:
        daemon.start()
        assert receiver.got_report.wait(30), daemon.log()
    finally:
        receiver.stop()
    [(_calling, event_type, info)] = receiver.reports
    assert event_type == 2
    assert info.TransactionUID == transaction_uid
    assert failed_reasons(info) == {missing: 0x0112}


def test_a_report_for_no_request_of_ours_is_answered_and_logged(daemon):
    ae = AE("PACS")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(LOOPBACK, daemon.port, ae_title=daemon.ae_title)
    assert assoc.is_established
    try:
        report = Dataset()
        report.TransactionUID = generate_uid()
        report.ReferencedSOPSequence = [reference(generate_uid())]
        with commitment._ResponseKeeper.on(assoc).waiting():
            status, _ = assoc.send_n_event_report(
                report, 1, StorageCommitmentPushModel, SOP_INSTANCE
            )
    finally:
        assoc.release()
    assert status.Status == 0x0000
    assert "matches no request of ours" in daemon.log()


# --- the archive check -----------------------------------------------------------------------


def _stored(archive: Archive, ds: Dataset) -> None:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    archive.store_encoded(
        buffer.getvalue(),
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
    )


def test_check_instance(tmp_path: Path):
    archive = Archive(tmp_path)
    try:
        intact, changed, unhashed, truncated = (ct_dataset(instance_number=n) for n in range(4))
        for ds in (intact, changed, unhashed, truncated):
            _stored(archive, ds)
        check = commitment.check_instance
        assert check(archive, CTImageStorage, str(intact.SOPInstanceUID)) is None
        assert check(archive, CTImageStorage, generate_uid()) == 0x0112
        assert check(archive, MRImageStorage, str(intact.SOPInstanceUID)) == 0x0119

        path = archive.instance(str(changed.SOPInstanceUID)).path
        data = bytearray(path.read_bytes())
        data[200] ^= 0x01
        path.write_bytes(bytes(data))
        assert check(archive, CTImageStorage, str(changed.SOPInstanceUID)) == 0x0110

        # Indexed by recovery, no checksum: the file must parse as the instance.
        for ds in (unhashed, truncated):
            archive._db.execute(
                "UPDATE instances SET content_hash=NULL WHERE sop_instance_uid=?",
                (str(ds.SOPInstanceUID),),
            )
        assert check(archive, CTImageStorage, str(unhashed.SOPInstanceUID)) is None
        path = archive.instance(str(truncated.SOPInstanceUID)).path
        path.write_bytes(path.read_bytes()[:-100])
        assert check(archive, CTImageStorage, str(truncated.SOPInstanceUID)) == 0x0110
        path.unlink()
        assert check(archive, CTImageStorage, str(truncated.SOPInstanceUID)) == 0x0110
    finally:
        archive.close()
