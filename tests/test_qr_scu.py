"""`dicom-appliance query` and `retrieve` (Query/Retrieve SCU) against real peers on loopback:
Orthanc, DCMTK dcmqrscp, and small pynetdicom SCPs where a status must be forced."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from appliance import qr_scu
from appliance.archive import Archive
from appliance.dicom_classes import EXPLICIT_VR_LE, JPEG_2000_LOSSLESS
from tests.factories import ct_dataset
from tests.peers import (
    LOOPBACK,
    Daemon,
    Orthanc,
    appliance_cmd,
    dcmtk,
    free_port,
    run,
    wait_for_port,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# "Yamada^Tarou=山田^太郎=やまだ^たろう" in ISO 2022 IR 87 (PS3.5 H.3.1), as the scanner writes it.
JAPANESE_NAME = (
    "Yamada^Tarou=\033$B;3ED\033(B^\033$BB@O:\033(B=\033$B$d$^$@\033(B^\033$B$?$m$&\033(B"
)


# --- data ------------------------------------------------------------------------------------


@dataclass
class Study:
    uid: str
    patient_id: str
    patient_name: str
    series: dict[str, list[str]] = field(default_factory=dict)  # series UID -> SOP Instance UIDs
    files: list[Path] = field(default_factory=list)

    @property
    def instances(self) -> list[str]:
        return [uid for uids in self.series.values() for uid in uids]


def make_study(
    folder: Path,
    *,
    patient_id: str,
    patient_name: str,
    study_date: str,
    series_sizes: tuple[int, ...],
    charset: str | None = None,
    description: str = "CT CHEST",
) -> Study:
    folder.mkdir(parents=True, exist_ok=True)
    study = Study(generate_uid(), patient_id, patient_name)
    for series_number, size in enumerate(series_sizes, start=1):
        series_uid = generate_uid()
        study.series[series_uid] = []
        for number in range(1, size + 1):
            ds = ct_dataset(
                patient_id=patient_id,
                patient_name=patient_name,
                study_uid=study.uid,
                series_uid=series_uid,
                instance_number=number,
                rows=16,
                columns=16,
                charset=charset,
            )
            ds.StudyDate = study_date
            ds.StudyDescription = description
            ds.SeriesNumber = series_number
            path = folder / f"s{series_number}-{number}.dcm"
            ds.save_as(path, enforce_file_format=True)
            study.series[series_uid].append(str(ds.SOPInstanceUID))
            study.files.append(path)
    return study


@dataclass
class PacsData:
    doe: Study
    mueller: Study


def load_into_orthanc(orthanc: Orthanc, *studies: Study) -> None:
    for study in studies:
        for path in study.files:
            orthanc.rest("/instances", path.read_bytes(), method="POST")


def archived(data_dir: Path, uids: list[str]) -> set[str]:
    """Which of ``uids`` the archive in ``data_dir`` has, with a readable file."""
    archive = Archive(data_dir)
    try:
        found = set()
        for uid in uids:
            record = archive.instance(uid)
            if record is not None and record.path.is_file():
                found.add(uid)
        return found
    finally:
        archive.close()


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return run(appliance_cmd(*args, "--data-dir", str(data_dir)))


def add_node(data_dir: Path, name: str, ae_title: str, port: int, *extra: str) -> None:
    result = cli(
        data_dir, "node", "add", name, "--ae-title", ae_title, "--host", LOOPBACK,
        "--port", str(port), *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


# --- Orthanc with our daemon as a known modality (shared by the module) ------------------------


@pytest.fixture(scope="module")
def pacs_data(tmp_path_factory: pytest.TempPathFactory) -> PacsData:
    folder = tmp_path_factory.mktemp("pacs-data")
    doe = make_study(
        folder / "doe", patient_id="QR-P1", patient_name="DOE^JOHN", study_date="20240115",
        series_sizes=(3,),
    )  # fmt: skip
    mueller = make_study(
        folder / "mueller", patient_id="QR-P2", patient_name="MÜLLER^HANS",
        study_date="20240220", series_sizes=(2, 1), charset="ISO_IR 100",
        description="CT ABDOMEN",
    )  # fmt: skip
    return PacsData(doe, mueller)


@pytest.fixture(scope="module")
def move_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """Our daemon, the C-MOVE destination; its data folder is also the CLI's."""
    daemon = Daemon(tmp_path_factory.mktemp("appliance") / "data")
    daemon.data_dir.mkdir()
    daemon.configure(disk_reserve_mb=1)
    daemon.start()
    yield daemon
    daemon.kill()


