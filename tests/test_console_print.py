"""The console's Print screen and film composer against a real daemon and a real film imager.

DCMTK dcmprscp is the film imager ("film"); a second printer ("down") points at a port nobody
listens on. The study is stored with DCMTK storescu. The composer is reached from the Studies
screen's print action; the films it queues land as Stored Prints in dcmprscp's database.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from textual.widgets import DataTable, Input, Select, Static

from appliance.config import ConfigStore, Printer
from console.app import ConsoleApp
from console.client import ApplianceClient
from console.screens.film_composer import (
    ComposerValues,
    FilmComposerScreen,
    FormError,
    build_request,
    film_grid,
    parse_layout,
    parse_window,
)
from console.screens.print import PrintScreen, waiting_text
from console.screens.studies import StudiesScreen
from console.widgets import ConfirmModal, HelpModal, NodePickerModal
from tests.factories import write_ct_series
from tests.peers import LOOPBACK, free_port
from tests.print_peers import Dcmprscp
from tests.scp_helpers import storescu
from tests.test_console_screens import ScreenHost, service_client_for_tests

FAST_RETRY = {"retry_first_delay": 1, "retry_multiplier": 2, "retry_max_delay": 2}
FILM_FORMATS = ["STANDARD\\1,1", "STANDARD\\1,2", "STANDARD\\2,2"]


async def wait_until(pilot: Any, predicate: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        await pilot.pause(0.05)


def text_of(screen: Any, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


@pytest.fixture
def imager(tmp_path: Path) -> Iterator[Dcmprscp]:
    peer = Dcmprscp(tmp_path / "imager")
    yield peer
    peer.stop()


def add_printers(daemon: Any, imager: Dcmprscp) -> None:
    """Before the daemon starts: "film" (dcmprscp) and "down" (nobody listens)."""
    store = ConfigStore(daemon.data_dir)
    store.add_printer(
        Printer(
            name="film",
            ae_title=imager.ae_title,
            host=LOOPBACK,
            port=imager.port,
            film_sizes=["8INX10IN", "14INX17IN"],
            medium_types=["PAPER", "BLUE FILM"],
            display_formats=FILM_FORMATS,
        )
    )
    store.add_printer(Printer(name="down", ae_title="NOBODY", host=LOOPBACK, port=free_port()))


@pytest.fixture
def print_daemon(daemon_factory: Any, imager: Dcmprscp) -> Any:
    daemon = daemon_factory(**FAST_RETRY)
    add_printers(daemon, imager)
    return daemon.start()


def store_study(daemon: Any, folder: Path, count: int) -> str:
    files = write_ct_series(folder, count, rows=32, columns=32)
    result = storescu(daemon, files)
    assert result.returncode == 0, result.stdout + result.stderr
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def wait_job(client: ApplianceClient, job_id: int, states: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (job := client.job(job_id))["state"] not in states:
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


# --- pure parts -------------------------------------------------------------------------------


def test_composer_values_are_checked_with_the_field_they_are_about() -> None:
    film = {"name": "film", "display_formats": FILM_FORMATS, "annotation": False}
    source = {"study_uids": ["1.2.3"]}
    request = build_request(
        ComposerValues(
            printer="film",
            layout="2x2",
            film_size="14INX17IN",
            orientation="LANDSCAPE",
            copies="2",
            medium_type="BLUE FILM",
            window="40, 400",
        ),
        film,
        source,
    )
    assert request == {
        "study_uids": ["1.2.3"],
        "layout": "STANDARD\\2,2",
        "film_size": "14INX17IN",
        "orientation": "LANDSCAPE",
        "copies": 2,
        "medium_type": "BLUE FILM",
        "window_center": 40,
        "window_width": 400,
    }
    assert parse_layout("standard/1,2") == "STANDARD\\1,2"
    assert parse_layout("ROW\\1,2") == "ROW\\1,2"
    assert parse_window("auto") is None and parse_window("-600/1500") == (-600, 1500)
    refusals = {
        "layout": ComposerValues(printer="film", layout="GRID\\2"),
        "copies": ComposerValues(printer="film", layout="STANDARD\\1,1", copies="0"),
        "window": ComposerValues(printer="film", layout="STANDARD\\1,1", window="40"),
        "annotation": ComposerValues(printer="film", layout="STANDARD\\1,1", annotation="L"),
    }
    for field, values in refusals.items():
        with pytest.raises(FormError) as caught:
            build_request(values, film, source)
        assert caught.value.field == field
    with pytest.raises(FormError, match="accepts STANDARD\\\\1,1, STANDARD\\\\1,2"):
        build_request(ComposerValues(printer="film", layout="3,3"), film, source)
    with pytest.raises(FormError, match="width is at least 1"):
        parse_window("40,0")
    with pytest.raises(FormError, match="choose a printer"):
        build_request(ComposerValues(printer="", layout="1,1"), None, source)


def test_film_grid_draws_standard_row_and_col_layouts() -> None:
    grid = film_grid("STANDARD\\2,2", {1: "CT 1", 2: "CT 2", 3: "CT 3", 4: "(empty)"}, width=21)
    assert grid == [
        "┌─────────┬─────────┐",
        "│1 CT 1   │2 CT 2   │",
        "├─────────┼─────────┤",
        "│3 CT 3   │4 (empty)│",
        "└─────────┴─────────┘",
    ]
    row = film_grid("ROW\\1,2", {1: "a", 2: "b", 3: "c"}, width=11)
    assert row == [
        "┌─────────┐",
        "│1 a      │",
        "├────┬────┤",
        "│2 b │3 c │",
        "└────┴────┘",
    ]
    col = film_grid("COL\\1,2", {1: "a", 2: "b", 3: "c"}, width=11)
    assert col[0] == "┌────┬────┐" and col[-1] == "└────┴────┘"
    assert "│1 a │2 b │" in col and "│    │3 c │" in col
    # Labels longer than their box are cut with an ellipsis.
    assert film_grid("STANDARD\\1,1", {1: "a very long label"}, width=10)[1] == "│1 a ver…│"


def test_waiting_text_says_why_a_print_job_waits() -> None:
    job = {
        "state": "waiting-retry",
        "error": "printer reports FAILURE: FILM JAM",
        "next_retry": 100.0,
    }
    assert waiting_text(job, lambda t: "10:00:00") == (
        "retry 10:00:00: printer reports FAILURE: FILM JAM"
    )
    assert waiting_text({"state": "running", "stage": "film 2 of 3"}, str) == "film 2 of 3"
    assert waiting_text({"state": "paused", "error": ""}, str) == "paused by the operator"


# --- against the daemon -----------------------------------------------------------------------


async def test_compose_check_preview_and_print_a_study_from_the_studies_screen(
    print_daemon: Any, imager: Dcmprscp, tmp_path: Path
) -> None:
    study = store_study(print_daemon, tmp_path / "study", 5)
    client = ApplianceClient.for_data_dir(print_daemon.data_dir)
    app = ScreenHost(client, StudiesScreen())
    async with app.run_test(size=(100, 34)) as pilot:
        studies = app.screen
        table = studies.query_one("#studies-table", DataTable)
        await wait_until(pilot, lambda: table.row_count == 1)
        table.focus()
        await pilot.press("p")
        composer = await wait_until(
            pilot, lambda: isinstance(app.screen, FilmComposerScreen) and app.screen
        )
        assert text_of(composer, "#composer-title").startswith("Print 1 study: DOE JOHN")
        await wait_until(pilot, lambda: composer.printers)
        printer = composer.query_one("#print-printer", Select)
        printer.value = "film"
        layout = composer.query_one("#print-layout", Input)
        # The printer's own terms are offered: its film sizes and media.
        sizes = composer.query_one("#print-film_size", Select)
        await wait_until(
            pilot, lambda: [value for _, value in sizes._options] == ["", "8INX10IN", "14INX17IN"]
        )
        assert layout.value == "STANDARD\\1,1"
        assert composer.query_one("#print-annotation", Input).disabled  # no annotation boxes

        layout.value = "STANDARD\\2,2"
        films = await wait_until(
            pilot, lambda: "Film 2 of 2" in text_of(composer, "#films-text") and composer.films
        )
        assert [len(film["boxes"]) for film in films] == [4, 4]
        shown = text_of(composer, "#films-text")
        assert "Film 1 of 2: STANDARD\\2,2" in shown and "(empty)" in shown
        assert "┼" in shown
        assert text_of(composer, "#composer-message") == "5 images on 2 films"

        # Checked here, with the message under the field.
        composer.query_one("#print-copies", Input).value = "0"
        await pilot.press("ctrl+s")
        assert text_of(composer, "#print-copies-error") == "copies: a whole number from 1 to 99"
        assert composer.query_one("#print-copies-error").display
        composer.query_one("#print-copies", Input).value = "1"
        layout.value = "STANDARD\\3,3"
        await pilot.press("ctrl+s")
        assert "accepts STANDARD\\1,1, STANDARD\\1,2, STANDARD\\2,2" in text_of(
            composer, "#print-layout-error"
        )
        assert app.screen is composer
        layout.value = "STANDARD\\2,2"
        composer.query_one("#print-window", Input).value = "40,400"

        # Preview: the daemon writes a PDF and one PNG per film; the paths are shown.
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: composer.preview_files)
        files = [Path(path) for path in composer.preview_files]
        assert [path.suffix for path in files] == [".pdf", ".png", ".png"]
        assert all(path.is_file() and path.stat().st_size > 0 for path in files)
        assert files[0].read_bytes().startswith(b"%PDF")
        assert text_of(composer, "#preview-files").splitlines() == [str(p) for p in files]
        assert "preview written (3 files" in text_of(composer, "#composer-message")

        # Print: queued, the composer returns, the Studies screen says which job.
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.screen is studies)
        message = await wait_until(
            pilot, lambda: "queued print job" in text_of(studies, "#studies-message")
        )
        job_id = int(text_of(studies, "#studies-message").split("#")[1].split()[0])
        assert text_of(studies, "#studies-message") == f"queued print job #{job_id} on film"
        assert message
    job = wait_job(client, job_id, {"succeeded", "failed", "partially-failed"})
    assert job["state"] == "succeeded", job
    assert job["params"]["study_uids"] == [study]
    assert job["params"]["window_width"] == 400
    stored = imager.stored_prints()
    assert sorted(len(ds.ImageBoxContentSequence) for ds in stored) == [1, 4]
    client.close()


async def test_composer_shows_the_daemons_refusal(print_daemon: Any) -> None:
    client = ApplianceClient.for_data_dir(print_daemon.data_dir)
    composer = FilmComposerScreen({"study_uids": ["1.2.3.4"]}, "1 study: nobody")
    app = ScreenHost(client, composer)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: composer.printers)
        await wait_until(pilot, lambda: "no study" in text_of(composer, "#composer-message"))
        assert "1.2.3.4" in text_of(composer, "#composer-message")
        assert composer.films == []
        await pilot.press("escape")
    client.close()


async def test_print_screen_status_queue_actions_and_reroute(
    print_daemon: Any, imager: Dcmprscp, tmp_path: Path
) -> None:
    study = store_study(print_daemon, tmp_path / "study", 2)
    client = ApplianceClient.for_data_dir(print_daemon.data_dir)
    app = ConsoleApp(print_daemon.data_dir, first_screen="print")
    async with app.run_test(size=(120, 34)) as pilot:
        await wait_until(pilot, lambda: app.connected)
        screen = app.main_screens["print"]
        assert isinstance(screen, PrintScreen) and app.screen is screen
        printers = screen.printer_table
        await wait_until(pilot, lambda: printers.row_count == 2)

        def status(name: str) -> str:
            return str(printers.get_cell(name, "status"))

        # Live status: the screen asked each printer when it opened.
        await wait_until(pilot, lambda: status("film") == "NORMAL")
        await wait_until(pilot, lambda: status("down") == "UNREACHABLE")
        assert "cannot connect" in str(printers.get_cell("down", "info"))
        await wait_until(
            pilot, lambda: text_of(screen, "#print-message") == "2 printers, 1 not ready"
        )

        # A job for the unreachable printer waits and says why.
        job = client.submit_print("down", {"study_uids": [study], "layout": "STANDARD\\1,1"})
        job_id = int(job["id"])
        queue = screen.queue

        def cell(column: str, row: int = job_id) -> str:
            try:
                return str(queue.get_cell(str(row), column))
            except Exception:
                return ""

        await wait_until(pilot, lambda: cell("state") == "waiting-retry")
        assert "cannot connect" in cell("why") and cell("why").startswith("retry ")
        assert cell("films") == "---- 0/2"
        queue.focus()
        queue.move_cursor(row=queue.get_row_index(str(job_id)))
        await pilot.pause()
        assert text_of(screen, "#print-detail").startswith(f"Job {job_id} on down: DOE JOHN")

        await pilot.press("p")
        await wait_until(pilot, lambda: cell("state") == "paused")
        assert "paused" in text_of(screen, "#print-message")
        await pilot.press("u")
        await wait_until(pilot, lambda: cell("state") in ("queued", "running", "waiting-retry"))

        # Reroute to the working printer, picked from the printers (not the job's own).
        await wait_until(pilot, lambda: cell("state") == "waiting-retry")
        await pilot.press("o")
        picker = await wait_until(
            pilot, lambda: isinstance(app.screen, NodePickerModal) and app.screen
        )
        assert [p["name"] for p in picker.nodes] == ["film"]
        await pilot.press("enter")
        confirm = await wait_until(
            pilot, lambda: isinstance(app.screen, ConfirmModal) and app.screen
        )
        assert confirm.text == f"Print job {job_id} on film instead?"
        await pilot.press("y")
        await wait_until(pilot, lambda: cell("target") == "film", timeout=20)
        await wait_until(pilot, lambda: cell("state") == "succeeded", timeout=30)
        assert cell("films") == "#### 2/2"
        assert len(imager.stored_prints()) == 2

        # The job's detail: films and log, as on the Jobs screen.
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen is not screen)
        await wait_until(pilot, lambda: "2 printed" in text_of(app.screen, "#summary"))
        instances = app.screen.query_one("#instances", DataTable)
        assert [str(instances.get_cell_at((i, 3))) for i in range(2)] == ["film-1", "film-2"]
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is screen)

        # Cancel and reprint ask first.
        second = client.submit_print("down", {"study_uids": [study]})
        second_id = int(second["id"])
        await wait_until(pilot, lambda: cell("state", second_id) != "")
        queue.move_cursor(row=queue.get_row_index(str(second_id)))
        await pilot.press("c")
        confirm = await wait_until(
            pilot, lambda: isinstance(app.screen, ConfirmModal) and app.screen
        )
        assert confirm.text.startswith(f"Cancel print job {second_id}?")
        await pilot.press("y")
        await wait_until(pilot, lambda: cell("state", second_id) == "cancelled")
        await pilot.press("r")
        confirm = await wait_until(
            pilot, lambda: isinstance(app.screen, ConfirmModal) and app.screen
        )
        assert confirm.text.startswith(f"Reprint job {second_id} now")
        await pilot.press("y")
        await wait_until(pilot, lambda: "queued to reprint" in text_of(screen, "#print-message"))
        await wait_until(pilot, lambda: cell("state", second_id) != "cancelled")

        # Enter on a printer shows only its jobs; again shows all.
        printers.focus()
        printers.move_cursor(row=printers.get_row_index("film"))
        await pilot.press("enter")
        await wait_until(pilot, lambda: "on film" in text_of(screen, "#queue-bar"))
        await wait_until(
            pilot, lambda: [str(r.key.value) for r in queue.ordered_rows] == [str(job_id)]
        )
        await pilot.press("enter")
        await wait_until(pilot, lambda: queue.row_count == 2)

        # A status change reaches the row as a "printer" event: field service points "down"
        # at the imager and someone else asks the printers.
        service = service_client_for_tests(print_daemon)
        down = next(p for p in service.printers() if p["name"] == "down")
        down.pop("status")
        down.update(ae_title=imager.ae_title, port=imager.port)
        service.call("printers.add", printer=down, replace=True)
        service.printers(refresh=True)
        await wait_until(pilot, lambda: status("down") == "NORMAL")
        service.close()
    client.close()


async def test_key_7_shows_the_print_screen_with_its_help(print_daemon: Any) -> None:
    app = ConsoleApp(print_daemon.data_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.connected)
        await pilot.press("7")
        await pilot.pause()
        assert app.screen is app.main_screens["print"]
        await pilot.press("2")
        await pilot.press("f8")
        await pilot.pause()
        assert app.screen is app.main_screens["print"]
        await pilot.press("question_mark")
        help_modal = await wait_until(
            pilot, lambda: isinstance(app.screen, HelpModal) and app.screen
        )
        keys = dict(help_modal.keys)
        assert keys["r"] == "Reprint" and keys["o"] == "Reroute" and keys["g"] == "Refresh"
        assert keys["1..8, f2..f9"].endswith("Settings, Print, Media")
        await pilot.press("escape")
        commands = [c.title for c in app.get_system_commands(app.screen)]
        assert "Go to Print" in commands and "Print: Reprint" in commands
