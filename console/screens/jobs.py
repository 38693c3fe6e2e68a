"""Jobs: a live table of the daemon's jobs, filters, a detail view, and the operator's actions.

The table is keyed by job id and updated in place: a job event changes only the cells that
differ, a new job adds one row; an event never clears and rebuilds the table (only many rows
leaving at once do: a filter change, a trim). It holds one page of the newest jobs matching the
filters (``PAGE`` rows), so a store with 10,000 jobs costs the same as one with 300.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Header, Static
from textual.widgets.data_table import RowKey

from console.base import ConnectionChanged, ConsoleScreen, DaemonEvents
from console.tables import KeyedJobRows
from console.widgets import ConfirmModal, NodePickerModal

PAGE = 300
TRIM_SLACK = 200
# Removing a row re-indexes the whole table; past this many at once (a filter change, a trim)
# the table is cleared and the rows that stay are added back, which costs one add per row.
BULK_REMOVE = 20
REFRESH_SECONDS = 10.0
BAR_WIDTH = 10
STATE_FILTERS: tuple[tuple[str, list[str] | None], ...] = (
    ("all", None),
    ("active", ["queued", "running", "waiting-retry", "paused"]),
    ("queued", ["queued"]),
    ("running", ["running"]),
    ("waiting-retry", ["waiting-retry"]),
    ("paused", ["paused"]),
    ("failed", ["failed", "partially-failed"]),
    ("succeeded", ["succeeded"]),
    ("cancelled", ["cancelled"]),
)
KIND_FILTERS: tuple[str, ...] = (
    "all",
    "send",
    "retrieve",
    "commitment",
    "forward",
    "print",
    "burn",
    "import",
    "anonymize",
)
COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("id", "ID", 5),
    ("state", "State", 16),
    ("kind", "Kind", 9),
    ("target", "Target", 12),
    ("progress", "Progress", 16),
    ("study", "Patient / study", 23),
    ("attempts", "Att", 3),
    ("next_retry", "Next retry", 10),
)
STATE_STYLES = {
    "failed": "bold $error",
    "partially-failed": "bold $warning",
    "waiting-retry": "$warning",
    "running": "bold $accent",
    "succeeded": "$success",
    "cancelled": "$text-muted",
    "paused": "$text-muted",
}


# The same keys act on a job from the table and from its detail view.
JOB_ACTION_BINDINGS = [
    Binding("p", "job('pause')", "Pause"),
    Binding("u", "job('resume')", "Resume"),
    Binding("c", "job('cancel')", "Cancel"),
    Binding("r", "job('retry')", "Retry"),
    Binding("f", "job('retry-failed')", "Retry failed"),
    Binding("o", "reroute", "Reroute"),
    Binding("g", "refresh", "Refresh", show=False),
]


def progress_text(counts: dict[str, Any] | None, width: int = BAR_WIDTH) -> str:
    """``#####----- 12/30``: done (success, warning, failed) out of total."""
    counts = counts or {}
    total = int(counts.get("total") or 0)
    done = sum(int(counts.get(k) or 0) for k in ("success", "warning", "failed"))
    if total <= 0:
        return "-" * width + " 0/0"
    filled = min(width, round(width * done / total))
    return "#" * filled + "-" * (width - filled) + f" {done}/{total}"


def study_text(job: dict[str, Any]) -> str:
    summary = job.get("summary") or {}
    name = str(summary.get("patient_name") or summary.get("patient_id") or "")
    study = str(summary.get("study_description") or summary.get("study_date") or "")
    return " / ".join(part for part in (name.replace("^", " ").strip(), study) if part)


class JobTable(DataTable[str | Text]):
    """A DataTable whose columns all have fixed widths and whose rows are one line without a
    label: nothing to measure when rows arrive. DataTable measures every cell of every new row
    for the widths of auto-width columns (80 ms for a page of 300 rows at 80x24); here only
    the table's size is recomputed."""

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        if any(column.auto_width for column in self.columns.values()):
            super()._update_dimensions(new_rows)
        else:
            super()._update_dimensions(())


def matches(job: dict[str, Any], states: list[str] | None, kind: str | None) -> bool:
    if states is not None and job.get("state") not in states:
        return False
    return kind is None or job.get("kind") == kind


