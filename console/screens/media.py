"""Media: the optical drives with their live state, and the burn and import queue.

The drives table shows what udev said last about each drive (empty, blank CD or DVD with its
free space, a data disc with its label, busy, unplugged); ``drive`` events update it as they
come, g asks the daemon again. The queue is the burn and import jobs (newest first): a running
job shows its stage and percent (building, writing, verifying disc n of N; reading the disc),
a held one why it waits (insert a blank disc, the drive's error, the next retry). Pause, resume,
cancel and retry act on the job under the cursor; enter opens its discs or files and log.

Burning starts from the Studies screen (b on a study or the marked ones). Importing starts
here: i (or enter on a drive holding a data disc) asks for a folder, an ISO file or a device,
scans it and shows each disc patient beside the matching local patients before anything is
stored (``console.screens.media_import``).
"""

from __future__ import annotations

from collections.abc import Callable
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
    study_text,
)
from console.screens.print import Columns, fitted
from console.tables import KeyedJobRows, refill_table, selected_key, styled
from console.widgets import ConfirmModal

QUEUE_PAGE = 200
REFRESH_SECONDS = 10.0
KINDS = ["burn", "import"]
ACTIVE = ["queued", "running", "waiting-retry", "paused"]
QUEUE_FILTERS: tuple[tuple[str, list[str] | None], ...] = (
    ("all", None),
    ("active", ACTIVE),
    ("failed", ["failed", "partially-failed"]),
    ("done", ["succeeded", "cancelled"]),
)
WIDE = 110
DRIVE_COLUMNS: Columns = (
    ("device", "Drive", 18),
    ("state", "State", 10),
    ("media", "Medium", 7),
    ("free", "Free", 8),
    ("label", "Label / model", None),
    ("updated", "Changed", 8),
)
DRIVE_NARROW = ("device", "state", "media", "free", "label")
QUEUE_COLUMNS: Columns = (
    ("id", "ID", 4),
    ("state", "State", 13),
    ("kind", "Kind", 6),
    ("target", "Drive / source", 14),
    ("done", "Done", 10),
    ("study", "Patient / study", 22),
    ("attempts", "Att", 3),
    ("why", "Stage / waiting for", None),
)
QUEUE_NARROW = ("id", "state", "kind", "target", "done", "why")

# The drive layer's state names, as the operator reads them.
DRIVE_STATES = {
    "empty": "empty",
    "blank-cd": "blank CD",
    "blank-dvd": "blank DVD",
    "appendable": "appendable",
    "closed-data": "data disc",
    "busy": "busy",
    "unknown": "unknown",
    "gone": "unplugged",
}
DRIVE_STYLES = {
    "blank CD": "$success",
    "blank DVD": "$success",
    "data disc": "bold $accent",
    "appendable": "$warning",
    "busy": "$warning",
    "unplugged": "bold $error",
}
BLANK_STATES = ("blank-cd", "blank-dvd")
# A disc the import can read; an appendable disc holds sessions already written.
DATA_STATES = ("closed-data", "appendable")
CONFIRM = {
    "cancel": "Cancel {kind} job {id}? {rest}",
    "retry": "{what} job {id} again now?",
}
CANCEL_REST = {
    "burn": "Discs not burned yet will not be burned.",
    "import": "Files not imported yet will not be imported; those imported stay.",
}
RETRY_WHAT = {"burn": "Burn the discs not burned yet of", "import": "Import the files left of"}


def drive_state(drive: dict[str, Any] | None) -> str:
    if not drive:
        return "unknown"
    state = str(drive.get("state") or "unknown")
    return DRIVE_STATES.get(state, state)


def size_text(count: Any) -> str:
    """``700 MB``, ``4.7 GB`` (decimal units, as discs are sold), or '' when unknown."""
    if not isinstance(count, int | float) or count <= 0:
        return ""
    if count >= 1000**3:
        return f"{count / 1000**3:.1f} GB"
    return f"{count / 1000**2:.0f} MB"


def drive_text(drive: dict[str, Any]) -> str:
    """One line for a drive: ``/dev/sr0  blank CD  CD-R 700 MB``, ``... data disc "LABEL"``."""
    parts = [str(drive.get("device", "")), drive_state(drive)]
    if drive.get("media"):
        parts.append(str(drive["media"]))
    if drive.get("state") in BLANK_STATES and size_text(drive.get("capacity_bytes")):
        parts.append(size_text(drive.get("capacity_bytes")))
    if drive.get("label"):
        parts.append(f'"{drive["label"]}"')
    if drive.get("model"):
        parts.append(f"({drive['model']})")
    return "  ".join(parts)


