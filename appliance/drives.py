"""Optical drives: found and watched through udev, and file-backed drives for burning to a file.

udev's ``cdrom_id`` helper describes each drive and its medium as device properties:
``ID_CDROM=1`` for an optical drive, ``ID_CDROM_DVD_R=1`` (and similar) for what it can write,
``ID_CDROM_MEDIA=1`` when a medium is in, ``ID_CDROM_MEDIA_CD_R=1`` / ``ID_CDROM_MEDIA_DVD_R=1``
/ ... for the medium's kind, ``ID_CDROM_MEDIA_STATE`` (blank, appendable, complete, other),
``ID_CDROM_MEDIA_SESSION_COUNT`` and ``ID_CDROM_MEDIA_TRACK_COUNT_DATA`` for what is on it;
blkid adds ``ID_FS_LABEL`` for a data disc. A medium change or eject request arrives as a
``change`` event carrying ``DISK_MEDIA_CHANGE=1`` or ``DISK_EJECT_REQUEST=1``.

The first change event after a disc goes in often comes before the drive has spun it up, so it
says "no medium". The watcher therefore waits until a drive has been quiet for the debounce
time, and when the last event said "no medium" it reads the device's properties again before
believing it. Nothing slow runs in the udev thread: ``feed`` only records the event.

The udev side sits behind a small source (``PyudevSource`` here, ``RecordedSource`` for
recorded property sets), so the tests drive everything above it with real event sequences.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from appliance.config import ConfigStore
    from appliance.events import EventBus

LOG = logging.getLogger("appliance.drives")

DriveStateName = Literal[
    "empty", "blank-cd", "blank-dvd", "appendable", "closed-data", "busy", "unknown", "gone"
]
DRIVE_STATES: tuple[str, ...] = (
    "empty",
    "blank-cd",
    "blank-dvd",
    "appendable",
    "closed-data",
    "busy",
    "unknown",
    "gone",
)
DEFAULT_DEBOUNCE = 1.5
XORRISO = "/usr/bin/xorriso"

# Nominal capacity of a blank medium: udev does not report it, and these are what the discs
# are sold as (the file-set planner keeps its own reserve below them).
CD_CAPACITY = 700 * 1000**2
DVD_CAPACITY = 4_700_000_000
DVD_DL_CAPACITY = 8_500_000_000
BD_CAPACITY = 25_000_000_000

# ID_CDROM_MEDIA_<key>=1 -> the medium's name, most specific first: cdrom_id sets a general
# key next to a specific one for some media (DVD_RW_SEQ and DVD_RW).
_MEDIA_KINDS: tuple[tuple[str, str, int], ...] = (
    ("CD_R", "CD-R", CD_CAPACITY),
    ("CD_RW", "CD-RW", CD_CAPACITY),
    ("DVD_PLUS_R_DL", "DVD+R DL", DVD_DL_CAPACITY),
    ("DVD_PLUS_RW_DL", "DVD+RW DL", DVD_DL_CAPACITY),
    ("DVD_PLUS_R", "DVD+R", DVD_CAPACITY),
    ("DVD_PLUS_RW", "DVD+RW", DVD_CAPACITY),
    ("DVD_R_DL_SEQ", "DVD-R DL", DVD_DL_CAPACITY),
    ("DVD_R_DL_JR", "DVD-R DL", DVD_DL_CAPACITY),
    ("DVD_R_DL", "DVD-R DL", DVD_DL_CAPACITY),
    ("DVD_RW_SEQ", "DVD-RW", DVD_CAPACITY),
    ("DVD_RW_RO", "DVD-RW", DVD_CAPACITY),
    ("DVD_RW_DL", "DVD-RW DL", DVD_DL_CAPACITY),
    ("DVD_RW", "DVD-RW", DVD_CAPACITY),
    ("DVD_R_DDR", "DVD-R", DVD_CAPACITY),
    ("DVD_R", "DVD-R", DVD_CAPACITY),
    ("DVD_RAM", "DVD-RAM", DVD_CAPACITY),
    ("DVD", "DVD-ROM", DVD_CAPACITY),
    ("BD_R_SRM", "BD-R", BD_CAPACITY),
    ("BD_R_RRM", "BD-R", BD_CAPACITY),
    ("BD_R", "BD-R", BD_CAPACITY),
    ("BD_RE", "BD-RE", BD_CAPACITY),
    ("BD", "BD-ROM", BD_CAPACITY),
    ("CD", "CD-ROM", CD_CAPACITY),
)
# Drive features (ID_CDROM_<key>=1) that mean the drive writes some kind of DVD.
_DVD_WRITERS = (
    "DVD_R",
    "DVD_RW",
    "DVD_PLUS_R",
    "DVD_PLUS_RW",
    "DVD_R_DL",
    "DVD_PLUS_R_DL",
    "DVD_RAM",
)


@dataclass
class DriveInfo:
    """One drive and its medium, as the console and the burn job see it."""

    device: str  # "/dev/sr0" or "stdio:/path/disc.iso"
    model: str = ""
    state: DriveStateName = "unknown"
    media: str = ""  # "CD-R", "DVD+R", "DVD-RW", ... ("" when none)
    capacity_bytes: int | None = None  # free capacity of a blank medium
    label: str = ""  # volume label of a data disc
    can_write_dvd: bool = False
    updated: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def same_state(self, other: DriveInfo | None) -> bool:
        """Equal apart from when it was seen: a repeat of this is not worth an event."""
        if other is None:
            return False
        mine, theirs = self.as_dict(), other.as_dict()
        mine.pop("updated")
        theirs.pop("updated")
        return mine == theirs

    def line(self) -> str:
        """One line for `media drives`: device, state, medium, label, capacity, model."""
        what = {
            "empty": "no disc",
            "blank-cd": "blank CD",
            "blank-dvd": "blank DVD",
            "appendable": "appendable disc (not blank)",
            "closed-data": "data disc",
            "busy": "busy",
            "unknown": "unknown",
            "gone": "gone",
        }[self.state]
        parts = [f"{self.device:<24} {what}"]
        if self.media:
            parts.append(self.media)
        if self.label:
            parts.append(f"label {self.label!r}")
        if self.capacity_bytes is not None and self.state in ("blank-cd", "blank-dvd"):
            parts.append(f"{self.capacity_bytes / 1000**2:,.0f} MB free")
        if self.model:
            parts.append(self.model + (" (writes DVD)" if self.can_write_dvd else ""))
        return "  ".join(parts)


def _flag(properties: Mapping[str, str], key: str) -> bool:
    return properties.get(key, "") == "1"


def _count(properties: Mapping[str, str], key: str) -> int:
    try:
        return int(properties.get(key, "0") or 0)
    except ValueError:
        return 0


def is_optical(properties: Mapping[str, str]) -> bool:
    """An optical drive: cdrom_id tagged it, or the kernel named it sr<n> (no udev database)."""
    if _flag(properties, "ID_CDROM"):
        return True
    name = properties.get("DEVNAME", "")
    return name.startswith("/dev/sr") and properties.get("DEVTYPE", "disk") == "disk"


def _model(properties: Mapping[str, str]) -> str:
    vendor = properties.get("ID_VENDOR", "").replace("_", " ").strip()
    model = properties.get("ID_MODEL", "").replace("_", " ").strip()
    if vendor and model and not model.lower().startswith(vendor.lower()):
        return f"{vendor} {model}"
    return model or vendor


def drive_from_udev(properties: Mapping[str, str], *, now: float | None = None) -> DriveInfo | None:
    """The drive a udev property set describes; None when it is not an optical drive."""
    if not is_optical(properties):
        return None
    device = properties.get("DEVNAME", "")
    if not device:
        return None
    info = DriveInfo(
        device=device,
        model=_model(properties),
        can_write_dvd=any(_flag(properties, f"ID_CDROM_{key}") for key in _DVD_WRITERS),
        updated=time.time() if now is None else now,
    )
    if not _flag(properties, "ID_CDROM_MEDIA"):
        info.state = "empty"
        return info
    capacity = None
    for key, name, nominal in _MEDIA_KINDS:
        if _flag(properties, f"ID_CDROM_MEDIA_{key}"):
            info.media, capacity = name, nominal
            break
    media_state = properties.get("ID_CDROM_MEDIA_STATE", "")
    data_tracks = _count(properties, "ID_CDROM_MEDIA_TRACK_COUNT_DATA")
    has_filesystem = bool(properties.get("ID_FS_TYPE"))
    info.label = properties.get("ID_FS_LABEL", "") if (data_tracks or has_filesystem) else ""
    if media_state == "blank":
        info.state = "blank-cd" if info.media.startswith("CD") else "blank-dvd"
        info.capacity_bytes = capacity
    elif media_state == "appendable":
        info.state = "appendable"
    elif data_tracks or has_filesystem:
        # "complete" or a pressed disc that reports no state: readable data either way.
        info.state = "closed-data"
    else:
        # An audio CD, or a medium the drive could not describe yet.
        info.state = "unknown"
    return info


# --- sources: where udev events and properties come from --------------------------------------


EventCallback = Callable[[str, Mapping[str, str]], None]


class UdevSource(Protocol):
    """What the watcher needs from udev."""

    def enumerate(self) -> list[dict[str, str]]:
        """The property sets of the optical drives present now."""
        ...

    def read(self, device: str) -> dict[str, str] | None:
        """The current properties of one device; None when it is gone."""
        ...

    def start(self, callback: EventCallback) -> None:
        """Start delivering (action, properties) events to ``callback``."""
        ...

    def stop(self) -> None: ...


class UdevUnavailable(Exception):
    """udev cannot be used here (no libudev, no netlink socket, as in many containers)."""


class PyudevSource:
    """The real thing: pyudev's Context for properties, a Monitor for events."""

    def __init__(self, context: Any = None) -> None:
        try:
            import pyudev
        except ImportError as exc:  # pragma: no cover - pyudev is a dependency
            raise UdevUnavailable(f"pyudev is not installed: {exc}") from None
        self._pyudev = pyudev
        try:
            self.context = context if context is not None else pyudev.Context()
        except Exception as exc:  # libudev missing or unusable
            raise UdevUnavailable(f"cannot open udev: {exc}") from None
        self._observer: Any = None

    def enumerate(self) -> list[dict[str, str]]:
        found = []
        for device in self.context.list_devices(subsystem="block", DEVTYPE="disk"):
            properties = dict(device.properties)
            if is_optical(properties):
                found.append(properties)
        return found

    def read(self, device: str) -> dict[str, str] | None:
        name = device.rsplit("/", 1)[-1]
        try:
            found = self._pyudev.Devices.from_name(self.context, "block", name)
        except Exception:  # DeviceNotFoundByNameError: unplugged
            return None
        return dict(found.properties)

    def start(self, callback: EventCallback) -> None:
        pyudev = self._pyudev
        try:
            monitor = pyudev.Monitor.from_netlink(self.context)
            monitor.filter_by(subsystem="block", device_type="disk")
            monitor.start()
        except Exception as exc:  # no netlink socket allowed
            raise UdevUnavailable(f"cannot listen to udev events: {exc}") from None

        def deliver(device: Any) -> None:
            callback(device.action or "change", dict(device.properties))

        self._observer = pyudev.MonitorObserver(monitor, callback=deliver, name="udev-drives")
        self._observer.start()

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.send_stop()
            observer.join(5)