@pytest.fixture(scope="module")
def pacs(
    tmp_path_factory: pytest.TempPathFactory, pacs_data: PacsData, move_daemon: Daemon
) -> Iterator[Orthanc]:
    server = Orthanc(
        tmp_path_factory.mktemp("orthanc"),
        DicomModalities={"appliance": ["APPLIANCE", LOOPBACK, move_daemon.port]},
    )
    load_into_orthanc(server, pacs_data.doe, pacs_data.mueller)
    add_node(move_daemon.data_dir, "pacs", "ORTHANC", server.dicom_port)
    yield server
    server.stop()


def query(daemon: Daemon, *args: str) -> subprocess.CompletedProcess:
    return cli(daemon.data_dir, "query", "pacs", *args)


def query_json(daemon: Daemon, *args: str) -> list[dict]:
    result = query(daemon, *args, "--json")
    assert result.returncode == EXIT_OK, result.stderr
    return json.loads(result.stdout)


# --- query against Orthanc ---------------------------------------------------------------------


def test_bare_study_query_prints_a_table_with_the_default_columns(pacs, pacs_data, move_daemon):
    result = query(move_daemon)
    assert result.returncode == EXIT_OK, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == list(qr_scu.DEFAULT_KEYS["study"])
    rows = [line for line in lines[1:-1] if line.strip()]
    assert len(rows) == 2
    doe = next(row for row in rows if pacs_data.doe.uid in row)
    assert "DOE^JOHN" in doe and "QR-P1" in doe and "20240115" in doe and "CT CHEST" in doe
    # Number of Study Related Instances, computed by Orthanc
    assert doe.split()[-2] == "3"
    assert lines[-1].startswith("query pacs (ORTHANC@") and "2 matches" in lines[-1]


def test_wildcard_and_date_range_match(pacs, pacs_data, move_daemon):
    assert [r["StudyInstanceUID"] for r in query_json(move_daemon, "-k", "PatientName=DO?^J*")] == [
        pacs_data.doe.uid
    ]
    ranged = query_json(move_daemon, "--key", "StudyDate=20240201-20240229")
    assert [r["StudyInstanceUID"] for r in ranged] == [pacs_data.mueller.uid]
    open_ended = query_json(move_daemon, "--key", "StudyDate=-20240131")
    assert [r["StudyInstanceUID"] for r in open_ended] == [pacs_data.doe.uid]
    assert query_json(move_daemon, "--key", "PatientName=NOBODY*") == []


def test_json_objects_are_keyed_by_keyword_with_typed_values(pacs, pacs_data, move_daemon):
    rows = query_json(
        move_daemon, "--key", f"StudyInstanceUID={pacs_data.mueller.uid}",
        "--key", "0008,1030", "--key", "(0010,0030)",
    )  # fmt: skip
    assert len(rows) == 1
    row = rows[0]
    assert set(row) == {*qr_scu.DEFAULT_KEYS["study"], "PatientBirthDate"}
    assert row["PatientName"] == "MÜLLER^HANS"
    assert row["StudyDescription"] == "CT ABDOMEN"
    assert row["PatientBirthDate"] == "19700101"
    assert row["NumberOfStudyRelatedInstances"] == 3
    assert row["ModalitiesInStudy"] == "CT"


def test_query_at_every_level(pacs, pacs_data, move_daemon):
    study = pacs_data.mueller
    patients = query_json(
        move_daemon, "--model", "patient", "--level", "patient", "--key", "PatientID=QR-P*"
    )
    assert sorted(p["PatientID"] for p in patients) == ["QR-P1", "QR-P2"]
    assert set(patients[0]) == set(qr_scu.DEFAULT_KEYS["patient"])

    series = query_json(move_daemon, "--level", "series", "--key", f"StudyInstanceUID={study.uid}")
    assert sorted(s["SeriesInstanceUID"] for s in series) == sorted(study.series)
    assert sorted(s["NumberOfSeriesRelatedInstances"] for s in series) == [1, 2]
    assert all(s["Modality"] == "CT" for s in series)

    first_series = next(uid for uid, uids in study.series.items() if len(uids) == 2)
    images = query_json(
        move_daemon, "--level", "image", "--key", f"StudyInstanceUID={study.uid}",
        "--key", f"SeriesInstanceUID={first_series}",
    )  # fmt: skip
    assert sorted(i["SOPInstanceUID"] for i in images) == sorted(study.series[first_series])
    assert {i["SOPClassUID"] for i in images} == {"1.2.840.10008.5.1.4.1.1.2"}
    assert sorted(i["InstanceNumber"] for i in images) == [1, 2]

    # Patient root below the patient level, with the patient's ID.
    studies = query_json(
        move_daemon, "--model", "patient", "--level", "study", "--key", "PatientID=QR-P1"
    )
    assert [s["StudyInstanceUID"] for s in studies] == [pacs_data.doe.uid]


