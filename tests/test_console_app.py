"""The console app against a real daemon: start-up, screens, jobs live, retry, roles, reconnect."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.widgets import DataTable, Input, Static

from appliance.control_client import ApiError
from console.app import ConnectionBanner, ConsoleApp
from console.base import ConsoleScreen
from console.screens.jobs import JobDetailScreen, JobsScreen
from console.screens.nodes import NodeFormScreen, NodesScreen
from console.screens.query import QueryScreen
from console.widgets import ConfirmModal, HelpModal, PasswordModal
from tests.factories import write_ct_series
from tests.peers import LOOPBACK, StoreSCP, appliance_cmd, free_port, run

PASSWORD = "field-service-1"


async def wait_until(pilot: Any, predicate: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        await pilot.pause(0.05)


def add_node(daemon: Any, name: str, port: int, ae_title: str = "STORESCP") -> None:
    result = daemon.cli(
        "node", "add", name, "--ae-title", ae_title, "--host", LOOPBACK, "--port", str(port)
    )
    assert result.returncode == 0, result.stderr


def job_state(app: ConsoleApp, job_id: int) -> str:
    screen = app.main_screens["jobs"]
    assert isinstance(screen, JobsScreen)
    try:
        return str(screen.table.get_cell(str(job_id), "state"))
    except Exception:
        return ""


async def test_start_up_navigates_every_screen_and_shows_help(daemon) -> None:
    app = ConsoleApp(daemon.data_dir)
    started = time.monotonic()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.connected)
        dashboard = app.main_screens["dashboard"]
        services = dashboard.query_one("#services", DataTable)
        await wait_until(pilot, lambda: services.row_count > 0)
        assert time.monotonic() - started < 10
        assert str(services.get_cell_at((0, 2))) == str(daemon.port)
        assert str(services.get_cell_at((0, 3))) == "listening"
        assert not any(b.has_class("-shown") for b in app.screen.query(ConnectionBanner))
        assert "technologist" in app.sub_title
        for key, name in [("2", "jobs"), ("f4", "studies"), ("4", "query"), ("f6", "nodes")]:
            await pilot.press(key)
            await pilot.pause()
            assert app.screen is app.main_screens[name]
        await pilot.press("6")
        await pilot.pause()
        assert app.screen is app.main_screens["settings"]
        await pilot.press("f2")
        await pilot.pause()
        assert app.screen is dashboard
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpModal)
        keys = dict(app.screen.keys)
        assert "Refresh" in keys.values() and "Quit" in keys.values()
        await pilot.press("escape")
        await pilot.pause()
        commands = [c.title for c in app.get_system_commands(app.screen)]
        assert "Go to Jobs" in commands and "Unlock service mode" in commands
        assert "Dashboard: Refresh" in commands
        await pilot.press("q")
    assert app.return_code == 0


async def test_a_send_reaches_succeeded_in_the_jobs_table_and_the_detail(
    daemon, storescp, tmp_path: Path
) -> None:
    add_node(daemon, "pacs", storescp.port, storescp.ae_title)
    files = write_ct_series(tmp_path / "series", 3)
    app = ConsoleApp(daemon.data_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.connected)
        await pilot.press("2")
        await pilot.pause()
        job = app.client.submit("send", "pacs", {"paths": [str(f) for f in files]})
        app.remember_job(job)
        await wait_until(pilot, lambda: job_state(app, job["id"]) == "succeeded")
        screen = app.main_screens["jobs"]
        assert isinstance(screen, JobsScreen)
        assert str(screen.table.get_cell(str(job["id"]), "progress")) == "########## 3/3"
        assert str(screen.table.get_cell(str(job["id"]), "target")) == "pacs"
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, JobDetailScreen))
        detail = app.screen
        assert isinstance(detail, JobDetailScreen)
        instances = detail.query_one("#instances", DataTable)
        await wait_until(pilot, lambda: instances.row_count == 3)
        assert {str(instances.get_cell_at((r, 0))) for r in range(3)} == {"success"}
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen
        # Nothing this operator started is running: q leaves without asking.
        await pilot.press("q")
    assert len(storescp.files()) == 3


async def test_a_failed_job_is_retried_from_the_table(daemon_factory, tmp_path: Path) -> None:
    daemon = daemon_factory(retry_max_attempts=1).start()
    port = free_port()
    add_node(daemon, "later", port)
    files = write_ct_series(tmp_path / "series", 2)
    app = ConsoleApp(daemon.data_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.connected)
        await pilot.press("2")
        job = app.client.submit("send", "later", {"paths": [str(f) for f in files]})
        await wait_until(pilot, lambda: job_state(app, job["id"]) == "failed")
        scp = StoreSCP(tmp_path / "scp", port=port)
        try:
            screen = app.main_screens["jobs"]
            assert isinstance(screen, JobsScreen)
            screen.table.focus()
            assert screen.selected_id() == job["id"]
            await pilot.press("r")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal))
            await pilot.press("y")
            await wait_until(pilot, lambda: job_state(app, job["id"]) == "succeeded")
            assert len(scp.files()) == 2
        finally:
            scp.stop()


async def test_cancel_asks_first_and_quit_asks_while_my_job_runs(daemon_factory, tmp_path) -> None:
    daemon = daemon_factory(retry_max_attempts=5, retry_first_delay=30).start()
    add_node(daemon, "down", free_port())
    files = write_ct_series(tmp_path / "series", 1)
    app = ConsoleApp(daemon.data_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.connected)
        await pilot.press("2")
        job = app.client.submit("send", "down", {"paths": [str(f) for f in files]})
        app.remember_job(job)
        await wait_until(pilot, lambda: job_state(app, job["id"]) == "waiting-retry")
        await pilot.press("q")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal))
        assert str(job["id"]) in app.screen.text
        await pilot.press("n")
        await pilot.pause()
        assert app.is_running
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal))
        await pilot.press("escape")
        await pilot.pause()
        assert app.client.job(job["id"])["state"] == "waiting-retry"
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal))
        await pilot.press("y")
        await wait_until(pilot, lambda: job_state(app, job["id"]) == "cancelled")
        await pilot.press("q")
    assert app.return_code == 0


async def test_technologist_is_refused_until_unlocked_with_the_password(daemon) -> None:
    result = run(
        appliance_cmd("service-password", "--data-dir", str(daemon.data_dir)),
        input=PASSWORD + "\n",
    )
    assert result.returncode == 0, result.stderr
    app = ConsoleApp(daemon.data_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.connected)
        try:
            app.client.set_setting("ae_title", "CONSOLE")
        except ApiError as error:
            assert error.code == "forbidden"
        else:
            raise AssertionError("a technologist changed a setting")
        # A wrong password keeps it locked.
        await pilot.press("ctrl+u")
        await wait_until(pilot, lambda: isinstance(app.screen, PasswordModal))
        await pilot.press(*"wrong", "enter")
        await pilot.pause(0.5)
        assert not app.service_mode
        await pilot.press("ctrl+u")
        await wait_until(pilot, lambda: isinstance(app.screen, PasswordModal))
        await pilot.press(*PASSWORD, "enter")
        await wait_until(pilot, lambda: app.service_mode)
        assert "SERVICE MODE" in app.sub_title
        app.client.set_setting("ae_title", "CONSOLE")
        assert app.client.settings()["ae_title"] == "CONSOLE"
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert not app.service_mode and "technologist" in app.sub_title


async def test_daemon_stopped_while_open_shows_a_banner_then_recovers(daemon) -> None:
    app = ConsoleApp(daemon.data_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.connected)
        await pilot.press("2")
        await pilot.pause()
        daemon.stop()
        await wait_until(pilot, lambda: not app.connected)
        screen = app.screen
        assert isinstance(screen, ConsoleScreen)
        banner = screen.query_one(ConnectionBanner)
        await wait_until(pilot, lambda: banner.has_class("-shown"))
        assert "not running" in str(banner.render())
        daemon.start(port=daemon.port)
        await wait_until(pilot, lambda: app.connected, timeout=30)
        assert not banner.has_class("-shown")
        # The console works again: a fresh call goes through.
        assert app.client.status()["services"]


async def test_a_node_changed_on_the_nodes_screen_reaches_the_query_screen(daemon) -> None:
    result = run(
        appliance_cmd("service-password", "--data-dir", str(daemon.data_dir)),
        input=PASSWORD + "\n",
    )
    assert result.returncode == 0, result.stderr
    app = ConsoleApp(daemon.data_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.connected)
        await pilot.press("4")
        query = app.main_screens["query"]
        assert isinstance(query, QueryScreen)
        await wait_until(pilot, lambda: "no node offers C-FIND" in message_of(query))
        await pilot.press("ctrl+u")
        await wait_until(pilot, lambda: isinstance(app.screen, PasswordModal))
        await pilot.press(*PASSWORD, "enter")
        await wait_until(pilot, lambda: app.service_mode)
        await pilot.press("5")
        nodes = app.main_screens["nodes"]
        assert isinstance(nodes, NodesScreen)
        await wait_until(pilot, lambda: app.screen is nodes)
        await pilot.press("a")
        form = await wait_until(
            pilot, lambda: isinstance(app.screen, NodeFormScreen) and app.screen
        )
        values = {"name": "pacs", "ae_title": "PACS", "host": LOOPBACK, "port": str(free_port())}
        for name, value in values.items():
            form.query_one(f"#node-{name}", Input).value = value
        await pilot.press("ctrl+s")
        # The Query screen, not shown, picks the new node up: no restart, no visit needed.
        await wait_until(pilot, lambda: app.screen is nodes and query.node() == "pacs")
        assert "no node offers C-FIND" not in message_of(query)
        table = nodes.query_one("#nodes-table", DataTable)
        await wait_until(pilot, lambda: table.row_count == 1)
        table.focus()
        await pilot.press("delete")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal))
        await pilot.press("y")
        await wait_until(pilot, lambda: app.screen is nodes and query.node() is None)
        assert "no node offers C-FIND" in message_of(query)


def message_of(query: QueryScreen) -> str:
    return str(query.query_one("#query-message", Static).render())
