"""Pieces the configuration screens share: labelled fields with their own error line.

The daemon validates; its ConfigError text names the field (``node.port: 70000 is out of
range: allowed 1..65535``), so a form shows each message under the field it names.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import Label, Static

from console.client import ApiError

READ_ONLY_NOTE = "read-only: unlock service mode with ctrl+u"

FORM_CSS = """
.field-row { height: 1; }
.field-label { width: 22; padding-right: 1; color: $text-muted; }
.field-row Input, .field-row Select { width: 1fr; }
.field-error { display: none; color: $text-error; padding-left: 22; height: auto; }
.field-error.-shown { display: block; }
.read-only-note { color: $text-warning; height: 1; }
.form-message { height: auto; }
.form-message.-error { color: $text-error; }
.form-message.-ok { color: $text-success; }
"""


def error_field(error: BaseException) -> str | None:
    """The field a daemon validation error names (``node.port``, ``max_pdu``), if any."""
    if not isinstance(error, ApiError) or error.code != "invalid":
        return None
    name, sep, _ = error.message.partition(":")
    name = name.strip()
    if not sep or not name or " " in name:
        return None
    return name


def field_row(label: str, widget: Widget, *, error_id: str) -> Iterable[Widget]:
    """A label and its input on one line, then the (hidden until set) error line."""
    yield Horizontal(Label(label, classes="field-label"), widget, classes="field-row")
    yield Static("", id=error_id, classes="field-error")


def show_field_error(container: Widget, error_id: str, text: str) -> None:
    line = container.query_one(f"#{error_id}", Static)
    line.update(text)
    line.set_class(bool(text), "-shown")


def clear_field_errors(container: Widget) -> None:
    for line in container.query(".field-error").results(Static):
        line.update("")
        line.remove_class("-shown")


def set_message(line: Static, text: str, *, error: bool = False, ok: bool = False) -> None:
    line.update(text)
    line.set_class(error, "-error")
    line.set_class(ok, "-ok")
