"""Configuration store: local settings and remote nodes, validated on load and on change.

One tinydb file (``config.json``) in the data folder. Writes go through one lock (a thread lock
plus an advisory file lock, so a CLI and the daemon never interleave) and replace the file
atomically (temporary name, fsync, rename, directory fsync).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinydb import Query, TinyDB
from tinydb.storages import Storage

from appliance import audit
from appliance.dicom_classes import SUPPORTED_TRANSFER_SYNTAXES
from appliance.errors import ConfigError
from appliance.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from appliance.jobs import RetryPolicy

CONFIG_FILE = "config.json"
NODE_SERVICES = ("echo", "store", "find", "move", "get", "commitment")
DUPLICATE_POLICIES = ("overwrite", "keep-first")
RETRIEVE_METHODS = ("move", "get")
TLS_PROFILES = ("bcp195", "legacy")
TLS_PEER_AUTH = ("require", "verify", "ignore")


class AtomicJSONStorage(Storage):
    """tinydb storage that never leaves a half-written file behind."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError("config file", f"{self.path} is not valid JSON ({exc})") from exc

    def write(self, data: dict[str, Any]) -> None:
        payload = json.dumps(data, indent=2, sort_keys=True).encode("utf-8")
        atomic_write_bytes(self.path, payload)


# --- validators ------------------------------------------------------------------------------

_AE_FORBIDDEN = re.compile(r"[\\\x00-\x1f]")
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HOST = re.compile(r"^[A-Za-z0-9_.:-]{1,253}$")