def test_non_ascii_query_is_sent_as_utf8_and_the_latin1_answer_is_decoded(
    pacs, pacs_data, move_daemon
):
    rows = query_json(move_daemon, "--key", "PatientName=MÜL*")
    assert [r["PatientName"] for r in rows] == ["MÜLLER^HANS"]
    table = query(move_daemon, "--key", "PatientName=MÜLLER^HANS")
    assert table.returncode == EXIT_OK and "MÜLLER^HANS" in table.stdout


def test_limit_stops_after_n_matches(pacs, pacs_data, move_daemon):
    result = query(move_daemon, "--level", "patient", "--model", "patient", "--limit", "1")
    assert result.returncode == EXIT_OK, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3  # header, one row, summary
    assert "stopped after 1 match: C-CANCEL sent" in lines[-1]


# --- retrieve from Orthanc ---------------------------------------------------------------------


def test_retrieve_by_move_lands_in_our_running_daemon(pacs, pacs_data, move_daemon):
    study = pacs_data.doe
    # The running daemon takes the retrieve as a job; --wait follows it to the end.
    result = cli(move_daemon.data_dir, "retrieve", "pacs", "--study", study.uid, "--wait")
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    out = result.stdout
    assert "3 of 3 instances received, 0 failed, 0 missing" in out
    assert out.splitlines()[-1].startswith("job 1 succeeded: 3 success")
    assert "retrieving" in result.stderr  # progress of the running job
    assert archived(move_daemon.data_dir, study.instances) == set(study.instances)
    assert "C-STORE" not in result.stderr

    # Without --wait it prints the job's id and returns at once.
    queued = cli(move_daemon.data_dir, "retrieve", "pacs", "--study", study.uid)
    assert queued.returncode == EXIT_OK, queued.stderr
    assert queued.stdout.strip() == "2"


def test_retrieve_one_series_by_move(pacs, pacs_data, move_daemon):
    study = pacs_data.mueller
    series_uid, uids = next((s, u) for s, u in study.series.items() if len(u) == 1)
    result = cli(
        move_daemon.data_dir, "retrieve", "pacs", "--study", study.uid, "--series", series_uid,
        "--json", "--wait",
    )  # fmt: skip
    assert result.returncode == EXIT_OK, result.stderr
    job = json.loads(result.stdout)
    assert job["kind"] == "retrieve" and job["state"] == "succeeded"
    assert job["params"]["series_uids"] == [series_uid]
    assert job["counts"]["total"] == 1 and job["counts"]["success"] == 1
    assert [i["sop_instance_uid"] for i in job["instances"]] == uids
    assert archived(move_daemon.data_dir, uids) == set(uids)


def test_retrieve_by_get_stores_into_the_archive_without_a_daemon(pacs, pacs_data, tmp_path):
    data_dir = tmp_path / "get-data"
    data_dir.mkdir()
    add_node(data_dir, "pacs", "ORTHANC", pacs.dicom_port, "--retrieve-method", "get")
    assert cli(data_dir, "config", "set", "disk_reserve_mb", "1").returncode == 0
    nodes = json.loads(cli(data_dir, "node", "list", "--json").stdout)
    assert nodes[0]["retrieve_method"] == "get"

    study = pacs_data.mueller
    result = cli(data_dir, "retrieve", "pacs", "--study", study.uid)
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert "by C-GET" in result.stdout.splitlines()[0]
    assert "3 of 3 instances received" in result.stdout
    assert archived(data_dir, study.instances) == set(study.instances)
    # Stored as the node sent it: the same data set as the file we gave the node.
    archive = Archive(data_dir)
    try:
        for original in study.files:
            sent = pydicom.dcmread(original)
            record = archive.instance(str(sent.SOPInstanceUID))
            assert record is not None
            stored = pydicom.dcmread(record.path)
            assert stored.PatientName == "MÜLLER^HANS"
            assert stored.PixelData == sent.PixelData
    finally:
        archive.close()


