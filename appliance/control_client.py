"""Client of the daemon's control API (see ``appliance.control`` for the protocol).

Used by the command line and the console; it needs nothing but the standard library.

    with ControlClient(control_socket_path(data_dir)) as client:
        jobs = client.call("jobs.list", limit=20)
        with client.subscribe(["job"]) as events:
            for event in events:
                ...
"""

from __future__ import annotations

import contextlib
import itertools
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from appliance.control import API_VERSION, MAX_LINE, ApiError, encode_line, unix_address

__all__ = ["ApiError", "ControlClient", "DaemonUnavailable", "EventStream"]

DEFAULT_TIMEOUT = 30.0


class DaemonUnavailable(Exception):
    """The daemon cannot be reached on its control socket (not running, or no permission)."""


def _unavailable(socket_path: Path, exc: OSError) -> DaemonUnavailable:
    data_dir = socket_path.parent
    if isinstance(exc, PermissionError):
        return DaemonUnavailable(
            f"no permission to use the daemon's control socket {socket_path}: run as the "
            "daemon's user or as a member of its control_group"
        )
    return DaemonUnavailable(
        f"the daemon is not running (nothing listens on {socket_path}); start it with "
        f"`dicom-appliance serve --data-dir {data_dir}`"
    )


class _LineSocket:
    """A connected control socket that reads whole lines."""

    def __init__(self, socket_path: Path, timeout: float | None) -> None:
        self.socket_path = socket_path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        deadline = time.monotonic() + (DEFAULT_TIMEOUT if timeout is None else timeout)
        try:
            with unix_address(socket_path) as address:
                while True:
                    try:
                        sock.connect(address)
                        break
                    except BlockingIOError:
                        # The daemon's accept backlog is full for a moment (a burst of
                        # clients): a Unix socket with a timeout does not wait, so retry.
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.01)
        except OSError as exc:
            sock.close()
            if isinstance(exc, BlockingIOError):
                raise DaemonUnavailable(
                    f"the daemon at {socket_path} accepts no connection (too busy?)"
                ) from exc
            raise _unavailable(socket_path, exc) from exc
        self.sock = sock
        self._buffer = bytearray()
        self.closed = False

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.sock.sendall(encode_line(message))
        except OSError as exc:
            self.close()
            raise DaemonUnavailable(
                f"the connection to the daemon at {self.socket_path} was lost: {exc}"
            ) from exc

    def read_message(self, timeout: float | None) -> dict[str, Any] | None:
        """The next line as an object; None when the daemon closed the connection.

        Raises TimeoutError when nothing complete arrived within ``timeout`` (None: wait).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                if not line.strip():
                    continue
                try:
                    message = json.loads(line.decode("utf-8"))
                except ValueError as exc:
                    self.close()
                    raise DaemonUnavailable(
                        f"the daemon sent a line that is not JSON: {exc}"
                    ) from exc
                if not isinstance(message, dict):
                    self.close()
                    raise DaemonUnavailable("the daemon sent a line that is not a JSON object")
                return message
            if len(self._buffer) > 64 * MAX_LINE:
                self.close()
                raise DaemonUnavailable("the daemon sent an overlong line")
            if self.closed:
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            try:
                self.sock.settimeout(remaining)
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise
            except OSError:
                chunk = b""
            if not chunk:
                self.close()
                if not self._buffer.strip():
                    return None
                self._buffer += b"\n"  # a last line without newline
                continue
            self._buffer += chunk

    def peer_closed(self) -> bool:
        """Whether the daemon has closed this connection (it restarted, say)."""
        if self.closed:
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return False
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


class EventStream:
    """Events from ``events.subscribe`` on a connection of their own.

    Iterating yields event dicts ``{"topic", "time", "data"}`` until ``close()`` (from any
    thread); if the daemon goes away, iteration raises ``DaemonUnavailable``. ``lost`` counts
    events the daemon dropped because this client did not keep up.
    """

    def __init__(self, connection: _LineSocket, topics: list[str]) -> None:
        self._connection = connection
        self.topics = topics
        self.lost = 0
        self._closing = False

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next event, or None when none arrived within ``timeout`` or after close()."""
        while not self._closing:
            try:
                message = self._connection.read_message(timeout)
            except TimeoutError:
                return None
            except DaemonUnavailable:
                if self._closing:
                    return None
                raise
            if message is None:
                if self._closing:
                    return None
                raise DaemonUnavailable(
                    f"the daemon at {self._connection.socket_path} closed the event stream"
                )
            event = message.get("event")
            if isinstance(event, dict):
                lost = message.get("lost")
                if isinstance(lost, int):
                    self.lost += lost
                return event
        return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            event = self.get(None)
            if event is None:
                return
            yield event

    def close(self) -> None:
        self._closing = True
        self._connection.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ControlClient:
    """Calls ops on the daemon over one persistent connection (opened on first use).

    ``call`` raises ``ApiError`` (with ``code`` and ``message``) when the daemon refuses or
    fails a request, and ``DaemonUnavailable`` when it cannot be reached. Thread-safe: calls
    from several threads take turns on the connection.
    """

    def __init__(
        self, socket_path: Path, role: str = "service", timeout: float | None = DEFAULT_TIMEOUT
    ) -> None:
        self.socket_path = Path(socket_path)
        self.role = role
        self.timeout = timeout
        self._connection: _LineSocket | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def _connect(self) -> _LineSocket:
        connection = self._connection
        if connection is not None and connection.peer_closed():
            connection.close()
            connection = None
        if connection is None:
            connection = _LineSocket(self.socket_path, self.timeout)
            self._connection = connection
        return connection

    def call(self, op: str, **args: Any) -> Any:
        """Run ``op`` with ``args``; its result."""
        with self._lock:
            connection = self._connect()
            request_id = next(self._ids)
            try:
                connection.send(
                    {"v": API_VERSION, "id": request_id, "op": op, "role": self.role, "args": args}
                )
                while True:
                    message = connection.read_message(self.timeout)
                    if message is None:
                        raise DaemonUnavailable(
                            f"the daemon at {self.socket_path} closed the connection "
                            f"before answering {op}"
                        )
                    if message.get("id") == request_id or message.get("id") is None:
                        break
            except TimeoutError:
                # A late answer would arrive on this connection: start afresh next time.
                connection.close()
                self._connection = None
                raise DaemonUnavailable(
                    f"the daemon at {self.socket_path} did not answer {op} within {self.timeout} s"
                ) from None
            except DaemonUnavailable:
                connection.close()
                self._connection = None
                raise
        return _result(message)

    def subscribe(self, topics: list[str] | None = None) -> EventStream:
        """Events of ``topics`` (all when None) on a new connection; close the stream after."""
        connection = _LineSocket(self.socket_path, self.timeout)
        args: dict[str, Any] = {} if topics is None else {"topics": list(topics)}
        try:
            connection.send(
                {
                    "v": API_VERSION,
                    "id": 1,
                    "op": "events.subscribe",
                    "role": self.role,
                    "args": args,
                }
            )
            try:
                message = connection.read_message(self.timeout)
            except TimeoutError:
                raise DaemonUnavailable(
                    f"the daemon at {self.socket_path} did not answer events.subscribe"
                ) from None
            if message is None:
                raise DaemonUnavailable(
                    f"the daemon at {self.socket_path} closed the connection before answering"
                )
            result = _result(message)
        except BaseException:
            connection.close()
            raise
        return EventStream(connection, list(result or []))

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _result(message: dict[str, Any]) -> Any:
    if message.get("ok") is True:
        return message.get("result")
    error = message.get("error")
    if isinstance(error, dict):
        raise ApiError(str(error.get("code", "internal")), str(error.get("message", "")))
    raise ApiError("internal", f"the daemon sent an answer without result or error: {message}")