def validate_ae_title(field_name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(field_name, "must be text of 1 to 16 characters")
    stripped = value.strip()
    if not stripped or len(value) > 16 or _AE_FORBIDDEN.search(value):
        raise ConfigError(
            field_name,
            f"{value!r} is not a valid AE title (1 to 16 characters, no backslash or control "
            "characters, not all spaces)",
        )
    return stripped


def _int_range(lo: int, hi: int, *, also: tuple[int, ...] = ()) -> Callable[[str, object], int]:
    def check(field_name: str, value: object) -> int:
        if isinstance(value, bool):
            raise ConfigError(field_name, f"must be an integer in {lo}..{hi}")
        try:
            number = int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise ConfigError(field_name, f"{value!r} is not an integer ({lo}..{hi})") from None
        if isinstance(value, float) and value != number:
            raise ConfigError(field_name, f"{value!r} is not an integer ({lo}..{hi})")
        if number in also or lo <= number <= hi:
            return number
        extra = "".join(f" or {v}" for v in also)
        raise ConfigError(field_name, f"{number} is out of range: allowed {lo}..{hi}{extra}")

    return check


def _bool(field_name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
        return False
    raise ConfigError(field_name, f"{value!r} is not a boolean (true or false)")


def _float_range(lo: float, hi: float) -> Callable[[str, object], float]:
    def check(field_name: str, value: object) -> float:
        if isinstance(value, bool):
            raise ConfigError(field_name, f"must be a number in {lo}..{hi}")
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(field_name, f"{value!r} is not a number ({lo}..{hi})") from None
        if not lo <= number <= hi:
            raise ConfigError(field_name, f"{number:g} is out of range: allowed {lo}..{hi}")
        return number

    return check


def _group_name(field_name: str, value: object) -> str:
    if not isinstance(value, str) or (value and not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", value)):
        raise ConfigError(field_name, f"{value!r} is not a group name")
    return value


def _folder_or_empty(field_name: str, value: object) -> str:
    """An absolute folder path, or empty for none (checked to exist when used, not here: a
    mounted share may come later)."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
        raise ConfigError(field_name, f"{value!r} is not an absolute folder path (or empty)")
    return value


def _label_text(field_name: str, value: object) -> str:
    """Text printed on a disc label and its index page: one line, at most 64 characters."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 64 or re.search(r"[\x00-\x1f\x7f]", value):
        raise ConfigError(
            field_name, f"{value!r} is not label text (one line of at most 64 characters)"
        )
    return value.strip()


def _choice(choices: tuple[str, ...]) -> Callable[[str, object], str]:
    def check(field_name: str, value: object) -> str:
        if value not in choices:
            raise ConfigError(field_name, f"{value!r} is not allowed: one of {', '.join(choices)}")
        return str(value)

    return check


def _as_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(part) for part in value]
    return [str(value)]


def _transfer_syntaxes(field_name: str, value: object) -> list[str]:
    items = _as_list(value)
    if not items:
        raise ConfigError(field_name, "needs at least one transfer syntax UID")
    for uid in items:
        if uid not in SUPPORTED_TRANSFER_SYNTAXES:
            raise ConfigError(
                field_name,
                f"{uid} is not supported: allowed {', '.join(SUPPORTED_TRANSFER_SYNTAXES)}",
            )
    if len(set(items)) != len(items):
        raise ConfigError(field_name, "lists a transfer syntax twice")
    return items


def _services(field_name: str, value: object) -> list[str]:
    items = _as_list(value)
    for item in items:
        if item not in NODE_SERVICES:
            raise ConfigError(
                field_name, f"{item!r} is not a service: one of {', '.join(NODE_SERVICES)}"
            )
    return sorted(set(items), key=NODE_SERVICES.index)


def _node_name(field_name: str, value: object) -> str:
    if not isinstance(value, str) or not _NODE_NAME.match(value):
        raise ConfigError(
            field_name, f"{value!r} is not a valid name (1 to 64 of A-Z a-z 0-9 _ . -)"
        )
    return value


def _name_or_empty(field_name: str, value: object) -> str:
    return "" if value is None or value == "" else _node_name(field_name, value)


def _host(field_name: str, value: object) -> str:
    if not isinstance(value, str) or not _HOST.match(value):
        raise ConfigError(field_name, f"{value!r} is not a host name or IP address")
    return value


def _host_or_empty(field_name: str, value: object) -> str:
    if value == "":
        return ""
    return _host(field_name, value)


# --- schema ----------------------------------------------------------------------------------


def _setting(default: object, check: Callable[[str, object], object], doc: str) -> Any:
    return field(default_factory=lambda: default, metadata={"check": check, "doc": doc})


@dataclass
class Settings:
    ae_title: str = _setting("APPLIANCE", validate_ae_title, "local AE title")
    port: int = _setting(11112, _int_range(1, 65535), "DICOM listening port")
    bind_address: str = _setting("0.0.0.0", _host, "address the DICOM listener binds to")
    max_pdu: int = _setting(
        16384, _int_range(4096, 131072, also=(0,)), "maximum PDU we receive, 0 = unlimited"
    )
    max_associations: int = _setting(10, _int_range(1, 256), "maximum simultaneous associations")
    association_timeout: int = _setting(
        30, _int_range(1, 3600), "seconds to wait for an A-ASSOCIATE request or answer"
    )
    dimse_timeout: int = _setting(60, _int_range(1, 3600), "seconds to wait for a DIMSE message")
    network_timeout: int = _setting(
        60, _int_range(1, 3600), "seconds of network inactivity before an association is dropped"
    )
    transfer_syntaxes: list[str] = field(
        default_factory=lambda: list(SUPPORTED_TRANSFER_SYNTAXES),
        metadata={
            "check": _transfer_syntaxes,
            "doc": "accepted transfer syntaxes, in order of preference (comma-separated UIDs)",
        },
    )
    accept_unknown_calling_ae: bool = _setting(
        True, _bool, "accept associations from calling AE titles that are not configured nodes"
    )
    check_called_ae: bool = _setting(
        False, _bool, "reject associations whose called AE title is not ours"
    )
    accept_any_storage_class: bool = _setting(
        False, _bool, "accept every storage SOP class, including private ones"
    )
    disk_reserve_mb: int = _setting(
        1024, _int_range(0, 10_000_000), "free space (MB) kept on the archive's disk"
    )
    duplicate_policy: str = _setting(
        "overwrite",
        _choice(DUPLICATE_POLICIES),
        "a re-sent SOP Instance UID: overwrite or keep-first",
    )
    shutdown_timeout: int = _setting(
        30, _int_range(0, 3600), "seconds SIGTERM waits for in-flight associations"
    )
    query_case_insensitive_names: bool = _setting(
        True, _bool, "C-FIND matches Person Names regardless of upper and lower case"
    )
    max_query_matches: int = _setting(
        0,
        _int_range(0, 1_000_000),
        "most matches one C-FIND returns (then A700 'too many matches'), 0 = unlimited",
    )
    commitment_timeout: int = _setting(
        60,
        _int_range(1, 86400),
        "seconds to wait for a storage commitment report before showing instances uncommitted",
    )

    job_workers: int = _setting(
        4, _int_range(1, 64), "jobs run at the same time (send, retrieve, print, burn, ...)"
    )
    node_concurrency: int = _setting(
        1, _int_range(1, 16), "jobs running against one node (one association each) at a time"
    )
    retry_max_attempts: int = _setting(
        10, _int_range(1, 1000), "default attempts of a job before it fails"
    )
    retry_first_delay: float = _setting(
        30.0, _float_range(0, 86400), "default seconds before a failed job's first retry"
    )
    retry_multiplier: float = _setting(
        2.0, _float_range(1, 10), "default factor by which each retry delay grows"
    )
    retry_max_delay: float = _setting(
        600.0, _float_range(0, 86400), "default longest delay between retries, seconds"
    )
    job_retention_days: float = _setting(
        30.0, _float_range(0, 3650), "days a finished job is kept in the history"
    )
    job_retention_count: int = _setting(
        10000, _int_range(0, 10_000_000), "most finished jobs kept in the history"
    )
    routing_quiet_seconds: float = _setting(
        30.0,
        _float_range(0, 86400),
        "auto-routing forwards a study once no instance of it arrived for this many seconds",
    )
    control_group: str = _setting(
        "", _group_name, "group allowed to use the control socket (empty: the daemon's group)"
    )
    service_idle_minutes: int = _setting(
        10,
        _int_range(1, 1440),
        "minutes without a service request after which field-service mode locks again",
    )
    print_port: int = _setting(
        0,
        _int_range(1, 65535, also=(0,)),
        "port of a listener serving only print (the virtual printers), 0 = none",
    )
    print_ae_title: str = _setting(
        "APPLIANCE_PRINT", validate_ae_title, "AE title of the default virtual printer"
    )
    print_default_printer: str = _setting(
        "",
        _name_or_empty,
        "printer that films sent to the default virtual printer go to (empty: hold them)",
    )
    print_presentation_lut: bool = _setting(
        False, _bool, "virtual printers accept the Presentation LUT SOP Class"
    )
    media_viewer_folder: str = _setting(
        "",
        _folder_or_empty,
        "folder copied onto every burned disc as its viewer (empty: no viewer)",
    )
    media_dvd_jpeg: bool = _setting(
        False, _bool, "burn DVDs as STD-GEN-DVD-JPEG (JPEG images kept), else STD-GEN-CD"
    )
    media_institution: str = _setting(
        "", _label_text, "institution named on burned discs' label and index page"
    )
    media_debounce_seconds: float = _setting(
        1.5,
        _float_range(0, 10),
        "seconds an optical drive must be quiet before its new state is believed",
    )
    tls_port: int = _setting(
        2762,
        _int_range(1, 65535, also=(0,)),
        "port of the TLS listener (same services as the plain one), 0 = no TLS listener",
    )
    tls_profile: str = _setting(
        "bcp195",
        _choice(TLS_PROFILES),
        "TLS profile: bcp195 (TLS 1.2/1.3, AEAD suites) or legacy (adds RSA and CBC suites)",
    )
    tls_peer_auth: str = _setting(
        "require",
        _choice(TLS_PEER_AUTH),
        "TLS peer certificates: require (and verify), verify (if sent), ignore",
    )
    tls_expiry_warning_days: int = _setting(
        30, _int_range(0, 3650), "warn when our TLS certificate expires within this many days"
    )
    audit_syslog_host: str = _setting(
        "", _host_or_empty, "syslog collector that audit messages go to (empty: local log only)"
    )
    audit_syslog_port: int = _setting(
        6514, _int_range(1, 65535), "port of the audit syslog collector (6514: syslog over TLS)"
    )
    audit_syslog_tls: bool = _setting(
        True, _bool, "send audit messages to the collector over TLS (RFC 5425)"
    )
    signature_verify_on_receipt: bool = _setting(
        False,
        _bool,
        "verify digital signatures of received objects after storage and flag them"
        " (never rejects; takes effect at the next start)",
    )

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def describe(cls, key: str) -> str:
        for f in fields(cls):
            if f.name == key:
                return str(f.metadata["doc"])
        raise KeyError(key)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> Settings:
        unknown = set(data) - set(cls.keys())
        if unknown:
            raise ConfigError(
                sorted(unknown)[0], f"unknown setting; known settings: {', '.join(cls.keys())}"
            )
        values = {}
        for f in fields(cls):
            if f.name in data:
                values[f.name] = f.metadata["check"](f.name, data[f.name])
        return cls(**values)

    @classmethod
    def validate_value(cls, key: str, value: object) -> object:
        for f in fields(cls):
            if f.name == key:
                return f.metadata["check"](key, value)
        raise ConfigError(key, f"unknown setting; known settings: {', '.join(cls.keys())}")


@dataclass
class Node:
    """A remote DICOM application entity we talk to, or that talks to us."""

    name: str
    ae_title: str
    host: str
    port: int
    services: list[str] = field(default_factory=lambda: list(NODE_SERVICES))
    move_destination: bool = True
    # How `dicom-appliance retrieve` fetches from this node: C-MOVE to our own AE title (the
    # node must know us as a move destination) or C-GET (it answers on our own association).
    retrieve_method: str = "move"
    # TLS for our associations to this node; peer auth and profile default to the settings'.
    tls: bool = False
    tls_peer_auth: str | None = None
    tls_profile: str | None = None

    def __post_init__(self) -> None:
        # "node.<field>" so a node's bad port never reads like the listening port setting.
        self.name = _node_name("node.name", self.name)
        self.ae_title = validate_ae_title("node.ae_title", self.ae_title)
        self.host = _host("node.host", self.host)
        self.port = _int_range(1, 65535)("node.port", self.port)
        self.services = _services("node.services", self.services)
        self.move_destination = _bool("node.move_destination", self.move_destination)
        self.retrieve_method = _choice(RETRIEVE_METHODS)(
            "node.retrieve_method", self.retrieve_method
        )
        self.tls = _bool("node.tls", self.tls)
        if self.tls_peer_auth is not None:
            self.tls_peer_auth = _choice(TLS_PEER_AUTH)("node.tls_peer_auth", self.tls_peer_auth)
        if self.tls_profile is not None:
            self.tls_profile = _choice(TLS_PROFILES)("node.tls_profile", self.tls_profile)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> Node:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"node.{sorted(unknown)[0]}", "unknown node field")
        missing = {"name", "ae_title", "host", "port"} - set(data)
        if missing:
            raise ConfigError(f"node.{sorted(missing)[0]}", "is required")
        return cls(**data)

    def allows(self, service: str) -> bool:
        return service in self.services


_MODALITY = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


@dataclass
class RoutingRule:
    """An auto-routing rule: received instances that match it are forwarded to its destinations.

    Each match list is empty for "any"; an instance matches when it matches every list that is
    not empty: the calling AE title exactly (after stripping spaces), the modality regardless of
    case, the SOP Class UID exactly. Destinations are names of configured nodes (checked by
    ``ConfigStore``, which knows the nodes).
    """

    name: str
    calling_aes: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    sop_classes: list[str] = field(default_factory=list)
    destinations: list[str] = field(default_factory=list)
    enabled: bool = True

    def __post_init__(self) -> None:
        self.name = _node_name("route.name", self.name)
        self.calling_aes = _unique(
            [validate_ae_title("route.calling_aes", v) for v in _as_list(self.calling_aes)]
        )
        modalities = []
        for value in _as_list(self.modalities):
            modality = value.strip().upper()
            if not _MODALITY.match(modality):
                raise ConfigError(
                    "route.modalities",
                    f"{value!r} is not a modality (1 to 16 of A-Z 0-9 _ and space, e.g. CT)",
                )
            modalities.append(modality)
        self.modalities = _unique(modalities)
        sop_classes = []
        for value in _as_list(self.sop_classes):
            uid = value.strip()
            if not _UID.match(uid) or len(uid) > 64:
                raise ConfigError("route.sop_classes", f"{value!r} is not a SOP Class UID")
            sop_classes.append(uid)
        self.sop_classes = _unique(sop_classes)
        self.destinations = _unique(
            [_node_name("route.destinations", v.strip()) for v in _as_list(self.destinations)]
        )
        if not self.destinations:
            raise ConfigError("route.destinations", "needs at least one node to forward to")
        self.enabled = _bool("route.enabled", self.enabled)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> RoutingRule:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"route.{sorted(unknown)[0]}", "unknown routing rule field")
        if "name" not in data:
            raise ConfigError("route.name", "is required")
        return cls(**data)

    def matches(self, *, calling_ae: str, modality: str, sop_class_uid: str) -> bool:
        """Whether an instance with these attributes meets the rule (enabled or not)."""
        if self.calling_aes and calling_ae.strip() not in self.calling_aes:
            return False
        if self.modalities and modality.strip().upper() not in self.modalities:
            return False
        return not self.sop_classes or sop_class_uid.strip() in self.sop_classes


