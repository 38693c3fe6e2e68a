"""`dicom-appliance audit`: list the audit trail (DATA/audit), filtered by age and event."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from appliance import audit

COMMANDS = ("audit",)
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "audit",
        parents=[common],
        help="list the audit trail (DICOM audit messages, PS3.15 A.5)",
        description="List audit messages, oldest first. Reading the trail is itself audited "
        "(Audit Log Used).",
    )
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help="only messages from WHEN on: a date (2026-11-01), a date-time, or an age "
        "(30m, 24h, 7d, 2w)",
    )
    parser.add_argument(
        "--event",
        metavar="TYPE",
        help="only this event (query, export, security-alert, ...) or event type (login, "
        "node-authentication, software-configuration, ...); `--event help` lists them",
    )
    parser.add_argument("--limit", type=int, metavar="N", help="only the newest N messages")
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per message, with its XML"
    )


def _peer(summary: dict[str, Any]) -> str:
    """The remote side: a participant that is neither the requesting user nor us."""
    for participant in summary["participants"]:
        if participant["role"] in ("source", "destination", "destination-media", "source-media"):
            if participant.get("user_name") == audit.APP_NAME:  # this appliance
                continue
            where = participant["network_access_point"]
            return participant["user_id"] + (f"@{where}" if where else "")
    return ""


def _subject(summary: dict[str, Any]) -> str:
    parts = [f"{p['id']} {p['name']}".strip() for p in summary["patients"]]
    parts += summary["studies"][:1]
    if len(summary["studies"]) > 1:
        parts.append(f"+{len(summary['studies']) - 1} studies")
    return "; ".join(parts)


def format_line(summary: dict[str, Any]) -> str:
    event = summary["event"]
    if summary["event_types"]:
        event += f"/{','.join(summary['event_types'])}"
    return (
        f"{summary['time'][:23]}  {event:<40} {summary['outcome_name']:<7} "
        f"{summary['user'] or '-':<16} {_peer(summary) or '-':<28} {_subject(summary) or '-'}"
        + (f"  ({summary['description']})" if summary["description"] else "")
    )


def run(args: argparse.Namespace, data_dir: Path) -> int:
    if args.event == "help":
        for name, code in audit.iter_codes():
            print(f"{name:<36} {code.code} {code.meaning}")
        return EXIT_OK
    try:
        since = audit.parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.limit is not None and args.limit < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    damaged: list[str] = []
    try:
        entries = list(audit.read(data_dir, since=since, event=args.event, damaged=damaged))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: cannot read {audit.audit_dir(data_dir)}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.limit:
        entries = entries[-args.limit :]
    for entry in entries:
        summary = entry.summary()
        if args.json:
            print(json.dumps({**summary, "xml": entry.xml}, ensure_ascii=False))
        else:
            print(format_line(summary))
    for problem in damaged:
        print(f"warning: skipped a line that is not an audit message: {problem}", file=sys.stderr)
    log_used(data_dir, f"audit listed {len(entries)} messages from the command line")
    return EXIT_OK


def configure_sink(data_dir: Path, store: Any) -> None:
    """Audit what a command changes directly in the data folder (config set, node add...)."""
    try:
        settings = store.settings()
    except Exception:  # a broken configuration must stay fixable with `config set`
        settings = None
    audit.configure(data_dir, settings)


def log_used(data_dir: Path, description: str) -> None:
    """Audit Log Used (110101): reading the trail is recorded in the trail."""
    audit.emit(
        "audit-log-used",
        description=description,
        participants=[audit.actor() or audit.os_user()],
        objects=[audit.audit_log_object(data_dir)],
    )