class JobsScreen(ConsoleScreen):
    TITLE = "Jobs"
    DEFAULT_CSS = """
    JobsScreen #filters {
        height: 1;
        padding: 0 1;
        background: $boost;
    }
    JobsScreen #jobs {
        height: 1fr;
    }
    """
    BINDINGS = [
        Binding("enter", "detail", "Detail", show=False),
        Binding("s", "cycle_state", "State filter"),
        Binding("k", "cycle_kind", "Kind filter"),
        *JOB_ACTION_BINDINGS,
    ]

    def __init__(self) -> None:
        super().__init__()
        self.state_filter = 0
        self.kind_filter = 0
        self.job_rows = KeyedJobRows(
            lambda: self.table, self._cells, {"state": STATE_STYLES}, bulk_remove=BULK_REMOVE
        )
        self._generation = 0

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical():
            yield Static("", id="filters")
            table = JobTable(id="jobs", cursor_type="row")
            for key, label, width in COLUMNS:
                table.add_column(label, key=key, width=width)
            yield table
        yield Footer()

    def on_mount(self) -> None:
        self._show_filters()
        self.set_interval(REFRESH_SECONDS, self.action_refresh)
        self.action_refresh()

    @property
    def table(self) -> DataTable[str | Text]:
        return self.query_one("#jobs", DataTable)

    @property
    def jobs(self) -> dict[int, dict[str, Any]]:
        """The jobs shown, by id."""
        return self.job_rows.jobs

    @property
    def states(self) -> list[str] | None:
        return STATE_FILTERS[self.state_filter][1]

    @property
    def kind(self) -> str | None:
        kind = KIND_FILTERS[self.kind_filter]
        return None if kind == "all" else kind

    def _show_filters(self) -> None:
        state = STATE_FILTERS[self.state_filter][0]
        kind = KIND_FILTERS[self.kind_filter]
        shown = len(self.jobs)
        more = f" (newest {PAGE})" if shown >= PAGE else ""
        self.query_one("#filters", Static).update(
            f"State: {state}  Kind: {kind}  {shown} jobs{more}   s/k: filters  enter: detail"
        )

    # --- loading ---------------------------------------------------------------------------

    def action_refresh(self) -> None:
        if not getattr(self.app, "connected", True):
            return
        states, kind, generation = self.states, self.kind, self._generation

        def fetch() -> list[dict[str, Any]]:
            return self.client.jobs(limit=PAGE, states=states, kinds=[kind] if kind else None)

        self.call_in_background(
            fetch,
            lambda jobs: self.apply_page(jobs, generation),
            group="jobs-page",
            on_error=lambda _: None,
        )

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        if message.connected:
            self.action_refresh()

    def apply_page(self, jobs: list[dict[str, Any]], generation: int | None = None) -> None:
        """A fresh page from jobs.list: diff it into the table (add, update, remove rows)."""
        if generation is not None and generation != self._generation:
            return  # the filters changed since this page was asked for
        with self.app.batch_update():
            self.job_rows.replace(jobs)
            self._show_filters()

    def apply_jobs(self, briefs: list[dict[str, Any]]) -> None:
        """Job events (briefs): update changed cells, add new matching jobs, drop unmatched."""
        states, kind = self.states, self.kind
        with self.app.batch_update():
            if self.job_rows.apply(briefs, lambda job: matches(job, states, kind)):
                self._trim()
            self._show_filters()

    def _cells(self, job: dict[str, Any]) -> dict[str, str]:
        fmt = self.app.format_time  # type: ignore[attr-defined]
        state = str(job.get("state", ""))
        return {
            "id": str(job.get("id", "")),
            "state": state,
            "kind": str(job.get("kind", "")),
            "target": str(job.get("target", "")),
            "progress": progress_text(job.get("counts")),
            "study": study_text(job),
            "attempts": str(job.get("attempts", 0)),
            "next_retry": fmt(job.get("next_retry")) if state == "waiting-retry" else "",
        }

    def _trim(self) -> None:
        """New jobs grow the table; past PAGE plus some slack the oldest rows go (in one go,
        since each removal re-indexes the table)."""
        if len(self.jobs) <= PAGE + TRIM_SLACK:
            return
        self.job_rows.remove_many(sorted(self.jobs)[: len(self.jobs) - PAGE])

    def on_daemon_events(self, message: DaemonEvents) -> None:
        briefs = [e["data"] for e in message.events if e.get("topic") == "job" and e.get("data")]
        if briefs:
            self.apply_jobs(briefs)

    # --- filters ---------------------------------------------------------------------------

    def action_cycle_state(self) -> None:
        self.state_filter = (self.state_filter + 1) % len(STATE_FILTERS)
        self._filters_changed()

    def action_cycle_kind(self) -> None:
        self.kind_filter = (self.kind_filter + 1) % len(KIND_FILTERS)
        self._filters_changed()

    def _filters_changed(self) -> None:
        # Ask the daemon first: the rows that no longer match go while it answers.
        self._generation += 1
        self.action_refresh()
        states, kind = self.states, self.kind
        with self.app.batch_update():
            self.job_rows.retain(lambda job: matches(job, states, kind))
            self._show_filters()

    # --- actions ---------------------------------------------------------------------------

    def selected_id(self) -> int | None:
        return self.job_rows.selected_id()

    def action_detail(self) -> None:
        job_id = self.selected_id()
        if job_id is not None:
            self.app.push_screen(JobDetailScreen(job_id))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.app.push_screen(JobDetailScreen(int(event.row_key.value)))

    def action_job(self, action: str) -> None:
        job_id = self.selected_id()
        if job_id is not None:
            run_job_action(self, job_id, action)

    def action_reroute(self) -> None:
        job_id = self.selected_id()
        if job_id is not None:
            job = self.jobs.get(job_id, {})
            reroute(self, job_id, str(job.get("kind", "")), str(job.get("target", "")))