# --- printers (film imagers the print spooler sends to) ---------------------------------------

MAGNIFICATION_TYPES = ("REPLICATE", "BILINEAR", "CUBIC", "NONE")
PRINTER_BITS = (8, 12)
_CODE_STRING = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_STANDARD_FORMAT = re.compile(r"^STANDARD\\([0-9]{1,2}),([0-9]{1,2})$")
_ROW_COL_FORMAT = re.compile(r"^(ROW|COL)\\([0-9]{1,2}(?:,[0-9]{1,2})*)$")
# Optical density in hundredths (DICOM PS3.3 C.13.3): 320 is 3.2 OD.
_DENSITY = _int_range(0, 1000)


def _code_strings(field_name: str, value: object) -> list[str]:
    """Defined terms (CS): upper case, digits, space, underscore; up to 16 characters each."""
    items = [item.strip().upper() for item in _as_list(value) if item.strip()]
    for item in items:
        if not _CODE_STRING.match(item):
            raise ConfigError(
                field_name,
                f"{item!r} is not a code string (1 to 16 of A-Z 0-9 _ and space)",
            )
    if len(set(items)) != len(items):
        raise ConfigError(field_name, "lists a value twice")
    return items


def _magnification_types(field_name: str, value: object) -> list[str]:
    items = _code_strings(field_name, value)
    for item in items:
        if item not in MAGNIFICATION_TYPES:
            raise ConfigError(
                field_name, f"{item!r} is not allowed: one of {', '.join(MAGNIFICATION_TYPES)}"
            )
    return items


def validate_display_format(field_name: str, value: object) -> str:
    """``STANDARD\\c,r`` (columns, rows), ``ROW\\n,n,...`` or ``COL\\n,n,...``; 1 to 99 each."""
    text = value.strip().upper().replace(" ", "") if isinstance(value, str) else None
    allowed = "STANDARD\\c,r, ROW\\n,n,... or COL\\n,n,... with numbers 1..99"
    match = _STANDARD_FORMAT.match(text or "") or _ROW_COL_FORMAT.match(text or "")
    if text is None or match is None:
        raise ConfigError(field_name, f"{value!r} is not an image display format: {allowed}")
    if text.startswith("STANDARD"):
        numbers = [match.group(1), match.group(2)]
    else:
        numbers = match.group(2).split(",")
    if any(int(number) < 1 for number in numbers):
        raise ConfigError(field_name, f"{value!r} is not an image display format: {allowed}")
    return text


def _display_formats(field_name: str, value: object) -> list[str]:
    # Formats hold commas, so a text value lists them separated by spaces or semicolons.
    if isinstance(value, str):
        parts = [part for part in re.split(r"[;\s]+", value) if part]
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        parts = [value]
    items = [validate_display_format(field_name, part) for part in parts]
    if not items:
        raise ConfigError(field_name, "needs at least one image display format")
    if len(set(items)) != len(items):
        raise ConfigError(field_name, "lists a display format twice")
    return items


