"""Query/Retrieve C-FIND SCP: DCMTK findscu (and pynetdicom where findscu cannot) against the
daemon, over a corpus of instances stored with storescu first."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.factories import ct_dataset
from tests.peers import LOOPBACK, Daemon, dcmtk
from tests.scp_helpers import client_ae, storescu, succeeded_files

STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT = "1.2.840.10008.5.1.4.1.2.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
JAPANESE_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"
JAPANESE_CHARSET = ["", "ISO 2022 IR 87"]
EXTRA_KEYS = {"SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle"}

_STATUS = re.compile(r"^D: DIMSE Status\s+:\s+0x([0-9A-Fa-f]{4})", re.MULTILINE)


# --- the corpus -------------------------------------------------------------------------------


@dataclass
class Corpus:
    study: dict[str, str]  # name -> Study Instance UID
    series: dict[str, str]  # name -> Series Instance UID
    instances: dict[str, list[str]]  # series name -> SOP Instance UIDs, by instance number


# (study, series, instances, study attributes, series attributes); patients by PatientID.
PATIENTS = {
    "PAT001": {"PatientName": "DOE^JOHN", "PatientBirthDate": "19700101", "PatientSex": "M"},
    "PAT002": {"PatientName": "DOE^JOHNNY", "PatientBirthDate": "19800202", "PatientSex": "M"},
    "PAT003": {"PatientName": "doe^jane", "PatientBirthDate": "19900303", "PatientSex": "F"},
    "PLATIN": {
        "PatientName": "Müller^Jürgen",
        "PatientBirthDate": "19600606",
        "PatientSex": "M",
        "SpecificCharacterSet": "ISO_IR 100",
    },
    "PJAPAN": {
        "PatientName": JAPANESE_NAME,
        "PatientBirthDate": "19500505",
        "PatientSex": "M",
        "SpecificCharacterSet": JAPANESE_CHARSET,
    },
}
STUDIES = {
    "S1": ("PAT001", "20240115", "101500", "ACC001", "CT CHEST"),
    "S2": ("PAT001", "20240120", "143000", "ACC002", "MR HEAD"),
    "S3": ("PAT002", "20231231", "235900", "ACC003", "CT ABDOMEN"),
    "S4": ("PAT003", "20240201", "080000", "X-1", "PET WB"),
    "S5": ("PLATIN", "20240301", "120000", "LAT1", "Schädel"),
    "S6": ("PJAPAN", "20240302", "090000", "JP1", "HEAD"),
}
# series name -> (study, modality, number, description, body part, date, time, protocol, count)
SERIES = {
    "S1A": ("S1", "CT", 1, "AXIAL", "CHEST", "20240115", "101600", "CHEST ROUTINE", 3),
    "S1B": ("S1", "MR", 2, "LOCALIZER", "HEAD", "20240115", "103000", "SCOUT", 2),
    "S2A": ("S2", "MR", 1, "T1 AXIAL", "HEAD", "20240120", "143500", "BRAIN", 1),
    "S3A": ("S3", "CT", 1, "ABDOMEN", "ABDOMEN", "20231231", "235900", "ABD", 1),
    "S4A": ("S4", "PT", 1, "WB", "WHOLEBODY", "20240201", "081000", "PET", 1),
    "S5A": ("S5", "CT", 1, "Kopf", "HEAD", "20240301", "120500", "KOPF", 1),
    "S6A": ("S6", "CT", 1, "HEAD", "HEAD", "20240302", "090500", "HEAD", 1),
}


def write_corpus(folder: Path) -> tuple[Corpus, list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    study_uids = {name: generate_uid() for name in STUDIES}
    series_uids = {name: generate_uid() for name in SERIES}
    corpus = Corpus(study_uids, series_uids, {})
    paths: list[Path] = []
    for series_name, series in SERIES.items():
        study_name, modality, number, description, body, date, time_, protocol, count = series
        patient_id, study_date, study_time, accession, study_description = STUDIES[study_name]
        corpus.instances[series_name] = []
        for instance_number in range(1, count + 1):
            ds = ct_dataset(
                patient_id=patient_id,
                study_uid=study_uids[study_name],
                series_uid=series_uids[series_name],
                instance_number=instance_number,
                rows=8,
                columns=8,
            )
            for keyword, value in PATIENTS[patient_id].items():
                setattr(ds, keyword, value)
            ds.StudyDate, ds.StudyTime = study_date, study_time
            ds.AccessionNumber, ds.StudyDescription = accession, study_description
            ds.StudyID = study_name
            ds.Modality, ds.SeriesNumber, ds.SeriesDescription = modality, number, description
            ds.BodyPartExamined, ds.SeriesDate, ds.SeriesTime = body, date, time_
            ds.ProtocolName = protocol
            if series_name == "S1B":
                # A second SOP Class in study S1, and Image IDs to match on.
                ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
                ds.ImageID = f"IMG{instance_number}"
            corpus.instances[series_name].append(str(ds.SOPInstanceUID))
            path = folder / f"{series_name}_{instance_number}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return corpus, paths


def store(daemon: Daemon, paths: Sequence[Path]) -> None:
    result = storescu(daemon, paths)
    assert len(succeeded_files(result.stdout + result.stderr)) == len(paths), result.stderr


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Corpus, Path]]:
    """One daemon with the whole corpus, shared by the read-only tests of this module."""
    root = tmp_path_factory.mktemp("qr_find")
    data = root / "data"
    data.mkdir()
    daemon = Daemon(data)
    daemon.configure(disk_reserve_mb=1)
    daemon.start()
    corpus, paths = write_corpus(root / "corpus")
    store(daemon, paths)
    yield daemon, corpus, root
    daemon.kill()


# --- findscu ----------------------------------------------------------------------------------


@dataclass
class FindOutcome:
    statuses: list[int]
    responses: list[Dataset]
    output: str

    @property
    def final(self) -> int:
        return self.statuses[-1]

    @property
    def pending(self) -> list[int]:
        return self.statuses[:-1]

    def values(self, keyword: str) -> set[str]:
        return {str(r.get(keyword, "")) for r in self.responses}


_runs = 0


def findscu(
    daemon: Daemon,
    workdir: Path,
    *keys: str | bytes,
    model: str = "-S",
    calling: str = "FINDSCU",
    extra: Sequence[str] = (),
    query_file: Path | None = None,
) -> FindOutcome:
    """Run DCMTK findscu with ``-k`` keys (or a query file); statuses and extracted responses."""
    global _runs
    _runs += 1
    out = workdir / f"find{_runs:04d}"
    out.mkdir(parents=True)
    cmd: list[str | bytes] = [dcmtk("findscu"), "-d", model, "-X", "-od", str(out)]
    cmd += ["-aet", calling, "-aec", daemon.ae_title, *extra]
    for key in keys:
        cmd += ["-k", key]
    cmd += [LOOPBACK, str(daemon.port)]
    if query_file is not None:
        cmd.append(str(query_file))
    # Responses may be Latin-1 or ISO 2022 text in the log: never fail on decoding it.
    result = subprocess.run(cmd, capture_output=True, timeout=60)
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    statuses = [int(code, 16) for code in _STATUS.findall(output)]
    assert statuses, output
    responses = [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]
    return FindOutcome(statuses, responses, output)


def study_query(archive, *keys: str | bytes, **kwargs) -> FindOutcome:
    daemon, _corpus, root = archive
    return findscu(daemon, root, "QueryRetrieveLevel=STUDY", *keys, **kwargs)


def studies(outcome: FindOutcome, corpus: Corpus) -> set[str]:
    by_uid = {uid: name for name, uid in corpus.study.items()}
    return {by_uid[str(r.StudyInstanceUID)] for r in outcome.responses}


def assert_success(outcome: FindOutcome, pending: int = 0xFF00) -> None:
    assert outcome.final == 0x0000, outcome.output
    assert outcome.pending == [pending] * len(outcome.responses), outcome.output


# --- keys returned ----------------------------------------------------------------------------


def test_study_level_returns_exactly_the_keys_asked_for_plus_three(archive):
    daemon, corpus, _root = archive
    outcome = study_query(
        archive,
        "PatientID=PAT001",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "ReferringPhysicianName",
        "StudyDescription",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "ModalitiesInStudy",
        "SOPClassesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "NumberOfPatientRelatedStudies",
    )
    assert_success(outcome)
    assert studies(outcome, corpus) == {"S1", "S2"}
    asked = {
        "PatientID",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "ReferringPhysicianName",
        "StudyDescription",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "ModalitiesInStudy",
        "SOPClassesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "NumberOfPatientRelatedStudies",
    }
    by_uid = {str(r.StudyInstanceUID): r for r in outcome.responses}
    for response in outcome.responses:
        assert {element.keyword for element in response} == asked | EXTRA_KEYS
        assert response.QueryRetrieveLevel == "STUDY"
        assert response.RetrieveAETitle == daemon.ae_title
        assert not response.SpecificCharacterSet  # all ASCII: the default repertoire
    s1 = by_uid[corpus.study["S1"]]
    assert (s1.StudyDate, s1.StudyTime, s1.AccessionNumber) == ("20240115", "101500", "ACC001")
    assert (s1.StudyID, s1.StudyDescription, str(s1.PatientName)) == ("S1", "CT CHEST", "DOE^JOHN")
    assert str(s1.ReferringPhysicianName) == "REF^DOC"
    assert (s1.PatientBirthDate, s1.PatientSex) == ("19700101", "M")
    assert list(s1.ModalitiesInStudy) == ["CT", "MR"]
    assert set(s1.SOPClassesInStudy) == {"1.2.840.10008.5.1.4.1.1.2", SECONDARY_CAPTURE}
    assert (s1.NumberOfStudyRelatedSeries, s1.NumberOfStudyRelatedInstances) == (2, 5)
    # In Study Root the patient's counts are study-level keys.
    assert s1.NumberOfPatientRelatedStudies == 2
    s2 = by_uid[corpus.study["S2"]]
    assert s2.ModalitiesInStudy == "MR"
    assert (s2.NumberOfStudyRelatedSeries, s2.NumberOfStudyRelatedInstances) == (1, 1)


def test_retrieve_ae_title_is_returned_even_unasked(archive):
    daemon, corpus, _root = archive
    outcome = study_query(archive, f"StudyInstanceUID={corpus.study['S3']}")
    assert_success(outcome)
    assert len(outcome.responses) == 1
    response = outcome.responses[0]
    assert {element.keyword for element in response} == {"StudyInstanceUID"} | EXTRA_KEYS
    assert response.RetrieveAETitle == daemon.ae_title


def test_unsupported_optional_key_is_returned_empty_with_ff01(archive):
    _daemon, corpus, _root = archive
    outcome = study_query(
        archive, f"StudyInstanceUID={corpus.study['S1']}", "PatientWeight", "PatientName"
    )
    assert outcome.final == 0x0000
    assert outcome.pending == [0xFF01]
    response = outcome.responses[0]
    assert "PatientWeight" in response and response.PatientWeight in (None, "")
    assert str(response.PatientName) == "DOE^JOHN"


# --- matching at STUDY level ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("PatientName=", {"S1", "S2", "S3", "S4", "S5", "S6"}),  # universal
        ("PatientName=*", {"S1", "S2", "S3", "S4", "S5", "S6"}),
        ("PatientName=DOE^JOHN", {"S1", "S2"}),  # single value
        ("PatientName=DOE*", {"S1", "S2", "S3", "S4"}),  # wildcard, names case-insensitive
        ("PatientName=DOE^JOH?", {"S1", "S2"}),  # ? is exactly one character
        ("PatientName=*JOHN*", {"S1", "S2", "S3"}),
        ("PatientName=d?e^j*n*", {"S1", "S2", "S3", "S4"}),
        ("PatientID=PAT00?", {"S1", "S2", "S3", "S4"}),
        ("PatientID=PAT003", {"S4"}),
        ("PatientSex=F", {"S4"}),
        ("PatientBirthDate=19800202", {"S3"}),
        ("PatientBirthDate=-19650101", {"S5", "S6"}),
        ("AccessionNumber=ACC002", {"S2"}),
        ("AccessionNumber=ACC00?", {"S1", "S2", "S3"}),
        ("StudyDescription=*HEAD", {"S2", "S6"}),
        ("StudyDescription=ct*", set()),  # only names ignore case
        ("StudyID=S4", {"S4"}),
        ("ReferringPhysicianName=ref^doc", {"S1", "S2", "S3", "S4", "S5", "S6"}),
        ("ModalitiesInStudy=MR", {"S1", "S2"}),
        ("ModalitiesInStudy=PT\\MR", {"S1", "S2", "S4"}),
        ("ModalitiesInStudy=P*", {"S4"}),
        ("StudyDate=20240201", {"S4"}),  # single date
        ("StudyDate=20240101-", {"S1", "S2", "S4", "S5", "S6"}),  # open end
        ("StudyDate=-20231231", {"S3"}),  # open start
        ("StudyDate=20240115-20240120", {"S1", "S2"}),
        ("StudyDate=2024030?", {"S5", "S6"}),
        ("StudyTime=0800-1015", {"S1", "S4", "S6"}),  # 1015 runs to 10:15:59.999999
        ("StudyTime=2300-", {"S3"}),
        ("StudyTime=1430", {"S2"}),
    ],
)
def test_study_level_matching(archive, key, expected):
    _daemon, corpus, _root = archive
    outcome = study_query(archive, key, "StudyInstanceUID")
    assert_success(outcome)
    assert studies(outcome, corpus) == expected


@pytest.mark.parametrize(
    ("date", "time_", "expected"),
    [
        # 2024-01-15 15:00 to 2024-01-21 10:00: S2 (01-20 14:30) only. Matched as a date
        # range and a separate time range, 1500-1000 would match nothing.
        ("20240115-20240121", "1500-1000", {"S2"}),
        # 2023-12-31 23:00 to 2024-01-15 11:00: S3 (23:59) and S1 (10:15).
        ("20231231-20240115", "2300-1100", {"S1", "S3"}),
        # Open start: up to 2024-01-15 10:00, so S1 at 10:15 is out.
        ("-20240115", "-1000", {"S3"}),
        # Open end: from 2024-03-01 12:30: S6 (03-02 09:00) but not S5 (03-01 12:00).
        ("20240301-", "1230-", {"S6"}),
    ],
)
def test_date_and_time_ranges_combine(archive, date, time_, expected):
    _daemon, corpus, _root = archive
    outcome = study_query(archive, f"StudyDate={date}", f"StudyTime={time_}", "StudyInstanceUID")
    assert_success(outcome)
    assert studies(outcome, corpus) == expected


def test_list_of_uids_at_the_query_level(archive):
    _daemon, corpus, _root = archive
    uids = "\\".join([corpus.study["S1"], corpus.study["S3"], "1.2.3.4.5"])
    outcome = study_query(archive, f"StudyInstanceUID={uids}")
    assert_success(outcome)
    assert studies(outcome, corpus) == {"S1", "S3"}


# --- SERIES and IMAGE levels ------------------------------------------------------------------


def series_query(archive, study: str, *keys: str, model: str = "-S") -> FindOutcome:
    daemon, corpus, root = archive
    upper = ["PatientID=PAT001"] if model == "-P" else []
    return findscu(
        daemon,
        root,
        "QueryRetrieveLevel=SERIES",
        *upper,
        f"StudyInstanceUID={corpus.study[study]}",
        "SeriesInstanceUID",
        *keys,
        model=model,
    )


def series_names(outcome: FindOutcome, corpus: Corpus) -> set[str]:
    by_uid = {uid: name for name, uid in corpus.series.items()}
    return {by_uid[str(r.SeriesInstanceUID)] for r in outcome.responses}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Modality=", {"S1A", "S1B"}),
        ("Modality=MR", {"S1B"}),
        ("Modality=C?", {"S1A"}),
        ("SeriesNumber=2", {"S1B"}),
        ("SeriesNumber=02", {"S1B"}),  # IS compares as a number
        ("SeriesDescription=LOC*", {"S1B"}),
        ("BodyPartExamined=CHEST", {"S1A"}),
        ("SeriesDate=20240115", {"S1A", "S1B"}),
        ("SeriesTime=1020-", {"S1B"}),
        ("ProtocolName=*ROUTINE", {"S1A"}),
    ],
)
def test_series_level_matching(archive, key, expected):
    _daemon, corpus, _root = archive
    outcome = series_query(archive, "S1", key)
    assert_success(outcome)
    assert series_names(outcome, corpus) == expected


def test_series_level_keys_and_counts(archive):
    _daemon, corpus, _root = archive
    keys = (
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "SeriesDate",
        "SeriesTime",
        "ProtocolName",
        "NumberOfSeriesRelatedInstances",
    )
    outcome = series_query(archive, "S1", *keys)
    assert_success(outcome)
    by_uid = {str(r.SeriesInstanceUID): r for r in outcome.responses}
    s1a = by_uid[corpus.series["S1A"]]
    assert {e.keyword for e in s1a} == {"StudyInstanceUID", "SeriesInstanceUID", *keys} | EXTRA_KEYS
    assert s1a.StudyInstanceUID == corpus.study["S1"]
    assert (s1a.Modality, s1a.SeriesNumber, s1a.SeriesDescription) == ("CT", 1, "AXIAL")
    assert (s1a.BodyPartExamined, s1a.SeriesDate, s1a.SeriesTime) == ("CHEST", "20240115", "101600")
    assert (s1a.ProtocolName, s1a.NumberOfSeriesRelatedInstances) == ("CHEST ROUTINE", 3)
    assert by_uid[corpus.series["S1B"]].NumberOfSeriesRelatedInstances == 2
    assert s1a.QueryRetrieveLevel == "SERIES"


def test_patient_root_series_level(archive):
    _daemon, corpus, _root = archive
    outcome = series_query(archive, "S1", "Modality=CT", model="-P")
    assert_success(outcome)
    assert series_names(outcome, corpus) == {"S1A"}
    assert outcome.responses[0].PatientID == "PAT001"


def image_query(archive, series: str, *keys: str) -> FindOutcome:
    daemon, corpus, root = archive
    study = SERIES[series][0]
    return findscu(
        daemon,
        root,
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={corpus.study[study]}",
        f"SeriesInstanceUID={corpus.series[series]}",
        "SOPInstanceUID",
        *keys,
    )


def test_image_level_keys(archive):
    _daemon, corpus, _root = archive
    outcome = image_query(archive, "S1B", "SOPClassUID", "InstanceNumber", "ImageID")
    assert_success(outcome)
    assert [r.SOPInstanceUID for r in outcome.responses] == corpus.instances["S1B"]
    first = outcome.responses[0]
    assert {e.keyword for e in first} == {
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
        "ImageID",
    } | EXTRA_KEYS
    assert (first.SOPClassUID, first.InstanceNumber, first.ImageID) == (
        SECONDARY_CAPTURE,
        1,
        "IMG1",
    )
    assert first.QueryRetrieveLevel == "IMAGE"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("InstanceNumber=2", [1]),
        ("InstanceNumber=", [0, 1, 2]),
        ("SOPClassUID=1.2.840.10008.5.1.4.1.1.2", [0, 1, 2]),
        ("SOPClassUID=1.2.840.10008.5.1.4.1.1.7", []),
    ],
)
def test_image_level_matching(archive, key, expected):
    _daemon, corpus, _root = archive
    outcome = image_query(archive, "S1A", key)
    assert_success(outcome)
    assert [r.SOPInstanceUID for r in outcome.responses] == [
        corpus.instances["S1A"][n] for n in expected
    ]


def test_image_level_uid_list(archive):
    _daemon, corpus, _root = archive
    wanted = [corpus.instances["S1A"][0], corpus.instances["S1A"][2]]
    outcome = image_query(archive, "S1A", "SOPInstanceUID=" + "\\".join(wanted))
    assert_success(outcome)
    assert [r.SOPInstanceUID for r in outcome.responses] == wanted


# --- models -----------------------------------------------------------------------------------


def test_patient_root_patient_level_with_counts(archive):
    daemon, _corpus, root = archive
    outcome = findscu(
        daemon,
        root,
        "QueryRetrieveLevel=PATIENT",
        "PatientName=DOE*",
        "PatientID",
        "PatientBirthDate",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
        model="-P",
    )
    assert_success(outcome)
    by_id = {r.PatientID: r for r in outcome.responses}
    assert set(by_id) == {"PAT001", "PAT002", "PAT003"}
    pat1 = by_id["PAT001"]
    assert (
        pat1.NumberOfPatientRelatedStudies,
        pat1.NumberOfPatientRelatedSeries,
        pat1.NumberOfPatientRelatedInstances,
    ) == (2, 3, 6)
    assert pat1.QueryRetrieveLevel == "PATIENT"
    assert {e.keyword for e in pat1} == {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    } | EXTRA_KEYS


def test_patient_root_study_level_needs_the_patient_id(archive):
    daemon, corpus, root = archive
    found = findscu(
        daemon,
        root,
        "QueryRetrieveLevel=STUDY",
        "PatientID=PAT001",
        "StudyInstanceUID",
        "StudyDate=20240120",
        model="-P",
    )
    assert_success(found)
    assert studies(found, corpus) == {"S2"}
    missing = findscu(daemon, root, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", model="-P")
    assert missing.statuses == [0xA900]


@pytest.mark.parametrize("model", ["-O", "-P"])
def test_patient_study_only_and_patient_root_levels(archive, model):
    daemon, corpus, root = archive
    patients = findscu(
        daemon, root, "QueryRetrieveLevel=PATIENT", "PatientID=PLATIN", "PatientName", model=model
    )
    assert_success(patients)
    assert [str(r.PatientName) for r in patients.responses] == ["Müller^Jürgen"]
    study = findscu(
        daemon,
        root,
        "QueryRetrieveLevel=STUDY",
        "PatientID=PJAPAN",
        "StudyInstanceUID",
        "StudyDescription",
        model=model,
    )
    assert_success(study)
    assert studies(study, corpus) == {"S6"}


def test_patient_study_only_has_no_series_level(archive):
    daemon, corpus, root = archive
    outcome = findscu(
        daemon,
        root,
        "QueryRetrieveLevel=SERIES",
        "PatientID=PAT001",
        f"StudyInstanceUID={corpus.study['S1']}",
        "SeriesInstanceUID",
        model="-O",
    )
    assert outcome.statuses == [0xA900]


# --- refused identifiers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "status"),
    [
        # A UID list above the query level.
        (["QueryRetrieveLevel=SERIES", "StudyInstanceUID={S1}\\{S2}", "SeriesInstanceUID"], 0xA900),
        # A missing unique key above the level.
        (["QueryRetrieveLevel=IMAGE", "StudyInstanceUID={S1}", "SOPInstanceUID"], 0xA900),
        (["QueryRetrieveLevel=SERIES", "SeriesInstanceUID"], 0xA900),
        # A key of a level below the query level.
        (["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "SeriesInstanceUID"], 0xA900),
        (["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "Modality=CT"], 0xA900),
        # A non-unique key of a level above it.
        (
            [
                "QueryRetrieveLevel=SERIES",
                "StudyInstanceUID={S1}",
                "StudyDescription=CT*",
                "SeriesInstanceUID",
            ],
            0xA900,
        ),
        # The unique key above the level must be one plain value.
        (["QueryRetrieveLevel=SERIES", "StudyInstanceUID=1.2.*", "SeriesInstanceUID"], 0xA900),
        # Levels the model does not have, or none.
        (["QueryRetrieveLevel=PATIENT", "PatientID"], 0xA900),
        (["QueryRetrieveLevel=FOO", "PatientID"], 0xA900),
        (["PatientName=DOE*", "StudyInstanceUID"], 0xA900),
        # Values that cannot be processed.
        (["QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.*"], 0xC000),
        (["QueryRetrieveLevel=STUDY", "StudyDate=2024-01-01"], 0xC000),
        (["QueryRetrieveLevel=STUDY", "StudyDate=20240101-20240131-"], 0xC000),
        (["QueryRetrieveLevel=STUDY", "StudyTime=25h-"], 0xC000),
        (["QueryRetrieveLevel=STUDY", "StudyDate=-"], 0xC000),
    ],
)
def test_refused_identifiers(archive, keys, status):
    daemon, corpus, root = archive
    keys = [key.format(**corpus.study) for key in keys]
    outcome = findscu(daemon, root, *keys)
    assert outcome.statuses == [status], outcome.output
    assert outcome.responses == []


# --- character sets ---------------------------------------------------------------------------


def test_latin1_query_finds_the_latin1_patient(archive):
    _daemon, corpus, _root = archive
    # findscu puts -k values into the identifier as the bytes it is given: Latin-1 here.
    for name in ("Müller^Jürgen", "MÜLLER*", "*ller^J?rgen"):
        outcome = study_query(
            archive,
            "SpecificCharacterSet=ISO_IR 100",
            f"PatientName={name}".encode("latin-1"),
            "StudyInstanceUID",
            "StudyDescription",
        )
        assert_success(outcome)
        assert studies(outcome, corpus) == {"S5"}, name
        response = outcome.responses[0]
        assert response.SpecificCharacterSet == "ISO_IR 100"  # the set it was stored in
        assert str(response.PatientName) == "Müller^Jürgen"
        assert response.StudyDescription == "Schädel"


def _query_file(path: Path, charset: object, **keys: object) -> Path:
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    ds.save_as(path, implicit_vr=False, little_endian=True)
    return path


@pytest.mark.parametrize(
    "name",
    [
        JAPANESE_NAME,  # all three component groups
        "=山田^太郎",  # the ideographic group alone
        "山田*",  # one group: matched against each group of the stored name
        "*==やまだ^たろう",  # the phonetic group, any alphabetic one
        "YAMADA^TAROU",
    ],
)
def test_japanese_iso2022_query_finds_the_japanese_patient(archive, name):
    daemon, corpus, root = archive
    query = _query_file(
        root / f"jp-{abs(hash(name))}.dcm",
        JAPANESE_CHARSET,
        PatientName=name,
        StudyInstanceUID="",
        PatientID="",
    )
    outcome = findscu(daemon, root, query_file=query)
    assert_success(outcome)
    assert studies(outcome, corpus) == {"S6"}
    response = outcome.responses[0]
    assert list(response.SpecificCharacterSet) == JAPANESE_CHARSET
    assert str(response.PatientName) == JAPANESE_NAME
    assert response.PatientID == "PJAPAN"


def test_utf8_query_finds_latin1_and_japanese_patients(archive):
    daemon, corpus, root = archive
    query = _query_file(root / "utf8.dcm", "ISO_IR 192", PatientName="*^*r*", StudyInstanceUID="")
    outcome = findscu(daemon, root, query_file=query)
    assert_success(outcome)
    # Given names with an r: Jürgen and Tarou, whatever set they were stored in.
    assert studies(outcome, corpus) == {"S5", "S6"}


# --- settings: names case-sensitive, maximum matches ------------------------------------------


@pytest.fixture(scope="module")
def strict_archive(tmp_path_factory) -> Iterator[tuple[Daemon, Corpus, Path]]:
    root = tmp_path_factory.mktemp("qr_find_strict")
    data = root / "data"
    data.mkdir()
    daemon = Daemon(data)
    daemon.configure(disk_reserve_mb=1, query_case_insensitive_names=False, max_query_matches=2)
    daemon.start()
    corpus, paths = write_corpus(root / "corpus")
    store(daemon, paths)
    yield daemon, corpus, root
    daemon.kill()


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("PatientName=doe*", {"S4"}),
        ("PatientName=DOE^JOH?", {"S1", "S2"}),
        ("PatientName=Doe^John", set()),
    ],
)
def test_case_sensitive_names_when_configured(strict_archive, key, expected):
    _daemon, corpus, _root = strict_archive
    outcome = study_query(strict_archive, key, "StudyInstanceUID")
    assert_success(outcome)
    assert studies(outcome, corpus) == expected


def test_max_query_matches_returns_the_first_ones_then_a700(strict_archive):
    daemon, _corpus, _root = strict_archive
    outcome = study_query(strict_archive, "StudyInstanceUID")
    assert outcome.statuses == [0xFF00, 0xFF00, 0xA700], outcome.output
    assert len(outcome.responses) == 2
    # The Error Comment says why (findscu does not print it; pynetdicom shows it).
    ae = client_ae("PYFIND")
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate(LOOPBACK, daemon.port, ae_title=daemon.ae_title)
    assert assoc.is_established
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        results = list(assoc.send_c_find(query, STUDY_ROOT))
    finally:
        assoc.release()
    final_status = results[-1][0]
    assert final_status.Status == 0xA700
    assert "too many matches" in final_status.ErrorComment
    # Exactly at the limit is not too many.
    exact = study_query(strict_archive, "PatientID=PAT001", "StudyInstanceUID")
    assert exact.statuses == [0xFF00, 0xFF00, 0x0000]


# --- permissions ------------------------------------------------------------------------------


def test_node_without_find_permission_gets_0124(archive):
    daemon, _corpus, root = archive
    result = daemon.cli(
        "node",
        "add",
        "NOFIND",
        "--ae-title",
        "NOFINDSCU",
        "--host",
        LOOPBACK,
        "--port",
        "104",
        "--services",
        "echo,store",
    )
    assert result.returncode == 0, result.stderr
    try:
        refused = findscu(
            daemon, root, "QueryRetrieveLevel=STUDY", "PatientID", calling="NOFINDSCU"
        )
        assert refused.statuses == [0x0124]
        assert refused.responses == []
        allowed = findscu(daemon, root, "QueryRetrieveLevel=STUDY", "PatientID=PAT003")
        assert_success(allowed)
    finally:
        daemon.cli("node", "remove", "NOFIND")


# --- C-CANCEL ---------------------------------------------------------------------------------


def _add_index_rows(data_dir: Path, studies_count: int) -> None:
    """Many studies straight into the daemon's index: C-FIND reads only the index, and storing
    thousands of instances over the network would make the test slow for nothing."""
    db = sqlite3.connect(data_dir / "index.sqlite", timeout=30)
    try:
        with db:
            for n in range(studies_count):
                study, series, instance = f"1.2.3.{n}", f"1.2.3.{n}.1", f"1.2.3.{n}.1.1"
                db.execute(
                    "INSERT INTO studies (study_uid, patient_id, study_date) VALUES (?, ?, ?)",
                    (study, "MANY", "20200101"),
                )
                db.execute(
                    "INSERT INTO series (series_uid, study_uid, modality) VALUES (?, ?, 'CT')",
                    (series, study),
                )
                db.execute(
                    "INSERT INTO instances (sop_instance_uid, sop_class_uid, series_uid,"
                    " study_uid, transfer_syntax, path, size) VALUES (?, ?, ?, ?, ?, ?, 0)",
                    (
                        instance,
                        "1.2.840.10008.5.1.4.1.1.2",
                        series,
                        study,
                        "1.2.840.10008.1.2",
                        "x",
                    ),
                )
            db.execute(
                "INSERT INTO patients (patient_id, patient_name) VALUES ('MANY', 'MANY^STUDIES')"
            )
    finally:
        db.close()


def test_c_cancel_after_the_first_pending_ends_with_fe00(daemon_factory):
    daemon = daemon_factory().start()
    _add_index_rows(daemon.data_dir, 3000)
    ae = client_ae("PYFIND")
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate(LOOPBACK, daemon.port, ae_title=daemon.ae_title)
    assert assoc.is_established
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = "MANY"
        query.StudyInstanceUID = ""
        statuses: list[int] = []
        for status, _identifier in assoc.send_c_find(query, STUDY_ROOT, msg_id=7):
            statuses.append(int(status.Status))
            if len(statuses) == 1:
                assoc.send_c_cancel(7, query_model=STUDY_ROOT)
        # The association stays usable after the cancel.
        again = Dataset()
        again.QueryRetrieveLevel = "STUDY"
        again.StudyInstanceUID = "1.2.3.5"
        after = [int(s.Status) for s, _ in assoc.send_c_find(again, STUDY_ROOT)]
    finally:
        assoc.release()
    assert statuses[0] == 0xFF00
    assert statuses[-1] == 0xFE00
    assert set(statuses[:-1]) == {0xFF00}
    assert len(statuses) - 1 < 3000  # it stopped early
    assert after == [0xFF00, 0x0000]


def test_findscu_cancel(daemon_factory, tmp_path):
    daemon = daemon_factory().start()
    _add_index_rows(daemon.data_dir, 2000)
    outcome = findscu(
        daemon,
        tmp_path,
        "QueryRetrieveLevel=STUDY",
        "PatientID=MANY",
        "StudyInstanceUID",
        extra=["--cancel", "1"],
    )
    assert outcome.final == 0xFE00, outcome.output
    assert 1 <= len(outcome.pending) < 2000


# --- the index as an older version left it ----------------------------------------------------


def test_existing_index_gains_the_query_columns(tmp_path):
    from appliance.archive import Archive

    data = tmp_path / "old"
    data.mkdir()
    db = sqlite3.connect(data / "index.sqlite")
    db.executescript(
        "CREATE TABLE series (series_uid TEXT PRIMARY KEY, study_uid TEXT, modality TEXT,"
        " series_number TEXT, series_description TEXT, body_part TEXT, series_date TEXT,"
        " series_time TEXT, updated_at REAL);"
        "CREATE TABLE instances (sop_instance_uid TEXT PRIMARY KEY, sop_class_uid TEXT NOT NULL,"
        " series_uid TEXT, study_uid TEXT, instance_number TEXT, transfer_syntax TEXT NOT NULL,"
        " charset TEXT, path TEXT NOT NULL, size INTEGER NOT NULL, source_ae TEXT,"
        " received_at REAL);"
    )
    db.close()
    for _ in range(2):  # twice: the migration is idempotent
        archive = Archive(data)
        archive.close()
    db = sqlite3.connect(data / "index.sqlite")
    series_columns = {row[1] for row in db.execute("PRAGMA table_info(series)")}
    instance_columns = {row[1] for row in db.execute("PRAGMA table_info(instances)")}
    db.close()
    assert "protocol_name" in series_columns
    assert "image_id" in instance_columns


def test_query_is_fast_enough_for_the_bench_sizes(tmp_path):
    """Study-level C-FIND by name wildcard and by date range, image level by Series UID, over
    5,000 studies and 100,000 instances: the matching (not the network, see bench/query) takes
    well under 50 ms, even on a busy test machine."""
    from appliance.archive import Archive
    from appliance.query import STUDY_ROOT as MODEL
    from appliance.query import find

    data = tmp_path / "big"
    data.mkdir()
    Archive(data).close()
    db = sqlite3.connect(data / "index.sqlite")
    with db:
        db.executemany(
            "INSERT INTO patients (patient_id, patient_name, birth_date, sex) VALUES (?,?,?,?)",
            [(f"P{p}", f"NAME{p:04d}^GIVEN", "19700101", "F") for p in range(2500)],
        )
        db.executemany(
            "INSERT INTO studies (study_uid, patient_id, study_date, study_time, accession_number,"
            " study_description) VALUES (?,?,?,?,?,?)",
            [
                (
                    f"1.9.{s}",
                    f"P{s % 2500}",
                    f"2024{1 + s % 12:02d}{1 + s % 28:02d}",
                    "101500",
                    f"A{s}",
                    "CT",
                )
                for s in range(5000)
            ],
        )
        db.executemany(
            "INSERT INTO series (series_uid, study_uid, modality, series_number) VALUES (?,?,?,?)",
            [(f"1.9.{s}.{k}", f"1.9.{s}", "CT", str(k)) for s in range(5000) for k in range(2)],
        )
        db.executemany(
            "INSERT INTO instances (sop_instance_uid, sop_class_uid, series_uid, study_uid,"
            " instance_number, transfer_syntax, path, size) VALUES (?,?,?,?,?,?,?,0)",
            [
                (
                    f"1.9.{s}.{k}.{i}",
                    "1.2.840.10008.5.1.4.1.1.2",
                    f"1.9.{s}.{k}",
                    f"1.9.{s}",
                    str(i),
                    "1.2.840.10008.1.2",
                    "x",
                )
                for s in range(5000)
                for k in range(2)
                for i in range(10)
            ],
        )
    db.close()

    def timed(**keys: object) -> tuple[float, int]:
        query = Dataset()
        for keyword, value in keys.items():
            setattr(query, keyword, value)
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            result = find(data, query, MODEL, ae_title="APPLIANCE")
            best = min(best, time.perf_counter() - started)
        assert len(list(result.responses())) == len(result.matches)
        return best, len(result.matches)

    common = {"StudyInstanceUID": "", "PatientName": "", "StudyDate": "", "ModalitiesInStudy": ""}
    by_name, count = timed(QueryRetrieveLevel="STUDY", **{**common, "PatientName": "NAME001*"})
    assert count == 20
    by_date, count = timed(
        QueryRetrieveLevel="STUDY", **{**common, "StudyDate": "20240301-20240310"}
    )
    assert count == sum(1 for s in range(5000) if s % 12 == 2 and s % 28 < 10)
    by_series, count = timed(
        QueryRetrieveLevel="IMAGE",
        StudyInstanceUID="1.9.77",
        SeriesInstanceUID="1.9.77.1",
        SOPInstanceUID="",
        InstanceNumber="",
    )
    assert count == 10
    assert max(by_name, by_date, by_series) < 0.05, (by_name, by_date, by_series)


# --- the encoding of answers ------------------------------------------------------------------


def test_direct_encoding_equals_pydicom(tmp_path):
    """Pending identifiers are encoded without pydicom; the bytes are pydicom's."""
    from pynetdicom.dsutils import encode

    from appliance.query import STUDY_ROOT as MODEL
    from appliance.query import Match, build_response, encode_response, parse_query

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientName = ""
    query.StudyDate = ""
    query.ModalitiesInStudy = ""
    query.NumberOfStudyRelatedInstances = ""
    query.PatientWeight = ""  # unsupported: returned empty
    query.InstanceAvailability = ""
    parsed = parse_query(query, MODEL)
    match = Match(
        "1.2.3",
        "",
        "P1",
        {"StudyInstanceUID": "1.2.3", "PatientName": "DOE^JOHN", "StudyDate": "20240101"},
        {"ModalitiesInStudy": ["CT", "MR"], "NumberOfStudyRelatedInstances": 5},
    )
    for implicit in (True, False):
        direct = encode_response(parsed, match, "APPLIANCE", implicit_vr=implicit)
        assert direct is not None
        assert direct == encode(build_response(parsed, match, "APPLIANCE"), implicit, True)
    # Text outside ASCII needs a character set: left to pydicom.
    latin = Match("1.2.3", "ISO_IR 100", "P1", {"PatientName": "Müller^Jürgen"})
    assert encode_response(parsed, latin, "APPLIANCE", implicit_vr=True) is None


