"""Optical drives: recorded udev property sets through the watcher, pyudev for real, file drives."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from appliance import optical
from appliance.control import Caller
from appliance.drives import (
    CD_CAPACITY,
    DRIVE_STATES,
    DVD_CAPACITY,
    DriveInfo,
    DriveWatcher,
    PyudevSource,
    RecordedSource,
    UdevUnavailable,
    drive_from_udev,
    enumerate_drives,
    file_drive,
)
from appliance.events import EventBus
from appliance.media_api import MediaOperations

FIXTURES = Path(__file__).parent / "udev_fixtures"
DEBOUNCE = 0.15


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def drain(subscription: Any, quiet: float = DEBOUNCE * 4) -> list[dict[str, Any]]:
    """The "drive" events published until none came for ``quiet`` seconds."""
    events = []
    while (event := subscription.get(timeout=quiet)) is not None:
        events.append(event.data)
    return events


def run_fixture(name: str) -> tuple[DriveWatcher, RecordedSource, list[dict[str, Any]]]:
    """Play a recorded sequence, quicker than the debounce, into a started watcher."""
    doc = load(name)
    bus = EventBus()
    subscription = bus.subscribe({"drive"})
    source = RecordedSource(doc["initial"])
    watcher = DriveWatcher(bus, debounce=DEBOUNCE, source=source)
    watcher.start()
    try:
        for step in doc["steps"]:
            if "db" in step:
                source.set_db(step["db"])
            else:
                source.play(step["action"], step["properties"])
        events = drain(subscription)
    finally:
        watcher.stop()
    return watcher, source, events


FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def test_fixtures_are_recorded_sets() -> None:
    assert {
        "insert_blank_cdr",
        "insert_blank_dvdr",
        "insert_closed_data",
        "eject",
        "unplug",
        "early_event_reread",
    } <= set(FIXTURE_NAMES)
    for name in FIXTURE_NAMES:
        doc = load(name)
        for props in doc["initial"]:
            assert props["ID_CDROM"] == "1" and props["DEVNAME"] == "/dev/sr0"
        for step in doc["steps"]:
            assert "db" in step or step["action"] in ("add", "change", "remove")


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_recorded_sequence_gives_one_state_change(name: str) -> None:
    expected = load(name)["expected"]
    watcher, _source, events = run_fixture(name)
    # Debounced: one event for the whole sequence, carrying the settled state.
    assert len(events) == expected["events"], events
    event = events[-1]
    assert event["device"] == "/dev/sr0"
    for key in ("state", "media", "capacity_bytes", "label"):
        assert event[key] == expected[key], (key, event)
    assert event["state"] in DRIVE_STATES
    assert event["model"] == "HL-DT-ST DVDRAM GH24NSD1"
    assert event["can_write_dvd"] is True
    if expected["state"] == "gone":
        assert watcher.drives() == []
    else:
        assert [d.as_dict() for d in watcher.drives()] == [event]


def test_early_event_without_medium_is_read_again() -> None:
    _watcher, source, events = run_fixture("early_event_reread")
    # The early "no medium" was not believed: the device was read again after the debounce.
    assert source.reads == ["/dev/sr0"]
    assert [e["state"] for e in events] == ["blank-dvd"]


def test_full_event_is_not_read_again() -> None:
    _watcher, source, _events = run_fixture("insert_blank_cdr")
    assert source.reads == []


def test_eject_then_insert_are_two_changes() -> None:
    doc_eject, doc_insert = load("eject"), load("insert_blank_cdr")
    bus = EventBus()
    subscription = bus.subscribe({"drive"})
    source = RecordedSource(doc_eject["initial"])
    watcher = DriveWatcher(bus, debounce=DEBOUNCE, source=source)
    watcher.start()
    try:
        assert [d.state for d in watcher.drives()] == ["closed-data"]
        for step in doc_eject["steps"]:
            source.play(step["action"], step["properties"])
        first = drain(subscription)
        for step in doc_insert["steps"]:
            source.play(step["action"], step["properties"])
        second = drain(subscription)
        # A repeat of the same state is no event.
        source.play("change", doc_insert["steps"][-1]["properties"])
        third = drain(subscription)
    finally:
        watcher.stop()
    assert [e["state"] for e in first] == ["empty"]
    assert [e["state"] for e in second] == ["blank-cd"]
    assert third == []


def test_events_of_other_block_devices_are_ignored() -> None:
    bus = EventBus()
    subscription = bus.subscribe({"drive"})
    watcher = DriveWatcher(bus, debounce=DEBOUNCE, source=RecordedSource())
    watcher.start()
    try:
        watcher.feed("change", {"DEVNAME": "/dev/sda", "DEVTYPE": "disk", "SUBSYSTEM": "block"})
        watcher.feed("remove", {"DEVNAME": "/dev/sdb", "DEVTYPE": "disk"})
        assert drain(subscription) == []
        assert watcher.drives() == []
    finally:
        watcher.stop()


def test_new_drive_plugged_in() -> None:
    props = dict(load("insert_blank_dvdr")["steps"][-1]["properties"])
    props["DEVNAME"] = "/dev/sr1"
    bus = EventBus()
    subscription = bus.subscribe({"drive"})
    watcher = DriveWatcher(bus, debounce=DEBOUNCE, source=RecordedSource(load("eject")["initial"]))
    watcher.start()
    try:
        watcher.feed("add", props)
        events = drain(subscription)
        assert [(e["device"], e["state"]) for e in events] == [("/dev/sr1", "blank-dvd")]
        assert [d.device for d in watcher.drives()] == ["/dev/sr0", "/dev/sr1"]
    finally:
        watcher.stop()


def test_feed_returns_at_once() -> None:
    """The udev thread only records: settling happens on the watcher's own thread."""
    doc = load("eject")
    source = RecordedSource(doc["initial"])
    watcher = DriveWatcher(None, debounce=5.0, source=source)
    watcher.start()
    try:
        started = time.monotonic()
        for _ in range(200):
            source.play("change", doc["steps"][-1]["properties"])
        assert time.monotonic() - started < 1.0
        assert watcher.drives()[0].state == "closed-data"  # not settled yet
        watcher.settle()
        assert watcher.drives()[0].state == "empty"
        assert watcher.published == 1
    finally:
        watcher.stop()


