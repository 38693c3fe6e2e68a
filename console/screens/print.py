"""Print: the film imagers with their live status, and the print queue.

The printers table shows what each printer said last (Printer N-GET, or an N-EVENT-REPORT
during a print): NORMAL, WARNING or FAILURE with its Printer Status Info (FILM JAM, SUPPLY
EMPTY, ...), or UNREACHABLE when it did not answer. ``printer`` events update it as they come;
g asks every printer now. The queue is the print jobs (newest first): a held job says why it
waits (the printer's answer, the next retry). Pause, resume, cancel, reprint (retry) and
reroute to another printer act on the job under the cursor; enter opens its films and log.
Films are composed from the Studies screen (p on a study).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Header, Static
from textual.widgets.data_table import RowDoesNotExist

from console.base import ConnectionChanged, ConsoleScreen, DaemonEvents, describe_error
from console.screens._forms import FORM_CSS, set_message
from console.screens.jobs import (
    DONE,
    STATE_STYLES,
    JobDetailScreen,
    JobTable,
    progress_text,
    reroute,
    study_text,
)
from console.tables import KeyedJobRows, refill_table, selected_key, styled
from console.widgets import ConfirmModal

QUEUE_PAGE = 200
REFRESH_SECONDS = 10.0
ACTIVE = ["queued", "running", "waiting-retry", "paused"]
QUEUE_FILTERS: tuple[tuple[str, list[str] | None], ...] = (
    ("all", None),
    ("active", ACTIVE),
    ("failed", ["failed", "partially-failed"]),
    ("done", ["succeeded", "cancelled"]),
)
# Column key, heading and width (None: the rest of the line). The narrow set fits 80 columns;
# from WIDE columns on, the printer's AE title and address and the job's study are shown too.
WIDE = 110
Columns = tuple[tuple[str, str, int | None], ...]
PRINTER_COLUMNS: Columns = (
    ("name", "Printer", 12),
    ("status", "Status", 11),
    ("info", "Info", None),
    ("checked", "Checked", 8),
    ("ae", "AE title", 16),
    ("address", "Address", 21),
)
PRINTER_NARROW = ("name", "status", "info", "checked")
QUEUE_COLUMNS: Columns = (
    ("id", "ID", 5),
    ("state", "State", 13),
    ("target", "Printer", 12),
    ("films", "Films", 12),
    ("study", "Patient / study", 22),
    ("attempts", "Att", 3),
    ("why", "Waiting for / stage", None),
)
QUEUE_NARROW = ("id", "state", "target", "films", "why")
MIN_FILL = 12


def fitted(columns: Columns, keep: tuple[str, ...] | None, width: int) -> Columns:
    """The columns shown at a screen ``width`` (``keep``: the narrow set, None: all), the one
    without a width getting the rest of the line (DataTable pads each cell by one each side;
    one more for the scrollbar)."""
    chosen = [column for column in columns if keep is None or column[0] in keep]
    fixed = sum(w or 0 for _, _, w in chosen) + 2 * len(chosen) + 1
    rest = max(MIN_FILL, width - fixed)
    return tuple((key, label, w if w is not None else rest) for key, label, w in chosen)


STATUS_STYLES = {
    "NORMAL": "$success",
    "WARNING": "bold $warning",
    "FAILURE": "bold $error",
    "UNREACHABLE": "bold $error",
}
CONFIRM = {
    "cancel": "Cancel print job {id}? Films not printed yet will not be printed.",
    "retry": "Reprint job {id} now (the films not printed yet)?",
}


def printer_status(entry: dict[str, Any] | None) -> tuple[str, str]:
    """(status, info) of a printer status board entry: UNREACHABLE with the reason when the
    printer did not answer, ``not checked`` before anyone asked."""
    if not entry:
        return "not checked", ""
    if entry.get("error"):
        return "UNREACHABLE", str(entry["error"])
    status = str(entry.get("printer_status") or "unknown")
    return status, str(entry.get("printer_status_info") or "")


def waiting_text(job: dict[str, Any], format_time: Any) -> str:
    """Why a print job is where it is: the printer's refusal, the next retry, the stage."""
    state = str(job.get("state", ""))
    error = str(job.get("error") or "")
    stage = str(job.get("stage") or "")
    if state == "waiting-retry":
        when = format_time(job.get("next_retry"))
        return f"retry {when}: {error}" if when else error
    if state == "running":
        return stage or "printing"
    if state == "paused":
        return f"paused: {error}" if error else "paused by the operator"
    if state == "queued":
        return error or "queued"
    if state in ("failed", "partially-failed"):
        return error
    return ""