class RecordedSource:
    """Recorded property sets played back: a udev database and an event stream for the tests.

    ``set_db`` changes what a later re-read sees without an event (cdrom_id finishing its probe
    after the early event); ``play`` changes the database and delivers the event.
    """

    def __init__(self, initial: list[Mapping[str, str]] | None = None) -> None:
        self._db: dict[str, dict[str, str]] = {}
        self._callback: EventCallback | None = None
        self.reads: list[str] = []
        for properties in initial or []:
            self.set_db(properties)

    def set_db(self, properties: Mapping[str, str]) -> None:
        self._db[properties["DEVNAME"]] = dict(properties)

    def enumerate(self) -> list[dict[str, str]]:
        return [dict(p) for p in self._db.values() if is_optical(p)]

    def read(self, device: str) -> dict[str, str] | None:
        self.reads.append(device)
        found = self._db.get(device)
        return None if found is None else dict(found)

    def start(self, callback: EventCallback) -> None:
        self._callback = callback

    def stop(self) -> None:
        self._callback = None

    def play(self, action: str, properties: Mapping[str, str]) -> None:
        device = properties.get("DEVNAME", "")
        if action == "remove":
            self._db.pop(device, None)
        elif device:
            self._db[device] = dict(properties)
        if self._callback is not None:
            self._callback(action, properties)


