"""Audit trail: DICOM audit messages (PS3.15 A.5) in an append-only log and to syslog.

``emit(event, ...)`` is the one entry point. It builds one audit message (the DICOM audit message
schema of PS3.15 A.5.1, derived from RFC 3881), appends it as one line to
``DATA/audit/audit-YYYY-MM.log`` (UTC month) and, when ``audit_syslog_host`` is set, queues it for
the syslog sender (RFC 5424 messages, RFC 5425 octet-counting frames over TLS). ``emit`` never
raises and never waits for the network: auditing must not stop DICOM work.

The daemon calls ``configure(data_dir, settings)`` at start; CLI commands that act directly on the
data folder call it too. Until then ``emit`` only logs at debug level.

Appends: one ``write`` of the whole line on an ``O_APPEND`` descriptor followed by ``fsync``, so
lines from several processes never interleave and a message is on disk when ``emit`` returns.
A process killed inside a write can leave a line without its newline; the next writer starts
with a newline first and readers skip lines that do not parse.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import contextvars
import logging
import os
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

LOG = logging.getLogger("appliance.audit")

AUDIT_DIR = "audit"
APP_NAME = "dicom-appliance"
# Syslog PRI: facility 10 (security/authorization, authpriv) and severity 5 (notice).
SYSLOG_PRI = 10 * 8 + 5
# MSGID the IHE ATNA profile uses for RFC 3881/DICOM audit messages.
SYSLOG_MSGID = "IHE+RFC-3881"
SYSLOG_QUEUE = 10_000
SYSLOG_TIMEOUT = 5.0


class Code(NamedTuple):
    """A coded value: csd-code, codeSystemName, originalText (the Code Meaning)."""

    code: str
    system: str
    meaning: str


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


# --- PS3.16 CID 400 Audit Event ID -------------------------------------------------------------
EVENT_IDS: dict[str, Code] = {
    "application-activity": _dcm("110100", "Application Activity"),
    "audit-log-used": _dcm("110101", "Audit Log Used"),
    "begin-transferring": _dcm("110102", "Begin Transferring DICOM Instances"),
    "instances-accessed": _dcm("110103", "DICOM Instances Accessed"),
    "instances-transferred": _dcm("110104", "DICOM Instances Transferred"),
    "study-deleted": _dcm("110105", "DICOM Study Deleted"),
    "export": _dcm("110106", "Export"),
    "import": _dcm("110107", "Import"),
    "network-entry": _dcm("110108", "Network Entry"),
    "order-record": _dcm("110109", "Order Record"),
    "patient-record": _dcm("110110", "Patient Record"),
    "procedure-record": _dcm("110111", "Procedure Record"),
    "query": _dcm("110112", "Query"),
    "security-alert": _dcm("110113", "Security Alert"),
    "user-authentication": _dcm("110114", "User Authentication"),
}

# The EventActionCode each event has when the caller does not say (PS3.15 A.5.3).
DEFAULT_ACTIONS: dict[str, str] = {
    "application-activity": "E",
    "audit-log-used": "R",
    "begin-transferring": "E",
    "instances-accessed": "R",
    "instances-transferred": "C",
    "study-deleted": "D",
    "export": "R",
    "import": "C",
    "network-entry": "E",
    "order-record": "U",
    "patient-record": "U",
    "procedure-record": "U",
    "query": "E",
    "security-alert": "E",
    "user-authentication": "E",
}

# --- PS3.16 CID 401 Audit Event Type Code ------------------------------------------------------
EVENT_TYPES: dict[str, Code] = {
    "application-start": _dcm("110120", "Application Start"),
    "application-stop": _dcm("110121", "Application Stop"),
    "login": _dcm("110122", "Login"),
    "logout": _dcm("110123", "Logout"),
    "attach": _dcm("110124", "Attach"),
    "detach": _dcm("110125", "Detach"),
    "node-authentication": _dcm("110126", "Node Authentication"),
    "emergency-override-started": _dcm("110127", "Emergency Override Started"),
    "network-configuration": _dcm("110128", "Network Configuration"),
    "security-configuration": _dcm("110129", "Security Configuration"),
    "hardware-configuration": _dcm("110130", "Hardware Configuration"),
    "software-configuration": _dcm("110131", "Software Configuration"),
    "use-of-restricted-function": _dcm("110132", "Use of Restricted Function"),
    "audit-recording-stopped": _dcm("110133", "Audit Recording Stopped"),
    "audit-recording-started": _dcm("110134", "Audit Recording Started"),
    "object-security-attributes-changed": _dcm("110135", "Object Security Attributes Changed"),
    "security-roles-changed": _dcm("110136", "Security Roles Changed"),
    "user-security-attributes-changed": _dcm("110137", "User security Attributes Changed"),
    "emergency-override-stopped": _dcm("110138", "Emergency Override Stopped"),
    "remote-service-operation-started": _dcm("110139", "Remote Service Operation Started"),
    "remote-service-operation-stopped": _dcm("110140", "Remote Service Operation Stopped"),
    "local-service-operation-started": _dcm("110141", "Local Service Operation Started"),
    "local-service-operation-stopped": _dcm("110142", "Local Service Operation Stopped"),
}

# --- PS3.16 CID 402 Audit Active Participant Role ID Code --------------------------------------
ROLES: dict[str, Code] = {
    "application": _dcm("110150", "Application"),
    "application-launcher": _dcm("110151", "Application Launcher"),
    "destination": _dcm("110152", "Destination Role ID"),
    "source": _dcm("110153", "Source Role ID"),
    "destination-media": _dcm("110154", "Destination Media"),
    "source-media": _dcm("110155", "Source Media"),
}

# --- PS3.16 CID 404 Audit Participant Object ID Type Code (and RFC 3881 values) ---------------
STUDY_UID_TYPE = _dcm("110180", "Study Instance UID")
SOP_CLASS_UID_TYPE = _dcm("110181", "SOP Class UID")
NODE_ID_TYPE = _dcm("110182", "Node ID")
PATIENT_NUMBER_TYPE = Code("2", "RFC-3881", "Patient Number")
USER_IDENTIFIER_TYPE = Code("11", "RFC-3881", "User Identifier")
URI_TYPE = Code("12", "RFC-3881", "URI")

# --- PS3.16 CID 405 Media Type Code ------------------------------------------------------------
MEDIA_TYPES: dict[str, Code] = {
    "usb": _dcm("110030", "USB Disk Emulation"),
    "email": _dcm("110031", "Email"),
    "cd": _dcm("110032", "CD"),
    "dvd": _dcm("110033", "DVD"),
    "compact-flash": _dcm("110034", "Compact Flash"),
    "multi-media-card": _dcm("110035", "Multi-media Card"),
    "secure-digital": _dcm("110036", "Secure Digital Card"),
    "uri": _dcm("110037", "URI"),
    "film": _dcm("110010", "Film"),
    "paper": _dcm("110038", "Paper Document"),
}

OUTCOMES: dict[str, int] = {"success": 0, "minor": 4, "serious": 8, "major": 12}
OUTCOME_NAMES = {value: name for name, value in OUTCOMES.items()}

# Participant object type codes and roles (schema values).
TYPE_PERSON, TYPE_SYSTEM = "1", "2"
ROLE_PATIENT, ROLE_REPORT, ROLE_SECURITY_RESOURCE, ROLE_QUERY = "1", "3", "13", "24"


@dataclass
class Participant:
    """An ActiveParticipant: a person or process taking part in the event."""

    user_id: str
    requestor: bool = False
    role: str | None = None  # a ROLES key
    alt_user_id: str | None = None
    user_name: str | None = None
    # A host name or IP address; the type code follows from it.
    network_access_point: str | None = None
    media_type: str | None = None  # a MEDIA_TYPES key (media participants only)


@dataclass
class Study:
    """A study the event concerns, with what is known of its patient and instances."""

    uid: str
    patient_id: str | None = None
    patient_name: str | None = None
    accession: str | None = None
    description: str | None = None
    # SOP Class UID -> number of instances (may be empty when unknown).
    sop_classes: dict[str, int] = field(default_factory=dict)


@dataclass
class ParticipantObject:
    """Any other ParticipantObjectIdentification (query, alert subject, audit log...)."""

    object_id: str
    id_type: Code
    type_code: str = TYPE_SYSTEM
    role: str | None = None
    name: str | None = None
    query: bytes | None = None
    details: dict[str, str] = field(default_factory=dict)


@dataclass
class _Sink:
    data_dir: Path
    source_id: str
    site_id: str | None
    host: str
    sender: SyslogSender | None = None
    # Month file -> checked for a torn last line already (by this process).
    checked: set[str] = field(default_factory=set)


_LOCK = threading.Lock()
_SINK: _Sink | None = None


# --- configuration ---------------------------------------------------------------------------


def configure(data_dir: Path, settings: Any = None, *, syslog: bool = True) -> None:
    """Send messages to ``data_dir``/audit from now on (and to syslog when set in settings)."""
    global _SINK
    source_id = getattr(settings, "ae_title", None) or APP_NAME
    host = socket.gethostname()
    sender = None
    syslog_host = getattr(settings, "audit_syslog_host", "") or ""
    if syslog and syslog_host:
        sender = SyslogSender(
            syslog_host,
            int(getattr(settings, "audit_syslog_port", 6514) or 6514),
            tls=bool(getattr(settings, "audit_syslog_tls", True)),
            data_dir=Path(data_dir),
            hostname=host,
        )
    with _LOCK:
        old = _SINK
        _SINK = _Sink(Path(data_dir), source_id, None, host, sender)
    if old is not None and old.sender is not None:
        old.sender.close()
    if sender is not None:
        sender.start()


def shutdown(timeout: float = 2.0) -> None:
    """Stop the syslog sender (sending what it can within ``timeout``) and forget the sink."""
    global _SINK
    with _LOCK:
        old, _SINK = _SINK, None
    if old is not None and old.sender is not None:
        old.sender.close(timeout)


def configured() -> bool:
    return _SINK is not None


def syslog_status() -> dict[str, Any] | None:
    sink = _SINK
    if sink is None or sink.sender is None:
        return None
    return sink.sender.status()


# --- building messages -----------------------------------------------------------------------


def local_participant(role: str | None = None, *, requestor: bool = False) -> Participant:
    """This application as a participant: AE title, process id, host name."""
    sink = _SINK
    ae = sink.source_id if sink is not None else APP_NAME
    host = sink.host if sink is not None else socket.gethostname()
    return Participant(
        user_id=ae,
        requestor=requestor,
        role=role,
        alt_user_id=str(os.getpid()),
        user_name=APP_NAME,
        network_access_point=host,
    )


def peer_participant(
    ae_title: str | None, address: str | None, *, role: str | None, requestor: bool
) -> Participant:
    """A remote DICOM application entity (its AE title and network address)."""
    return Participant(
        user_id=(ae_title or "").strip() or (address or "unknown"),
        requestor=requestor,
        role=role,
        alt_user_id=(ae_title or "").strip() or None,
        network_access_point=address or None,
    )


def person_participant(
    user_id: str, *, requestor: bool = True, role: str | None = None, name: str | None = None
) -> Participant:
    return Participant(user_id=user_id, requestor=requestor, role=role, user_name=name)


def os_user(uid: int | None = None, pid: int | None = None) -> Participant:
    """The local operating-system user (a CLI user or a control-socket peer) as requestor."""
    uid = os.getuid() if uid is None else uid
    try:
        import pwd

        name = pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        name = str(uid)
    return Participant(
        user_id=name,
        requestor=True,
        alt_user_id=f"uid={uid}" + (f" pid={pid}" if pid is not None else ""),
        network_access_point=socket.gethostname(),
    )


def _is_ip(value: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in value else socket.AF_INET, value)
    except OSError:
        return False
    return True


def _clean(text: str) -> str:
    """Text for one log line: no raw newlines, no characters XML 1.0 cannot carry."""
    return "".join(
        " " if ch in "\r\n\t" else ch
        for ch in str(text)
        if ch in "\r\n\t" or (ord(ch) >= 0x20 and ord(ch) not in (0xFFFE, 0xFFFF))
    )


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(
        parent,
        tag,
        {"csd-code": code.code, "codeSystemName": code.system, "originalText": code.meaning},
    )


def _participant(root: ET.Element, p: Participant) -> None:
    attrs = {"UserID": _clean(p.user_id) or "unknown"}
    if p.alt_user_id:
        attrs["AlternativeUserID"] = _clean(p.alt_user_id)
    if p.user_name:
        attrs["UserName"] = _clean(p.user_name)
    attrs["UserIsRequestor"] = "true" if p.requestor else "false"
    if p.network_access_point:
        attrs["NetworkAccessPointID"] = _clean(p.network_access_point)
        attrs["NetworkAccessPointTypeCode"] = "2" if _is_ip(p.network_access_point) else "1"
    element = ET.SubElement(root, "ActiveParticipant", attrs)
    if p.role:
        _coded(element, "RoleIDCode", ROLES[p.role])
    if p.media_type:
        media = ET.SubElement(element, "MediaIdentifier")
        _coded(media, "MediaType", MEDIA_TYPES[p.media_type])


def _object(root: ET.Element, obj: ParticipantObject) -> None:
    attrs = {
        "ParticipantObjectID": _clean(obj.object_id),
        "ParticipantObjectTypeCode": obj.type_code,
    }
    if obj.role:
        attrs["ParticipantObjectTypeCodeRole"] = obj.role
    element = ET.SubElement(root, "ParticipantObjectIdentification", attrs)
    _coded(element, "ParticipantObjectIDTypeCode", obj.id_type)
    if obj.name:
        ET.SubElement(element, "ParticipantObjectName").text = _clean(obj.name)
    elif obj.query is not None:
        ET.SubElement(element, "ParticipantObjectQuery").text = base64.b64encode(obj.query).decode(
            "ascii"
        )
    for key, value in obj.details.items():
        ET.SubElement(
            element,
            "ParticipantObjectDetail",
            {"type": key, "value": base64.b64encode(str(value).encode("utf-8")).decode("ascii")},
        )


def _study_object(root: ET.Element, study: Study) -> None:
    element = ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": _clean(study.uid),
            "ParticipantObjectTypeCode": TYPE_SYSTEM,
            "ParticipantObjectTypeCodeRole": ROLE_REPORT,
        },
    )
    _coded(element, "ParticipantObjectIDTypeCode", STUDY_UID_TYPE)
    # The schema wants a name or a query: the study description when known, else the UID.
    ET.SubElement(element, "ParticipantObjectName").text = _clean(study.description or study.uid)
    if study.accession or study.sop_classes:
        description = ET.SubElement(element, "ParticipantObjectDescription")
        if study.accession:
            ET.SubElement(description, "Accession", {"Number": _clean(study.accession)})
        for uid, count in sorted(study.sop_classes.items()):
            ET.SubElement(description, "SOPClass", {"UID": uid, "NumberOfInstances": str(count)})


def _patient_objects(root: ET.Element, studies: Sequence[Study]) -> None:
    seen: set[str] = set()
    for study in studies:
        pid = study.patient_id
        if pid is None or pid in seen:
            continue
        seen.add(pid)
        element = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                # An empty Patient ID is still a patient; the schema wants a token.
                "ParticipantObjectID": _clean(pid) or "(no Patient ID)",
                "ParticipantObjectTypeCode": TYPE_PERSON,
                "ParticipantObjectTypeCodeRole": ROLE_PATIENT,
            },
        )
        _coded(element, "ParticipantObjectIDTypeCode", PATIENT_NUMBER_TYPE)
        ET.SubElement(element, "ParticipantObjectName").text = _clean(
            study.patient_name or pid or "(no Patient ID)"
        )


def _outcome(value: int | str) -> int:
    if isinstance(value, str):
        if value not in OUTCOMES:
            raise ValueError(f"unknown outcome {value!r}")
        return OUTCOMES[value]
    if value not in OUTCOME_NAMES:
        raise ValueError(f"outcome must be 0, 4, 8 or 12, not {value!r}")
    return value


def build_message(
    event: str,
    *,
    event_type: str | Sequence[str] | None = None,
    outcome: int | str = 0,
    description: str = "",
    action: str | None = None,
    participants: Sequence[Participant] = (),
    studies: Sequence[Study] = (),
    objects: Sequence[ParticipantObject] = (),
    when: datetime | None = None,
    source_id: str | None = None,
) -> str:
    """One DICOM audit message as XML text on one line."""
    if event not in EVENT_IDS:
        raise ValueError(f"unknown audit event {event!r}; one of {', '.join(EVENT_IDS)}")
    if not participants:
        raise ValueError("an audit message needs at least one active participant")
    when = when or datetime.now(UTC)
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": action or DEFAULT_ACTIONS[event],
            "EventDateTime": when.astimezone(UTC).isoformat(timespec="milliseconds"),
            "EventOutcomeIndicator": str(_outcome(outcome)),
        },
    )
    _coded(ident, "EventID", EVENT_IDS[event])
    types = [event_type] if isinstance(event_type, str) else list(event_type or ())
    for name in types:
        _coded(ident, "EventTypeCode", EVENT_TYPES[name])
    if description:
        ET.SubElement(ident, "EventOutcomeDescription").text = _clean(description)
    for p in participants:
        _participant(root, p)
    sink = _SINK
    source = ET.SubElement(
        root,
        "AuditSourceIdentification",
        {"AuditSourceID": _clean(source_id or (sink.source_id if sink else APP_NAME))},
    )
    # 4: application server process (the appliance's daemon and its commands).
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4"})
    for study in studies:
        _study_object(root, study)
    _patient_objects(root, studies)
    for obj in objects:
        _object(root, obj)
    return ET.tostring(root, encoding="unicode")


def emit(
    event: str,
    *,
    event_type: str | Sequence[str] | None = None,
    outcome: int | str = 0,
    description: str = "",
    action: str | None = None,
    participants: Sequence[Participant] = (),
    local_role: str | None = None,
    local_requestor: bool = False,
    include_local: bool = True,
    studies: Sequence[Study] = (),
    objects: Sequence[ParticipantObject] = (),
    when: datetime | None = None,
) -> str | None:
    """Record one audit event; returns the XML written, or None when nothing was written.

    ``event`` is an ``EVENT_IDS`` key, ``event_type`` ``EVENT_TYPES`` key(s), ``outcome`` 0/4/8/12
    or success/minor/serious/major. This application is added as a participant (with
    ``local_role``, a ``ROLES`` key) unless ``include_local`` is false. Never raises.
    """
    try:
        everyone = list(participants)
        if include_local:
            everyone.append(local_participant(local_role, requestor=local_requestor))
        text = build_message(
            event,
            event_type=event_type,
            outcome=outcome,
            description=description,
            action=action,
            participants=everyone,
            studies=studies,
            objects=objects,
            when=when,
        )
    except Exception:
        LOG.exception("audit message %s could not be built", event)
        return None
    sink = _SINK
    if sink is None:
        LOG.debug("audit (not configured): %s", text)
        return None
    try:
        _append(sink, text, when or datetime.now(UTC))
    except OSError as exc:
        LOG.error("audit log %s cannot be written: %s", sink.data_dir / AUDIT_DIR, exc)
    if sink.sender is not None:
        sink.sender.submit(text)
    return text


# --- the local log ---------------------------------------------------------------------------


def audit_dir(data_dir: Path) -> Path:
    return Path(data_dir) / AUDIT_DIR


def log_path(data_dir: Path, when: datetime) -> Path:
    return audit_dir(data_dir) / f"audit-{when.astimezone(UTC):%Y-%m}.log"


def _append(sink: _Sink, text: str, when: datetime) -> None:
    path = log_path(sink.data_dir, when)
    data = text.encode("utf-8") + b"\n"
    with _LOCK:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Read-write only to look at the last byte; every write still goes to the end.
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if path.name not in sink.checked:
                # A writer killed mid-line left no newline: start ours on a fresh line.
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data
                sink.checked.add(path.name)
            # One write: O_APPEND makes it land whole after every other writer's lines.
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"short write to {path} ({written} of {len(data)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)


# --- reading the log -------------------------------------------------------------------------


@dataclass
class Entry:
    """A parsed audit message, with the summary the CLI and the API show."""

    time: datetime
    event: str
    event_code: str
    event_types: list[str]
    action: str
    outcome: int
    description: str
    participants: list[dict[str, Any]]
    patients: list[dict[str, str]]
    studies: list[str]
    objects: list[dict[str, str]]
    xml: str

    def summary(self) -> dict[str, Any]:
        requestors = [p for p in self.participants if p.get("requestor")]
        return {
            "time": self.time.isoformat(timespec="milliseconds"),
            "event": self.event,
            "event_code": self.event_code,
            "event_types": self.event_types,
            "action": self.action,
            "outcome": self.outcome,
            "outcome_name": OUTCOME_NAMES.get(self.outcome, str(self.outcome)),
            "description": self.description,
            "user": requestors[0]["user_id"] if requestors else "",
            "participants": self.participants,
            "patients": self.patients,
            "studies": self.studies,
            "objects": self.objects,
        }


_EVENT_BY_CODE = {code.code: name for name, code in EVENT_IDS.items()}
_TYPE_BY_CODE = {code.code: name for name, code in EVENT_TYPES.items()}
_ROLE_BY_CODE = {code.code: name for name, code in ROLES.items()}


def parse(line: str) -> Entry:
    """An Entry from one log line; raises ValueError when it is not an audit message."""
    try:
        root = ET.fromstring(line)
    except ET.ParseError as exc:
        raise ValueError(f"not XML: {exc}") from exc
    ident = root.find("EventIdentification")
    event_id = ident.find("EventID") if ident is not None else None
    if root.tag != "AuditMessage" or ident is None or event_id is None:
        raise ValueError("not a DICOM audit message")
    code = event_id.get("csd-code", "")
    participants = []
    for p in root.findall("ActiveParticipant"):
        role = p.find("RoleIDCode")
        participants.append(
            {
                "user_id": p.get("UserID", ""),
                "alt_user_id": p.get("AlternativeUserID", ""),
                "user_name": p.get("UserName", ""),
                "requestor": p.get("UserIsRequestor") == "true",
                "network_access_point": p.get("NetworkAccessPointID", ""),
                "role": _ROLE_BY_CODE.get(role.get("csd-code", ""), "") if role is not None else "",
            }
        )
    patients: list[dict[str, str]] = []
    studies: list[str] = []
    objects: list[dict[str, str]] = []
    for obj in root.findall("ParticipantObjectIdentification"):
        id_type = obj.find("ParticipantObjectIDTypeCode")
        type_code = id_type.get("csd-code", "") if id_type is not None else ""
        object_id = obj.get("ParticipantObjectID", "")
        name = obj.findtext("ParticipantObjectName") or ""
        if obj.get("ParticipantObjectTypeCodeRole") == ROLE_PATIENT:
            patients.append({"id": object_id, "name": name})
        elif type_code == STUDY_UID_TYPE.code:
            studies.append(object_id)
        else:
            objects.append({"id": object_id, "type": type_code, "name": name})
    return Entry(
        time=datetime.fromisoformat(ident.get("EventDateTime", "")),
        event=_EVENT_BY_CODE.get(code, code),
        event_code=code,
        event_types=[
            _TYPE_BY_CODE.get(t.get("csd-code", ""), t.get("originalText", ""))
            for t in ident.findall("EventTypeCode")
        ],
        action=ident.get("EventActionCode", ""),
        outcome=int(ident.get("EventOutcomeIndicator", "0")),
        description=ident.findtext("EventOutcomeDescription") or "",
        participants=participants,
        patients=patients,
        studies=studies,
        objects=objects,
        xml=line,
    )


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``24h``, ``7d``, ``30m``, ``2026-11-01`` or an ISO date-time (UTC when no zone)."""
    now = now or datetime.now(UTC)
    value = text.strip()
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    if len(value) > 1 and value[-1] in units and value[:-1].isdigit():
        return now - timedelta(**{units[value[-1]]: int(value[:-1])})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(
            f"--since {text!r}: use a date (2026-11-01), a date-time, or an age like 24h or 7d"
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _month_files(data_dir: Path, since: datetime | None) -> list[Path]:
    folder = audit_dir(data_dir)
    if not folder.is_dir():
        return []
    files = sorted(folder.glob("audit-????-??.log"))
    if since is not None:
        first = f"audit-{since.astimezone(UTC):%Y-%m}.log"
        files = [f for f in files if f.name >= first]
    return files


def read(
    data_dir: Path,
    *,
    since: datetime | None = None,
    event: str | None = None,
    damaged: list[str] | None = None,
) -> Iterator[Entry]:
    """Messages in log order, oldest first; lines that do not parse go to ``damaged``."""
    if event is not None and event not in EVENT_IDS and event not in EVENT_TYPES:
        raise ValueError(f"unknown event {event!r}; one of {', '.join([*EVENT_IDS, *EVENT_TYPES])}")
    for path in _month_files(data_dir, since):
        with open(path, "rb") as handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    # The last line of a writer that was killed mid-write (or still writing).
                    if damaged is not None and raw.strip():
                        damaged.append(f"{path.name}: incomplete last line")
                    continue
                if not raw.strip():
                    continue
                try:
                    entry = parse(raw.decode("utf-8").rstrip("\n"))
                except (ValueError, UnicodeDecodeError) as exc:
                    if damaged is not None:
                        damaged.append(f"{path.name}: {exc}")
                    continue
                if since is not None and entry.time < since:
                    continue
                if event is not None and event != entry.event and event not in entry.event_types:
                    continue
                yield entry


def list_entries(
    data_dir: Path,
    *,
    since: datetime | None = None,
    event: str | None = None,
    limit: int | None = None,
) -> list[Entry]:
    """The newest ``limit`` matching messages, oldest first."""
    entries: collections.deque[Entry] = collections.deque(maxlen=limit or None)
    entries.extend(read(data_dir, since=since, event=event))
    return list(entries)


def audit_log_object(data_dir: Path) -> ParticipantObject:
    """The audit log itself as a participant object (for Audit Log Used)."""
    return ParticipantObject(
        object_id=audit_dir(data_dir).resolve().as_uri(),
        id_type=URI_TYPE,
        role=ROLE_SECURITY_RESOURCE,
        name="Security Audit Log",
    )


# --- syslog over TLS (RFC 5424 / RFC 5425) -----------------------------------------------------


def syslog_frame(text: str, *, hostname: str, when: datetime | None = None) -> bytes:
    """One RFC 5424 message in an RFC 5425 octet-counting frame (``LEN SP MSG``)."""
    when = when or datetime.now(UTC)
    header = (
        f"<{SYSLOG_PRI}>1 {when.astimezone(UTC).isoformat(timespec='milliseconds')} "
        f"{_syslog_field(hostname, 255)} {APP_NAME} {os.getpid()} {SYSLOG_MSGID} - "
    )
    # MSG is UTF-8 with a BOM, as RFC 5424 section 6.4 asks for MSG-UTF8.
    message = header.encode("ascii") + b"\xef\xbb\xbf" + text.encode("utf-8")
    return str(len(message)).encode("ascii") + b" " + message


def _syslog_field(value: str, size: int) -> str:
    cleaned = "".join(ch for ch in value if 33 <= ord(ch) <= 126)[:size]
    return cleaned or "-"


def syslog_context(data_dir: Path) -> ssl.SSLContext:
    """TLS client context for the collector: trusted CAs of DATA/tls/trusted, our certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    tls_dir = Path(data_dir) / "tls"
    trusted = sorted((tls_dir / "trusted").glob("*.pem")) if (tls_dir / "trusted").is_dir() else []
    for ca in trusted:
        context.load_verify_locations(cafile=str(ca))
    if not trusted:
        context.load_default_certs()
    key, cert = tls_dir / "key.pem", tls_dir / "cert.pem"
    if key.exists() and cert.exists():
        # RFC 5425 asks for mutual authentication: present our certificate when we have one.
        passphrase_file = tls_dir / "passphrase"
        password = passphrase_file.read_bytes().strip() if passphrase_file.exists() else None
        chain = tls_dir / "chain.pem"
        certfile = str(cert)
        if chain.exists():
            combined = cert.read_bytes() + b"\n" + chain.read_bytes()
            # load_cert_chain wants one file: cert then intermediates.
            tmp = tls_dir / ".syslog-chain.pem"
            tmp.write_bytes(combined)
            certfile = str(tmp)
        context.load_cert_chain(certfile, str(key), password=password)
    return context


class SyslogSender:
    """Sends audit messages to a collector from a background thread.

    A bounded queue (oldest dropped first, counted) sits between ``submit`` and the network,
    so a dead or slow collector never holds up the caller.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool,
        data_dir: Path,
        hostname: str | None = None,
        queue_size: int = SYSLOG_QUEUE,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.data_dir = Path(data_dir)
        self.hostname = hostname or socket.gethostname()
        self._queue: collections.deque[str] = collections.deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._context = context
        self._stop = False
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.dropped = 0
        self.sent = 0
        self.last_error = ""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def submit(self, text: str) -> None:
        with self._cond:
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(text)
            self._cond.notify()

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {
                "host": self.host,
                "port": self.port,
                "tls": self.tls,
                "connected": self._sock is not None,
                "queued": len(self._queue),
                "sent": self.sent,
                "dropped": self.dropped,
                "last_error": self.last_error,
            }

    def close(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue and self._sock is not None and time.monotonic() < deadline:
                self._cond.wait(0.05)
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
        self._disconnect()

    def _connect(self) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout=SYSLOG_TIMEOUT)
        if not self.tls:
            return raw
        try:
            if self._context is None:
                self._context = syslog_context(self.data_dir)
            return self._context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _run(self) -> None:
        backoff = 0.5
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                text = self._queue[0]
            try:
                if self._sock is None:
                    self._sock = self._connect()
                    LOG.info("audit syslog connected to %s:%d", self.host, self.port)
                self._sock.sendall(syslog_frame(text, hostname=self.hostname))
            except (OSError, ssl.SSLError, ValueError) as exc:
                if self.last_error != str(exc):
                    LOG.warning("audit syslog %s:%d: %s", self.host, self.port, exc)
                self.last_error = str(exc)
                self._disconnect()
                with self._cond:
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            with self._cond:
                # Sent: drop it unless it was dropped for space meanwhile.
                if self._queue and self._queue[0] is text:
                    self._queue.popleft()
                self.sent += 1
                self._cond.notify_all()


def iter_codes() -> Iterable[tuple[str, Code]]:
    """Every event and event type name with its code (for help texts and the console)."""
    yield from EVENT_IDS.items()
    yield from EVENT_TYPES.items()


# --- who is acting ---------------------------------------------------------------------------

_ACTOR: contextvars.ContextVar[Participant | None] = contextvars.ContextVar(
    "audit_actor", default=None
)


@contextlib.contextmanager
def acting_as(participant: Participant | None) -> Iterator[None]:
    """Within the block, messages name ``participant`` as the requesting user."""
    token = _ACTOR.set(participant)
    try:
        yield
    finally:
        _ACTOR.reset(token)


def actor() -> Participant | None:
    return _ACTOR.get()


def control_caller(uid: int, pid: int, role: str) -> Participant:
    """A control-socket client: its operating-system user, process and role."""
    person = os_user(uid, pid)
    person.user_name = role
    return person


def _requestors() -> list[Participant]:
    current = _ACTOR.get()
    return [current] if current is not None else []


# --- hooks: associations and DIMSE services ----------------------------------------------------


def _assoc_identity(assoc: Any) -> tuple[str, str, str]:
    """Calling AE title, peer IP address and called AE title of an association we accept."""
    requestor = assoc.requestor
    calling = str(requestor.ae_title or "").strip()
    primitive = requestor.primitive
    if not calling and primitive is not None:
        calling = str(primitive.calling_ae_title or "").strip()
    called = str(primitive.called_ae_title).strip() if primitive is not None else ""
    return calling, str(requestor.address or ""), called


def _peer_certificate(assoc: Any) -> str | None:
    """The TLS client certificate's subject CN, when the association runs over TLS."""
    try:
        sock = assoc.dul.socket.socket
        if isinstance(sock, ssl.SSLSocket):
            cert = sock.getpeercert() or {}
            for rdn in cert.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        return f"CN={value}"
    except Exception:  # an auditing detail must never disturb the association
        return None
    return None


def _assoc_peer(assoc: Any, *, role: str | None, requestor: bool) -> Participant:
    calling, address, _called = _assoc_identity(assoc)
    peer = peer_participant(calling, address, role=role, requestor=requestor)
    subject = _peer_certificate(assoc)
    if subject:
        peer.user_name = subject
    return peer


def _node_object(ae_title: str, address: str, reason: str) -> ParticipantObject:
    return ParticipantObject(
        object_id=f"{ae_title or '?'}@{address or '?'}",
        id_type=NODE_ID_TYPE,
        name=ae_title or address or "unknown",
        details={"Alert Description": reason} if reason else {},
    )


def association_accepted(assoc: Any) -> None:
    """Security Alert / Node Authentication, success: a peer's association was accepted."""
    calling, address, called = _assoc_identity(assoc)
    emit(
        "security-alert",
        event_type="node-authentication",
        outcome=0,
        description=f"association accepted: calling AE {calling!r}, called AE {called!r}",
        participants=[_assoc_peer(assoc, role="source", requestor=True)],
        local_role="destination",
        objects=[_node_object(calling, address, "association accepted")],
    )


def association_rejected(assoc: Any, why: str) -> None:
    """Security Alert / Node Authentication, minor failure: an association was rejected."""
    calling, address, called = _assoc_identity(assoc)
    emit(
        "security-alert",
        event_type="node-authentication",
        outcome=4,
        description=f"association rejected: calling AE {calling!r}, called AE {called!r}: {why}",
        participants=[_assoc_peer(assoc, role="source", requestor=True)],
        local_role="destination",
        objects=[_node_object(calling, address, f"association rejected: {why}")],
    )


class ReceivedTally:
    """Instances one association stored, per study, for its DICOM Instances Transferred."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.studies: dict[str, Study] = {}
        self.failed = 0

    def add(self, ds: Any, sop_class_uid: str) -> None:
        def text(keyword: str) -> str | None:
            value = getattr(ds, keyword, None) if ds is not None else None
            return None if value is None else str(value)

        uid = text("StudyInstanceUID") or "(unknown study)"
        with self._lock:
            study = self.studies.get(uid)
            if study is None:
                study = self.studies[uid] = Study(
                    uid,
                    patient_id=text("PatientID") or "",
                    patient_name=text("PatientName"),
                    accession=text("AccessionNumber"),
                    description=text("StudyDescription"),
                )
            study.sop_classes[sop_class_uid] = study.sop_classes.get(sop_class_uid, 0) + 1

    def fail(self) -> None:
        with self._lock:
            self.failed += 1


def instances_received(
    calling_ae: str, address: str, called_ae: str, tally: ReceivedTally, how: str
) -> None:
    """One DICOM Instances Transferred (Create) per study an association stored into."""
    if not tally.studies and not tally.failed:
        return
    peer = peer_participant(calling_ae, address, role="source", requestor=True)
    failed = f", {tally.failed} C-STORE failed" if tally.failed else ""
    if not tally.studies:
        emit(
            "instances-transferred",
            action="C",
            outcome=8,
            description=f"association from {calling_ae!r} {how}: nothing stored{failed}",
            participants=[peer],
            local_role="destination",
        )
        return
    for study in list(tally.studies.values()):
        count = sum(study.sop_classes.values())
        emit(
            "instances-transferred",
            action="C",
            outcome=4 if tally.failed else 0,
            description=f"{count} instances received from {calling_ae!r} (called AE "
            f"{called_ae!r}), association {how}{failed}",
            participants=[peer],
            local_role="destination",
            studies=[study],
        )


def _status_outcome(status: Any) -> tuple[int, str]:
    code = getattr(status, "Status", status)
    try:
        value = int(code)
    except (TypeError, ValueError):
        return 8, "no final status"
    comment = str(getattr(status, "ErrorComment", "") or "")
    text = f"status 0x{value:04X}" + (f": {comment}" if comment else "")
    if value == 0 or value == 0xFE00:
        return 0, text
    if value in (0xB000, 0xB007, 0xB006, 0x0107, 0x0116) or 0xB000 <= value <= 0xBFFF:
        return 4, text
    return 8, text


def query(
    assoc: Any, sop_class_uid: str, identifier: Any, transfer_syntax: str, status: Any
) -> None:
    """Query (110112): a C-FIND we answered, with its identifier (bytes or the received
    stream) and transfer syntax."""
    if hasattr(identifier, "getvalue"):
        identifier = identifier.getvalue()
    outcome, text = _status_outcome(status)
    emit(
        "query",
        outcome=outcome,
        description=f"C-FIND {text}",
        participants=[_assoc_peer(assoc, role="source", requestor=True)],
        local_role="destination",
        objects=[
            ParticipantObject(
                object_id=sop_class_uid,
                id_type=SOP_CLASS_UID_TYPE,
                role=ROLE_REPORT,
                query=bytes(identifier or b""),
                details={"TransferSyntax": transfer_syntax},
            )
        ],
    )


def studies_from_uids(
    archive: Any, sop_instance_uids: Iterable[str], study_uids: Iterable[str] = ()
) -> list[Study]:
    """Study objects (patient, accession, SOP classes and counts) from the archive index."""
    studies: dict[str, Study] = {}

    def study_for(uid: str) -> Study:
        study = studies.get(uid)
        if study is None:
            row = None
            try:
                row = archive.study(uid) if archive is not None else None
            except Exception:
                row = None
            row = row or {}
            study = studies[uid] = Study(
                uid,
                patient_id=row.get("patient_id") if row else None,
                patient_name=row.get("patient_name"),
                accession=row.get("accession_number") or None,
                description=row.get("study_description") or None,
            )
        return study

    for uid in study_uids:
        study_for(uid)
    for uid in sop_instance_uids:
        try:
            record = archive.instance(uid) if archive is not None else None
        except Exception:
            record = None
        if record is None:
            continue
        study = study_for(record.study_uid)
        study.sop_classes[record.sop_class_uid] = study.sop_classes.get(record.sop_class_uid, 0) + 1
    return list(studies.values())


def retrieve(
    assoc: Any, kind: str, server: Any, instances: Sequence[Any], tally: Any, node: Any = None
) -> None:
    """DICOM Instances Transferred (Read) for a C-MOVE (to ``node``) or C-GET we served, one
    message per study."""
    archive = getattr(server, "archive", None)
    requestor = _assoc_peer(assoc, role=None, requestor=True)
    if node is None:  # C-GET: the requestor receives on its own association
        requestor.role = "destination"
        participants = [requestor]
    else:
        participants = [
            requestor,
            peer_participant(node.ae_title, node.host, role="destination", requestor=False),
        ]
    completed, failed = int(tally.completed), int(tally.failed)
    outcome, text = _status_outcome(tally.final)
    if failed and outcome == 0:
        outcome = 4
    studies: dict[str, Study] = {}
    for record in instances:
        study = studies.get(record.study_uid)
        if study is None:
            study = studies[record.study_uid] = studies_from_uids(archive, [], [record.study_uid])[
                0
            ]
        study.sop_classes[record.sop_class_uid] = study.sop_classes.get(record.sop_class_uid, 0) + 1
    for study in studies.values():
        emit(
            "instances-transferred",
            action="R",
            outcome=outcome,
            description=f"{kind}: {completed} sent, {failed} failed, {text}",
            participants=participants,
            local_role="source",
            studies=[study],
        )


# --- hooks: jobs -------------------------------------------------------------------------------

# Media type of a burn profile or target.
_BURN_MEDIA = {"cd": "cd", "dvd": "dvd"}


def job_attempt(job: Any, archive: Any, config: Any, failure: Any = None) -> None:
    """The end of a job attempt that moved data: send/forward, retrieve, print, burn, import.
    Never raises."""
    try:
        _job_attempt(job, archive, config, failure)
    except Exception:
        LOG.exception("audit of job %s failed", getattr(job, "id", "?"))


def _job_attempt(job: Any, archive: Any, config: Any, failure: Any) -> None:
    kind = job.kind
    if kind not in ("send", "forward", "retrieve", "print", "burn", "import", "anonymize"):
        return
    done = [i for i in job.instances if i.status in ("success", "warning") and i.sop_instance_uid]
    failed = [i for i in job.instances if i.status == "failed"]
    params = job.params or {}
    study_uids = [u for u in params.get("study_uids") or [] if isinstance(u, str)]
    studies = studies_from_uids(archive, [i.sop_instance_uid for i in done], study_uids)
    if failure is not None and not done:
        outcome = 8
    elif failure is not None or failed:
        outcome = 4
    else:
        outcome = 0
    reason = f": {getattr(failure, 'message', failure)}" if failure is not None else ""
    description = (
        f"{kind} job {job.id} attempt {job.attempts} to {job.target}: {len(done)} done, "
        f"{len(failed)} failed{reason}"
    )
    participants = list(_requestors())
    if kind in ("send", "forward", "retrieve"):
        host = None
        ae = job.target
        try:
            node = config.node(job.target)
            host, ae = node.host, node.ae_title
        except Exception:
            pass
        incoming = kind == "retrieve"
        participants.append(
            peer_participant(
                ae, host, role="source" if incoming else "destination", requestor=False
            )
        )
        emit(
            "instances-transferred",
            action="C" if incoming else "R",
            outcome=outcome,
            description=description,
            participants=participants,
            local_role="destination" if incoming else "source",
            local_requestor=True,
            studies=studies,
        )
        return
    if kind == "anonymize":
        emit(
            "instances-accessed",
            action="C",
            outcome=outcome,
            description=f"de-identification: {description}",
            participants=participants,
            local_requestor=True,
            studies=studies,
        )
        return
    if kind == "print":
        media = Participant(
            user_id=job.target, role="destination-media", media_type="film", requestor=False
        )
    elif kind == "burn":
        profile = str(params.get("profile") or params.get("media") or "").lower()
        media_type = "dvd" if "dvd" in profile else "cd"
        media = Participant(
            user_id=str(params.get("device") or job.target),
            alt_user_id=str(params.get("label") or "") or None,
            role="destination-media",
            media_type=_BURN_MEDIA.get(media_type, "cd"),
            requestor=False,
        )
    else:  # import
        source = str(params.get("source") or params.get("path") or job.target)
        media = Participant(
            user_id=source,
            role="source-media",
            media_type="uri" if source.startswith("/") else "cd",
            requestor=False,
        )
    participants.append(media)
    emit(
        "export" if kind != "import" else "import",
        outcome=outcome,
        description=description,
        participants=participants,
        local_requestor=not _requestors(),
        studies=studies,
    )


# --- hooks: configuration and service mode -----------------------------------------------------


def config_changed(
    what: str, *, event_type: str = "software-configuration", subject: str = "configuration"
) -> None:
    """Security Alert for a configuration change (setting, node, password...); ``subject``
    names the item changed (``setting/job_workers``, ``node/pacs``)."""
    requestors = _requestors() or [os_user()]
    sink = _SINK
    where = (sink.data_dir / "config.json").resolve().as_uri() if sink else "config.json"
    emit(
        "security-alert",
        event_type=event_type,
        description=what,
        participants=requestors,
        objects=[
            ParticipantObject(
                object_id=f"{where}#{subject}",
                id_type=URI_TYPE,
                role=ROLE_SECURITY_RESOURCE,
                name=subject,
                details={"Alert Description": what},
            )
        ],
    )


def service_login(uid: int, pid: int, *, success: bool, reason: str = "") -> None:
    """User Authentication / Login for a field-service unlock (failed: outcome 4)."""
    emit(
        "user-authentication",
        event_type="login",
        outcome=0 if success else 4,
        description=("service mode unlocked" if success else f"service unlock failed: {reason}"),
        participants=[control_caller(uid, pid, "service")],
    )


def service_logout(uid: int, pid: int, reason: str) -> None:
    """User Authentication / Logout: service mode locked again (asked for or idle)."""
    emit(
        "user-authentication",
        event_type="logout",
        description=reason,
        participants=[control_caller(uid, pid, "service")],
    )


def application(start: bool) -> None:
    """Application Activity: the daemon started or stopped (by this process's user)."""
    user = os_user()
    user.role = "application-launcher"
    emit(
        "application-activity",
        event_type="application-start" if start else "application-stop",
        participants=[user],
        local_role="application",
    )


# Settings whose change is a security (or network) configuration change rather than software.
_SECURITY_SETTINGS = (
    "tls_",
    "audit_",
    "accept_unknown_calling_ae",
    "check_called_ae",
    "control_group",
    "service_idle_minutes",
    "signature_",
)
_NETWORK_SETTINGS = ("ae_title", "port", "bind_address", "print_port", "print_ae_title")


def setting_changed(key: str, value: object) -> None:
    """Security Alert for ``config set``: security, network or software configuration."""
    if key.startswith(_SECURITY_SETTINGS):
        kind = "security-configuration"
    elif key in _NETWORK_SETTINGS:
        kind = "network-configuration"
    else:
        kind = "software-configuration"
    config_changed(f"setting {key} = {value!r}", event_type=kind, subject=f"setting/{key}")


def list_op(data_dir: Path, args: dict[str, Any]) -> dict[str, Any]:
    """The ``audit.list`` control op: {since, event, text, limit, xml} -> newest messages.

    Raises ValueError for bad arguments. Reading the trail is audited (Audit Log Used)."""
    since_arg, event, text = args.get("since"), args.get("event"), args.get("text")
    limit, with_xml = args.get("limit", 500), args.get("xml", False)
    for name, value in (("since", since_arg), ("event", event), ("text", text)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be text")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise ValueError("limit must be a number from 1 to 10000")
    since = parse_since(since_arg) if since_arg else None
    damaged: list[str] = []
    matches: collections.deque[Entry] = collections.deque(maxlen=limit)
    needle = (text or "").casefold()
    for entry in read(data_dir, since=since, event=event or None, damaged=damaged):
        if needle and needle not in entry.xml.casefold():
            continue
        matches.append(entry)
    entries = []
    for entry in matches:
        summary = entry.summary()
        if with_xml:
            summary["xml"] = entry.xml
        entries.append(summary)
    emit(
        "audit-log-used",
        description=f"audit.list returned {len(entries)} messages",
        participants=[actor() or os_user()],
        objects=[audit_log_object(data_dir)],
    )
    return {
        "entries": entries,
        "count": len(entries),
        "damaged": len(damaged),
        "syslog": syslog_status(),
    }


def tls_handshake_failed(address: str, port: int, reason: str, nodes: Sequence[str]) -> None:
    """Security Alert / Node Authentication, minor failure: a TLS handshake was refused."""
    known = f" (node {', '.join(nodes)})" if nodes else ""
    emit(
        "security-alert",
        event_type="node-authentication",
        outcome=4,
        description=f"TLS handshake from {address}:{port}{known} failed: {reason}",
        participants=[peer_participant(None, address, role="source", requestor=True)],
        local_role="destination",
        objects=[_node_object("", address, f"TLS handshake failed: {reason}")],
    )
