"""Studies: the local archive by patient and study, with the series of the selected study.

Search by patient name (``*`` and ``?`` wildcards), patient ID, date range, modality and
accession number; enter in any field searches. Space marks studies; actions apply to the marked
studies, or to the study under the cursor: send to one or more nodes (one send job per node),
and print, burn, anonymize once their parts register them (``console.actions``).

When the daemon verifies digital signatures on receipt, each study carries its signature state
and a Signature column shows it: valid, INVALID (an object changed after it was signed),
untrusted (a signer not chained to a trusted CA, or expired), mixed; blank when unsigned.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Button, DataTable, Footer, Header, Input, Static

from console.actions import PLANNED, study_action, study_actions
from console.base import ConsoleScreen, DaemonEvents, describe_error
from console.screens._forms import FORM_CSS, set_message
from console.tables import styled
from console.widgets import NodePickerModal

SEARCH_FIELDS = (
    ("patient_name", "Patient name (DOE*)"),
    ("patient_id", "Patient ID"),
    ("modality", "Modality"),
    ("date_from", "From YYYYMMDD"),
    ("date_to", "To YYYYMMDD"),
    ("accession", "Accession"),
)
STUDY_COLUMNS = (" ", "Patient", "ID", "Date", "Mod", "Description", "Ser/Img")
SERIES_COLUMNS = ("#", "Mod", "Series description", "Images")
SIGNATURE_COLUMN = "Signature"
MARK = "✓"
# archive.studies "signatures" as the column shows it, and the colour it takes.
SIGNATURE_TEXT = {
    "valid": "valid",
    "invalid": "INVALID",
    "untrustworthy": "untrusted",
    "mixed": "mixed",
    "none": "",
}
SIGNATURE_STYLES = {"INVALID": "bold $error", "untrusted": "$warning", "mixed": "$warning"}


def signature_text(study: dict[str, Any]) -> str:
    state = str(study.get("signatures") or "none")
    return SIGNATURE_TEXT.get(state, state)


def dicom_date(text: str) -> str:
    """``2024-01-15`` or ``20240115`` as DICOM's ``20240115``; other text as typed."""
    cleaned = text.strip()
    digits = cleaned.replace("-", "").replace(".", "").replace("/", "")
    return digits if digits.isdigit() and len(digits) == 8 else cleaned


