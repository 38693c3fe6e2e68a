"""The daemon's control API: newline-delimited JSON over a Unix socket.

Protocol, version 1. Each line is one UTF-8 JSON object, at most ``MAX_LINE`` bytes.

Request::

    {"v": 1, "id": <any JSON value>, "op": "jobs.list", "role": "technologist", "args": {...}}

``id`` is echoed in the response (``null`` when absent), ``role`` is ``technologist`` (the
default) or ``service``, ``args`` an object (default ``{}``). Response::

    {"v": 1, "id": ..., "ok": true, "result": ...}
    {"v": 1, "id": ..., "ok": false, "error": {"code": "...", "message": "..."}}

Error codes are ``ERROR_CODES``. A line that is too long gets ``too-large`` and the connection
is closed; every other bad request gets its error and the connection goes on. ``events.subscribe``
answers once, then the connection carries one line per event,
``{"v": 1, "event": {"topic": ..., "time": ..., "data": {...}}}`` (with ``"lost": n`` when the
client did not keep up and ``n`` events were dropped before this one) until the client closes.

The service role is granted to a peer whose uid (SO_PEERCRED) is 0 or the daemon's own, and to
any peer on a connection that ``auth.unlock`` unlocked with the field-service password, until
``service_idle_minutes`` pass without a service-role request on it (each one restarts that
time); ``auth.lock`` locks it again. ``auth.unlock``, ``auth.lock`` and ``auth.status`` answer
whatever role the request claims (a refused service claim is served as a technologist's).
Unlocks, failed unlocks, locks and idle expiry are logged (logger ``appliance.audit``).
Nothing a client sends can stop the daemon: every connection has its own thread, their number
is bounded, and a handler's unexpected exception becomes an ``internal`` error.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from appliance import __version__, audit
from appliance.errors import ConfigError
from appliance.events import TOPICS, EventBus, Subscription
from appliance.jobs import JobError

LOG = logging.getLogger("appliance.control")
AUDIT = logging.getLogger("appliance.audit")

API_VERSION = 1
SOCKET_NAME = "control.sock"
MAX_LINE = 2**20
MAX_CONNECTIONS = 64
SOCKET_MODE = 0o660
ROLES = ("technologist", "service")
ERROR_CODES = (
    "bad-request",
    "unsupported-version",
    "unknown-op",
    "forbidden",
    "not-found",
    "invalid",
    "too-large",
    "unavailable",
    "internal",
)
# A client that stops reading its answers is dropped after this long.
SEND_TIMEOUT = 30.0
# How often a waiting connection thread looks whether the server is stopping.
_POLL = 0.5
# The longest path a sockaddr_un holds (108 bytes with the terminating NUL).
_SUN_PATH_MAX = 107
# A wrong service password is answered this much later (password checks take turns, so
# guessing is slow however many connections try).
FAILED_UNLOCK_DELAY = 0.5
DEFAULT_SERVICE_IDLE_MINUTES = 10


def control_socket_path(data_dir: Path) -> Path:
    return Path(data_dir) / SOCKET_NAME


class ApiError(Exception):
    """A request failed with one of ``ERROR_CODES``; raised by handlers and by the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class ControlSocketError(Exception):
    """The control socket cannot be set up (path taken, group missing, permissions)."""


class ServiceSession:
    """One connection's field-service state: unlocked until ``deadline`` (monotonic seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.deadline: float | None = None
        self.idle_seconds = 0.0
        # Why the connection is locked when it was unlocked before (shown with a refusal).
        self.locked_reason = ""

    def unlock(self, idle_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        self.deadline = self._clock() + idle_seconds
        self.locked_reason = ""

    def lock(self, reason: str = "") -> bool:
        """Lock; whether it was unlocked."""
        was = self.deadline is not None
        self.deadline = None
        self.locked_reason = reason
        return was

    def expired(self) -> bool:
        """Whether it was unlocked and its idle time has run out (it is then locked)."""
        if self.deadline is None or self._clock() < self.deadline:
            return False
        minutes = self.idle_seconds / 60
        self.lock(f"service mode locked again after {minutes:g} minutes without a service request")
        return True

    @property
    def unlocked(self) -> bool:
        return self.deadline is not None and self._clock() < self.deadline

    def refresh(self, idle_seconds: float) -> bool:
        """For a service-role request: whether unlocked, and if so its idle time starts again."""
        if not self.unlocked:
            return False
        self.unlock(idle_seconds)
        return True

    def expires_in(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, round(self.deadline - self._clock(), 1))


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the role granted, and the peer's credentials from the kernel.

    ``session`` is the connection's service-mode state (None for a caller made outside a
    connection).
    """

    role: str
    uid: int
    gid: int
    pid: int
    session: ServiceSession | None = field(default=None, compare=False, repr=False)

    @property
    def is_service(self) -> bool:
        return self.role == "service"


