"""What every console screen shares: the client, background calls, and the app's messages.

Screens never block: a daemon call runs in a thread worker (``call_in_background``) and its
result comes back on the UI thread. The app keeps one event subscription and forwards what
happens (``DaemonEvents``, ``ConnectionChanged``, ``RoleChanged``) to every screen, and what one
screen changes that others show (``NodesChanged``, posted to the app).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from textual.message import Message
from textual.screen import Screen

from console.client import ApiError, ApplianceClient, DaemonUnavailable

if TYPE_CHECKING:
    from textual.worker import Worker

T = TypeVar("T")


class DaemonEvents(Message):
    """A batch of events from the daemon's stream (dicts with topic, time, data)."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        super().__init__()
        self.events = events


class ConnectionChanged(Message):
    def __init__(self, connected: bool, reason: str = "") -> None:
        super().__init__()
        self.connected = connected
        self.reason = reason


class RoleChanged(Message):
    def __init__(self, service: bool) -> None:
        super().__init__()
        self.service = service


class NodesChanged(Message, bubble=False):
    """A node was saved (added or edited) or removed from this console. Posted to the app, which
    forwards it to every screen (so it does not bubble: the forwarded copies stay put)."""

    def __init__(self, name: str, change: str) -> None:
        super().__init__()
        self.name = name
        self.change = change  # "saved" or "removed"


def describe_error(error: BaseException) -> str:
    if isinstance(error, DaemonUnavailable):
        return f"daemon not reachable: {error}"
    if isinstance(error, ApiError):
        if error.code == "forbidden":
            return f"not allowed: {error.message}"
        return error.message
    return f"{type(error).__name__}: {error}"


class ConsoleScreen(Screen[Any]):
    """Base of the console's screens."""

    @property
    def client(self) -> ApplianceClient:
        return self.app.client  # type: ignore[attr-defined, no-any-return]

    @property
    def service_mode(self) -> bool:
        return bool(getattr(self.app, "service_mode", False))

    def call_in_background(
        self,
        call: Callable[[], T],
        on_result: Callable[[T], None],
        *,
        group: str,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> Worker[None]:
        """Run ``call`` in a thread; ``on_result`` or ``on_error`` run on the UI thread.

        One worker per ``group`` at a time: a newer call cancels the older one, so a slow answer
        never overwrites a fresher one.
        """

        def work() -> None:
            try:
                result = call()
            except Exception as error:  # shown to the operator, never fatal
                self.app.call_from_thread(on_error or self.show_error, error)
                return
            self.app.call_from_thread(on_result, result)

        return self.run_worker(work, thread=True, group=group, exclusive=True, exit_on_error=False)

    def show_error(self, error: BaseException) -> None:
        self.notify(describe_error(error), severity="error", timeout=8)

    # Hooks the app calls; screens override what they need.

    def on_daemon_events(self, message: DaemonEvents) -> None:
        pass

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        pass

    def on_role_changed(self, message: RoleChanged) -> None:
        pass

    def on_nodes_changed(self, message: NodesChanged) -> None:
        pass

    def announce_nodes_changed(self, name: str, change: str) -> None:
        """Tell the other screens (through the app) that a node changed here."""
        self.app.post_message(NodesChanged(name, change))
