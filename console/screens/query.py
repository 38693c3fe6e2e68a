"""Query/Retrieve: C-FIND on a remote node through the daemon, and retrieve into the archive.

Pick a node (those offering find), fill any of patient name, ID, date range, modality and
accession, enter queries at study level. Enter on a study drills into its series; space marks
studies; ``r`` retrieves the marked studies (or the one under the cursor) as one job.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Button, DataTable, Footer, Header, Input, Select, Static

from console.base import ConsoleScreen, NodesChanged, describe_error
from console.screens._forms import FORM_CSS, set_message
from console.screens.studies import MARK, clip, dicom_date, show_date

QUERY_FIELDS = (
    ("patient_name", "Patient name (DOE*)"),
    ("patient_id", "Patient ID"),
    ("date_from", "From YYYYMMDD"),
    ("date_to", "To YYYYMMDD"),
    ("modality", "Modality"),
    ("accession", "Accession"),
)
STUDY_RETURN_KEYS = (
    "StudyInstanceUID",
    "StudyDescription",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_RETURN_KEYS = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
)
STUDY_COLUMNS = (" ", "Patient", "ID", "Date", "Mod", "Description", "Ser/Img")
SERIES_COLUMNS = ("#", "Mod", "Series description", "Images")


def text(value: Any) -> str:
    """A C-FIND answer's value (text, number, list or null) for a table cell."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "/".join(text(item) for item in value)
    return str(value)


def date_range(date_from: str, date_to: str) -> str:
    if date_from and date_to:
        return date_from if date_from == date_to else f"{date_from}-{date_to}"
    if date_from:
        return f"{date_from}-"
    if date_to:
        return f"-{date_to}"
    return ""


def study_keys(values: dict[str, str]) -> dict[str, str | None]:
    """The study-level identifier: matching keys as typed, return keys empty."""
    keys: dict[str, str | None] = {
        "PatientName": values.get("patient_name") or None,
        "PatientID": values.get("patient_id") or None,
        "StudyDate": date_range(values.get("date_from", ""), values.get("date_to", "")) or None,
        "ModalitiesInStudy": (values.get("modality") or "").upper() or None,
        "AccessionNumber": values.get("accession") or None,
    }
    keys.update(dict.fromkeys(STUDY_RETURN_KEYS))
    return keys


NO_FINDER = "no node offers C-FIND (field service adds nodes on Nodes)"
QUERY_HINT = "enter in a field queries the node"


