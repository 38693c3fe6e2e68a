"""`dicom-console`: the operator console, a thin client of the daemon's control API.

The app owns the connection (a thread keeps the client connected and subscribed, and batches the
daemon's events every 0.25 s into one ``DaemonEvents`` message for every screen), the role
(technologist; ctrl+u unlocks service mode with the service password, ctrl+l or idle time locks
it), the help, the command palette and the nine main screens, switched with 1..9 or f2..f10.
Quitting the console never stops the daemon or its jobs.
"""

from __future__ import annotations

import argparse
import importlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import events
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Header, Static

from console.base import ConnectionChanged, ConsoleScreen, DaemonEvents, NodesChanged, RoleChanged
from console.client import ApiError, ApplianceClient, DaemonUnavailable
from console.widgets import ConfirmModal, HelpModal, PasswordModal

RETRY_SECONDS = 2.0
EVENT_BATCH_SECONDS = 0.25
ACTIVE_STATES = frozenset({"queued", "running", "waiting-retry", "paused"})
TLS_FAILURES_KEPT = 100
NO_PASSWORDS = "the daemon does not support service passwords yet"


@dataclass(frozen=True)
class ScreenSpec:
    name: str
    title: str
    module: str
    cls: str
    keys: tuple[str, str]


SCREENS: tuple[ScreenSpec, ...] = (
    ScreenSpec(
        "dashboard", "Dashboard", "console.screens.dashboard", "DashboardScreen", ("1", "f2")
    ),
    ScreenSpec("jobs", "Jobs", "console.screens.jobs", "JobsScreen", ("2", "f3")),
    ScreenSpec("studies", "Studies", "console.screens.studies", "StudiesScreen", ("3", "f4")),
    ScreenSpec("query", "Query/Retrieve", "console.screens.query", "QueryScreen", ("4", "f5")),
    ScreenSpec("nodes", "Nodes", "console.screens.nodes", "NodesScreen", ("5", "f6")),
    ScreenSpec("settings", "Settings", "console.screens.settings", "SettingsScreen", ("6", "f7")),
    ScreenSpec("print", "Print", "console.screens.print", "PrintScreen", ("7", "f8")),
    ScreenSpec("media", "Media", "console.screens.media", "MediaScreen", ("8", "f9")),
    ScreenSpec("security", "Security", "console.screens.security", "SecurityScreen", ("9", "f10")),
)


class PlaceholderScreen(ConsoleScreen):
    """Stands in for a screen whose module is not installed."""

    def __init__(self, title: str) -> None:
        super().__init__()
        self.title_text = title

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"{self.title_text}: not available in this version.", id="placeholder")
        yield Footer()


def make_screen(spec: ScreenSpec) -> ConsoleScreen:
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as error:
        if error.name != spec.module:
            raise
        return PlaceholderScreen(spec.title)
    screen = getattr(module, spec.cls)()
    assert isinstance(screen, ConsoleScreen)
    return screen


class ConnectionBanner(Static):
    """Shown on top of every screen while the daemon cannot be reached."""

    DEFAULT_CSS = """
    ConnectionBanner {
        width: 100%;
        height: auto;
        background: $error;
        color: $text;
        padding: 0 1;
        display: none;
    }
    ConnectionBanner.-shown {
        display: block;
    }
    """