def _optional(
    check: Callable[[str, object], Any],
) -> Callable[[str, object], Any]:
    def optional(field_name: str, value: object) -> Any:
        return None if value is None or value == "" else check(field_name, value)

    return optional


def _density_term(field_name: str, value: object) -> str:
    """Border or empty image density: BLACK, WHITE or a density in hundredths of OD."""
    text = str(value).strip().upper()
    if text in ("BLACK", "WHITE"):
        return text
    if text.isdigit():
        return str(_DENSITY(field_name, text))
    raise ConfigError(field_name, f"{value!r} is not BLACK, WHITE or a density 0..1000")


#: The layouts a printer is taken to accept when its configuration names none: the usual
#: STANDARD formats of film imagers, 1x1 (the default layout) first.
COMMON_DISPLAY_FORMATS: tuple[str, ...] = tuple(
    f"STANDARD\\{c},{r}"
    for c, r in (
        (1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (3, 2), (3, 3), (3, 4), (4, 3),
        (3, 5), (5, 3), (4, 4), (4, 5), (5, 4), (5, 5),
    )
)  # fmt: skip


@dataclass
class Printer:
    """A film imager (DICOM Print SCP) the print spooler sends films to.

    Empty lists and None mean "not configured": with ``send_only_set_attributes`` (DS-35) the
    spooler then leaves the attribute out and the printer uses its own default. Densities are in
    hundredths of optical density. ``display_formats`` are the layouts the printer accepts.
    """

    name: str
    ae_title: str
    host: str
    port: int
    color: bool = False
    grayscale: bool = True
    film_sizes: list[str] = field(default_factory=list)
    medium_types: list[str] = field(default_factory=list)
    film_destinations: list[str] = field(default_factory=list)
    magnification_types: list[str] = field(default_factory=list)
    display_formats: list[str] = field(default_factory=lambda: list(COMMON_DISPLAY_FORMATS))
    min_density: int | None = None
    max_density: int | None = None
    border_density: str | None = None
    empty_image_density: str | None = None
    trim: bool | None = None
    bits: int = 8
    presentation_lut: bool = False
    annotation: bool = False
    send_only_set_attributes: bool = True

    def __post_init__(self) -> None:
        self.name = _node_name("printer.name", self.name)
        self.ae_title = validate_ae_title("printer.ae_title", self.ae_title)
        self.host = _host("printer.host", self.host)
        self.port = _int_range(1, 65535)("printer.port", self.port)
        self.color = _bool("printer.color", self.color)
        self.grayscale = _bool("printer.grayscale", self.grayscale)
        if not (self.color or self.grayscale):
            raise ConfigError("printer.grayscale", "a printer prints grayscale, color or both")
        self.film_sizes = _code_strings("printer.film_sizes", self.film_sizes)
        self.medium_types = _code_strings("printer.medium_types", self.medium_types)
        self.film_destinations = _code_strings("printer.film_destinations", self.film_destinations)
        self.magnification_types = _magnification_types(
            "printer.magnification_types", self.magnification_types
        )
        self.display_formats = _display_formats("printer.display_formats", self.display_formats)
        self.min_density = _optional(_DENSITY)("printer.min_density", self.min_density)
        self.max_density = _optional(_DENSITY)("printer.max_density", self.max_density)
        if (
            self.min_density is not None
            and self.max_density is not None
            and self.min_density >= self.max_density
        ):
            raise ConfigError(
                "printer.min_density",
                f"{self.min_density} is not below max_density {self.max_density}",
            )
        self.border_density = _optional(_density_term)(
            "printer.border_density", self.border_density
        )
        self.empty_image_density = _optional(_density_term)(
            "printer.empty_image_density", self.empty_image_density
        )
        self.trim = _optional(_bool)("printer.trim", self.trim)
        bits = _int_range(8, 12)("printer.bits", self.bits)
        if bits not in PRINTER_BITS:
            raise ConfigError("printer.bits", f"{bits} is not allowed: 8 or 12")
        self.bits = bits
        self.presentation_lut = _bool("printer.presentation_lut", self.presentation_lut)
        self.annotation = _bool("printer.annotation", self.annotation)
        self.send_only_set_attributes = _bool(
            "printer.send_only_set_attributes", self.send_only_set_attributes
        )

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> Printer:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"printer.{sorted(unknown)[0]}", "unknown printer field")
        missing = {"name", "ae_title", "host", "port"} - set(data)
        if missing:
            raise ConfigError(f"printer.{sorted(missing)[0]}", "is required")
        return cls(**data)


@dataclass
class VirtualPrinter:
    """A printer the appliance emulates (Print SCP): films printed to its AE title are stored
    in the archive and forwarded to ``printer``, or held when ``printer`` is None."""

    name: str
    ae_title: str
    printer: str | None = None

    def __post_init__(self) -> None:
        self.name = _node_name("virtual_printer.name", self.name)
        self.ae_title = validate_ae_title("virtual_printer.ae_title", self.ae_title)
        self.printer = _optional(_node_name)("virtual_printer.printer", self.printer)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> VirtualPrinter:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"virtual_printer.{sorted(unknown)[0]}", "unknown field")
        missing = {"name", "ae_title"} - set(data)
        if missing:
            raise ConfigError(f"virtual_printer.{sorted(missing)[0]}", "is required")
        return cls(**data)


# --- anonymization: site profiles and pixel blanking rules ------------------------------------

#: Built in (the Basic Profile with no options); a site profile cannot take these names.
RESERVED_ANON_PROFILES = ("basic",)
ANON_OVERRIDE_ACTIONS = ("keep", "remove", "replace")
_TAG_TEXT = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")
_OVERRIDE_VALUE = re.compile(r"^[^\x00-\x1f\x7f]{0,1024}$")


def anon_options() -> tuple[str, ...]:
    """The Annex E options a profile may name (the engine's list)."""
    from appliance.deid_table import OPTIONS

    return tuple(OPTIONS)


def normalise_attribute(field_name: str, value: object) -> str:
    """An attribute as a keyword from the data dictionary (``PatientName``) or a tag
    ``(gggg,eeee)``; tags come back upper case with parentheses and comma."""
    from pydicom.datadict import tag_for_keyword

    text = value.strip() if isinstance(value, str) else ""
    match = _TAG_TEXT.match(text)
    if match and not (text.isalpha() and tag_for_keyword(text) is not None):
        return f"({match.group(1).upper()},{match.group(2).upper()})"
    if text and tag_for_keyword(text) is not None:
        return text
    raise ConfigError(
        field_name, f"{value!r} is not an attribute keyword (e.g. PatientName) or tag (0010,0010)"
    )


