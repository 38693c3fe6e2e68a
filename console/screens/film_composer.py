"""The film composer: print studies from the Studies screen.

The operator picks a printer, a layout, film size, orientation, copies, medium, a window
(``auto``: each image's own VOI, or ``center,width``) and an annotation; the composer checks
what it can here (with a message under the field), asks the daemon how the images fall on films
(``print.compose``) and draws each film as a grid of its image boxes. Preview renders the films
to files the daemon writes (their paths are shown and can be copied); Print queues a print job
and returns with its id. The daemon checks everything again: its refusal shows under the field
it names.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from math import isfinite
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Button, Input, Label, Select, Static

from console.base import ConsoleScreen, describe_error
from console.client import ApiError
from console.screens._forms import (
    FORM_CSS,
    clear_field_errors,
    error_field,
    set_message,
    show_field_error,
)

# Film Size ID defined terms (PS3.3 C.13.8), offered when a printer lists none of its own.
FILM_SIZES = (
    "8INX10IN",
    "8_5INX11IN",
    "10INX12IN",
    "10INX14IN",
    "11INX14IN",
    "11INX17IN",
    "14INX14IN",
    "14INX17IN",
    "24CMX24CM",
    "24CMX30CM",
    "A4",
    "A3",
)
MEDIUM_TYPES = ("PAPER", "CLEAR FILM", "BLUE FILM", "MAMMO CLEAR FILM", "MAMMO BLUE FILM")
ORIENTATIONS = ("PORTRAIT", "LANDSCAPE")
DEFAULT = ""  # the Select value for "the printer's own default": the attribute is left out
MAX_COPIES = 99
MAX_LAYOUT_COUNT = 32
ANNOTATION_LENGTH = 64  # Text String (LO)
COMPOSE_DELAY = 0.4  # seconds of quiet after a change before the layout is asked again
GRID_WIDTH = 60
_LAYOUT = re.compile(r"^(STANDARD|ROW|COL)\\(\d{1,2}(?:,\d{1,2})*)$")

FIELDS: tuple[tuple[str, str], ...] = (
    ("printer", "Printer"),
    ("layout", "Layout"),
    ("film_size", "Film size"),
    ("orientation", "Orientation"),
    ("copies", "Copies"),
    ("medium_type", "Medium"),
    ("window", "Window"),
    ("annotation", "Annotation"),
)


class FormError(ValueError):
    """A value the composer refuses before asking the daemon; ``field`` names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --- values ------------------------------------------------------------------------------------


def parse_layout(text: str) -> str:
    """``STANDARD\\c,r``, ``ROW\\a,b,...`` or ``COL\\a,b,...``; ``2,2`` and ``2x2`` mean
    ``STANDARD\\2,2``, and ``/`` stands for the backslash (easier to type)."""
    value = text.strip().upper().replace("/", "\\").replace(" ", "")
    if re.fullmatch(r"\d{1,2}[,X]\d{1,2}", value):
        value = "STANDARD\\" + value.replace("X", ",")
    match = _LAYOUT.match(value)
    if not match:
        raise FormError(
            "layout", "STANDARD\\columns,rows, ROW\\a,b,... or COL\\a,b,... (e.g. STANDARD\\2,2)"
        )
    kind, counts = match.group(1), [int(part) for part in match.group(2).split(",")]
    if kind == "STANDARD" and len(counts) != 2:
        raise FormError("layout", "STANDARD takes columns,rows (e.g. STANDARD\\3,4)")
    if any(not 1 <= count <= MAX_LAYOUT_COUNT for count in counts):
        raise FormError("layout", f"each count is from 1 to {MAX_LAYOUT_COUNT}")
    return f"{kind}\\{','.join(str(count) for count in counts)}"


def parse_copies(text: str) -> int:
    value = text.strip() or "1"
    if not value.isdigit() or not 1 <= int(value) <= MAX_COPIES:
        raise FormError("copies", f"a whole number from 1 to {MAX_COPIES}")
    return int(value)


