"""Audit trail: DICOM audit messages (PS3.15 A.5) in DATA/audit and over syslog-TLS.

Every message is checked against the A.5.1 schema's structure (element order, mandatory
attributes, value sets) and against what A.5.3 asks of its event. Real associations (DCMTK
storescu, findscu, movescu, echoscu) against a daemon produce the expected messages with the
right identities; a service unlock, a configuration change and reading the trail are audited.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from appliance import audit
from appliance.config import ConfigStore
from appliance.control import control_socket_path
from appliance.control_client import ControlClient
from tests.factories import write_ct_series
from tests.peers import LOOPBACK, Daemon, StoreSCP, appliance_cmd, dcmtk, free_port, run
from tests.tls_helpers import install_identity, make_ca, make_cert, write_pem

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"

# --- the A.5.1 schema, as checks ----------------------------------------------------------------

_CODED_ATTRS = {"csd-code", "codeSystemName", "displayName", "originalText"}


def _coded(element: ET.Element) -> tuple[str, str]:
    assert set(element.attrib) <= _CODED_ATTRS, element.attrib
    for required in ("csd-code", "codeSystemName", "originalText"):
        assert element.get(required), f"{element.tag} lacks {required}"
    return element.get("csd-code", ""), element.get("codeSystemName", "")


def _order(element: ET.Element, allowed: list[str]) -> None:
    """Children appear in the schema's order (each tag's run before the next tag's)."""
    positions = [allowed.index(child.tag) for child in element]  # ValueError: unknown element
    assert positions == sorted(positions), [child.tag for child in element]


def validate_schema(xml: str) -> ET.Element:
    """Raise AssertionError unless ``xml`` fits the DICOM audit message schema (A.5.1)."""
    assert "\n" not in xml
    root = ET.fromstring(xml)
    assert root.tag == "AuditMessage" and not root.attrib
    tags = [child.tag for child in root]
    assert tags[0] == "EventIdentification" and tags.count("EventIdentification") == 1
    source_at = tags.index("AuditSourceIdentification")
    assert tags.count("AuditSourceIdentification") == 1
    assert tags[1:source_at] and set(tags[1:source_at]) == {"ActiveParticipant"}
    assert set(tags[source_at + 1 :]) <= {"ParticipantObjectIdentification"}

    ident = root[0]
    assert set(ident.attrib) <= {"EventActionCode", "EventDateTime", "EventOutcomeIndicator"}
    assert ident.get("EventActionCode", "E") in {"C", "R", "U", "D", "E"}
    assert ident.get("EventOutcomeIndicator") in {"0", "4", "8", "12"}
    stamp = datetime.fromisoformat(ident.get("EventDateTime", ""))
    assert stamp.tzinfo is not None
    _order(ident, ["EventID", "EventTypeCode", "EventOutcomeDescription"])
    assert [c.tag for c in ident].count("EventID") == 1
    for child in ident:
        if child.tag != "EventOutcomeDescription":
            _coded(child)

    for participant in root.findall("ActiveParticipant"):
        assert set(participant.attrib) <= {
            "UserID",
            "AlternativeUserID",
            "UserName",
            "UserIsRequestor",
            "NetworkAccessPointID",
            "NetworkAccessPointTypeCode",
        }
        assert participant.get("UserID")
        assert participant.get("UserIsRequestor") in {"true", "false"}
        if participant.get("NetworkAccessPointTypeCode"):
            assert participant.get("NetworkAccessPointTypeCode") in {"1", "2", "3", "4", "5"}
            assert participant.get("NetworkAccessPointID")
        _order(participant, ["RoleIDCode", "MediaIdentifier"])
        for role in participant.findall("RoleIDCode"):
            _coded(role)
        for media in participant.findall("MediaIdentifier"):
            assert [c.tag for c in media] == ["MediaType"]
            _coded(media[0])

    source = root.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID")
    assert set(source.attrib) <= {"AuditSourceID", "AuditEnterpriseSiteID"}
    for code in source:
        assert code.tag == "AuditSourceTypeCode" and code.get("csd-code")

    for obj in root.findall("ParticipantObjectIdentification"):
        assert obj.get("ParticipantObjectID")
        assert obj.get("ParticipantObjectTypeCode", "2") in {"1", "2", "3", "4"}
        assert int(obj.get("ParticipantObjectTypeCodeRole", "1")) in range(1, 27)
        children = [c.tag for c in obj]
        assert children[0] == "ParticipantObjectIDTypeCode"
        _coded(obj[0])
        # Exactly one of name or query, right after the ID type code.
        assert children[1] in {"ParticipantObjectName", "ParticipantObjectQuery"}
        assert (
            children.count("ParticipantObjectName") + children.count("ParticipantObjectQuery") == 1
        )
        _order(
            obj,
            [
                "ParticipantObjectIDTypeCode",
                "ParticipantObjectName",
                "ParticipantObjectQuery",
                "ParticipantObjectDetail",
                "ParticipantObjectDescription",
            ],
        )
        query = obj.find("ParticipantObjectQuery")
        if query is not None:
            base64.b64decode(query.text or "", validate=True)
        for detail in obj.findall("ParticipantObjectDetail"):
            assert set(detail.attrib) == {"type", "value"}
            base64.b64decode(detail.get("value", ""), validate=True)
        for description in obj.findall("ParticipantObjectDescription"):
            _order(
                description,
                [
                    "MPPS",
                    "Accession",
                    "SOPClass",
                    "ParticipantObjectContainsStudy",
                    "Encrypted",
                    "Anonymized",
                ],
            )
            for sop_class in description.findall("SOPClass"):
                int(sop_class.get("NumberOfInstances", "x"))
    return root