def show_date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 else value


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class StudiesScreen(ConsoleScreen):
    """Search the archive and act on studies."""

    TITLE = "Studies"

    DEFAULT_CSS = (
        FORM_CSS
        + """
    StudiesScreen .search-row { height: 1; }
    StudiesScreen .search-row Input { width: 1fr; margin-right: 1; }
    StudiesScreen #studies-table { height: 1fr; min-height: 4; }
    StudiesScreen #series-table { height: 6; border-top: solid $primary-muted; }
    StudiesScreen #studies-message { height: 1; }
    StudiesScreen .buttons { height: 1; }
    StudiesScreen .buttons Button { width: auto; min-width: 8; margin-right: 1; }
    """
    )
    BINDINGS = [
        Binding("slash", "focus_search", "Search"),
        Binding("space", "mark", "Mark", show=False),
        Binding("s", "send", "Send"),
        *(Binding(key, f"study_action('{name}')", label) for name, label, key in PLANNED),
        Binding("g", "search", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.studies: dict[str, dict[str, Any]] = {}
        self.marked: set[str] = set()
        self.series_of: str | None = None
        self.searches = 0  # answers shown so far
        self.signature_column = False  # shown once the daemon reports signature states
        self._refresh_pending = False

    def compose(self) -> ComposeResult:
        yield Header()
        fields = [
            Input(placeholder=hint, id=f"search-{name}", compact=True)
            for name, hint in SEARCH_FIELDS
        ]
        yield Horizontal(*fields[:3], classes="search-row")
        yield Horizontal(*fields[3:], classes="search-row")
        studies: DataTable[str] = DataTable(id="studies-table", cursor_type="row")
        studies.add_columns(*STUDY_COLUMNS)
        yield studies
        series: DataTable[str] = DataTable(id="series-table", cursor_type="row")
        series.add_columns(*SERIES_COLUMNS)
        yield series
        yield Static("", id="studies-message", classes="form-message")
        with Horizontal(classes="buttons"):
            yield Button("Send", id="action-send", compact=True)
            for action in study_actions():
                yield Button(action.label, id=f"action-{action.key}", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#studies-table", DataTable).focus()
        self.action_search()

    def on_screen_resume(self) -> None:
        if self.is_mounted and self.searches:
            self.search(announce=False)  # studies may have arrived meanwhile

    # --- search ----------------------------------------------------------------------------

    def filters(self) -> dict[str, str]:
        values = {
            name: self.query_one(f"#search-{name}", Input).value.strip()
            for name, _ in SEARCH_FIELDS
        }
        for name in ("date_from", "date_to"):
            values[name] = dicom_date(values[name])
        return {name: value for name, value in values.items() if value}

    def action_search(self) -> None:
        self.search()

    def search(self, *, announce: bool = True) -> None:
        """Ask the daemon; ``announce`` shows the count in the message line."""
        filters = self.filters()
        self.call_in_background(
            lambda: self.client.studies(limit=500, **filters),
            lambda studies: self.show_studies(studies, announce=announce),
            group="studies-search",
            on_error=self.show_failure,
        )

    def action_focus_search(self) -> None:
        self.query_one("#search-patient_name", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_search()
        self.query_one("#studies-table", DataTable).focus()

    def show_failure(self, error: BaseException) -> None:
        set_message(self.query_one("#studies-message", Static), describe_error(error), error=True)

    def show_studies(self, studies: list[dict[str, Any]], *, announce: bool = True) -> None:
        self.searches += 1
        table = self.query_one("#studies-table", DataTable)
        current = self.cursor_uid()
        self.studies = {study["study_uid"]: study for study in studies}
        self.marked &= set(self.studies)
        signed = any("signatures" in study for study in studies)
        if signed != self.signature_column:
            self.signature_column = signed
            table.clear(columns=True)
            table.add_columns(*STUDY_COLUMNS, *([SIGNATURE_COLUMN] if signed else []))
        table.clear()
        for uid, study in self.studies.items():
            cells: list[str | Text] = [
                MARK if uid in self.marked else " ",
                clip(study.get("patient_name", ""), 22),
                clip(study.get("patient_id", ""), 12),
                show_date(study.get("study_date", "")),
                clip("/".join(study.get("modalities", [])), 6),
                clip(study.get("study_description", ""), 20),
                f"{study.get('series_count', 0)}/{study.get('instance_count', 0)}",
            ]
            if signed:
                cells.append(styled(self.app, signature_text(study), SIGNATURE_STYLES))
            table.add_row(*cells, key=uid)
        if current in self.studies:
            table.move_cursor(row=table.get_row_index(current))
        count = len(studies)
        if announce:
            set_message(
                self.query_one("#studies-message", Static),
                f"{count} stud{'y' if count == 1 else 'ies'}"
                + (" (first 500)" if count >= 500 else ""),
            )
        self.load_series()

    def on_daemon_events(self, message: DaemonEvents) -> None:
        # New instances stored: refresh the list (throttled) so they appear without a key.
        if any(event.get("topic") == "storage" for event in message.events):
            if not self._refresh_pending:
                self._refresh_pending = True
                self.set_timer(2.0, self._refresh_after_storage)

    def _refresh_after_storage(self) -> None:
        self._refresh_pending = False
        self.search(announce=False)

    # --- series of the study under the cursor -------------------------------------------

    def cursor_uid(self) -> str | None:
        table = self.query_one("#studies-table", DataTable)
        if table.row_count == 0:
            return None
        row = table.cursor_row
        if not 0 <= row < table.row_count:
            return None
        return str(table.coordinate_to_cell_key((row, 0)).row_key.value)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "studies-table":
            self.load_series()

    def load_series(self) -> None:
        uid = self.cursor_uid()
        series = self.query_one("#series-table", DataTable)
        if uid is None:
            series.clear()
            self.series_of = None
            return
        if uid == self.series_of:
            return
        self.series_of = uid
        self.call_in_background(
            lambda: self.client.series(uid),
            lambda rows: self.show_series(uid, rows),
            group="studies-series",
            on_error=self.show_failure,
        )

    def show_series(self, uid: str, rows: list[dict[str, Any]]) -> None:
        if uid != self.cursor_uid():
            return
        table = self.query_one("#series-table", DataTable)
        table.clear()
        for row in rows:
            number = row.get("series_number")
            table.add_row(
                "" if number is None else str(number),
                row.get("modality", ""),
                clip(row.get("series_description", ""), 40),
                str(row.get("instance_count", "")),
                key=row["series_uid"],
            )

    # --- marking and actions -----------------------------------------------------------

    def action_mark(self) -> None:
        uid = self.cursor_uid()
        if uid is None:
            return
        self.marked ^= {uid}
        table = self.query_one("#studies-table", DataTable)
        table.update_cell(uid, table.ordered_columns[0].key, MARK if uid in self.marked else " ")
        if table.cursor_row < table.row_count - 1:
            table.move_cursor(row=table.cursor_row + 1)

    def chosen(self) -> list[dict[str, Any]]:
        """The marked studies, else the one under the cursor."""
        if self.marked:
            return [study for uid, study in self.studies.items() if uid in self.marked]
        uid = self.cursor_uid()
        return [self.studies[uid]] if uid in self.studies else []

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        key = (event.button.id or "").removeprefix("action-")
        if key == "send":
            self.action_send()
        elif key:
            self.action_study_action(key)

    def action_study_action(self, key: str) -> None:
        reason = study_action(key).run(self, self.chosen())
        if reason:
            set_message(self.query_one("#studies-message", Static), reason, error=True)

    def action_send(self) -> None:
        studies = self.chosen()
        message = self.query_one("#studies-message", Static)
        if not studies:
            set_message(message, "Send: select a study first", error=True)
            return
        uids = [study["study_uid"] for study in studies]
        self.call_in_background(
            self.client.nodes,
            lambda nodes: self.pick_send_nodes(nodes, uids),
            group="studies-nodes",
            on_error=self.show_failure,
        )

    def pick_send_nodes(self, nodes: list[dict[str, Any]], uids: list[str]) -> None:
        senders = [node for node in nodes if "store" in node.get("services", ["store"])]
        count = len(uids)
        title = f"Send {count} stud{'y' if count == 1 else 'ies'} to (space selects)"

        def picked(names: list[str] | None) -> None:
            if names:
                self.send(names, uids)

        self.app.push_screen(NodePickerModal(senders, multiple=True, title=title), picked)

    def send(self, nodes: list[str], uids: list[str]) -> None:
        """Queue one send job per node with the studies."""

        def submit() -> list[dict[str, Any]]:
            return [self.client.send_studies(node, uids) for node in nodes]

        self.call_in_background(submit, self.sent, group="studies-send", on_error=self.show_failure)

    def sent(self, jobs: list[dict[str, Any]]) -> None:
        text = ", ".join(f"#{job['id']} to {job['target']}" for job in jobs)
        set_message(self.query_one("#studies-message", Static), f"queued send job {text}", ok=True)
        self.marked.clear()
        table = self.query_one("#studies-table", DataTable)
        for uid in self.studies:
            table.update_cell(uid, table.ordered_columns[0].key, " ")
