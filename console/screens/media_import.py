"""Import a disc, a folder or an ISO file: scan, reconcile each disc patient, then import.

The operator types a path (a folder, an ISO file, a device such as /dev/sr0) or picks a drive
holding a data disc; ``media.scan`` reads the disc's DICOMDIR (or every file when there is none)
and answers with the disc's patients, their studies and the local patients matching each (by
ID, then by name and birth date), and the problems it found: files that are not DICOM or are
cut short, object types the archive does not keep, paths that point outside the disc. Nothing
is stored yet.

The reconciliation table has one row per disc patient; for each the technologist keeps the
disc's values (k), maps the patient to a local one (m: a match, or a local patient ID typed in)
or enters a new ID and name (n). ctrl+s queues ``media.import`` with those choices; the job's
id is shown on the Media screen. Changed values are written into the objects with the originals
kept in the Original Attributes Sequence (the daemon does that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from console.base import ConsoleScreen, describe_error
from console.screens._forms import (
    FORM_CSS,
    clear_field_errors,
    field_row,
    set_message,
    show_field_error,
)
from console.screens.film_composer import FormError
from console.screens.media import DATA_STATES, drive_text
from console.screens.print import Columns, fitted
from console.screens.studies import clip, show_date
from console.widgets import MODAL_CSS

MAX_VALUE = 64  # Long String (LO) and one Person Name component group
# Column key, heading and width (None: the rest of the line); the narrow set fits 80 columns.
RECONCILE_COLUMNS: Columns = (
    ("patient_id", "Disc ID", 14),
    ("name", "Name", 18),
    ("birth", "Birth", 10),
    ("studies", "St", 2),
    ("matches", "Local match", 22),
    ("choice", "Import as", None),
)
RECONCILE_NARROW: tuple[str, ...] = ("patient_id", "name", "birth", "matches", "choice")
NARROW_WIDTHS = {"patient_id": 10, "name": 14, "matches": 12}
WIDE = 110


# --- the scan's answer -------------------------------------------------------------------------
# Read leniently: a key the daemon leaves out is shown as empty, never a crash.


def patient_name(entry: dict[str, Any]) -> str:
    return str(entry.get("patient_name") or entry.get("name") or "")


def birth_date(entry: dict[str, Any]) -> str:
    return str(entry.get("birth_date") or entry.get("patient_birth_date") or "")


def studies_of(patient: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in patient.get("studies") or [] if isinstance(s, dict)]


def matches_of(patient: dict[str, Any]) -> list[dict[str, Any]]:
    found = patient.get("local_matches")
    if found is None:
        found = patient.get("matches")
    return [m for m in found or [] if isinstance(m, dict)]


def problems_of(scan: dict[str, Any]) -> list[str]:
    """The scan's problems as lines: ``path: what is wrong`` (or the daemon's text as is)."""
    lines: list[str] = []
    for problem in scan.get("problems") or []:
        if isinstance(problem, dict):
            where = str(problem.get("path") or problem.get("file") or "")
            what = str(problem.get("problem") or problem.get("reason") or problem.get("error"))
            lines.append(f"{where}: {what}" if where else what)
        else:
            lines.append(str(problem))
    return lines


def file_count(scan: dict[str, Any]) -> int:
    files = scan.get("files")
    if isinstance(files, list):
        return len(files)
    if isinstance(files, int):
        return files
    return sum(
        study_count(s) for p in scan.get("patients") or [] for s in studies_of(p) if study_count(s)
    )


def study_count(study: dict[str, Any]) -> int:
    for key in ("count", "instances", "instance_count", "files"):
        value = study.get(key)
        if isinstance(value, int):
            return value
    return 0


def study_line(study: dict[str, Any]) -> str:
    date = show_date(str(study.get("study_date") or study.get("date") or ""))
    modalities = study.get("modalities") or study.get("modality") or ""
    if isinstance(modalities, list):
        modalities = "/".join(str(m) for m in modalities)
    description = str(study.get("study_description") or study.get("description") or "")
    count = study_count(study)
    parts = [date, str(modalities), description, f"{count} image{'' if count == 1 else 's'}"]
    return " · ".join(part for part in parts if part)


def match_text(match: dict[str, Any]) -> str:
    """``123 DOE^JOHN 1970-01-01 (same ID)``."""
    parts = [str(match.get("patient_id") or ""), patient_name(match)]
    if birth_date(match):
        parts.append(show_date(birth_date(match)))
    how = str(match.get("match") or "")
    how = MATCH_WORDS.get(how, how)
    text = " ".join(part for part in parts if part)
    return f"{text} ({how})" if how else text


MATCH_WORDS = {"id": "same ID", "name+birth date": "same name and birth date"}
DICOMDIR_WORDS = {
    "read": "read from its DICOMDIR",
    "missing": "no DICOMDIR: every file read",
    "broken": "DICOMDIR broken: every file read",
}


def scan_summary(scan: dict[str, Any], source: str) -> str:
    """``/dev/sr1 (OUTSIDE_HOSP): 2 patients, 3 studies, 57 files, read from its DICOMDIR``."""
    patients = [p for p in scan.get("patients") or [] if isinstance(p, dict)]
    studies = sum(len(studies_of(p)) for p in patients)
    files = file_count(scan)
    label = str(scan.get("fileset_id") or scan.get("label") or "").strip()
    head = f"{source} ({label})" if label else source
    text = (
        f"{head}: {len(patients)} patient{'' if len(patients) == 1 else 's'}, "
        f"{studies} stud{'y' if studies == 1 else 'ies'}, {files} file{'' if files == 1 else 's'}"
    )
    importable = scan.get("importable")
    if isinstance(importable, int) and importable != files:
        text += f" ({importable} importable)"
    how = DICOMDIR_WORDS.get(str(scan.get("dicomdir") or ""), "")
    return f"{text}, {how}" if how else text


# --- choices -----------------------------------------------------------------------------------


def check_value(field: str, value: str, what: str) -> str:
    text = value.strip()
    if not text:
        raise FormError(field, f"enter the {what}")
    if len(text) > MAX_VALUE:
        raise FormError(field, f"at most {MAX_VALUE} characters ({len(text)})")
    if "\\" in text or any(ord(char) < 32 for char in text):
        raise FormError(field, "no backslash or control characters")
    return text


def new_choice(patient_id: str, name: str) -> dict[str, Any]:
    """``{"action": "new", "patient_id": ..., "patient_name": ...}``; FormError otherwise."""
    return {
        "action": "new",
        "patient_id": check_value("id", patient_id, "new patient ID"),
        "patient_name": check_value("name", name, "new name (FAMILY^GIVEN)"),
    }


def choice_text(choice: dict[str, Any]) -> str:
    action = choice.get("action")
    if action == "map":
        name = str(choice.get("_name") or "")
        return f"map to {choice.get('patient_id')}{' ' + name if name else ''}"
    if action == "new":
        return f"new: {choice.get('patient_id')} {choice.get('patient_name')}"
    return "keep as on the disc"


def reconcile_request(choices: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The choices as media.import takes them (without what only the table shows)."""
    return {
        patient_id: {k: v for k, v in choice.items() if not k.startswith("_")}
        for patient_id, choice in choices.items()
    }