class PrintScreen(ConsoleScreen):
    TITLE = "Print"
    DEFAULT_CSS = (
        FORM_CSS
        + """
    PrintScreen #printers {
        height: auto;
        max-height: 8;
    }
    PrintScreen #queue-bar {
        height: 1;
        padding: 0 1;
        background: $boost;
    }
    PrintScreen #print-queue {
        height: 1fr;
        min-height: 3;
    }
    PrintScreen #print-detail {
        height: auto;
        max-height: 3;
        padding: 0 1;
        background: $boost;
    }
    PrintScreen #print-message {
        height: auto;
        max-height: 2;
    }
    """
    )
    BINDINGS = [
        Binding("g", "refresh", "Refresh"),
        Binding("s", "cycle_filter", "Filter"),
        Binding("enter", "detail", "Detail", show=False),
        Binding("p", "job('pause')", "Pause"),
        Binding("u", "job('resume')", "Resume"),
        Binding("c", "job('cancel')", "Cancel"),
        Binding("r", "job('retry')", "Reprint"),
        Binding("o", "reroute", "Reroute"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.printers: dict[str, dict[str, Any]] = {}
        self.printer_cells: dict[str, dict[str, str | Text]] = {}
        self.job_rows = KeyedJobRows(lambda: self.queue, self._cells, {"state": STATE_STYLES})
        self.queue_filter = 0
        self.printer_filter: str | None = None
        self._generation = 0
        self._printer_columns: Columns = fitted(PRINTER_COLUMNS, PRINTER_NARROW, 80)
        self._queue_columns: Columns = fitted(QUEUE_COLUMNS, QUEUE_NARROW, 80)

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical():
            printers: DataTable[str | Text] = JobTable(id="printers", cursor_type="row")
            for key, label, width in self._printer_columns:
                printers.add_column(label, key=key, width=width)
            yield printers
            yield Static("", id="queue-bar")
            queue: DataTable[str | Text] = JobTable(id="print-queue", cursor_type="row")
            for key, label, width in self._queue_columns:
                queue.add_column(label, key=key, width=width)
            yield queue
            yield Static("", id="print-detail")
            yield Static("", id="print-message", classes="form-message")
        yield Footer()

    def on_mount(self) -> None:
        self._show_bar()
        self.set_interval(REFRESH_SECONDS, self.refresh_queue)
        self.load_all()
        self.queue.focus()

    def load_all(self) -> None:
        """The printers as last known and the queue, then every printer asked now (a short
        N-GET each): their rows change as the answers come."""
        self.load_printers(refresh=False)
        self.refresh_queue()
        self.load_printers(refresh=True)

    def on_screen_resume(self) -> None:
        if self.is_mounted:
            self.load_printers(refresh=False)
            self.refresh_queue()

    def on_resize(self, event: events.Resize) -> None:
        self.fit_columns(event.size.width)

    def fit_columns(self, width: int) -> None:
        """Rebuild a table whose columns differ at this width (a resize; rare)."""
        wide = width >= WIDE
        printers = fitted(PRINTER_COLUMNS, None if wide else PRINTER_NARROW, width)
        queue = fitted(QUEUE_COLUMNS, None if wide else QUEUE_NARROW, width)
        with self.app.batch_update():
            if printers != self._printer_columns:
                self._printer_columns = printers
                rows = (
                    (name, [cells[key] for key, _, _ in printers])
                    for name, cells in self.printer_cells.items()
                )
                refill_table(self.printer_table, rows, printers)
            if queue != self._queue_columns:
                self._queue_columns = queue
                self.job_rows.refill(queue)

    @property
    def queue(self) -> DataTable[str | Text]:
        return self.query_one("#print-queue", DataTable)

    @property
    def printer_table(self) -> DataTable[str | Text]:
        return self.query_one("#printers", DataTable)

    @property
    def jobs(self) -> dict[int, dict[str, Any]]:
        """The print jobs shown, by id."""
        return self.job_rows.jobs

    # --- printers --------------------------------------------------------------------------

    def load_printers(self, *, refresh: bool) -> None:
        if not getattr(self.app, "connected", True):
            return
        message = self.query_one("#print-message", Static)
        if refresh:
            set_message(message, "asking the printers for their status...")

        def done(printers: list[dict[str, Any]]) -> None:
            self.show_printers(printers)
            if refresh:
                set_message(message, self.status_summary())

        self.call_in_background(
            lambda: self.client.printers(refresh=refresh),
            done,
            group="printers-refresh" if refresh else "printers-list",
            on_error=lambda error: self.show_failure("printers", error),
        )

    def show_failure(self, what: str, error: BaseException) -> None:
        set_message(
            self.query_one("#print-message", Static), f"{what}: {describe_error(error)}", error=True
        )

    def status_summary(self) -> str:
        if not self.printers:
            return (
                "No printers are configured (field service: dicom-appliance printer add NAME "
                "--ae-title T --host H --port P)."
            )
        states = [printer_status(p.get("status"))[0] for p in self.printers.values()]
        count = len(states)
        text = f"{count} printer{'' if count == 1 else 's'}"
        bad = sum(1 for state in states if state in ("FAILURE", "UNREACHABLE"))
        if bad:
            return f"{text}, {bad} not ready"
        if all(state == "NORMAL" for state in states):
            return f"{text}, all ready"
        return text

    def show_printers(self, printers: list[dict[str, Any]]) -> None:
        table = self.printer_table
        fresh = {str(p["name"]): p for p in printers}
        with self.app.batch_update():
            for name in [n for n in self.printers if n not in fresh]:
                self.printers.pop(name, None)
                self.printer_cells.pop(name, None)
                try:
                    table.remove_row(name)
                except RowDoesNotExist:
                    pass
            for name, printer in fresh.items():
                self._upsert_printer(name, self._latest(printer))
            self.describe_selection()

    def _latest(self, printer: dict[str, Any]) -> dict[str, Any]:
        """The printer with the newer of its known and its given status (a list asked before
        a refresh may answer after the refresh's events)."""
        known = (self.printers.get(str(printer["name"])) or {}).get("status")
        given = printer.get("status")
        if known and (
            not given or float(given.get("updated") or 0) < float(known.get("updated") or 0)
        ):
            return {**printer, "status": known}
        return printer

    def _printer_cells(self, printer: dict[str, Any]) -> dict[str, str | Text]:
        entry = printer.get("status")
        status, info = printer_status(entry)
        checked = self.app.format_time((entry or {}).get("updated"))  # type: ignore[attr-defined]
        return {
            "name": str(printer.get("name", "")),
            "status": styled(self.app, status, STATUS_STYLES),
            "info": info,
            "checked": checked,
            "ae": str(printer.get("ae_title", "")),
            "address": f"{printer.get('host', '')}:{printer.get('port', '')}",
        }

    def _upsert_printer(self, name: str, printer: dict[str, Any]) -> None:
        table = self.printer_table
        cells = self._printer_cells(printer)
        self.printers[name] = printer
        old = self.printer_cells.get(name)
        self.printer_cells[name] = cells
        if old is None:
            table.add_row(*[cells[key] for key, _, _ in self._printer_columns], key=name)
            return
        for key, _, _ in self._printer_columns:
            if str(old[key]) != str(cells[key]) or key == "status":
                table.update_cell(name, key, cells[key])

    def apply_printer_events(self, entries: list[dict[str, Any]]) -> None:
        """``printer`` events: a status board entry for one printer each."""
        with self.app.batch_update():
            for entry in entries:
                name = str(entry.get("printer") or "")
                if name in self.printers:
                    printer = dict(self.printers[name])
                    printer["status"] = entry
                    self._upsert_printer(name, printer)
            self.describe_selection()

    def selected_printer(self) -> str | None:
        return selected_key(self.printer_table)

    # --- the line under the queue: the highlighted printer or job in full ---------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.describe_selection()

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        self.describe_selection()

    def describe_selection(self) -> None:
        """What the cut-off cells hold: the printer's full status and address, or the job's
        study and why it waits."""
        fmt = self.app.format_time  # type: ignore[attr-defined]
        text = ""
        if self.printer_table.has_focus:
            name = self.selected_printer()
            printer = self.printers.get(name or "")
            if printer is not None:
                entry = printer.get("status") or {}
                status, info = printer_status(printer.get("status"))
                text = (
                    f"{name}: {printer.get('ae_title')} at {printer.get('host')}:"
                    f"{printer.get('port')}  {status}{': ' + info if info else ''}"
                )
                if entry.get("updated"):
                    how = "event report" if entry.get("source") == "event" else "N-GET"
                    text += f"  ({how} {fmt(entry['updated'], True)})"
        else:
            job_id = self.selected_id()
            job = self.jobs.get(job_id) if job_id is not None else None
            if job is not None:
                why = waiting_text(job, fmt)
                text = f"Job {job_id} on {job.get('target')}: {study_text(job) or '-'}"
                text += f"  {job.get('state')}{': ' + why if why else ''}"
        self.query_one("#print-detail", Static).update(text)

    # --- queue -----------------------------------------------------------------------------

    @property
    def states(self) -> list[str] | None:
        return QUEUE_FILTERS[self.queue_filter][1]

    def _show_bar(self) -> None:
        name = QUEUE_FILTERS[self.queue_filter][0]
        on = f" on {self.printer_filter}" if self.printer_filter else ""
        count = len(self.jobs)
        self.query_one("#queue-bar", Static).update(
            f"Print queue: {name}{on}  {count} job{'' if count == 1 else 's'}   "
            "s: filter  enter: detail  tab: printers"
        )

    def action_refresh(self) -> None:
        self.load_printers(refresh=True)
        self.refresh_queue()

    def refresh_queue(self) -> None:
        if not getattr(self.app, "connected", True):
            return
        states, target, generation = self.states, self.printer_filter, self._generation

        def fetch() -> list[dict[str, Any]]:
            return self.client.jobs(limit=QUEUE_PAGE, states=states, kinds=["print"], target=target)

        self.call_in_background(
            fetch,
            lambda jobs: self.apply_page(jobs, generation),
            group="print-queue",
            on_error=lambda error: self.show_failure("print queue", error),
        )

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        if message.connected:
            self.load_all()

    def matches(self, job: dict[str, Any]) -> bool:
        states = self.states
        if job.get("kind") != "print":
            return False
        if states is not None and job.get("state") not in states:
            return False
        return self.printer_filter is None or job.get("target") == self.printer_filter

    def apply_page(self, jobs: list[dict[str, Any]], generation: int | None = None) -> None:
        if generation is not None and generation != self._generation:
            return
        with self.app.batch_update():
            self.job_rows.replace(jobs)
            self._show_bar()
            self.describe_selection()

    def apply_jobs(self, briefs: list[dict[str, Any]]) -> None:
        with self.app.batch_update():
            self.job_rows.apply(briefs, self.matches)
            self._show_bar()
            self.describe_selection()

    def _cells(self, job: dict[str, Any]) -> dict[str, str]:
        fmt = self.app.format_time  # type: ignore[attr-defined]
        return {
            "id": str(job.get("id", "")),
            "state": str(job.get("state", "")),
            "target": str(job.get("target", "")),
            "films": progress_text(job.get("counts"), width=4),
            "study": study_text(job),
            "attempts": str(job.get("attempts", 0)),
            "why": waiting_text(job, fmt),
        }

    def on_daemon_events(self, message: DaemonEvents) -> None:
        briefs: list[dict[str, Any]] = []
        printers: list[dict[str, Any]] = []
        for event in message.events:
            data = event.get("data")
            if not isinstance(data, dict):
                continue
            if event.get("topic") == "job" and data.get("kind") == "print":
                briefs.append(data)
            elif event.get("topic") == "printer":
                printers.append(data)
        if printers:
            self.apply_printer_events(printers)
        if briefs:
            self.apply_jobs(briefs)

    # --- filters ---------------------------------------------------------------------------

    def action_cycle_filter(self) -> None:
        self.queue_filter = (self.queue_filter + 1) % len(QUEUE_FILTERS)
        self._filter_changed()

    def toggle_printer_filter(self, name: str) -> None:
        """Enter on a printer shows only its jobs; again shows every printer's."""
        self.printer_filter = None if self.printer_filter == name else name
        self._filter_changed()

    def _filter_changed(self) -> None:
        # Ask the daemon first: the rows that no longer match go while it answers.
        self._generation += 1
        self.refresh_queue()
        with self.app.batch_update():
            self.job_rows.retain(self.matches)
            self._show_bar()
            self.describe_selection()

    # --- actions ---------------------------------------------------------------------------

    def selected_id(self) -> int | None:
        return self.job_rows.selected_id()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.data_table.id == "printers":
            self.toggle_printer_filter(str(event.row_key.value))
        elif event.row_key.value is not None:
            self.app.push_screen(JobDetailScreen(int(event.row_key.value)))

    def action_detail(self) -> None:
        if self.printer_table.has_focus:
            name = self.selected_printer()
            if name:
                self.toggle_printer_filter(name)
            return
        job_id = self.selected_id()
        if job_id is not None:
            self.app.push_screen(JobDetailScreen(job_id))

    def action_job(self, action: str) -> None:
        job_id = self.selected_id()
        message = self.query_one("#print-message", Static)
        if job_id is None:
            set_message(message, "no print job selected", error=True)
            return

        def go() -> None:
            self.call_in_background(
                lambda: self.client.job_action(job_id, action),
                done,
                group=f"print-action-{job_id}",
                on_error=lambda error: self.show_failure(f"job {job_id}", error),
            )

        def done(brief: dict[str, Any]) -> None:
            what = "queued to reprint" if action == "retry" else DONE.get(action, action)
            set_message(message, f"job {job_id} {what} ({brief.get('state', '')})", ok=True)
            if action in ("retry", "resume"):
                remember = getattr(self.app, "remember_job", None)
                if remember is not None:
                    remember(brief)
            self.apply_jobs([brief])

        question = CONFIRM.get(action)
        if question is None:
            go()
            return
        self.app.push_screen(
            ConfirmModal(question.format(id=job_id)), lambda yes: go() if yes else None
        )

    def action_reroute(self) -> None:
        job_id = self.selected_id()
        if job_id is None:
            set_message(
                self.query_one("#print-message", Static), "no print job selected", error=True
            )
            return
        reroute(self, job_id, "print", str(self.jobs.get(job_id, {}).get("target", "")))
