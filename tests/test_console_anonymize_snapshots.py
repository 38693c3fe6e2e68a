"""SVG snapshots of the anonymize dialog (preview, a held image rendered and ticked, the site
profile) and of an anonymize job's detail with its held image.

Replayed like ``test_console_snapshots``: the answers in
``console_fixtures/anonymize_answers.json`` were captured once from a real daemon (the CT study
of the main fixture, stored under its study UID, and a US study of the same patient without
Burned In Annotation; a site profile "research"; the held US image rendered by the print
preview; an anonymize job of both studies with the US image not confirmed) and then fixed:
paths replaced, times shifted to 2026-01-01 10:50 UTC, the job renumbered 5, the operator's
identity replaced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Checkbox, Select

from console.app import ConsoleApp
from tests.test_console_snapshots import BASE, ReplayClient, settle

ANON_ANSWERS = Path(__file__).parent / "console_fixtures" / "anonymize_answers.json"


class AnonymizeReplayClient(ReplayClient):
    """The recorded daemon answers plus the anonymize ones: two studies of DOE^JOHN, the
    profiles, a preview per profile and study, and an anonymize job."""

    def __init__(self) -> None:
        super().__init__()
        self.anon: dict[str, Any] = json.loads(ANON_ANSWERS.read_text())

    def call(self, op: str, **args: Any) -> Any:
        if op == "anonymize.preview":
            return self.anon[op][f"{args['profile']}|{args['study_uid']}"]
        if op == "archive.series" and args.get("study_uid") in self.anon[op]:
            return self.anon[op][args["study_uid"]]
        if op == "jobs.list":
            jobs = super().call(op, **args)
            kinds, states = args.get("kinds"), args.get("states")
            extra = [
                job
                for job in self.anon[op]
                if (not kinds or job["kind"] in kinds) and (not states or job["state"] in states)
            ]
            return sorted(jobs + extra, key=lambda job: -int(job["id"]))
        if op == "jobs.show" and str(args["id"]) in self.anon[op]:
            return self.anon[op][str(args["id"])]
        if op in ("anonymize.profiles", "archive.studies", "print.preview"):
            return self.anon[op]
        return super().call(op, **args)


def make_app(screen: str) -> ConsoleApp:
    return ConsoleApp(
        client=AnonymizeReplayClient(), clock=lambda: BASE + 3600, utc=True, first_screen=screen
    )


async def open_dialog(pilot: Any) -> None:
    """Both studies marked, a: the dialog with basic's preview and the held US image."""
    await settle(pilot)
    await pilot.press("space", "space", "a")
    await settle(pilot)
    await settle(pilot)  # the held image's checkbox is mounted after the preview


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_anonymize_dialog_snapshot(snap_compare: Any, size: tuple[int, int]) -> None:
    async def rendered_and_ticked(pilot: Any) -> None:
        await open_dialog(pilot)
        await pilot.press("ctrl+o")
        await settle(pilot)
        pilot.app.screen.query_one("#anon-held-0", Checkbox).value = True
        await settle(pilot)

    assert snap_compare(make_app("studies"), terminal_size=size, run_before=rendered_and_ticked)


def test_anonymize_dialog_site_profile_snapshot(snap_compare: Any) -> None:
    async def research(pilot: Any) -> None:
        await open_dialog(pilot)
        pilot.app.screen.query_one("#anon-profile", Select).value = "research"
        await settle(pilot)
        await settle(pilot)

    assert snap_compare(make_app("studies"), terminal_size=(100, 32), run_before=research)


def test_anonymize_job_detail_snapshot(snap_compare: Any) -> None:
    """The Jobs screen filtered to anonymize jobs, then the job's detail: the copy made, the
    US image held and why."""

    async def detail(pilot: Any) -> None:
        await settle(pilot)
        for _ in range(8):  # all, send, retrieve, commitment, forward, print, burn, import
            await pilot.press("k")
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)

    assert snap_compare(make_app("jobs"), terminal_size=(110, 30), run_before=detail)