def test_busy_while_burning_then_back() -> None:
    bus = EventBus()
    subscription = bus.subscribe({"drive"})
    source = RecordedSource(load("insert_blank_cdr")["initial"])
    watcher = DriveWatcher(bus, debounce=DEBOUNCE, source=source)
    watcher.start()
    try:
        watcher.set_busy("/dev/sr0", True)
        # The medium changes during the burn (now written); shown when the burn lets go.
        source.play("change", load("insert_closed_data")["steps"][-1]["properties"])
        during = drain(subscription)
        watcher.set_busy("/dev/sr0", False)
        after = drain(subscription)
    finally:
        watcher.stop()
    assert [e["state"] for e in during] == ["busy"]
    assert [e["state"] for e in after] == ["closed-data"]


def test_drive_from_udev_states() -> None:
    base = load("insert_blank_cdr")["initial"][0]
    assert drive_from_udev({"DEVNAME": "/dev/sda", "DEVTYPE": "disk"}) is None
    assert drive_from_udev(base).state == "empty"  # type: ignore[union-attr]
    # No udev database (a bare kernel event): sr<n> is still an optical drive.
    bare = drive_from_udev({"DEVNAME": "/dev/sr3", "DEVTYPE": "disk", "SUBSYSTEM": "block"})
    assert bare is not None and bare.state == "empty" and not bare.can_write_dvd
    audio = {
        **base,
        "ID_CDROM_MEDIA": "1",
        "ID_CDROM_MEDIA_CD": "1",
        "ID_CDROM_MEDIA_STATE": "complete",
        "ID_CDROM_MEDIA_TRACK_COUNT_AUDIO": "12",
    }
    assert drive_from_udev(audio).state == "unknown"  # type: ignore[union-attr]
    pressed = {**audio, "ID_CDROM_MEDIA_TRACK_COUNT_DATA": "1"}
    pressed.pop("ID_CDROM_MEDIA_STATE")
    info = drive_from_udev(pressed)
    assert info is not None and (info.state, info.media) == ("closed-data", "CD-ROM")
    rw = {**base, "ID_CDROM_MEDIA": "1", "ID_CDROM_MEDIA_STATE": "blank"}
    rw |= {"ID_CDROM_MEDIA_DVD_RW_SEQ": "1", "ID_CDROM_MEDIA_DVD_RW": "1"}
    info = drive_from_udev(rw)
    assert info is not None and (info.state, info.media) == ("blank-dvd", "DVD-RW")
    assert info.capacity_bytes == DVD_CAPACITY


def test_line_says_what_is_in_the_drive() -> None:
    info = drive_from_udev(load("insert_closed_data")["steps"][-1]["properties"])
    assert info is not None
    line = info.line()
    assert "/dev/sr0" in line and "data disc" in line and "'PATIENT_CD'" in line
    blank = drive_from_udev(load("insert_blank_cdr")["steps"][-1]["properties"])
    assert blank is not None and "blank CD" in blank.line() and "700 MB free" in blank.line()
    assert DriveInfo("/dev/sr9", state="gone").line().split() == ["/dev/sr9", "gone"]


