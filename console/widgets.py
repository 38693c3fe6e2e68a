"""Small modals every console screen uses: confirm, password, node picker, and the key help.

All are keyboard first: escape cancels, enter confirms; the mouse works but is never needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, OptionList, SelectionList, Static
from textual.widgets.option_list import Option

MODAL_CSS = """
ConfirmModal, PasswordModal, NodePickerModal, HelpModal {
    align: center middle;
}
.modal-box {
    width: 64;
    max-width: 100%;
    height: auto;
    max-height: 90%;
    border: thick $primary;
    background: $surface;
    padding: 1 2;
}
.modal-box .modal-title {
    text-style: bold;
    margin-bottom: 1;
}
.modal-box .modal-hint {
    color: $text-muted;
    margin-top: 1;
}
.modal-buttons {
    height: auto;
    margin-top: 1;
    align-horizontal: right;
}
.modal-buttons Button {
    margin-left: 2;
}
NodePickerModal OptionList, NodePickerModal SelectionList {
    height: auto;
    max-height: 14;
}
HelpModal .modal-box {
    width: 72;
}
HelpModal DataTable {
    height: auto;
    max-height: 20;
}
"""


class ConfirmModal(ModalScreen[bool]):
    """A yes/no question; dismisses with True only when the operator confirms."""

    DEFAULT_CSS = MODAL_CSS
    BINDINGS = [
        Binding("escape,n", "answer(False)", "No"),
        Binding("y", "answer(True)", "Yes"),
    ]

    def __init__(self, text: str, *, yes: str = "Yes", no: str = "No") -> None:
        super().__init__()
        self.text = text
        self.yes_label = yes
        self.no_label = no

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal-box"):
            yield Static(self.text, id="confirm-text")
            with Horizontal(classes="modal-buttons"):
                yield Button(self.no_label, id="no")
                yield Button(self.yes_label, id="yes", variant="warning")
            yield Label("y: yes   n or escape: no", classes="modal-hint")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class PasswordModal(ModalScreen[str | None]):
    """Asks for a password (hidden); None when cancelled."""

    DEFAULT_CSS = MODAL_CSS
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, prompt: str = "Service password") -> None:
        super().__init__()
        self.prompt = prompt

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal-box"):
            yield Label(self.prompt, classes="modal-title")
            yield Input(password=True, id="password", placeholder="password")
            yield Label("enter: unlock   escape: cancel", classes="modal-hint")

    def on_mount(self) -> None:
        field = self.query_one("#password", Input)
        field.cursor_blink = False
        field.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


def _node_label(node: dict[str, Any]) -> str:
    name = str(node.get("name", ""))
    ae = str(node.get("ae_title", ""))
    host = str(node.get("host", ""))
    port = node.get("port", "")
    return f"{name:<14} {ae:<16} {host}:{port}"


class NodePickerModal(ModalScreen[list[str] | None]):
    """Pick one node (``multiple=False``) or several; the chosen names, or None when cancelled.
    Printers (name, AE title, host, port) are picked with it too.

    Space toggles a node (multiple), enter confirms, escape cancels.
    """

    DEFAULT_CSS = MODAL_CSS
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(
        self,
        nodes: list[dict[str, Any]],
        *,
        multiple: bool = False,
        title: str = "Choose a node",
        exclude: Iterable[str] = (),
        empty: str = "No nodes are configured (field service adds them on Nodes).",
    ) -> None:
        super().__init__()
        skip = set(exclude)
        self.nodes = [node for node in nodes if str(node.get("name")) not in skip]
        self.multiple = multiple
        self.title_text = title
        self.empty_text = empty

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal-box"):
            yield Label(self.title_text, classes="modal-title")
            if not self.nodes:
                yield Static(self.empty_text)
            elif self.multiple:
                yield SelectionList[str](
                    *[(_node_label(n), str(n["name"])) for n in self.nodes], id="nodes"
                )
            else:
                yield OptionList(
                    *[Option(_node_label(n), id=str(n["name"])) for n in self.nodes], id="nodes"
                )
            hint = (
                "space: select   enter: confirm   escape: cancel"
                if self.multiple
                else "enter: choose   escape: cancel"
            )
            yield Label(hint, classes="modal-hint")

    def on_mount(self) -> None:
        if self.nodes:
            self.query_one("#nodes").focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.dismiss([event.option.id])

    def on_key(self, event: Any) -> None:
        if self.multiple and event.key == "enter" and self.nodes:
            event.stop()
            event.prevent_default()
            self.dismiss(list(self.query_one("#nodes", SelectionList).selected))

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpModal(ModalScreen[None]):
    """The keys of a screen: key, what it does."""

    DEFAULT_CSS = MODAL_CSS
    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close")]

    def __init__(self, title: str, keys: list[tuple[str, str]]) -> None:
        super().__init__()
        self.title_text = title
        self.keys = keys

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal-box"):
            yield Label(self.title_text, classes="modal-title")
            table: DataTable[str] = DataTable(show_cursor=False, zebra_stripes=True, id="keys")
            table.add_columns("Key", "Action")
            for key, description in self.keys:
                table.add_row(key, description)
            yield table
            yield Label("escape: close   ctrl+p: all commands", classes="modal-hint")

    def action_close(self) -> None:
        self.dismiss(None)
