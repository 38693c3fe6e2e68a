"""`dicom-appliance mpps`: N-CREATE and N-SET against a pynetdicom MPPS SCP, with the
worklist item taken from DCMTK `wlmscpfs`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from appliance import worklist
from appliance.config import Node, Settings
from tests.factories import ct_dataset
from tests.peers import LOOPBACK, free_port
from tests.workflow_helpers import StubMPPS, WorklistSCP, add_node, cli, worklist_item

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_WARNINGS = 0, 1, 2, 3

OUR_AE = "APPLIANCE"
JAPANESE_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"
STUDY_A1 = generate_uid()
IMAGE_PIXEL_KEYWORDS = (
    "Rows", "Columns", "PixelData", "BitsAllocated", "BitsStored", "HighBit",
    "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
)  # fmt: skip


@pytest.fixture
def wlm(tmp_path: Path) -> Iterator[WorklistSCP]:
    scp = WorklistSCP(tmp_path / "wlm")
    scp.add("a1", worklist_item(patient_name="DOE^JOHN", patient_id="P1", accession="A1",
                                study_uid=STUDY_A1))  # fmt: skip
    scp.add("a2", worklist_item(patient_name="DOE^JANE", patient_id="P2", accession="A2"))
    # One requested procedure, two scheduled steps on two files: ambiguous by accession.
    for sps in ("S1", "S2"):
        scp.add(f"a3-{sps}", worklist_item(patient_id="P3", accession="A3", sps_id=sps))
    scp.add("jp", worklist_item(patient_name=JAPANESE_NAME, patient_id="P7", accession="A7",
                                charset=["", "ISO 2022 IR 87"]))  # fmt: skip
    yield scp
    scp.stop()


@pytest.fixture
def mpps() -> Iterator[StubMPPS]:
    scp = StubMPPS()
    yield scp
    scp.stop()


@pytest.fixture
def data(tmp_path: Path, wlm: WorklistSCP, mpps: StubMPPS) -> Path:
    folder = tmp_path / "data"
    add_node(folder, "RIS", wlm.ae_title, wlm.port)
    add_node(folder, "PPS", "MPPSSCP", mpps.port)
    return folder


def start(data_dir: Path, *args: str) -> dict:
    result = cli(data_dir, "mpps", "start", "PPS", "--worklist-node", "RIS", *args, "--json")
    assert result.returncode == EXIT_OK, result.stderr + result.stdout
    return json.loads(result.stdout)


def write_images(folder: Path, study_uid: str, series: int = 2, per_series: int = 2) -> dict:
    """CT images in ``series`` series; returns {series UID: [SOP Instance UID, ...]}."""
    made: dict[str, list[str]] = {}
    for s in range(series):
        series_uid = generate_uid()
        for n in range(per_series):
            ds = ct_dataset(study_uid=study_uid, series_uid=series_uid, instance_number=n + 1,
                            rows=8, columns=8)  # fmt: skip
            ds.ProtocolName = f"CHEST {s}"
            ds.SeriesDescription = f"AXIAL {s}"
            ds.OperatorsName = "TECH^TOM"
            path = folder / f"s{s}" / f"{n}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            made.setdefault(series_uid, []).append(str(ds.SOPInstanceUID))
    return made


def write_report(path: Path, study_uid: str) -> Dataset:
    """A non-image object (Basic Text SR) of the same study."""
    ds = ct_dataset(study_uid=study_uid)
    for keyword in IMAGE_PIXEL_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.Modality = "SR"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


# --- the whole workflow ----------------------------------------------------------------------


def test_start_from_worklist_then_complete(data: Path, mpps: StubMPPS, tmp_path: Path) -> None:
    started = start(data, "--accession", "A1")
    uid = started["uid"]
    assert started["status"] == "IN PROGRESS"

    assert len(mpps.creates) == 1
    sent_uid, created = mpps.creates[0]
    assert sent_uid == uid
    assert created.PerformedProcedureStepStatus == "IN PROGRESS"
    attrs = created.ScheduledStepAttributesSequence[0]
    assert attrs.StudyInstanceUID == STUDY_A1
    assert attrs.AccessionNumber == "A1"
    assert attrs.RequestedProcedureID == "RPA1"
    assert attrs.RequestedProcedureDescription == "CT CHEST"
    assert attrs.ScheduledProcedureStepID == "SPSA1"
    assert attrs.ScheduledProcedureStepDescription == "CT CHEST W/O CONTRAST"
    assert attrs.ScheduledProtocolCodeSequence[0].CodeValue == "P-CHEST"
    assert "ReferencedStudySequence" in attrs
    assert created.PatientName == "DOE^JOHN"
    assert created.PatientID == "P1"
    assert created.PatientBirthDate == "19700101"
    assert created.PatientSex == "M"
    assert created.PerformedStationAETitle == OUR_AE
    assert created.PerformedStationName == "CT ROOM 1"
    assert created.Modality == "CT"
    assert created.PerformedProcedureStepID
    assert created.PerformedProcedureStepStartDate == date.today().strftime("%Y%m%d")
    assert len(created.PerformedProcedureStepStartTime) == 6
    assert created.PerformedProcedureStepDescription == "CT CHEST W/O CONTRAST"
    assert created.ProcedureCodeSequence[0].CodeValue == "CTCHEST"
    assert created.PerformedProtocolCodeSequence[0].CodeValue == "P-CHEST"
    # Type 2 attributes of the final state go out empty at creation.
    for keyword in ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
                    "PerformedSeriesSequence", "StudyID", "ReferencedPatientSequence"):  # fmt: skip
        assert keyword in created, keyword
        assert not created[keyword].value or keyword == "StudyID"
    assert created.StudyID == "RPA1"

    images = write_images(tmp_path / "images", STUDY_A1)
    report = write_report(tmp_path / "images" / "sr.dcm", STUDY_A1)
    result = cli(data, "mpps", "complete", "PPS", uid, "--series-from",
                 str(tmp_path / "images"))  # fmt: skip
    assert result.returncode == EXIT_OK, result.stderr
    assert "COMPLETED" in result.stdout and "5 instances" in result.stdout

    assert len(mpps.sets) == 1
    set_uid, changes = mpps.sets[0]
    assert set_uid == uid
    assert changes.PerformedProcedureStepStatus == "COMPLETED"
    assert changes.PerformedProcedureStepEndDate == date.today().strftime("%Y%m%d")
    assert len(changes.PerformedProcedureStepEndTime) == 6
    series = {str(item.SeriesInstanceUID): item for item in changes.PerformedSeriesSequence}
    assert set(images) <= set(series)
    for series_uid, instances in images.items():
        item = series[series_uid]
        refs = [str(r.ReferencedSOPInstanceUID) for r in item.ReferencedImageSequence]
        assert sorted(refs) == sorted(instances)
        assert all(r.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
                   for r in item.ReferencedImageSequence)  # fmt: skip
        assert item.ProtocolName.startswith("CHEST ")
        assert item.SeriesDescription.startswith("AXIAL ")
        assert item.OperatorsName == "TECH^TOM"
        assert item.RetrieveAETitle == OUR_AE
        assert "PerformingPhysicianName" in item
        assert list(item.ReferencedNonImageCompositeSOPInstanceSequence) == []
    sr_item = series[str(report.SeriesInstanceUID)]
    assert list(sr_item.ReferencedImageSequence) == []
    [sr_ref] = sr_item.ReferencedNonImageCompositeSOPInstanceSequence
    assert sr_ref.ReferencedSOPInstanceUID == report.SOPInstanceUID
    assert sr_item.ProtocolName  # Type 1, even when the object has none

    listing = json.loads(cli(data, "mpps", "list", "--json").stdout)
    assert [(r["uid"], r["status"], r["series"], r["instances"]) for r in listing] == [
        (uid, "COMPLETED", 3, 5)
    ]
    # A completed step cannot be changed again; nothing goes out.
    again = cli(data, "mpps", "discontinue", "PPS", uid)
    assert again.returncode == EXIT_USAGE
    assert "already COMPLETED" in again.stderr
    assert len(mpps.sets) == 1


def test_discontinue_with_reason(data: Path, mpps: StubMPPS) -> None:
    uid = start(data, "--accession", "A2", "--modality", "MR", "--station-ae", "MR01")["uid"]
    _, created = mpps.creates[0]
    assert created.Modality == "MR"
    assert created.PerformedStationAETitle == "MR01"
    result = cli(data, "mpps", "discontinue", "PPS", uid, "--reason", "wrong-worklist-entry",
                 "--json")  # fmt: skip
    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout)["status"] == "DISCONTINUED"
    _, changes = mpps.sets[0]
    assert changes.PerformedProcedureStepStatus == "DISCONTINUED"
    assert changes.PerformedProcedureStepEndDate
    assert list(changes.PerformedSeriesSequence) == []
    [reason] = changes.PerformedProcedureStepDiscontinuationReasonCodeSequence
    assert (reason.CodeValue, reason.CodingSchemeDesignator) == ("110514", "DCM")
    assert mpps.steps[uid].PerformedProcedureStepStatus == "DISCONTINUED"


def test_japanese_patient_keeps_its_character_set(data: Path, mpps: StubMPPS) -> None:
    started = start(data, "--accession", "A7")
    assert started["patient_name"] == JAPANESE_NAME
    _, created = mpps.creates[0]
    assert list(created.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]
    assert created.PatientName == JAPANESE_NAME


def test_unscheduled_from_file(data: Path, mpps: StubMPPS, tmp_path: Path) -> None:
    image = tmp_path / "img.dcm"
    ct_dataset(patient_name="WALKIN^WALT", patient_id="W1").save_as(image, enforce_file_format=True)
    source = dcmread(image)
    result = cli(data, "mpps", "start", "PPS", "--from-file", str(image), "--json")
    assert result.returncode == EXIT_OK, result.stderr
    _, created = mpps.creates[0]
    assert created.PatientName == "WALKIN^WALT"
    attrs = created.ScheduledStepAttributesSequence[0]
    assert attrs.StudyInstanceUID == source.StudyInstanceUID
    assert attrs.ScheduledProcedureStepID == ""
    assert created.Modality == "CT"
    assert created.PerformedProcedureStepDescription == "CT CHEST"
    # No worklist selection options with --from-file.
    both = cli(data, "mpps", "start", "PPS", "--from-file", str(image), "--accession", "A1")
    assert both.returncode == EXIT_USAGE


# --- selection and usage errors --------------------------------------------------------------


def test_ambiguous_or_missing_worklist_item(data: Path, mpps: StubMPPS) -> None:
    many = cli(data, "mpps", "start", "PPS", "--worklist-node", "RIS", "--accession", "A3")
    assert many.returncode == EXIT_FAILED
    assert "2 scheduled procedure steps" in many.stderr and "--sps-id" in many.stderr
    one = start(data, "--accession", "A3", "--sps-id", "S2")
    assert one["scheduled_procedure_step_id"] == "S2"
    none = cli(data, "mpps", "start", "PPS", "--worklist-node", "RIS", "--accession", "NOPE")
    assert none.returncode == EXIT_FAILED
    assert "no scheduled procedure step" in none.stderr
    nothing = cli(data, "mpps", "start", "PPS")
    assert nothing.returncode == EXIT_USAGE
    assert "--accession" in nothing.stderr
    assert len(mpps.creates) == 1


def test_complete_refuses_bad_input(data: Path, mpps: StubMPPS, tmp_path: Path) -> None:
    unknown = cli(data, "mpps", "complete", "PPS", generate_uid(), "--series-from", str(tmp_path))
    assert unknown.returncode == EXIT_USAGE
    assert "mpps list" in unknown.stderr
    uid = start(data, "--accession", "A1")["uid"]
    write_images(tmp_path / "images", STUDY_A1, series=1, per_series=1)
    missing = cli(data, "mpps", "complete", "PPS", uid, "--series-from",
                  str(tmp_path / "images"), str(tmp_path / "typo.dcm"))  # fmt: skip
    assert missing.returncode == EXIT_USAGE
    assert "typo.dcm" in missing.stderr
    no_series = cli(data, "mpps", "complete", "PPS", uid)
    assert no_series.returncode == EXIT_USAGE  # argparse: --series-from is required
    add_node(data, "OTHER", "MPPSSCP", mpps.port)
    wrong_node = cli(data, "mpps", "complete", "OTHER", uid, "--series-from",
                     str(tmp_path / "images"))  # fmt: skip
    assert wrong_node.returncode == EXIT_USAGE
    assert "started on PPS" in wrong_node.stderr
    assert mpps.sets == []


# --- the SCP says no, or is not there --------------------------------------------------------


def test_create_refused(data: Path, mpps: StubMPPS) -> None:
    mpps.create_status = 0x0110
    mpps.error_comment = "RIS down for maintenance"
    result = cli(data, "mpps", "start", "PPS", "--worklist-node", "RIS", "--accession", "A1")
    assert result.returncode == EXIT_FAILED
    assert "0x0110" in result.stderr and "Processing Failure" in result.stderr
    assert "RIS down for maintenance" in result.stderr
    assert json.loads(cli(data, "mpps", "list", "--json").stdout) == []


def test_set_refused_then_retried(data: Path, mpps: StubMPPS, tmp_path: Path) -> None:
    uid = start(data, "--accession", "A1")["uid"]
    write_images(tmp_path / "images", STUDY_A1, series=1, per_series=1)
    mpps.set_status = 0x0106
    mpps.error_comment = "Invalid Attribute Value"
    args = ("mpps", "complete", "PPS", uid, "--series-from", str(tmp_path / "images"))
    refused = cli(data, *args)
    assert refused.returncode == EXIT_FAILED
    assert "0x0106" in refused.stderr
    # The step is still ours to finish.
    assert json.loads(cli(data, "mpps", "list", "--json").stdout)[0]["status"] == "IN PROGRESS"
    mpps.set_status = 0x0000
    retried = cli(data, *args)
    assert retried.returncode == EXIT_OK, retried.stderr
    assert json.loads(cli(data, "mpps", "list", "--json").stdout)[0]["status"] == "COMPLETED"


def test_warning_status(data: Path, mpps: StubMPPS) -> None:
    mpps.create_status = 0x0107
    result = cli(data, "mpps", "start", "PPS", "--worklist-node", "RIS", "--accession", "A1")
    assert result.returncode == EXIT_WARNINGS
    assert "0x0107" in result.stderr and "Attribute List Error" in result.stderr
    assert json.loads(cli(data, "mpps", "list", "--json").stdout)[0]["status"] == "IN PROGRESS"


def test_unreachable_node(data: Path, tmp_path: Path) -> None:
    add_node(data, "GONE", "NOBODY", free_port())
    result = cli(data, "mpps", "start", "GONE", "--worklist-node", "RIS", "--accession", "A1")
    assert result.returncode == EXIT_FAILED
    assert "cannot connect" in result.stderr
    unreachable_worklist = cli(data, "mpps", "start", "PPS", "--worklist-node", "GONE",
                               "--accession", "A1")  # fmt: skip
    assert unreachable_worklist.returncode == EXIT_FAILED
    assert "cannot connect" in unreachable_worklist.stderr


def test_complete_on_unreachable_node(data: Path, mpps: StubMPPS, tmp_path: Path) -> None:
    uid = start(data, "--accession", "A1")["uid"]
    write_images(tmp_path / "images", STUDY_A1, series=1, per_series=1)
    mpps.stop()
    result = cli(data, "mpps", "complete", "PPS", uid, "--series-from", str(tmp_path / "images"))
    assert result.returncode == EXIT_FAILED
    assert "cannot connect" in result.stderr


# --- the API ---------------------------------------------------------------------------------


def test_api_with_attributes(mpps: StubMPPS, tmp_path: Path) -> None:
    settings = Settings(ae_title="MODALITY")
    node = Node(name="PPS", ae_title="MPPSSCP", host=LOOPBACK, port=mpps.port)
    study = generate_uid()
    uid = worklist.mpps_create(
        settings,
        node,
        {
            "PatientName": "Ærøskøbing^Åse",
            "PatientID": "X1",
            "StudyInstanceUID": study,
            "AccessionNumber": "ACC9",
            "Modality": "MR",
        },
    )
    _, created = mpps.creates[0]
    assert created.PatientName == "Ærøskøbing^Åse"
    assert created.SpecificCharacterSet == "ISO_IR 100"
    assert created.ScheduledStepAttributesSequence[0].AccessionNumber == "ACC9"
    assert created.PerformedStationAETitle == "MODALITY"
    series = worklist.PerformedSeries(
        series_instance_uid=generate_uid(),
        protocol_name="BRAIN",
        performing_physician_name="Ōta^Ken",
        images=[("1.2.840.10008.5.1.4.1.1.4", generate_uid())],
    )
    worklist.mpps_set(settings, node, uid, worklist.COMPLETED, [series])
    _, changes = mpps.sets[0]
    assert changes.PerformedSeriesSequence[0].PerformingPhysicianName == "Ōta^Ken"
    assert changes.SpecificCharacterSet == "ISO_IR 192"
    with pytest.raises(ValueError, match="at least one performed series"):
        worklist.build_n_set(worklist.COMPLETED, [])
    with pytest.raises(worklist.WorkflowError) as refused:
        worklist.mpps_set(settings, node, generate_uid(), worklist.DISCONTINUED)
    assert refused.value.status == 0x0112