def test_retrieve_several_studies_and_one_image_by_get(pacs, pacs_data, tmp_path):
    data_dir = tmp_path / "get-many"
    data_dir.mkdir()
    add_node(data_dir, "pacs", "ORTHANC", pacs.dicom_port)
    assert cli(data_dir, "config", "set", "disk_reserve_mb", "1").returncode == 0
    doe, mueller = pacs_data.doe, pacs_data.mueller

    series_uid, uids = next(iter(mueller.series.items()))
    one = cli(
        data_dir, "retrieve", "pacs", "--method", "get", "--study", mueller.uid,
        "--series", series_uid, "--image", uids[0], "--json",
    )  # fmt: skip
    assert one.returncode == EXIT_OK, one.stderr
    report = json.loads(one.stdout)
    assert report["level"] == "IMAGE" and report["summary"]["received"] == 1
    assert archived(data_dir, mueller.instances) == {uids[0]}

    both = cli(
        data_dir, "retrieve", "pacs", "--method", "get", "--study", doe.uid, "--study", mueller.uid
    )
    assert both.returncode == EXIT_OK, both.stdout + both.stderr
    assert "6 of 6 instances received" in both.stdout
    assert "2 requests, all 0x0000 Success" in both.stdout
    everything = doe.instances + mueller.instances
    assert archived(data_dir, everything) == set(everything)


def test_get_failures_are_reported_per_instance(pacs, pacs_data, tmp_path):
    data_dir = tmp_path / "full-disk"
    data_dir.mkdir()
    add_node(data_dir, "pacs", "ORTHANC", pacs.dicom_port, "--retrieve-method", "get")
    # A reserve larger than any disk: our archive refuses every C-STORE with A700.
    assert cli(data_dir, "config", "set", "disk_reserve_mb", "10000000").returncode == 0
    study = pacs_data.doe
    result = cli(data_dir, "retrieve", "pacs", "--study", study.uid)
    assert result.returncode == EXIT_FAILED
    failed_lines = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert sorted(line.split()[2].rstrip(":") for line in failed_lines) == sorted(study.instances)
    assert all("0xA700" in line and "disk reserve" in line for line in failed_lines)
    assert "FAILED: 0 of 3 instances received, 3 failed" in result.stderr
    assert archived(data_dir, study.instances) == set()


def test_move_with_no_daemon_listening_fails_with_a_hint(pacs_data, tmp_path):
    # Orthanc knows APPLIANCE at a port where nothing listens.
    server = Orthanc(
        tmp_path / "orthanc", DicomModalities={"appliance": ["APPLIANCE", LOOPBACK, free_port()]}
    )
    try:
        load_into_orthanc(server, pacs_data.doe)
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        add_node(data_dir, "pacs", "ORTHANC", server.dicom_port)
        result = cli(data_dir, "retrieve", "pacs", "--study", pacs_data.doe.uid)
    finally:
        server.stop()
    assert result.returncode == EXIT_FAILED
    missing = [line for line in result.stdout.splitlines() if line.startswith("MISSING")]
    assert len(missing) == 3
    assert "dicom-appliance serve" in result.stderr and "move destination" in result.stderr
    assert "FAILED: 0 of 3 instances received" in result.stderr


def test_node_that_does_not_know_us_as_move_destination(pacs_data, tmp_path):
    # Orthanc answers our queries but has no modality to send APPLIANCE's instances to.
    server = Orthanc(tmp_path / "orthanc", DicomAlwaysAllowFind=True, DicomAlwaysAllowMove=True)
    try:
        load_into_orthanc(server, pacs_data.doe)
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        add_node(data_dir, "pacs", "ORTHANC", server.dicom_port)
        result = cli(data_dir, "retrieve", "pacs", "--study", pacs_data.doe.uid)
    finally:
        server.stop()
    assert result.returncode == EXIT_FAILED
    assert "FAILED" in result.stderr and "final status 0x" in result.stderr
    assert "move destination" in result.stderr


