"""Field-service mode: `dicom-appliance service-password` stores a scrypt hash, and a control
connection unlocked with the password may use the service role until it is idle too long.

The tests run as root, which has the service role anyway: the clients that must earn it run as
``nobody`` (a child process that drops to uid 65534) on a socket whose group is ``nogroup``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config import ConfigError, ConfigStore
from appliance.control import ControlServer, ServiceSession, control_socket_path
from appliance.control_client import ApiError, ControlClient
from appliance.events import EventBus
from tests.peers import Daemon, appliance_cmd, run

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
NOBODY = 65534
AS_ROOT = os.geteuid() == 0


def set_password(data_dir: Path, text: str, *extra: str) -> subprocess.CompletedProcess:
    return run(appliance_cmd("service-password", *extra, "--data-dir", str(data_dir)), input=text)


# --- the password in the configuration ----------------------------------------------------------


def test_password_from_a_pipe_is_stored_as_a_salted_scrypt_hash(data_dir: Path) -> None:
    result = set_password(data_dir, PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    assert "set" in result.stdout
    text = (data_dir / "config.json").read_text()
    assert PASSWORD not in text and "horse" not in text
    stored = next(iter(json.loads(text)["service"].values()))["password_hash"]
    assert stored["algorithm"] == "scrypt"
    assert stored["n"] >= 2**14 and stored["r"] >= 8 and stored["p"] >= 1
    assert len(bytes.fromhex(stored["salt"])) >= 16 and len(bytes.fromhex(stored["hash"])) >= 32

    store = ConfigStore(data_dir)
    try:
        assert store.service_password_set()
        assert store.check_service_password(PASSWORD)
        assert not store.check_service_password(PASSWORD[:-1])
        assert not store.check_service_password(PASSWORD + " ")
        assert not store.check_service_password("")
    finally:
        store.close()

    # The same password again gets a new salt, hence a new hash.
    assert set_password(data_dir, PASSWORD + "\r\n").returncode == 0
    again = next(iter(json.loads((data_dir / "config.json").read_text())["service"].values()))
    assert again["password_hash"]["salt"] != stored["salt"]
    assert again["password_hash"]["hash"] != stored["hash"]
    store = ConfigStore(data_dir)
    try:
        assert store.check_service_password(PASSWORD)  # the \r\n was not part of it
    finally:
        store.close()


@pytest.mark.parametrize(
    ("stdin", "message"),
    [("short\n", "at least 8 characters"), ("", "no password on standard input")],
)
def test_short_or_missing_password_is_refused(data_dir: Path, stdin: str, message: str) -> None:
    result = set_password(data_dir, stdin)
    assert result.returncode == 2
    assert message in result.stderr
    store = ConfigStore(data_dir)
    try:
        assert not store.service_password_set()
    finally:
        store.close()


def test_clear_removes_the_password(data_dir: Path) -> None:
    assert set_password(data_dir, PASSWORD + "\n").returncode == 0
    result = set_password(data_dir, "", "--clear")
    assert result.returncode == 0 and "removed" in result.stdout
    assert "password_hash" not in (data_dir / "config.json").read_text()
    result = set_password(data_dir, "", "--clear")
    assert result.returncode == 0 and "no service password" in result.stdout


@pytest.mark.parametrize(
    ("stored", "field"),
    [
        ({"password_hash": {"algorithm": "md5"}}, "service.password_hash.algorithm"),
        (
            {"password_hash": {"algorithm": "scrypt", "n": 1000, "r": 8, "p": 1}},
            "service.password_hash.n",
        ),
        (
            {
                "password_hash": {
                    "algorithm": "scrypt", "n": 16384, "r": 8, "p": 1, "salt": "zz", "hash": "00",
                }
            },
            "service.password_hash.salt",
        ),
        ({"password": "plain text"}, "service.password"),
    ],
)  # fmt: skip
def test_a_bad_stored_password_entry_is_refused_on_load(
    data_dir: Path, stored: dict[str, Any], field: str
) -> None:
    (data_dir / "config.json").write_text(json.dumps({"service": {"1": stored}}))
    with pytest.raises(ConfigError) as refused:
        ConfigStore(data_dir)
    assert str(refused.value).startswith(field)


def test_config_store_api(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path)
    try:
        assert not store.service_password_set()
        assert not store.check_service_password(PASSWORD)
        with pytest.raises(ConfigError, match="at least 8"):
            store.set_service_password("1234567")
        store.set_service_password("12345678")
        assert store.check_service_password("12345678")
        assert store.clear_service_password() is True
        assert store.clear_service_password() is False
        assert not store.check_service_password("12345678")
    finally:
        store.close()


# --- sessions ---------------------------------------------------------------------------------


def test_session_idle_time_restarts_with_each_service_request() -> None:
    now = [100.0]
    session = ServiceSession(clock=lambda: now[0])
    assert not session.unlocked and session.expires_in() is None
    assert not session.refresh(60)
    session.unlock(60)
    now[0] += 50
    assert session.refresh(60) and session.expires_in() == 60
    now[0] += 59
    assert session.unlocked and not session.expired()
    now[0] += 1
    assert not session.unlocked
    assert session.expired() and "1 minutes" in session.locked_reason
    assert not session.expired()  # reported once
    session.unlock(60)
    assert session.lock() and not session.lock()


# --- a client as nobody -------------------------------------------------------------------------

# Runs steps on control connections and prints what each answered, as JSON. A step is
# ["call", role, op, args], ["sleep", seconds] or ["reconnect"].
DRIVER = textwrap.dedent(
    """
    import json, os, sys, time
    from appliance.control import ApiError
    from appliance.control_client import ControlClient
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setgroups([])
        os.setuid(65534)
    path, steps = sys.argv[1], json.loads(sys.argv[2])
    client = ControlClient(path, role="technologist")
    out = []
    for step in steps:
        if step[0] == "sleep":
            time.sleep(step[1])
            continue
        if step[0] == "reconnect":
            client.close()
            client = ControlClient(path, role="technologist")
            continue
        _, role, op, args = step
        client.role = role
        started = time.monotonic()
        try:
            answer = {"ok": True, "result": client.call(op, **args)}
        except ApiError as exc:
            answer = {"ok": False, "code": exc.code, "message": exc.message}
        answer["seconds"] = round(time.monotonic() - started, 3)
        answer["uid"] = os.geteuid()
        out.append(answer)
    client.close()
    print(json.dumps(out))
    """
)


def drive(socket_path: Path, steps: list[list[Any]]) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, str(socket_path), json.dumps(steps)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder nobody can reach (pytest's own are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="svc-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def call(role: str, op: str, **args: Any) -> list[Any]:
    return ["call", role, op, args]


@pytest.mark.skipif(not AS_ROOT, reason="a client of another uid needs root to start it")
def test_unlock_gives_an_unprivileged_connection_the_service_role(shared_folder: Path) -> None:
    daemon = Daemon(shared_folder / "data")
    daemon.data_dir.mkdir()
    daemon.configure(disk_reserve_mb=1, control_group="nogroup")
    assert set_password(daemon.data_dir, PASSWORD + "\n").returncode == 0
    daemon.start()
    try:
        socket_path = control_socket_path(daemon.data_dir)
        answers = drive(
            socket_path,
            [
                call("technologist", "config.set", key="max_associations", value=20),
                call("service", "config.set", key="max_associations", value=20),
                call("technologist", "auth.status"),
                call("technologist", "auth.unlock", password="guess-1234"),
                call("service", "auth.unlock", password=PASSWORD),
                call("service", "config.set", key="max_associations", value=20),
                call("technologist", "config.set", key="max_associations", value=21),
                call("service", "status"),
                ["reconnect"],
                call("service", "config.get"),
                call("technologist", "auth.unlock", password=PASSWORD),
                call("service", "auth.lock"),
                call("service", "config.set", key="max_associations", value=22),
            ],
        )
        (
            tech_set,
            claimed,
            status,
            wrong,
            unlocked,
            service_set,
            tech_again,
            full_status,
            other_connection,
            unlocked_again,
            locked,
            after_lock,
        ) = answers
        assert all(answer["uid"] == NOBODY for answer in answers)
        assert tech_set["code"] == "forbidden" and "service role" in tech_set["message"]
        assert claimed["code"] == "forbidden"
        assert "uid 65534" in claimed["message"] and "auth.unlock" in claimed["message"]
        assert status["ok"] and status["result"] == {
            "role": "technologist",
            "unlocked": False,
            "expires_in": None,
            "password_set": True,
            "idle_minutes": 10,
            "privileged": False,
            "service_allowed": False,
        }
        assert wrong["code"] == "forbidden" and "wrong service password" in wrong["message"]
        assert wrong["seconds"] >= 0.5
        # Claiming the service role for auth.unlock is not refused: it is served as a
        # technologist's.
        assert unlocked["ok"], unlocked
        assert (
            unlocked["result"]["unlocked"] is True and unlocked["result"]["role"] == "technologist"
        )
        assert 590 <= unlocked["result"]["expires_in"] <= 600
        assert service_set["ok"] and service_set["result"] == {
            "key": "max_associations",
            "value": 20,
        }
        # Unlocked is not a role: a request still has to claim the service role.
        assert tech_again["code"] == "forbidden"
        assert full_status["ok"] and full_status["result"]["role"] == "service"
        assert full_status["result"]["service_password_set"] is True
        assert full_status["result"]["auth"]["unlocked"] is True
        assert full_status["result"]["routing"] == {"pending": 0}
        # Unlocking is for one connection only.
        assert other_connection["code"] == "forbidden"
        assert unlocked_again["ok"]
        assert locked["ok"] and locked["result"]["unlocked"] is False
        assert after_lock["code"] == "forbidden"
        assert "locked again" not in after_lock["message"]

        settings = json.loads(daemon.cli("config", "show", "--json").stdout)
        assert settings["max_associations"] == 20
    finally:
        daemon.stop()
    log = daemon.log()
    assert "service unlock failed: wrong password (uid 65534" in log
    assert log.count("service mode unlocked for 10 minutes idle (uid 65534") == 2
    assert "service mode locked (uid 65534" in log
    assert PASSWORD not in log and "guess-1234" not in log


def test_unlock_without_a_password_set_says_how_to_set_one(daemon_factory) -> None:
    daemon = daemon_factory().start()
    with ControlClient(control_socket_path(daemon.data_dir), role="technologist") as client:
        state = client.call("auth.status")
        assert state["password_set"] is False and state["unlocked"] is False
        # Root runs the tests: the service role needs no unlocking.
        assert state["privileged"] is AS_ROOT and state["service_allowed"] is AS_ROOT
        with pytest.raises(ApiError) as refused:
            client.call("auth.unlock", password=PASSWORD)
        assert refused.value.code == "forbidden"
        assert "dicom-appliance service-password" in refused.value.message
        with pytest.raises(ApiError) as refused:
            client.call("auth.unlock")
        assert refused.value.code == "bad-request"
        status = client.call("status")
        assert status["service_password_set"] is False
        assert status["auth"]["role"] == "technologist"
        assert "auth.unlock" in client.call("hello")["ops"]
    assert "no service password is set" in daemon.log()


# --- idle expiry, on a control server with a two-second idle time --------------------------------

IDLE = 2 / 60


@pytest.fixture
def quick_server(shared_folder: Path) -> Iterator[ControlServer]:
    store = ConfigStore(shared_folder / "config")
    store.set_service_password(PASSWORD)
    control = ControlServer(
        shared_folder / "control.sock",
        EventBus(),
        group="nogroup" if AS_ROOT else None,
        passwords=store,
        service_idle_minutes=lambda: IDLE,
    )
    if not AS_ROOT:
        control.daemon_uid = os.geteuid() + 1  # this test's own uid is then not privileged
    control.register("service.reset", lambda args, caller: "reset", service_only=True)
    control.start()
    yield control
    control.stop()
    store.close()


def test_service_mode_locks_after_the_idle_time(
    quick_server: ControlServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.audit")
    answers = drive(
        quick_server.socket_path,
        [
            call("technologist", "auth.unlock", password=PASSWORD),
            ["sleep", 1.2],
            call("service", "service.reset"),
            ["sleep", 1.2],
            call("service", "service.reset"),  # 2.4 s after unlocking: refreshed at 1.2 s
            ["sleep", 1.2],
            call("technologist", "auth.status"),  # a technologist's request refreshes nothing
            ["sleep", 1.2],
            call("service", "service.reset"),  # 2.4 s after the last service request
            call("technologist", "auth.status"),
            call("service", "auth.unlock", password=PASSWORD),
            call("service", "service.reset"),
        ],
    )
    unlocked, first, second, status, expired, locked, unlocked_again, again = answers
    assert unlocked["ok"] and unlocked["result"]["idle_minutes"] == pytest.approx(IDLE)
    assert unlocked["result"]["expires_in"] == pytest.approx(2.0, abs=0.1)
    assert first["ok"] and first["result"] == "reset"
    assert second["ok"] and second["result"] == "reset"
    assert status["ok"] and status["result"]["unlocked"] is True
    assert 0 < status["result"]["expires_in"] <= 0.9
    assert expired["code"] == "forbidden"
    assert "locked again after" in expired["message"] and "auth.unlock" in expired["message"]
    assert locked["result"]["unlocked"] is False and locked["result"]["expires_in"] is None
    assert unlocked_again["ok"] and again["ok"] and again["result"] == "reset"
    messages = [record.getMessage() for record in caplog.records]
    uid = NOBODY if AS_ROOT else os.geteuid()
    assert messages[0].startswith("service mode unlocked for 0.0333333 minutes idle")
    assert f"(uid {uid}," in messages[0]
    assert any(m.startswith("service mode locked after") and f"uid {uid}" in m for m in messages)