def tail(text: str, width: int) -> str:
    """The end of a path when it does not fit (``…/OUTSIDE.iso``): the file name tells most."""
    if width <= 1 or len(text) <= width:
        return text
    return "…" + text[-(width - 1) :]


def percent_of(job: dict[str, Any]) -> int | None:
    progress = job.get("progress") or {}
    value = progress.get("percent") if isinstance(progress, dict) else None
    return int(value) if isinstance(value, int | float) else None


def job_source(job: dict[str, Any]) -> str:
    """The drive a burn job writes to, the disc, folder or ISO file an import reads."""
    params = job.get("params") or {}
    if job.get("kind") == "import" and params.get("source"):
        return str(params["source"])
    return str(job.get("target") or "")


def waiting_text(job: dict[str, Any], format_time: Callable[[Any], str]) -> str:
    """Where a burn or import job is: its stage and percent while it runs, why it waits
    (insert a blank disc, the drive's error and the next retry), why it failed."""
    state = str(job.get("state", ""))
    error = str(job.get("error") or "")
    stage = str(job.get("stage") or "")
    if state == "waiting-retry":
        why = error or stage
        when = format_time(job.get("next_retry"))
        return f"retry {when}: {why}" if when else why
    if state == "running":
        percent = percent_of(job)
        text = stage or ("burning" if job.get("kind") == "burn" else "importing")
        # The stage may say the percent of its own step ("writing disc 1 of 2: 45%").
        return f"{text} {percent}%" if percent is not None and "%" not in text else text
    if state == "paused":
        return f"paused: {error}" if error else "paused by the operator"
    if state == "queued":
        return error or "queued"
    if state in ("failed", "partially-failed"):
        return error
    return ""


class MediaJobDetailScreen(JobDetailScreen):
    """A burn or import job as on the Jobs screen, in the words of discs and files."""

    # A burn stays with its drive and an import with its source: no reroute offered.
    BINDINGS = [
        Binding("o", "reroute", "", show=False),
        Binding("f", "job('retry-failed')", "", show=False),
    ]

    def show_job(self, job: dict[str, Any]) -> None:
        super().show_job(job)
        fmt = self.app.format_time  # type: ignore[attr-defined]
        counts = job.get("counts") or {}
        kind = str(job.get("kind", ""))
        where = "from" if kind == "import" else "on"
        lines = [
            f"{kind} {where} {job_source(job)}: {job.get('state', '')}"
            f"   {progress_text(counts)}   attempts {job.get('attempts', 0)}",
            f"Patient/study: {study_text(job) or '-'}",
            f"Created {fmt(job.get('created'), True)}   updated {fmt(job.get('updated'), True)}",
        ]
        state = job.get("state")
        if state == "waiting-retry" and job.get("next_retry"):
            lines.append(f"Next retry at {fmt(job.get('next_retry'), True)}")
        elif state in ("running", "queued"):
            lines.append(f"Now: {waiting_text(job, fmt)}")
        if job.get("error"):
            lines.append(f"Error: {job['error']}")
        unit, done = ("disc", "burned and verified") if kind == "burn" else ("file", "imported")
        lines.append(
            f"{counts.get('success', 0)} {unit}s {done}, {counts.get('warning', 0)} with warning, "
            f"{counts.get('failed', 0)} failed, {counts.get('pending', 0)} pending"
        )
        self.query_one("#summary", Static).update("\n".join(lines))

    def action_job(self, action: str) -> None:
        confirm_job_action(self, self.job_id, action, self.job, on_done=self.show_brief)

    def show_brief(self, brief: dict[str, Any]) -> None:
        self.notify(f"Job {self.job_id} {DONE.get(action_of(brief), '')} ({brief.get('state')}).")
        self.action_refresh()

    def action_reroute(self) -> None:
        self.notify("A burn or import job stays with its drive or source.", severity="warning")


def action_of(brief: dict[str, Any]) -> str:
    return str(brief.get("_action", ""))


def confirm_job_action(
    screen: ConsoleScreen,
    job_id: int,
    action: str,
    job: dict[str, Any] | None,
    *,
    on_done: Callable[[dict[str, Any]], None],
    on_error: Callable[[BaseException], None] | None = None,
) -> None:
    """Pause, resume, cancel or retry a burn or import job; cancel and retry ask first."""
    kind = str((job or {}).get("kind") or "media")

    def go() -> None:
        screen.call_in_background(
            lambda: screen.client.job_action(job_id, action),
            done,
            group=f"media-action-{job_id}",
            on_error=on_error,
        )

    def done(brief: dict[str, Any]) -> None:
        if action in ("retry", "resume"):
            remember = getattr(screen.app, "remember_job", None)
            if remember is not None:
                remember(brief)
        on_done({**brief, "_action": action})

    template = CONFIRM.get(action)
    if template is None:
        go()
        return
    question = template.format(
        kind=kind,
        id=job_id,
        rest=CANCEL_REST.get(kind, ""),
        what=RETRY_WHAT.get(kind, "Run"),
    ).strip()
    screen.app.push_screen(ConfirmModal(question), lambda yes: go() if yes else None)


