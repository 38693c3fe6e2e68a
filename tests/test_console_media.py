"""The console's Media screen, burn dialog and import flow against a real daemon.

Studies are stored with DCMTK storescu. Burns go to a file-backed drive (``stdio:`` target in
tmp_path) and the disc image is checked with xorriso; the import reads a folder of real Part 10
files written here. The optical drives are the one thing not real: their states come from the
recorded udev property sets in ``tests/udev_fixtures`` (through the drive layer's own parser)
and reach the screen as the ``drive`` events the daemon would send.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from textual.widgets import DataTable, Input, OptionList

from appliance.drives import DriveWatcher, RecordedSource, drive_from_udev
from appliance.events import EventBus
from console.app import ConsoleApp
from console.client import ApplianceClient
from console.screens.burn_dialog import BurnDialog, BurnValues, build_burn_request
from console.screens.film_composer import FormError
from console.screens.media import (
    MediaJobDetailScreen,
    MediaScreen,
    drive_text,
    size_text,
    waiting_text,
)
from console.screens.media_import import (
    ImportScreen,
    MapPatientModal,
    NewPatientModal,
    choice_text,
    match_text,
    new_choice,
    problems_of,
    reconcile_request,
    scan_summary,
)
from console.screens.studies import StudiesScreen
from console.widgets import ConfirmModal, HelpModal
from tests.factories import write_ct_series
from tests.scp_helpers import storescu
from tests.test_console_print import text_of, wait_job, wait_until
from tests.test_console_screens import ScreenHost

UDEV = Path(__file__).parent / "udev_fixtures"
FAST_RETRY = {"retry_first_delay": 1, "retry_multiplier": 2, "retry_max_delay": 2}
FINAL = {"succeeded", "failed", "partially-failed", "cancelled"}
XORRISO = "/usr/bin/xorriso"


def recorded_drive(name: str) -> dict[str, Any]:
    """The drive as the last step of a recorded udev sequence leaves it."""
    record = json.loads((UDEV / f"{name}.json").read_text())
    steps = record.get("steps") or []
    properties = steps[-1]["properties"] if steps else record["initial"][-1]
    drive = drive_from_udev(properties, now=1767265000.0)
    assert drive is not None, name
    return drive.as_dict()


def drive_event(drive: dict[str, Any]) -> dict[str, Any]:
    return {"topic": "drive", "time": drive["updated"], "data": drive}


class RecordedDriveEvents:
    """The daemon's drive watcher fed with recorded udev sequences: the ``drive`` events it
    publishes, as the console receives them."""

    def __init__(self) -> None:
        self.bus = EventBus()
        self.subscription = self.bus.subscribe({"drive"})
        self.source = RecordedSource()
        self.watcher = DriveWatcher(self.bus, debounce=0, source=self.source)
        self.watcher.start()

    def play(self, name: str) -> list[dict[str, Any]]:
        record = json.loads((UDEV / f"{name}.json").read_text())
        for step in record.get("steps") or []:
            self.source.play(step["action"], step["properties"])
        self.watcher.settle()
        events = []
        while (event := self.subscription.get(timeout=0)) is not None:
            events.append(event.as_dict())
        return events

    def stop(self) -> None:
        self.watcher.stop()


def store_study(daemon: Any, folder: Path, count: int, **keys: Any) -> str:
    files = write_ct_series(folder, count, rows=16, columns=16, **keys)
    result = storescu(daemon, files)
    assert result.returncode == 0, result.stdout + result.stderr
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def iso_files(iso: Path) -> list[str]:
    """The paths on a disc image, as xorriso lists them."""
    result = subprocess.run(
        [XORRISO, "-indev", str(iso), "-find", "/", "-type", "f"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return sorted(line.strip().strip("'") for line in result.stdout.splitlines() if line.strip())


@pytest.fixture
def media_daemon(daemon_factory: Any) -> Any:
    return daemon_factory(**FAST_RETRY).start()


# --- pure parts -------------------------------------------------------------------------------

STUDY = {"study_uid": "1.2.3", "patient_id": "PAT001", "patient_name": "DOE^JOHN"}


def test_burn_request_is_checked_with_the_field_it_is_about() -> None:
    drives = [recorded_drive("insert_blank_cdr")]
    blank = drives[0]["device"]
    written = {**recorded_drive("insert_closed_data"), "device": "/dev/sr1"}
    assert build_burn_request(BurnValues(drive=blank), [STUDY], drives) == {
        "drive": blank,
        "study_uids": ["1.2.3"],
        "label": True,
    }
    request = build_burn_request(
        BurnValues(drive="stdio:/srv/discs/doe.iso", capacity="650 MB", label=False), [STUDY], []
    )
    assert request == {
        "drive": "stdio:/srv/discs/doe.iso",
        "study_uids": ["1.2.3"],
        "capacity_bytes": 650_000_000,
        "label": False,
    }
    refusals = {
        "studies": (BurnValues(drive=blank), [STUDY, {**STUDY, "patient_id": "OTHER"}]),
        "drive": (BurnValues(drive="stdio:disc.iso"), [STUDY]),
        "capacity": (BurnValues(drive=blank, capacity="0"), [STUDY]),
    }
    for field, (values, studies) in refusals.items():
        with pytest.raises(FormError) as caught:
            build_burn_request(values, studies, drives)
        assert caught.value.field == field
    with pytest.raises(FormError, match="holds a written disc"):
        build_burn_request(BurnValues(drive="/dev/sr1"), [STUDY], [*drives, written])
    with pytest.raises(FormError, match="a device"):
        build_burn_request(BurnValues(drive="sr0"), [STUDY], drives)
    with pytest.raises(FormError, match="choose a drive"):
        build_burn_request(BurnValues(drive=" "), [STUDY], drives)


def test_drive_and_job_lines_say_what_the_operator_needs() -> None:
    blank = recorded_drive("insert_blank_cdr")
    assert blank["state"] == "blank-cd"
    assert drive_text(blank).startswith(f"{blank['device']}  blank CD  CD-R")
    data = recorded_drive("insert_closed_data")
    assert "data disc" in drive_text(data)
    assert size_text(700_000_000) == "700 MB" and size_text(4_700_000_000) == "4.7 GB"
    assert size_text(None) == ""
    running = {"state": "running", "kind": "burn", "stage": "verifying disc 1 of 2"}
    assert waiting_text({**running, "progress": {"percent": 40}}, str) == (
        "verifying disc 1 of 2 40%"
    )
    # The stage's own percent is not repeated.
    writing = {**running, "stage": "writing disc 1 of 1: 45%", "progress": {"percent": 50}}
    assert waiting_text(writing, str) == "writing disc 1 of 1: 45%"
    held = {"state": "waiting-retry", "error": "insert a blank disc for disc 2 of 2"}
    assert waiting_text({**held, "next_retry": 5.0}, lambda t: "10:00:05") == (
        "retry 10:00:05: insert a blank disc for disc 2 of 2"
    )


def test_scan_answers_and_choices_are_read_leniently() -> None:
    scan = {
        "dicomdir": "missing",
        "fileset_id": "",
        "files": 5,
        "importable": 4,
        "patients": [{"patient_id": "A", "name": "X^Y", "studies": [{"uid": "1"}]}],
        "problems": ["cut.dcm: truncated", {"path": "../x", "problem": "outside the disc"}],
    }
    assert scan_summary(scan, "/media/disc") == (
        "/media/disc: 1 patient, 1 study, 5 files (4 importable), no DICOMDIR: every file read"
    )
    assert problems_of(scan) == ["cut.dcm: truncated", "../x: outside the disc"]
    match = {"patient_id": "P1", "patient_name": "X^Y", "birth_date": "19700101", "match": "id"}
    assert match_text(match) == "P1 X^Y 1970-01-01 (same ID)"
    choices = {
        "A": {"action": "map", "patient_id": "P1", "_name": "X^Y"},
        "B": new_choice(" NEW-1 ", "ROE^R"),
        "C": {"action": "keep"},
    }
    assert [choice_text(c) for c in choices.values()] == [
        "map to P1 X^Y",
        "new: NEW-1 ROE^R",
        "keep as on the disc",
    ]
    assert reconcile_request(choices) == {
        "A": {"action": "map", "patient_id": "P1"},
        "B": {"action": "new", "patient_id": "NEW-1", "patient_name": "ROE^R"},
        "C": {"action": "keep"},
    }
    for patient_id, name, field in (("", "N", "id"), ("ID", "A\\B", "name"), ("x" * 65, "N", "id")):
        with pytest.raises(FormError) as caught:
            new_choice(patient_id, name)
        assert caught.value.field == field


# --- against the daemon -----------------------------------------------------------------------


async def test_burn_a_study_from_the_studies_screen_to_a_disc_image(
    media_daemon: Any, tmp_path: Path
) -> None:
    study = store_study(media_daemon, tmp_path / "study", 3)
    iso = tmp_path / "discs" / "doe.iso"
    iso.parent.mkdir()
    client = ApplianceClient.for_data_dir(media_daemon.data_dir)
    app = ScreenHost(client, StudiesScreen())
    async with app.run_test(size=(100, 34)) as pilot:
        studies = app.screen
        table = studies.query_one("#studies-table", DataTable)
        await wait_until(pilot, lambda: table.row_count == 1)
        table.focus()
        await pilot.press("b")
        dialog = await wait_until(pilot, lambda: isinstance(app.screen, BurnDialog) and app.screen)
        assert text_of(dialog, "#burn-title") == "Burn 1 study: DOE JOHN · CT CHEST · 2024-01-15"
        # No optical drive in this machine: the dialog says so and takes a typed target.
        await wait_until(pilot, lambda: dialog.loaded)
        assert "No optical drive found" in text_of(dialog, "#burn-message")
        drive = dialog.query_one("#burn-drive", Input)
        assert drive.has_focus

        # Checked here, under the field.
        drive.value = "stdio:doe.iso"
        await pilot.press("ctrl+s")
        assert "absolute path" in text_of(dialog, "#burn-drive-error")
        drive.value = f"stdio:{iso}"
        await pilot.pause()
        assert "disc image file" in text_of(dialog, "#burn-drive-note")
        dialog.query_one("#burn-capacity", Input).value = "lots"
        await pilot.press("ctrl+s")
        assert "whole number" in text_of(dialog, "#burn-capacity-error")
        assert app.screen is dialog
        dialog.query_one("#burn-capacity", Input).value = "650"

        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.screen is studies)
        message = await wait_until(
            pilot, lambda: "queued burn job" in text_of(studies, "#studies-message")
        )
        job_id = int(text_of(studies, "#studies-message").split("#")[1].split()[0])
        assert text_of(studies, "#studies-message") == f"queued burn job #{job_id} on stdio:{iso}"
        assert message
    job = wait_job(client, job_id, FINAL, timeout=120)
    assert job["state"] == "succeeded", job
    assert job["params"]["study_uids"] == [study]
    assert job["params"]["capacity_bytes"] == 650_000_000
    on_disc = iso_files(iso)
    assert "/DICOMDIR" in on_disc and len([p for p in on_disc if p.startswith("/DICOM/")]) == 3
    client.close()


async def test_burn_dialog_offers_the_drives_and_shows_the_daemons_refusal(
    media_daemon: Any, tmp_path: Path
) -> None:
    """Drives as udev describes them (the daemon here has none): a blank disc first, a
    written disc shown but not chosen; the daemon refuses studies it does not hold."""

    class RecordedDrives(ApplianceClient):
        def drives(self) -> list[dict[str, Any]]:
            written = {**recorded_drive("insert_closed_data"), "device": "/dev/sr1"}
            return [written, recorded_drive("insert_blank_dvdr")]

    client = RecordedDrives.for_data_dir(media_daemon.data_dir)
    study = {**STUDY, "study_uid": "1.2.3.4.5"}
    dialog = BurnDialog([study])
    app = ScreenHost(client, dialog)
    async with app.run_test(size=(90, 30)) as pilot:
        await wait_until(pilot, lambda: dialog.loaded)
        options = dialog.query_one("#burn-drives", OptionList)
        assert options.has_focus and options.option_count == 2
        first, second = options.get_option_at_index(0), options.get_option_at_index(1)
        assert "blank DVD" in str(first.prompt) and not first.disabled
        assert "data disc" in str(second.prompt) and second.disabled
        drive = dialog.query_one("#burn-drive", Input)
        assert drive.value == first.id
        await wait_until(pilot, lambda: "blank DVD" in text_of(dialog, "#burn-drive-note"))
        # A typed file-backed target instead of the drive; the daemon does not hold the study.
        drive.value = f"stdio:{tmp_path / 'x.iso'}"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: "1.2.3.4.5" in text_of(dialog, "#burn-message"))
        assert app.screen is dialog
    client.close()


async def test_media_screen_drives_queue_actions_and_detail(
    media_daemon: Any, tmp_path: Path
) -> None:
    study = store_study(media_daemon, tmp_path / "study", 2)
    client = ApplianceClient.for_data_dir(media_daemon.data_dir)
    app = ConsoleApp(media_daemon.data_dir, first_screen="media")
    async with app.run_test(size=(120, 34)) as pilot:
        await wait_until(pilot, lambda: app.connected)
        screen = app.main_screens["media"]
        assert isinstance(screen, MediaScreen) and app.screen is screen
        await wait_until(pilot, lambda: screen.drives_loaded)
        assert "No optical drive found" in text_of(screen, "#media-message")

        # Live drive state: a blank CD-R goes in, is ejected, a data disc goes in, unplugged.
        drives = screen.drive_table

        def state(device: str) -> str:
            try:
                return str(drives.get_cell(device, "state"))
            except Exception:
                return ""

        recorded = RecordedDriveEvents()
        try:
            events = recorded.play("insert_blank_cdr")
            device = events[-1]["data"]["device"]
            app.deliver_events(events)
            await wait_until(pilot, lambda: state(device) == "blank CD")
            assert str(drives.get_cell(device, "free")).endswith("MB")
            for name, shown in (
                ("eject", "empty"),
                ("insert_closed_data", "data disc"),
                ("unplug", "unplugged"),
            ):
                app.deliver_events(recorded.play(name))
                await wait_until(pilot, lambda shown=shown: state(device) == shown)
        finally:
            recorded.stop()

        queue = screen.queue

        def cell(job_id: int, column: str) -> str:
            try:
                return str(queue.get_cell(str(job_id), column))
            except Exception:
                return ""

        # A burn that works, one that fails (the image is written already), one that waits
        # (no such drive).
        iso = tmp_path / "disc.iso"
        done = int(client.burn(f"stdio:{iso}", [study])["id"])
        wait_job(client, done, FINAL, timeout=120)
        failed = int(client.burn(f"stdio:{iso}", [study])["id"])
        held = int(client.burn("/dev/sr9", [study])["id"])
        await wait_until(pilot, lambda: cell(done, "state") == "succeeded")
        assert cell(done, "done") == "#### 1/1"
        assert cell(done, "target") == "…" + f"stdio:{iso}"[-13:]  # the end of a long path
        await wait_until(pilot, lambda: cell(failed, "state") == "failed", timeout=60)
        assert "not blank" in cell(failed, "why")
        await wait_until(pilot, lambda: cell(held, "state") == "waiting-retry", timeout=60)
        assert cell(held, "why").startswith("retry ") and "/dev/sr9" in cell(held, "why")

        queue.focus()
        queue.move_cursor(row=queue.get_row_index(str(held)))
        await pilot.pause()
        assert text_of(screen, "#media-detail").startswith(f"Job {held} burn on /dev/sr9: DOE")

        await pilot.press("p")
        await wait_until(pilot, lambda: cell(held, "state") == "paused")
        assert "paused" in text_of(screen, "#media-message")
        await pilot.press("u")
        await wait_until(pilot, lambda: cell(held, "state") != "paused")
        await pilot.press("c")
        confirm = await wait_until(
            pilot, lambda: isinstance(app.screen, ConfirmModal) and app.screen
        )
        assert confirm.text == (f"Cancel burn job {held}? Discs not burned yet will not be burned.")
        await pilot.press("y")
        await wait_until(pilot, lambda: cell(held, "state") == "cancelled")

        # Retry asks first; the failed burn fails again for the same reason.
        queue.move_cursor(row=queue.get_row_index(str(failed)))
        await pilot.press("r")
        confirm = await wait_until(
            pilot, lambda: isinstance(app.screen, ConfirmModal) and app.screen
        )
        assert confirm.text == f"Burn the discs not burned yet of job {failed} again now?"
        await pilot.press("y")
        await wait_until(pilot, lambda: "queued again" in text_of(screen, "#media-message"))
        wait_job(client, failed, FINAL, timeout=60)

        # The filter: failed jobs only, then all again.
        await pilot.press("s", "s")
        await wait_until(pilot, lambda: "failed" in text_of(screen, "#media-queue-bar"))
        await wait_until(
            pilot, lambda: [str(r.key.value) for r in queue.ordered_rows] == [str(failed)]
        )
        await pilot.press("s", "s")
        await wait_until(pilot, lambda: queue.row_count == 3)

        # The detail of the burned job: its disc and log, in the words of discs.
        queue.move_cursor(row=queue.get_row_index(str(done)))
        await pilot.press("enter")
        detail = await wait_until(
            pilot, lambda: isinstance(app.screen, MediaJobDetailScreen) and app.screen
        )
        await wait_until(
            pilot, lambda: "1 discs burned and verified" in text_of(detail, "#summary")
        )
        assert text_of(detail, "#summary").startswith(f"burn on stdio:{iso}: succeeded")
        instances = detail.query_one("#instances", DataTable)
        assert str(instances.get_cell_at((0, 3))) == "disc-1"
        assert "burned and verified" in text_of(detail, "#log")
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is screen)
    client.close()


async def test_import_a_folder_with_keep_map_and_new_values(
    media_daemon: Any, tmp_path: Path
) -> None:
    store_study(media_daemon, tmp_path / "local", 1)  # PAT001 DOE^JOHN, born 1970-01-01
    disc = tmp_path / "disc"
    write_ct_series(disc / "A", 3, rows=16, columns=16, patient_id="H-4471")
    write_ct_series(
        disc / "B", 2, rows=16, columns=16, patient_id="X-1", patient_name="ROE^RICHARD"
    )
    write_ct_series(disc / "C", 1, rows=16, columns=16, patient_id="Z-9", patient_name="ZED^ZOE")
    whole = (disc / "A" / "ct0001.dcm").read_bytes()
    (disc / "CUT").write_bytes(whole[:400])  # cut short: the scan reports it
    client = ApplianceClient.for_data_dir(media_daemon.data_dir)
    app = ConsoleApp(media_daemon.data_dir, first_screen="media")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.connected)
        screen = app.main_screens["media"]
        await wait_until(pilot, lambda: screen.drives_loaded)
        await pilot.press("i")
        importer = await wait_until(
            pilot, lambda: isinstance(app.screen, ImportScreen) and app.screen
        )
        source = importer.query_one("#import-source", Input)
        assert source.has_focus
        source.value = "disc"
        await pilot.press("enter")
        assert "absolute path" in text_of(importer, "#import-source-error")
        source.value = str(tmp_path / "nothing-here")
        await pilot.press("enter")
        await wait_until(pilot, lambda: text_of(importer, "#import-source-error") != "")

        source.value = str(disc)
        await pilot.press("enter")
        table = importer.table
        await wait_until(pilot, lambda: table.row_count == 3)
        assert text_of(importer, "#import-summary").startswith(
            f"{disc}: 3 patients, 3 studies, 6 files"
        )
        # What the scan found wrong is shown, not hidden.
        assert importer.query_one("#import-problems").display
        assert "CUT" in text_of(importer, "#import-problems-text")
        rows = {str(table.get_cell_at((i, 0))): i for i in range(3)}
        assert set(rows) == {"H-4471", "X-1", "Z-9"}
        matches = str(table.get_cell_at((rows["H-4471"], 4)))
        assert matches.startswith("PAT001 DOE^JOHN")
        assert str(table.get_cell_at((rows["X-1"], 4))) == "none"

        # H-4471 is the local DOE^JOHN (same name and birth date): map it.
        table.move_cursor(row=rows["H-4471"])
        await pilot.pause()
        assert "same name and birth date" in text_of(importer, "#import-patient")
        await pilot.press("m")
        mapper = await wait_until(
            pilot, lambda: isinstance(app.screen, MapPatientModal) and app.screen
        )
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen is importer)
        assert str(table.get_cell_at((rows["H-4471"], 5))) == "map to PAT001 DOE^JOHN"
        assert mapper.matches[0]["match"] == "name+birth date"

        # X-1 gets new values; a local ID typed for Z-9 that does not exist is refused.
        table.move_cursor(row=rows["X-1"])
        await pilot.press("n")
        new = await wait_until(
            pilot, lambda: isinstance(app.screen, NewPatientModal) and app.screen
        )
        assert new.query_one("#new-name", Input).value == "ROE^RICHARD"
        await pilot.press(*"NEW-77", "enter")
        await wait_until(pilot, lambda: app.screen is importer)
        assert str(table.get_cell_at((rows["X-1"], 5))) == "new: NEW-77 ROE^RICHARD"
        table.move_cursor(row=rows["Z-9"])
        await pilot.press("m")
        mapper = await wait_until(
            pilot, lambda: isinstance(app.screen, MapPatientModal) and app.screen
        )
        await pilot.press(*"NOBODY", "enter")
        await wait_until(
            pilot, lambda: "no local patient has ID NOBODY" in text_of(mapper, "#map-id-error")
        )
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is importer)
        assert str(table.get_cell_at((rows["Z-9"], 5))) == "keep as on the disc"

        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.screen is screen)
        text = await wait_until(
            pilot,
            lambda: (
                "queued import job" in text_of(screen, "#media-message")
                and text_of(screen, "#media-message")
            ),
        )
        job_id = int(text.split("#")[1].split()[0])
        assert text == f"queued import job #{job_id} from {disc}"
        job = wait_job(client, job_id, FINAL, timeout=120)
        assert job["state"] == "succeeded", job
        # The daemon keeps each choice with the values it takes (a map: the local patient's).
        reconcile = job["params"]["reconcile"]
        assert {key: (c["action"], c.get("patient_id")) for key, c in reconcile.items()} == {
            "H-4471": ("map", "PAT001"),
            "X-1": ("new", "NEW-77"),
            "Z-9": ("keep", None),
        }
        assert reconcile["X-1"]["patient_name"] == "ROE^RICHARD"
        queue = screen.queue
        await wait_until(pilot, lambda: str(queue.get_cell(str(job_id), "state")) == "succeeded")
        assert str(queue.get_cell(str(job_id), "target")) == "…" + str(disc)[-13:]
    found = {(s["patient_id"], s["patient_name"]) for s in client.studies()}
    assert found == {("PAT001", "DOE^JOHN"), ("NEW-77", "ROE^RICHARD"), ("Z-9", "ZED^ZOE")}
    assert len(client.studies(patient_id="PAT001")) == 2
    client.close()


async def test_import_from_a_drive_holding_a_data_disc_starts_the_scan(
    media_daemon: Any, tmp_path: Path
) -> None:
    """Enter on a drive with a data disc opens the import with that drive as the source.
    (The recorded drive's device does not exist here: the daemon's refusal is shown.)"""
    app = ConsoleApp(media_daemon.data_dir, first_screen="media")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.connected)
        screen = app.main_screens["media"]
        await wait_until(pilot, lambda: screen.drives_loaded)
        data = recorded_drive("insert_closed_data")
        app.deliver_events([drive_event(data)])
        await wait_until(pilot, lambda: screen.drive_table.row_count == 1)
        screen.drive_table.focus()
        await pilot.pause()
        assert "enter: import this disc" in text_of(screen, "#media-detail")
        await pilot.press("enter")
        importer = await wait_until(
            pilot, lambda: isinstance(app.screen, ImportScreen) and app.screen
        )
        assert importer.query_one("#import-source", Input).value == data["device"]
        drives = importer.query_one("#import-drives", OptionList)
        assert drives.option_count == 1
        await wait_until(pilot, lambda: text_of(importer, "#import-source-error") != "")
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is screen)


async def test_key_8_and_f9_show_the_media_screen_with_its_help(media_daemon: Any) -> None:
    app = ConsoleApp(media_daemon.data_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.connected)
        await pilot.press("8")
        await pilot.pause()
        assert app.screen is app.main_screens["media"]
        await pilot.press("2")
        await pilot.press("f9")
        await pilot.pause()
        assert app.screen is app.main_screens["media"]
        await pilot.press("question_mark")
        help_modal = await wait_until(
            pilot, lambda: isinstance(app.screen, HelpModal) and app.screen
        )
        keys = dict(help_modal.keys)
        assert keys["i"] == "Import" and keys["r"] == "Retry" and keys["c"] == "Cancel"
        assert keys["1..8, f2..f9"].endswith("Print, Media")
        await pilot.press("escape")
        commands = [c.title for c in app.get_system_commands(app.screen)]
        assert "Go to Media" in commands and "Media: Import" in commands
