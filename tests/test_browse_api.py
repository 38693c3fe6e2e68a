"""Control API ops of the console's Studies and Query/Retrieve screens, on a real daemon:
``archive.studies`` and ``archive.series`` over instances DCMTK storescu stored into it, and
``qr.find`` against Orthanc."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import MRImageStorage, generate_uid

from appliance.control import control_socket_path
from appliance.control_client import ApiError, ControlClient
from tests.factories import ct_dataset
from tests.peers import LOOPBACK, Daemon, Orthanc, dcmtk, free_port, run


@dataclass
class Study:
    key: str
    uid: str
    files: list[Path] = field(default_factory=list)
    series: dict[str, tuple[str, int]] = field(default_factory=dict)  # UID -> (modality, count)


def make_study(
    folder: Path,
    key: str,
    *,
    patient_name: str,
    patient_id: str,
    date: str,
    time: str,
    accession: str,
    series: list[tuple[str, int]],
    charset: str | None = None,
) -> Study:
    study = Study(key, generate_uid())
    for number, (modality, count) in enumerate(series, start=1):
        series_uid = generate_uid()
        study.series[series_uid] = (modality, count)
        for instance in range(1, count + 1):
            ds = ct_dataset(
                patient_id=patient_id,
                patient_name=patient_name,
                study_uid=study.uid,
                series_uid=series_uid,
                instance_number=instance,
                rows=8,
                columns=8,
                charset=charset,
            )
            if modality == "MR":
                ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            ds.Modality = modality
            ds.StudyDate = date
            ds.StudyTime = time
            ds.AccessionNumber = accession
            ds.StudyDescription = f"{key} study"
            ds.SeriesNumber = number
            ds.SeriesDescription = f"{modality} series {number}"
            path = folder / key / f"{number}-{instance}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            study.files.append(path)
    return study


@dataclass
class Archive:
    daemon: Daemon
    studies: dict[str, Study]

    def client(self) -> ControlClient:
        return ControlClient(control_socket_path(self.daemon.data_dir), role="technologist")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    folder = tmp_path_factory.mktemp("browse")
    studies = {
        "A": make_study(
            folder, "A", patient_name="MÜLLER^HANS", patient_id="P-100", date="20240301",
            time="090000", accession="ACC-A", series=[("CT", 2), ("MR", 1)],
            charset="ISO_IR 100",
        ),
        "B": make_study(
            folder, "B", patient_name="doe^jane", patient_id="P-200", date="20240115",
            time="101500", accession="ACC-B", series=[("CT", 1)],
        ),
        "C": make_study(
            folder, "C", patient_name="DOE^JOHN", patient_id="P-300", date="20231201",
            time="080000", accession="XYZ-1", series=[("CT", 3)],
        ),
        "D": make_study(
            folder, "D", patient_name="DOE^JOHN", patient_id="P-300", date="20240301",
            time="150000", accession="ACC-D", series=[("MR", 2)],
        ),
    }  # fmt: skip
    daemon = Daemon(folder / "data")
    daemon.data_dir.mkdir()
    daemon.configure(disk_reserve_mb=1)
    daemon.start()
    try:
        files = [str(p) for study in studies.values() for p in study.files]
        result = run(
            [dcmtk("storescu"), "-aec", daemon.ae_title, LOOPBACK, str(daemon.port), *files]
        )
        assert result.returncode == 0, result.stderr
        yield Archive(daemon, studies)
    finally:
        daemon.kill()


def keys_of(found: list[dict[str, Any]], archive: Archive) -> list[str]:
    by_uid = {study.uid: key for key, study in archive.studies.items()}
    return [by_uid[row["study_uid"]] for row in found]


def studies(archive: Archive, **filters: Any) -> list[str]:
    with archive.client() as client:
        return keys_of(client.call("archive.studies", **filters), archive)


def test_every_study_newest_first_with_its_counts_and_modalities(archive: Archive) -> None:
    with archive.client() as client:
        found = client.call("archive.studies")
    assert keys_of(found, archive) == ["D", "A", "B", "C"]
    a = found[1]
    assert a == {
        "study_uid": archive.studies["A"].uid,
        "patient_name": "MÜLLER^HANS",
        "patient_id": "P-100",
        "patient_birth_date": "19700101",
        "study_date": "20240301",
        "study_time": "090000",
        "study_description": "A study",
        "accession_number": "ACC-A",
        "modalities": ["CT", "MR"],
        "series_count": 2,
        "instance_count": 3,
    }
    assert found[0]["modalities"] == ["MR"] and found[0]["instance_count"] == 2


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"patient_name": "doe*"}, ["D", "B", "C"]),  # any case
        ({"patient_name": "DOE^JOHN"}, ["D", "C"]),
        ({"patient_name": "*jan?"}, ["B"]),
        ({"patient_name": "müller*"}, ["A"]),  # not ASCII, any case
        ({"patient_name": "SMITH*"}, []),
        ({"patient_id": "P-300"}, ["D", "C"]),
        ({"patient_id": "P-1*"}, ["A"]),
        ({"patient_id": "p-300"}, []),  # IDs match exactly
        ({"date_from": "20240101"}, ["D", "A", "B"]),
        ({"date_to": "20240115"}, ["B", "C"]),
        ({"date_from": "20240115", "date_to": "20240301"}, ["D", "A", "B"]),
        ({"date_from": "20231201", "date_to": "20231201"}, ["C"]),
        ({"modality": "mr"}, ["D", "A"]),
        ({"modality": "CT"}, ["A", "B", "C"]),
        ({"modality": "PT"}, []),
        ({"accession": "ACC-*"}, ["D", "A", "B"]),
        ({"accession": "XYZ-1"}, ["C"]),
        ({"patient_name": "DOE*", "modality": "CT"}, ["B", "C"]),
        ({"patient_name": "", "accession": None}, ["D", "A", "B", "C"]),  # empty: no filter
        ({"limit": 2}, ["D", "A"]),
        ({"patient_name": "doe*", "limit": 1}, ["D"]),
    ],
)
def test_filters(archive: Archive, filters: dict[str, Any], expected: list[str]) -> None:
    assert studies(archive, **filters) == expected


@pytest.mark.parametrize(
    ("filters", "code", "words"),
    [
        ({"date_from": "2024-01-01"}, "invalid", "YYYYMMDD"),
        ({"date_to": "20240231"}, "invalid", "calendar date"),
        ({"date_from": "20240301", "date_to": "20240101"}, "invalid", "after"),
        ({"modality": "C-T!"}, "invalid", "not a modality"),
        ({"limit": 0}, "bad-request", "1..5000"),
        ({"limit": 5001}, "bad-request", "1..5000"),
        ({"limit": "many"}, "bad-request", "integer"),
        ({"limit": True}, "bad-request", "integer"),
        ({"patient_name": 5}, "bad-request", "text"),
    ],
)
def test_bad_filters_are_refused(
    archive: Archive, filters: dict[str, Any], code: str, words: str
) -> None:
    with archive.client() as client, pytest.raises(ApiError) as refused:
        client.call("archive.studies", **filters)
    assert refused.value.code == code
    assert words in refused.value.message


def test_series_of_a_study_by_number(archive: Archive) -> None:
    a = archive.studies["A"]
    with archive.client() as client:
        found = client.call("archive.series", study_uid=a.uid)
    assert [(s["series_number"], s["modality"], s["instance_count"]) for s in found] == [
        (1, "CT", 2),
        (2, "MR", 1),
    ]
    assert {s["series_uid"] for s in found} == set(a.series)
    assert found[0]["series_description"] == "CT series 1"
    assert set(found[0]) == {
        "series_uid",
        "modality",
        "series_number",
        "series_description",
        "instance_count",
    }


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ({"study_uid": "1.2.3.4"}, "not-found"),
        ({"study_uid": "no uid"}, "invalid"),
        ({}, "bad-request"),
    ],
)
def test_series_refusals(archive: Archive, args: dict[str, Any], code: str) -> None:
    with archive.client() as client, pytest.raises(ApiError) as refused:
        client.call("archive.series", **args)
    assert refused.value.code == code


# --- qr.find against Orthanc -------------------------------------------------------------------


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, archive: Archive) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), DicomAlwaysAllowFind=True)
    try:
        for key in ("B", "C", "D"):
            for path in archive.studies[key].files:
                server.rest("/instances", path.read_bytes(), method="POST")
        result = archive.daemon.cli(
            "node", "add", "pacs", "--ae-title", server.ae_title, "--host", LOOPBACK,
            "--port", str(server.dicom_port),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        yield server
    finally:
        server.stop()


def find(archive: Archive, **args: Any) -> dict[str, Any]:
    with archive.client() as client:
        return dict(client.call("qr.find", **args))


def test_study_level_find_with_a_wildcard_name(archive: Archive, pacs: Orthanc) -> None:
    answer = find(archive, node="pacs", level="study", keys={"PatientName": "DOE^JO*"})
    assert answer["ok"] is True and answer["outcome"] == "success", answer
    assert answer["status_code"] == "0x0000" and answer["status"]
    assert "StudyInstanceUID" in answer["columns"] and "PatientName" in answer["columns"]
    rows = sorted(answer["rows"], key=lambda row: row["StudyDate"])
    assert [row["StudyInstanceUID"] for row in rows] == [
        archive.studies["C"].uid,
        archive.studies["D"].uid,
    ]
    assert rows[0]["PatientName"] == "DOE^JOHN" and rows[0]["PatientID"] == "P-300"
    assert rows[0]["NumberOfStudyRelatedInstances"] == 3
    assert rows[1]["ModalitiesInStudy"] == "MR"


def test_series_level_find_needs_the_study_and_lists_its_series(
    archive: Archive, pacs: Orthanc
) -> None:
    c = archive.studies["C"]
    answer = find(archive, node="pacs", level="series", keys={"StudyInstanceUID": c.uid})
    assert answer["ok"] is True, answer
    assert [row["SeriesInstanceUID"] for row in answer["rows"]] == list(c.series)
    assert answer["rows"][0]["Modality"] == "CT"
    assert answer["rows"][0]["NumberOfSeriesRelatedInstances"] == 3

    with archive.client() as client, pytest.raises(ApiError) as refused:
        client.call("qr.find", node="pacs", level="series", keys={"Modality": "CT"})
    assert refused.value.code == "invalid" and "StudyInstanceUID" in refused.value.message


def test_return_keys_and_limit(archive: Archive, pacs: Orthanc) -> None:
    answer = find(
        archive, node="pacs", level="study", keys={"AccessionNumber": "", "StudyID": None}, limit=1
    )
    assert answer["ok"] is True and answer["cancelled"] is True, answer
    assert len(answer["rows"]) == 1
    assert "StudyID" in answer["columns"] and "AccessionNumber" in answer["columns"]
    assert answer["rows"][0]["AccessionNumber"] in {"ACC-B", "XYZ-1", "ACC-D"}


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ({"node": "nowhere", "level": "study"}, "not-found"),
        ({"node": "pacs", "level": "image"}, "invalid"),
        ({"node": "pacs", "level": "study", "keys": {"NoSuchKeyword": "x"}}, "invalid"),
        ({"node": "pacs", "level": "study", "keys": ["PatientName"]}, "bad-request"),
        ({"node": "pacs", "level": "study", "keys": {"PatientName": ["A"]}}, "bad-request"),
        ({"node": "pacs", "level": "study", "limit": 0}, "bad-request"),
        ({"level": "study"}, "bad-request"),
    ],
)
def test_qr_find_refusals(archive: Archive, pacs: Orthanc, args: dict[str, Any], code: str) -> None:
    with archive.client() as client, pytest.raises(ApiError) as refused:
        client.call("qr.find", **args)
    assert refused.value.code == code, refused.value.message


def test_a_node_that_does_not_answer_is_ok_false_with_the_reason(archive: Archive) -> None:
    port = free_port()
    result = archive.daemon.cli(
        "node", "add", "gone", "--ae-title", "GONE", "--host", LOOPBACK, "--port", str(port)
    )
    assert result.returncode == 0, result.stderr
    answer = find(archive, node="gone", level="study", keys={"PatientName": "*"})
    assert answer["ok"] is False and answer["rows"] == [], answer
    assert answer["outcome"] == "failure" and answer["status_code"] is None
    assert "refused" in answer["status"].lower() or "connect" in answer["status"].lower()