# --- the watcher -----------------------------------------------------------------------------


@dataclass
class _Pending:
    action: str
    properties: dict[str, str]
    due: float
    events: int = 1


@dataclass
class _Known:
    info: DriveInfo
    busy: bool = False
    # What the drive shows when not busy, so clearing "busy" restores it.
    underlying: DriveInfo | None = field(default=None)


class DriveWatcher:
    """Keeps each optical drive's state from udev events and publishes changes as "drive".

    ``start`` reads the drives present, then listens. When udev is not usable it logs a
    warning, keeps no drives and ``unavailable`` says why; the rest of the daemon goes on.
    """

    def __init__(
        self,
        events: EventBus | None,
        *,
        context: Any = None,
        debounce: float = DEFAULT_DEBOUNCE,
        source: UdevSource | None = None,
    ) -> None:
        self.events = events
        self.debounce = max(0.0, float(debounce))
        self._context = context
        self._source: UdevSource | None = source
        self._lock = threading.Condition()
        self._drives: dict[str, _Known] = {}
        self._pending: dict[str, _Pending] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.unavailable: str | None = None
        self.published: int = 0

    # -- life cycle --

    def start(self) -> None:
        try:
            if self._source is None:
                self._source = PyudevSource(self._context)
            source = self._source
            now = time.time()
            for properties in source.enumerate():
                info = drive_from_udev(properties, now=now)
                if info is not None:
                    self._drives[info.device] = _Known(info)
            source.start(self.feed)
        except Exception as exc:  # UdevUnavailable, or libudev failing in some other way
            self.unavailable = str(exc)
            self._source = None
            self._drives.clear()
            LOG.warning("optical drives are not watched: %s", exc)
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="drive-watcher", daemon=True)
        self._thread.start()
        LOG.info("watching optical drives: %d found", len(self._drives))

    def stop(self) -> None:
        source = self._source
        if source is not None:
            try:
                source.stop()
            except Exception:  # stopping must not fail the daemon's shutdown
                LOG.exception("stopping the udev monitor")
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5)

    # -- reading --

    def drives(self) -> list[DriveInfo]:
        with self._lock:
            return [known.info for _, known in sorted(self._drives.items())]

    def drive(self, device: str) -> DriveInfo | None:
        with self._lock:
            known = self._drives.get(device)
            return None if known is None else known.info

    # -- events --

    def feed(self, action: str, properties: Mapping[str, str]) -> None:
        """One udev event. Runs in the udev thread: record it and return."""
        if action != "remove" and not is_optical(properties):
            return
        device = properties.get("DEVNAME", "")
        if not device:
            return
        with self._lock:
            if action == "remove" and device not in self._drives and device not in self._pending:
                return
            previous = self._pending.get(device)
            self._pending[device] = _Pending(
                action,
                dict(properties),
                time.monotonic() + self.debounce,
                events=1 if previous is None else previous.events + 1,
            )
            self._lock.notify_all()

    def settle(self) -> None:
        """Settle every pending event now (the daemon's stop and the tests use it)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for device, event in pending.items():
            self._settle(device, event)

    def set_busy(self, device: str, busy: bool) -> None:
        """A burn holds the drive: show it as busy until released."""
        with self._lock:
            known = self._drives.get(device)
            if known is None or known.busy == busy:
                return
            if busy:
                known.busy, known.underlying = True, known.info
                info = DriveInfo(
                    **{**known.info.as_dict(), "state": "busy", "updated": time.time()}
                )
            else:
                info = known.underlying or known.info
                known.busy, known.underlying = False, None
            known.info = info
        self._publish(info)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping:
                    now = time.monotonic()
                    due = [d for d, p in self._pending.items() if p.due <= now]
                    if due:
                        break
                    wait = min((p.due for p in self._pending.values()), default=now + 60) - now
                    self._lock.wait(max(0.01, wait))
                if self._stopping:
                    return
                ready = [(d, self._pending.pop(d)) for d in due]
            for device, event in ready:
                try:
                    self._settle(device, event)
                except Exception:  # one odd device must not stop the watching
                    LOG.exception("drive %s: could not read its state", device)

    def _settle(self, device: str, event: _Pending) -> None:
        """The drive has been quiet for the debounce time: decide its state and publish."""
        properties: Mapping[str, str] | None = event.properties
        if event.action == "remove":
            properties = None
        elif not _flag(event.properties, "ID_CDROM_MEDIA") and self._source is not None:
            # "No medium" straight after a change is not trusted: ask udev again.
            properties = self._source.read(device)
        now = time.time()
        if properties is None:
            with self._lock:
                known = self._drives.pop(device, None)
            if known is not None:
                gone = DriveInfo(**{**known.info.as_dict(), "state": "gone", "updated": now})
                gone.media, gone.label, gone.capacity_bytes = "", "", None
                LOG.info("drive %s: unplugged", device)
                self._publish(gone)
            return
        info = drive_from_udev(properties, now=now)
        if info is None:
            return
        with self._lock:
            known = self._drives.get(device)
            if known is not None and known.busy:
                # Events during a burn (the drive's own medium changes) show after it.
                known.underlying = info
                return
            if known is not None and info.same_state(known.info):
                known.info.updated = now
                return
            self._drives[device] = _Known(info)
        LOG.info("drive %s: %s %s", device, info.state, info.media)
        self._publish(info)

    def _publish(self, info: DriveInfo) -> None:
        self.published += 1
        if self.events is not None:
            self.events.publish("drive", info.as_dict())


# --- file-backed drives and listing ----------------------------------------------------------


def file_drive(target: str, capacity_bytes: int) -> DriveInfo:
    """A "drive" that burns to a file (``stdio:/path/disc.iso``).

    No file or an empty file is a blank disc of ``capacity_bytes``; anything else is a closed
    data disc whose label xorriso reads.
    """
    if not target.startswith("stdio:"):
        raise ValueError(f"not a file-backed drive: {target!r} (expected stdio:/path)")
    path = Path(target[len("stdio:") :])
    info = DriveInfo(device=target, model="file-backed drive", updated=time.time())
    info.can_write_dvd = True
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = 0
    except OSError:
        info.state = "unknown"
        return info
    if size == 0:
        info.state = "blank-dvd" if capacity_bytes > CD_CAPACITY else "blank-cd"
        info.media = "DVD-R" if capacity_bytes > CD_CAPACITY else "CD-R"
        info.capacity_bytes = capacity_bytes
        return info
    info.state = "closed-data"
    info.media = "ISO image"
    info.label = _iso_label(path)
    return info


def _iso_label(path: Path) -> str:
    """The volume ID of an ISO image, "" when it is none or cannot be read."""
    try:
        done = subprocess.run(
            [XORRISO, "-abort_on", "FAILURE", "-indev", f"stdio:{path}", "-pvd_info"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = done.stdout + done.stderr
    if "No ISO 9660 image" in text:
        return ""
    for line in done.stdout.splitlines():
        if line.startswith("Volume Id    :"):
            return line.split(":", 1)[1].strip()
    return ""


def enumerate_drives(context: Any = None) -> list[DriveInfo]:
    """The optical drives present now, read once through pyudev ([] when udev is unusable)."""
    try:
        source = PyudevSource(context)
        found = source.enumerate()
    except UdevUnavailable as exc:
        LOG.warning("cannot list optical drives: %s", exc)
        return []
    now = time.time()
    drives = [drive_from_udev(p, now=now) for p in found]
    return sorted((d for d in drives if d is not None), key=lambda d: d.device)


def list_drives(store: ConfigStore) -> list[DriveInfo]:
    """The drives as the running daemon sees them, else enumerated once here."""
    from appliance import jobs_cli
    from appliance.control_client import DaemonUnavailable

    try:
        with jobs_cli.client_for(store.data_dir) as client:
            answer = client.call("media.drives")
    except DaemonUnavailable:
        return enumerate_drives()
    fields = set(DriveInfo.__dataclass_fields__)
    return [DriveInfo(**{k: v for k, v in entry.items() if k in fields}) for entry in answer]
