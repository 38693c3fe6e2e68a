"""SVG snapshots of the Print screen and the film composer at 80x24 and 120x40.

Replayed like ``test_console_snapshots``: the print answers in
``console_fixtures/print_answers.json`` were captured once from a real daemon (printer "laser"
a DCMTK dcmprscp, "ward" a printer answering FAILURE / FILM JAM, "or2" nobody listening; a
five-image CT study printed 2x2 on laser, jobs held on ward and or2, one paused) and then fixed:
times shifted to 2026-01-01 10:50 UTC, ports and paths replaced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from console.app import ConsoleApp
from tests.test_console_snapshots import BASE, ReplayClient, settle

PRINT_ANSWERS = Path(__file__).parent / "console_fixtures" / "print_answers.json"


class PrintReplayClient(ReplayClient):
    """The recorded daemon answers plus the print ones (print jobs only from the print set)."""

    def __init__(self) -> None:
        super().__init__()
        self.print_answers: dict[str, Any] = json.loads(PRINT_ANSWERS.read_text())

    def call(self, op: str, **args: Any) -> Any:
        if op == "jobs.list" and args.get("kinds") == ["print"]:
            states = args.get("states")
            return [
                job
                for job in self.print_answers["jobs.list"]
                if (not states or job["state"] in states)
                and (not args.get("target") or job["target"] == args["target"])
            ]
        if op == "jobs.show" and str(args["id"]) in self.print_answers["jobs.show"]:
            return self.print_answers["jobs.show"][str(args["id"])]
        if op in self.print_answers and op not in ("jobs.list", "jobs.show"):
            return self.print_answers[op]
        return super().call(op, **args)


def make_app(screen: str) -> ConsoleApp:
    return ConsoleApp(
        client=PrintReplayClient(), clock=lambda: BASE + 3600, utc=True, first_screen=screen
    )


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_print_screen_snapshot(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(make_app("print"), terminal_size=size, run_before=settle)


async def open_composer(pilot: Any) -> None:
    """The Studies screen's print action, then the 2x2 layout typed in."""
    await settle(pilot)
    await pilot.press("p")
    await settle(pilot)
    pilot.app.screen.query_one("#print-layout", Input).value = "STANDARD\\2,2"
    await pilot.pause(0.6)  # the composer waits for a quiet moment before asking
    await settle(pilot)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_film_composer_snapshot(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(make_app("studies"), terminal_size=size, run_before=open_composer)


def test_film_composer_preview_snapshot(snap_compare: Any) -> None:
    async def preview(pilot: Any) -> None:
        await open_composer(pilot)
        await pilot.press("ctrl+o")
        await settle(pilot)

    assert snap_compare(make_app("studies"), terminal_size=(100, 40), run_before=preview)


def test_held_print_job_detail_snapshot(snap_compare: Any) -> None:
    async def open_detail(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)

    assert snap_compare(make_app("print"), terminal_size=(100, 30), run_before=open_detail)
