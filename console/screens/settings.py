"""Settings: the local AE and the daemon's settings, and the retry policies over them.

Everyone may read them; field service edits them. Each value goes to the daemon as typed and
the daemon checks it: its message is shown under the field it names. What is stored takes
effect in the daemon without restarting the console (the listener's own address and port
need a daemon restart, as the CLI says).
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, DataTable, Footer, Header, Input, Static

from console.base import ConsoleScreen, RoleChanged, describe_error
from console.client import ApiError
from console.screens._forms import (
    FORM_CSS,
    READ_ONLY_NOTE,
    clear_field_errors,
    error_field,
    field_row,
    set_message,
    show_field_error,
)

SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Local AE",
        (
            "ae_title",
            "port",
            "bind_address",
            "max_pdu",
            "max_associations",
            "association_timeout",
            "dimse_timeout",
            "network_timeout",
            "transfer_syntaxes",
            "accept_unknown_calling_ae",
            "check_called_ae",
            "accept_any_storage_class",
        ),
    ),
    (
        "Jobs and retries",
        (
            "job_workers",
            "node_concurrency",
            "retry_max_attempts",
            "retry_first_delay",
            "retry_multiplier",
            "retry_max_delay",
            "job_retention_days",
            "job_retention_count",
        ),
    ),
)
RETRY_FIELDS = ("max_attempts", "first_delay", "multiplier", "max_delay")


def setting_text(value: Any) -> str:
    """A setting as the operator types it: lists comma-separated, booleans true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


def parse_number(text: str) -> int | float | str:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text  # the daemon says what is wrong with it


def parse_retry_values(text: str) -> dict[str, int | float | str]:
    """``max_attempts=5 first_delay=10`` (spaces or commas between) to a values object."""
    values: dict[str, int | float | str] = {}
    for part in text.replace(",", " ").split():
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"{part!r} is not name=value ({', '.join(RETRY_FIELDS)})")
        values[key.strip()] = parse_number(value.strip())
    if not values:
        raise ValueError(f"give name=value pairs: {', '.join(RETRY_FIELDS)}")
    return values


def grouped_keys(keys: list[str]) -> list[tuple[str, list[str]]]:
    """Sections of the known settings, then every other setting the daemon has."""
    known = {key for _, section in SECTIONS for key in section}
    groups = [(title, [key for key in section if key in keys]) for title, section in SECTIONS]
    others = [key for key in keys if key not in known and "password" not in key]
    groups.append(("Other", others))
    return [(title, section) for title, section in groups if section]