CONFIRM = {
    "cancel": "Cancel job {id}? What it has not sent yet will not be sent.",
    "retry": "Retry job {id} now (all instances not yet sent)?",
}
DONE = {
    "pause": "paused",
    "resume": "resumed",
    "cancel": "cancelled",
    "retry": "queued to retry now",
    "retry-failed": "queued to retry its failed instances",
}


def run_job_action(screen: ConsoleScreen, job_id: int, action: str, **extra: Any) -> None:
    """Ask the daemon for ``action`` on a job (after a confirmation for destructive ones)."""

    def go() -> None:
        screen.call_in_background(
            lambda: screen.client.job_action(job_id, action, **extra),
            lambda brief: done(brief),
            group=f"job-action-{job_id}",
        )

    def done(brief: dict[str, Any]) -> None:
        what = DONE.get(action, f"{action} done")
        if action == "reroute":
            what = f"rerouted to {brief.get('target', extra.get('target'))}"
        screen.notify(f"Job {job_id} {what} ({brief.get('state', '')}).")
        remember = getattr(screen.app, "remember_job", None)
        if action in ("retry", "retry-failed", "resume", "reroute") and remember is not None:
            remember(brief)
        if isinstance(screen, JobsScreen):
            screen.apply_jobs([brief])

    question = CONFIRM.get(action)
    if question is None:
        go()
        return
    screen.app.push_screen(
        ConfirmModal(question.format(id=job_id)), lambda yes: go() if yes else None
    )


def reroute(screen: ConsoleScreen, job_id: int, kind: str = "", current: str = "") -> None:
    """Pick another target for a job: a node, or a printer for a print job."""
    printing = kind == "print"

    def picked(names: list[str] | None) -> None:
        if not names:
            return
        target = names[0]
        question = (
            f"Print job {job_id} on {target} instead?"
            if printing
            else f"Send job {job_id} to {target} instead?"
        )
        screen.app.push_screen(
            ConfirmModal(question),
            lambda yes: run_job_action(screen, job_id, "reroute", target=target) if yes else None,
        )

    def choose(targets: list[dict[str, Any]]) -> None:
        title = f"Reroute job {job_id} to {'printer' if printing else ''}".rstrip()
        empty = (
            "No other printer is configured."
            if printing
            else "No nodes are configured (field service adds them on Nodes)."
        )
        picker = NodePickerModal(
            targets, multiple=False, title=title, exclude=[current] if current else [], empty=empty
        )
        screen.app.push_screen(picker, picked)

    fetch = screen.client.printers if printing else screen.client.nodes
    screen.call_in_background(fetch, choose, group="printers" if printing else "nodes")