def _anon_override(field_name: str, value: object) -> str:
    text = value if isinstance(value, str) else ""
    action, colon, replacement = text.partition(":")
    if action == "replace" and colon and _OVERRIDE_VALUE.match(replacement):
        return text
    if text in ("keep", "remove"):
        return text
    raise ConfigError(
        field_name,
        f"{value!r} is not keep, remove or replace:<value> (one line, at most 1024 characters)",
    )


def _pseudonym_check(field_name: str, check: Callable[[], str]) -> str:
    from appliance.pseudonyms import PseudonymError

    try:
        return check()
    except PseudonymError as exc:
        raise ConfigError(field_name, str(exc).partition(": ")[2] or str(exc)) from None


@dataclass
class AnonProfileConfig:
    """A site's anonymization profile as stored: Annex E options, per-attribute overrides
    (attribute -> ``keep``, ``remove`` or ``replace:<value>``), the patterns of the new
    Patient ID and Name (``{n}`` the patient's number in the project, ``{hash8}``) and the
    project, the namespace of the UID key and the pseudonyms. The engine builds its Profile
    from it."""

    name: str
    options: list[str] = field(default_factory=list)
    overrides: dict[str, str] = field(default_factory=dict)
    patient_id_pattern: str = "ANON{n:06d}"
    patient_name_pattern: str = "ANONYMOUS^{n:06d}"
    project: str = "default"
    description: str = ""

    def __post_init__(self) -> None:
        from appliance.pseudonyms import MAX_ID_LENGTH, validate_pattern, validate_project

        self.name = _node_name("anon_profile.name", self.name)
        known = anon_options()
        options = _as_list(self.options) if self.options else []
        for option in options:
            if option not in known:
                raise ConfigError(
                    "anon_profile.options",
                    f"{option!r} is not an option: one of {', '.join(known)}",
                )
        self.options = sorted(set(options), key=known.index)
        if {"retain_long_full_dates", "retain_long_modified_dates"} <= set(self.options):
            raise ConfigError(
                "anon_profile.options",
                "retain_long_full_dates and retain_long_modified_dates exclude each other",
            )
        if not isinstance(self.overrides, dict):
            raise ConfigError("anon_profile.overrides", "must map attributes to actions")
        overrides: dict[str, str] = {}
        for attribute, action in self.overrides.items():
            key = normalise_attribute("anon_profile.overrides", attribute)
            if key in overrides:
                raise ConfigError("anon_profile.overrides", f"names {key} twice")
            overrides[key] = _anon_override(f"anon_profile.overrides[{key}]", action)
        self.overrides = overrides
        self.patient_id_pattern = _pseudonym_check(
            "anon_profile.patient_id_pattern",
            lambda: validate_pattern(
                self.patient_id_pattern, "id_pattern", max_length=MAX_ID_LENGTH
            ),
        )
        self.patient_name_pattern = _pseudonym_check(
            "anon_profile.patient_name_pattern",
            lambda: validate_pattern(
                self.patient_name_pattern, "name_pattern", max_length=MAX_ID_LENGTH
            ),
        )
        self.project = _pseudonym_check(
            "anon_profile.project", lambda: validate_project(self.project)
        )
        self.description = _label_text("anon_profile.description", self.description)

    @property
    def builtin(self) -> bool:
        return self.name in RESERVED_ANON_PROFILES

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> AnonProfileConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"anon_profile.{sorted(unknown)[0]}", "unknown profile field")
        if "name" not in data:
            raise ConfigError("anon_profile.name", "is required")
        return cls(**data)


def _rectangle(field_name: str, value: object, columns: int, rows: int) -> list[int]:
    items = _as_list(value) if not isinstance(value, list | tuple) else list(value)
    try:
        numbers = [int(v) for v in items if not isinstance(v, bool)]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 4 or len(items) != 4:
        raise ConfigError(field_name, f"{value!r} is not x,y,width,height")
    x, y, width, height = numbers
    if x < 0 or y < 0 or width < 1 or height < 1 or x + width > columns or y + height > rows:
        raise ConfigError(
            field_name,
            f"{x},{y},{width},{height} does not fit a {columns}x{rows} image "
            "(x and y from the top left, width and height at least 1)",
        )
    return numbers


@dataclass
class PixelRegionRule:
    """Rectangles of burned-in text to blank (x, y, width, height in pixels from the top left)
    on images of one modality and size, optionally one manufacturer (and model) only; matched
    regardless of case, the most specific rule winning."""

    modality: str
    columns: int
    rows: int
    regions: list[list[int]]
    manufacturer: str = ""
    model: str = ""

    def __post_init__(self) -> None:
        modality = str(self.modality or "").strip().upper()
        if not _MODALITY.match(modality):
            raise ConfigError(
                "pixel_region.modality", f"{self.modality!r} is not a modality (e.g. US)"
            )
        self.modality = modality
        self.columns = _int_range(1, 65535)("pixel_region.columns", self.columns)
        self.rows = _int_range(1, 65535)("pixel_region.rows", self.rows)
        for name in ("manufacturer", "model"):
            value = getattr(self, name) or ""
            if not isinstance(value, str) or len(value) > 64 or "\\" in value:
                raise ConfigError(f"pixel_region.{name}", f"{value!r} is not LO text")
            setattr(self, name, value.strip())
        if not isinstance(self.regions, list | tuple) or not self.regions:
            raise ConfigError("pixel_region.regions", "needs at least one x,y,width,height")
        self.regions = [
            _rectangle("pixel_region.regions", r, self.columns, self.rows) for r in self.regions
        ]

    @property
    def key(self) -> tuple[str, str, str, int, int]:
        return (self.modality, self.manufacturer.upper(), self.model.upper(), self.columns,
                self.rows)  # fmt: skip

    def describe(self) -> str:
        who = " ".join(v for v in (self.manufacturer, self.model) if v) or "any manufacturer"
        return f"{self.modality} {who} {self.columns}x{self.rows}"

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> PixelRegionRule:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"pixel_region.{sorted(unknown)[0]}", "unknown field")
        missing = {"modality", "columns", "rows", "regions"} - set(data)
        if missing:
            raise ConfigError(f"pixel_region.{sorted(missing)[0]}", "is required")
        return cls(**data)


# --- the field-service password ----------------------------------------------------------------

SERVICE_PASSWORD_MIN = 8
SERVICE_PASSWORD_MAX = 1024
# scrypt cost: about 80 ms and 32 MiB per check on the appliance's CPU.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_DKLEN = 32
_SCRYPT_MAX_MEMORY = 2**30
_HEX = re.compile(r"^[0-9a-f]+$")


def validate_service_password(password: object) -> str:
    if not isinstance(password, str):
        raise ConfigError("service.password", "must be text")
    if len(password) < SERVICE_PASSWORD_MIN:
        raise ConfigError(
            "service.password",
            f"is too short: at least {SERVICE_PASSWORD_MIN} characters (it has {len(password)})",
        )
    if len(password) > SERVICE_PASSWORD_MAX:
        raise ConfigError(
            "service.password", f"is too long: at most {SERVICE_PASSWORD_MAX} characters"
        )
    return password


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=dklen,
        maxmem=min(_SCRYPT_MAX_MEMORY, 128 * r * (n + p + 2) + 2**20),
    )


