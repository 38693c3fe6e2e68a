"""Security: the appliance's certificate, the trusted CAs, TLS, and the audit log.

The Certificates view shows our certificate (subject, issuer, SANs, expiry with the days left,
a warning inside the expiry warning period), the TLS settings (port, profile, peer
authentication), the trusted CA certificates, and the TLS handshakes refused since the console
started (``association`` events with ``"event": "tls-failed"``: peer, reason). Anyone may look;
field service (ctrl+u) generates a new key with a self-signed certificate or a certificate
signing request, imports the signed certificate, trusts a CA from a file and stops trusting
one (after a question). Paths are files on the appliance: the daemon reads and writes them.

The Audit log view lists the audit trail (who did what: associations, transfers, queries,
exports, imports, configuration and certificate changes, service logins) filtered by event
type and age on the daemon and by any text here. It holds patient data: it is shown in service
mode only and cleared the moment service mode locks.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import (
    Button,
    Checkbox,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    Select,
    Static,
    TabbedContent,
    TabPane,
)
from textual.widgets.data_table import RowDoesNotExist

from console.base import (
    ConnectionChanged,
    ConsoleScreen,
    DaemonEvents,
    RoleChanged,
    describe_error,
)
from console.screens._forms import (
    FORM_CSS,
    READ_ONLY_NOTE,
    clear_field_errors,
    error_field,
    field_row,
    set_message,
    show_field_error,
)
from console.screens.film_composer import FormError
from console.screens.print import Columns, fitted
from console.tables import selected_key, styled
from console.widgets import ConfirmModal

AUDIT_LIMIT = 500
FAILURES_KEPT = 100
DEFAULT_WARNING_DAYS = 30
KEY_TYPES: tuple[tuple[str, int | None], ...] = (
    ("EC P-256", None),
    ("RSA 2048", 2048),
    ("RSA 3072", 3072),
)
PROFILES = {
    "bcp195": "BCP 195 (TLS 1.2/1.3, strong suites)",
    "legacy": "legacy (adds TLS 1.2 RSA/CBC suites)",
}
PEER_AUTH = {
    "require": "require a trusted client certificate",
    "verify": "verify a certificate when one is sent",
    "ignore": "no client certificate check",
}
AUDIT_HIDDEN = (
    "The audit log holds patient data: unlock service mode (ctrl+u) to see it. "
    "It is cleared again when service mode locks."
)
WIDE = 110
TRUSTED_COLUMNS: Columns = (
    ("cn", "CA", 24),
    ("name", "File", None),
    ("expires", "Expires", 10),
)
FAILURE_COLUMNS: Columns = (
    ("time", "Time", 8),
    ("peer", "Peer", 21),
    ("node", "Node", 14),
    ("reason", "Reason", None),
)
AUDIT_COLUMNS: Columns = (
    ("time", "Time", 19),
    ("event", "Event", 22),
    ("outcome", "Outcome", 8),
    ("user", "User", 14),
    ("peer", "Peer", 15),
    ("subject", "Patient / study", None),
)
AUDIT_NARROW = ("time", "event", "outcome", "subject")
STYLES = {
    "EXPIRED": "bold $error",
    "expires soon": "bold $warning",
    "failure": "bold $error",
    "serious": "bold $error",
    "major": "bold $error",
    "minor": "$warning",
}
OUTCOMES = {"0": "success", "4": "minor", "8": "serious", "12": "major"}


# --- reading the daemon's answers -----------------------------------------------------------


def epoch_of(value: Any) -> float | None:
    """A Unix time from a number or an ISO 8601 text (``2027-01-01T00:00:00Z``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # certificates keep UTC times
    return moment.timestamp()


def date_text(value: Any) -> str:
    """The date part (``2027-01-01``) of a time, as UTC: certificate times are UTC."""
    seconds = epoch_of(value)
    if seconds is None:
        return str(value or "")
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def certificate_of(show: dict[str, Any]) -> dict[str, Any] | None:
    """Our certificate in a tls.show answer (under ``certificate``, or the answer itself)."""
    cert = show.get("certificate")
    if isinstance(cert, dict) and cert:
        return cert
    if show.get("subject"):
        return show
    return None


def warning_days_of(show: dict[str, Any], settings: dict[str, Any] | None = None) -> int:
    for source in (show, settings or {}):
        for key in ("warning_days", "tls_expiry_warning_days", "expiry_warning_days"):
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return DEFAULT_WARNING_DAYS


def days_left(cert: dict[str, Any], now: float) -> int | None:
    """Whole days until the certificate expires (negative once expired)."""
    value = cert.get("days_left")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    expires = epoch_of(cert.get("not_after"))
    if expires is None:
        return None
    return int((expires - now) // 86400)


def expiry_state(cert: dict[str, Any], now: float, warning_days: int) -> str:
    """``EXPIRED``, ``expires soon`` (inside the warning period) or ``valid``."""
    left = days_left(cert, now)
    if left is None:
        return "valid"
    if left < 0 or cert.get("expired") is True:
        return "EXPIRED"
    if left < warning_days or cert.get("expiring") is True:
        return "expires soon"
    return "valid"


def names_of(value: Any) -> list[str]:
    """SANs as a list of texts (``DNS:host``, ``IP:10.0.0.5``) from a list or one text."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(part) for part in value if str(part).strip()]
    return []


def certificate_lines(
    show: dict[str, Any], now: float, settings: dict[str, Any] | None = None
) -> tuple[list[str], str]:
    """The lines about our certificate, and the warnings ('' when none): expiry first, then
    what else the daemon found (loose file modes, a certificate for another key...)."""
    cert = certificate_of(show)
    warnings = daemon_warnings(show)
    csr = show.get("csr") if isinstance(show.get("csr"), dict) else None
    if cert is None:
        lines = [
            "No certificate yet: TLS is off until field service generates a key and a",
            "self-signed certificate (n), or imports one signed by the hospital's CA (i).",
        ]
        if csr is not None:
            lines.append(f"CSR waiting to be signed: {csr.get('path', '')}")
        return lines, "\n".join(f"WARNING: {w}" for w in warnings)
    warning_days = warning_days_of(show, settings)
    subject = str(cert.get("subject", ""))
    issuer = str(cert.get("issuer", ""))
    self_signed = cert.get("self_signed") is True or (issuer and issuer == subject)
    lines = [f"Subject  {subject}"]
    lines.append(f"Issuer   {'self-signed' if self_signed else issuer or '-'}")
    sans = names_of(cert.get("sans", cert.get("san")))
    lines.append(f"SANs     {', '.join(sans) if sans else '-'}")
    left = days_left(cert, now)
    until = date_text(cert.get("not_after"))
    when = f"Expires  {until}" if until else "Expires  -"
    if left is not None and left >= 0:
        when += f" ({left} day{'' if left == 1 else 's'} left)"
    key = cert.get("key_type", cert.get("key"))
    if isinstance(key, str) and key:
        when += f"   key {key}"
    fingerprint = str(cert.get("fingerprint") or "")
    if fingerprint:
        when += f"   SHA-256 {fingerprint[:17]}…" if len(fingerprint) > 18 else f"   {fingerprint}"
    lines.append(when)
    if csr is not None:
        lines.append(f"CSR      {csr.get('path', '')} (waiting to be signed)")
    state = expiry_state(cert, now, warning_days)
    first = ""
    if state == "EXPIRED":
        first = (
            f"WARNING: the certificate expired on {until}: peers refuse TLS associations. "
            "Import a renewed certificate (i) or generate a new one (n)."
        )
    elif state == "expires soon":
        first = (
            f"WARNING: the certificate expires in {left} day{'' if left == 1 else 's'} "
            f"(warning from {warning_days} days): ask for a renewed certificate now."
        )
    return lines, "\n".join([first] * bool(first) + [f"WARNING: {w}" for w in warnings])


def daemon_warnings(show: dict[str, Any]) -> list[str]:
    """tls.show's warnings but those the certificate lines already say (its own expiry, no
    key or no certificate yet)."""
    said = ("the certificate expire", "no key:", "no certificate:")
    return [str(w) for w in show.get("warnings") or [] if w and not str(w).startswith(said)]


def settings_text(settings: dict[str, Any], show: dict[str, Any] | None = None) -> str:
    """The TLS settings in one line (config.get), and whether the listener can run."""
    if "tls_port" not in settings:
        return "TLS settings: not known to this daemon version"
    port = settings.get("tls_port")
    profile = str(settings.get("tls_profile") or "bcp195")
    auth = str(settings.get("tls_peer_auth") or "require")
    if port in (0, "0"):
        head = "TLS listener off (tls_port 0)"
    else:
        head = f"TLS listener port {port}"
        if show is not None and certificate_of(show) is None:
            head += " (waits for a key and certificate)"
    return f"{head} · profile {PROFILES.get(profile, profile)} · peers: {PEER_AUTH.get(auth, auth)}"


def trusted_of(show: dict[str, Any]) -> list[dict[str, Any]]:
    trusted = show.get("trusted", show.get("trusted_cas", []))
    return [entry for entry in trusted if isinstance(entry, dict)] if trusted else []


def trusted_key(entry: dict[str, Any]) -> str:
    """How tls.untrust names a trusted CA: its file name, else its fingerprint."""
    return str(entry.get("name") or entry.get("file") or entry.get("fingerprint") or "")


def trusted_cells(entry: dict[str, Any], now: float) -> dict[str, str]:
    expires = date_text(entry.get("not_after"))
    left = days_left(entry, now)
    return {
        "cn": str(entry.get("cn") or entry.get("subject") or ""),
        "name": trusted_key(entry),
        "expires": "EXPIRED" if left is not None and left < 0 else expires,
    }


def is_tls_failure(event: dict[str, Any]) -> bool:
    data = event.get("data")
    return (
        event.get("topic") == "association"
        and isinstance(data, dict)
        and data.get("event") == "tls-failed"
    )


def failure_cells(event: dict[str, Any], format_time: Callable[[Any], str]) -> dict[str, str]:
    """Time, peer (address:port), the configured nodes at that address (no AE title yet: the
    handshake comes before the association request), and OpenSSL's reason."""
    data = event.get("data") or {}
    address = str(data.get("peer_address") or data.get("address") or data.get("host") or "")
    port = data.get("peer_port") or data.get("port")
    peer = f"{address}:{port}" if address and port else address
    return {
        "time": format_time(event.get("time") or data.get("time")),
        "peer": peer,
        "node": ", ".join(str(n) for n in data.get("nodes") or []),
        "reason": str(data.get("reason") or data.get("error") or ""),
    }


def outcome_text(message: dict[str, Any]) -> str:
    """An audit outcome as a word: success, minor, serious or major (failure)."""
    name = message.get("outcome_name")
    value = message.get("outcome")
    text = str(name if name else value if value is not None else "").strip()
    text = OUTCOMES.get(text, text)
    return text.lower().removesuffix(" failure") if text else ""


def event_text(message: dict[str, Any]) -> str:
    """What happened: the event type when there is one (``security-configuration``, ``login``,
    ``application-start``), else the event (``instances-transferred``, ``query``)."""
    event = str(message.get("event") or message.get("event_code") or "")
    types = [str(t) for t in message.get("event_types") or [] if t]
    return ", ".join(types) if types else event


def participants_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in message.get("participants") or [] if isinstance(p, dict)]


