"""`dicom-appliance worklist`: Modality Worklist C-FIND against DCMTK `wlmscpfs`."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from appliance import worklist
from appliance.config import ConfigError, Node, Settings
from tests.peers import LOOPBACK, free_port
from tests.workflow_helpers import (
    StubWorklistSCP,
    WorklistSCP,
    add_node,
    cli,
    worklist_item,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

TODAY = date.today()
YESTERDAY = TODAY - timedelta(days=1)
TOMORROW = TODAY + timedelta(days=1)


def ymd(day: date) -> str:
    return day.strftime("%Y%m%d")


# Names as a RIS stores them: Latin-1, UTF-8, and Japanese in ISO 2022 IR 87 with its
# alphabetic, ideographic and phonetic groups.
LATIN1_NAME = "Müller^Jürgen"
UTF8_NAME = "Ωmega^Ξenia"
JAPANESE_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"
JAPANESE_PHYSICIAN = "Sato^Hanako=佐藤^花子=さとう^はなこ"


def populate(scp: WorklistSCP) -> dict[str, Dataset]:
    items = {
        "doe": worklist_item(
            patient_name="DOE^JOHN", patient_id="P1", accession="A1", date=ymd(TODAY),
            time="083000", modality="CT", station_ae="CT01",
        ),
        "doe2": worklist_item(
            patient_name="DOE^JANE", patient_id="P2", accession="A2", date=ymd(TODAY),
            time="090000", modality="MR", station_ae="MR01",
        ),
        "smith": worklist_item(
            patient_name="SMITH^ANN", patient_id="P3", accession="A3", date=ymd(YESTERDAY),
            modality="CT", station_ae="CT01",
        ),
        "roe": worklist_item(
            patient_name="ROE^RICHARD", patient_id="P4", accession="A4", date=ymd(TOMORROW),
            modality="CT", station_ae="CT02",
        ),
        "latin1": worklist_item(
            patient_name=LATIN1_NAME, patient_id="P5", accession="A5", station_ae="CT09",
            date="20240110",
            charset="ISO_IR 100",
        ),
        "utf8": worklist_item(
            patient_name=UTF8_NAME, patient_id="P6", accession="A6", station_ae="CT09",
            date="20240111",
            charset="ISO_IR 192",
        ),
        "japanese": worklist_item(
            patient_name=JAPANESE_NAME, patient_id="P7", accession="A7", station_ae="CT09",
            date="20240112",
            charset=["", "ISO 2022 IR 87"], performing_physician=JAPANESE_PHYSICIAN,
        ),
    }  # fmt: skip
    for name, ds in items.items():
        scp.add(name, ds)
    return items


@pytest.fixture
def wlm(tmp_path: Path) -> Iterator[WorklistSCP]:
    scp = WorklistSCP(tmp_path / "wlm")
    populate(scp)
    yield scp
    scp.stop()


@pytest.fixture
def data(tmp_path: Path, wlm: WorklistSCP) -> Path:
    folder = tmp_path / "data"
    add_node(folder, "RIS", wlm.ae_title, wlm.port)
    return folder


def query(data_dir: Path, *args: str) -> dict:
    result = cli(data_dir, "worklist", "RIS", *args, "--json")
    assert result.returncode == EXIT_OK, result.stderr + result.stdout
    return json.loads(result.stdout)


def accessions(answer: dict) -> list[str]:
    return [item["accession_number"] for item in answer["items"]]


# --- against wlmscpfs ------------------------------------------------------------------------


def test_today(data: Path) -> None:
    answer = query(data, "--date", "today")
    assert answer["status"] == "0x0000"
    # Sorted by scheduled start: 08:30 before 09:00.
    assert accessions(answer) == ["A1", "A2"]
    item = answer["items"][0]
    assert item["patient_name"] == "DOE^JOHN"
    assert item["patient_id"] == "P1"
    assert item["patient_birth_date"] == "19700101"
    assert item["patient_sex"] == "M"
    assert item["scheduled_procedure_step_start_date"] == ymd(TODAY)
    assert item["scheduled_procedure_step_start_time"] == "083000"
    assert item["modality"] == "CT"
    assert item["scheduled_station_ae_title"] == "CT01"
    assert item["scheduled_performing_physician_name"] == "PERF^DOC"
    assert item["scheduled_procedure_step_description"] == "CT CHEST W/O CONTRAST"
    assert item["scheduled_procedure_step_id"] == "SPSA1"
    assert item["scheduled_protocol_codes"] == [
        {"code_value": "P-CHEST", "coding_scheme": "LOCAL", "meaning": "Chest routine"}
    ]
    assert item["requested_procedure_id"] == "RPA1"
    assert item["requested_procedure_description"] == "CT CHEST"
    assert item["requested_procedure_codes"][0]["code_value"] == "CTCHEST"
    assert item["referring_physician_name"] == "REF^DOC"
    assert item["study_instance_uid"]
    assert answer["optional_keys_unsupported"] is False


def test_date_single_and_ranges(data: Path) -> None:
    assert accessions(query(data, "--date", ymd(YESTERDAY))) == ["A3"]
    assert accessions(query(data, "--date", f"{ymd(YESTERDAY)}-{ymd(TODAY)}")) == [
        "A3", "A1", "A2",
    ]  # fmt: skip
    assert accessions(query(data, "--date", "today-")) == ["A1", "A2", "A4"]
    assert accessions(query(data, "--date", "-20240111")) == ["A5", "A6"]
    assert accessions(query(data, "--date", "tomorrow")) == ["A4"]


def test_modality_and_station(data: Path) -> None:
    assert accessions(query(data, "--date", "today", "--modality", "MR")) == ["A2"]
    assert accessions(query(data, "--station-ae", "CT01")) == ["A3", "A1"]
    assert accessions(query(data, "--station-ae", "CT02", "--modality", "CT")) == ["A4"]


def test_patient_name_wildcards_id_and_accession(data: Path) -> None:
    assert sorted(accessions(query(data, "--patient-name", "DOE*"))) == ["A1", "A2"]
    assert accessions(query(data, "--patient-name", "DOE^J?NE")) == ["A2"]
    assert accessions(query(data, "--patient-id", "P3")) == ["A3"]
    assert accessions(query(data, "--accession", "A4")) == ["A4"]
    assert accessions(query(data, "--patient-name", "NOBODY*")) == []


def test_latin1_name(data: Path) -> None:
    # The query value goes out in ISO_IR 100, the bytes the RIS stored, so it matches.
    answer = query(data, "--patient-name", "Müller*")
    assert accessions(answer) == ["A5"]
    item = answer["items"][0]
    assert item["patient_name"] == LATIN1_NAME
    assert item["specific_character_set"] == ["ISO_IR 100"]


def test_utf8_name(data: Path) -> None:
    answer = query(data, "--patient-name", "Ωmega*")
    assert accessions(answer) == ["A6"]
    assert answer["items"][0]["patient_name"] == UTF8_NAME


def test_japanese_name(data: Path) -> None:
    # wlmscpfs matches bytes and refuses escape sequences in a query (A900), so the
    # patient is found by the alphabetic group; the answer must decode every group, in the
    # sequence items too.
    answer = query(data, "--patient-name", "Yamada*")
    assert accessions(answer) == ["A7"]
    item = answer["items"][0]
    assert item["patient_name"] == JAPANESE_NAME
    assert item["scheduled_performing_physician_name"] == JAPANESE_PHYSICIAN
    assert item["specific_character_set"] == ["", "ISO 2022 IR 87"]


def test_table_output(data: Path) -> None:
    result = cli(data, "worklist", "RIS", "--date", "20240101-20240131")
    assert result.returncode == EXIT_OK, result.stderr
    lines = result.stdout.splitlines()
    assert "3 scheduled procedure step(s)" in lines[0]
    header = lines[1]
    for title in ("DATE", "TIME", "MOD", "STATION AE", "PATIENT NAME", "ACCESSION", "SPS ID"):
        assert title in header
    assert any(LATIN1_NAME in line for line in lines)
    assert any(JAPANESE_NAME in line for line in lines)
    # Columns line up in terminal cells, double-width kanji included.
    start = header.index("PATIENT ID")
    width = worklist._width
    for line in lines[2:]:
        patient = next(n for n in (LATIN1_NAME, UTF8_NAME, JAPANESE_NAME) if n in line)
        prefix = line[: line.index(patient) + len(patient)]
        rest = line[len(prefix) :]
        assert width(prefix) + len(rest) - len(rest.lstrip()) == start


def test_answers_without_character_set(tmp_path: Path) -> None:
    # wlmscpfs by default drops Specific Character Set from its answers; --charset says what
    # the node's text is.
    scp = WorklistSCP(tmp_path / "wlm", extra=())
    try:
        scp.add("utf8", worklist_item(patient_name=UTF8_NAME, charset="ISO_IR 192"))
        data = tmp_path / "data"
        add_node(data, "RIS", scp.ae_title, scp.port)
        answer = query(data, "--charset", "ISO_IR 192")
        assert answer["items"][0]["patient_name"] == UTF8_NAME
        assert answer["items"][0]["specific_character_set"] == ["ISO_IR 192"]
    finally:
        scp.stop()


# --- errors ----------------------------------------------------------------------------------


def test_unreachable_node(tmp_path: Path) -> None:
    data = tmp_path / "data"
    add_node(data, "RIS", "NOBODY", free_port())
    result = cli(data, "worklist", "RIS", "--date", "today")
    assert result.returncode == EXIT_FAILED
    assert "cannot connect" in result.stderr


def test_failure_status(tmp_path: Path) -> None:
    stub = StubWorklistSCP([worklist_item(accession="A1")], final_status=0xC001)
    try:
        data = tmp_path / "data"
        add_node(data, "RIS", "STUBMWL", stub.port)
        result = cli(data, "worklist", "RIS", "--json")
        assert result.returncode == EXIT_FAILED
        assert "0xC001" in result.stderr
        assert "worklist database unavailable" in result.stderr
        # What came before the failure is still shown.
        answer = json.loads(result.stdout)
        assert answer["ok"] is False and accessions(answer) == ["A1"]
    finally:
        stub.stop()


def test_usage_errors(data: Path) -> None:
    bad_date = cli(data, "worklist", "RIS", "--date", "2024-13")
    assert bad_date.returncode == EXIT_USAGE
    assert "--date" in bad_date.stderr
    bad_charset = cli(data, "worklist", "RIS", "--charset", "ISO_IR100")
    assert bad_charset.returncode == EXIT_USAGE
    assert "--charset" in bad_charset.stderr
    unknown = cli(data, "worklist", "NOSUCH")
    assert unknown.returncode == EXIT_USAGE
    assert "NOSUCH" in unknown.stderr


# --- the identifier we send, and answers with several steps -----------------------------------


def test_identifier_keys_and_multi_step_answers(tmp_path: Path) -> None:
    answer = worklist_item(accession="A9")
    second = copy.deepcopy(answer.ScheduledProcedureStepSequence[0])
    second.ScheduledProcedureStepID = "SPS-B"
    second.Modality = "MR"
    answer.ScheduledProcedureStepSequence.append(second)
    stub = StubWorklistSCP([answer])
    try:
        node = Node(name="RIS", ae_title="STUBMWL", host=LOOPBACK, port=stub.port)
        query = worklist.WorklistQuery(
            date="20240101-20240131", modality="CT", station_ae="CT01", patient_name="DOE*"
        )
        result = worklist.find_worklist(Settings(ae_title="MODALITY"), node, query)
    finally:
        stub.stop()
    assert result.ok, result.error
    # One row per scheduled procedure step.
    assert [i.as_dict()["scheduled_procedure_step_id"] for i in result.items] == [
        "SPSA9", "SPS-B",
    ]  # fmt: skip
    sent = stub.queries[0]
    assert sent.PatientName == "DOE*"
    step = sent.ScheduledProcedureStepSequence[0]
    assert step.ScheduledProcedureStepStartDate == "20240101-20240131"
    assert step.Modality == "CT"
    assert step.ScheduledStationAETitle == "CT01"
    for keyword in (
        "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyInstanceUID",
        "RequestedProcedureID", "RequestedProcedureDescription", "ReferringPhysicianName",
    ):  # fmt: skip
        assert keyword in sent, keyword
    for keyword in (
        "ScheduledProcedureStepStartTime", "ScheduledPerformingPhysicianName",
        "ScheduledProcedureStepDescription", "ScheduledProcedureStepID",
        "ScheduledProtocolCodeSequence",
    ):  # fmt: skip
        assert keyword in step, keyword
    # Plain ASCII query: no Specific Character Set.
    assert "SpecificCharacterSet" not in sent


def test_date_matching_values() -> None:
    today = date(2024, 2, 29)
    assert worklist.date_matching_value("today", today) == "20240229"
    assert worklist.date_matching_value("yesterday-tomorrow", today) == "20240228-20240301"
    assert worklist.date_matching_value("20240101-", today) == "20240101-"
    assert worklist.date_matching_value("-20240131", today) == "-20240131"
    for bad in ("2024", "20240230", "-", "20240201-20240101", "today-x"):
        with pytest.raises(ConfigError):
            worklist.date_matching_value(bad, today)


def test_query_character_set_choice() -> None:
    assert worklist.choose_charset(["DOE*"]) is None
    assert worklist.choose_charset(["Müller*"]) == "ISO_IR 100"
    assert worklist.choose_charset(["Ωmega*"]) == "ISO_IR 192"
    assert worklist.choose_charset(["Müller*"], "ISO_IR 192") == "ISO_IR 192"
    assert worklist.choose_charset(["山田*"], "\\ISO 2022 IR 87") == ["", "ISO 2022 IR 87"]