def hash_service_password(password: str) -> dict[str, Any]:
    """The stored form of a password: scrypt with a random salt, and its parameters."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, _SCRYPT_DKLEN)
    return {
        "algorithm": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": salt.hex(),
        "hash": digest.hex(),
    }


def _validate_password_hash(doc: object) -> dict[str, Any]:
    """A stored password hash, checked field by field; raises ConfigError naming the field."""
    name = "service.password_hash"
    if not isinstance(doc, dict):
        raise ConfigError(name, "must be an object (algorithm, n, r, p, salt, hash)")
    unknown = set(doc) - {"algorithm", "n", "r", "p", "salt", "hash"}
    if unknown:
        raise ConfigError(f"{name}.{sorted(unknown)[0]}", "unknown field")
    if doc.get("algorithm") != "scrypt":
        raise ConfigError(f"{name}.algorithm", f"{doc.get('algorithm')!r} is not scrypt")
    n = _int_range(2, 2**20)(f"{name}.n", doc.get("n"))
    if n & (n - 1):
        raise ConfigError(f"{name}.n", f"{n} is not a power of 2")
    r = _int_range(1, 64)(f"{name}.r", doc.get("r"))
    p = _int_range(1, 16)(f"{name}.p", doc.get("p"))
    if 128 * r * (n + p + 2) > _SCRYPT_MAX_MEMORY:
        raise ConfigError(name, "n and r ask for more than 1 GiB of memory")
    for key, lo, hi in (("salt", 8, 64), ("hash", 16, 64)):
        value = doc.get(key)
        if not isinstance(value, str) or not _HEX.match(value) or not lo <= len(value) // 2 <= hi:
            raise ConfigError(
                f"{name}.{key}", f"must be {lo} to {hi} bytes as lower-case hexadecimal"
            )
        if len(value) % 2:
            raise ConfigError(f"{name}.{key}", "has an odd number of hexadecimal digits")
    return {"algorithm": "scrypt", "n": n, "r": r, "p": p, "salt": doc["salt"], "hash": doc["hash"]}


class ConfigStore:
    """The appliance's configuration, validated, with one writer at a time."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / CONFIG_FILE
        self._lock = threading.RLock()
        self._db = TinyDB(str(self.path), storage=AtomicJSONStorage)
        self._settings_table = self._db.table("settings")
        self._nodes_table = self._db.table("nodes")
        self._retry_table = self._db.table("retry_policies")
        self._routing_table = self._db.table("routing_rules")
        self._service_table = self._db.table("service")
        self._printers_table = self._db.table("printers")
        self._virtual_printers_table = self._db.table("virtual_printers")
        self._anon_profiles_table = self._db.table("anon_profiles")
        self._pixel_regions_table = self._db.table("pixel_regions")
        # Refuse to go on with a bad file rather than guess: validate everything now.
        self.settings()
        self.nodes()
        self.retry_policies()
        self.routing_rules()
        self.printers()
        self.virtual_printers()
        self.anon_profiles()
        self.pixel_regions()
        self._password_hash()

    @contextmanager
    def _writer(self) -> Iterator[None]:
        lock_path = self.data_dir / (CONFIG_FILE + ".lock")
        with self._lock, open(lock_path, "a+") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                # Another process may have written since we last read.
                self._db.clear_cache()
                self._settings_table.clear_cache()
                self._nodes_table.clear_cache()
                self._retry_table.clear_cache()
                self._routing_table.clear_cache()
                self._service_table.clear_cache()
                self._printers_table.clear_cache()
                self._virtual_printers_table.clear_cache()
                self._anon_profiles_table.clear_cache()
                self._pixel_regions_table.clear_cache()
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def close(self) -> None:
        self._db.close()

    # settings

    def _stored_settings(self) -> dict[str, Any]:
        docs = self._settings_table.all()
        return dict(docs[0]) if docs else {}

    def settings(self) -> Settings:
        with self._lock:
            self._settings_table.clear_cache()
            return Settings.from_mapping(self._stored_settings())

    def set(self, key: str, value: object) -> object:
        """Validate and store one setting; returns the stored (normalised) value."""
        normalised = Settings.validate_value(key, value)
        with self._writer():
            stored = self._stored_settings()
            stored[key] = normalised
            Settings.from_mapping(stored)
            self._settings_table.truncate()
            self._settings_table.insert(stored)
        audit.setting_changed(key, normalised)
        return normalised

    # nodes

    def nodes(self) -> list[Node]:
        with self._lock:
            self._nodes_table.clear_cache()
            nodes = [Node.from_mapping(dict(doc)) for doc in self._nodes_table.all()]
        return sorted(nodes, key=lambda n: n.name)

    def node(self, name: str) -> Node:
        for node in self.nodes():
            if node.name == name:
                return node
        raise ConfigError("node", f"no node named {name!r}")

    def nodes_with_ae_title(self, ae_title: str) -> list[Node]:
        wanted = ae_title.strip()
        return [n for n in self.nodes() if n.ae_title == wanted]

    def add_node(self, node: Node, *, replace: bool = False) -> None:
        with self._writer():
            existing = self._nodes_table.search(Query().name == node.name)
            if existing and not replace:
                raise ConfigError("node.name", f"a node named {node.name!r} already exists")
            self._nodes_table.remove(Query().name == node.name)
            self._nodes_table.insert(asdict(node))
        audit.config_changed(
            f"node {node.name} {'replaced' if existing else 'added'}: "
            f"{node.ae_title}@{node.host}:{node.port}",
            event_type="network-configuration",
        )

    def remove_node(self, name: str) -> None:
        with self._writer():
            routes = [
                str(doc.get("name"))
                for doc in self._routing_table.all()
                if name in (doc.get("destinations") or [])
            ]
            if routes:
                raise ConfigError(
                    "node",
                    f"{name!r} is a destination of routing rule {', '.join(routes)}: "
                    "change or remove the rule first",
                )
            if not self._nodes_table.remove(Query().name == name):
                raise ConfigError("node", f"no node named {name!r}")
        audit.config_changed(f"node {name} removed", event_type="network-configuration")

    # retry policies: "kind:<job kind>" and "node:<node name>" scopes over the default settings

    def retry_policies(self) -> dict[str, dict[str, float]]:
        """Stored overrides by scope, validated."""
        from appliance.jobs import JOB_KINDS, JobError, RetryPolicy

        with self._lock:
            self._retry_table.clear_cache()
            docs = [dict(doc) for doc in self._retry_table.all()]
        policies: dict[str, dict[str, float]] = {}
        for doc in docs:
            scope = str(doc.pop("scope", ""))
            kind, _, name = scope.partition(":")
            if (
                kind not in ("kind", "node")
                or not name
                or (kind == "kind" and name not in JOB_KINDS)
            ):
                raise ConfigError(
                    "retry_policies", f"{scope!r} is not kind:<job kind> or node:<name>"
                )
            try:
                RetryPolicy.validated(doc)
            except JobError as exc:
                raise ConfigError(f"retry_policies[{scope}]", str(exc)) from None
            policies[scope] = doc
        return policies

    def default_retry_policy(self) -> RetryPolicy:
        """The policy of the retry_* settings, before any kind or node override."""
        from appliance.jobs import RetryPolicy

        settings = self.settings()
        return RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            first_delay=settings.retry_first_delay,
            multiplier=settings.retry_multiplier,
            max_delay=settings.retry_max_delay,
        )

    def retry_policy(self, kind: str, node: str | None = None) -> RetryPolicy:
        """Defaults from the settings, then the job kind's override, then the node's."""
        from appliance.jobs import RetryPolicy

        policy = self.default_retry_policy()
        policies = self.retry_policies()
        for scope in (f"kind:{kind}", f"node:{node}" if node else ""):
            if scope in policies:
                policy = RetryPolicy.validated(policies[scope], base=policy)
        return policy

    def set_retry_policy(self, scope: str, values: dict[str, object]) -> dict[str, float]:
        """Store (merge) an override for ``kind:<kind>`` or ``node:<name>``."""
        from appliance.jobs import JOB_KINDS, JobError, RetryPolicy

        kind, _, name = scope.partition(":")
        if kind == "kind" and name not in JOB_KINDS:
            raise ConfigError("retry.scope", f"{name!r} is not a job kind: {', '.join(JOB_KINDS)}")
        if kind == "node":
            self.node(name)
        elif kind != "kind":
            raise ConfigError("retry.scope", f"{scope!r} is not kind:<job kind> or node:<name>")
        with self._writer():
            existing = self._retry_table.search(Query().scope == scope)
            merged = {k: v for k, v in (dict(existing[0]) if existing else {}).items()}
            merged.pop("scope", None)
            merged.update(values)
            try:
                validated = RetryPolicy.validated(merged)
            except JobError as exc:
                raise ConfigError(str(exc).split(":")[0], str(exc).partition(": ")[2]) from None
            stored = {k: getattr(validated, k) for k in merged}
            self._retry_table.remove(Query().scope == scope)
            self._retry_table.insert({"scope": scope, **stored})
        return stored

    def clear_retry_policy(self, scope: str) -> None:
        with self._writer():
            if not self._retry_table.remove(Query().scope == scope):
                raise ConfigError("retry.scope", f"no retry policy for {scope!r}")

    # auto-routing rules (appliance.routing)

    @staticmethod
    def _check_destinations(rule: RoutingRule, node_names: set[str]) -> None:
        for destination in rule.destinations:
            if destination not in node_names:
                raise ConfigError(
                    "route.destinations",
                    f"rule {rule.name}: {destination!r} is not a configured node",
                )

    def routing_rules(self) -> list[RoutingRule]:
        """Every rule, validated (destinations must be configured nodes), sorted by name."""
        with self._lock:
            self._routing_table.clear_cache()
            docs = [dict(doc) for doc in self._routing_table.all()]
            node_names = {node.name for node in self.nodes()}
        rules = []
        for doc in docs:
            rule = RoutingRule.from_mapping(doc)
            self._check_destinations(rule, node_names)
            rules.append(rule)
        return sorted(rules, key=lambda r: r.name)

    def routing_rule(self, name: str) -> RoutingRule:
        for rule in self.routing_rules():
            if rule.name == name:
                return rule
        raise ConfigError("route", f"no routing rule named {name!r}")

    def add_routing_rule(self, rule: RoutingRule, *, replace: bool = False) -> None:
        with self._writer():
            node_names = {str(doc.get("name")) for doc in self._nodes_table.all()}
            self._check_destinations(rule, node_names)
            existing = self._routing_table.search(Query().name == rule.name)
            if existing and not replace:
                raise ConfigError("route.name", f"a routing rule named {rule.name!r} exists")
            self._routing_table.remove(Query().name == rule.name)
            self._routing_table.insert(asdict(rule))

    def remove_routing_rule(self, name: str) -> None:
        with self._writer():
            if not self._routing_table.remove(Query().name == name):
                raise ConfigError("route", f"no routing rule named {name!r}")

    # printers (film imagers for the print spooler)

    def printers(self) -> list[Printer]:
        with self._lock:
            self._printers_table.clear_cache()
            docs = [dict(doc) for doc in self._printers_table.all()]
        printers = [Printer.from_mapping(doc) for doc in docs]
        return sorted(printers, key=lambda p: p.name)

    def printer(self, name: str) -> Printer:
        for printer in self.printers():
            if printer.name == name:
                return printer
        raise ConfigError("printer", f"no printer named {name!r}")

    def add_printer(self, printer: Printer, *, replace: bool = False) -> None:
        with self._writer():
            existing = self._printers_table.search(Query().name == printer.name)
            if existing and not replace:
                raise ConfigError(
                    "printer.name", f"a printer named {printer.name!r} already exists"
                )
            self._printers_table.remove(Query().name == printer.name)
            self._printers_table.insert(asdict(printer))

    def remove_printer(self, name: str) -> None:
        with self._writer():
            if not self._printers_table.remove(Query().name == name):
                raise ConfigError("printer", f"no printer named {name!r}")

    # virtual printers (the Print SCP): each AE title maps to a printer or holds

    def virtual_printers(self) -> list[VirtualPrinter]:
        with self._lock:
            self._virtual_printers_table.clear_cache()
            docs = [dict(doc) for doc in self._virtual_printers_table.all()]
        printers = [VirtualPrinter.from_mapping(doc) for doc in docs]
        return sorted(printers, key=lambda p: p.name)

    def add_virtual_printer(self, printer: VirtualPrinter, *, replace: bool = False) -> None:
        with self._writer():
            if printer.printer is not None and not self._printers_table.search(
                Query().name == printer.printer
            ):
                raise ConfigError(
                    "virtual_printer.printer", f"no printer named {printer.printer!r}"
                )
            for doc in self._virtual_printers_table.all():
                if doc.get("name") == printer.name:
                    if not replace:
                        raise ConfigError(
                            "virtual_printer.name",
                            f"a virtual printer named {printer.name!r} already exists",
                        )
                elif doc.get("ae_title") == printer.ae_title:
                    raise ConfigError(
                        "virtual_printer.ae_title",
                        f"virtual printer {doc.get('name')!r} already has AE title "
                        f"{printer.ae_title!r}",
                    )
            self._virtual_printers_table.remove(Query().name == printer.name)
            self._virtual_printers_table.insert(asdict(printer))

    def remove_virtual_printer(self, name: str) -> None:
        with self._writer():
            if not self._virtual_printers_table.remove(Query().name == name):
                raise ConfigError("virtual_printer", f"no virtual printer named {name!r}")

    # anonymization profiles (the engine adds the built-in "basic")

    def anon_profiles(self) -> list[AnonProfileConfig]:
        """The site's profiles, validated, sorted by name (without the built-in ones)."""
        with self._lock:
            self._anon_profiles_table.clear_cache()
            docs = [dict(doc) for doc in self._anon_profiles_table.all()]
        profiles = [AnonProfileConfig.from_mapping(doc) for doc in docs]
        for profile in profiles:
            if profile.builtin:
                raise ConfigError("anon_profile.name", f"{profile.name!r} is built in")
        return sorted(profiles, key=lambda p: p.name)

    def anon_profile(self, name: str) -> AnonProfileConfig:
        if name in RESERVED_ANON_PROFILES:
            return AnonProfileConfig(name=name)
        for profile in self.anon_profiles():
            if profile.name == name:
                return profile
        raise ConfigError("anon_profile", f"no anonymization profile named {name!r}")

    def add_anon_profile(self, profile: AnonProfileConfig, *, replace: bool = False) -> None:
        if profile.builtin:
            raise ConfigError("anon_profile.name", f"{profile.name!r} is built in")
        with self._writer():
            existing = self._anon_profiles_table.search(Query().name == profile.name)
            if existing and not replace:
                raise ConfigError(
                    "anon_profile.name", f"a profile named {profile.name!r} already exists"
                )
            self._anon_profiles_table.remove(Query().name == profile.name)
            self._anon_profiles_table.insert(asdict(profile))
        audit.config_changed(
            f"anonymization profile {profile.name} {'replaced' if existing else 'added'}",
            subject=f"anon_profile/{profile.name}",
        )

    def remove_anon_profile(self, name: str) -> None:
        if name in RESERVED_ANON_PROFILES:
            raise ConfigError("anon_profile", f"{name!r} is built in and cannot be removed")
        with self._writer():
            if not self._anon_profiles_table.remove(Query().name == name):
                raise ConfigError("anon_profile", f"no anonymization profile named {name!r}")
        audit.config_changed(
            f"anonymization profile {name} removed", subject=f"anon_profile/{name}"
        )

    # burned-in text regions blanked by Clean Pixel Data (appliance.pixel_guard)

    def pixel_regions(self) -> list[PixelRegionRule]:
        with self._lock:
            self._pixel_regions_table.clear_cache()
            docs = [dict(doc) for doc in self._pixel_regions_table.all()]
        rules = [PixelRegionRule.from_mapping(doc) for doc in docs]
        seen: set[tuple[str, str, str, int, int]] = set()
        for rule in rules:
            if rule.key in seen:
                raise ConfigError("pixel_region", f"two rules for {rule.describe()}")
            seen.add(rule.key)
        return sorted(rules, key=lambda r: r.key)

    def add_pixel_region(self, rule: PixelRegionRule, *, replace: bool = False) -> None:
        with self._writer():
            docs = self._pixel_regions_table.all()
            same = [
                doc.doc_id
                for doc in docs
                if PixelRegionRule.from_mapping(dict(doc)).key == rule.key
            ]
            if same and not replace:
                raise ConfigError("pixel_region", f"a rule for {rule.describe()} already exists")
            self._pixel_regions_table.remove(doc_ids=same)
            self._pixel_regions_table.insert(asdict(rule))
        audit.config_changed(
            f"pixel region rule {rule.describe()} {'replaced' if same else 'added'}",
            subject="pixel_region",
        )

    def remove_pixel_region(
        self, modality: str, columns: int, rows: int, manufacturer: str = "", model: str = ""
    ) -> PixelRegionRule:
        """Remove the rule with exactly this modality, size, manufacturer and model."""
        wanted = PixelRegionRule(
            modality, columns, rows, [[0, 0, 1, 1]], manufacturer=manufacturer, model=model
        ).key
        with self._writer():
            for doc in self._pixel_regions_table.all():
                rule = PixelRegionRule.from_mapping(dict(doc))
                if rule.key == wanted:
                    self._pixel_regions_table.remove(doc_ids=[doc.doc_id])
                    break
            else:
                raise ConfigError(
                    "pixel_region", "no rule for that modality, manufacturer and size"
                )
        audit.config_changed(f"pixel region rule {rule.describe()} removed", subject="pixel_region")
        return rule

    # the field-service password: only its scrypt hash is stored, in the "service" table

    def _password_hash(self) -> dict[str, Any] | None:
        with self._lock:
            self._service_table.clear_cache()
            docs = [dict(doc) for doc in self._service_table.all()]
        if not docs:
            return None
        if len(docs) > 1:
            raise ConfigError("service", "holds more than one entry")
        unknown = set(docs[0]) - {"password_hash", "set_at"}
        if unknown:
            raise ConfigError(f"service.{sorted(unknown)[0]}", "unknown field")
        set_at = docs[0].get("set_at", 0)
        if isinstance(set_at, bool) or not isinstance(set_at, int | float):
            raise ConfigError("service.set_at", "must be a time (seconds since the epoch)")
        if "password_hash" not in docs[0]:
            raise ConfigError("service.password_hash", "is required")
        return _validate_password_hash(docs[0]["password_hash"])

    def service_password_set(self) -> bool:
        return self._password_hash() is not None

    def set_service_password(self, password: str) -> None:
        """Store the scrypt hash of ``password`` (at least 8 characters), never the text."""
        stored = hash_service_password(validate_service_password(password))
        with self._writer():
            self._service_table.truncate()
            self._service_table.insert({"password_hash": stored, "set_at": time.time()})
        audit.config_changed("service password set", event_type="security-configuration")

    def clear_service_password(self) -> bool:
        """Remove the password (service mode can then not be unlocked); whether one was set."""
        with self._writer():
            had = bool(self._service_table.all())
            self._service_table.truncate()
        audit.config_changed("service password cleared", event_type="security-configuration")
        return had

    def check_service_password(self, password: str) -> bool:
        """Whether ``password`` is the service password; compared in constant time."""
        stored = self._password_hash()
        if stored is None or not isinstance(password, str):
            return False
        if len(password) > SERVICE_PASSWORD_MAX:
            return False
        digest = _scrypt(
            password,
            bytes.fromhex(stored["salt"]),
            stored["n"],
            stored["r"],
            stored["p"],
            len(stored["hash"]) // 2,
        )
        return hmac.compare_digest(digest, bytes.fromhex(stored["hash"]))


def load_settings(data_dir: Path) -> Settings:
    store = ConfigStore(data_dir)
    try:
        return store.settings()
    finally:
        store.close()


def config_file_exists(data_dir: Path) -> bool:
    return os.path.exists(Path(data_dir) / CONFIG_FILE)
