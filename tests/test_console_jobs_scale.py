"""The Jobs screen against a daemon whose store holds 10,000 jobs: the newest page, a state
filter that reaches deep into the history, and keys still handled at once."""

from __future__ import annotations

import time

from console.app import ConsoleApp
from console.screens.jobs import PAGE, JobsScreen
from tests.job_history import seed_jobs
from tests.test_console_app import wait_until

KEY_BOUND = 1.0  # seconds for a key press to be handled, on a loaded test machine


def row_ids(screen: JobsScreen) -> list[int]:
    table = screen.table
    return [
        int(str(table.coordinate_to_cell_key((r, 0)).row_key.value)) for r in range(table.row_count)
    ]


async def test_ten_thousand_jobs_page_filter_and_keys(daemon_factory) -> None:
    daemon = daemon_factory()
    history = seed_jobs(daemon.data_dir, 10_000)
    assert history.total == 10_000
    daemon.start()
    newest = max(history.of(*history.ids))
    failed = history.of("failed", "partially-failed")
    app = ConsoleApp(daemon.data_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.connected)
        await pilot.press("2")
        screen = app.main_screens["jobs"]
        assert isinstance(screen, JobsScreen)
        await wait_until(pilot, lambda: screen.table.row_count == PAGE)
        ids = row_ids(screen)
        assert ids[0] == newest and ids == sorted(ids, reverse=True)
        assert ids[-1] == newest - PAGE + 1
        # all -> active -> queued -> running -> waiting-retry -> paused -> failed
        await pilot.press(*"ssssss")
        await wait_until(
            pilot, lambda: "State: failed" in str(screen.query_one("#filters").render())
        )
        deep = failed[0]  # the oldest failed job, thousands of jobs back
        await wait_until(pilot, lambda: deep in screen.jobs)
        assert deep < newest - 9_000
        assert set(row_ids(screen)) == set(failed[-PAGE:])
        assert {str(screen.table.get_cell(str(i), "state")) for i in failed[-PAGE:]} <= {
            "failed",
            "partially-failed",
        }
        screen.table.focus()
        before = screen.table.cursor_row
        started = time.monotonic()
        await pilot.press("down")
        await wait_until(pilot, lambda: screen.table.cursor_row == before + 1, timeout=KEY_BOUND)
        assert time.monotonic() - started < KEY_BOUND