def peer_text(message: dict[str, Any]) -> str:
    """The network address of the requestor (else of the first participant that has one)."""
    if message.get("peer"):
        return str(message["peer"])
    people = participants_of(message)
    for participant in sorted(people, key=lambda p: not p.get("requestor")):
        if participant.get("network_access_point"):
            return str(participant["network_access_point"])
    return ""


def audit_subject(message: dict[str, Any]) -> str:
    """The patients and studies an audit message is about, as one short text."""
    parts = []
    for patient in message.get("patients") or []:
        if isinstance(patient, dict):
            parts.append(" ".join(str(patient[k]) for k in ("id", "name") if patient.get(k)))
    studies = [str(s) for s in message.get("studies") or [] if s]
    if len(studies) == 1:
        parts.append(f"study {studies[0]}")
    elif studies:
        parts.append(f"{len(studies)} studies")
    return "; ".join(part for part in parts if part)


def time_text(value: Any, format_time: Callable[[Any, bool], str]) -> str:
    seconds = epoch_of(value)
    if seconds is not None:
        return format_time(seconds, True)
    return str(value or "")


def audit_cells(message: dict[str, Any], format_time: Callable[[Any, bool], str]) -> dict[str, str]:
    return {
        "time": time_text(message.get("time"), format_time),
        "event": event_text(message),
        "outcome": outcome_text(message),
        "user": str(message.get("user") or ""),
        "peer": peer_text(message),
        "subject": audit_subject(message),
    }