# --- what A.5.3 asks of each event ---------------------------------------------------------------


def _roles(root: ET.Element) -> dict[str, list[ET.Element]]:
    roles: dict[str, list[ET.Element]] = {}
    for participant in root.findall("ActiveParticipant"):
        for role in participant.findall("RoleIDCode"):
            roles.setdefault(role.get("csd-code", ""), []).append(participant)
    return roles


def _objects(root: ET.Element, type_code: str, role: str, id_type: str) -> list[ET.Element]:
    return [
        obj
        for obj in root.findall("ParticipantObjectIdentification")
        if obj.get("ParticipantObjectTypeCode") == type_code
        and obj.get("ParticipantObjectTypeCodeRole") == role
        and obj[0].get("csd-code") == id_type
    ]


def validate_event(xml: str) -> ET.Element:
    """The schema checks plus the event-specific requirements of PS3.15 A.5.3."""
    root = validate_schema(xml)
    ident = root[0]
    event_code, system = _coded(ident[0])
    assert system == "DCM"
    types = [t.get("csd-code") for t in ident.findall("EventTypeCode")]
    action = ident.get("EventActionCode")
    roles = _roles(root)
    requestors = [
        p for p in root.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true"
    ]
    patients = _objects(root, "1", "1", "2")
    studies = _objects(root, "2", "3", "110180")
    if event_code == "110100":  # Application Activity
        assert types and types[0] in {"110120", "110121"} and action == "E"
        assert "110150" in roles  # the application started or stopped
    elif event_code == "110101":  # Audit Log Used
        assert action == "R" and requestors
        logs = _objects(root, "2", "13", "12")
        assert logs and logs[0].findtext("ParticipantObjectName") == "Security Audit Log"
    elif event_code == "110104":  # DICOM Instances Transferred
        assert action in {"C", "R", "U"}
        assert "110153" in roles and "110152" in roles
        assert studies and patients
    elif event_code in {"110106", "110107"}:  # Export, Import
        media_role = "110154" if event_code == "110106" else "110155"
        assert action == ("R" if event_code == "110106" else "C")
        assert media_role in roles and roles[media_role][0].find("MediaIdentifier") is not None
        assert studies and patients
    elif event_code == "110112":  # Query
        assert action == "E"
        assert "110153" in roles and roles["110153"][0].get("UserIsRequestor") == "true"
        assert "110152" in roles
        queried = _objects(root, "2", "3", "110181")
        assert queried and queried[0].find("ParticipantObjectQuery") is not None
        details = {d.get("type") for d in queried[0].findall("ParticipantObjectDetail")}
        assert "TransferSyntax" in details
    elif event_code == "110113":  # Security Alert
        # The alert subject is optional (0..n); the reporting participant is not.
        assert action == "E" and types and root.findall("ActiveParticipant")
    elif event_code == "110114":  # User Authentication
        assert action == "E" and types and types[0] in {"110122", "110123"}
        assert requestors
    else:
        assert event_code in {c.code for c in audit.EVENT_IDS.values()}
    return root


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Path]:
    audit.configure(tmp_path)
    yield tmp_path
    audit.shutdown()