class SettingsScreen(ConsoleScreen):
    """The daemon's settings (ctrl+s saves what changed) and the retry policies."""

    TITLE = "Settings"

    DEFAULT_CSS = (
        FORM_CSS
        + """
    SettingsScreen .field-label { width: 30; }
    SettingsScreen .field-error { padding-left: 30; }
    SettingsScreen #settings-form { height: 1fr; }
    SettingsScreen .section-title { text-style: bold; color: $accent; margin-top: 1; }
    SettingsScreen #retry-table { height: auto; max-height: 8; }
    SettingsScreen .retry-row { height: 1; }
    SettingsScreen .retry-row Input { width: 1fr; margin-right: 1; }
    SettingsScreen .retry-row #retry-scope { width: 24; }
    SettingsScreen .retry-row Button { width: auto; min-width: 7; margin-right: 1; }
    """
    )
    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("g", "refresh", "Reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.loaded: dict[str, str] = {}
        self.built = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="settings-note", classes="read-only-note")
        yield VerticalScroll(id="settings-form")
        yield Static("", id="settings-message", classes="form-message")
        yield Footer()

    def on_mount(self) -> None:
        self.apply_role()
        self.action_refresh()

    def on_screen_resume(self) -> None:
        if self.built:
            self.apply_role()

    def on_role_changed(self, message: RoleChanged) -> None:
        self.apply_role()

    def apply_role(self) -> None:
        editable = self.service_mode
        note = self.query_one("#settings-note", Static)
        note.update("" if editable else READ_ONLY_NOTE)
        note.display = not editable
        form = self.query_one("#settings-form")
        for widget in form.query("Input, Button"):
            widget.disabled = not editable

    # --- loading ---------------------------------------------------------------------------

    def action_refresh(self) -> None:
        self.call_in_background(self._load, self.show_settings, group="settings-load")

    def _load(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.client.settings(), self.client.retry_policies()

    def show_settings(self, loaded: tuple[dict[str, Any], dict[str, Any]]) -> None:
        settings, retry = loaded
        self.loaded = {key: setting_text(value) for key, value in settings.items()}
        if not self.built:
            self.build_form(list(settings), retry)
            return
        for key, text in self.loaded.items():
            for field in self.query(f"#setting-{key}").results(Input):
                field.value = text
        self.show_retry(retry)

    def build_form(self, keys: list[str], retry: dict[str, Any]) -> None:
        form = self.query_one("#settings-form", VerticalScroll)
        widgets: list[Any] = []
        for title, section in grouped_keys(keys):
            widgets.append(Static(title, classes="section-title"))
            for key in section:
                field = Input(self.loaded.get(key, ""), id=f"setting-{key}", compact=True)
                widgets.extend(field_row(key, field, error_id=f"setting-{key}-error"))
        widgets.append(
            Static("Retry policies (over the retry_* defaults)", classes="section-title")
        )
        table: DataTable[str] = DataTable(id="retry-table", cursor_type="row")
        table.add_columns("Scope", *RETRY_FIELDS)
        widgets.append(table)
        widgets.append(
            Horizontal(
                Input(placeholder="kind:send or node:pacs", id="retry-scope", compact=True),
                Input(placeholder="max_attempts=5 first_delay=10", id="retry-values", compact=True),
                Button("Set", id="retry-set", compact=True),
                Button("Clear", id="retry-clear", compact=True),
                classes="retry-row",
            )
        )
        widgets.append(Static("", id="retry-message", classes="form-message"))
        self.built = True

        def mounted() -> None:
            self.show_retry(retry)
            self.apply_role()

        form.mount_all(widgets)
        self.call_after_refresh(mounted)

    def show_retry(self, retry: dict[str, Any]) -> None:
        table = self.query_one("#retry-table", DataTable)
        table.clear()
        rows = [("default", retry.get("default", {}))]
        rows.extend(sorted((retry.get("overrides") or {}).items()))
        for scope, values in rows:
            table.add_row(
                scope, *(setting_text(values.get(f, "")) for f in RETRY_FIELDS), key=scope
            )

    # --- saving ----------------------------------------------------------------------------

    def changes(self) -> dict[str, str]:
        changed = {}
        for field in self.query("#settings-form Input").results(Input):
            key = (field.id or "").removeprefix("setting-")
            if field.id and field.id.startswith("setting-") and field.value != self.loaded.get(key):
                changed[key] = field.value.strip()
        return changed

    def action_save(self) -> None:
        message = self.query_one("#settings-message", Static)
        if not self.service_mode:
            set_message(message, READ_ONLY_NOTE, error=True)
            return
        changes = self.changes()
        if not changes:
            set_message(message, "nothing changed")
            return
        self.save(changes)

    def save(self, changes: dict[str, str]) -> None:
        """Send each changed value to the daemon; it checks the role and the value."""
        clear_field_errors(self)
        set_message(self.query_one("#settings-message", Static), "saving...")

        def store() -> list[tuple[str, Any, ApiError | None]]:
            results: list[tuple[str, Any, ApiError | None]] = []
            for key, value in changes.items():
                try:
                    results.append((key, self.client.set_setting(key, value)["value"], None))
                except ApiError as error:
                    results.append((key, None, error))
            return results

        self.call_in_background(
            store,
            self.saved,
            group="settings-save",
            on_error=lambda error: set_message(
                self.query_one("#settings-message", Static), describe_error(error), error=True
            ),
        )

    def saved(self, results: list[tuple[str, Any, ApiError | None]]) -> None:
        stored = [key for key, _, error in results if error is None]
        refused = [(key, error) for key, _, error in results if error is not None]
        general = []
        for key, error in refused:
            named = error_field(error) or key
            if self.query(f"#setting-{named}-error"):
                show_field_error(self, f"setting-{named}-error", describe_error(error))
            else:
                general.append(describe_error(error))
        parts = []
        if stored:
            parts.append(f"saved {', '.join(stored)}")
        if refused:
            parts.append(f"not saved: {', '.join(key for key, _ in refused)}")
        text = "; ".join(parts + general)
        set_message(self.query_one("#settings-message", Static), text, error=bool(refused))
        if refused:
            key = refused[0][0]
            for field in self.query(f"#setting-{key}").results(Input):
                field.focus()
        # Reload what the daemon stored (normalised), keeping what was refused as typed.
        typed = {key: self.query_one(f"#setting-{key}", Input).value for key, _ in refused}

        def reloaded(loaded: tuple[dict[str, Any], dict[str, Any]]) -> None:
            self.show_settings(loaded)
            for key, value in typed.items():
                self.query_one(f"#setting-{key}", Input).value = value

        self.call_in_background(self._load, reloaded, group="settings-load")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id in ("retry-scope", "retry-values"):
            self.set_retry()
        else:
            self.action_save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "retry-set":
            self.set_retry()
        elif event.button.id == "retry-clear":
            self.clear_retry()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        scope = str(event.row_key.value) if event.row_key is not None else ""
        if scope and scope != "default" and self.service_mode:
            self.query_one("#retry-scope", Input).value = scope

    # --- retry policies --------------------------------------------------------------------

    def set_retry(self) -> None:
        message = self.query_one("#retry-message", Static)
        if not self.service_mode:
            set_message(message, READ_ONLY_NOTE, error=True)
            return
        scope = self.query_one("#retry-scope", Input).value.strip()
        try:
            values = parse_retry_values(self.query_one("#retry-values", Input).value)
        except ValueError as error:
            set_message(message, str(error), error=True)
            return
        self.call_in_background(
            lambda: self.client.set_retry_policy(scope, values),
            lambda stored: self.retry_done(f"retry policy {scope}: {stored}"),
            group="settings-retry",
            on_error=lambda error: set_message(message, describe_error(error), error=True),
        )

    def clear_retry(self) -> None:
        message = self.query_one("#retry-message", Static)
        if not self.service_mode:
            set_message(message, READ_ONLY_NOTE, error=True)
            return
        scope = self.query_one("#retry-scope", Input).value.strip()
        self.call_in_background(
            lambda: self.client.clear_retry_policy(scope),
            lambda _: self.retry_done(f"retry policy {scope} cleared"),
            group="settings-retry",
            on_error=lambda error: set_message(message, describe_error(error), error=True),
        )

    def retry_done(self, text: str) -> None:
        set_message(self.query_one("#retry-message", Static), text, ok=True)
        self.call_in_background(
            self.client.retry_policies, self.show_retry, group="settings-retry-load"
        )