def flat_text(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in ("xml", "raw"):
                yield from flat_text(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from flat_text(item)
    elif value is not None:
        yield str(value)


def audit_matches(message: dict[str, Any], text: str) -> bool:
    """Whether every word of ``text`` is somewhere in the message (any case, XML left out)."""
    words = text.lower().split()
    if not words:
        return True
    haystack = " ".join(flat_text(message)).lower()
    return all(word in haystack for word in words)


def audit_detail(message: dict[str, Any]) -> str:
    """Who took part and what about, for the line under the table."""
    parts = []
    event = str(message.get("event") or "")
    if event and event != event_text(message):
        parts.append(event)
    if message.get("description"):
        parts.append(str(message["description"]))
    for participant in participants_of(message):
        who = str(participant.get("user_id") or "")
        if participant.get("alt_user_id"):
            who += f" ({participant['alt_user_id']})"
        if participant.get("role"):
            who += f" {participant['role']}"
        if participant.get("network_access_point"):
            who += f" at {participant['network_access_point']}"
        if participant.get("requestor"):
            who += " [requestor]"
        parts.append(who.strip())
    subject = audit_subject(message)
    studies = [str(s) for s in message.get("studies") or [] if s]
    if len(studies) > 1:
        subject += ": " + ", ".join(studies)
    if subject:
        parts.append(subject)
    for obj in message.get("objects") or []:
        if isinstance(obj, dict) and (obj.get("name") or obj.get("id")):
            parts.append(str(obj.get("name") or obj.get("id")))
    return " · ".join(part for part in parts if part)


# --- the key and certificate form -----------------------------------------------------------


@dataclass(frozen=True)
class KeyValues:
    csr: bool
    cn: str
    sans: str = ""
    days: str = ""
    key_bits: int | None = None
    passphrase: str = ""


def parse_sans(text: str) -> list[str]:
    """``appliance.example.org, 10.0.0.5, DNS:pacs`` as ``DNS:`` and ``IP:`` names."""
    names: list[str] = []
    for part in text.replace(";", ",").replace(" ", ",").split(","):
        part = part.strip()
        if not part:
            continue
        kind, sep, value = part.partition(":")
        if sep and kind.upper() in ("DNS", "IP"):
            kind, value = kind.upper(), value.strip()
        else:
            kind, value = "", part
        try:
            ipaddress.ip_address(value)
            is_ip = True
        except ValueError:
            is_ip = False
        if kind == "IP" and not is_ip:
            raise FormError("sans", f"{value!r} is not an IP address")
        if kind == "" and is_ip:
            kind = "IP"
        if kind in ("", "DNS"):
            label_ok = all(c.isalnum() or c in "-.*_" for c in value)
            if not value or not label_ok:
                raise FormError("sans", f"{value!r} is not a host name or IP address")
            kind = "DNS"
        names.append(f"{kind}:{value}")
    return names


def build_key_request(values: KeyValues) -> tuple[str, dict[str, Any]]:
    """The op (tls.generate or tls.csr) and its arguments; FormError names a bad field."""
    cn = values.cn.strip()
    if not cn:
        raise FormError("cn", "the certificate's name: the AE title or the host name")
    if len(cn) > 64:
        raise FormError("cn", "at most 64 characters")
    request: dict[str, Any] = {"cn": cn}
    sans = parse_sans(values.sans)
    if sans:
        request["sans"] = sans
    if values.key_bits:
        request["rsa"] = values.key_bits
    if values.passphrase:
        if len(values.passphrase) < 8:
            raise FormError("passphrase", "at least 8 characters (or none)")
        request["passphrase"] = values.passphrase
    if values.csr:
        return "tls.csr", request
    days = values.days.strip()
    if days:
        if not days.isdigit() or not 1 <= int(days) <= 3650:
            raise FormError("days", "days of validity: a whole number from 1 to 3650")
        request["days"] = int(days)
    return "tls.generate", request


_KEY_FIELDS = {
    "cn": "cn",
    "san": "sans",
    "sans": "sans",
    "days": "days",
    "passphrase": "passphrase",
}


class KeyDialog(ConsoleScreen, ModalScreen[dict[str, Any] | None]):
    """A new key with a self-signed certificate, or a CSR to send to the hospital's CA.

    Dismisses with the daemon's answer (with ``_op``), or None when cancelled."""

    DEFAULT_CSS = (
        FORM_CSS
        + """
    KeyDialog { align: center middle; background: $background 60%; }
    KeyDialog #key {
        width: 84; max-width: 100%; height: auto; max-height: 100%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    KeyDialog #key-title { text-style: bold; height: auto; }
    KeyDialog .field-label { width: 16; }
    KeyDialog .field-error { padding-left: 16; }
    KeyDialog .field-note { color: $text-muted; height: auto; }
    KeyDialog #key-csr { border: none; height: 1; padding: 0; }
    KeyDialog .buttons { height: 1; margin-top: 1; }
    KeyDialog .buttons Button { width: auto; min-width: 8; margin-right: 1; }
    """
    )
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "make", "Make", priority=True),
    ]

    def __init__(self, cn: str = "", *, replaces: bool = False) -> None:
        super().__init__()
        self.cn = cn
        self.replaces = replaces
        self.busy = False

    def compose(self) -> ComposeResult:
        with Vertical(id="key"):
            yield Static("New key and certificate", id="key-title")
            yield Checkbox(
                "A signing request (CSR) for the hospital's CA, not a self-signed certificate",
                False,
                id="key-csr",
                compact=True,
            )
            yield from field_row(
                "Name (CN)",
                Input(self.cn, placeholder="AE title or host name", id="key-cn", compact=True),
                error_id="key-cn-error",
            )
            yield from field_row(
                "Other names",
                Input(placeholder="appliance.example.org, 10.0.0.5", id="key-sans",
                      compact=True),
                error_id="key-sans-error",
            )  # fmt: skip
            yield from field_row(
                "Key",
                Select[int](
                    [(label, bits or 0) for label, bits in KEY_TYPES],
                    value=0,
                    allow_blank=False,
                    id="key-type",
                    compact=True,
                ),
                error_id="key-type-error",
            )
            yield from field_row(
                "Valid for days",
                Input(placeholder="365", id="key-days", compact=True),
                error_id="key-days-error",
            )
            yield from field_row(
                "Key passphrase",
                Input(placeholder="none (8 characters or more encrypts the key)",
                      id="key-passphrase", password=True, compact=True),
                error_id="key-passphrase-error",
            )  # fmt: skip
            yield Static(self.key_note(), id="key-note", classes="field-note")
            yield Static("", id="key-message", classes="form-message")
            with Horizontal(classes="buttons"):
                yield Button("Make", id="key-go", variant="primary", compact=True)
                yield Button("Cancel", id="key-cancel", compact=True)
            yield Label("space: CSR or certificate   ctrl+s: make   escape: cancel",
                        classes="modal-hint")  # fmt: skip

    def key_note(self) -> str:
        if self.replaces:
            return (
                "Replaces the appliance's key and certificate: peers trusting the old "
                "certificate refuse TLS until they trust the new one."
            )
        return "The key stays on the appliance (mode 0600)."

    def on_mount(self) -> None:
        for field in self.query(Input):
            field.cursor_blink = False
        self.query_one("#key-cn", Input).focus()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        csr = event.value
        self.query_one("#key-days", Input).disabled = csr
        self.query_one("#key-note", Static).update(
            "The CSR is written to DATA/tls/csr.pem for the CA; the key (made first when there "
            "is none) stays on the appliance."
            if csr
            else self.key_note()
        )
        go = self.query_one("#key-go", Button)
        go.label = "Make CSR" if csr else "Make"

    def values(self) -> KeyValues:
        bits = self.query_one("#key-type", Select).value
        return KeyValues(
            csr=self.query_one("#key-csr", Checkbox).value,
            cn=self.query_one("#key-cn", Input).value,
            sans=self.query_one("#key-sans", Input).value,
            days=self.query_one("#key-days", Input).value,
            key_bits=int(bits) if isinstance(bits, int) and bits else None,
            passphrase=self.query_one("#key-passphrase", Input).value,
        )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_make()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "key-go":
            self.action_make()
        elif event.button.id == "key-cancel":
            self.action_cancel()

    def action_make(self) -> None:
        if self.busy:
            return
        clear_field_errors(self)
        try:
            op, request = build_key_request(self.values())
        except FormError as error:
            show_field_error(self, f"key-{error.field}-error", error.message)
            return
        if op == "tls.generate" and self.replaces:
            request["force"] = True
        self.busy = True
        what = "making the CSR" if op == "tls.csr" else "making the key and certificate"
        set_message(self.query_one("#key-message", Static), f"{what}...")
        call = self.client.tls_csr if op == "tls.csr" else self.client.tls_generate
        self.call_in_background(
            lambda: call(**request),
            lambda answer: self.dismiss({**answer, "_op": op}),
            group="key-make",
            on_error=self.refused,
        )

    def refused(self, error: BaseException) -> None:
        self.busy = False
        name = (error_field(error) or "").split(".")[-1]
        field = _KEY_FIELDS.get(name)
        if field is not None:
            show_field_error(self, f"key-{field}-error", describe_error(error))
        else:
            set_message(self.query_one("#key-message", Static), describe_error(error), error=True)

    def action_cancel(self) -> None:
        self.dismiss(None)