class MediaScreen(ConsoleScreen):
    TITLE = "Media"
    DEFAULT_CSS = (
        FORM_CSS
        + """
    MediaScreen #drives {
        height: auto;
        max-height: 7;
    }
    MediaScreen #media-queue-bar {
        height: 1;
        padding: 0 1;
        background: $boost;
    }
    MediaScreen #media-queue {
        height: 1fr;
        min-height: 3;
    }
    MediaScreen #media-detail {
        height: auto;
        max-height: 3;
        padding: 0 1;
        background: $boost;
    }
    MediaScreen #media-message {
        height: auto;
        max-height: 2;
    }
    """
    )
    BINDINGS = [
        Binding("g", "refresh", "Refresh"),
        Binding("i", "import_media", "Import"),
        Binding("s", "cycle_filter", "Filter"),
        Binding("enter", "detail", "Detail", show=False),
        Binding("p", "job('pause')", "Pause"),
        Binding("u", "job('resume')", "Resume"),
        Binding("c", "job('cancel')", "Cancel"),
        Binding("r", "job('retry')", "Retry"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.drives: dict[str, dict[str, Any]] = {}
        self.drive_cells: dict[str, dict[str, str]] = {}
        self.job_rows = KeyedJobRows(lambda: self.queue, self._cells, {"state": STATE_STYLES})
        self.queue_filter = 0
        self.drives_loaded = False
        self._generation = 0
        self._drive_columns: Columns = fitted(DRIVE_COLUMNS, DRIVE_NARROW, 80)
        self._queue_columns: Columns = fitted(QUEUE_COLUMNS, QUEUE_NARROW, 80)

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical():
            drives: DataTable[str | Text] = JobTable(id="drives", cursor_type="row")
            for key, label, width in self._drive_columns:
                drives.add_column(label, key=key, width=width)
            yield drives
            yield Static("", id="media-queue-bar")
            queue: DataTable[str | Text] = JobTable(id="media-queue", cursor_type="row")
            for key, label, width in self._queue_columns:
                queue.add_column(label, key=key, width=width)
            yield queue
            yield Static("", id="media-detail")
            yield Static("", id="media-message", classes="form-message")
        yield Footer()

    def on_mount(self) -> None:
        self._show_bar()
        self.set_interval(REFRESH_SECONDS, self.refresh_queue)
        self.load_all()
        self.queue.focus()

    def load_all(self) -> None:
        self.load_drives()
        self.refresh_queue()

    def on_screen_resume(self) -> None:
        if self.is_mounted:
            self.load_all()

    def on_resize(self, event: events.Resize) -> None:
        self.fit_columns(event.size.width)

    def fit_columns(self, width: int) -> None:
        wide = width >= WIDE
        drives = fitted(DRIVE_COLUMNS, None if wide else DRIVE_NARROW, width)
        queue = fitted(QUEUE_COLUMNS, None if wide else QUEUE_NARROW, width)
        with self.app.batch_update():
            if drives != self._drive_columns:
                self._drive_columns = drives
                rows = (
                    (device, self._drive_row(cells)) for device, cells in self.drive_cells.items()
                )
                refill_table(self.drive_table, rows, drives)
            if queue != self._queue_columns:
                self._queue_columns = queue
                self.job_rows.refill(queue)

    @property
    def queue(self) -> DataTable[str | Text]:
        return self.query_one("#media-queue", DataTable)

    @property
    def drive_table(self) -> DataTable[str | Text]:
        return self.query_one("#drives", DataTable)

    @property
    def jobs(self) -> dict[int, dict[str, Any]]:
        """The burn and import jobs shown, by id."""
        return self.job_rows.jobs

    def _drive_cell(self, cells: dict[str, str], key: str) -> str | Text:
        return styled(self.app, cells[key], DRIVE_STYLES) if key == "state" else cells[key]

    def _drive_row(self, cells: dict[str, str]) -> list[str | Text]:
        return [self._drive_cell(cells, key) for key, _, _ in self._drive_columns]

    def show_failure(self, what: str, error: BaseException) -> None:
        set_message(
            self.query_one("#media-message", Static), f"{what}: {describe_error(error)}", error=True
        )

    # --- drives ----------------------------------------------------------------------------

    def load_drives(self) -> None:
        if not getattr(self.app, "connected", True):
            return
        self.call_in_background(
            self.client.drives,
            self.show_drives,
            group="media-drives",
            on_error=lambda error: self.show_failure("drives", error),
        )

    def show_drives(self, drives: list[dict[str, Any]]) -> None:
        self.drives_loaded = True
        fresh = {str(d["device"]): d for d in drives if d.get("device")}
        table = self.drive_table
        with self.app.batch_update():
            for device in [d for d in self.drives if d not in fresh]:
                self.drives.pop(device, None)
                self.drive_cells.pop(device, None)
                try:
                    table.remove_row(device)
                except RowDoesNotExist:
                    pass
            for device, drive in fresh.items():
                self._upsert_drive(device, self._latest(drive))
            self.describe_selection()
        message = self.query_one("#media-message", Static)
        if not str(message.render()):
            set_message(message, self.drive_summary())

    def _latest(self, drive: dict[str, Any]) -> dict[str, Any]:
        """The newer of the known and the given state (a list answered after an event)."""
        known = self.drives.get(str(drive["device"]))
        if known and float(known.get("updated") or 0) > float(drive.get("updated") or 0):
            return known
        return drive

    def drive_summary(self) -> str:
        if not self.drives:
            return (
                "No optical drive found (a USB drive shows up here when plugged in). "
                "i imports a folder or an ISO file."
            )
        blank = sum(1 for d in self.drives.values() if d.get("state") in BLANK_STATES)
        data = sum(1 for d in self.drives.values() if d.get("state") in DATA_STATES)
        count = len(self.drives)
        text = f"{count} drive{'' if count == 1 else 's'}"
        if blank:
            text += f", {blank} with a blank disc"
        if data:
            text += f", {data} with a data disc (enter imports it)"
        return text

    def _drive_cells(self, drive: dict[str, Any]) -> dict[str, str]:
        fmt = self.app.format_time  # type: ignore[attr-defined]
        state = str(drive.get("state") or "")
        free = size_text(drive.get("capacity_bytes")) if state in BLANK_STATES else ""
        label = str(drive.get("label") or "")
        model = str(drive.get("model") or "")
        return {
            "device": str(drive.get("device", "")),
            "state": drive_state(drive),
            "media": str(drive.get("media") or ""),
            "free": free,
            "label": f'"{label}"  {model}'.strip() if label else model,
            "updated": fmt(drive.get("updated")),
        }

    def _upsert_drive(self, device: str, drive: dict[str, Any]) -> None:
        table = self.drive_table
        cells = self._drive_cells(drive)
        self.drives[device] = drive
        old = self.drive_cells.get(device)
        self.drive_cells[device] = cells
        if old is None:
            table.add_row(*self._drive_row(cells), key=device)
            return
        for key, _, _ in self._drive_columns:
            if old[key] != cells[key]:
                table.update_cell(device, key, self._drive_cell(cells, key))

    def apply_drive_events(self, drives: list[dict[str, Any]]) -> None:
        """``drive`` events: one drive's new state each (``gone`` when it was unplugged)."""
        with self.app.batch_update():
            for drive in drives:
                device = str(drive.get("device") or "")
                if device:
                    self._upsert_drive(device, drive)
            self.describe_selection()

    def selected_drive(self) -> dict[str, Any] | None:
        device = selected_key(self.drive_table)
        return self.drives.get(device or "")

    # --- the line under the queue ----------------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.describe_selection()

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        self.describe_selection()

    def describe_selection(self) -> None:
        fmt = self.app.format_time  # type: ignore[attr-defined]
        text = ""
        if self.drive_table.has_focus:
            drive = self.selected_drive()
            if drive is not None:
                text = drive_text(drive)
                if drive.get("state") in DATA_STATES:
                    text += "   enter: import this disc"
                elif drive.get("state") in BLANK_STATES:
                    text += "   burn from Studies (b)"
        else:
            job_id = self.selected_id()
            job = self.jobs.get(job_id) if job_id is not None else None
            if job is not None:
                why = waiting_text(job, fmt)
                where = "from" if job.get("kind") == "import" else "on"
                text = f"Job {job_id} {job.get('kind')} {where} {job_source(job)}: "
                text += f"{study_text(job) or '-'}  {job.get('state')}{': ' + why if why else ''}"
        self.query_one("#media-detail", Static).update(text)

    # --- queue -----------------------------------------------------------------------------

    @property
    def states(self) -> list[str] | None:
        return QUEUE_FILTERS[self.queue_filter][1]

    def _show_bar(self) -> None:
        name = QUEUE_FILTERS[self.queue_filter][0]
        count = len(self.jobs)
        self.query_one("#media-queue-bar", Static).update(
            f"Burn and import queue: {name}  {count} job{'' if count == 1 else 's'}   "
            "s: filter  enter: detail  i: import  tab: drives"
        )

    def action_refresh(self) -> None:
        set_message(self.query_one("#media-message", Static), "")
        self.load_all()

    def refresh_queue(self) -> None:
        if not getattr(self.app, "connected", True):
            return
        states, generation = self.states, self._generation
        self.call_in_background(
            lambda: self.client.jobs(limit=QUEUE_PAGE, states=states, kinds=KINDS),
            lambda jobs: self.apply_page(jobs, generation),
            group="media-queue",
            on_error=lambda error: self.show_failure("burn and import queue", error),
        )

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        if message.connected:
            self.load_all()

    def matches(self, job: dict[str, Any]) -> bool:
        states = self.states
        if job.get("kind") not in KINDS:
            return False
        return states is None or job.get("state") in states

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
            "kind": str(job.get("kind", "")),
            "target": tail(job_source(job), self._width("target")),
            "done": progress_text(job.get("counts"), width=4),
            "study": study_text(job),
            "attempts": str(job.get("attempts", 0)),
            "why": waiting_text(job, fmt),
        }

    def _width(self, key: str) -> int:
        return next((width or 0 for k, _, width in self._queue_columns if k == key), 0)

    def on_daemon_events(self, message: DaemonEvents) -> None:
        briefs: list[dict[str, Any]] = []
        drives: list[dict[str, Any]] = []
        for event in message.events:
            data = event.get("data")
            if not isinstance(data, dict):
                continue
            if event.get("topic") == "job" and data.get("kind") in KINDS:
                briefs.append(data)
            elif event.get("topic") == "drive":
                drives.append(data)
        if drives:
            self.apply_drive_events(drives)
        if briefs:
            self.apply_jobs(briefs)

    def action_cycle_filter(self) -> None:
        self.queue_filter = (self.queue_filter + 1) % len(QUEUE_FILTERS)
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
        self.action_detail()

    def action_detail(self) -> None:
        if self.drive_table.has_focus:
            drive = self.selected_drive()
            if drive is None:
                return
            if drive.get("state") in DATA_STATES:
                self.open_import(str(drive["device"]))
            else:
                set_message(
                    self.query_one("#media-message", Static),
                    f"{drive.get('device')}: {drive_state(drive)}, nothing to import "
                    "(burn from Studies: b on a study)",
                )
            return
        job_id = self.selected_id()
        if job_id is not None:
            self.app.push_screen(MediaJobDetailScreen(job_id))

    def action_import_media(self) -> None:
        drive = self.selected_drive() if self.drive_table.has_focus else None
        data = [d for d in self.drives.values() if d.get("state") in DATA_STATES]
        if drive is None or drive.get("state") not in DATA_STATES:
            drive = data[0] if len(data) == 1 else None
        self.open_import(str(drive["device"]) if drive else "")

    def open_import(self, source: str) -> None:
        # Imported on use: the import screen is only needed when importing.
        from console.screens.media_import import ImportScreen

        def queued(job: dict[str, Any] | None) -> None:
            if not job:
                return
            remember = getattr(self.app, "remember_job", None)
            if remember is not None:
                remember(job)
            set_message(
                self.query_one("#media-message", Static),
                f"queued import job #{job.get('id')} from {job_source(job)}",
                ok=True,
            )
            self.apply_jobs([job])

        self.app.push_screen(ImportScreen(source, list(self.drives.values())), queued)

    def action_job(self, action: str) -> None:
        job_id = self.selected_id()
        message = self.query_one("#media-message", Static)
        if job_id is None:
            set_message(message, "no burn or import job selected", error=True)
            return

        def done(brief: dict[str, Any]) -> None:
            what = "queued again" if action == "retry" else DONE.get(action, action)
            set_message(message, f"job {job_id} {what} ({brief.get('state', '')})", ok=True)
            self.apply_jobs([{k: v for k, v in brief.items() if k != "_action"}])

        confirm_job_action(
            self,
            job_id,
            action,
            self.jobs.get(job_id),
            on_done=done,
            on_error=lambda error: self.show_failure(f"job {job_id}", error),
        )
