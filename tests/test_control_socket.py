"""The control API socket: protocol errors, roles, limits, event streams; and the listener's
hooks that feed it (association and storage events, storage listeners)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from appliance import __version__
from appliance.archive import Archive
from appliance.config import ConfigStore
from appliance.control import (
    MAX_LINE,
    ApiError,
    Caller,
    ControlServer,
    ControlSocketError,
    control_socket_path,
    service_role_refusal,
)
from appliance.control_client import ControlClient, DaemonUnavailable
from appliance.events import Event, EventBus, Subscription
from appliance.jobs import JobError
from appliance.network import DicomServer
from tests.factories import write_ct_series
from tests.peers import free_port
from tests.scp_helpers import VERIFICATION, client_ae, storescu, succeeded_files

# --- a control server with a few ops -------------------------------------------------------


def _echo(args: dict[str, Any], caller: Caller) -> dict[str, Any]:
    return {"args": args, "role": caller.role, "uid": caller.uid, "pid": caller.pid}


def _fail(_args: dict[str, Any], _caller: Caller) -> None:
    raise RuntimeError("disk on fire")


def _not_found(args: dict[str, Any], _caller: Caller) -> None:
    raise ApiError("not-found", f"no job {args.get('id')}")


def _bad_value(args: dict[str, Any], _caller: Caller) -> None:
    raise JobError(f"cannot pause job {args.get('id')}: it is finished")


def _unencodable(_args: dict[str, Any], _caller: Caller) -> object:
    return {"value": object()}


class Server(SimpleNamespace):
    path: Path
    bus: EventBus
    control: ControlServer


def make_server(path: Path, **kwargs: Any) -> Server:
    bus = EventBus()
    control = ControlServer(path, bus, **kwargs)
    control.register("echo", _echo)
    control.register("fail", _fail)
    control.register("find", _not_found)
    control.register("unencodable", _unencodable)
    control.register("pause", _bad_value)
    control.register("service.reset", lambda args, caller: "reset", service_only=True)
    control.start()
    return Server(path=path, bus=bus, control=control)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    made = make_server(control_socket_path(tmp_path))
    yield made
    made.control.stop()


def connect(path: Path, timeout: float = 10) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))  # blocking: waits while the accept backlog is full
    sock.settimeout(timeout)
    return sock


class Raw:
    """A client speaking the protocol by hand, for what ControlClient never sends."""

    def __init__(self, path: Path) -> None:
        self.sock = connect(path)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, **fields: Any) -> None:
        self.send(json.dumps(fields).encode() + b"\n")

    def reply(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True

    def good_request_works(self) -> None:
        self.request(v=1, id="ok?", op="echo", args={"n": 1})
        reply = self.reply()
        assert reply["ok"] is True and reply["id"] == "ok?", reply
        assert reply["result"]["args"] == {"n": 1}

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(server: Server) -> Iterator[Raw]:
    client = Raw(server.path)
    yield client
    client.close()


def error_of(reply: dict[str, Any]) -> str:
    assert reply["v"] == 1 and reply["ok"] is False, reply
    assert reply["error"]["message"], reply
    return str(reply["error"]["code"])


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def subscriber_count(bus: EventBus) -> int:
    return len(bus._subscribers)


# --- protocol ------------------------------------------------------------------------------


def test_hello_and_registered_op(server: Server) -> None:
    with ControlClient(server.path) as client:
        hello = client.call("hello")
        assert hello["api"] == 1 and hello["server"] == __version__
        assert {"hello", "events.subscribe", "echo"} <= set(hello["ops"])
        result = client.call("echo", name="Ünïcode ✓", numbers=[1, 2.5])
        assert result["args"] == {"name": "Ünïcode ✓", "numbers": [1, 2.5]}
        assert result["role"] == "service" and result["uid"] == os.geteuid()
        assert result["pid"] == os.getpid()


def test_ids_are_echoed_whatever_their_type(raw: Raw) -> None:
    for request_id in ("abc", 7, {"a": [1]}, None):
        raw.request(v=1, id=request_id, op="echo")
        assert raw.reply()["id"] == request_id
    raw.request(v=1, op="echo")  # no id at all
    assert raw.reply()["id"] is None


def test_malformed_json(raw: Raw) -> None:
    for bad in (b'{"v": 1, "op": "echo"', b"not json", b"[1, 2]", b'"text"', b"[" * 100000):
        raw.send(bad + b"\n")
        assert error_of(raw.reply()) == "bad-request", bad[:30]
        raw.good_request_works()


def test_invalid_utf8(raw: Raw) -> None:
    raw.send(b'{"v": 1, "id": 1, "op": "echo", "args": {"x": "\xff\xfe"}}\n')
    reply = raw.reply()
    assert error_of(reply) == "bad-request"
    assert "UTF-8" in reply["error"]["message"]
    raw.good_request_works()


def test_blank_lines_are_ignored(raw: Raw) -> None:
    raw.send(b"\n  \r\n")
    raw.good_request_works()


@pytest.mark.parametrize("newline", [b"", b"\n"], ids=["unfinished", "finished"])
def test_oversized_line_gets_too_large_then_the_connection_closes(
    server: Server, raw: Raw, newline: bytes
) -> None:
    line = b'{"v": 1, "op": "echo", "args": {"x": "' + b"a" * MAX_LINE + b'"}}' + newline
    try:
        raw.send(line)
    except BrokenPipeError:
        pass  # the server may close before the last bytes are sent
    assert error_of(raw.reply()) == "too-large"
    assert raw.closed_by_server()
    wait_until(lambda: server.control.connection_count() == 0)
    fresh = Raw(server.path)
    fresh.good_request_works()
    fresh.close()


def test_a_line_of_exactly_the_limit_is_accepted(raw: Raw) -> None:
    prefix = b'{"v":1,"id":"big","op":"echo","args":{"x":"'
    suffix = b'"}}'
    raw.send(prefix + b"a" * (MAX_LINE - len(prefix) - len(suffix)) + suffix + b"\n")
    reply = raw.reply()
    assert reply["ok"] is True and len(reply["result"]["args"]["x"]) > MAX_LINE - 100


def test_protocol_version(raw: Raw) -> None:
    for version in (2, 0, "1", 1.0, True, None):
        raw.request(v=version, id="x", op="echo")
        reply = raw.reply()
        assert error_of(reply) == "unsupported-version", version
        assert reply["id"] == "x"
        raw.good_request_works()
    raw.request(id="x", op="echo")
    assert error_of(raw.reply()) == "bad-request"
    raw.good_request_works()


def test_unknown_and_missing_op(raw: Raw) -> None:
    raw.request(v=1, id=1, op="jobs.explode")
    reply = raw.reply()
    assert error_of(reply) == "unknown-op" and "jobs.explode" in reply["error"]["message"]
    raw.good_request_works()
    for op in (None, "", 5, ["echo"]):
        raw.request(v=1, id=2, op=op)
        assert error_of(raw.reply()) == "bad-request", op
    raw.request(v=1, id=3)
    assert error_of(raw.reply()) == "bad-request"
    raw.good_request_works()


def test_args_must_be_an_object(raw: Raw) -> None:
    for args in ([1, 2], "x", 3):
        raw.request(v=1, id=1, op="echo", args=args)
        assert error_of(raw.reply()) == "bad-request", args
        raw.good_request_works()


def test_role_must_be_known(raw: Raw) -> None:
    raw.request(v=1, id=1, op="echo", role="admin")
    assert error_of(raw.reply()) == "bad-request"
    raw.request(v=1, id=2, op="echo")  # no role: the technologist's
    assert raw.reply()["result"]["role"] == "technologist"


def test_handler_errors(server: Server, raw: Raw, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="appliance.control"):
        raw.request(v=1, id=1, op="fail")
        reply = raw.reply()
    assert error_of(reply) == "internal" and "disk on fire" in reply["error"]["message"]
    failures = [r for r in caplog.records if "control op fail failed" in r.getMessage()]
    assert failures and failures[0].exc_info is not None, "the traceback must be logged"
    raw.good_request_works()

    raw.request(v=1, id=2, op="find", args={"id": 42})
    reply = raw.reply()
    assert reply["error"] == {"code": "not-found", "message": "no job 42"}

    raw.request(v=1, id=3, op="pause", args={"id": 5})
    reply = raw.reply()
    assert reply["error"] == {"code": "invalid", "message": "cannot pause job 5: it is finished"}

    raw.request(v=1, id=4, op="unencodable")
    assert error_of(raw.reply()) == "internal"
    raw.good_request_works()


def test_client_raises_api_errors(server: Server) -> None:
    with ControlClient(server.path) as client:
        with pytest.raises(ApiError) as caught:
            client.call("find", id=9)
        assert caught.value.code == "not-found" and str(caught.value) == "no job 9"
        with pytest.raises(ApiError) as caught:
            client.call("nope")
        assert caught.value.code == "unknown-op"
        assert client.call("echo", after="errors")["args"] == {"after": "errors"}


def test_client_says_how_to_start_the_daemon(tmp_path: Path) -> None:
    path = control_socket_path(tmp_path)
    with pytest.raises(DaemonUnavailable) as caught:
        ControlClient(path).call("hello")
    message = str(caught.value)
    assert str(path) in message and "not running" in message
    assert f"dicom-appliance serve --data-dir {tmp_path}" in message
    with pytest.raises(DaemonUnavailable):
        ControlClient(path).subscribe(["job"])


def test_client_reconnects_after_a_daemon_restart(tmp_path: Path) -> None:
    path = control_socket_path(tmp_path)
    first = make_server(path)
    client = ControlClient(path)
    assert client.call("echo", n=1)["args"] == {"n": 1}
    first.control.stop()
    with pytest.raises(DaemonUnavailable):
        client.call("echo", n=2)
    second = make_server(path)
    try:
        assert client.call("echo", n=3)["args"] == {"n": 3}
    finally:
        client.close()
        second.control.stop()


def test_one_connection_serves_many_calls(server: Server) -> None:
    with ControlClient(server.path) as client:
        for number in range(50):
            assert client.call("echo", n=number)["args"] == {"n": number}
        assert server.control.connection_count() == 1


# --- connections ---------------------------------------------------------------------------


def test_many_clients_at_once(server: Server) -> None:
    failures: list[BaseException] = []

    def work(number: int) -> None:
        try:
            with ControlClient(server.path) as client:
                for call in range(20):
                    result = client.call("echo", client=number, call=call)
                    assert result["args"] == {"client": number, "call": call}
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures[:3]
    wait_until(lambda: server.control.connection_count() == 0)


def test_connections_beyond_the_limit_get_unavailable(tmp_path: Path) -> None:
    made = make_server(control_socket_path(tmp_path), max_connections=4)
    clients = [Raw(made.path) for _ in range(4)]
    try:
        for client in clients:
            client.good_request_works()
        extra = Raw(made.path)
        assert error_of(extra.reply()) == "unavailable"
        assert extra.closed_by_server()
        extra.close()
        clients.pop().close()
        wait_until(lambda: made.control.connection_count() == 3)
        again = Raw(made.path)
        again.good_request_works()
        clients.append(again)
    finally:
        for client in clients:
            client.close()
        made.control.stop()


def test_default_limit_is_64(server: Server) -> None:
    clients = [Raw(server.path) for _ in range(64)]
    try:
        for client in clients:
            client.good_request_works()
        extra = Raw(server.path)
        assert error_of(extra.reply()) == "unavailable"
        extra.close()
    finally:
        for client in clients:
            client.close()
    wait_until(lambda: server.control.connection_count() == 0)
    with ControlClient(server.path) as client:
        assert client.call("hello")["api"] == 1


def test_client_leaving_mid_line(server: Server) -> None:
    leaving = Raw(server.path)
    leaving.send(b'{"v": 1, "id": 1, "op": "ec')
    wait_until(lambda: server.control.connection_count() == 1)
    leaving.close()
    wait_until(lambda: server.control.connection_count() == 0)
    with ControlClient(server.path) as client:
        assert client.call("echo")["args"] == {}


def test_a_slow_partial_line_does_not_hold_up_others(server: Server) -> None:
    slow = Raw(server.path)
    slow.send(b'{"v": 1, "id": "slow", "op": ')
    start = time.monotonic()
    with ControlClient(server.path, timeout=5) as client:
        for _ in range(10):
            client.call("hello")
    assert time.monotonic() - start < 2
    slow.send(b'"echo"}\n')  # finishes its line later: still answered
    assert slow.reply()["id"] == "slow"
    slow.close()


# --- events --------------------------------------------------------------------------------


def test_subscriber_receives_its_topics_then_closes(server: Server) -> None:
    stream = ControlClient(server.path, role="technologist").subscribe(["job", "alert"])
    assert sorted(stream.topics) == ["alert", "job"]
    wait_until(lambda: subscriber_count(server.bus) == 1)
    server.bus.publish("storage", {"ignored": True})
    server.bus.publish("job", {"id": 1, "state": "running"})
    server.bus.publish("alert", {"text": "disk almost full"})
    first = stream.get(timeout=5)
    second = stream.get(timeout=5)
    assert first is not None and second is not None
    assert (first["topic"], first["data"]) == ("job", {"id": 1, "state": "running"})
    assert (second["topic"], second["data"]) == ("alert", {"text": "disk almost full"})
    assert isinstance(first["time"], float)
    assert stream.get(timeout=0.3) is None  # the storage event never came
    stream.close()
    wait_until(lambda: subscriber_count(server.bus) == 0)
    wait_until(lambda: server.control.connection_count() == 0)


def test_subscription_iterates_until_closed_from_another_thread(server: Server) -> None:
    stream = ControlClient(server.path).subscribe()
    wait_until(lambda: subscriber_count(server.bus) == 1)
    received: list[dict[str, Any]] = []

    def read() -> None:
        for event in stream:
            received.append(event)

    reader = threading.Thread(target=read)
    reader.start()
    for number in range(5):
        server.bus.publish("job", {"n": number})
    wait_until(lambda: len(received) == 5)
    stream.close()
    reader.join(5)
    assert not reader.is_alive()
    assert [event["data"]["n"] for event in received] == list(range(5))
    wait_until(lambda: subscriber_count(server.bus) == 0)


def test_raw_subscriber_closing_is_detected(server: Server, raw: Raw) -> None:
    raw.request(v=1, id="sub", op="events.subscribe", args={"topics": ["storage"]})
    assert raw.reply() == {"v": 1, "id": "sub", "ok": True, "result": ["storage"]}
    server.bus.publish("storage", {"sop_instance_uid": "1.2.3"})
    assert raw.reply() == {
        "v": 1,
        "event": {
            "topic": "storage",
            "time": pytest.approx(time.time(), abs=60),
            "data": {"sop_instance_uid": "1.2.3"},
        },
    }
    raw.sock.shutdown(socket.SHUT_WR)  # the client closes without any event pending
    wait_until(lambda: subscriber_count(server.bus) == 0)
    wait_until(lambda: server.control.connection_count() == 0)


def test_a_subscriber_that_falls_behind_is_told_how_many_it_lost(server: Server) -> None:
    stream = ControlClient(server.path).subscribe(["job"])
    wait_until(lambda: subscriber_count(server.bus) == 1)
    # Not read while published: the socket buffers fill, then the backlog overflows.
    total = 5000
    for number in range(total):
        server.bus.publish("job", {"n": number, "padding": "x" * 1000})
    seen = []
    while (event := stream.get(timeout=2)) is not None:
        seen.append(event["data"]["n"])
    assert stream.lost > 0
    assert len(seen) + stream.lost == total
    assert seen == sorted(seen) and seen[-1] == total - 1
    stream.close()


def test_subscribe_checks_topics(raw: Raw) -> None:
    raw.request(v=1, id=1, op="events.subscribe", args={"topics": ["job", "weather"]})
    reply = raw.reply()
    assert error_of(reply) == "invalid" and "weather" in reply["error"]["message"]
    for topics in ("job", [], [1]):
        raw.request(v=1, id=2, op="events.subscribe", args={"topics": topics})
        assert error_of(raw.reply()) == "bad-request", topics
    raw.good_request_works()


# --- roles ---------------------------------------------------------------------------------


def test_service_only_op_needs_the_service_role(server: Server) -> None:
    with ControlClient(server.path, role="technologist") as client:
        with pytest.raises(ApiError) as caught:
            client.call("service.reset")
        assert caught.value.code == "forbidden"
        assert "service" in caught.value.message
        assert client.call("echo")["role"] == "technologist"
    with ControlClient(server.path, role="service") as client:
        assert client.call("service.reset") == "reset"


def test_service_role_decision() -> None:
    assert service_role_refusal(0, daemon_uid=1000) is None
    assert service_role_refusal(1000, daemon_uid=1000) is None
    refusal = service_role_refusal(1001, daemon_uid=1000)
    assert refusal is not None and "1001" in refusal and "service role" in refusal


CHILD = textwrap.dedent(
    """
    import json, os, sys
    from appliance.control import ApiError
    from appliance.control_client import ControlClient
    os.setgid(65534)
    os.setgroups([])
    os.setuid(65534)
    out = {}
    for role in ("service", "technologist"):
        try:
            with ControlClient(sys.argv[1], role=role) as client:
                out[role] = {"ok": client.call("echo")}
        except ApiError as exc:
            out[role] = {"code": exc.code, "message": exc.message}
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_service_claim_from_another_uid_is_forbidden() -> None:
    folder = Path(tempfile.mkdtemp(prefix="ctl-"))
    try:
        folder.chmod(0o755)
        made = make_server(folder / "control.sock", group="nogroup")
        try:
            result = subprocess.run(
                [sys.executable, "-c", CHILD, str(made.path)],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=Path(__file__).resolve().parent.parent,
            )
            assert result.returncode == 0, result.stderr
            out = json.loads(result.stdout)
            assert out["service"]["code"] == "forbidden"
            assert "uid 65534" in out["service"]["message"]
            assert out["technologist"]["ok"]["uid"] == 65534
            assert out["technologist"]["ok"]["role"] == "technologist"
        finally:
            made.control.stop()
    finally:
        shutil.rmtree(folder)