class PathsDialog(ConsoleScreen, ModalScreen[dict[str, str] | None]):
    """File paths on the appliance (a CA to trust, a signed certificate and its chain).

    ``fields``: (name, label, placeholder, required). Dismisses with the values typed."""

    DEFAULT_CSS = (
        FORM_CSS
        + """
    PathsDialog { align: center middle; background: $background 60%; }
    PathsDialog #paths {
        width: 84; max-width: 100%; height: auto; max-height: 100%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    PathsDialog #paths-title { text-style: bold; height: auto; margin-bottom: 1; }
    PathsDialog .field-label { width: 16; }
    PathsDialog .field-error { padding-left: 16; }
    """
    )
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, fields: list[tuple[str, str, str, bool]]) -> None:
        super().__init__()
        self.title_text = title
        self.fields = fields

    def compose(self) -> ComposeResult:
        with Vertical(id="paths"):
            yield Static(self.title_text, id="paths-title")
            for name, label, placeholder, _ in self.fields:
                yield from field_row(
                    label,
                    Input(placeholder=placeholder, id=f"path-{name}", compact=True),
                    error_id=f"path-{name}-error",
                )
            yield Label("enter: go on   escape: cancel", classes="modal-hint")

    def on_mount(self) -> None:
        for field in self.query(Input):
            field.cursor_blink = False
        self.query_one(f"#path-{self.fields[0][0]}", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        clear_field_errors(self)
        values = {}
        for name, _, _, required in self.fields:
            value = self.query_one(f"#path-{name}", Input).value.strip()
            if (required or value) and not value.startswith("/"):
                show_field_error(
                    self, f"path-{name}-error", "an absolute path of a file on the appliance"
                )
                self.query_one(f"#path-{name}", Input).focus()
                return
            values[name] = value
        self.dismiss(values)

    def action_cancel(self) -> None:
        self.dismiss(None)


# --- the screen -------------------------------------------------------------------------------


class SecurityScreen(ConsoleScreen):
    TITLE = "Security"
    DEFAULT_CSS = (
        FORM_CSS
        + """
    SecurityScreen TabbedContent { height: 1fr; }
    SecurityScreen TabPane { padding: 0; }
    SecurityScreen #cert-info { height: auto; padding: 0 1; }
    SecurityScreen #cert-warning { height: auto; padding: 0 1; color: $text-warning;
                                   text-style: bold; }
    SecurityScreen #cert-warning.-expired { color: $text-error; }
    SecurityScreen #tls-settings { height: auto; padding: 0 1; color: $text-muted; }
    SecurityScreen .section-bar { height: 1; padding: 0 1; background: $boost; }
    SecurityScreen #trusted { height: auto; max-height: 6; }
    SecurityScreen #tls-failures { height: 1fr; min-height: 3; }
    SecurityScreen .audit-filters { height: 1; }
    SecurityScreen .audit-filters Input { width: 1fr; margin-right: 1; }
    SecurityScreen #audit-note { height: auto; padding: 0 1; color: $text-warning; }
    SecurityScreen #audit { height: 1fr; min-height: 3; }
    SecurityScreen #audit-detail { height: auto; max-height: 3; padding: 0 1;
                                   background: $boost; }
    SecurityScreen #security-message { height: auto; max-height: 2; padding: 0 1; }
    """
    )
    BINDINGS = [
        Binding("g", "refresh", "Refresh"),
        Binding("c", "view('certificates')", "Certificates", show=False),
        Binding("a", "view('audit')", "Audit log"),
        Binding("n", "new_key", "New key"),
        Binding("i", "import_cert", "Import cert"),
        Binding("t", "trust", "Trust CA"),
        Binding("x,delete", "untrust", "Untrust CA", key_display="x"),
        Binding("slash", "filter", "Filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.show_answer: dict[str, Any] = {}
        self.settings: dict[str, Any] = {}
        self.trusted: dict[str, dict[str, Any]] = {}
        self.own_failures: list[dict[str, Any]] = []
        self.audit: list[dict[str, Any]] = []
        self.audit_shown: list[dict[str, Any]] = []
        self.loaded = False
        self.audit_loaded = False
        self.audit_generation = 0
        self.audit_damaged = 0
        self.columns: dict[str, Columns] = self.fitted_columns(80)

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="security-tabs", initial="certificates"):
            with TabPane("Certificates", id="certificates"):
                yield Static("Loading...", id="cert-info")
                yield Static("", id="cert-warning")
                yield Static("", id="tls-settings")
                yield Static("Trusted CAs", id="trusted-bar", classes="section-bar")
                trusted: DataTable[str | Text] = DataTable(id="trusted", cursor_type="row")
                for key, label, width in self.columns["trusted"]:
                    trusted.add_column(label, key=key, width=width)
                yield trusted
                yield Static("TLS handshakes refused", id="failures-bar", classes="section-bar")
                failures: DataTable[str] = DataTable(id="tls-failures", cursor_type="row")
                for key, label, width in self.columns["tls-failures"]:
                    failures.add_column(label, key=key, width=width)
                yield failures
            with TabPane("Audit log", id="audit-pane"):
                yield Static(AUDIT_HIDDEN, id="audit-note")
                with Horizontal(classes="audit-filters"):
                    yield Input(
                        placeholder="event (query, export, login...)",
                        id="audit-event",
                        compact=True,
                    )
                    yield Input(placeholder="since: 24h, 7d, 2026-11-01", id="audit-since",
                                compact=True)  # fmt: skip
                    yield Input(placeholder="text (patient, user, peer)", id="audit-text",
                                compact=True)  # fmt: skip
                audit: DataTable[str | Text] = DataTable(id="audit", cursor_type="row")
                for key, label, width in self.columns["audit"]:
                    audit.add_column(label, key=key, width=width)
                yield audit
                yield Static("", id="audit-detail")
        yield Static("", id="security-message", classes="form-message")
        yield Footer()

    def on_mount(self) -> None:
        for field in self.query(Input):
            field.cursor_blink = False
        self.apply_role()
        self.load()
        self.show_failures()
        self.query_one("#trusted", DataTable).focus()

    def on_screen_resume(self) -> None:
        if self.is_mounted:
            self.apply_role()
            self.load()
            self.show_failures()

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        if message.connected:
            self.load()

    def on_role_changed(self, message: RoleChanged) -> None:
        self.apply_role()
        if message.service:
            self.load_audit()

    @staticmethod
    def fitted_columns(width: int) -> dict[str, Columns]:
        wide = width >= WIDE
        return {
            "trusted": fitted(TRUSTED_COLUMNS, None, width),
            "tls-failures": fitted(FAILURE_COLUMNS, None, width),
            "audit": fitted(AUDIT_COLUMNS, None if wide else AUDIT_NARROW, width),
        }

    def on_resize(self, event: events.Resize) -> None:
        columns = self.fitted_columns(event.size.width)
        if columns == self.columns:
            return
        self.columns = columns
        with self.app.batch_update():
            for table_id, chosen in columns.items():
                table = self.query_one(f"#{table_id}", DataTable)
                table.clear(columns=True)
                for key, label, width in chosen:
                    table.add_column(label, key=key, width=width)
            self.show_trusted(trusted_of(self.show_answer))
            self.show_failures()
            if self.audit_loaded:
                self.apply_text_filter(announce=False)

    @property
    def message_line(self) -> Static:
        return self.query_one("#security-message", Static)

    def now(self) -> float:
        clock = getattr(self.app, "clock", time.time)
        return float(clock())

    # --- role --------------------------------------------------------------------------------

    def apply_role(self) -> None:
        """The audit log only in service mode: locking clears what was shown."""
        service = self.service_mode
        self.query_one("#audit-note", Static).display = not service
        for widget in self.query(".audit-filters, #audit, #audit-detail"):
            widget.display = service
        if not service:
            self.audit = []
            self.audit_shown = []
            self.audit_loaded = False
            self.audit_generation += 1
            self.query_one("#audit", DataTable).clear()
            self.query_one("#audit-detail", Static).update("")

    def needs_service(self, what: str) -> bool:
        if self.service_mode:
            return False
        set_message(self.message_line, f"{what}: {READ_ONLY_NOTE}", error=True)
        return True

    # --- certificates --------------------------------------------------------------------------

    def action_refresh(self) -> None:
        set_message(self.message_line, "")
        self.load()

    def load(self) -> None:
        if not getattr(self.app, "connected", True):
            return
        self.call_in_background(
            self._fetch, self.show_state, group="security-load", on_error=self.show_unknown
        )
        if self.service_mode and self.active_view == "audit-pane":
            self.load_audit()

    def _fetch(self) -> tuple[dict[str, Any] | BaseException, dict[str, Any]]:
        """tls.show and config.get; a tls.show refusal is shown, the settings still are."""
        try:
            show: dict[str, Any] | BaseException = self.client.tls_show()
        except Exception as error:  # shown in the certificate panel
            show = error
        return show, self.client.settings()

    def show_unknown(self, error: BaseException) -> None:
        self.loaded = True
        self.query_one("#cert-info", Static).update(f"Certificate: {describe_error(error)}")

    def show_state(self, loaded: tuple[dict[str, Any] | BaseException, dict[str, Any]]) -> None:
        show, settings = loaded
        self.loaded = True
        self.settings = settings
        info = self.query_one("#cert-info", Static)
        warning_line = self.query_one("#cert-warning", Static)
        if isinstance(show, BaseException):
            self.show_answer = {}
            info.update(f"Certificate: {describe_error(show)}")
            warning_line.update("")
            warning_line.display = False
            self.show_trusted([])
        else:
            self.show_answer = show
            lines, warning = certificate_lines(show, self.now(), settings)
            info.update("\n".join(lines))
            warning_line.update(warning)
            warning_line.display = bool(warning)
            warning_line.set_class("certificate expired" in warning, "-expired")
            self.show_trusted(trusted_of(show))
            for event in show.get("recent_failures") or []:
                if isinstance(event, dict):
                    self.remember_failure(event)
            self.show_failures()
        self.query_one("#tls-settings", Static).update(
            settings_text(settings, None if isinstance(show, BaseException) else show)
        )

    def show_trusted(self, trusted: list[dict[str, Any]]) -> None:
        table = self.query_one("#trusted", DataTable)
        selected = selected_key(table)
        now = self.now()
        self.trusted = {}
        table.clear()
        for entry in trusted:
            key = trusted_key(entry)
            if not key or key in self.trusted:
                continue
            self.trusted[key] = entry
            cells = trusted_cells(entry, now)
            table.add_row(
                *[
                    styled(self.app, cells[column], STYLES)
                    if column == "expires"
                    else cells[column]
                    for column, _, _ in self.columns["trusted"]
                ],
                key=key,
            )
        count = len(self.trusted)
        self.query_one("#trusted-bar", Static).update(
            f"Trusted CAs: {count}" + ("" if count else " (TLS peers cannot be verified)")
            + "   t: trust a CA  x: stop trusting"
        )  # fmt: skip
        if selected in self.trusted:
            table.move_cursor(row=table.get_row_index(selected), animate=False)

    # --- refused handshakes --------------------------------------------------------------------

    def failures(self) -> list[dict[str, Any]]:
        """The app keeps every refused handshake since the console started; a screen hosted
        alone keeps its own."""
        kept = getattr(self.app, "tls_failures", None)
        events = list(kept) if kept is not None else []
        seen = {(e.get("time"), str(e.get("data"))) for e in events}
        events += [e for e in self.own_failures if (e.get("time"), str(e.get("data"))) not in seen]
        return sorted(events, key=lambda e: float(e.get("time") or 0), reverse=True)

    def remember_failure(self, event: dict[str, Any]) -> None:
        if "topic" not in event:  # a tls.show entry: the event's data itself
            event = {"topic": "association", "time": event.get("time"), "data": event}
        key = (event.get("time"), str(event.get("data")))
        if all((e.get("time"), str(e.get("data"))) != key for e in self.own_failures):
            self.own_failures.append(event)
            del self.own_failures[:-FAILURES_KEPT]

    def show_failures(self) -> None:
        table = self.query_one("#tls-failures", DataTable)
        fmt = self.app.format_time if hasattr(self.app, "format_time") else _hms
        events = self.failures()
        table.clear()
        for index, event in enumerate(events[:FAILURES_KEPT]):
            cells = failure_cells(event, fmt)
            table.add_row(
                *[cells[key] for key, _, _ in self.columns["tls-failures"]], key=str(index)
            )
        count = len(events)
        self.query_one("#failures-bar", Static).update(
            f"TLS handshakes refused since the console started: {count}"
            if count
            else "TLS handshakes refused: none since the console started"
        )

    def on_daemon_events(self, message: DaemonEvents) -> None:
        failed = [event for event in message.events if is_tls_failure(event)]
        if not failed:
            return
        if getattr(self.app, "tls_failures", None) is None:
            for event in failed:
                self.remember_failure(event)
        self.show_failures()

    # --- changes (service mode) ----------------------------------------------------------------

    def action_new_key(self) -> None:
        if self.needs_service("New key"):
            return
        cert = certificate_of(self.show_answer)
        cn = str(self.settings.get("ae_title") or "")
        replaces = cert is not None
        self.app.push_screen(KeyDialog(cn, replaces=replaces), self.key_made)

    def key_made(self, answer: dict[str, Any] | None) -> None:
        if not answer:
            return
        if answer.get("_op") == "tls.csr":
            path = answer.get("path") or "DATA/tls/csr.pem"
            set_message(
                self.message_line,
                f"CSR written to {path}: have the hospital's CA sign it, then import the "
                "certificate (i).",
                ok=True,
            )
        else:
            set_message(
                self.message_line,
                "New key and self-signed certificate in place: peers must trust it "
                "(give them the certificate).",
                ok=True,
            )
        self.load()

    def action_import_cert(self) -> None:
        if self.needs_service("Import certificate"):
            return
        fields = [
            ("cert", "Certificate", "/media/usb/appliance.pem (signed for our key)", True),
            ("chain", "Chain", "intermediate CAs, if any (optional)", False),
        ]

        def chosen(values: dict[str, str] | None) -> None:
            if not values:
                return
            self.change(
                lambda: self.client.tls_import_cert(values["cert"], values.get("chain") or None),
                f"certificate {values['cert']} imported",
            )

        self.app.push_screen(PathsDialog("Import the signed certificate", fields), chosen)

    def action_trust(self) -> None:
        if self.needs_service("Trust CA"):
            return
        fields = [("path", "CA certificate", "/media/usb/hospital-ca.pem", True)]

        def chosen(values: dict[str, str] | None) -> None:
            if values:
                self.change(
                    lambda: self.client.tls_trust(values["path"]),
                    f"CA certificate {values['path']} trusted",
                )

        self.app.push_screen(PathsDialog("Trust a CA certificate", fields), chosen)

    def action_untrust(self) -> None:
        if self.needs_service("Untrust CA"):
            return
        key = selected_key(self.query_one("#trusted", DataTable))
        entry = self.trusted.get(key or "")
        if key is None or entry is None:
            set_message(self.message_line, "no trusted CA selected", error=True)
            return
        subject = entry.get("subject") or key
        question = (
            f"Stop trusting {subject}? Peers with certificates it signed are refused from now "
            "on (TLS associations), and signatures made with them become untrustworthy."
        )

        def answer(yes: bool | None) -> None:
            if yes:
                self.change(lambda: self.client.tls_untrust(key), f"{subject} no longer trusted")

        self.app.push_screen(ConfirmModal(question, yes="Untrust"), answer)

    def change(self, call: Callable[[], Any], done: str) -> None:
        set_message(self.message_line, "asking the appliance...")

        def finished(_: Any) -> None:
            set_message(self.message_line, done, ok=True)
            self.load()

        self.call_in_background(
            call,
            finished,
            group="security-change",
            on_error=lambda error: set_message(
                self.message_line, describe_error(error), error=True
            ),
        )

    # --- views ---------------------------------------------------------------------------------

    @property
    def active_view(self) -> str:
        return self.query_one("#security-tabs", TabbedContent).active

    def action_view(self, view: str) -> None:
        tabs = self.query_one("#security-tabs", TabbedContent)
        tabs.active = "audit-pane" if view == "audit" else "certificates"
        if view == "audit":
            if self.service_mode:
                if not self.audit_loaded:
                    self.load_audit()
                self.query_one("#audit", DataTable).focus()
        else:
            self.query_one("#trusted", DataTable).focus()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "audit-pane" and self.service_mode and not self.audit_loaded:
            self.load_audit()

    def action_filter(self) -> None:
        if self.active_view != "audit-pane":
            self.action_view("audit")
        if self.service_mode:
            self.query_one("#audit-event", Input).focus()

    # --- audit log -----------------------------------------------------------------------------

    def load_audit(self) -> None:
        if not self.service_mode:
            return
        event = self.query_one("#audit-event", Input).value.strip()
        since = self.query_one("#audit-since", Input).value.strip()
        generation = self.audit_generation
        set_message(self.message_line, "reading the audit log...")
        self.call_in_background(
            lambda: self.client.audit_list(since=since, event=event, limit=AUDIT_LIMIT),
            lambda answer: self.show_audit(answer, generation),
            group="security-audit",
            on_error=lambda error: set_message(
                self.message_line, f"audit log: {describe_error(error)}", error=True
            ),
        )

    def show_audit(self, answer: dict[str, Any], generation: int | None = None) -> None:
        # An answer that comes back after service mode locked is dropped: it holds patient data.
        if not self.service_mode or (
            generation is not None and generation != self.audit_generation
        ):
            return
        self.audit_loaded = True
        entries = answer.get("entries") or []
        # The daemon answers oldest first: the newest is what an operator looks for.
        self.audit = [m for m in reversed(entries) if isinstance(m, dict)]
        self.audit_damaged = int(answer.get("damaged") or 0)
        self.apply_text_filter()

    def apply_text_filter(self, *, announce: bool = True) -> None:
        text = self.query_one("#audit-text", Input).value
        table = self.query_one("#audit", DataTable)
        fmt = self.app.format_time if hasattr(self.app, "format_time") else _dated
        self.audit_shown = [m for m in self.audit if audit_matches(m, text)]
        with self.app.batch_update():
            table.clear()
            for index, message in enumerate(self.audit_shown):
                cells = audit_cells(message, fmt)
                table.add_row(
                    *[
                        styled(self.app, cells[key], STYLES) if key == "outcome" else cells[key]
                        for key, _, _ in self.columns["audit"]
                    ],
                    key=str(index),
                )
        total, shown = len(self.audit), len(self.audit_shown)
        more = f" (newest {AUDIT_LIMIT})" if total >= AUDIT_LIMIT else ""
        text_note = f", {shown} with {text.strip()!r}" if text.strip() else ""
        if self.audit_damaged:
            text_note += f"; {self.audit_damaged} damaged lines skipped"
        if announce:
            plural = "" if total == 1 else "s"
            set_message(self.message_line, f"audit log: {total} message{plural}{more}{text_note}")
        self.describe_audit()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id == "audit-text":
            self.apply_text_filter()
        else:
            self.load_audit()
        self.query_one("#audit", DataTable).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        # The text filter works on what was read: as typed, no round trip.
        if event.input.id == "audit-text" and self.audit_loaded:
            event.stop()
            self.apply_text_filter()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "audit":
            self.describe_audit()

    def describe_audit(self) -> None:
        table = self.query_one("#audit", DataTable)
        key = selected_key(table)
        text = ""
        if key is not None:
            try:
                text = audit_detail(self.audit_shown[int(key)])
            except (IndexError, ValueError, RowDoesNotExist):
                text = ""
        self.query_one("#audit-detail", Static).update(text)


def _hms(value: Any) -> str:
    seconds = epoch_of(value)
    return time.strftime("%H:%M:%S", time.localtime(seconds)) if seconds else ""


def _dated(value: Any, with_date: bool = False) -> str:
    seconds = epoch_of(value)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else ""