def _lines(data_dir: Path) -> list[str]:
    out: list[str] = []
    for path in sorted((data_dir / "audit").glob("audit-*.log")):
        out += [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    return out


def _study(**extra: object) -> audit.Study:
    values: dict = {
        "uid": "1.2.3.4",
        "patient_id": "PAT001",
        "patient_name": "DOE^JOHN",
        "accession": "ACC1",
        "sop_classes": {CT: 3},
    }
    values.update(extra)
    return audit.Study(**values)


# --- messages -------------------------------------------------------------------------------------


def test_every_kind_of_message_fits_the_schema_and_its_event(sink: Path) -> None:
    peer = audit.peer_participant("MODALITY", "10.0.0.7", role="source", requestor=True)
    media = audit.Participant("cdrw0", role="destination-media", media_type="cd")
    source_media = audit.Participant("/media/disc", role="source-media", media_type="cd")
    messages = [
        audit.emit(
            "application-activity", event_type="application-start", local_role="application"
        ),
        audit.emit(
            "instances-transferred",
            participants=[peer],
            local_role="destination",
            studies=[_study()],
        ),
        audit.emit("export", participants=[media], local_requestor=True, studies=[_study()]),
        audit.emit("import", participants=[source_media], local_requestor=True, studies=[_study()]),
        audit.emit(
            "query",
            participants=[peer],
            local_role="destination",
            objects=[
                audit.ParticipantObject(
                    STUDY_ROOT_FIND,
                    audit.SOP_CLASS_UID_TYPE,
                    role=audit.ROLE_REPORT,
                    query=b"\x08\x00\x52\x00",
                    details={"TransferSyntax": "1.2.840.10008.1.2.1"},
                )
            ],
        ),
        audit.emit(
            "user-authentication",
            event_type="login",
            participants=[audit.os_user()],
        ),
    ]
    audit.config_changed("setting port = 104", event_type="network-configuration")
    audit.emit(
        "audit-log-used", participants=[audit.os_user()], objects=[audit.audit_log_object(sink)]
    )
    lines = _lines(sink)
    assert len(lines) == 8
    assert all(m in lines for m in messages)
    for line in lines:
        validate_event(line)
    codes = [audit.parse(line).event_code for line in lines]
    assert codes == ["110100", "110104", "110106", "110107", "110112", "110114", "110113", "110101"]


def test_study_and_patient_objects_carry_the_a5_codes(sink: Path) -> None:
    xml = audit.emit(
        "instances-transferred",
        participants=[audit.peer_participant("CT1", "192.0.2.1", role="source", requestor=True)],
        local_role="destination",
        studies=[_study(), _study(uid="1.2.3.5", sop_classes={CT: 1})],
    )
    assert xml is not None
    root = validate_event(xml)
    studies = _objects(root, "2", "3", "110180")
    assert [s.get("ParticipantObjectID") for s in studies] == ["1.2.3.4", "1.2.3.5"]
    sop = studies[0].find("ParticipantObjectDescription/SOPClass")
    assert sop is not None and sop.get("UID") == CT and sop.get("NumberOfInstances") == "3"
    accession = studies[0].find("ParticipantObjectDescription/Accession")
    assert accession is not None and accession.get("Number") == "ACC1"
    # One patient object for the two studies of the same patient.
    (patient,) = _objects(root, "1", "1", "2")
    assert patient.get("ParticipantObjectID") == "PAT001"
    assert patient.findtext("ParticipantObjectName") == "DOE^JOHN"
    assert patient[0].get("codeSystemName") == "RFC-3881"
    peer = root.find("ActiveParticipant")
    assert peer is not None
    assert peer.get("UserID") == "CT1" and peer.get("NetworkAccessPointTypeCode") == "2"


def test_emit_never_raises_and_refuses_unknown_events(sink: Path) -> None:
    assert audit.emit("no-such-event") is None
    assert audit.emit("query", outcome=5) is None
    assert _lines(sink) == []


def test_text_with_newlines_and_markup_stays_one_line(sink: Path) -> None:
    xml = audit.emit(
        "security-alert",
        event_type="software-configuration",
        description='bad <value> & "quotes"\nsecond line',
        objects=[audit.ParticipantObject("x", audit.URI_TYPE, name="a\nb")],
    )
    assert xml is not None and "\n" not in xml
    (line,) = _lines(sink)
    assert audit.parse(line).description == 'bad <value> & "quotes" second line'


# --- the log --------------------------------------------------------------------------------------

_WRITER = """
import sys
from pathlib import Path
from appliance import audit
audit.configure(Path(sys.argv[1]))
for n in range(int(sys.argv[2])):
    text = f"{sys.argv[3]} {n}"
    audit.emit("security-alert", event_type="software-configuration", description=text)
"""


def test_several_processes_append_whole_lines(tmp_path: Path) -> None:
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), "60", f"w{i}"])
        for i in range(3)
    ]
    for writer in writers:
        assert writer.wait(timeout=60) == 0
    lines = _lines(tmp_path)
    assert len(lines) == 180
    descriptions = {audit.parse(line).description for line in lines}
    assert descriptions == {f"w{i} {n}" for i in range(3) for n in range(60)}
    (path,) = (tmp_path / "audit").glob("audit-*.log")
    assert path.stat().st_mode & 0o777 == 0o600


