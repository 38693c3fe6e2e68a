"""Dashboard: services and ports, associations, disk and reserve, job counts, storage, alerts.

Live from the daemon's events, with a status refresh every 2 s for what events do not carry
(disk, uptime, the association table).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Header, Static

from console.base import ConnectionChanged, ConsoleScreen, DaemonEvents

REFRESH_SECONDS = 2.0
RECENT_STORAGE = 50
RECENT_ALERTS = 50


def human_bytes(value: float | int | None) -> str:
    if value is None:
        return "?"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def human_duration(seconds: float | int | None) -> str:
    if seconds is None:
        return ""
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


class DashboardScreen(ConsoleScreen):
    TITLE = "Dashboard"
    DEFAULT_CSS = """
    DashboardScreen #top {
        height: auto;
    }
    DashboardScreen .panel {
        border: round $primary-muted;
        border-title-color: $text-accent;
        height: auto;
        padding: 0 1;
    }
    DashboardScreen #services-panel {
        width: 1fr;
    }
    DashboardScreen #summary-panel {
        width: 32;
    }
    DashboardScreen DataTable {
        height: auto;
        max-height: 8;
        overflow-x: hidden;
    }
    DashboardScreen #dashboard {
        scrollbar-size-vertical: 1;
    }
    DashboardScreen #alerts, DashboardScreen #storage {
        max-height: 6;
    }
    """
    BINDINGS = [Binding("g", "refresh", "Refresh")]

    def __init__(self) -> None:
        super().__init__()
        self.status: dict[str, Any] = {}
        self.storage_events: deque[dict[str, Any]] = deque(maxlen=RECENT_STORAGE)
        self.alerts: deque[dict[str, Any]] = deque(maxlen=RECENT_ALERTS)

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="dashboard"):
            with Horizontal(id="top"):
                with Vertical(id="services-panel", classes="panel"):
                    yield DataTable(id="services", show_cursor=False)
                    yield Static("", id="job-counts")
                with Vertical(id="summary-panel", classes="panel"):
                    yield Static("", id="disk")
            with Vertical(id="associations-panel", classes="panel"):
                yield DataTable(id="associations", show_cursor=False)
            with Vertical(id="alerts-panel", classes="panel"):
                yield DataTable(id="alerts", show_cursor=False)
            with Vertical(id="storage-panel", classes="panel"):
                yield DataTable(id="storage", show_cursor=False)
        yield Footer()

    def on_mount(self) -> None:
        titles = {
            "#services-panel": "Services and jobs",
            "#summary-panel": "Disk",
            "#associations-panel": "Associations",
            "#alerts-panel": "Alerts",
            "#storage-panel": "Recent storage",
        }
        for selector, title in titles.items():
            self.query_one(selector).border_title = title
        columns: dict[str, tuple[tuple[str, int], ...]] = {
            "#services": (("Service", 7), ("AE title", 11), ("Port", 5), ("State", 9)),
            "#associations": (
                ("Peer", 15),
                ("Calling AE", 16),
                ("For", 7),
                ("Last op", 9),
                ("Stored", 6),
                ("Failed", 6),
                ("Called AE", 16),
            ),
            "#alerts": (("Time", 8), ("Alert", 100)),
            "#storage": (
                ("Time", 8),
                ("From", 16),
                ("Patient", 20),
                ("Mod", 4),
                ("Result", 14),
            ),
        }
        # Fixed widths: the tables refill often and must not jump.
        for selector, specs in columns.items():
            table = self.query_one(selector, DataTable)
            for label, width in specs:
                table.add_column(label, width=width)
        self.set_interval(REFRESH_SECONDS, self.action_refresh)
        self.action_refresh()
        self._render_alerts()
        self._render_storage()

    def action_refresh(self) -> None:
        if not getattr(self.app, "connected", True):
            return
        self.call_in_background(
            self.client.status, self.show_status, group="status", on_error=lambda _: None
        )

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        if message.connected:
            self.action_refresh()

    # --- rendering -------------------------------------------------------------------------

    def show_status(self, status: dict[str, Any]) -> None:
        self.status = status
        with self.app.batch_update():
            self._render_services(status.get("services") or [])
            self._render_associations(status.get("associations") or [])
            self._render_summary(status)

    def _render_services(self, services: list[dict[str, Any]]) -> None:
        table = self.query_one("#services", DataTable)
        rows = [
            (
                str(s.get("name", "")),
                str(s.get("ae_title", "")),
                str(s.get("port", "")),
                str(s.get("state", "")),
            )
            for s in services
        ]
        self._replace_rows(table, rows)

    def _render_associations(self, associations: list[dict[str, Any]]) -> None:
        table = self.query_one("#associations", DataTable)
        rows = [
            (
                f"{a.get('peer_address', '')}:{a.get('peer_port', '')}",
                str(a.get("calling_ae", "")),
                human_duration(a.get("duration")),
                str(a.get("last_op", "")),
                str(a.get("stored", 0)),
                str(a.get("failed", 0)),
                str(a.get("called_ae", "")),
            )
            for a in associations
        ]
        if not rows:
            rows = [("none open", "", "", "", "", "", "")]
        self._replace_rows(table, rows)

    def _render_summary(self, status: dict[str, Any]) -> None:
        disk = status.get("disk") or {}
        total = disk.get("total") or 0
        used = disk.get("used") or 0
        percent = f" ({100 * used / total:.0f}%)" if total else ""
        low = "  LOW: storage refused" if disk.get("low") else ""
        instances = (status.get("archive") or {}).get("instances")
        self.query_one("#disk", Static).update(
            f"Used {human_bytes(used)}{percent}\n"
            f"of {human_bytes(total)}\n"
            f"Free {human_bytes(disk.get('free'))}\n"
            f"Reserve {human_bytes(disk.get('reserve'))}{low}\n"
            f"Archive {instances if instances is not None else '?'} instances\n"
            f"Up {human_duration(status.get('uptime'))}, v{status.get('version', '?')}"
        )
        jobs = status.get("jobs") or {}
        self.query_one("#job-counts", Static).update(
            f"Jobs: {jobs.get('queued', 0)} queued, {jobs.get('running', 0)} running, "
            f"{jobs.get('waiting-retry', 0)} waiting retry, {jobs.get('paused', 0)} paused, "
            f"{jobs.get('failed', 0) + jobs.get('partially-failed', 0)} failed"
        )

    def _render_alerts(self) -> None:
        table = self.query_one("#alerts", DataTable)
        rows = [
            (self.app.format_time(a.get("time")), str(a.get("text", "")))  # type: ignore[attr-defined]
            for a in reversed(self.alerts)
        ]
        self._replace_rows(table, rows or [("", "no alerts")])

    def _render_storage(self) -> None:
        table = self.query_one("#storage", DataTable)
        rows = []
        for event in reversed(self.storage_events):
            ok = event.get("ok")
            result = "stored" if ok else f"refused 0x{int(event.get('status') or 0):04X}"
            if ok and event.get("duplicate"):
                result = "duplicate"
            rows.append(
                (
                    self.app.format_time(event.get("time")),  # type: ignore[attr-defined]
                    str(event.get("calling_ae", "")),
                    str(event.get("patient_name") or event.get("patient_id") or "").replace(
                        "^", " "
                    ),
                    str(event.get("modality", "")),
                    result,
                )
            )
        self._replace_rows(table, rows or [("", "none stored yet", "", "", "")])

    @staticmethod
    def _replace_rows(table: DataTable[Any], rows: list[tuple[str, ...]]) -> None:
        """Small tables (a few rows): refilled only when their content changed."""
        current = [tuple(str(v) for v in table.get_row_at(i)) for i in range(table.row_count)]
        if current == rows:
            return
        table.clear()
        table.add_rows(rows)

    # --- events ----------------------------------------------------------------------------

    def on_daemon_events(self, message: DaemonEvents) -> None:
        storage = alerts = refresh = False
        for event in message.events:
            topic = event.get("topic")
            data = dict(event.get("data") or {})
            data.setdefault("time", event.get("time"))
            if topic == "storage":
                self.storage_events.append(data)
                storage = True
            elif topic == "alert":
                self.alerts.append(data)
                alerts = True
            elif topic in ("association", "job"):
                refresh = True
        with self.app.batch_update():
            if storage:
                self._render_storage()
            if alerts:
                self._render_alerts()
        if refresh:
            self.action_refresh()