class QueryScreen(ConsoleScreen):
    """Find studies on a remote node and retrieve them."""

    TITLE = "Query/Retrieve"

    DEFAULT_CSS = (
        FORM_CSS
        + """
    QueryScreen .search-row { height: 1; }
    QueryScreen .search-row Input { width: 1fr; margin-right: 1; }
    QueryScreen .search-row Select { width: 24; margin-right: 1; }
    QueryScreen #remote-studies { height: 1fr; min-height: 4; }
    QueryScreen #remote-series { height: 6; border-top: solid $primary-muted; }
    QueryScreen #query-message { height: auto; max-height: 2; }
    QueryScreen .buttons { height: 1; }
    QueryScreen .buttons Button { width: auto; min-width: 8; margin-right: 1; }
    """
    )
    BINDINGS = [
        Binding("slash", "focus_search", "Search"),
        Binding("space", "mark", "Mark", show=False),
        Binding("r", "retrieve", "Retrieve"),
        Binding("g", "query", "Query"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, Any]] = {}
        self.marked: set[str] = set()
        self.queries = 0  # answers shown so far
        self.series_of: str | None = None
        self.queried_node: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        fields = {
            name: Input(placeholder=hint, id=f"query-{name}", compact=True)
            for name, hint in QUERY_FIELDS
        }
        node: Select[str] = Select([], prompt="node", id="query-node", compact=True)
        yield Horizontal(node, fields["patient_name"], fields["patient_id"], classes="search-row")
        yield Horizontal(
            *(fields[n] for n in ("date_from", "date_to", "modality", "accession")),
            classes="search-row",
        )
        studies: DataTable[str] = DataTable(id="remote-studies", cursor_type="row")
        studies.add_columns(*STUDY_COLUMNS)
        yield studies
        series: DataTable[str] = DataTable(id="remote-series", cursor_type="row")
        series.add_columns(*SERIES_COLUMNS)
        yield series
        yield Static(QUERY_HINT, id="query-message", classes="form-message")
        with Horizontal(classes="buttons"):
            yield Button("Query", id="query", compact=True)
            yield Button("Series", id="series", compact=True)
            yield Button("Retrieve", id="retrieve", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.load_nodes()

    def load_nodes(self) -> None:
        self.call_in_background(
            self.client.nodes, self.show_nodes, group="query-nodes", on_error=self.show_failure
        )

    def on_screen_resume(self) -> None:
        if self.is_mounted:
            self.load_nodes()  # nodes may have been changed elsewhere (the CLI)

    def on_nodes_changed(self, message: NodesChanged) -> None:
        if self.is_mounted:
            self.load_nodes()  # changed on the Nodes screen

    def show_nodes(self, nodes: list[dict[str, Any]]) -> None:
        finders = [str(n["name"]) for n in nodes if "find" in n.get("services", [])]
        select = self.query_one("#query-node", Select)
        current = select.value
        select.set_options([(name, name) for name in finders])
        if current in finders:
            select.value = current
        elif len(finders) >= 1:
            select.value = finders[0]
        message = self.query_one("#query-message", Static)
        if not finders:
            self.show_message(NO_FINDER, True)
        elif str(message.render()) == NO_FINDER:
            self.show_message(QUERY_HINT)

    # --- query -----------------------------------------------------------------------------

    def node(self) -> str | None:
        value = self.query_one("#query-node", Select).value
        return value if isinstance(value, str) else None

    def values(self) -> dict[str, str]:
        values = {
            name: self.query_one(f"#query-{name}", Input).value.strip() for name, _ in QUERY_FIELDS
        }
        values["date_from"] = dicom_date(values["date_from"])
        values["date_to"] = dicom_date(values["date_to"])
        return values

    def action_query(self) -> None:
        node = self.node()
        if node is None:
            self.show_message("choose a node first", True)
            return
        keys = study_keys(self.values())
        self.show_message(f"querying {node}...")
        self.call_in_background(
            lambda: self.client.remote_find(node, "study", keys, limit=500),
            lambda answer: self.show_studies(node, answer),
            group="query-find",
            on_error=self.show_failure,
        )

    def action_focus_search(self) -> None:
        self.query_one("#query-patient_name", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_query()

    def show_message(self, message: str, error: bool = False, ok: bool = False) -> None:
        set_message(self.query_one("#query-message", Static), message, error=error, ok=ok)

    def show_failure(self, error: BaseException) -> None:
        self.queries += 1
        self.show_message(describe_error(error), True)

    def show_studies(self, node: str, answer: dict[str, Any]) -> None:
        self.queries += 1
        self.queried_node = node
        rows = [row for row in answer.get("rows", []) if row.get("StudyInstanceUID")]
        self.rows = {str(row["StudyInstanceUID"]): row for row in rows}
        self.marked &= set(self.rows)
        self.series_of = None
        table = self.query_one("#remote-studies", DataTable)
        table.clear()
        self.query_one("#remote-series", DataTable).clear()
        for uid, row in self.rows.items():
            series, images = (
                row.get("NumberOfStudyRelatedSeries"),
                row.get("NumberOfStudyRelatedInstances"),
            )
            table.add_row(
                MARK if uid in self.marked else " ",
                clip(text(row.get("PatientName")), 22),
                clip(text(row.get("PatientID")), 12),
                show_date(text(row.get("StudyDate"))),
                clip(text(row.get("ModalitiesInStudy")), 6),
                clip(text(row.get("StudyDescription")), 20),
                f"{text(series) or '?'}/{text(images) or '?'}",
                key=uid,
            )
        count = len(self.rows)
        status = answer.get("status") or ""
        if answer.get("ok"):
            self.show_message(f"{node}: {count} stud{'y' if count == 1 else 'ies'}", ok=True)
        else:
            self.show_message(f"{node}: {status}", True)
        if count:
            table.focus()

    # --- series --------------------------------------------------------------------------

    def cursor_uid(self) -> str | None:
        table = self.query_one("#remote-studies", DataTable)
        if table.row_count == 0 or not 0 <= table.cursor_row < table.row_count:
            return None
        return str(table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "remote-studies":
            event.stop()
            self.action_series()

    def action_series(self) -> None:
        uid = self.cursor_uid()
        node = self.queried_node
        if uid is None or node is None:
            return
        keys: dict[str, str | None] = {"StudyInstanceUID": uid}
        keys.update({key: None for key in SERIES_RETURN_KEYS if key != "StudyInstanceUID"})
        self.show_message(f"series of the study on {node}...")
        self.call_in_background(
            lambda: self.client.remote_find(node, "series", keys, limit=500),
            lambda answer: self.show_series(uid, answer),
            group="query-series",
            on_error=self.show_failure,
        )

    def show_series(self, uid: str, answer: dict[str, Any]) -> None:
        self.series_of = uid
        table = self.query_one("#remote-series", DataTable)
        table.clear()
        rows = answer.get("rows", [])
        for index, row in enumerate(rows):
            table.add_row(
                text(row.get("SeriesNumber")),
                text(row.get("Modality")),
                clip(text(row.get("SeriesDescription")), 40),
                text(row.get("NumberOfSeriesRelatedInstances")),
                key=str(row.get("SeriesInstanceUID") or index),
            )
        if answer.get("ok"):
            count = len(rows)
            patient = text(self.rows.get(uid, {}).get("PatientName"))
            self.show_message(f"{count} series in the study of {patient}", ok=True)
        else:
            self.show_message(str(answer.get("status", "")), True)

    # --- marking and retrieve ----------------------------------------------------------

    def action_mark(self) -> None:
        uid = self.cursor_uid()
        if uid is None:
            return
        self.marked ^= {uid}
        table = self.query_one("#remote-studies", DataTable)
        table.update_cell(uid, table.ordered_columns[0].key, MARK if uid in self.marked else " ")
        if table.cursor_row < table.row_count - 1:
            table.move_cursor(row=table.cursor_row + 1)

    def chosen(self) -> list[str]:
        if self.marked:
            return [uid for uid in self.rows if uid in self.marked]
        uid = self.cursor_uid()
        return [uid] if uid else []

    def action_retrieve(self) -> None:
        uids = self.chosen()
        node = self.queried_node
        if not uids or node is None:
            self.show_message("Retrieve: query, then select a study", True)
            return
        self.call_in_background(
            lambda: self.client.retrieve_studies(node, uids),
            self.retrieving,
            group="query-retrieve",
            on_error=self.show_failure,
        )

    def retrieving(self, job: dict[str, Any]) -> None:
        self.show_message(f"queued retrieve job #{job['id']} from {job['target']}", ok=True)
        self.marked.clear()
        table = self.query_one("#remote-studies", DataTable)
        for uid in self.rows:
            table.update_cell(uid, table.ordered_columns[0].key, " ")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        actions = {
            "query": self.action_query,
            "series": self.action_series,
            "retrieve": self.action_retrieve,
        }
        if event.button.id in actions:
            actions[event.button.id]()