@dataclass
class DiscPatient:
    patient_id: str
    entry: dict[str, Any]


# --- the small modals --------------------------------------------------------------------------


class MapPatientModal(ConsoleScreen, ModalScreen[dict[str, Any] | None]):
    """Map a disc patient to a local one: a match, or a local patient ID typed in (checked
    against the archive). Dismisses with the map choice, or None."""

    DEFAULT_CSS = (
        MODAL_CSS
        + FORM_CSS
        + """
    MapPatientModal { align: center middle; }
    MapPatientModal OptionList { height: auto; max-height: 8; }
    MapPatientModal .field-label { width: 18; }
    MapPatientModal .field-error { padding-left: 18; }
    """
    )
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, patient: DiscPatient) -> None:
        super().__init__()
        self.patient = patient
        self.matches = matches_of(patient.entry)

    def compose(self) -> ComposeResult:
        who = f"{self.patient.patient_id} {patient_name(self.patient.entry)}".strip()
        with Vertical(classes="modal-box"):
            yield Label(f"Map disc patient {who} to", classes="modal-title")
            if self.matches:
                yield OptionList(
                    *[Option(match_text(m), id=str(index)) for index, m in enumerate(self.matches)],
                    id="map-matches",
                )
            else:
                yield Static("No local patient matches by ID or by name and birth date.")
            yield from field_row(
                "or local patient ID",
                Input(placeholder="patient ID in the archive", id="map-id", compact=True),
                error_id="map-id-error",
            )
            yield Label("enter: choose   escape: cancel", classes="modal-hint")

    def on_mount(self) -> None:
        field = self.query_one("#map-id", Input)
        field.cursor_blink = False
        if self.matches:
            self.query_one("#map-matches", OptionList).focus()
        else:
            field.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        match = self.matches[int(event.option.id or 0)]
        self.dismiss(
            {
                "action": "map",
                "patient_id": str(match.get("patient_id")),
                "_name": patient_name(match),
            }
        )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        clear_field_errors(self)
        try:
            patient_id = check_value("id", event.value, "local patient ID")
        except FormError as error:
            show_field_error(self, "map-id-error", error.message)
            return
        self.call_in_background(
            lambda: self.client.studies(patient_id=patient_id, limit=1),
            lambda studies: self.checked(patient_id, studies),
            group="map-check",
            on_error=lambda error: show_field_error(self, "map-id-error", describe_error(error)),
        )

    def checked(self, patient_id: str, studies: list[dict[str, Any]]) -> None:
        # The archive matches patient IDs with wildcards: only the exact ID counts.
        exact = [s for s in studies if str(s.get("patient_id")) == patient_id]
        if not exact:
            show_field_error(self, "map-id-error", f"no local patient has ID {patient_id}")
            return
        name = str(exact[0].get("patient_name") or "")
        self.dismiss({"action": "map", "patient_id": patient_id, "_name": name})

    def action_cancel(self) -> None:
        self.dismiss(None)