def test_japanese_name_is_decoded_from_iso_2022_ir_87(tmp_path):
    study = make_study(
        tmp_path / "jp", patient_id="QR-JP", patient_name=JAPANESE_NAME, study_date="20240301",
        series_sizes=(1,), charset="\\ISO 2022 IR 87",
    )  # fmt: skip
    # Orthanc answers in its default encoding; this one's is the Japanese Kanji set.
    server = Orthanc(
        tmp_path / "orthanc", DefaultEncoding="JapaneseKanji", DicomAlwaysAllowFind=True
    )
    try:
        load_into_orthanc(server, study)
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        add_node(data_dir, "pacs", "ORTHANC", server.dicom_port)
        by_id = cli(data_dir, "query", "pacs", "--key", "PatientID=QR-JP", "--json")
        by_kanji = cli(data_dir, "query", "pacs", "--key", "PatientName=*山田*", "--json")
    finally:
        server.stop()
    assert by_id.returncode == EXIT_OK, by_id.stderr
    assert json.loads(by_id.stdout)[0]["PatientName"] == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert by_kanji.returncode == EXIT_OK, by_kanji.stderr
    assert [r["PatientID"] for r in json.loads(by_kanji.stdout)] == ["QR-JP"]
    assert "Failed to encode" not in by_id.stderr + by_kanji.stderr


# --- errors ------------------------------------------------------------------------------------


def test_unknown_node_is_a_usage_error(data_dir):
    for command in (["query", "nosuch"], ["retrieve", "nosuch", "--study", "1.2.3"]):
        result = cli(data_dir, *command)
        assert result.returncode == EXIT_USAGE
        assert "no node named 'nosuch'" in result.stderr


def test_unreachable_node_fails_with_a_clear_message(data_dir):
    add_node(data_dir, "gone", "GONE", free_port())
    result = cli(data_dir, "query", "gone")
    assert result.returncode == EXIT_FAILED
    assert "cannot connect" in result.stderr and "Traceback" not in result.stderr
    result = cli(data_dir, "retrieve", "gone", "--study", "1.2.3")
    assert result.returncode == EXIT_FAILED
    assert "FAILED: cannot connect" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "n", "--key", "NoSuchKeyword=1"], "neither a DICOM keyword nor a tag"),
        (["query", "n", "--key", "9999,9999=1"], "not in the DICOM data dictionary"),
        (["query", "n", "--level", "patient"], "no patient level"),
        (["query", "n", "--key", "Rows=abc"], "needs a number"),
        (["query", "n", "--limit", "0"], "--limit"),
        (["retrieve", "n"], "say what to retrieve"),
        (["retrieve", "n", "--series", "1.2"], "needs exactly one --study"),
        (["retrieve", "n", "--study", "1.2", "--model", "patient"], "--patient"),
    ],
)
def test_bad_requests_are_usage_errors(data_dir, args, message):
    add_node(data_dir, "n", "NODE", 104)
    result = cli(data_dir, *args)
    assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
    assert message in result.stderr


# --- forced statuses from a pynetdicom SCP -----------------------------------------------------


class StubQR:
    """A Q/R SCP that records requests and answers as each test tells it."""

    def __init__(self) -> None:
        self.identifiers: list[Dataset] = []
        self.cancelled = threading.Event()
        self.find_answers: list[tuple[int, Dataset | None]] = []
        self.slow = False
        ae = AE(ae_title="STUB")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(PatientRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        self.ae = ae
        self.port = free_port()
        self.server = ae.start_server(
            (LOOPBACK, self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_FIND, self.on_find), (evt.EVT_C_MOVE, self.on_move)],
        )

    def on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        self.identifiers.append(event.identifier)
        for status, answer in self.find_answers:
            if event.is_cancelled:
                self.cancelled.set()
                yield 0xFE00, None
                return
            if self.slow:
                time.sleep(0.1)
            yield status, answer

    def on_move(self, event: evt.Event) -> Iterator:
        self.identifiers.append(event.identifier)
        yield None, None  # the destination AE title is unknown: pynetdicom answers A801

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def stub(data_dir: Path) -> Iterator[StubQR]:
    server = StubQR()
    wait_for_port(server.port)
    add_node(data_dir, "stub", "STUB", server.port)
    yield server
    server.stop()


