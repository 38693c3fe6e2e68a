"""Nodes: the remote DICOM peers the appliance talks to.

Everyone may list nodes and echo them; adding, editing and removing is for field service.
The daemon checks every field; its message is shown under the field it names.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, DataTable, Footer, Header, Input, Select, Static

from console.base import ConsoleScreen, RoleChanged, describe_error
from console.screens._forms import (
    FORM_CSS,
    READ_ONLY_NOTE,
    clear_field_errors,
    error_field,
    field_row,
    set_message,
    show_field_error,
)
from console.widgets import ConfirmModal

SERVICES = ("echo", "store", "find", "move", "get", "commitment")
RETRIEVE_METHODS = ("move", "get")
NODE_COLUMNS = ("Name", "AE title", "Host", "Port", "Services", "Retrieve")


def node_port_value(text: str) -> int | str:
    """The port as typed: a number when it is one, else the text for the daemon to refuse."""
    text = text.strip()
    return int(text) if text.isdigit() else text


class NodeFormScreen(ConsoleScreen, ModalScreen[str | None]):
    """Add or edit one node. Dismisses with the saved node's name, or None when cancelled."""

    DEFAULT_CSS = (
        FORM_CSS
        + """
    NodeFormScreen { align: center middle; background: $background 60%; }
    NodeFormScreen #node-form {
        width: 76; max-width: 100%; height: auto; max-height: 100%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    NodeFormScreen #form-title { text-style: bold; }
    NodeFormScreen .buttons { height: 1; margin-top: 1; }
    NodeFormScreen .buttons Button { width: auto; min-width: 8; margin-right: 2; }
    """
    )
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Save"),
    ]

    FIELDS = (
        ("name", "Name"),
        ("ae_title", "AE title"),
        ("host", "Host"),
        ("port", "Port"),
        ("services", "Services"),
        ("move_destination", "Move destination"),
        ("retrieve_method", "Retrieve with"),
    )

    def __init__(self, node: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.node = dict(node) if node else None

    def compose(self) -> ComposeResult:
        node = self.node or {}
        title = f"Edit node {node['name']}" if self.node else "Add a node"
        services = ", ".join(node.get("services", SERVICES))
        widgets: dict[str, Any] = {
            "name": Input(node.get("name", ""), placeholder="e.g. pacs", compact=True),
            "ae_title": Input(node.get("ae_title", ""), placeholder="e.g. PACS", compact=True),
            "host": Input(node.get("host", ""), placeholder="host name or IP", compact=True),
            "port": Input(str(node.get("port", "")), placeholder="1..65535", compact=True),
            "services": Input(services, placeholder=", ".join(SERVICES), compact=True),
            "move_destination": Checkbox(
                "accepts C-MOVE to it", bool(node.get("move_destination", True)), compact=True
            ),
            "retrieve_method": Select(
                [(method, method) for method in RETRIEVE_METHODS],
                value=node.get("retrieve_method", "move"),
                allow_blank=False,
                compact=True,
            ),
        }
        with Vertical(id="node-form"):
            yield Static(title, id="form-title")
            yield Static("", id="form-note", classes="read-only-note")
            for name, label in self.FIELDS:
                widget = widgets[name]
                widget.id = f"node-{name}"
                yield from field_row(label, widget, error_id=f"node-{name}-error")
            yield Static("", id="form-message", classes="form-message")
            with Horizontal(classes="buttons"):
                yield Button("Save", id="save", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        if self.node:
            self.query_one("#node-name", Input).disabled = True
        self.apply_role()

    def on_role_changed(self, message: RoleChanged) -> None:
        self.apply_role()

    def apply_role(self) -> None:
        editable = self.service_mode
        for name, _ in self.FIELDS:
            widget = self.query_one(f"#node-{name}")
            widget.disabled = not editable or (name == "name" and self.node is not None)
        self.query_one("#save", Button).disabled = not editable
        note = self.query_one("#form-note", Static)
        note.update("" if editable else READ_ONLY_NOTE)
        note.display = not editable
        if editable:
            first = "#node-ae_title" if self.node else "#node-name"
            self.query_one(first, Input).focus()
        else:
            self.query_one("#cancel", Button).focus()

    def values(self) -> dict[str, Any]:
        def text(name: str) -> str:
            return self.query_one(f"#node-{name}", Input).value.strip()

        services = [part.strip() for part in text("services").split(",") if part.strip()]
        return {
            "name": text("name"),
            "ae_title": text("ae_title"),
            "host": text("host"),
            "port": node_port_value(text("port")),
            "services": services,
            "move_destination": self.query_one("#node-move_destination", Checkbox).value,
            "retrieve_method": str(self.query_one("#node-retrieve_method", Select).value),
        }

    def submit(self) -> None:
        """Send the form to the daemon (which checks the role and every field)."""
        fields = self.values()
        replace = self.node is not None
        clear_field_errors(self)
        set_message(self.query_one("#form-message", Static), "saving...")
        self.call_in_background(
            lambda: self.client.add_node(fields, replace=replace),
            self._saved,
            group="node-save",
            on_error=self._refused,
        )

    def _saved(self, node: dict[str, Any]) -> None:
        self.dismiss(str(node.get("name", "")))

    def _refused(self, error: BaseException) -> None:
        message = self.query_one("#form-message", Static)
        name = error_field(error)
        field = name.removeprefix("node.") if name else None
        if field in dict(self.FIELDS):
            show_field_error(self, f"node-{field}-error", describe_error(error))
            set_message(message, "")
            widget = self.query_one(f"#node-{field}")
            if widget.focusable:
                widget.focus()
            return
        set_message(message, describe_error(error), error=True)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "save":
            self.action_save()
        elif event.button.id == "cancel":
            self.action_cancel()

    def action_save(self) -> None:
        if not self.service_mode:
            set_message(self.query_one("#form-message", Static), READ_ONLY_NOTE, error=True)
            return
        self.submit()

    def action_cancel(self) -> None:
        self.dismiss(None)


class NodesScreen(ConsoleScreen):
    """The configured nodes, with Echo for everyone and add / edit / remove for field service."""

    TITLE = "Nodes"

    DEFAULT_CSS = (
        FORM_CSS
        + """
    NodesScreen #nodes-table { height: 1fr; }
    NodesScreen #echo-result { height: auto; min-height: 1; }
    NodesScreen .buttons { height: 1; }
    NodesScreen .buttons Button { width: auto; min-width: 8; margin-right: 1; }
    """
    )
    BINDINGS = [
        Binding("e", "echo", "Echo"),
        Binding("a", "add", "Add"),
        Binding("enter", "edit", "Edit", show=False),
        Binding("E", "edit", "Edit", show=False),
        Binding("delete", "remove", "Remove"),
        Binding("x", "remove", "Remove", show=False),
        Binding("g", "refresh", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="nodes-note", classes="read-only-note")
        table: DataTable[str] = DataTable(id="nodes-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static("", id="echo-result", classes="form-message")
        with Horizontal(classes="buttons"):
            yield Button("Echo", id="echo", compact=True)
            yield Button("Add", id="add", compact=True)
            yield Button("Edit", id="edit", compact=True)
            yield Button("Remove", id="remove", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#nodes-table", DataTable).add_columns(*NODE_COLUMNS)
        self.apply_role()
        self.action_refresh()

    def on_screen_resume(self) -> None:
        if self.is_mounted:
            self.apply_role()
            self.action_refresh()

    def on_role_changed(self, message: RoleChanged) -> None:
        self.apply_role()

    def apply_role(self) -> None:
        editable = self.service_mode
        for button_id in ("add", "edit", "remove"):
            self.query_one(f"#{button_id}", Button).disabled = not editable
        note = self.query_one("#nodes-note", Static)
        note.update("" if editable else READ_ONLY_NOTE)
        note.display = not editable

    # --- data ------------------------------------------------------------------------------

    def action_refresh(self) -> None:
        self.call_in_background(self.client.nodes, self.show_nodes, group="nodes-list")

    def show_nodes(self, nodes: list[dict[str, Any]]) -> None:
        self.nodes = nodes
        table = self.query_one("#nodes-table", DataTable)
        current = self.selected_name()
        table.clear()
        for node in nodes:
            table.add_row(
                node["name"],
                node["ae_title"],
                node["host"],
                str(node["port"]),
                ",".join(node.get("services", [])),
                node.get("retrieve_method", ""),
                key=node["name"],
            )
        if current:
            for index, node in enumerate(nodes):
                if node["name"] == current:
                    table.move_cursor(row=index)

    def selected_name(self) -> str | None:
        table = self.query_one("#nodes-table", DataTable)
        if not self.nodes or table.row_count == 0:
            return None
        row = table.cursor_row
        if not 0 <= row < len(self.nodes):
            return None
        return str(table.coordinate_to_cell_key((row, 0)).row_key.value)

    def selected_node(self) -> dict[str, Any] | None:
        name = self.selected_name()
        return next((node for node in self.nodes if node["name"] == name), None)

    # --- actions ---------------------------------------------------------------------------

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        actions = {
            "echo": self.action_echo,
            "add": self.action_add,
            "edit": self.action_edit,
            "remove": self.action_remove,
        }
        if event.button.id in actions:
            actions[event.button.id]()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_edit()

    def action_echo(self) -> None:
        name = self.selected_name()
        result = self.query_one("#echo-result", Static)
        if name is None:
            set_message(result, "no node selected", error=True)
            return
        set_message(result, f"echo {name}...")
        self.call_in_background(
            lambda: self.client.echo(name),
            lambda answer: self.show_echo(name, answer),
            group="nodes-echo",
            on_error=lambda error: set_message(
                result, f"echo {name}: {describe_error(error)}", error=True
            ),
        )

    def show_echo(self, name: str, answer: dict[str, Any]) -> None:
        result = self.query_one("#echo-result", Static)
        seconds = float(answer.get("seconds") or 0)
        message = str(answer.get("message") or f"echo {name}")
        text = f"{message} (round trip {seconds * 1000:.0f} ms)"
        if answer.get("ok"):
            set_message(result, f"✓ {text}", ok=True)
        else:
            set_message(result, f"✗ {text}", error=True)

    def read_only(self) -> bool:
        if self.service_mode:
            return False
        set_message(self.query_one("#echo-result", Static), READ_ONLY_NOTE, error=True)
        return True

    def action_add(self) -> None:
        if not self.read_only():
            self.app.push_screen(NodeFormScreen(), self.form_closed)

    def action_edit(self) -> None:
        node = self.selected_node()
        if node is None:
            return
        # Technologists see the node's fields, read-only.
        self.app.push_screen(NodeFormScreen(node), self.form_closed)

    def form_closed(self, name: str | None) -> None:
        if name:
            set_message(self.query_one("#echo-result", Static), f"node {name} saved", ok=True)
            self.action_refresh()
            self.announce_nodes_changed(name, "saved")

    def action_remove(self) -> None:
        name = self.selected_name()
        if name is None or self.read_only():
            return

        def answered(confirmed: bool | None) -> None:
            if confirmed:
                self.remove_node(name)

        self.app.push_screen(ConfirmModal(f"Remove node {name}?"), answered)

    def remove_node(self, name: str) -> None:
        """Ask the daemon to remove the node (it refuses technologists and routed nodes)."""
        result = self.query_one("#echo-result", Static)

        def removed(_: object) -> None:
            set_message(result, f"node {name} removed", ok=True)
            self.action_refresh()
            self.announce_nodes_changed(name, "removed")

        self.call_in_background(
            lambda: self.client.remove_node(name),
            removed,
            group="nodes-remove",
            on_error=lambda error: set_message(result, describe_error(error), error=True),
        )