# --- pyudev for real -------------------------------------------------------------------------


def test_pyudev_enumerates_block_devices_here() -> None:
    try:
        source = PyudevSource()
    except UdevUnavailable as exc:
        pytest.skip(f"no libudev here: {exc}")
    found = source.enumerate()
    # Whatever is here, only optical drives come back, each one a drive.
    for props in found:
        assert drive_from_udev(props) is not None
    assert [d.device for d in enumerate_drives()] == sorted(p["DEVNAME"] for p in found)
    assert source.read("/dev/sr-none") is None


def test_pyudev_watcher_starts_or_degrades_cleanly() -> None:
    """The real Monitor: it starts where netlink is allowed, else the watcher lists nothing."""
    bus = EventBus()
    watcher = DriveWatcher(bus, debounce=DEBOUNCE)
    watcher.start()
    try:
        if watcher.unavailable is None:
            assert isinstance(watcher.drives(), list)
        else:
            assert watcher.drives() == []
    finally:
        watcher.stop()
    watcher.stop()  # twice is harmless


class BrokenSource(RecordedSource):
    def start(self, callback: Any) -> None:
        raise UdevUnavailable("cannot listen to udev events: netlink not permitted")


def test_watcher_degrades_when_udev_refuses(caplog: pytest.LogCaptureFixture) -> None:
    watcher = DriveWatcher(EventBus(), source=BrokenSource(load("eject")["initial"]))
    watcher.start()
    assert watcher.unavailable and "netlink" in watcher.unavailable
    assert watcher.drives() == []
    assert "optical drives are not watched" in caplog.text
    watcher.stop()


def test_media_drives_op() -> None:
    watcher = DriveWatcher(None, source=RecordedSource(load("eject")["initial"]))
    watcher.start()
    try:
        ops = MediaOperations(
            data_dir=Path("."), config=None, archive=None, engine=None, watcher=watcher
        )  # type: ignore[arg-type]
        caller = Caller(role="technologist", uid=0, gid=0, pid=0)
        answer = ops.media_drives({}, caller)
        assert [(d["device"], d["state"], d["label"]) for d in answer] == [
            ("/dev/sr0", "closed-data", "PATIENT_CD")
        ]
        none = MediaOperations(data_dir=Path("."), config=None, archive=None, engine=None)  # type: ignore[arg-type]
        assert none.media_drives({}, caller) == []
    finally:
        watcher.stop()


# --- file-backed drives ----------------------------------------------------------------------


def test_file_drive_blank_and_written(tmp_path: Path) -> None:
    target = f"stdio:{tmp_path / 'disc.iso'}"
    blank = file_drive(target, CD_CAPACITY)
    assert (blank.state, blank.media, blank.capacity_bytes) == ("blank-cd", "CD-R", CD_CAPACITY)
    assert file_drive(target, DVD_CAPACITY).state == "blank-dvd"
    (tmp_path / "disc.iso").touch()
    assert file_drive(target, CD_CAPACITY).state == "blank-cd"
    (tmp_path / "disc.iso").unlink()
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "README.TXT").write_text("hello\n")
    optical.write_image(folder, target, volume_id="PATIENT_CD")
    written = file_drive(target, CD_CAPACITY)
    assert (written.state, written.label) == ("closed-data", "PATIENT_CD")
    (tmp_path / "junk.bin").write_bytes(b"\x01" * 4096)
    junk = file_drive(f"stdio:{tmp_path / 'junk.bin'}", CD_CAPACITY)
    assert (junk.state, junk.label) == ("closed-data", "")
    with pytest.raises(ValueError):
        file_drive("/dev/sr0", CD_CAPACITY)


# --- the command and the daemon --------------------------------------------------------------


def test_media_drives_command_with_and_without_daemon(daemon_factory: Any) -> None:
    daemon = daemon_factory()
    alone = daemon.cli("media", "drives", "--json")
    assert alone.returncode == 0, alone.stderr
    assert isinstance(json.loads(alone.stdout), list)
    daemon.start()
    answer = daemon.cli("media", "drives", "--json")
    assert answer.returncode == 0, answer.stderr
    drives = json.loads(answer.stdout)
    assert drives == [d for d in drives if d["device"].startswith("/dev/sr")]
    text = daemon.cli("media", "drives")
    assert text.returncode == 0
    assert text.stdout.strip() == "no optical drives" or "/dev/sr" in text.stdout
    log = daemon.log()
    assert "watching optical drives" in log or "optical drives are not watched" in log