class ConsoleApp(App[None]):
    TITLE = "DICOM Appliance"
    SUB_TITLE = "technologist"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
        Binding("question_mark,f1", "help", "Help", key_display="?"),
        Binding("ctrl+u", "unlock", "Unlock", show=False),
        Binding("ctrl+l", "lock", "Lock", show=False),
        *[
            Binding(
                ",".join(spec.keys),
                f"show('{spec.name}')",
                spec.title,
                show=False,
                key_display=spec.keys[0],
            )
            for spec in SCREENS
        ],
    ]

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        client: ApplianceClient | None = None,
        clock: Callable[[], float] = time.time,
        utc: bool = False,
        first_screen: str = "dashboard",
    ) -> None:
        super().__init__()
        if client is None:
            if data_dir is None:
                raise ValueError("a data folder or a client is required")
            client = ApplianceClient.for_data_dir(data_dir)
        self.data_dir = data_dir
        self.client = client
        self.clock = clock
        self.utc = utc
        self.first_screen = first_screen
        self.connected = False
        self.disconnect_reason = ""
        self.service_mode = False
        self.idle_minutes: float = 15.0
        self.started_jobs: set[int] = set()
        self.main_screens: dict[str, ConsoleScreen] = {}
        # Refused TLS handshakes seen since the console started: the Security screen shows
        # them even when it was not open as they happened.
        self.tls_failures: deque[dict[str, Any]] = deque(maxlen=TLS_FAILURES_KEPT)
        self._stop = threading.Event()
        self._stream: Any = None
        self._last_activity = time.monotonic()
        self._painted_at: float | None = None

    # --- screens ---------------------------------------------------------------------------

    def on_mount(self) -> None:
        for spec in SCREENS:
            screen = make_screen(spec)
            self.main_screens[spec.name] = screen
            self.install_screen(screen, spec.name)
        self.screen_change_signal.subscribe(self, self._screen_changed)
        self.push_screen(self.first_screen)
        self._update_sub_title()
        self.run_worker(self._connection_loop, thread=True, group="connection", exit_on_error=False)
        self.set_interval(5.0, self._check_idle)

    def on_unmount(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        self.client.close()

    def action_show(self, name: str) -> None:
        if isinstance(self.screen, ModalScreen) or name not in self.main_screens:
            return
        # Leave detail screens pushed over a main screen first.
        while len(self.screen_stack) > 2 and self.screen not in self.main_screens.values():
            self.pop_screen()
        if self.screen is not self.main_screens[name]:
            self.switch_screen(name)
        self._update_sub_title()
        self._show_banner(self.main_screens[name])

    @property
    def current_name(self) -> str:
        for name, screen in self.main_screens.items():
            if screen in self.screen_stack:
                return name
        return ""

    def format_time(self, seconds: float | None, with_date: bool = False) -> str:
        """Local time (UTC when the app was made with utc=True) of a Unix time, or ''."""
        if not seconds:
            return ""
        parts = time.gmtime(seconds) if self.utc else time.localtime(seconds)
        return time.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S", parts)

    def remember_job(self, job: dict[str, Any]) -> None:
        """A job this operator started here: quitting while it runs asks first."""
        if isinstance(job.get("id"), int):
            self.started_jobs.add(int(job["id"]))

    # --- connection ------------------------------------------------------------------------

    def _connection_loop(self) -> None:
        """Thread: connect, subscribe, forward events in batches; retry every 2 s when down."""
        while not self._stop.is_set():
            try:
                self.client.hello()
                stream = self.client.subscribe(
                    ["job", "association", "storage", "alert", "printer", "drive"]
                )
            except (DaemonUnavailable, ApiError, OSError) as error:
                self._post_connection(False, str(error))
                self._stop.wait(RETRY_SECONDS)
                continue
            self._stream = stream
            self._post_connection(True, "")
            try:
                self._forward(stream)
            except (DaemonUnavailable, OSError) as error:
                self._post_connection(False, str(error))
            finally:
                stream.close()
                self._stream = None
            self._stop.wait(RETRY_SECONDS / 4)

    def _forward(self, stream: Any) -> None:
        batch: list[dict[str, Any]] = []
        flush_at = time.monotonic() + EVENT_BATCH_SECONDS
        while not self._stop.is_set():
            event = stream.get(timeout=max(0.01, flush_at - time.monotonic()))
            if event is not None:
                batch.append(event)
            if time.monotonic() >= flush_at:
                if batch:
                    self._call_ui(self.deliver_events, batch)
                    batch = []
                flush_at = time.monotonic() + EVENT_BATCH_SECONDS

    def _call_ui(self, callback: Callable[..., Any], *args: Any) -> None:
        if self._stop.is_set() or not self.is_running:
            return
        try:
            self.call_from_thread(callback, *args)
        except RuntimeError:
            pass  # the app is closing

    def _post_connection(self, connected: bool, reason: str) -> None:
        self._call_ui(self.set_connection, connected, reason)

    def set_connection(self, connected: bool, reason: str = "") -> None:
        """UI thread: record the connection state and tell every screen."""
        changed = connected != self.connected or reason != self.disconnect_reason
        self.connected = connected
        self.disconnect_reason = reason
        if not changed:
            return
        if connected:
            self.call_later(self._refresh_auth)
        for screen in self._screens():
            self._show_banner(screen)
            screen.post_message(ConnectionChanged(connected, reason))
        self._update_sub_title()

    def deliver_events(self, batch: list[dict[str, Any]]) -> None:
        """UI thread: one DaemonEvents message per screen for a batch of events."""
        for event in batch:
            data = event.get("data")
            if event.get("topic") == "association" and isinstance(data, dict):
                if data.get("event") == "tls-failed":
                    self.tls_failures.append(event)
        for screen in self._screens():
            screen.post_message(DaemonEvents(list(batch)))

    def on_nodes_changed(self, message: NodesChanged) -> None:
        """A screen changed a node: every screen hears of it (node pickers reload)."""
        for screen in self._screens():
            screen.post_message(NodesChanged(message.name, message.change))

    def _screens(self) -> list[Screen[Any]]:
        screens: list[Screen[Any]] = [s for s in self.main_screens.values() if s.is_mounted]
        screens += [
            s
            for s in self.screen_stack
            if isinstance(s, ConsoleScreen) and s not in self.main_screens.values()
        ]
        return screens

    def banner_text(self) -> str:
        socket_path = self.client.socket_path
        return (
            f"The appliance daemon is not running (socket {socket_path}). "
            f"Retrying every {RETRY_SECONDS:g} s."
        )

    def _show_banner(self, screen: Screen[Any]) -> None:
        if not screen.is_mounted:
            return
        banners = list(screen.query(ConnectionBanner))
        if not banners:
            banner = ConnectionBanner(self.banner_text(), id="connection-banner")
            children = list(screen.children)
            if children:
                after = [c for c in children if isinstance(c, Header)]
                if after:
                    screen.mount(banner, after=after[0])
                else:
                    screen.mount(banner, before=children[0])
            else:
                screen.mount(banner)
            banners = [banner]
        for banner in banners:
            banner.update(self.banner_text())
            banner.set_class(not self.connected, "-shown")

    def _screen_changed(self, screen: Screen[Any]) -> None:
        self._update_sub_title()
        if isinstance(screen, ConsoleScreen):
            self.call_after_refresh(self._show_banner, screen)

    # --- roles -----------------------------------------------------------------------------

    def _update_sub_title(self) -> None:
        role = "SERVICE MODE" if self.service_mode else "technologist"
        state = "" if self.connected else " · daemon not reachable"
        self.sub_title = f"{role}{state}"

    def _set_role(self, service: bool) -> None:
        if service == self.service_mode:
            self._update_sub_title()
            return
        self.service_mode = service
        self._update_sub_title()
        for screen in self._screens():
            screen.post_message(RoleChanged(service))

    def _refresh_auth(self) -> None:
        def work() -> None:
            try:
                status = self.client.auth_status()
            except (ApiError, DaemonUnavailable):
                return
            self._call_ui(self._apply_auth, status)

        self.run_worker(work, thread=True, group="auth", exit_on_error=False)

    def _apply_auth(self, status: dict[str, Any]) -> None:
        minutes = status.get("idle_minutes")
        if isinstance(minutes, int | float) and minutes > 0:
            self.idle_minutes = float(minutes)
        if self.service_mode and not status.get("unlocked") and not status.get("privileged"):
            # The daemon restarted or locked this session: lock here too.
            self.client.lock()
            self._set_role(False)

    def action_unlock(self) -> None:
        if self.service_mode:
            self.notify("Service mode is already unlocked (ctrl+l locks it).")
            return
        self.push_screen(PasswordModal("Service password (field service)"), self._unlock_with)

    def _unlock_with(self, password: str | None) -> None:
        if not password:
            return

        def work() -> None:
            try:
                status = self.client.unlock(password)
            except ApiError as error:
                if error.code == "unknown-op":
                    self._call_ui(self._unlock_refused, NO_PASSWORDS)
                else:
                    self._call_ui(self._unlock_refused, error.message)
                return
            except DaemonUnavailable as error:
                self._call_ui(self._unlock_refused, str(error))
                return
            self._call_ui(self._unlocked, status)

        self.run_worker(work, thread=True, group="auth", exit_on_error=False)

    def _unlock_refused(self, reason: str) -> None:
        self.notify(f"Service mode stays locked: {reason}", severity="error", timeout=8)

    def _unlocked(self, status: dict[str, Any]) -> None:
        self._apply_auth(status)
        self._last_activity = time.monotonic()
        self._set_role(True)
        self.notify(
            f"Service mode unlocked; it locks after {self.idle_minutes:g} minutes idle "
            "(ctrl+l locks now)."
        )

    def action_lock(self) -> None:
        if not self.service_mode:
            return
        self._set_role(False)
        self.run_worker(self.client.lock, thread=True, group="auth", exit_on_error=False)
        self.notify("Service mode locked.")

    def _check_idle(self) -> None:
        if not self.service_mode:
            return
        if time.monotonic() - self._last_activity >= self.idle_minutes * 60:
            self.action_lock()

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key | events.MouseDown):
            self._last_activity = time.monotonic()
        await super().on_event(event)

    # --- help, palette, quit ---------------------------------------------------------------

    def screen_keys(self) -> list[tuple[str, str]]:
        """The keys of the current screen, then the console's own."""
        rows: list[tuple[str, str]] = []
        seen: set[str] = set()
        # The screen's and the console's own keys first; the focused widget's (cursor keys of a
        # table, editing keys of a field) after them.
        ordered = sorted(
            self.active_bindings.items(),
            key=lambda item: item[1].node not in (self.screen, self),
        )
        for key, active in ordered:
            binding = active.binding
            if not binding.description or binding.description in seen and key in seen:
                continue
            label = binding.key_display or self.get_key_display(binding)
            if label in seen:
                continue
            seen.add(label)
            rows.append((label, binding.description))
        rows += [
            (
                "1..8, f2..f9",
                "Dashboard, Jobs, Studies, Query/Retrieve, Nodes, Settings, Print, Media",
            ),
            ("9, f10", "Security: certificates, TLS, audit log"),
            ("ctrl+u / ctrl+l", "unlock / lock service mode"),
            ("ctrl+p", "command palette: every screen and action"),
        ]
        return rows

    def action_help(self) -> None:
        if isinstance(self.screen, ModalScreen):
            return
        title = str(self.screen.title or self.current_name or "Console")
        self.push_screen(HelpModal(f"Keys: {title}", self.screen_keys()))

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        for spec in SCREENS:
            yield SystemCommand(
                f"Go to {spec.title}",
                f"Show the {spec.title} screen (key {spec.keys[0]})",
                lambda name=spec.name: self.action_show(name),  # type: ignore[misc]
            )
        if self.service_mode:
            yield SystemCommand("Lock service mode", "Back to technologist", self.action_lock)
        else:
            yield SystemCommand(
                "Unlock service mode", "Field service: needs the password", self.action_unlock
            )
        yield SystemCommand("Help", "The keys of this screen", self.action_help)
        yield SystemCommand(
            "Quit", "Leave the console (the daemon keeps running)", self.action_quit
        )
        for active in screen.active_bindings.values():
            binding = active.binding
            if active.node is not screen and active.node not in screen.walk_children():
                continue
            if not binding.description or not active.enabled:
                continue
            node = active.node
            yield SystemCommand(
                f"{screen.title or self.current_name}: {binding.description}",
                f"key {binding.key_display or binding.key}",
                lambda node=node, action=binding.action: self.call_later(  # type: ignore[misc]
                    node.run_action, action
                ),
            )
        yield SystemCommand("Theme", "Change the colours", self.action_change_theme)

    async def action_quit(self) -> None:
        if isinstance(self.screen, ModalScreen) or not self.started_jobs or not self.connected:
            self.exit()
            return
        ids = sorted(self.started_jobs)

        def work() -> None:
            running: list[int] = []
            for job_id in ids:
                try:
                    if self.client.job(job_id).get("state") in ACTIVE_STATES:
                        running.append(job_id)
                except (ApiError, DaemonUnavailable):
                    continue
            self._call_ui(self._confirm_quit, running)

        self.run_worker(work, thread=True, group="quit", exit_on_error=False)

    def _confirm_quit(self, running: list[int]) -> None:
        if not running:
            self.exit()
            return
        listed = ", ".join(str(i) for i in running[:8])
        text = (
            f"Jobs you started are still running ({listed}). They continue in the appliance "
            "after you leave. Quit the console?"
        )
        self.push_screen(
            ConfirmModal(text, yes="Quit", no="Stay"),
            lambda yes: self.exit() if yes else None,
        )


def main(argv: Sequence[str] | None = None) -> int:
    from appliance.paths import default_data_dir

    parser = argparse.ArgumentParser(prog="dicom-console", description="DICOM appliance console")
    parser.add_argument("--data-dir", type=Path, default=None, help="the daemon's data folder")
    args = parser.parse_args(argv)
    ConsoleApp(args.data_dir or default_data_dir()).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
