"""The console's anonymize dialog against a real daemon.

Studies are stored with DCMTK storescu: a CT study, and a US study whose image may carry
burned-in text (Burned In Annotation absent), which the daemon holds until the operator looks
at it (the daemon renders it to a PNG) and ticks it. The anonymized copy is sent to DCMTK
storescp, and what arrives there is read back.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid
from textual.widgets import Checkbox, DataTable, Input, Select

from appliance.config import AnonProfileConfig, ConfigStore, Node
from console.client import ApplianceClient
from console.screens.anonymize_dialog import (
    AnonymizeDialog,
    AnonymizeValues,
    action_text,
    build_anonymize_request,
    held_label,
    held_note,
    held_of,
    preview_rows,
    profile_text,
    queued_text,
    value_text,
)
from console.screens.film_composer import FormError
from console.screens.jobs import KIND_FILTERS, JobDetailScreen
from console.screens.studies import StudiesScreen
from console.widgets import NodePickerModal
from tests.factories import write_ct_series
from tests.peers import LOOPBACK
from tests.scp_helpers import storescu
from tests.test_console_print import text_of, wait_job, wait_until
from tests.test_console_screens import ScreenHost


class JobsHost(ScreenHost):
    """The job detail needs the app's time format."""

    def format_time(self, seconds: float | None, with_date: bool = False) -> str:
        return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds else ""


FAST_RETRY = {"retry_first_delay": 1, "retry_multiplier": 2, "retry_max_delay": 2}
FINAL = {"succeeded", "failed", "partially-failed", "cancelled"}