def test_big_endian_context(archive):
    daemon, corpus, root = archive
    outcome = findscu(
        daemon,
        root,
        "QueryRetrieveLevel=STUDY",
        "PatientID=PAT001",
        "StudyInstanceUID",
        "PatientName",
        "NumberOfStudyRelatedInstances",
        extra=["-xb"],  # propose Explicit VR Big Endian only
    )
    assert "BigEndianExplicit" in outcome.output or "Big Endian" in outcome.output
    assert_success(outcome)
    assert studies(outcome, corpus) == {"S1", "S2"}
    assert {r.NumberOfStudyRelatedInstances for r in outcome.responses} == {5, 1}


def test_answers_larger_than_the_peer_max_pdu_are_fragmented(archive):
    daemon, corpus, _root = archive
    ae = client_ae("PYFIND")
    ae.maximum_pdu_size = 512  # the identifier below is larger
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate(LOOPBACK, daemon.port, ae_title=daemon.ae_title)
    assert assoc.is_established
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = corpus.study["S1"]
        query.PatientName = ""
        for element in range(0x1000, 0x1060):  # private keys: unsupported, returned empty
            query.add_new((0x0029, element), "LO", "")
        responses = list(assoc.send_c_find(query, STUDY_ROOT))
    finally:
        assoc.release()
    statuses = [int(status.Status) for status, _ in responses]
    assert statuses == [0xFF01, 0x0000]
    identifier = responses[0][1]
    assert str(identifier.PatientName) == "DOE^JOHN"
    assert len(identifier) == 2 + 0x60 + 3  # the keys asked for, and the three extras