class PasswordCheck(Protocol):
    """Where the field-service password is kept (``ConfigStore``)."""

    def service_password_set(self) -> bool: ...

    def check_service_password(self, password: str) -> bool: ...


Handler = Callable[[dict[str, Any], Caller], Any]


@dataclass(frozen=True)
class _Op:
    handler: Handler
    service_only: bool
    # Streams after its reply; served by the connection itself.
    streaming: bool = False
    # Served even when the service role the request claims is refused (as a technologist's).
    any_role: bool = False


def service_role_refusal(peer_uid: int, daemon_uid: int | None = None) -> str | None:
    """Why a peer with this uid may not claim the service role, or None when it may."""
    own = os.geteuid() if daemon_uid is None else daemon_uid
    if peer_uid in (0, own):
        return None
    return (
        f"the service role is only for root or the daemon's user (uid {own}); "
        f"this client runs as uid {peer_uid}"
    )


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    size = struct.calcsize("3i")
    pid, uid, gid = struct.unpack(
        "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    )
    return pid, uid, gid


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address for ``path`` that fits in a sockaddr_un.

    A longer path is reached through its folder opened as a file descriptor
    (``/proc/self/fd/N/name``), which bind() and connect() follow on Linux.
    """
    text = os.fspath(path)
    if len(os.fsencode(text)) <= _SUN_PATH_MAX:
        yield text
        return
    folder = os.open(os.path.dirname(text) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{folder}/{os.path.basename(text)}"
    finally:
        os.close(folder)


def encode_line(message: dict[str, Any]) -> bytes:
    """One protocol line; raises ValueError/TypeError for what JSON cannot carry."""
    try:
        text = json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # lone surrogates in a string: escape them
        text = json.dumps(message, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        return text.encode("ascii") + b"\n"


def error_reply(request_id: Any, code: str, message: str) -> dict[str, Any]:
    return {
        "v": API_VERSION,
        "id": request_id,
        "ok": False,
        "error": {"code": code, "message": message},
    }


class _Closed(Exception):
    """The connection is finished (the client left, or it must be dropped)."""


class _Connection:
    def __init__(self, server: ControlServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.pid, self.uid, self.gid = peer_credentials(sock)
        self.session = ServiceSession()

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.sock.sendall(encode_line(message))
        except OSError as exc:  # gone, or not reading its answers for SEND_TIMEOUT
            raise _Closed from exc

    def serve(self) -> None:
        buffer = bytearray()
        scanned = 0  # no newline in buffer[:scanned]
        while not self.server.stopping:
            start = 0
            while True:
                end = buffer.find(b"\n", max(start, scanned))
                if end < 0:
                    break
                line = bytes(buffer[start:end])
                start = end + 1
                if len(line) > MAX_LINE:
                    self._too_large()
                subscription = self.handle_line(line)
                if subscription is not None:
                    self.stream_events(subscription)
                    return
            del buffer[:start]
            scanned = len(buffer)
            if len(buffer) > MAX_LINE:
                self._too_large()
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue  # an idle client may stay connected
            except OSError as exc:
                raise _Closed from exc
            if not chunk:
                if buffer.strip():
                    LOG.debug("control client (pid %d) left in the middle of a line", self.pid)
                return
            buffer += chunk

    def _too_large(self) -> None:
        self.send(error_reply(None, "too-large", f"a request line is limited to {MAX_LINE} bytes"))
        raise _Closed

    def handle_line(self, line: bytes) -> Subscription | None:
        """Answer one request line; the subscription when it started an event stream."""
        if not line.strip():
            return None
        request_id: Any = None
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.send(error_reply(None, "bad-request", "the request is not valid UTF-8"))
            return None
        try:
            request = json.loads(text)
        except (ValueError, RecursionError) as exc:
            self.send(error_reply(None, "bad-request", f"the request is not valid JSON: {exc}"))
            return None
        if not isinstance(request, dict):
            self.send(error_reply(None, "bad-request", "the request must be a JSON object"))
            return None
        request_id = request.get("id")
        try:
            op, args, role = self._check(request)
            entry = self.server.op(op)
            caller = self._caller(role, entry)
            if entry.service_only and not caller.is_service:
                raise ApiError("forbidden", f"{op} needs the service role")
            if entry.streaming:
                topics = subscribe_topics(args)
                # Subscribed before the reply: no event after the reply is missed.
                subscription = self.server.events.subscribe(topics)
                try:
                    self.send(
                        {"v": API_VERSION, "id": request_id, "ok": True, "result": sorted(topics)}
                    )
                except _Closed:
                    subscription.close()
                    raise
                return subscription
            result = self.server.call(entry, op, args, caller)
        except ApiError as exc:
            self.send(error_reply(request_id, exc.code, exc.message))
            return None
        try:
            reply = encode_line({"v": API_VERSION, "id": request_id, "ok": True, "result": result})
        except (TypeError, ValueError) as exc:
            LOG.error("control op %s returned what JSON cannot carry: %s", op, exc)
            reply = encode_line(error_reply(request_id, "internal", f"{op} failed: bad result"))
        try:
            self.sock.sendall(reply)
        except OSError as exc:
            raise _Closed from exc
        return None

    def _check(self, request: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
        version = request.get("v")
        if "v" not in request:
            raise ApiError("bad-request", 'the request has no "v" (protocol version)')
        if type(version) is not int or version != API_VERSION:
            raise ApiError(
                "unsupported-version",
                f"protocol version {version!r} is not supported; this daemon speaks "
                f"version {API_VERSION}",
            )
        op = request.get("op")
        if not isinstance(op, str) or not op:
            raise ApiError("bad-request", 'the request has no "op" (a non-empty string)')
        args = request.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ApiError("bad-request", '"args" must be a JSON object')
        role = request.get("role", "technologist")
        if role not in ROLES:
            raise ApiError("bad-request", f'"role" must be one of {", ".join(ROLES)}')
        return op, args, role

    def _caller(self, role: str, entry: _Op) -> Caller:
        """The caller of a request claiming ``role``; raises forbidden for a refused claim."""
        if role == "service":
            refusal = self._service_refusal()
            if refusal is not None:
                if not entry.any_role:
                    raise ApiError("forbidden", refusal)
                role = "technologist"
        return Caller(role=role, uid=self.uid, gid=self.gid, pid=self.pid, session=self.session)

    def _service_refusal(self) -> str | None:
        """Why this connection may not use the service role now, or None when it may."""
        refusal = service_role_refusal(self.uid, self.server.daemon_uid)
        if refusal is None:
            return None
        if self.session.expired():
            AUDIT.info(
                "service mode locked after %g minutes idle (uid %d, pid %d)",
                self.session.idle_seconds / 60,
                self.uid,
                self.pid,
            )
            audit.service_logout(self.uid, self.pid, "service mode locked after idle time")
        if self.session.refresh(self.server.service_idle_seconds()):
            return None
        hint = "; unlock service mode with auth.unlock and the service password"
        if self.session.locked_reason:
            return f"{self.session.locked_reason}{hint}"
        return f"{refusal}{hint}"

    def stream_events(self, subscription: Subscription) -> None:
        """Send events until the client closes its end or the server stops."""
        lost = 0
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self.sock, selectors.EVENT_READ)
                while not self.server.stopping:
                    event = subscription.get(timeout=0.2)
                    if event is not None:
                        line: dict[str, Any] = {"v": API_VERSION, "event": event.as_dict()}
                        if subscription.dropped > lost:
                            line["lost"] = subscription.dropped - lost
                            lost = subscription.dropped
                        try:
                            self.sock.sendall(encode_line(line))
                        except (TypeError, ValueError) as exc:
                            LOG.error("event on %s cannot be sent: %s", event.topic, exc)
                        except OSError:
                            return
                    if selector.select(timeout=0):
                        try:
                            data = self.sock.recv(65536)
                        except TimeoutError:
                            continue
                        except OSError:
                            return
                        if not data:  # the client closed
                            return
        finally:
            subscription.close()


def subscribe_topics(args: dict[str, Any]) -> frozenset[str]:
    topics = args.get("topics")
    if topics is None:
        return frozenset(TOPICS)
    if (
        not isinstance(topics, list)
        or not topics
        or not all(isinstance(topic, str) for topic in topics)
    ):
        raise ApiError("bad-request", '"topics" must be a non-empty list of topic names')
    unknown = sorted(set(topics) - set(TOPICS))
    if unknown:
        raise ApiError(
            "invalid", f"unknown topic {', '.join(unknown)}; topics are {', '.join(TOPICS)}"
        )
    return frozenset(topics)


class ControlServer:
    """Serves registered ops on a Unix socket; see the module docstring for the protocol."""

    def __init__(
        self,
        socket_path: Path,
        events: EventBus,
        *,
        group: str | None = None,
        max_connections: int = MAX_CONNECTIONS,
        passwords: PasswordCheck | None = None,
        service_idle_minutes: Callable[[], float] | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.events = events
        self.group = group or None
        self.max_connections = max_connections
        self.daemon_uid = os.geteuid()
        self.passwords = passwords
        self._service_idle_minutes = service_idle_minutes
        self._password_lock = threading.Lock()
        self.stopping = False
        self._ops: dict[str, _Op] = {}
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._inode: tuple[int, int] | None = None
        self.register("hello", self._hello)
        self._ops["events.subscribe"] = _Op(_no_handler, service_only=False, streaming=True)
        self._ops["auth.unlock"] = _Op(self._auth_unlock, service_only=False, any_role=True)
        self._ops["auth.lock"] = _Op(self._auth_lock, service_only=False, any_role=True)
        self._ops["auth.status"] = _Op(self._auth_status, service_only=False, any_role=True)

    # --- ops ------------------------------------------------------------------------------

    def register(self, op: str, handler: Handler, *, service_only: bool = False) -> None:
        if op in self._ops:
            raise ValueError(f"control op {op} is registered already")
        self._ops[op] = _Op(handler, service_only)

    def ops(self) -> list[str]:
        return sorted(self._ops)

    def op(self, name: str) -> _Op:
        entry = self._ops.get(name)
        if entry is None:
            raise ApiError("unknown-op", f"unknown op {name!r}")
        return entry

    def call(self, entry: _Op, op: str, args: dict[str, Any], caller: Caller) -> Any:
        try:
            # Audit messages written by the op name the client as the requesting user.
            with audit.acting_as(audit.control_caller(caller.uid, caller.pid, caller.role)):
                return entry.handler(args, caller)
        except ApiError:
            raise
        except (JobError, ConfigError) as exc:  # a request the job model or config refuses
            raise ApiError("invalid", str(exc)) from exc
        except Exception as exc:
            LOG.exception("control op %s failed", op)
            raise ApiError("internal", f"{op} failed: {exc}") from exc

    # --- field-service mode ----------------------------------------------------------------

    def service_idle_minutes(self) -> float:
        if self._service_idle_minutes is None:
            return DEFAULT_SERVICE_IDLE_MINUTES
        return self._service_idle_minutes()

    def service_idle_seconds(self) -> float:
        return self.service_idle_minutes() * 60

    def password_set(self) -> bool:
        return self.passwords is not None and self.passwords.service_password_set()

    def auth_state(self, caller: Caller) -> dict[str, Any]:
        """The caller's service-mode state, as ``auth.status`` answers it."""
        session = caller.session
        if session is not None and session.expired():
            AUDIT.info(
                "service mode locked after %g minutes idle (uid %d, pid %d)",
                session.idle_seconds / 60,
                caller.uid,
                caller.pid,
            )
            audit.service_logout(caller.uid, caller.pid, "service mode locked after idle time")
        unlocked = session is not None and session.unlocked
        privileged = service_role_refusal(caller.uid, self.daemon_uid) is None
        minutes = self.service_idle_minutes()
        return {
            "role": caller.role,
            "unlocked": unlocked,
            "expires_in": session.expires_in() if session is not None and unlocked else None,
            "password_set": self.password_set(),
            "idle_minutes": int(minutes) if float(minutes).is_integer() else minutes,
            # Root and the daemon's user have the service role without unlocking.
            "privileged": privileged,
            "service_allowed": privileged or unlocked,
        }

    def _auth_unlock(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        password = args.get("password")
        if not isinstance(password, str) or not password:
            raise ApiError("bad-request", "password is required (text)")
        if caller.session is None:
            raise ApiError("internal", "auth.unlock needs a connection")
        if not self.password_set():
            AUDIT.warning(
                "service unlock refused: no service password is set (uid %d, pid %d)",
                caller.uid,
                caller.pid,
            )
            audit.service_login(caller.uid, caller.pid, success=False, reason="no password set")
            raise ApiError(
                "forbidden",
                "no service password is set: set one on the appliance with "
                "`dicom-appliance service-password`",
            )
        assert self.passwords is not None
        # One check at a time, the delay included: guesses cannot run in parallel.
        with self._password_lock:
            good = self.passwords.check_service_password(password)
            if not good:
                time.sleep(FAILED_UNLOCK_DELAY)
        if not good:
            AUDIT.warning(
                "service unlock failed: wrong password (uid %d, pid %d)", caller.uid, caller.pid
            )
            audit.service_login(caller.uid, caller.pid, success=False, reason="wrong password")
            raise ApiError("forbidden", "wrong service password; service mode stays locked")
        caller.session.unlock(self.service_idle_seconds())
        audit.service_login(caller.uid, caller.pid, success=True)
        AUDIT.info(
            "service mode unlocked for %g minutes idle (uid %d, pid %d)",
            self.service_idle_minutes(),
            caller.uid,
            caller.pid,
        )
        return self.auth_state(caller)

    def _auth_lock(self, _args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        if caller.session is not None and caller.session.lock():
            AUDIT.info("service mode locked (uid %d, pid %d)", caller.uid, caller.pid)
            audit.service_logout(caller.uid, caller.pid, "service mode locked")
        return self.auth_state(caller)

    def _auth_status(self, _args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return self.auth_state(caller)

    def _hello(self, _args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {
            "api": API_VERSION,
            "server": __version__,
            "role": caller.role,
            "ops": self.ops(),
            "topics": list(TOPICS),
        }

    # --- socket ---------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on the socket; raises ControlSocketError when that is not possible."""
        gid = self._group_id()
        self._remove_stale_socket()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with unix_address(self.socket_path) as address:
                listener.bind(address)
            # Nobody can connect before listen(): set the owner and mode first.
            os.chmod(self.socket_path, SOCKET_MODE)
            if gid is not None:
                os.chown(self.socket_path, -1, gid)
            listener.listen(64)
        except OSError as exc:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.socket_path)
            raise ControlSocketError(
                f"cannot set up the control socket {self.socket_path}: {exc.strerror or exc}"
            ) from exc
        info = os.stat(self.socket_path)
        self._inode = (info.st_dev, info.st_ino)
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self.stopping = False
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="ControlAccept", daemon=True
        )
        self._accept_thread.start()
        LOG.info("control API on %s", self.socket_path)

    def _group_id(self) -> int | None:
        if not self.group:
            return None
        try:
            return grp.getgrnam(self.group).gr_gid
        except KeyError:
            raise ControlSocketError(
                f"control_group {self.group!r} does not exist: create the group or change "
                "the setting"
            ) from None

    def _remove_stale_socket(self) -> None:
        path = self.socket_path
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise ControlSocketError(f"{path} exists and is not a socket; move it away")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2.0)
        try:
            with unix_address(path) as address:
                probe.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # nobody listens: left by a daemon that was killed
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise ControlSocketError(f"cannot check the control socket {path}: {exc}") from exc
        else:
            raise ControlSocketError(
                f"another daemon is already listening on {path}; stop it first "
                "(two daemons must not share a data folder)"
            )
        finally:
            probe.close()
        LOG.warning("removing the stale control socket %s left by an earlier run", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self.stopping:
                ready = selector.select()
                if self.stopping:
                    return
                if not any(key.fileobj is self._listener for key, _ in ready):
                    continue
                try:
                    sock, _ = self._listener.accept()
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        LOG.error("control API cannot accept a connection: %s", exc)
                        threading.Event().wait(0.1)
                    continue
                self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        sock.settimeout(SEND_TIMEOUT)
        with self._lock:
            full = len(self._connections) >= self.max_connections
            if not full:
                thread = threading.Thread(
                    target=self._run_connection, args=(sock,), name="ControlConnection", daemon=True
                )
                self._connections[sock] = thread
        if full:
            LOG.warning("control API: %d connections open, refusing another", self.max_connections)
            sock.settimeout(1.0)
            with contextlib.suppress(OSError):
                sock.sendall(
                    encode_line(
                        error_reply(
                            None,
                            "unavailable",
                            f"too many control connections (at most {self.max_connections})",
                        )
                    )
                )
            _close(sock)
            return
        thread.start()

    def _run_connection(self, sock: socket.socket) -> None:
        try:
            connection = _Connection(self, sock)
            connection.serve()
        except _Closed:
            pass
        except Exception:
            LOG.exception("control connection failed")
        finally:
            with self._lock:
                self._connections.pop(sock, None)
            _close(sock)

    def connection_count(self) -> int:
        with self._lock:
            return len(self._connections)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection, remove the socket file."""
        if self._listener is None:
            return
        self.stopping = True
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        deadline = time.monotonic() + timeout
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        self._remove_own_socket()
        self._listener.close()
        self._listener = None
        with self._lock:
            connections = dict(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in connections.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        for wake in (self._wake_r, self._wake_w):
            if wake is not None:
                wake.close()
        self._wake_r = self._wake_w = None

    def _remove_own_socket(self) -> None:
        # Only our own: a second daemon started after us (in error) must keep its socket.
        try:
            info = os.stat(self.socket_path)
        except FileNotFoundError:
            return
        if (info.st_dev, info.st_ino) == self._inode:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)


def _no_handler(_args: dict[str, Any], _caller: Caller) -> None:
    raise ApiError("internal", "streaming op called as a plain op")


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