def test_sigkill_leaves_no_torn_line_and_the_next_writer_starts_fresh(tmp_path: Path) -> None:
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), "100000", "k"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(_lines(tmp_path)) < 50:
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    (path,) = (tmp_path / "audit").glob("audit-*.log")
    before = path.read_bytes()
    damaged: list[str] = []
    entries = list(audit.read(tmp_path, damaged=damaged))
    assert len(entries) >= 50 and damaged == []
    # Simulate the worst case anyway: a writer killed inside its write left half a line.
    with open(path, "ab") as handle:
        handle.write(b"<AuditMessage><EventIdenti")
    assert len(list(audit.read(tmp_path, damaged=damaged))) == len(entries)
    assert damaged == [f"{path.name}: incomplete last line"]
    audit.configure(tmp_path)
    try:
        audit.emit("security-alert", event_type="software-configuration", description="after")
    finally:
        audit.shutdown()
    damaged = []
    after = list(audit.read(tmp_path, damaged=damaged))
    assert after[-1].description == "after" and len(after) == len(entries) + 1
    assert len(damaged) == 1  # the torn line, kept: nothing is ever rewritten
    # Append-only: what was there is still there, byte for byte.
    assert path.read_bytes().startswith(before + b"<AuditMessage><EventIdenti")


def test_messages_go_to_the_month_of_the_event(sink: Path) -> None:
    old = datetime(2026, 1, 31, 23, 59, tzinfo=UTC)
    audit.emit("security-alert", event_type="software-configuration", when=old)
    audit.emit("security-alert", event_type="software-configuration")
    names = sorted(p.name for p in (sink / "audit").iterdir())
    assert names[0] == "audit-2026-01.log" and len(names) == 2


def test_parse_since() -> None:
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert audit.parse_since("24h", now) == now - timedelta(hours=24)
    assert audit.parse_since("7d", now) == now - timedelta(days=7)
    assert audit.parse_since("30m", now) == now - timedelta(minutes=30)
    assert audit.parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="--since"):
        audit.parse_since("yesterday", now)


