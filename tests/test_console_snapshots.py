"""SVG snapshots of the console's main screens at 80x24 and 120x40.

The screens talk to a replay client, not to a live daemon: ports, paths, uptime, disk figures
and times vary from run to run, and a snapshot must not. The answers in
``console_fixtures/daemon_answers.json`` were captured once from a real daemon (a failed send
and a successful one, a study stored by DCMTK storescu) and then fixed: times shifted to start
at 2026-01-01 10:00 UTC, paths and ports replaced, disk figures and uptime set, one waiting and
one running job derived from the captured ones. Times are shown in UTC and cursors do not
blink. Regenerate with ``pytest tests/test_console_snapshots.py --snapshot-update`` after
looking at the report of a failing run.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from console.app import ConsoleApp
from console.client import ApiError, ApplianceClient

ANSWERS = Path(__file__).parent / "console_fixtures" / "daemon_answers.json"
BASE = 1767261600.0  # 2026-01-01 10:00:00 UTC
EVENTS = [
    {
        "topic": "storage",
        "time": BASE + 3590 + n,
        "data": {
            "calling_ae": "CT01",
            "patient_name": "DOE^JOHN",
            "modality": "CT",
            "ok": True,
            "status": 0,
            "duplicate": False,
        },
    }
    for n in range(3)
] + [
    {
        "topic": "alert",
        "time": BASE + 3595,
        "data": {
            "level": "error",
            "text": "send job 1 to dead failed: cannot connect (connection refused)",
        },
    }
]


class ReplayStream:
    """An event stream that stays quiet until closed."""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        self._closed.wait(timeout)
        return None

    def close(self) -> None:
        self._closed.set()


class ReplayClient(ApplianceClient):
    """Answers from the recorded fixture; an op it does not know is unknown, as on a daemon."""

    def __init__(self) -> None:
        super().__init__(Path("/var/lib/dicom-appliance/control.sock"))
        self.answers: dict[str, Any] = json.loads(ANSWERS.read_text())

    def call(self, op: str, **args: Any) -> Any:
        if op == "jobs.show":
            return self.answers["jobs.show"][str(args["id"])]
        if op == "jobs.list":
            jobs = self.answers["jobs.list"]
            states, kinds = args.get("states"), args.get("kinds")
            return [
                j
                for j in jobs
                if (not states or j["state"] in states) and (not kinds or j["kind"] in kinds)
            ]
        if op == "archive.series":
            return self.answers["archive.series"].get(args.get("study_uid"), [])
        if op in self.answers:
            return self.answers[op]
        raise ApiError("unknown-op", f"unknown op {op!r}")

    def subscribe(self, topics: list[str] | None = None) -> Any:
        return ReplayStream()

    def close(self) -> None:
        pass


def make_app(screen: str) -> ConsoleApp:
    return ConsoleApp(
        client=ReplayClient(), clock=lambda: BASE + 3600, utc=True, first_screen=screen
    )


async def settle(pilot: Any) -> None:
    app = pilot.app
    for _ in range(200):
        if app.connected:
            break
        await pilot.pause(0.02)
    if app.current_name == "dashboard":
        app.deliver_events(EVENTS)
    for _ in range(200):
        busy = [w for w in app.workers if w.is_running and w.group != "connection"]
        if not busy:
            break
        await pilot.pause(0.02)
    for field in app.screen.query(Input):
        field.cursor_blink = False
    # Let widgets that resized their columns lay out again before the picture.
    for _ in range(5):
        await pilot.pause(0.02)
    await pilot.wait_for_scheduled_animations()


SCREENS = ["dashboard", "jobs", "studies", "query", "nodes", "settings"]


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
@pytest.mark.parametrize("screen", SCREENS)
def test_screen_snapshot(snap_compare: Any, screen: str, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(screen), terminal_size=size, run_before=settle)


def test_job_detail_snapshot(snap_compare: Any) -> None:
    async def open_detail(pilot: Any) -> None:
        await settle(pilot)
        await pilot.press("down", "enter")
        await settle(pilot)

    assert snap_compare(make_app("jobs"), terminal_size=(100, 30), run_before=open_detail)