def _match(name: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = name
    ds.StudyInstanceUID = generate_uid()
    return ds


def test_the_identifier_sent_has_the_level_default_keys_and_matching_values(data_dir, stub):
    stub.find_answers = [(0xFF00, _match("A^B"))]
    result = cli(data_dir, "query", "stub", "--key", "PatientName=DOE*", "--key", "Modality")
    assert result.returncode == EXIT_OK, result.stderr
    sent = stub.identifiers[0]
    assert sent.QueryRetrieveLevel == "STUDY"
    assert sent.PatientName == "DOE*"
    assert "SpecificCharacterSet" not in sent  # all ASCII: the default repertoire
    for keyword in (*qr_scu.DEFAULT_KEYS["study"], "Modality"):
        assert keyword in sent
    assert sent.StudyInstanceUID == "" and sent.Modality == ""


def test_non_ascii_values_go_out_as_iso_ir_192(data_dir, stub):
    stub.find_answers = []
    result = cli(data_dir, "query", "stub", "--key", "PatientName=Gonçalves^José")
    assert result.returncode == EXIT_OK, result.stderr
    sent = stub.identifiers[0]
    assert sent.SpecificCharacterSet == "ISO_IR 192"
    assert sent.PatientName == "Gonçalves^José"


def test_limit_sends_c_cancel(data_dir, stub):
    stub.slow = True
    stub.find_answers = [(0xFF00, _match(f"PATIENT^{n}")) for n in range(20)]
    result = cli(data_dir, "query", "stub", "--limit", "2", "--json")
    assert result.returncode == EXIT_OK, result.stderr
    assert [r["PatientName"] for r in json.loads(result.stdout)] == ["PATIENT^0", "PATIENT^1"]
    assert stub.cancelled.wait(5)


def test_failure_status_gives_its_meaning_and_comment(data_dir, stub):
    failure = Dataset()
    failure.Status = 0xA900
    failure.ErrorComment = "no such key here"
    stub.find_answers = [(0xFF00, _match("A^B")), (failure, None)]  # type: ignore[list-item]
    result = cli(data_dir, "query", "stub")
    assert result.returncode == EXIT_FAILED
    expected = "FAILED after 1 match: 0xA900 Identifier does not match SOP class: no such key"
    assert expected.lower() in result.stderr.lower()
    assert "A^B" in result.stdout  # what came before the failure is still shown


def test_optional_keys_unsupported_is_noted(data_dir, stub):
    stub.find_answers = [(0xFF01, _match("A^B"))]
    result = cli(data_dir, "query", "stub")
    assert result.returncode == EXIT_OK
    assert "0xFF01" in result.stderr


def test_move_destination_unknown_a801(data_dir, stub):
    stub.find_answers = []  # the listing finds nothing
    result = cli(data_dir, "retrieve", "stub", "--study", "1.2.3.4")
    assert result.returncode == EXIT_FAILED
    assert "0xA801 Move destination unknown" in result.stderr
    assert stub.identifiers[-1].StudyInstanceUID == "1.2.3.4"
    assert stub.identifiers[-1].QueryRetrieveLevel == "STUDY"


def test_get_contexts_fit_in_one_association():
    classes = [f"1.2.3.{n}" for n in range(200)]
    contexts, roles = qr_scu.get_contexts(
        "1.2.840.10008.5.1.4.1.2.2.3", classes, [EXPLICIT_VR_LE, JPEG_2000_LOSSLESS]
    )
    assert len(contexts) == 128 and len(roles) == 127
    few, roles = qr_scu.get_contexts(
        "1.2.840.10008.5.1.4.1.2.2.3", ["1.2.3"], [EXPLICIT_VR_LE, JPEG_2000_LOSSLESS]
    )
    assert [cx.transfer_syntax for cx in few[1:]] == [[EXPLICIT_VR_LE], [JPEG_2000_LOSSLESS]]


# --- DCMTK dcmqrscp as the remote --------------------------------------------------------------


class Dcmqrscp:
    def __init__(self, folder: Path, destinations: dict[str, tuple[str, int]]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        storage = folder / "db"
        storage.mkdir()
        self.port = free_port()
        self.ae_title = "DCMQRSCP"
        hosts = "\n".join(
            f"{name} = ({ae}, {LOOPBACK}, {port})" for name, (ae, port) in destinations.items()
        )
        config = folder / "dcmqrscp.cfg"
        config.write_text(
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\n"
            "VendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\n{self.ae_title} {storage} RW (100, 1024mb) ANY\nAETable END\n"
        )
        self.log = open(folder / "dcmqrscp.log", "wb")
        self.proc = subprocess.Popen(
            [dcmtk("dcmqrscp"), "-d", "-c", str(config), str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, proc=self.proc)

    def load(self, *studies: Study) -> None:
        files = [str(path) for study in studies for path in study.files]
        result = run([dcmtk("storescu"), "-aec", self.ae_title, LOOPBACK, str(self.port), *files])
        assert result.returncode == 0, result.stderr

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def test_dcmqrscp_query_move_and_get(daemon_factory, tmp_path):
    daemon = daemon_factory()
    daemon_port = free_port()
    qr = Dcmqrscp(tmp_path / "dcmqrscp", {"appliance": ("APPLIANCE", daemon_port)})
    try:
        doe = make_study(
            tmp_path / "doe", patient_id="DQ-P1", patient_name="DOE^JANE",
            study_date="20240115", series_sizes=(2, 1),
        )  # fmt: skip
        smith = make_study(
            tmp_path / "smith", patient_id="DQ-P2", patient_name="SMITH^ANNA",
            study_date="20240301", series_sizes=(2,),
        )  # fmt: skip
        qr.load(doe, smith)
        daemon.start(daemon_port)
        add_node(daemon.data_dir, "qr", qr.ae_title, qr.port)

        studies = cli(daemon.data_dir, "query", "qr", "--json")
        assert studies.returncode == EXIT_OK, studies.stderr
        assert {s["StudyInstanceUID"] for s in json.loads(studies.stdout)} == {doe.uid, smith.uid}

        wildcard = cli(daemon.data_dir, "query", "qr", "--key", "PatientName=SMI*")
        assert wildcard.returncode == EXIT_OK, wildcard.stderr
        assert smith.uid in wildcard.stdout and doe.uid not in wildcard.stdout

        series = cli(
            daemon.data_dir, "query", "qr", "--level", "series", "--key",
            f"StudyInstanceUID={doe.uid}", "--json",
        )  # fmt: skip
        assert series.returncode == EXIT_OK, series.stderr
        assert {s["SeriesInstanceUID"] for s in json.loads(series.stdout)} == set(doe.series)

        # dcmqrscp answers only hierarchical queries; the failure says what is missing.
        no_study = cli(daemon.data_dir, "query", "qr", "--level", "series")
        assert no_study.returncode == EXIT_FAILED
        assert "StudyInstanceUID" in no_study.stderr

        moved = cli(daemon.data_dir, "retrieve", "qr", "--study", doe.uid, "--wait")
        assert moved.returncode == EXIT_OK, moved.stdout + moved.stderr
        assert "3 of 3 instances received" in moved.stdout
        assert archived(daemon.data_dir, doe.instances) == set(doe.instances)

        got = cli(
            daemon.data_dir, "retrieve", "qr", "--study", smith.uid, "--method", "get", "--wait"
        )
        assert got.returncode == EXIT_OK, got.stdout + got.stderr
        assert "2 of 2 instances received" in got.stdout
        shown = json.loads(cli(daemon.data_dir, "jobs", "show", "2", "--json").stdout)
        assert shown["params"]["method"] == "get" and shown["state"] == "succeeded"
        assert archived(daemon.data_dir, smith.instances) == set(smith.instances)
    finally:
        qr.stop()


def test_dcmqrscp_refuses_an_unknown_move_destination(data_dir, tmp_path):
    qr = Dcmqrscp(tmp_path / "dcmqrscp", {})
    try:
        study = make_study(
            tmp_path / "doe", patient_id="DQ-P3", patient_name="DOE^JIM",
            study_date="20240115", series_sizes=(1,),
        )  # fmt: skip
        qr.load(study)
        add_node(data_dir, "qr", qr.ae_title, qr.port)
        result = cli(data_dir, "retrieve", "qr", "--study", study.uid)
    finally:
        qr.stop()
    assert result.returncode == EXIT_FAILED
    assert "0xA801 Move destination unknown" in result.stderr
    assert "MISSING" in result.stdout


def test_cli_choices_match_the_engine():
    from appliance import qr_cli

    assert qr_cli.LEVELS == qr_scu.LEVELS
    assert qr_cli.MODELS == qr_scu.MODELS
    assert qr_cli.METHODS == qr_scu.METHODS