class JobDetailScreen(ConsoleScreen):
    """One job: its summary, per-instance results and log; the same actions as the table."""

    DEFAULT_CSS = """
    JobDetailScreen #summary {
        height: auto;
        padding: 0 1;
        border: round $primary-muted;
    }
    JobDetailScreen #instances {
        height: 1fr;
        min-height: 4;
    }
    JobDetailScreen #log {
        height: auto;
        max-height: 8;
        padding: 0 1;
        border: round $primary-muted;
    }
    """
    BINDINGS = [
        Binding("escape,backspace", "back", "Back"),
        *JOB_ACTION_BINDINGS,
    ]

    def __init__(self, job_id: int) -> None:
        super().__init__()
        self.job_id = job_id
        self.job: dict[str, Any] = {}
        self.title = f"Job {job_id}"

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Loading...", id="summary")
        table: DataTable[str] = DataTable(id="instances", cursor_type="row")
        table.add_columns("Status", "Code", "Att", "SOP instance UID", "Error")
        yield table
        yield Static("", id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#log").border_title = "Log"
        self.action_refresh()

    def action_refresh(self) -> None:
        self.call_in_background(
            lambda: self.client.job(self.job_id), self.show_job, group="job-detail"
        )

    def show_job(self, job: dict[str, Any]) -> None:
        self.job = job
        fmt = self.app.format_time  # type: ignore[attr-defined]
        counts = job.get("counts") or {}
        lines = [
            f"{job.get('kind', '')} to {job.get('target', '')}: {job.get('state', '')}"
            f"   {progress_text(counts)}   attempts {job.get('attempts', 0)}",
            f"Patient/study: {study_text(job) or '-'}",
            f"Created {fmt(job.get('created'), True)}   updated {fmt(job.get('updated'), True)}",
        ]
        if job.get("next_retry") and job.get("state") == "waiting-retry":
            lines.append(f"Next retry at {fmt(job.get('next_retry'), True)}")
        if job.get("error"):
            lines.append(f"Error: {job['error']}")
        done = {"print": "printed", "anonymize": "anonymized"}.get(str(job.get("kind")), "sent")
        lines.append(
            f"{counts.get('success', 0)} {done}, {counts.get('warning', 0)} with warning, "
            f"{counts.get('failed', 0)} failed, {counts.get('pending', 0)} pending"
        )
        # An anonymize job's copies: the new study UIDs, to find them on the Studies screen.
        copies = (job.get("summary") or {}).get("anonymized") or {}
        if copies:
            profile = (job.get("params") or {}).get("profile", "")
            lines.append(
                f"Anonymized copy ({profile}): " + ", ".join(str(uid) for uid in copies.values())
            )
        with self.app.batch_update():
            self.query_one("#summary", Static).update("\n".join(lines))
            table = self.query_one("#instances", DataTable)
            instances = job.get("instances") or []
            for index, instance in enumerate(instances):
                row = (
                    str(instance.get("status", "")),
                    str(instance.get("status_code") or ""),
                    str(instance.get("attempts", 0)),
                    str(instance.get("sop_instance_uid", "")),
                    str(instance.get("error") or ""),
                )
                key = f"{index}"
                if index < table.row_count:
                    for column, value in enumerate(row):
                        if table.get_cell_at((index, column)) != value:
                            table.update_cell_at((index, column), value, update_width=True)
                else:
                    table.add_row(*row, key=key)
            log = job.get("log") or []
            text = "\n".join(f"{fmt(when)}  {what}" for when, what in log[-6:])
            self.query_one("#log", Static).update(text or "(empty)")

    def on_daemon_events(self, message: DaemonEvents) -> None:
        if any(
            e.get("topic") == "job" and (e.get("data") or {}).get("id") == self.job_id
            for e in message.events
        ):
            self.action_refresh()

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_job(self, action: str) -> None:
        run_job_action(self, self.job_id, action)

    def action_reroute(self) -> None:
        reroute(self, self.job_id, str(self.job.get("kind", "")), str(self.job.get("target", "")))
