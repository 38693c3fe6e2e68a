"""SVG snapshots of the Security screen: the certificates view for a technologist and the
audit log in service mode, with the key dialog.

Replayed like ``test_console_snapshots``: the answers in ``console_fixtures/security_answers.json``
were captured once from a real daemon (a self-signed certificate for 20 days made with
tls.generate, two test CAs trusted with tls.trust, a CT study stored with DCMTK storescu, the
audit log it wrote) and then fixed: times shifted to 2026-01-01 10:50 UTC, paths replaced. The
refused TLS handshakes are ``association`` events in the daemon's shape, delivered to the app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from console.app import ConsoleApp
from tests.test_console_snapshots import BASE, ReplayClient, settle

SECURITY_ANSWERS = Path(__file__).parent / "console_fixtures" / "security_answers.json"
REFUSED = [
    {
        "topic": "association",
        "time": BASE + 3000 + n * 7,
        "data": {
            "event": "tls-failed",
            "peer_address": address,
            "peer_port": 40312 + n,
            "nodes": nodes,
            "reason": reason,
            "time": BASE + 3000 + n * 7,
        },
    }
    for n, (address, nodes, reason) in enumerate(
        [
            ("10.0.0.7", ["ct1"], "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca"),
            ("10.0.0.9", [], "[SSL: PEER_DID_NOT_RETURN_A_CERTIFICATE] peer did not return a "
             "certificate"),
            ("10.0.0.12", ["mr2"], "[SSL: UNSUPPORTED_PROTOCOL] unsupported protocol"),
        ]
    )
]  # fmt: skip


class SecurityReplayClient(ReplayClient):
    def __init__(self) -> None:
        super().__init__()
        self.security: dict[str, Any] = json.loads(SECURITY_ANSWERS.read_text())

    def call(self, op: str, **args: Any) -> Any:
        if op in self.security:
            return self.security[op]
        return super().call(op, **args)


def make_app() -> ConsoleApp:
    return ConsoleApp(
        client=SecurityReplayClient(), clock=lambda: BASE + 3600, utc=True, first_screen="security"
    )


async def with_refusals(pilot: Any) -> None:
    await settle(pilot)
    pilot.app.deliver_events(REFUSED)
    await settle(pilot)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_security_screen_snapshot(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=with_refusals)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_audit_log_snapshot(snap_compare: Any, size: tuple[int, int]) -> None:
    async def audit(pilot: Any) -> None:
        await settle(pilot)
        pilot.app._set_role(True)  # unlocked: the replayed daemon has no password to check
        await pilot.press("a")
        await settle(pilot)
        await pilot.press("end")
        await settle(pilot)

    assert snap_compare(make_app(), terminal_size=size, run_before=audit)


def test_key_dialog_snapshot(snap_compare: Any) -> None:
    async def dialog(pilot: Any) -> None:
        await settle(pilot)
        pilot.app._set_role(True)
        await pilot.press("n")
        await settle(pilot)

    assert snap_compare(make_app(), terminal_size=(100, 30), run_before=dialog)