class NewPatientModal(ModalScreen[dict[str, Any] | None]):
    """New values for a disc patient: patient ID and name. Dismisses with the new choice."""

    DEFAULT_CSS = (
        MODAL_CSS
        + FORM_CSS
        + """
    NewPatientModal { align: center middle; }
    NewPatientModal .field-label { width: 12; }
    NewPatientModal .field-error { padding-left: 12; }
    """
    )
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, patient: DiscPatient, current: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.patient = patient
        self.current = current if current and current.get("action") == "new" else {}

    def compose(self) -> ComposeResult:
        who = f"{self.patient.patient_id} {patient_name(self.patient.entry)}".strip()
        with Vertical(classes="modal-box"):
            yield Label(f"New values for disc patient {who}", classes="modal-title")
            yield from field_row(
                "Patient ID",
                Input(str(self.current.get("patient_id") or ""), id="new-id", compact=True),
                error_id="new-id-error",
            )
            yield from field_row(
                "Name",
                Input(
                    str(self.current.get("patient_name") or patient_name(self.patient.entry)),
                    placeholder="FAMILY^GIVEN",
                    id="new-name",
                    compact=True,
                ),
                error_id="new-name-error",
            )
            yield Label("enter: next field, then save   escape: cancel", classes="modal-hint")

    def on_mount(self) -> None:
        for field in self.query(Input):
            field.cursor_blink = False
        self.query_one("#new-id", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id == "new-id" and not self.query_one("#new-name", Input).value.strip():
            self.query_one("#new-name", Input).focus()
            return
        clear_field_errors(self)
        try:
            choice = new_choice(
                self.query_one("#new-id", Input).value, self.query_one("#new-name", Input).value
            )
        except FormError as error:
            show_field_error(self, f"new-{error.field}-error", error.message)
            return
        self.dismiss(choice)

    def action_cancel(self) -> None:
        self.dismiss(None)


# --- the import screen -------------------------------------------------------------------------


class ImportScreen(ConsoleScreen, ModalScreen[dict[str, Any] | None]):
    """Scan a source, reconcile its patients, queue the import; dismisses with the job."""

    DEFAULT_CSS = (
        FORM_CSS
        + """
    ImportScreen { align: center middle; background: $background 60%; }
    ImportScreen #import {
        width: 100%; max-width: 130; height: 100%; max-height: 50;
        border: round $primary; background: $surface; padding: 0 1;
    }
    ImportScreen #import-title { text-style: bold; height: 1; }
    ImportScreen .field-label { width: 8; }
    ImportScreen .field-error { padding-left: 8; }
    ImportScreen #import-drives { height: auto; max-height: 4; }
    ImportScreen #import-summary { height: auto; }
    ImportScreen #reconcile { height: 1fr; min-height: 4; }
    ImportScreen #import-patient { height: auto; max-height: 6; color: $text-muted; }
    ImportScreen #import-problems {
        height: auto; max-height: 6; border-top: solid $warning; display: none;
    }
    ImportScreen #import-problems.-shown { display: block; }
    ImportScreen #import-problems-text { color: $text-warning; }
    ImportScreen .buttons { height: 1; }
    ImportScreen .buttons Button { width: auto; min-width: 8; margin-right: 1; }
    """
    )
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "import_now", "Import", priority=True),
        Binding("ctrl+r", "scan", "Scan again", priority=True),
        Binding("k", "choose('keep')", "Keep"),
        Binding("m", "choose('map')", "Map"),
        Binding("n", "choose('new')", "New values"),
    ]
    HINT = "enter: scan   k/m/n: keep, map, new values   ctrl+s: import   escape: cancel"

    def __init__(self, source: str = "", drives: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.initial = source
        self.drives = [d for d in drives or [] if d.get("state") in DATA_STATES]
        self.scan: dict[str, Any] | None = None
        self.scanned_source = ""
        self.patients: list[DiscPatient] = []
        self.choices: dict[str, dict[str, Any]] = {}
        self.busy = False
        self.columns: Columns = RECONCILE_COLUMNS

    def fit_columns(self) -> Columns:
        """The columns at the app's width (the box is at most 130 wide, 4 of it frame)."""
        inner = min(130, self.app.size.width) - 4
        if inner + 4 >= WIDE:
            return fitted(RECONCILE_COLUMNS, None, inner)
        narrow = tuple(
            (key, label, NARROW_WIDTHS.get(key, width)) for key, label, width in RECONCILE_COLUMNS
        )
        return fitted(narrow, RECONCILE_NARROW, inner)

    def compose(self) -> ComposeResult:
        self.columns = self.fit_columns()
        with Vertical(id="import"):
            yield Static("Import a disc, a folder or an ISO file", id="import-title")
            if self.drives:
                yield OptionList(
                    *[Option(drive_text(d), id=str(d.get("device"))) for d in self.drives],
                    id="import-drives",
                )
            yield from field_row(
                "Source",
                Input(
                    self.initial,
                    placeholder="/dev/sr0, /path/to/folder or /path/to/disc.iso",
                    id="import-source",
                    compact=True,
                ),
                error_id="import-source-error",
            )
            yield Static("", id="import-summary")
            table: DataTable[str | Text] = DataTable(id="reconcile", cursor_type="row")
            for key, label, width in self.columns:
                table.add_column(label, key=key, width=width)
            yield table
            yield Static("", id="import-patient")
            with VerticalScroll(id="import-problems"):
                yield Static("", id="import-problems-text")
            yield Static("", id="import-message", classes="form-message")
            with Horizontal(classes="buttons"):
                yield Button("Import", id="import-go", variant="primary", compact=True)
                yield Button("Scan", id="import-scan", compact=True)
                yield Button("Keep", id="import-keep", compact=True)
                yield Button("Map", id="import-map", compact=True)
                yield Button("New", id="import-new", compact=True)
                yield Button("Cancel", id="import-cancel", compact=True)
            yield Label(self.HINT, classes="modal-hint")

    def on_mount(self) -> None:
        self.query_one("#import-problems").border_title = "Problems"
        field = self.query_one("#import-source", Input)
        field.cursor_blink = False
        if self.initial:
            self.action_scan()
        elif self.drives:
            self.query_one("#import-drives", OptionList).focus()
        else:
            field.focus()

    @property
    def table(self) -> DataTable[str | Text]:
        return self.query_one("#reconcile", DataTable)

    def message(self, text: str, *, error: bool = False, ok: bool = False) -> None:
        set_message(self.query_one("#import-message", Static), text, error=error, ok=ok)

    # --- scan ------------------------------------------------------------------------------

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.query_one("#import-source", Input).value = event.option.id
            self.action_scan()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_scan()

    def action_scan(self) -> None:
        clear_field_errors(self)
        source = self.query_one("#import-source", Input).value.strip()
        if not source:
            show_field_error(self, "import-source-error", "type a path or pick a drive")
            return
        if not source.startswith("/"):
            show_field_error(
                self,
                "import-source-error",
                "an absolute path: a folder, an ISO file or a device (/dev/sr0)",
            )
            return
        self.busy = True
        self.message(f"reading {source}... (a whole disc takes a while)")
        self.call_in_background(
            lambda: self.client.scan_media(source),
            lambda scan: self.show_scan(source, scan),
            group="import-scan",
            on_error=self.scan_failed,
        )

    def scan_failed(self, error: BaseException) -> None:
        self.busy = False
        self.message("")
        show_field_error(self, "import-source-error", describe_error(error))

    def show_scan(self, source: str, scan: dict[str, Any]) -> None:
        self.busy = False
        self.scan = scan
        self.scanned_source = source
        self.patients = [
            DiscPatient(str(p.get("patient_id") or ""), p)
            for p in scan.get("patients") or []
            if isinstance(p, dict)
        ]
        self.choices = {p.patient_id: {"action": "keep"} for p in self.patients}
        self.query_one("#import-summary", Static).update(scan_summary(scan, self.scanned_source))
        table = self.table
        with self.app.batch_update():
            table.clear()
            for index, patient in enumerate(self.patients):
                table.add_row(*self.cells_of(patient), key=str(index))
        problems = problems_of(scan)
        box = self.query_one("#import-problems")
        box.set_class(bool(problems), "-shown")
        box.border_title = f"{len(problems)} problem{'' if len(problems) == 1 else 's'}"
        self.query_one("#import-problems-text", Static).update("\n".join(problems))
        if not self.patients:
            self.message("Nothing to import: no DICOM object found.", error=True)
            return
        self.message(
            "Choose for each disc patient: k keep, m map to a local patient, n new values; "
            "then ctrl+s imports."
        )
        table.focus()
        self.describe_patient()

    def row(self, patient: DiscPatient) -> dict[str, str | Text]:
        """The row's cells by column key, cut to the column widths (the line under the table
        shows the highlighted patient in full)."""
        widths = {key: width or 1 for key, _, width in self.columns}
        entry = patient.entry
        matches = matches_of(entry)
        if matches:
            first = match_text(matches[0])
            more = f" +{len(matches) - 1}" if len(matches) > 1 else ""
            matched = clip(first, widths.get("matches", 22) - len(more)) + more
        else:
            matched = "none"
        choice = self.choices.get(patient.patient_id, {"action": "keep"})
        style = "bold" if choice.get("action") != "keep" else ""
        cells: dict[str, str | Text] = {
            "patient_id": patient.patient_id or "(no ID)",
            "name": patient_name(entry).replace("^", " "),
            "birth": show_date(birth_date(entry)),
            "studies": str(len(studies_of(entry))),
            "matches": matched,
            "choice": choice_text(choice),
        }
        for key, width in widths.items():
            cells[key] = clip(str(cells[key]), width)
        cells["choice"] = Text(str(cells["choice"]), style=style)
        return cells

    def cells_of(self, patient: DiscPatient) -> list[str | Text]:
        cells = self.row(patient)
        return [cells[key] for key, _, _ in self.columns]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.describe_patient()

    def selected(self) -> DiscPatient | None:
        table = self.table
        if table.row_count == 0 or not self.patients:
            return None
        return self.patients[min(table.cursor_row, len(self.patients) - 1)]

    def describe_patient(self) -> None:
        """The highlighted disc patient in full: studies, matches, the choice."""
        patient = self.selected()
        if patient is None:
            self.query_one("#import-patient", Static).update("")
            return
        entry = patient.entry
        sex = str(entry.get("sex") or entry.get("patient_sex") or "")
        lines = [
            f"{patient.patient_id} {patient_name(entry)} {show_date(birth_date(entry))} {sex}"
            f" → {choice_text(self.choices[patient.patient_id])}"
        ]
        lines += [f"  study {study_line(s)}" for s in studies_of(entry)[:3]]
        more = len(studies_of(entry)) - 3
        if more > 0:
            lines.append(f"  and {more} more stud{'y' if more == 1 else 'ies'}")
        lines += [f"  local: {match_text(m)}" for m in matches_of(entry)[:2]]
        self.query_one("#import-patient", Static).update("\n".join(lines))

    # --- choices ---------------------------------------------------------------------------

    def action_choose(self, action: str) -> None:
        patient = self.selected()
        if patient is None:
            self.message("scan a source first", error=True)
            return
        if action == "keep":
            self.set_choice(patient, {"action": "keep"})
        elif action == "map":
            self.app.push_screen(
                MapPatientModal(patient),
                lambda choice: self.set_choice(patient, choice) if choice else None,
            )
        else:
            self.app.push_screen(
                NewPatientModal(patient, self.choices.get(patient.patient_id)),
                lambda choice: self.set_choice(patient, choice) if choice else None,
            )

    def set_choice(self, patient: DiscPatient, choice: dict[str, Any]) -> None:
        self.choices[patient.patient_id] = choice
        table = self.table
        for index, other in enumerate(self.patients):
            if other.patient_id == patient.patient_id:
                table.update_cell(str(index), "choice", self.row(other)["choice"])
        self.describe_patient()
        table.focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        button = (event.button.id or "").removeprefix("import-")
        if button == "go":
            self.action_import_now()
        elif button == "scan":
            self.action_scan()
        elif button in ("keep", "map", "new"):
            self.action_choose(button)
        elif button == "cancel":
            self.action_cancel()

    # --- import ----------------------------------------------------------------------------

    def action_import_now(self) -> None:
        if self.busy:
            return
        if self.scan is None:
            self.message("scan the source first (enter)", error=True)
            return
        typed = self.query_one("#import-source", Input).value.strip()
        if typed != self.scanned_source and typed:
            self.message(f"the source is now {typed}: scan it first (enter)", error=True)
            return
        if not self.patients:
            self.message("nothing to import", error=True)
            return
        source, reconcile = self.scanned_source, reconcile_request(self.choices)
        self.busy = True
        self.message(f"queueing the import of {source}...")
        self.call_in_background(
            lambda: self.client.import_media(source, reconcile),
            self.dismiss,
            group="import-submit",
            on_error=self.refused,
        )

    def refused(self, error: BaseException) -> None:
        self.busy = False
        self.message(describe_error(error), error=True)

    def action_cancel(self) -> None:
        self.dismiss(None)