def parse_window(text: str) -> tuple[float, float] | None:
    """None for ``auto`` (each image's own VOI), else (center, width)."""
    value = text.strip().lower()
    if value in ("", "auto"):
        return None
    parts = [part for part in re.split(r"[,/;\s]+", value) if part]
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        numbers = []
    if len(numbers) != 2 or not all(isfinite(number) for number in numbers):
        raise FormError("window", "auto, or center,width (e.g. 40,400)")
    center, width = numbers
    if width < 1:
        raise FormError("window", f"the width is at least 1, not {width:g}")
    return center, width


def parse_annotation(text: str, printer: dict[str, Any] | None) -> str | None:
    value = text.strip()
    if not value:
        return None
    if printer is not None and not printer.get("annotation"):
        raise FormError("annotation", f"printer {printer['name']} does not print annotations")
    if len(value) > ANNOTATION_LENGTH:
        raise FormError("annotation", f"at most {ANNOTATION_LENGTH} characters ({len(value)})")
    if "\\" in value or any(ord(char) < 32 for char in value):
        raise FormError("annotation", "no backslash or control characters")
    return value


def number_text(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


@dataclass(frozen=True)
class ComposerValues:
    """What the operator typed and chose (texts as typed; selects as chosen)."""

    printer: str
    layout: str
    film_size: str = DEFAULT
    orientation: str = DEFAULT
    copies: str = "1"
    medium_type: str = DEFAULT
    window: str = "auto"
    annotation: str = ""


def build_request(
    values: ComposerValues,
    printer: dict[str, Any] | None,
    source: dict[str, list[str]],
) -> dict[str, Any]:
    """The print.compose / print.submit arguments (without the printer); FormError otherwise.

    The first refusal is raised: fields are checked top to bottom, as the operator reads them.
    """
    if printer is None:
        raise FormError("printer", "choose a printer")
    layout = parse_layout(values.layout)
    accepted = [str(item) for item in printer.get("display_formats") or []]
    if accepted and layout not in accepted:
        raise FormError(
            "layout", f"printer {printer['name']} accepts {', '.join(accepted)}, not {layout}"
        )
    copies = parse_copies(values.copies)
    window = parse_window(values.window)
    annotation = parse_annotation(values.annotation, printer)
    request: dict[str, Any] = {key: list(uids) for key, uids in source.items()}
    request["layout"] = layout
    if values.film_size:
        request["film_size"] = values.film_size
    if values.orientation:
        request["orientation"] = values.orientation
    request["copies"] = copies
    if values.medium_type:
        request["medium_type"] = values.medium_type
    if window is not None:
        request["window_center"] = number_text(window[0])
        request["window_width"] = number_text(window[1])
    if annotation is not None:
        request["annotation"] = annotation
    return request


# --- the film as a grid of image boxes --------------------------------------------------------


def box_fractions(display_format: str) -> list[tuple[int, float, float, float, float]]:
    """(position, x, y, width, height) of each image box as fractions of the film, in Image Box
    Position order (PS3.3 C.13.5.1: STANDARD left to right then down, ROW per row, COL per
    column top to bottom)."""
    kind, _, rest = parse_layout(display_format).partition("\\")
    counts = [int(part) for part in rest.split(",")]
    boxes: list[tuple[int, float, float, float, float]] = []
    if kind == "STANDARD":
        columns, rows = counts
        for row in range(rows):
            for column in range(columns):
                boxes.append((len(boxes) + 1, column / columns, row / rows, 1 / columns, 1 / rows))
    elif kind == "ROW":
        for row, per_row in enumerate(counts):
            for column in range(per_row):
                boxes.append(
                    (
                        len(boxes) + 1,
                        column / per_row,
                        row / len(counts),
                        1 / per_row,
                        1 / len(counts),
                    )
                )
    else:
        for column, per_column in enumerate(counts):
            for row in range(per_column):
                boxes.append(
                    (
                        len(boxes) + 1,
                        column / len(counts),
                        row / per_column,
                        1 / len(counts),
                        1 / per_column,
                    )
                )
    return boxes


# (up, down, left, right) → the box-drawing character joining them.
_JOINS = {
    (False, False, True, True): "─",
    (False, False, True, False): "─",
    (False, False, False, True): "─",
    (True, True, False, False): "│",
    (True, False, False, False): "│",
    (False, True, False, False): "│",
    (False, True, False, True): "┌",
    (False, True, True, False): "┐",
    (True, False, False, True): "└",
    (True, False, True, False): "┘",
    (True, True, False, True): "├",
    (True, True, True, False): "┤",
    (False, True, True, True): "┬",
    (True, False, True, True): "┴",
    (True, True, True, True): "┼",
}


def film_grid(display_format: str, labels: dict[int, str], width: int = GRID_WIDTH) -> list[str]:
    """The film's image boxes as lines of text, each box with its position and label.

    Every box gets at least one text line and two columns: the grid is as tall as the most
    boxes stacked in one column (two lines each) and ``width`` characters wide.
    """
    display_format = parse_layout(display_format)
    boxes = box_fractions(display_format)
    kind, _, rest = display_format.partition("\\")
    counts = [int(part) for part in rest.split(",")]
    if kind == "STANDARD":
        stacked, side_by_side = counts[1], counts[0]
    elif kind == "ROW":
        stacked, side_by_side = len(counts), max(counts)
    else:
        stacked, side_by_side = max(counts), len(counts)
    height = 2 * stacked + 1
    width = max(width, 3 * side_by_side + 1)
    across: set[tuple[int, int]] = set()  # a line from (row, column) to (row, column + 1)
    down: set[tuple[int, int]] = set()  # a line from (row, column) to (row + 1, column)
    frames: list[tuple[int, int, int, int, int]] = []
    for position, x, y, w, h in boxes:
        left, right = round(x * (width - 1)), round((x + w) * (width - 1))
        top, bottom = round(y * (height - 1)), round((y + h) * (height - 1))
        for column in range(left, right):
            across.add((top, column))
            across.add((bottom, column))
        for row in range(top, bottom):
            down.add((row, left))
            down.add((row, right))
        frames.append((position, left, top, right, bottom))
    canvas = [[" "] * width for _ in range(height)]
    for row in range(height):
        for column in range(width):
            joins = (
                (row - 1, column) in down,
                (row, column) in down,
                (row, column - 1) in across,
                (row, column) in across,
            )
            canvas[row][column] = _JOINS.get(joins, " ")
    for position, left, top, right, _ in frames:
        room = right - left - 1
        text = f"{position} {labels.get(position, '')}".rstrip()
        if len(text) > room:
            text = text[: max(0, room - 1)] + "…" if room > 1 else text[:room]
        for offset, char in enumerate(text):
            canvas[top + 1][left + 1 + offset] = char
    return ["".join(line) for line in canvas]


def box_label(box: dict[str, Any]) -> str:
    if not box.get("sop_instance_uid"):
        return "(empty)"
    return str(box.get("label") or box.get("sop_instance_uid") or "")


def films_text(films: list[dict[str, Any]], width: int = GRID_WIDTH) -> str:
    """Each film's heading (film n of N, layout, size, orientation) and its grid."""
    if not films:
        return "No images to print."
    total = len(films)
    parts: list[str] = []
    for index, film in enumerate(films, start=1):
        number = film.get("number", index)
        display_format = str(film.get("display_format", ""))
        boxes = film.get("boxes") or []
        filled = sum(1 for box in boxes if box.get("sop_instance_uid"))
        details = [
            display_format,
            str(film.get("film_size") or "printer's film size"),
            str(film.get("orientation") or "printer's orientation"),
            f"{filled} image{'' if filled == 1 else 's'}",
        ]
        parts.append(f"Film {number} of {total}: " + " · ".join(details))
        labels = {int(box.get("position", 0)): box_label(box) for box in boxes}
        try:
            parts.extend(film_grid(display_format, labels, width))
        except FormError:
            # A layout this console cannot draw (the daemon knows it): list the boxes.
            parts.extend(f"  {position}: {label}" for position, label in sorted(labels.items()))
        parts.append("")
    return "\n".join(parts).rstrip()


# How the daemon's refusals name the composer's fields (``copies must be 1..99``, ``bad Image
# Display Format ...``, ``film size 8INX10IN is not offered by printer film``).
_REFUSAL_FIELDS: tuple[tuple[str, str], ...] = (
    ("image display format", "layout"),
    ("layout", "layout"),
    ("film size", "film_size"),
    ("orientation", "orientation"),
    ("copies", "copies"),
    ("medium type", "medium_type"),
    ("window", "window"),
    ("annotation", "annotation"),
    ("printer", "printer"),
)


def refused_field(error: BaseException) -> str | None:
    """The composer field a daemon refusal is about, if it names one."""
    name = error_field(error)
    if name is not None:
        field = name.split(".")[-1]
        field = {"window_center": "window", "window_width": "window"}.get(field, field)
        if field in dict(FIELDS):
            return field
    if not isinstance(error, ApiError) or error.code not in ("invalid", "not-found"):
        return None
    text = error.message.lower()
    for words, field in _REFUSAL_FIELDS:
        if words in text:
            return field
    return None


def printer_label(printer: dict[str, Any]) -> str:
    status = printer.get("status") or {}
    state = "unreachable" if status.get("error") else status.get("printer_status") or ""
    return f"{printer['name']} ({printer['ae_title']}){' ' + state if state else ''}"


def source_text(studies: list[dict[str, Any]]) -> str:
    """``1 study: DOE JOHN · CT CHEST · 2024-01-15``, or ``3 studies (2 patients)``."""
    count = len(studies)
    if count == 1:
        study = studies[0]
        date = str(study.get("study_date") or "")
        parts = [
            str(study.get("patient_name") or study.get("patient_id") or "").replace("^", " "),
            str(study.get("study_description") or ""),
            f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 else date,
        ]
        return "1 study: " + " · ".join(part.strip() for part in parts if part.strip())
    patients = {str(s.get("patient_id") or s.get("patient_name") or "") for s in studies}
    return f"{count} studies ({len(patients)} patient{'' if len(patients) == 1 else 's'})"


# --- the modal ---------------------------------------------------------------------------------


class FilmComposerScreen(ConsoleScreen, ModalScreen[dict[str, Any] | None]):
    """Compose films from a source (study, series or instance UIDs) and print or preview them.

    Dismisses with the queued print job, or None when cancelled.
    """

    DEFAULT_CSS = (
        FORM_CSS
        + """
    FilmComposerScreen { align: center middle; background: $background 60%; }
    FilmComposerScreen #composer {
        width: 100%; max-width: 120; height: 100%; max-height: 50;
        border: round $primary; background: $surface; padding: 0 1;
    }
    FilmComposerScreen #composer-title { text-style: bold; height: 1; }
    FilmComposerScreen .field-label { width: 12; }
    FilmComposerScreen .field-error { padding-left: 12; }
    FilmComposerScreen .field-row .field-label.-second { margin-left: 2; }
    FilmComposerScreen #films { height: 1fr; min-height: 3; border-top: solid $primary-muted; }
    FilmComposerScreen #films-text { width: auto; }
    FilmComposerScreen #composer-message { height: auto; }
    FilmComposerScreen #preview-files { height: auto; display: none; color: $text-accent; }
    FilmComposerScreen #preview-files.-shown { display: block; }
    FilmComposerScreen .buttons { height: 1; }
    FilmComposerScreen .buttons Button { width: auto; min-width: 8; margin-right: 1; }
    FilmComposerScreen .modal-hint { color: $text-muted; height: 1; }
    """
    )
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "print", "Print"),
        Binding("ctrl+o", "preview", "Preview"),
        Binding("ctrl+y", "copy_paths", "Copy preview paths", show=False),
    ]
    HINT = "ctrl+s print  ctrl+o preview  ctrl+y copy paths  enter layout  escape back"

    def __init__(
        self,
        source: dict[str, list[str]],
        description: str,
        *,
        printers: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.source = {key: list(value) for key, value in source.items() if value}
        self.description = description
        self.printers: list[dict[str, Any]] = list(printers or [])
        self.films: list[dict[str, Any]] = []
        self.preview_files: list[str] = []
        self.composed_request: dict[str, Any] | None = None
        self.busy = False
        self._compose_timer: Any = None
        self._loaded = printers is not None

    # --- layout --------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        def label(text: str, second: bool = False) -> Label:
            return Label(text, classes="field-label -second" if second else "field-label")

        def pair(first: tuple[str, Any], second: tuple[str, Any] | None = None) -> ComposeResult:
            names = [first] + ([second] if second else [])
            widgets: list[Any] = []
            for index, (name, widget) in enumerate(names):
                widget.id = f"print-{name}"
                widgets += [label(dict(FIELDS)[name], second=index == 1), widget]
            yield Horizontal(*widgets, classes="field-row")
            for name, _ in names:
                yield Static("", id=f"print-{name}-error", classes="field-error")

        with Vertical(id="composer"):
            yield Static(f"Print {self.description}", id="composer-title")
            yield from pair(
                ("printer", Select[str]([], prompt="no printer", compact=True)),
                ("layout", Input("", placeholder="STANDARD\\2,2", compact=True)),
            )
            yield from pair(
                ("film_size", Select[str]([("printer default", DEFAULT)], value=DEFAULT,
                                          allow_blank=False, compact=True)),
                ("orientation", Select[str](
                    [("printer default", DEFAULT), *[(o.lower(), o) for o in ORIENTATIONS]],
                    value=DEFAULT, allow_blank=False, compact=True,
                )),
            )  # fmt: skip
            yield from pair(
                ("copies", Input("1", placeholder="1..99", compact=True)),
                ("medium_type", Select[str]([("printer default", DEFAULT)], value=DEFAULT,
                                            allow_blank=False, compact=True)),
            )  # fmt: skip
            yield from pair(
                ("window", Input("auto", placeholder="auto or center,width", compact=True)),
                ("annotation", Input("", placeholder="text on the film", compact=True)),
            )
            with VerticalScroll(id="films"):
                yield Static("Loading printers...", id="films-text")
            yield Static("", id="composer-message", classes="form-message")
            yield Static("", id="preview-files")
            with Horizontal(classes="buttons"):
                yield Button("Print", id="print", variant="primary", compact=True)
                yield Button("Preview", id="preview", compact=True)
                yield Button("Layout", id="layout", compact=True)
                yield Button("Copy paths", id="copy", compact=True, disabled=True)
                yield Button("Cancel", id="cancel", compact=True)
            yield Label(self.HINT, classes="modal-hint")

    def on_mount(self) -> None:
        self.query_one("#films").border_title = "Films"
        for field in self.query(Input):
            field.cursor_blink = False
        if self._loaded:
            self.show_printers(self.printers)
        else:
            self.call_in_background(
                self.client.printers,
                self.show_printers,
                group="composer-printers",
                on_error=self._printers_failed,
            )

    # --- printers ------------------------------------------------------------------------

    def show_printers(self, printers: list[dict[str, Any]]) -> None:
        self.printers = printers
        self._loaded = True
        select = self.query_one("#print-printer", Select)
        select.set_options([(printer_label(p), str(p["name"])) for p in printers])
        if not printers:
            self._set_films_text(
                "No printers are configured: field service adds them "
                "(dicom-appliance printer add NAME --ae-title T --host H --port P)."
            )
            show_field_error(self, "print-printer-error", "no printer is configured")
            return
        # The first printer that answered NORMAL, else the first.
        ready = [p for p in printers if (p.get("status") or {}).get("printer_status") == "NORMAL"]
        select.value = str((ready or printers)[0]["name"])
        self.apply_printer()
        self.query_one("#print-layout", Input).focus()

    def _printers_failed(self, error: BaseException) -> None:
        self._set_films_text("")
        set_message(
            self.query_one("#composer-message", Static),
            f"printers: {describe_error(error)}",
            error=True,
        )

    def printer(self) -> dict[str, Any] | None:
        value = self.query_one("#print-printer", Select).value
        return next((p for p in self.printers if p["name"] == value), None)

    def apply_printer(self) -> None:
        """Offer what the chosen printer takes: its layouts, film sizes and media."""
        printer = self.printer()
        if printer is None:
            return
        formats = [str(item) for item in printer.get("display_formats") or []]
        layout = self.query_one("#print-layout", Input)
        layout.suggester = SuggestFromList(formats, case_sensitive=False)
        if formats and layout.value.strip().upper() not in formats:
            layout.value = formats[0]
        layout.placeholder = formats[0] if formats else "STANDARD\\2,2"
        self._offer("film_size", printer.get("film_sizes") or FILM_SIZES)
        self._offer("medium_type", printer.get("medium_types") or MEDIUM_TYPES)
        annotation = self.query_one("#print-annotation", Input)
        annotation.disabled = not printer.get("annotation")
        annotation.placeholder = (
            "text on the film" if printer.get("annotation") else "this printer takes none"
        )
        self.schedule_compose(now=True)

    def _offer(self, name: str, terms: list[str] | tuple[str, ...]) -> None:
        select = self.query_one(f"#print-{name}", Select)
        current = select.value
        options = [("printer default", DEFAULT)] + [(str(term), str(term)) for term in terms]
        select.set_options(options)
        select.value = current if current in {value for _, value in options} else DEFAULT

    # --- values and the layout -----------------------------------------------------------

    def values(self) -> ComposerValues:
        def text(name: str) -> str:
            return self.query_one(f"#print-{name}", Input).value

        def chosen(name: str) -> str:
            value = self.query_one(f"#print-{name}", Select).value
            return value if isinstance(value, str) else DEFAULT

        return ComposerValues(
            printer=chosen("printer"),
            layout=text("layout"),
            film_size=chosen("film_size"),
            orientation=chosen("orientation"),
            copies=text("copies"),
            medium_type=chosen("medium_type"),
            window=text("window"),
            annotation=text("annotation"),
        )

    def checked_request(self) -> dict[str, Any] | None:
        """The request, or None after showing why not under its field."""
        clear_field_errors(self)
        try:
            return build_request(self.values(), self.printer(), self.source)
        except FormError as error:
            show_field_error(self, f"print-{error.field}-error", str(error))
            return None

    def schedule_compose(self, *, now: bool = False) -> None:
        if self._compose_timer is not None:
            self._compose_timer.stop()
            self._compose_timer = None
        if now:
            self.refresh_layout()
        else:
            self._compose_timer = self.set_timer(COMPOSE_DELAY, self.refresh_layout)

    def refresh_layout(self) -> None:
        """Ask the daemon how the images fall on films with the values as they are now."""
        self._compose_timer = None
        if not self._loaded or not self.printers:
            return
        request = self.checked_request()
        if request is None:
            return
        printer = self.values().printer
        self._set_films_text("Composing...")
        self.call_in_background(
            lambda: self.client.compose_print(printer, request),
            lambda answer: self.show_films(request, answer),
            group="composer-compose",
            on_error=self._refused,
        )

    def show_films(self, request: dict[str, Any], answer: dict[str, Any]) -> None:
        self.films = list(answer.get("films") or [])
        self.composed_request = request
        room = self.query_one("#films").size.width - 3
        width = max(24, min(GRID_WIDTH + 20, room)) if room > 0 else GRID_WIDTH
        self._set_films_text(films_text(self.films, width))
        count = len(self.films)
        images = sum(
            1
            for film in self.films
            for box in film.get("boxes") or []
            if box.get("sop_instance_uid")
        )
        set_message(
            self.query_one("#composer-message", Static),
            f"{images} image{'' if images == 1 else 's'} on {count} film{'' if count == 1 else 's'}"
            + (f", {request.get('copies')} copies each" if request.get("copies", 1) > 1 else ""),
        )

    def _set_films_text(self, text: str) -> None:
        self.query_one("#films-text", Static).update(text)

    def _refused(self, error: BaseException) -> None:
        """The daemon's refusal: under the field it names, else in the message line."""
        self.busy = False
        message = self.query_one("#composer-message", Static)
        field = refused_field(error)
        if field is not None:
            show_field_error(self, f"print-{field}-error", describe_error(error))
            set_message(message, "")
        else:
            set_message(message, describe_error(error), error=True)
        if self.films or "Composing" in str(self.query_one("#films-text", Static).render()):
            self._set_films_text("")
            self.films = []

    # --- events ----------------------------------------------------------------------------

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if event.select.id == "print-printer":
            self.apply_printer()
        else:
            self.schedule_compose()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.schedule_compose()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.schedule_compose(now=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        actions: dict[str, Callable[[], None]] = {
            "print": self.action_print,
            "preview": self.action_preview,
            "layout": lambda: self.schedule_compose(now=True),
            "copy": self.action_copy_paths,
            "cancel": self.action_cancel,
        }
        action = actions.get(event.button.id or "")
        if action is not None:
            action()

    # --- preview, print --------------------------------------------------------------------

    def action_preview(self) -> None:
        request = self.checked_request()
        if request is None or self.busy:
            return
        printer = self.values().printer
        self.busy = True
        set_message(self.query_one("#composer-message", Static), "rendering the preview...")
        self.call_in_background(
            lambda: self.client.preview_print(printer, request),
            self.show_preview,
            group="composer-preview",
            on_error=self._refused,
        )

    def show_preview(self, answer: dict[str, Any]) -> None:
        self.busy = False
        self.preview_files = [str(path) for path in answer.get("files") or []]
        files = self.query_one("#preview-files", Static)
        files.update("\n".join(self.preview_files))
        files.set_class(bool(self.preview_files), "-shown")
        self.query_one("#copy", Button).disabled = not self.preview_files
        count = len(self.preview_files)
        set_message(
            self.query_one("#composer-message", Static),
            f"preview written ({count} file{'' if count == 1 else 's'}; ctrl+y copies the paths):"
            if count
            else "the daemon wrote no preview file",
            ok=bool(count),
            error=not count,
        )

    def action_copy_paths(self) -> None:
        if not self.preview_files:
            return
        self.app.copy_to_clipboard("\n".join(self.preview_files))
        self.notify("Preview paths copied to the clipboard.")

    def action_print(self) -> None:
        request = self.checked_request()
        if request is None or self.busy:
            return
        printer = self.values().printer
        self.busy = True
        set_message(self.query_one("#composer-message", Static), f"queueing on {printer}...")
        self.call_in_background(
            lambda: self.client.submit_print(printer, request),
            self._queued,
            group="composer-submit",
            on_error=self._refused,
        )

    def _queued(self, job: dict[str, Any]) -> None:
        self.busy = False
        self.dismiss(job)

    def action_cancel(self) -> None:
        self.dismiss(None)


def open_film_composer(screen: ConsoleScreen, studies: list[dict[str, Any]]) -> None:
    """The Studies screen's print action: compose the chosen studies, then say which job
    prints them."""
    uids = [str(study["study_uid"]) for study in studies]

    def queued(job: dict[str, Any] | None) -> None:
        if not job:
            return
        remember = getattr(screen.app, "remember_job", None)
        if remember is not None:
            remember(job)
        text = f"queued print job #{job.get('id')} on {job.get('target')}"
        lines = list(screen.query("#studies-message").results(Static))
        if lines:
            set_message(lines[0], text, ok=True)
        else:
            screen.notify(text)

    screen.app.push_screen(FilmComposerScreen({"study_uids": uids}, source_text(studies)), queued)