def write_us_image(folder: Path, *, study_uid: str | None = None) -> Path:
    """An ultrasound image of DOE^JOHN without Burned In Annotation: text may be in the pixels
    (here a bright band where a scanner writes the name)."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = "DOE^JOHN"
    ds.PatientID = "PAT001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = "20240116"
    ds.StudyTime = "090000"
    ds.AccessionNumber = "ACC002"
    ds.StudyID = "2"
    ds.ReferringPhysicianName = "REF^DOC"
    ds.StudyDescription = "US ABDOMEN"
    ds.Modality = "US"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 32
    ds.Columns = 48
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    pixels = np.full((32, 48), 40, dtype=np.uint8)
    pixels[2:6, 4:40] = 255  # where the scanner burns in the patient's name
    ds.PixelData = pixels.tobytes()
    path = folder / "us0001.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def store(daemon: Any, files: list[Path]) -> str:
    result = storescu(daemon, files)
    assert result.returncode == 0, result.stdout + result.stderr
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture
def anon_daemon(daemon_factory: Any, storescp: Any) -> Any:
    """A daemon with a node "pacs" (DCMTK storescp) and a site profile "research"."""
    daemon = daemon_factory(**FAST_RETRY)
    config = ConfigStore(daemon.data_dir)
    config.add_node(
        Node(name="pacs", ae_title=storescp.ae_title, host=LOOPBACK, port=storescp.port)
    )
    config.add_anon_profile(
        AnonProfileConfig(
            name="research",
            options=["retain_long_full_dates", "clean_descriptors"],
            overrides={"StudyDescription": "keep"},
            patient_id_pattern="TRIAL{n:04d}",
            project="trial7",
        )
    )
    return daemon.start()


# --- pure parts -------------------------------------------------------------------------------

STUDY = {"study_uid": "1.2.3", "patient_id": "PAT001", "patient_name": "DOE^JOHN"}
PROFILES = [{"name": "basic", "options": []}, {"name": "research", "options": ["retain_uids"]}]
NODES = [
    {"name": "pacs", "services": ["store", "find"]},
    {"name": "worklist", "services": ["find"]},
]


def test_request_is_checked_with_the_field_it_is_about() -> None:
    values = AnonymizeValues(profile="basic")
    assert build_anonymize_request(values, [STUDY], profiles=PROFILES, nodes=NODES) == {
        "profile": "basic",
        "study_uids": ["1.2.3"],
    }
    full = AnonymizeValues(
        profile=" research ",
        send="pacs",
        burn="stdio:/srv/discs/anon.iso",
        confirm_pixels=["1.2.3.4"],
    )
    assert build_anonymize_request(full, [STUDY], profiles=PROFILES, nodes=NODES) == {
        "profile": "research",
        "study_uids": ["1.2.3"],
        "send": "pacs",
        "burn": "stdio:/srv/discs/anon.iso",
        "confirm_pixels": ["1.2.3.4"],
    }
    # Nodes and profiles not known (the daemon did not answer): the daemon checks alone.
    assert build_anonymize_request(AnonymizeValues(profile="x", send="y"), [STUDY])["send"] == "y"
    refusals = {
        "studies": (values, []),
        "profile": (AnonymizeValues(profile=""), [STUDY]),
        "send": (AnonymizeValues(profile="basic", send="worklist"), [STUDY]),
        "burn": (AnonymizeValues(profile="basic", burn="stdio:anon.iso"), [STUDY]),
    }
    for field, (given, studies) in refusals.items():
        with pytest.raises(FormError) as caught:
            build_anonymize_request(given, studies, profiles=PROFILES, nodes=NODES)
        assert caught.value.field == field
    with pytest.raises(FormError, match="no profile gone"):
        build_anonymize_request(AnonymizeValues(profile="gone"), [STUDY], profiles=PROFILES)
    with pytest.raises(FormError, match="no node nowhere"):
        build_anonymize_request(
            AnonymizeValues(profile="basic", send="nowhere"), [STUDY], nodes=NODES
        )
    # A disc holds one patient: two patients' studies cannot be burned on one.
    other = {**STUDY, "study_uid": "9.9", "patient_id": "OTHER"}
    with pytest.raises(FormError) as caught:
        build_anonymize_request(
            AnonymizeValues(profile="basic", burn="/dev/sr0"), [STUDY, other], profiles=PROFILES
        )
    assert caught.value.field == "burn" and "2 patients" in caught.value.message


def test_preview_and_held_answers_are_read_leniently() -> None:
    answer = {
        "instance": "1.2.3.4.1",
        "rows": [
            {"tag": "(0010,0010)", "keyword": "PatientName", "original": "DOE^JOHN",
             "action": "replace", "result": "ANONYMOUS^000001"},
            {"tag": "(0008,0080)", "keyword": "", "original": "x" * 40, "action": "X",
             "result": None},
            {"tag": "(0010,0030)", "keyword": "PatientBirthDate", "original": "19700101",
             "action": "Z", "result": ""},
            {"tag": "(0008,0060)", "keyword": "ImageType", "original": ["A", "B"],
             "action": "K", "result": ["A", "B"]},
        ],
        "held": "US without Burned In Annotation",
        "held_instances": [
            {"instance": "1.2.3.4.1", "modality": "US", "reason": "US without Burned In"},
            {"instance": "1.2.3.4.2", "modality": "US", "reason": "second"},
        ],
    }  # fmt: skip
    rows = preview_rows(answer)
    assert rows[0] == ("PatientName", "DOE^JOHN", "replace", "ANONYMOUS^000001")
    assert rows[1][0] == "(0008,0080)" and rows[1][1].endswith("…") and len(rows[1][1]) == 17
    assert rows[1][2:] == ("remove", "-")
    assert rows[2][2:] == ("empty", '""')
    assert rows[3][1] == "A\\B" and rows[3][2] == "keep"
    held = held_of(answer, "1.2.3")
    assert [(h["sop_instance_uid"], h["reason"]) for h in held] == [
        ("1.2.3.4.1", "US without Burned In"),
        ("1.2.3.4.2", "second"),
    ]
    assert held[0]["study_uid"] == "1.2.3"
    # An instance's preview says only its own reason.
    only = held_of({"instance": "5.6", "held": "XA: burned-in text possible", "rows": []})
    assert only == [
        {"study_uid": "", "sop_instance_uid": "5.6", "reason": "XA: burned-in text possible"}
    ]
    assert held_of({"instance": "5.6", "held": None}) == []
    assert held_label({"sop_instance_uid": "5.6", "modality": "US"}) == "US 5.6"
    long_uid = "1.2.826.0.1.3680043.8.498.123456789012345678901234567890"
    assert held_label({"sop_instance_uid": long_uid}) == "…" + long_uid[-27:]
    assert held_note({"reason": "held: why"}) == "why"
    assert held_note({"reason": "why"}, "/data/previews/p.png") == "why\n/data/previews/p.png"
    assert action_text("X") == "remove" and action_text("u") == "new UID"
    assert action_text("replace") == "replace" and action_text("shift dates") == "shift dates"
    assert value_text(None, 5) == "-" and value_text("a\nb", 5) == "a b"
    assert profile_text({"name": "basic", "options": []}) == "Basic Profile, no options"
    assert profile_text(
        {
            "name": "research",
            "description": "trial 7",
            "options": ["retain_uids", "clean_descriptors"],
            "overrides": {"StudyDescription": "keep"},
            "patient_id_pattern": "TRIAL{n:04d}",
            "project": "trial7",
        }
    ) == (
        "trial 7; Basic Profile + UIDs kept, clean descriptors; 1 override; ID TRIAL{n:04d}; "
        "project trial7"
    )
    job = {"id": 7, "params": {"profile": "basic", "send": "pacs", "burn": "/dev/sr0"}}
    assert queued_text(job) == (
        "queued anonymize job #7 (profile basic), then send to pacs and burn on /dev/sr0"
    )
    assert queued_text({"id": 8, "params": {"profile": "basic"}}) == (
        "queued anonymize job #8 (profile basic)"
    )
    assert "anonymize" in KIND_FILTERS


# --- against the daemon -----------------------------------------------------------------------


async def wait_for_files(storescp: Any, count: int, timeout: float = 60) -> list[Path]:
    deadline = time.monotonic() + timeout
    while len(files := storescp.files()) < count:
        assert time.monotonic() < deadline, files
        await asyncio.sleep(0.2)
    return list(files)


async def test_anonymize_from_the_studies_screen_releases_a_held_image_and_sends_the_copy(
    anon_daemon: Any, storescp: Any, tmp_path: Path
) -> None:
    ct = store(anon_daemon, write_ct_series(tmp_path / "ct", 2, rows=16, columns=16))
    us_file = write_us_image(tmp_path / "us")
    us = store(anon_daemon, [us_file])
    us_instance = str(pydicom.dcmread(us_file, stop_before_pixels=True).SOPInstanceUID)
    client = ApplianceClient.for_data_dir(anon_daemon.data_dir)
    app = ScreenHost(client, StudiesScreen())
    async with app.run_test(size=(110, 40)) as pilot:
        studies = app.screen
        table = studies.query_one("#studies-table", DataTable)
        await wait_until(pilot, lambda: table.row_count == 2)
        table.focus()
        table.move_cursor(row=0)
        await pilot.press("space", "space")  # both studies, of one patient
        await pilot.press("a")
        dialog = await wait_until(
            pilot, lambda: isinstance(app.screen, AnonymizeDialog) and app.screen
        )
        assert text_of(dialog, "#anon-title") == "Anonymize 2 studies (1 patient)"

        # The profiles: basic (built in) first, then the site's; basic's preview is shown.
        select = dialog.query_one("#anon-profile", Select)
        await wait_until(pilot, lambda: dialog.previewed == "basic")
        assert [p["name"] for p in dialog.profiles or []] == ["basic", "research"]
        assert text_of(dialog, "#anon-profile-note").endswith("Basic Profile, no options")
        preview = dialog.query_one("#anon-preview", DataTable)
        rows = {
            str(preview.get_row_at(i)[0]): preview.get_row_at(i) for i in range(preview.row_count)
        }
        name = rows["PatientName"]
        assert str(name[1]) == "DOE^JOHN" and str(name[3]) not in ("DOE^JOHN", "-")
        assert str(rows["PatientID"][1]) == "PAT001"
        assert str(rows["StudyInstanceUID"][2]) == "new UID" or str(
            rows["StudyInstanceUID"][3]
        ).startswith("2.25.")
        assert str(rows["PatientBirthDate"][1]) == "19700101"

        # The US image is held: one checkbox, not ticked.
        await wait_until(pilot, lambda: len(dialog.held) == 1)
        assert dialog.held[0]["sop_instance_uid"] == us_instance
        assert dialog.held[0]["study_uid"] == us
        box = dialog.query_one("#anon-held-0", Checkbox)
        assert not box.value and str(box.label).startswith("US ")
        assert "Burned In Annotation" in text_of(dialog, "#anon-held-note-0")
        assert "1 held image" in text_of(dialog, "#anon-message")

        # The research profile: dates kept, its own ID pattern; the ticks stay across.
        select.value = "research"
        await wait_until(pilot, lambda: dialog.previewed == "research")
        note = text_of(dialog, "#anon-profile-note")
        assert "full dates" in note and "ID TRIAL{n:04d}" in note and "project trial7" in note
        rows = {
            str(preview.get_row_at(i)[0]): preview.get_row_at(i) for i in range(preview.row_count)
        }
        assert str(rows["PatientID"][3]).startswith("TRIAL")
        select.value = "basic"
        await wait_until(pilot, lambda: dialog.previewed == "basic")

        # The daemon renders the held image to a PNG; its path is shown beside the checkbox.
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: us_instance in dialog.pngs)
        png = Path(dialog.pngs[us_instance])
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert text_of(dialog, "#anon-held-note-0").endswith(str(png))
        box = dialog.query_one("#anon-held-0", Checkbox)

        # Checked here: a node that is not there.
        dialog.query_one("#anon-send", Input).value = "nowhere"
        await pilot.press("ctrl+s")
        assert "no node nowhere" in text_of(dialog, "#anon-send-error")
        # ctrl+n lists the nodes that take sends.
        await pilot.press("ctrl+n")
        picker = await wait_until(
            pilot, lambda: isinstance(app.screen, NodePickerModal) and app.screen
        )
        assert [n["name"] for n in picker.nodes] == ["pacs"]
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen is dialog)
        assert dialog.query_one("#anon-send", Input).value == "pacs"

        # And a disc image of the copy (a file-backed drive).
        iso = tmp_path / "anon.iso"
        dialog.query_one("#anon-burn", Input).value = f"stdio:{iso}"
        box.value = True  # looked at: released
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.screen is studies)
        text = await wait_until(
            pilot,
            lambda: (
                "queued anonymize job" in text_of(studies, "#studies-message")
                and text_of(studies, "#studies-message")
            ),
        )
        job_id = int(text.split("#")[1].split()[0])
        assert text == (
            f"queued anonymize job #{job_id} (profile basic), then send to pacs and burn on "
            f"stdio:{iso}"
        )
    job = wait_job(client, job_id, FINAL, timeout=120)
    assert job["state"] == "succeeded", job
    assert job["kind"] == "anonymize" and job["target"] == "archive"
    assert sorted(job["params"]["study_uids"]) == sorted([ct, us])
    assert job["params"]["confirm_pixels"] == [us_instance]
    assert job["counts"]["success"] == 3
    # The copies reach the node, without the patient's name or ID.
    files = await wait_for_files(storescp, 3)
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.PatientName != "DOE^JOHN" and ds.PatientID != "PAT001"
        assert ds.StudyInstanceUID not in (ct, us)
        assert ds.PatientIdentityRemoved == "YES"
    copies = sorted({str(pydicom.dcmread(path).StudyInstanceUID) for path in files})
    assert sorted(job["summary"]["anonymized"].values()) == copies
    # The burn of the copies (one pseudonym: one patient, one disc) follows.
    burns = client.jobs(kinds=["burn"])
    assert len(burns) == 1 and burns[0]["target"] == f"stdio:{iso}"
    burn = wait_job(client, int(burns[0]["id"]), FINAL, timeout=120)
    assert burn["state"] == "succeeded", burn
    assert sorted(burn["params"]["study_uids"]) == copies
    assert iso.stat().st_size > 0
    client.close()


async def test_a_held_image_not_ticked_stays_out_and_the_job_says_why(
    anon_daemon: Any, tmp_path: Path
) -> None:
    us_file = write_us_image(tmp_path / "us")
    us = store(anon_daemon, [us_file])
    client = ApplianceClient.for_data_dir(anon_daemon.data_dir)
    row = next(s for s in client.studies() if s["study_uid"] == us)
    dialog = AnonymizeDialog([row])
    app = ScreenHost(client, dialog)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: dialog.previewed == "basic" and dialog.held)
        await wait_until(pilot, lambda: dialog.query("#anon-held-0"))
        assert str(dialog.query_one("#anon-held-0", Checkbox).label).startswith("US ")
        # Checked here: a disc image needs an absolute path.
        dialog.query_one("#anon-burn", Input).value = "stdio:anon.iso"
        await pilot.press("ctrl+s")
        assert "absolute path" in text_of(dialog, "#anon-burn-error")
        dialog.query_one("#anon-burn", Input).value = ""
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.screen is not dialog)
    jobs = client.jobs(kinds=["anonymize"])
    assert len(jobs) == 1
    job = wait_job(client, int(jobs[0]["id"]), FINAL, timeout=120)
    assert job["state"] in ("failed", "partially-failed"), job
    (instance,) = job["instances"]
    assert instance["status"] == "failed" and instance["error"].startswith("held: ")
    assert "confirm_pixels" not in job["params"]

    # Its detail on the Jobs screen: anonymized into the archive, the held image and why.
    detail = JobDetailScreen(int(job["id"]))
    app = JobsHost(client, detail)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: "anonymize to archive" in text_of(detail, "#summary"))
        assert "0 anonymized" in text_of(detail, "#summary")
        table = detail.query_one("#instances", DataTable)
        await wait_until(pilot, lambda: table.row_count == 1)
        assert str(table.get_cell_at((0, 4))).startswith("held: ")
    client.close()


async def test_the_daemons_refusal_shows_in_the_dialog(anon_daemon: Any) -> None:
    """A study the archive does not hold: the preview and the submit say so."""
    client = ApplianceClient.for_data_dir(anon_daemon.data_dir)
    dialog = AnonymizeDialog([{**STUDY, "study_uid": "1.2.3.4.5"}])
    app = ScreenHost(client, dialog)
    async with app.run_test(size=(90, 30)) as pilot:
        await wait_until(pilot, lambda: "1.2.3.4.5" in text_of(dialog, "#anon-message"))
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: "1.2.3.4.5" in text_of(dialog, "#anon-message"))
        assert app.screen is dialog and not dialog.busy
        assert client.jobs(kinds=["anonymize"]) == []
    client.close()