def test_audit_cli_filters_by_since_and_event(tmp_path: Path) -> None:
    audit.configure(tmp_path)
    try:
        now = datetime.now(UTC)
        audit.emit(
            "security-alert",
            event_type="software-configuration",
            description="old one",
            when=now - timedelta(days=3),
        )
        audit.emit(
            "user-authentication",
            event_type="login",
            participants=[audit.os_user()],
            description="recent login",
        )
        audit.emit("security-alert", event_type="network-configuration", description="recent")
    finally:
        audit.shutdown()

    def cli(*args: str) -> list[dict]:
        result = run(appliance_cmd("audit", "--json", *args, "--data-dir", str(tmp_path)))
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    assert [e["description"] for e in cli("--event", "security-alert")] == ["old one", "recent"]
    recent = cli("--since", "24h", "--event", "security-alert")
    assert [e["description"] for e in recent] == ["recent"]
    logins = cli("--event", "login")
    assert [e["description"] for e in logins] == ["recent login"]
    assert logins[0]["event_code"] == "110114" and logins[0]["user"]
    # Listing is audited (Audit Log Used), and that message itself is valid.
    used = cli("--event", "audit-log-used")
    assert used and used[-1]["event_code"] == "110101"
    validate_event(used[-1]["xml"])
    plain = run(appliance_cmd("audit", "--since", "1h", "--data-dir", str(tmp_path)))
    assert plain.returncode == 0 and "user-authentication/login" in plain.stdout
    bad = run(appliance_cmd("audit", "--since", "soon", "--data-dir", str(tmp_path)))
    assert bad.returncode == 2 and "--since" in bad.stderr


# --- syslog over TLS ------------------------------------------------------------------------------


