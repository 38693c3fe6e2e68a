"""The console's Studies, Query/Retrieve, Nodes and Settings screens against a real daemon.

Each screen runs alone in a small host app that offers what the console app offers a screen:
``client`` (an ApplianceClient) and ``service_mode``. The peers are real: DCMTK storescu fills
the archive, DCMTK storescp receives sends, a second appliance daemon answers C-FIND and
retrieves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from textual.app import App
from textual.screen import Screen
from textual.widgets import Button, DataTable, Input, Select, Static

from console.actions import register_study_action, unregister_study_action
from console.base import RoleChanged
from console.client import ApplianceClient
from console.screens.anonymize_dialog import AnonymizeDialog
from console.screens.burn_dialog import BurnDialog
from console.screens.nodes import NodeFormScreen, NodesScreen
from console.screens.query import QueryScreen
from console.screens.settings import SettingsScreen
from console.screens.studies import StudiesScreen
from console.widgets import NodePickerModal
from tests.factories import write_ct_series
from tests.peers import LOOPBACK, appliance_cmd, dcmtk, free_port, run


class ScreenHost(App[None]):
    """The console app's contract for a screen: ``client`` and ``service_mode``."""

    def __init__(self, client: ApplianceClient, screen: Screen, *, service: bool = False) -> None:
        super().__init__()
        self.client = client
        self.service_mode = service
        self.first_screen = screen

    def on_mount(self) -> None:
        self.push_screen(self.first_screen)

    def set_service_mode(self, service: bool) -> None:
        self.service_mode = service
        for screen in self.screen_stack:
            screen.post_message(RoleChanged(service))


SERVICE_PASSWORD = "field-service-pass"


def service_client_for_tests(daemon) -> ApplianceClient:
    """A client unlocked into service mode with a service password set by the CLI."""
    result = run(
        appliance_cmd("service-password", "--data-dir", str(daemon.data_dir)),
        input=SERVICE_PASSWORD + "\n",
    )
    assert result.returncode == 0, result.stderr
    client = ApplianceClient.for_data_dir(daemon.data_dir)
    client.unlock(SERVICE_PASSWORD)
    assert client.is_service
    return client


def technologist_client(daemon) -> ApplianceClient:
    return ApplianceClient.for_data_dir(daemon.data_dir)


