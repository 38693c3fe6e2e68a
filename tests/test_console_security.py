"""The console's Security screen and the Studies screen's signature column.

The pure parts (certificate lines and warnings, the key form, audit rows and filters, refused
handshakes) are checked on their own; the screen runs against a real daemon: key 9 and f10,
the help and the palette, what a technologist may do (look) and may not (change keys, read
the audit log), field service unlocking with ctrl+u and making a key and certificate, a CA
trusted from a file made by the tests' CA and untrusted after the question, and the audit log
read and filtered. Refused handshakes come as the daemon's ``association`` events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Input

from console.app import ConsoleApp
from console.client import ApiError, ApplianceClient
from console.screens._forms import READ_ONLY_NOTE
from console.screens.film_composer import FormError
from console.screens.security import (
    AUDIT_HIDDEN,
    KeyDialog,
    KeyValues,
    PathsDialog,
    SecurityScreen,
    audit_cells,
    audit_detail,
    audit_matches,
    build_key_request,
    certificate_lines,
    expiry_state,
    failure_cells,
    parse_sans,
    settings_text,
)
from console.screens.studies import StudiesScreen
from console.widgets import ConfirmModal, HelpModal, PasswordModal
from tests.test_console_print import text_of, wait_until
from tests.test_console_screens import SERVICE_PASSWORD, ScreenHost, service_client_for_tests

NOW = 1767261600.0  # 2026-01-01 10:00:00 UTC
DAY = 86400


def cert(**extra: Any) -> dict[str, Any]:
    return {
        "subject": "CN=APPLIANCE",
        "cn": "APPLIANCE",
        "issuer": "CN=Hospital Root CA",
        "sans": ["DNS:appliance.example.org", "IP:10.0.0.5"],
        "not_after": "2027-01-01T00:00:00+00:00",
        "key": "EC P-256",
        "fingerprint": "0a1b2c3d4e5f" * 5,
        **extra,
    }


AUDIT_MESSAGE = {
    "time": "2026-01-01T10:00:05.000+00:00",
    "event": "instances-transferred",
    "event_code": "110104",
    "event_types": [],
    "action": "C",
    "outcome": 0,
    "outcome_name": "success",
    "description": "",
    "user": "CT01",
    "participants": [
        {
            "user_id": "CT01",
            "alt_user_id": "",
            "requestor": True,
            "network_access_point": "10.0.0.9",
            "role": "source",
        },
        {
            "user_id": "APPLIANCE",
            "alt_user_id": "1234",
            "requestor": False,
            "network_access_point": "10.0.0.5",
            "role": "destination",
        },
    ],
    "patients": [{"id": "PAT001", "name": "DOE^JOHN"}],
    "studies": ["1.2.3.4"],
    "objects": [],
    "xml": "<AuditMessage>...</AuditMessage>",
}


# --- pure parts -------------------------------------------------------------------------------


def test_certificate_lines_say_expiry_and_warn_inside_the_warning_period() -> None:
    show = {"certificate": cert(days_left=365), "warning_days": 30, "warnings": []}
    lines, warning = certificate_lines(show, NOW)
    assert lines[0] == "Subject  CN=APPLIANCE"
    assert lines[1] == "Issuer   CN=Hospital Root CA"
    assert lines[2] == "SANs     DNS:appliance.example.org, IP:10.0.0.5"
    assert lines[3].startswith("Expires  2027-01-01 (365 days left)   key EC P-256   SHA-256 0a1b")
    assert warning == ""
    # days_left from the daemon wins; without it, the clock and not_after say it.
    soon = {"certificate": cert(not_after=NOW + 12 * DAY + 5), "warning_days": 30}
    lines, warning = certificate_lines(soon, NOW)
    assert "(12 days left)" in lines[3]
    assert warning.startswith("WARNING: the certificate expires in 12 days (warning from 30")
    assert expiry_state(cert(not_after=NOW + 40 * DAY), NOW, 30) == "valid"
    assert expiry_state(cert(not_after=NOW + 40 * DAY), NOW, 60) == "expires soon"
    expired = {"certificate": cert(days_left=-3, expired=True, not_after="2025-12-29T00:00:00")}
    lines, warning = certificate_lines(expired, NOW)
    assert "left" not in lines[3]
    assert warning.startswith("WARNING: the certificate expired on 2025-12-29")
    self_signed = {"certificate": cert(issuer="CN=APPLIANCE", self_signed=True)}
    assert certificate_lines(self_signed, NOW)[0][1] == "Issuer   self-signed"


def test_no_certificate_and_other_warnings_from_the_daemon() -> None:
    show = {
        "certificate": None,
        "key": None,
        "csr": {"path": "/var/lib/dicom-appliance/tls/csr.pem", "subject": "CN=X"},
        "warnings": [
            "no key: TLS is off (tls generate or tls csr makes one)",
            "/var/lib/dicom-appliance/tls is mode 0755: others may read it (want 0700)",
        ],
    }
    lines, warning = certificate_lines(show, NOW)
    assert lines[0].startswith("No certificate yet: TLS is off")
    assert lines[2] == "CSR waiting to be signed: /var/lib/dicom-appliance/tls/csr.pem"
    # The "no key" warning is what the lines already say; the mode one is not.
    assert warning == (
        "WARNING: /var/lib/dicom-appliance/tls is mode 0755: others may read it (want 0700)"
    )


def test_tls_settings_line() -> None:
    settings = {"tls_port": 2762, "tls_profile": "bcp195", "tls_peer_auth": "require"}
    assert settings_text(settings, {"certificate": cert()}) == (
        "TLS listener port 2762 · profile BCP 195 (TLS 1.2/1.3, strong suites) · "
        "peers: require a trusted client certificate"
    )
    waiting = settings_text({**settings, "tls_profile": "legacy"}, {"certificate": None})
    assert "port 2762 (waits for a key and certificate)" in waiting and "legacy" in waiting
    assert settings_text({**settings, "tls_port": 0}).startswith("TLS listener off (tls_port 0)")
    assert settings_text({"port": 104}) == "TLS settings: not known to this daemon version"


def test_key_form_is_checked_with_the_field_it_is_about() -> None:
    assert parse_sans("appliance.example.org, 10.0.0.5 DNS:pacs;IP:::1") == [
        "DNS:appliance.example.org",
        "IP:10.0.0.5",
        "DNS:pacs",
        "IP:::1",
    ]
    assert build_key_request(KeyValues(csr=False, cn=" APPLIANCE ", days="730")) == (
        "tls.generate",
        {"cn": "APPLIANCE", "days": 730},
    )
    assert build_key_request(
        KeyValues(csr=True, cn="ct.example", sans="ct.example", key_bits=3072, days="9")
    ) == ("tls.csr", {"cn": "ct.example", "sans": ["DNS:ct.example"], "rsa": 3072})
    assert build_key_request(KeyValues(csr=False, cn="A", passphrase="long enough")) == (
        "tls.generate",
        {"cn": "A", "passphrase": "long enough"},
    )
    refusals = {
        "cn": KeyValues(csr=False, cn=" "),
        "sans": KeyValues(csr=False, cn="A", sans="IP:host.example"),
        "days": KeyValues(csr=False, cn="A", days="ten"),
        "passphrase": KeyValues(csr=True, cn="A", passphrase="short"),
    }
    for field, values in refusals.items():
        with pytest.raises(FormError) as caught:
            build_key_request(values)
        assert caught.value.field == field
    with pytest.raises(FormError, match="not a host name"):
        parse_sans("bad/name")


def test_audit_rows_filters_and_detail() -> None:
    def fmt(seconds: Any, with_date: bool = False) -> str:
        return f"T{int(seconds) - int(NOW)}"

    assert audit_cells(AUDIT_MESSAGE, fmt) == {
        "time": "T5",
        "event": "instances-transferred",
        "outcome": "success",
        "user": "CT01",
        "peer": "10.0.0.9",
        "subject": "PAT001 DOE^JOHN; study 1.2.3.4",
    }
    alert = {**AUDIT_MESSAGE, "event": "security-alert", "event_types": ["security-configuration"]}
    alert.update(outcome=8, outcome_name="serious", patients=[], studies=[])
    assert audit_cells(alert, fmt)["event"] == "security-configuration"
    assert audit_detail(alert).startswith("security-alert · CT01 source")
    assert audit_cells(alert, fmt)["outcome"] == "serious"
    assert audit_matches(AUDIT_MESSAGE, "doe ct01")
    assert audit_matches(AUDIT_MESSAGE, "")
    assert not audit_matches(AUDIT_MESSAGE, "doe roe")
    assert not audit_matches(AUDIT_MESSAGE, "AuditMessage")  # the XML is not searched
    assert audit_detail(AUDIT_MESSAGE) == (
        "CT01 source at 10.0.0.9 [requestor] · APPLIANCE (1234) destination at 10.0.0.5 · "
        "PAT001 DOE^JOHN; study 1.2.3.4"
    )


def test_refused_handshake_row() -> None:
    event = {
        "topic": "association",
        "time": NOW,
        "data": {
            "event": "tls-failed",
            "peer_address": "10.0.0.7",
            "peer_port": 40312,
            "nodes": ["ct1"],
            "reason": "tlsv1 alert unknown ca",
            "time": NOW,
        },
    }
    assert failure_cells(event, lambda t: "10:00:00") == {
        "time": "10:00:00",
        "peer": "10.0.0.7:40312",
        "node": "ct1",
        "reason": "tlsv1 alert unknown ca",
    }


# --- the screen with answers given here -------------------------------------------------------


class GivenAnswers(ApplianceClient):
    """Fixed answers (an audit log with patient data) to test what the screen does with them."""

    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__(Path("/nonexistent/control.sock"))
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call(self, op: str, **args: Any) -> Any:
        self.calls.append((op, args))
        if op in self.answers:
            return self.answers[op]
        raise ApiError("unknown-op", f"unknown op {op!r}")


ANSWERS = {
    "tls.show": {"certificate": cert(days_left=365), "trusted": [], "warnings": []},
    "config.get": {"tls_port": 2762, "tls_profile": "bcp195", "tls_peer_auth": "require"},
    # Oldest first, as the daemon answers.
    "audit.list": {
        "entries": [{**AUDIT_MESSAGE, "user": "MR02", "patients": []}, AUDIT_MESSAGE],
        "count": 2,
        "damaged": 0,
    },
}


async def test_the_audit_log_is_shown_in_service_mode_only_and_cleared_on_lock() -> None:
    client = GivenAnswers(ANSWERS)
    app = ScreenHost(client, SecurityScreen())
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: "Subject  CN=APPLIANCE" in text_of(screen, "#cert-info"))
        await pilot.press("a")
        assert text_of(screen, "#audit-note") == AUDIT_HIDDEN
        assert not any(op == "audit.list" for op, _ in client.calls)
        app.set_service_mode(True)
        table = screen.query_one("#audit", DataTable)
        await wait_until(pilot, lambda: table.row_count == 2)
        assert ("audit.list", {"limit": 500}) in client.calls
        assert "DOE^JOHN" in text_of(screen, "#audit-detail")
        # The text filter works on what was read.
        screen.query_one("#audit-text", Input).value = "mr02"
        await wait_until(pilot, lambda: table.row_count == 1)
        assert text_of(screen, "#security-message") == "audit log: 2 messages, 1 with 'mr02'"
        # Event type and age go to the daemon.
        screen.query_one("#audit-event", Input).value = "query"
        screen.query_one("#audit-since", Input).value = "24h"
        screen.query_one("#audit-event", Input).focus()
        await pilot.press("enter")
        await wait_until(
            pilot,
            lambda: (
                ("audit.list", {"limit": 500, "since": "24h", "event": "query"}) in client.calls
            ),
        )
        app.set_service_mode(False)
        await wait_until(pilot, lambda: table.row_count == 0)
        assert screen.audit == [] and text_of(screen, "#audit-detail") == ""
        assert screen.query_one("#audit-note").display


async def test_studies_show_the_signature_state_when_the_daemon_reports_it() -> None:
    rows = [
        {"study_uid": f"1.2.{n}", "patient_name": f"P{n}", "signatures": state}
        for n, state in enumerate(["valid", "invalid", "untrustworthy", "mixed", "none"])
    ]
    client = GivenAnswers({"archive.studies": rows, "archive.series": []})
    app = ScreenHost(client, StudiesScreen())
    async with app.run_test(size=(120, 30)) as pilot:
        table = app.screen.query_one("#studies-table", DataTable)
        await wait_until(pilot, lambda: table.row_count == 5)
        assert [str(c.label) for c in table.ordered_columns][-1] == "Signature"
        column = table.ordered_columns[-1].key
        shown = [str(table.get_cell(f"1.2.{n}", column)) for n in range(5)]
        assert shown == ["valid", "INVALID", "untrusted", "mixed", ""]
        # A daemon that does not verify signatures: no column.
        client.answers["archive.studies"] = [
            {k: v for k, v in rows[0].items() if k != "signatures"}
        ]
        app.screen.search()
        await wait_until(pilot, lambda: table.row_count == 1)
        assert "Signature" not in [str(c.label) for c in table.ordered_columns]


# --- against the daemon -----------------------------------------------------------------------


async def unlock(app: ConsoleApp, pilot: Any) -> None:
    await pilot.press("ctrl+u")
    await wait_until(pilot, lambda: isinstance(app.screen, PasswordModal))
    await pilot.press(*SERVICE_PASSWORD, "enter")
    await wait_until(pilot, lambda: app.service_mode)


async def test_key_9_and_f10_show_the_security_screen_for_technologists(daemon: Any) -> None:
    app = ConsoleApp(daemon.data_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.connected)
        await pilot.press("9")
        await pilot.pause()
        screen = app.screen
        assert screen is app.main_screens["security"]
        await pilot.press("2", "f10")
        await pilot.pause()
        assert app.screen is screen
        assert isinstance(screen, SecurityScreen)
        await wait_until(pilot, lambda: screen.loaded)
        assert text_of(screen, "#tls-settings").startswith("TLS listener port 2762")
        await pilot.press("question_mark")
        help_modal = await wait_until(
            pilot, lambda: isinstance(app.screen, HelpModal) and app.screen
        )
        keys = dict(help_modal.keys)
        assert keys["n"] == "New key" and keys["t"] == "Trust CA" and keys["x"] == "Untrust CA"
        assert keys["9, f10"].startswith("Security")
        await pilot.press("escape")
        commands = [c.title for c in app.get_system_commands(app.screen)]
        assert "Go to Security" in commands and "Security: Import cert" in commands
        # A technologist looks; changes and the audit log need service mode.
        for key in ("n", "i", "t", "x"):
            await pilot.press(key)
            await pilot.pause()
            assert app.screen is screen
            assert text_of(screen, "#security-message").endswith(READ_ONLY_NOTE)
        await pilot.press("a")
        assert text_of(screen, "#audit-note") == AUDIT_HIDDEN
        # A refused handshake while the screen was closed is there when it opens again.
        await pilot.press("1")
        app.deliver_events(
            [
                {
                    "topic": "association",
                    "time": 1767261600.0,
                    "data": {
                        "event": "tls-failed",
                        "peer_address": "127.0.0.1",
                        "peer_port": 50000,
                        "nodes": [],
                        "reason": "peer did not return a certificate",
                    },
                }
            ]
        )
        await pilot.press("9", "c")
        failures = screen.query_one("#tls-failures", DataTable)
        await wait_until(pilot, lambda: failures.row_count == 1)
        assert "refused since the console started: 1" in text_of(screen, "#failures-bar")


async def test_field_service_makes_a_key_trusts_and_untrusts_a_ca_and_reads_the_audit_log(
    daemon: Any, tmp_path: Path
) -> None:
    from tests.tls_helpers import make_ca, write_pem

    service = service_client_for_tests(daemon)  # sets the service password
    service.close()
    ca = make_ca("Hospital Test CA")
    ca_file = tmp_path / "hospital-ca.pem"
    write_pem(ca_file, ca.cert_pem)
    app = ConsoleApp(daemon.data_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.connected)
        await pilot.press("9")
        screen = app.screen
        assert isinstance(screen, SecurityScreen)
        await wait_until(pilot, lambda: screen.loaded)
        assert text_of(screen, "#cert-info").startswith("No certificate yet")
        await unlock(app, pilot)

        # A key and a self-signed certificate.
        await pilot.press("n")
        dialog = await wait_until(pilot, lambda: isinstance(app.screen, KeyDialog) and app.screen)
        assert dialog.query_one("#key-cn", Input).value == "APPLIANCE"
        dialog.query_one("#key-sans", Input).value = "localhost, 127.0.0.1"
        dialog.query_one("#key-days", Input).value = "20"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.screen is screen)
        await wait_until(pilot, lambda: "Subject  CN=APPLIANCE" in text_of(screen, "#cert-info"))
        info = text_of(screen, "#cert-info")
        assert "Issuer   self-signed" in info and "DNS:localhost, IP:127.0.0.1" in info
        # 20 days is inside the 30-day warning period.
        assert "WARNING: the certificate expires in" in text_of(screen, "#cert-warning")

        # Trust a CA from a file, then stop trusting it (after the question).
        await pilot.press("t")
        paths = await wait_until(pilot, lambda: isinstance(app.screen, PathsDialog) and app.screen)
        paths.query_one("#path-path", Input).value = "hospital-ca.pem"
        await pilot.press("enter")
        assert "absolute path" in text_of(paths, "#path-path-error")
        paths.query_one("#path-path", Input).value = str(ca_file)
        await pilot.press("enter")
        trusted = screen.query_one("#trusted", DataTable)
        await wait_until(pilot, lambda: trusted.row_count == 1)
        assert trusted.get_row_at(0)[0] == "Hospital Test CA"
        trusted.focus()
        await pilot.press("x")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal))
        await pilot.press("y")
        await wait_until(pilot, lambda: trusted.row_count == 0)

        # The audit log: the certificate changes are in it.
        await pilot.press("a")
        audit = screen.query_one("#audit", DataTable)
        await wait_until(
            pilot,
            lambda: audit.row_count > 0 or "audit log:" in text_of(screen, "#security-message"),
        )
        await wait_until(pilot, lambda: audit.row_count > 0)
        screen.query_one("#audit-text", Input).value = "security"
        await wait_until(pilot, lambda: 0 < audit.row_count)
        await pilot.press("ctrl+l")
        await wait_until(pilot, lambda: audit.row_count == 0)