class Collector:
    """A syslog-over-TLS collector (RFC 5425): requires a client certificate, reads frames."""

    def __init__(self, folder: Path, ca, *, require_client: bool = True) -> None:
        server = make_cert(ca, "collector", ["IP:127.0.0.1"], server=True, client=False)
        key = write_pem(folder / "collector-key.pem", server, key=True)
        cert = write_pem(folder / "collector-cert.pem", server)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.context.load_verify_locations(cafile=str(write_pem(folder / "ca.pem", ca)))
        self.context.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_NONE
        self.sock = socket.create_server((LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]
        self.frames: list[bytes] = []
        self.peer_cn: str | None = None
        self.got = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with self.context.wrap_socket(conn, server_side=True) as tls:
            cert = tls.getpeercert() or {}
            for rdn in cert.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        self.peer_cn = value
            buffer = b""
            while True:
                data = tls.recv(65536)
                if not data:
                    return
                buffer += data
                # RFC 5425 octet counting: MSG-LEN SP SYSLOG-MSG.
                while b" " in buffer:
                    length, _, rest = buffer.partition(b" ")
                    if len(rest) < int(length):
                        break
                    self.frames.append(rest[: int(length)])
                    buffer = rest[int(length) :]
                    self.got.set()

    def close(self) -> None:
        self.sock.close()


def test_syslog_over_tls_delivers_rfc5425_frames(tmp_path: Path) -> None:
    ca = make_ca()
    ours = make_cert(ca, "APPLIANCE", ["IP:127.0.0.1"], server=True, client=True)
    install_identity(tmp_path, ours, [ca])
    collector = Collector(tmp_path, ca)
    store = ConfigStore(tmp_path)
    store.set("audit_syslog_host", LOOPBACK)
    store.set("audit_syslog_port", collector.port)
    settings = store.settings()
    store.close()
    audit.configure(tmp_path, settings)
    try:
        sent = [
            audit.emit("security-alert", event_type="software-configuration", description=str(n))
            for n in range(3)
        ]
        deadline = time.monotonic() + 15
        while len(collector.frames) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        status = audit.syslog_status()
    finally:
        audit.shutdown()
        collector.close()
    assert len(collector.frames) == 3
    assert collector.peer_cn == "APPLIANCE"  # mutual authentication, as RFC 5425 asks
    for frame, xml in zip(collector.frames, sent, strict=True):
        header, _, body = frame.partition(b"\xef\xbb\xbf")
        fields = header.decode("ascii").split(" ")
        # <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA
        assert fields[0] == "<85>1"
        datetime.fromisoformat(fields[1])
        assert fields[3:7] == ["dicom-appliance", str(os.getpid()), "IHE+RFC-3881", "-"]
        assert body.decode("utf-8") == xml
        validate_event(body.decode("utf-8"))
    assert status is not None and status["dropped"] == 0


def test_a_dead_collector_drops_oldest_and_never_blocks(tmp_path: Path) -> None:
    # Accepts TCP and never answers the TLS handshake.
    silent = socket.create_server((LOOPBACK, 0))
    sender = audit.SyslogSender(
        LOOPBACK, silent.getsockname()[1], tls=True, data_dir=tmp_path, queue_size=5
    )
    sender.start()
    try:
        started = time.monotonic()
        for n in range(20):
            sender.submit(f"<AuditMessage>{n}</AuditMessage>")
        assert time.monotonic() - started < 0.5
        assert sender.status()["queued"] <= 5 and sender.dropped >= 15
    finally:
        started = time.monotonic()
        sender.close(timeout=0.5)
        silent.close()
    assert time.monotonic() - started < 8


# --- a real daemon and real peers -----------------------------------------------------------------


def _wait_for(data_dir: Path, predicate, timeout: float = 20.0) -> list[audit.Entry]:
    deadline = time.monotonic() + timeout
    entries: list[audit.Entry] = []
    while time.monotonic() < deadline:
        entries = list(audit.read(data_dir))
        if predicate(entries):
            return entries
        time.sleep(0.1)
    raise AssertionError(f"audit trail never matched: {[e.summary() for e in entries]}")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    data = tmp_path / "data"
    data.mkdir()
    store = ConfigStore(data)
    store.set_service_password("correct-horse")
    store.close()
    node = Daemon(data)
    yield node
    node.stop()


def test_dicom_services_are_audited_with_the_right_identities(
    tmp_path: Path, daemon: Daemon
) -> None:
    storescp = StoreSCP(tmp_path / "received", ae_title="STORESCP")
    try:
        result = daemon.cli(
            "node",
            "add",
            "dest",
            "--ae-title",
            "STORESCP",
            "--host",
            LOOPBACK,
            "--port",
            str(storescp.port),
        )
        assert result.returncode == 0, result.stderr
        daemon.start()
        study_uid = generate_uid()
        files = write_ct_series(tmp_path / "ct", 2, study_uid=study_uid, patient_id="AUD01")
        store = run(
            [dcmtk("storescu"), "-aet", "MODALITY", "-aec", "APPLIANCE", LOOPBACK,
             str(daemon.port), *map(str, files)]
        )  # fmt: skip
        assert store.returncode == 0, store.stderr
        find = run(
            [dcmtk("findscu"), "-S", "-aet", "VIEWER", "-aec", "APPLIANCE",
             "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=AUD01",
             "-k", "StudyInstanceUID", LOOPBACK, str(daemon.port)]
        )  # fmt: skip
        assert find.returncode == 0, find.stderr
        move = run(
            [dcmtk("movescu"), "-S", "-aet", "VIEWER", "-aec", "APPLIANCE", "-aem", "STORESCP",
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
             LOOPBACK, str(daemon.port)]
        )  # fmt: skip
        assert move.returncode == 0, move.stderr
        entries = _wait_for(
            daemon.data_dir,
            lambda es: (
                sum(e.event == "instances-transferred" for e in es) >= 2
                and any(e.event == "query" for e in es)
            ),
        )
    finally:
        storescp.stop()
    for entry in entries:
        validate_event(entry.xml)

    start = [e for e in entries if e.event_types == ["application-start"]]
    assert start and start[0].participants[0]["role"] == "application-launcher"

    accepted = [e for e in entries if "node-authentication" in e.event_types]
    calling = {e.participants[0]["user_id"] for e in accepted}
    assert {"MODALITY", "VIEWER"} <= calling and all(e.outcome == 0 for e in accepted)
    assert all(e.participants[0]["network_access_point"] == LOOPBACK for e in accepted)

    received = [e for e in entries if e.event == "instances-transferred" and e.action == "C"]
    (stored,) = received
    assert stored.studies == [study_uid]
    assert stored.patients == [{"id": "AUD01", "name": "DOE^JOHN"}]
    source = next(p for p in stored.participants if p["role"] == "source")
    assert source["user_id"] == "MODALITY" and source["requestor"]
    destination = next(p for p in stored.participants if p["role"] == "destination")
    assert destination["user_id"] == "APPLIANCE" and not destination["requestor"]
    root = ET.fromstring(stored.xml)
    sop = root.find(".//SOPClass")
    assert sop is not None and sop.get("UID") == CT and sop.get("NumberOfInstances") == "2"

    (query,) = [e for e in entries if e.event == "query"]
    assert query.participants[0]["user_id"] == "VIEWER" and query.participants[0]["requestor"]
    query_root = ET.fromstring(query.xml)
    asked = query_root.findtext(".//ParticipantObjectQuery") or ""
    # The C-FIND identifier as received, base64: the key we asked for is in it.
    assert b"AUD01" in base64.b64decode(asked, validate=True)
    details = {d.get("type"): d.get("value") for d in query_root.iter("ParticipantObjectDetail")}
    assert base64.b64decode(details["TransferSyntax"] or "").startswith(b"1.2.840.10008.1.2")

    (moved,) = [e for e in entries if e.event == "instances-transferred" and e.action == "R"]
    assert moved.studies == [study_uid] and moved.outcome == 0
    by_role = {p["role"]: p for p in moved.participants}
    assert by_role["destination"]["user_id"] == "STORESCP"
    assert by_role["source"]["user_id"] == "APPLIANCE"
    requestor = next(p for p in moved.participants if p["requestor"])
    assert requestor["user_id"] == "VIEWER"


def test_rejected_association_is_a_security_alert(daemon: Daemon) -> None:
    daemon.configure(check_called_ae=True)
    daemon.start()
    echo = run([dcmtk("echoscu"), "-aet", "INTRUDER", "-aec", "WRONG", LOOPBACK, str(daemon.port)])
    assert echo.returncode != 0
    entries = _wait_for(
        daemon.data_dir, lambda es: any(e.outcome == 4 and e.event == "security-alert" for e in es)
    )
    (alert,) = [e for e in entries if e.outcome == 4]
    validate_event(alert.xml)
    assert alert.event_types == ["node-authentication"]
    assert alert.participants[0]["user_id"] == "INTRUDER"
    assert "WRONG" in alert.description


def test_service_login_config_change_and_audit_list(daemon: Daemon) -> None:
    daemon.start()
    client = ControlClient(control_socket_path(daemon.data_dir), role="technologist")
    try:
        with pytest.raises(Exception, match="wrong service password"):
            client.call("auth.unlock", password="not-it-at-all")
        client.call("auth.unlock", password="correct-horse")
        client.role = "service"
        client.call("config.set", key="job_workers", value=3)
        client.call("auth.lock")
        entries = _wait_for(
            daemon.data_dir,
            lambda es: (
                any("logout" in e.event_types for e in es)
                and any("software-configuration" in e.event_types for e in es)
            ),
        )
        client.role = "service"  # root/the daemon's user keep the service role when locked
        listed = client.call("audit.list", event="user-authentication", limit=10)
    finally:
        client.close()
    logins = [e for e in entries if e.event == "user-authentication"]
    assert [(e.event_types[0], e.outcome) for e in logins] == [
        ("login", 4),
        ("login", 0),
        ("logout", 0),
    ]
    for entry in logins:
        validate_event(entry.xml)
        person = entry.participants[0]
        assert person["requestor"] and person["alt_user_id"].startswith(f"uid={os.getuid()}")
    (change,) = [e for e in entries if "software-configuration" in e.event_types]
    validate_event(change.xml)
    assert "job_workers = 3" in change.description
    changer = change.participants[0]
    assert changer["requestor"] and changer["user_name"] == "service"
    assert [e["event_types"][0] for e in listed["entries"]] == ["login", "login", "logout"]
    used = _wait_for(daemon.data_dir, lambda es: any(e.event == "audit-log-used" for e in es))
    validate_event(next(e for e in used if e.event == "audit-log-used").xml)


def test_a_dead_syslog_collector_does_not_slow_a_c_store(tmp_path: Path, daemon: Daemon) -> None:
    silent = socket.create_server((LOOPBACK, 0))  # accepts, never speaks TLS
    try:
        daemon.configure(audit_syslog_host=LOOPBACK, audit_syslog_port=silent.getsockname()[1])
        daemon.start()
        files = write_ct_series(tmp_path / "ct", 3)
        started = time.monotonic()
        store = run(
            [dcmtk("storescu"), "-aec", "APPLIANCE", LOOPBACK, str(daemon.port),
             *map(str, files)]
        )  # fmt: skip
        elapsed = time.monotonic() - started
        assert store.returncode == 0, store.stderr
        assert elapsed < 5
        _wait_for(daemon.data_dir, lambda es: any(e.event == "instances-transferred" for e in es))
        assert daemon.stop() == 0
    finally:
        silent.close()
    entries = list(audit.read(daemon.data_dir))
    assert entries[-1].event_types == ["application-stop"]
    assert free_port()  # the loopback stack is fine after the silent listener


class _FakeArchive:
    """The two archive lookups the job hook makes."""

    def study(self, uid: str) -> dict:
        return {"patient_id": "PAT9", "patient_name": "ROE^JANE", "accession_number": "A9"}

    def instance(self, uid: str):
        from types import SimpleNamespace

        return SimpleNamespace(study_uid="1.2.9", sop_class_uid=CT)


class _FakeConfig:
    def node(self, name: str):
        from types import SimpleNamespace

        return SimpleNamespace(ae_title="PACS", host="192.0.2.9")


@pytest.mark.parametrize(
    ("kind", "event", "action", "media_role"),
    [
        ("send", "instances-transferred", "R", None),
        ("retrieve", "instances-transferred", "C", None),
        ("print", "export", "R", "destination-media"),
        ("burn", "export", "R", "destination-media"),
        ("import", "import", "C", "source-media"),
    ],
)
def test_job_attempts_are_audited(
    sink: Path, kind: str, event: str, action: str, media_role: str | None
) -> None:
    from types import SimpleNamespace

    instances = [
        SimpleNamespace(sop_instance_uid=f"1.2.9.{n}", status=status)
        for n, status in enumerate(["success", "success", "failed"])
    ]
    job = SimpleNamespace(
        kind=kind, id=7, attempts=1, target="pacs", params={"device": "/dev/sr0"},
        instances=instances,
    )  # fmt: skip
    audit.job_attempt(job, _FakeArchive(), _FakeConfig())
    (line,) = _lines(sink)
    validate_event(line)
    entry = audit.parse(line)
    assert (entry.event, entry.action, entry.outcome) == (event, action, 4)
    assert entry.studies == ["1.2.9"] and entry.patients == [{"id": "PAT9", "name": "ROE^JANE"}]
    assert "2 done, 1 failed" in entry.description
    roles = {p["role"] for p in entry.participants}
    if media_role:
        assert media_role in roles
    else:
        peer = next(p for p in entry.participants if p["user_id"] == "PACS")
        assert peer["network_access_point"] == "192.0.2.9"
    audit.job_attempt(SimpleNamespace(kind="commitment"), None, None)  # not audited
    audit.job_attempt(SimpleNamespace(kind="send"), None, None)  # broken: logged, no raise
    assert len(_lines(sink)) == 1