def test_names_in_every_character_set_are_found_and_returned(daemon_factory, tmp_path):
    """pydicom's character set samples (Latin-1, Greek, Arabic, Hebrew, Cyrillic, Japanese in
    ISO 2022 IR 13/87, Korean, UTF-8, GB18030): a UTF-8 query for each stored name finds its
    study, and the answer decodes to the same name."""
    from pydicom.data import get_charset_files

    daemon = daemon_factory().start()
    samples = [
        path
        for path in sorted(get_charset_files("chr*.dcm"))
        if "SQEncoding" not in path and "Multi" not in path and "IR6" not in path
    ]
    datasets = {path: dcmread(path) for path in samples}
    store(daemon, [Path(path) for path in samples])
    assert len(samples) >= 10
    for path, ds in datasets.items():
        name = str(ds.PatientName)
        query = _query_file(
            tmp_path / f"q-{Path(path).stem}.dcm",
            "ISO_IR 192",
            PatientName=name,
            StudyInstanceUID="",
            PatientID="",
        )
        outcome = findscu(daemon, tmp_path, query_file=query)
        assert_success(outcome)
        assert [r.StudyInstanceUID for r in outcome.responses] == [ds.StudyInstanceUID], path
        response = outcome.responses[0]
        assert str(response.PatientName) == name, path
        assert response.PatientID == ds.PatientID
        # The stored set when it can carry the answer, UTF-8 otherwise.
        stored = ds.SpecificCharacterSet
        assert response.SpecificCharacterSet in (stored, "ISO_IR 192"), path


def test_answer_falls_back_to_utf8_when_the_stored_set_cannot_carry_it():
    from pynetdicom.dsutils import decode, encode

    from appliance.query import STUDY_ROOT as MODEL
    from appliance.query import Match, build_response, parse_query

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = ""
    query.StudyDescription = ""
    parsed = parse_query(query, MODEL)
    # A Latin-1 study of a patient whose name came with a later, Japanese instance.
    match = Match(
        "1.2", "ISO_IR 100", "P", {"PatientName": JAPANESE_NAME, "StudyDescription": "Schädel"}
    )
    response = build_response(parsed, match, "APPLIANCE")
    assert response.SpecificCharacterSet == "ISO_IR 192"
    back = decode(BytesIO(encode(response, True, True)), True, True)
    assert (str(back.PatientName), back.StudyDescription) == (JAPANESE_NAME, "Schädel")
    # Latin-1 text alone stays in the stored set.
    latin = Match("1.2", "ISO_IR 100", "P", {"PatientName": "Müller", "StudyDescription": "Kopf"})
    assert build_response(parsed, latin, "APPLIANCE").SpecificCharacterSet == "ISO_IR 100"
