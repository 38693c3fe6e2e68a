"""SVG snapshots of the Media screen, the burn dialog, the import reconciliation and a held
burn job's detail.

Replayed like ``test_console_snapshots``: the media answers in
``console_fixtures/media_answers.json`` were captured once from a real daemon (a two-image CT
study burned to a file-backed drive, a burn refused on the written image, a burn held on a
missing drive, a paused one, an import of a folder with two patients and a cut-short file)
and then fixed: times shifted to 2026-01-01 10:50 UTC, paths replaced, job ids renumbered.
The drives (the daemon in a container has none) are the drive layer's reading of the
recorded udev sets in ``tests/udev_fixtures`` (a blank CD-R, a data disc).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from console.app import ConsoleApp
from tests.test_console_snapshots import BASE, ReplayClient, settle

MEDIA_ANSWERS = Path(__file__).parent / "console_fixtures" / "media_answers.json"


class MediaReplayClient(ReplayClient):
    """The recorded daemon answers plus the media ones (burn and import jobs from the media
    set)."""

    def __init__(self) -> None:
        super().__init__()
        self.media_answers: dict[str, Any] = json.loads(MEDIA_ANSWERS.read_text())

    def call(self, op: str, **args: Any) -> Any:
        if op == "jobs.list" and args.get("kinds") == ["burn", "import"]:
            states = args.get("states")
            return [
                job
                for job in self.media_answers["jobs.list"]
                if not states or job["state"] in states
            ]
        if op == "jobs.show" and str(args["id"]) in self.media_answers["jobs.show"]:
            return self.media_answers["jobs.show"][str(args["id"])]
        if op in self.media_answers and op not in ("jobs.list", "jobs.show"):
            return self.media_answers[op]
        return super().call(op, **args)

    def slow_call(self, op: str, timeout: float, **args: Any) -> Any:
        return self.call(op, **args)


def make_app(screen: str) -> ConsoleApp:
    return ConsoleApp(
        client=MediaReplayClient(), clock=lambda: BASE + 3600, utc=True, first_screen=screen
    )


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_media_screen_snapshot(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(make_app("media"), terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_burn_dialog_snapshot(snap_compare: Any, size: tuple[int, int]) -> None:
    async def open_dialog(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("b")
        await settle(pilot)

    assert snap_compare(make_app("studies"), terminal_size=size, run_before=open_dialog)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_import_reconciliation_snapshot(snap_compare: Any, size: tuple[int, int]) -> None:
    """i with one data disc in a drive: the disc scanned, its patients beside the local ones,
    the second patient given new values."""

    async def reconcile(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("i")
        await settle(pilot)
        await pilot.press("down", "n")
        await settle(pilot)
        await pilot.press(*"NEW-77", "enter")
        await settle(pilot)

    assert snap_compare(make_app("media"), terminal_size=size, run_before=reconcile)


def test_held_burn_job_detail_snapshot(snap_compare: Any) -> None:
    async def open_detail(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)

    assert snap_compare(make_app("media"), terminal_size=(100, 30), run_before=open_detail)