async def wait_until(pilot, predicate: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await pilot.pause(0.05)


def text_of(app: App, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def table_keys(table: DataTable) -> list[str]:
    return [str(row.key.value) for row in table.ordered_rows]


def fill(form: Screen, **values: str) -> None:
    for name, value in values.items():
        form.query_one(f"#node-{name}", Input).value = value


# --- Nodes ------------------------------------------------------------------------------------


async def test_nodes_add_validate_echo_and_remove_in_service_mode(daemon, storescp):
    client = service_client_for_tests(daemon)
    app = ScreenHost(client, NodesScreen(), service=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert not app.screen.query_one("#nodes-note", Static).display
        await pilot.press("a")
        form = await wait_until(
            pilot, lambda: isinstance(app.screen, NodeFormScreen) and app.screen
        )
        fill(form, name="pacs", ae_title=storescp.ae_title, host=LOOPBACK, port="70000")
        await pilot.press("ctrl+s")
        error = await wait_until(pilot, lambda: text_of(app, "#node-port-error"))
        assert error == "node.port: 70000 is out of range: allowed 1..65535"
        assert form.query_one("#node-port-error").display
        assert not text_of(app, "#node-host-error")
        assert app.screen is form  # the form stays open for the operator to fix

        fill(form, port=str(storescp.port))
        await pilot.press("ctrl+s")
        nodes = await wait_until(pilot, lambda: isinstance(app.screen, NodesScreen) and app.screen)
        table = nodes.query_one("#nodes-table", DataTable)
        await wait_until(pilot, lambda: table_keys(table) == ["pacs"])
        assert [n["port"] for n in client.nodes()] == [storescp.port]

        table.focus()
        await pilot.press("e")
        result = await wait_until(pilot, lambda: "round trip" in text_of(app, "#echo-result"))
        result = text_of(app, "#echo-result")
        assert "success" in result and "✓" in result, result
        assert result.endswith(" ms)")

        # A node nobody listens on: the exact failure the daemon reports.
        dead = free_port()
        await pilot.press("a")
        form = await wait_until(
            pilot, lambda: isinstance(app.screen, NodeFormScreen) and app.screen
        )
        fill(form, name="dead", ae_title="NOBODY", host=LOOPBACK, port=str(dead))
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: table_keys(table) == ["dead", "pacs"])
        table.move_cursor(row=0)
        await pilot.press("e")
        await wait_until(pilot, lambda: "round trip" in text_of(app, "#echo-result"))
        expected = client.echo("dead")["message"]
        assert "FAILED" in expected and "cannot connect" in expected
        result = text_of(app, "#echo-result")
        assert result.startswith(f"✗ {expected} (round trip ")

        # Remove with confirmation: "n" keeps it, "y" removes it.
        await pilot.press("delete")
        await wait_until(pilot, lambda: app.screen is not nodes)
        await pilot.press("n")
        await wait_until(pilot, lambda: app.screen is nodes)
        assert table_keys(table) == ["dead", "pacs"]
        await pilot.press("delete")
        await wait_until(pilot, lambda: app.screen is not nodes)
        await pilot.press("y")
        await wait_until(pilot, lambda: table_keys(table) == ["pacs"])
        assert [n["name"] for n in client.nodes()] == ["pacs"]
        assert "node dead removed" in text_of(app, "#echo-result")


async def test_nodes_are_read_only_for_a_technologist_and_the_daemon_refuses_a_forced_change(
    daemon, storescp
):
    assert (
        daemon.cli(
            "node", "add", "pacs", "--ae-title", "PACS", "--host", LOOPBACK, "--port", "104"
        ).returncode
        == 0
    )
    client = technologist_client(daemon)
    app = ScreenHost(client, NodesScreen())
    async with app.run_test(size=(80, 24)) as pilot:
        nodes = app.screen
        table = nodes.query_one("#nodes-table", DataTable)
        await wait_until(pilot, lambda: table_keys(table) == ["pacs"])
        assert text_of(app, "#nodes-note") == "read-only: unlock service mode with ctrl+u"
        assert all(nodes.query_one(f"#{b}", Button).disabled for b in ("add", "edit", "remove"))
        assert not nodes.query_one("#echo", Button).disabled
        await pilot.press("a")
        await pilot.pause()
        assert app.screen is nodes
        assert "read-only" in text_of(app, "#echo-result")

        # The form shows the node's fields, all disabled.
        table.focus()
        await pilot.press("enter")
        form = await wait_until(
            pilot, lambda: isinstance(app.screen, NodeFormScreen) and app.screen
        )
        assert form.query_one("#node-port", Input).value == "104"
        assert all(form.query_one(f"#node-{f}").disabled for f, _ in NodeFormScreen.FIELDS)
        assert form.query_one("#save", Button).disabled
        assert text_of(app, "#form-note") == "read-only: unlock service mode with ctrl+u"
        # Forced past the disabled form, the daemon refuses it.
        form.submit()
        refused = await wait_until(pilot, lambda: "not allowed" in text_of(app, "#form-message"))
        assert refused
        assert "nodes.add needs the service role" in text_of(app, "#form-message")
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is nodes)
        nodes.remove_node("pacs")
        await wait_until(pilot, lambda: "not allowed" in text_of(app, "#echo-result"))
        assert [n["name"] for n in client.nodes()] == ["pacs"]

        # Unlocked (the role message from the app), the same screen becomes editable.
        service_client_for_tests(daemon)
        client.unlock(SERVICE_PASSWORD)
        app.set_service_mode(True)
        await wait_until(pilot, lambda: not nodes.query_one("#add", Button).disabled)
        assert not nodes.query_one("#nodes-note", Static).display


# --- Settings ---------------------------------------------------------------------------------


def stored_settings(daemon) -> dict:
    result = daemon.cli("config", "show", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_settings_edit_in_service_mode_with_validation_and_retry_policy(daemon):
    client = service_client_for_tests(daemon)
    app = ScreenHost(client, SettingsScreen(), service=True)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        field = await wait_until(pilot, lambda: screen.query("#setting-max_associations"))
        field = screen.query_one("#setting-max_associations", Input)
        assert field.value == "10" and not field.disabled
        assert not screen.query_one("#settings-note", Static).display

        field.focus()
        field.value = ""
        await pilot.press("2", "4", "enter")
        await wait_until(pilot, lambda: "saved" in text_of(app, "#settings-message"))
        assert text_of(app, "#settings-message") == "saved max_associations"
        assert stored_settings(daemon)["max_associations"] == 24

        # A bad value: the daemon's message under its field; the other change is stored.
        field.value = "500"
        screen.query_one("#setting-job_workers", Input).value = "3"
        await pilot.press("ctrl+s")
        error = await wait_until(pilot, lambda: text_of(app, "#setting-max_associations-error"))
        assert error == "max_associations: 500 is out of range: allowed 1..256"
        assert "not saved: max_associations" in text_of(app, "#settings-message")
        stored = stored_settings(daemon)
        assert stored["max_associations"] == 24 and stored["job_workers"] == 3
        await pilot.pause(0.3)
        assert field.value == "500"  # kept as typed, to fix

        # Retry policy override for send jobs, listed under the default.
        screen.query_one("#retry-scope", Input).value = "kind:send"
        screen.query_one("#retry-values", Input).value = "max_attempts=3 first_delay=5"
        screen.query_one("#retry-values", Input).focus()
        await pilot.press("enter")
        table = screen.query_one("#retry-table", DataTable)
        await wait_until(pilot, lambda: "kind:send" in table_keys(table))
        assert table.get_row("kind:send")[1:3] == ["3", "5.0"]
        assert client.retry_policies()["overrides"]["kind:send"]["max_attempts"] == 3
        screen.query_one("#retry-values", Input).value = "max_attempts=0"
        await pilot.press("enter")
        await wait_until(pilot, lambda: "max_attempts" in text_of(app, "#retry-message"))


async def test_settings_are_read_only_for_a_technologist(daemon):
    client = technologist_client(daemon)
    app = ScreenHost(client, SettingsScreen())
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.query("#retry-set"))
        await pilot.pause(0.2)
        assert text_of(app, "#settings-note") == "read-only: unlock service mode with ctrl+u"
        assert all(w.disabled for w in screen.query("#settings-form Input"))
        assert screen.query_one("#setting-max_associations", Input).value == "10"
        await pilot.press("ctrl+s")
        assert "read-only" in text_of(app, "#settings-message")
        # Forced past the disabled form, the daemon refuses it.
        screen.save({"max_associations": "20"})
        await wait_until(
            pilot, lambda: "not allowed" in text_of(app, "#setting-max_associations-error")
        )
        assert stored_settings(daemon)["max_associations"] == 10


# --- Studies ----------------------------------------------------------------------------------


def write_study(folder: Path, count: int, **attributes: str) -> list[Path]:
    """A study of ``count`` small images; ``attributes`` (StudyDate, Modality...) overridden."""
    names = {"PatientName": "patient_name", "PatientID": "patient_id"}
    files = write_ct_series(
        folder,
        count,
        rows=8,
        columns=8,
        **{names[k]: v for k, v in attributes.items() if k in names},
    )
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword, value in attributes.items():
            if keyword not in names:
                setattr(ds, keyword, value)
        ds.save_as(path)
    return files


def storescu_into(daemon, files: list[Path], ae_title: str | None = None) -> None:
    result = run(
        [dcmtk("storescu"), "-aec", ae_title or daemon.ae_title, LOOPBACK, str(daemon.port)]
        + [str(f) for f in files]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def study_uid_of(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


async def search(pilot, app, table: DataTable, expected: int, **values: str) -> list[str]:
    screen = app.screen
    for field in screen.query(".search-row Input").results(Input):
        field.value = ""
    for name, value in values.items():
        screen.query_one(f"#search-{name}", Input).value = value
    screen.query_one("#search-patient_name", Input).focus()
    done = screen.searches
    await pilot.press("enter")
    await wait_until(pilot, lambda: screen.searches > done)
    assert table.row_count == expected
    return table_keys(table)


async def test_studies_search_send_to_a_storescp_node_and_study_action_hooks(
    daemon, storescp, tmp_path
):
    doe = write_study(
        tmp_path / "doe",
        3,
        PatientName="DOE^JOHN",
        PatientID="PAT001",
        StudyDate="20240115",
        AccessionNumber="ACC001",
    )
    smith = write_study(
        tmp_path / "smith",
        2,
        PatientName="SMITH^ANNA",
        PatientID="PAT002",
        StudyDate="20230301",
        Modality="MR",
        AccessionNumber="ACC777",
    )
    storescu_into(daemon, doe + smith)
    doe_uid, smith_uid = study_uid_of(doe), study_uid_of(smith)
    assert (
        daemon.cli(
            "node",
            "add",
            "pacs",
            "--ae-title",
            storescp.ae_title,
            "--host",
            LOOPBACK,
            "--port",
            str(storescp.port),
        ).returncode
        == 0
    )
    client = technologist_client(daemon)  # searching and sending are for everyone
    app = ScreenHost(client, StudiesScreen())
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        table = screen.query_one("#studies-table", DataTable)
        await wait_until(pilot, lambda: table.row_count == 2)
        assert table_keys(table) == [doe_uid, smith_uid]  # newest first
        assert text_of(app, "#studies-message") == "2 studies"

        assert await search(pilot, app, table, 1, patient_name="smith*") == [smith_uid]
        assert await search(pilot, app, table, 1, patient_id="PAT001") == [doe_uid]
        assert await search(pilot, app, table, 1, modality="mr") == [smith_uid]
        assert await search(pilot, app, table, 1, date_from="20240101") == [doe_uid]
        assert await search(pilot, app, table, 1, date_from="2023-01-01", date_to="2023-12-31") == [
            smith_uid
        ]
        assert await search(pilot, app, table, 1, accession="ACC00*") == [doe_uid]
        assert await search(pilot, app, table, 0, patient_name="NOBODY") == []
        # A filter the daemon refuses: its message, not a crash.
        screen.query_one("#search-date_from", Input).value = "2024"
        screen.query_one("#search-date_from", Input).focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: "YYYYMMDD" in text_of(app, "#studies-message"))

        assert await search(pilot, app, table, 2) == [doe_uid, smith_uid]
        table.focus()
        table.move_cursor(row=0)
        series = screen.query_one("#series-table", DataTable)
        await wait_until(pilot, lambda: series.row_count == 1)
        assert series.get_row_at(0)[3] == "3"

        # Burn opens the burn dialog (tests/test_console_media.py); a registered action takes
        # its place.
        await pilot.press("b")
        await wait_until(pilot, lambda: isinstance(app.screen, BurnDialog))
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is screen)
        burned: list[list[str]] = []
        register_study_action(
            "burn", "Burn", lambda s, studies: burned.append([x["study_uid"] for x in studies])
        )
        try:
            await pilot.press("b")
            assert burned == [[doe_uid]]
        finally:
            unregister_study_action("burn")
        # Anonymize opens the anonymize dialog (tests/test_console_anonymize.py).
        await pilot.press("a")
        await wait_until(pilot, lambda: isinstance(app.screen, AnonymizeDialog))
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is screen)

        # Send the study under the cursor to the storescp node picked in the modal.
        await pilot.press("s")
        picker = await wait_until(
            pilot, lambda: isinstance(app.screen, NodePickerModal) and app.screen
        )
        assert [n["name"] for n in picker.nodes] == ["pacs"]
        await pilot.press("space", "enter")
        await wait_until(pilot, lambda: "queued send job" in text_of(app, "#studies-message"))
        message = text_of(app, "#studies-message")
        job_id = int(message.split("#")[1].split()[0])
        assert message == f"queued send job #{job_id} to pacs"
        deadline = time.monotonic() + 60
        while (job := client.job(job_id))["state"] not in (
            "succeeded",
            "failed",
            "partially-failed",
        ):
            assert time.monotonic() < deadline, job
            await pilot.pause(0.2)
        assert job["state"] == "succeeded", job
        assert job["counts"]["success"] == 3
        assert len(storescp.files()) == 3