# --- the socket file -----------------------------------------------------------------------


def test_socket_mode_is_0660(server: Server) -> None:
    info = os.stat(server.path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660


def test_socket_group(tmp_path: Path) -> None:
    made = make_server(control_socket_path(tmp_path), group="nogroup")
    try:
        if os.geteuid() == 0:
            assert os.stat(made.path).st_gid == 65534
    finally:
        made.control.stop()
    with pytest.raises(ControlSocketError, match="no-such-group-here.*does not exist"):
        make_server(control_socket_path(tmp_path), group="no-such-group-here")


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = control_socket_path(tmp_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a daemon killed with SIGKILL
    made = make_server(path)
    try:
        with ControlClient(path) as client:
            assert client.call("hello")["api"] == 1
    finally:
        made.control.stop()
    assert not path.exists()


def test_a_second_server_on_the_same_socket_is_refused(server: Server) -> None:
    with pytest.raises(ControlSocketError, match="another daemon is already listening"):
        make_server(server.path)
    with ControlClient(server.path) as client:  # the first one is untouched
        assert client.call("hello")["api"] == 1


def test_a_file_in_the_way_is_not_removed(tmp_path: Path) -> None:
    path = control_socket_path(tmp_path)
    path.write_text("precious")
    with pytest.raises(ControlSocketError, match="not a socket"):
        make_server(path)
    assert path.read_text() == "precious"


def test_long_socket_path(tmp_path: Path) -> None:
    folder = tmp_path / ("d" * 120)
    folder.mkdir()
    made = make_server(control_socket_path(folder))
    try:
        assert len(str(made.path)) > 108
        with ControlClient(made.path) as client:
            assert client.call("hello")["api"] == 1
    finally:
        made.control.stop()


def test_stop_is_prompt_with_idle_connections_and_subscribers(tmp_path: Path) -> None:
    made = make_server(control_socket_path(tmp_path))
    idle = Raw(made.path)
    idle.good_request_works()
    stream = ControlClient(made.path).subscribe(["job"])
    wait_until(lambda: subscriber_count(made.bus) == 1)
    start = time.monotonic()
    made.control.stop()
    assert time.monotonic() - start < 3
    assert made.control.connection_count() == 0 and subscriber_count(made.bus) == 0
    assert idle.closed_by_server()
    with pytest.raises(DaemonUnavailable):
        stream.get(timeout=5)
    assert not made.path.exists()


# --- the DICOM listener's hooks ------------------------------------------------------------


class Listener(SimpleNamespace):
    dicom: DicomServer
    bus: EventBus
    archive: Archive
    ae_title: str
    port: int


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    data_dir = tmp_path / "data"
    store = ConfigStore(data_dir)
    settings = store.settings()
    settings.port = free_port()
    settings.bind_address = "127.0.0.1"
    settings.ae_title = "APPLIANCE"
    settings.disk_reserve_mb = 1
    archive = Archive(data_dir, disk_reserve_bytes=2**20)
    bus = EventBus()
    dicom = DicomServer(settings, store, archive, events=bus)
    dicom.start()
    yield Listener(dicom=dicom, bus=bus, archive=archive, ae_title="APPLIANCE", port=dicom.port)
    dicom.shutdown(2)
    archive.close()
    store.close()


def drain(subscription: Subscription, until: Callable[[list[Event]], bool]) -> list[Event]:
    events: list[Event] = []
    deadline = time.monotonic() + 20
    while not until(events):
        assert time.monotonic() < deadline, [e.as_dict() for e in events]
        event = subscription.get(timeout=0.2)
        if event is not None:
            events.append(event)
    return events


def closed(events: list[Event]) -> bool:
    return any(e.topic == "association" and e.data["event"] == "closed" for e in events)


def test_storescu_gives_association_and_storage_events(listener: Listener, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "in", 3, patient_id="PAT-7", patient_name="ROE^JANE")
    subscription = listener.bus.subscribe({"association", "storage"})
    stored: list[dict[str, Any]] = []
    listener.dicom.add_storage_listener(stored.append)
    result = storescu(listener, files, calling="MODALITY1")
    assert len(succeeded_files(result.stdout + result.stderr)) == 3, result.stderr

    events = drain(subscription, closed)
    kinds = [(e.topic, e.data.get("event")) for e in events]
    assert kinds == [("association", "opened")] + [("storage", None)] * 3 + [
        ("association", "closed")
    ]
    opened, closing = events[0].data, events[-1].data
    assert opened["calling_ae"] == "MODALITY1" and opened["called_ae"] == "APPLIANCE"
    assert opened["peer_address"] == "127.0.0.1" and opened["peer_port"] > 0
    assert closing["id"] == opened["id"] and closing["how"] == "released"
    assert closing["stored"] == 3 and closing["failed"] == 0

    study_uid = stored[0]["study_instance_uid"]
    for event in events[1:4]:
        data = event.data
        assert data["status"] == 0 and data["ok"] is True
        assert data["calling_ae"] == "MODALITY1" and data["association_id"] == opened["id"]
        assert data["study_instance_uid"] == study_uid and data["modality"] == "CT"
        assert data["patient_id"] == "PAT-7" and data["patient_name"] == "ROE^JANE"
        assert data["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.2"

    assert len(stored) == 3
    assert {info["sop_instance_uid"] for info in stored} == {
        e.data["sop_instance_uid"] for e in events[1:4]
    }
    for info in stored:
        assert Path(info["path"]).is_file()
        assert listener.archive.instance(info["sop_instance_uid"]).path == Path(info["path"])
        assert info["calling_ae"] == "MODALITY1" and info["modality"] == "CT"
        assert info["series_instance_uid"] and info["patient_id"] == "PAT-7"
        assert info["duplicate"] is False
    assert listener.dicom.associations() == []


def test_a_failing_listener_never_fails_the_store(
    listener: Listener, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = write_ct_series(tmp_path / "in", 2)
    seen: list[str] = []

    def broken(info: dict[str, Any]) -> None:
        raise RuntimeError("routing is broken")

    listener.dicom.add_storage_listener(broken)
    listener.dicom.add_storage_listener(lambda info: seen.append(info["sop_instance_uid"]))
    with caplog.at_level(logging.ERROR, logger="appliance.network"):
        result = storescu(listener, files)
    assert len(succeeded_files(result.stdout + result.stderr)) == 2, result.stderr
    assert len(seen) == 2 and all(listener.archive.instance(uid) for uid in seen)
    failures = [r for r in caplog.records if "storage listener failed" in r.getMessage()]
    assert len(failures) == 2 and failures[0].exc_info is not None


def test_refused_store_gives_a_failed_storage_event(listener: Listener, tmp_path: Path) -> None:
    listener.archive.disk_reserve_bytes = 2**62  # every store would cross the reserve
    files = write_ct_series(tmp_path / "in", 1)
    subscription = listener.bus.subscribe({"storage"})
    stored: list[dict[str, Any]] = []
    listener.dicom.add_storage_listener(stored.append)
    result = storescu(listener, files)
    assert not succeeded_files(result.stdout + result.stderr)
    event = drain(subscription, lambda events: bool(events))[0]
    assert event.data["ok"] is False and event.data["status"] == 0xA700
    assert "reserve" in event.data["comment"]
    assert stored == []


def test_associations_show_what_is_happening(listener: Listener) -> None:
    subscription = listener.bus.subscribe({"association"})
    ae = client_ae("LOOKER")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="APPLIANCE")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_echo().Status == 0
        wait_until(lambda: bool(listener.dicom.associations()))
        (current,) = listener.dicom.associations()
        assert current["calling_ae"] == "LOOKER" and current["called_ae"] == "APPLIANCE"
        assert current["last_op"] == "C-ECHO" and current["ops"] == {"C-ECHO": 2}
        assert current["duration"] >= 0 and current["started"] <= time.time()
        assert json.dumps(current)  # goes out on the control socket as it is
    finally:
        assoc.abort()
    events = drain(subscription, closed)
    assert events[-1].data["how"] == "aborted"
    assert events[-1].data["id"] == current["id"]
    wait_until(lambda: listener.dicom.associations() == [])


def test_rejected_association_event(listener: Listener) -> None:
    listener.dicom.settings.accept_unknown_calling_ae = False
    subscription = listener.bus.subscribe({"association"})
    ae = client_ae("STRANGER")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="APPLIANCE")
    assert assoc.is_rejected
    (event,) = drain(subscription, closed)
    assert event.data["how"] == "rejected" and event.data["calling_ae"] == "STRANGER"
    assert "not known" in event.data["reason"]
