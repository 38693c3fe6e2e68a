"""Storage commitment commands: `commit`, `commitment list`, and `send --commit`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from appliance import commitment, scu
from appliance.config import ConfigStore, Node, Settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

COMMANDS = ("commit", "commitment")


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    commit = commands.add_parser(
        "commit",
        parents=[common],
        help="ask a node to commit instances it holds (Storage Commitment)",
    )
    commit.add_argument("node")
    commit.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH", help="files or folders of the instances"
    )
    commit.add_argument(
        "--study",
        action="append",
        default=[],
        metavar="UID",
        help="every instance of this study in our archive (repeatable)",
    )
    commit.add_argument(
        "--timeout",
        type=int,
        help="seconds to wait for the report (default: the setting commitment_timeout)",
    )
    commit.add_argument("--json", action="store_true", help="print the result as JSON")

    listing = commands.add_parser(
        "commitment", parents=[common], help="storage commitment requests, ours and the nodes'"
    )
    listing_cmds = listing.add_subparsers(dest="commitment_command", required=True)
    show = listing_cmds.add_parser("list", parents=[common], help="list commitment transactions")
    show.add_argument("--json", action="store_true", help="print JSON")


def add_send_option(send: argparse.ArgumentParser) -> None:
    send.add_argument(
        "--commit",
        action="store_true",
        help="then ask the node to commit the instances it accepted (Storage Commitment)",
    )


def run(args: argparse.Namespace, store: ConfigStore) -> int:
    if args.command == "commit":
        return cmd_commit(args, store)
    return cmd_commitment_list(args, store)


# --- commit -------------------------------------------------------------------------------------


def _references_from_files(paths: list[Path]) -> tuple[list[commitment.Reference], list[str]]:
    files, problems = scu.collect_files(paths)
    references: list[commitment.Reference] = []
    errors = [f"{p.path}: {p.message}" for p in problems]
    for path in files:
        inspected = scu.inspect_file(path)
        if isinstance(inspected, scu.Candidate):
            references.append((inspected.sop_class_uid, inspected.sop_instance_uid))
        elif inspected.outcome != scu.SKIPPED:
            errors.append(f"{path}: {inspected.message}")
    return references, errors


def _references_from_archive(
    data_dir: Path, studies: list[str]
) -> tuple[list[commitment.Reference], list[str]]:
    from appliance.archive import Archive

    archive = Archive(data_dir)
    try:
        wanted = set(studies)
        found = [r for r in archive.instances() if r.study_uid in wanted]
    finally:
        archive.close()
    references = [(r.sop_class_uid, r.sop_instance_uid) for r in found]
    present = {r.study_uid for r in found}
    errors = [f"study {uid}: not in the archive" for uid in studies if uid not in present]
    return references, errors


def cmd_commit(args: argparse.Namespace, store: ConfigStore) -> int:
    if not args.paths and not args.study:
        print("error: name files or folders, or --study UID", file=sys.stderr)
        return EXIT_USAGE
    node = store.node(args.node)
    settings = store.settings()
    references, errors = _references_from_files(args.paths)
    if args.study:
        from_archive, missing = _references_from_archive(store.data_dir, args.study)
        references += from_archive
        errors += missing
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if not references:
        print("error: no instances to commit", file=sys.stderr)
        return EXIT_FAILED
    result = request(settings, node, references, store.data_dir, timeout=args.timeout)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print("\n".join(result.lines()))
    if errors or result.status() != commitment.COMMITTED:
        return EXIT_FAILED
    return EXIT_OK


def request(
    settings: Settings,
    node: Node,
    references: list[commitment.Reference],
    data_dir: Path,
    *,
    timeout: float | None = None,
) -> commitment.OutgoingRequest:
    commitments = commitment.CommitmentStore(data_dir)
    try:
        return commitment.request_commitment(
            settings, node, references, commitments, timeout=timeout
        )
    finally:
        commitments.close()


def commit_sent(
    settings: Settings, node: Node, report: scu.SendReport, data_dir: Path
) -> commitment.OutgoingRequest | None:
    """After `send --commit`: ask the node to commit every instance it stored (success or
    warning status); None when there is none."""
    references = [
        (r.sop_class_uid, r.sop_instance_uid)
        for r in report.results
        if r.outcome in (scu.SUCCESS, scu.WARNING) and r.sop_class_uid and r.sop_instance_uid
    ]
    if not references:
        return None
    return request(settings, node, references, data_dir)


# --- commitment list ----------------------------------------------------------------------------


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _incoming_line(request: commitment.IncomingRequest) -> str:
    text = (
        f"from {request.requester_ae:<16} {_when(request.received_at)}  {request.state:<11} "
        f"{request.transaction_uid}: {len(request.references)} requested"
    )
    if request.state in (commitment.RECEIVED,):
        return text
    text += f", {len(request.succeeded)} committed, {len(request.failed)} failed"
    if request.state == commitment.DELIVERED:
        text += f"; report sent on the {request.delivered_via}"
    elif request.last_error:
        text += f"; {request.attempts} attempts, last: {request.last_error}"
    return text


def _outgoing_line(request: commitment.OutgoingRequest, now: float) -> str:
    counts = request.counts(now)
    text = (
        f"to   {request.node:<16} {_when(request.requested_at)}  {request.status(now):<11} "
        f"{request.transaction_uid}: {len(request.references)} requested, "
        f"{counts[commitment.COMMITTED]} committed, {counts[commitment.FAILED]} failed, "
        f"{counts[commitment.UNCOMMITTED] + counts[commitment.PENDING]} uncommitted"
    )
    if request.state == commitment.REFUSED:
        text += f"; {request.error}"
    return text


def cmd_commitment_list(args: argparse.Namespace, store: ConfigStore) -> int:
    commitments = commitment.CommitmentStore(store.data_dir)
    try:
        incoming = commitments.incoming()
        outgoing = commitments.outgoing()
    finally:
        commitments.close()
    now = time.time()
    if args.json:
        print(
            json.dumps(
                {
                    "outgoing": [r.as_dict(now) for r in outgoing],
                    "incoming": [r.as_dict() for r in incoming],
                },
                indent=2,
            )
        )
        return EXIT_OK
    print("Requests we made (we are SCU):")
    for out in outgoing:
        print("  " + _outgoing_line(out, now))
        for line in out.lines(now)[1:]:
            print("  " + line)
    if not outgoing:
        print("  none")
    print("Requests made to us (we are SCP):")
    for req in incoming:
        print("  " + _incoming_line(req))
    if not incoming:
        print("  none")
    return EXIT_OK