# --- Query/Retrieve ---------------------------------------------------------------------------


async def test_query_a_second_appliance_drill_into_series_and_retrieve_a_study(
    daemon_factory, tmp_path
):
    peer = daemon_factory("peer", ae_title="PEERARCH").start()
    main = daemon_factory().start()
    doe = write_study(tmp_path / "doe", 3, PatientName="DOE^JOHN", PatientID="PAT001")
    smith = write_study(
        tmp_path / "smith", 2, PatientName="SMITH^ANNA", PatientID="PAT002", StudyDate="20230301"
    )
    storescu_into(peer, doe + smith)
    doe_uid = study_uid_of(doe)
    for daemon, name, ae, port in (
        (main, "peer", "PEERARCH", peer.port),
        (peer, "main", main.ae_title, main.port),  # the peer moves studies to us
    ):
        added = daemon.cli(
            "node", "add", name, "--ae-title", ae, "--host", LOOPBACK, "--port", str(port)
        )
        assert added.returncode == 0, added.stderr
    client = technologist_client(main)
    app = ScreenHost(client, QueryScreen())
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.node() == "peer")
        table = screen.query_one("#remote-studies", DataTable)

        screen.query_one("#query-patient_name", Input).focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.queries == 1)
        assert sorted(table_keys(table)) == sorted([doe_uid, study_uid_of(smith)])
        assert text_of(app, "#query-message") == "peer: 2 studies"

        field = screen.query_one("#query-patient_name", Input)
        field.value = "DOE*"
        field.focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.queries == 2)
        assert table_keys(table) == [doe_uid]
        assert table.get_row_at(0)[1:4] == ["DOE^JOHN", "PAT001", "2024-01-15"]

        # Drill into the series of the study.
        table.focus()
        await pilot.press("enter")
        series = screen.query_one("#remote-series", DataTable)
        await wait_until(pilot, lambda: series.row_count == 1)
        assert series.get_row_at(0)[1] == "CT" and series.get_row_at(0)[3] == "3"

        # Retrieve it: a job in the first daemon, which ends with the study in its archive.
        await pilot.press("r")
        await wait_until(pilot, lambda: "queued retrieve job" in text_of(app, "#query-message"))
        message = text_of(app, "#query-message")
        job_id = int(message.split("#")[1].split()[0])
        assert message == f"queued retrieve job #{job_id} from peer"
        deadline = time.monotonic() + 60
        final = ("succeeded", "failed", "partially-failed")
        while (job := client.job(job_id))["state"] not in final:
            assert time.monotonic() < deadline, job
            await pilot.pause(0.2)
        assert job["state"] == "succeeded", job
        assert [s["study_uid"] for s in client.studies()] == [doe_uid]
        assert client.studies()[0]["instance_count"] == 3

        # A node that does not answer: the failure, not a crash.
        assert (
            main.cli(
                "node",
                "add",
                "gone",
                "--ae-title",
                "GONE",
                "--host",
                LOOPBACK,
                "--port",
                str(free_port()),
            ).returncode
            == 0
        )
        screen.load_nodes()
        await pilot.pause(0.5)
        screen.query_one("#query-node", Select).value = "gone"
        field.focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.queries == 3)
        assert "cannot connect" in text_of(app, "#query-message")
        assert table.row_count == 0
