"""`dicom-appliance media import PATH`: import a patient disc, a disc image or a folder.

The reconciliation of the disc's patients comes first: ``--keep`` stores the objects as they
are, ``--map-to PATIENT_ID`` gives them a local patient's ID, name, birth date and sex,
``--new-id ID --new-name NAME`` gives them new values (the originals are kept in the objects'
Original Attributes Sequence). Without a choice the command asks on a terminal, showing each
disc patient with its studies and the matching local patients; without a terminal it keeps the
values and says so. The import is a job of the daemon (its id is printed; ``--wait`` follows
it); without a daemon the files are imported directly, once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from appliance import jobs_cli
from appliance.config import ConfigStore
from appliance.control import ApiError
from appliance.control_client import DaemonUnavailable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WARNINGS = 3


def add_parser(cmds: Any, common: argparse.ArgumentParser) -> None:
    parser = cmds.add_parser(
        "import",
        parents=[common],
        help="import a patient disc, a disc image (ISO) or a folder into the archive",
        description="Import the DICOM objects of a disc (a device such as /dev/sr0), an ISO "
        "file or a folder. The DICOMDIR is read when it can be trusted, else every file. "
        "Choose what happens to the disc's patient values with --keep, --map-to or "
        "--new-id/--new-name; on a terminal without a choice you are asked.",
    )
    parser.add_argument("path", metavar="PATH", help="a device, an ISO file or a folder")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--keep", action="store_true", help="keep the disc's patient values")
    choice.add_argument(
        "--map-to", metavar="PATIENT_ID", help="give the objects this local patient's values"
    )
    choice.add_argument("--new-id", metavar="ID", help="give the objects a new Patient ID")
    parser.add_argument("--new-name", metavar="NAME", help="with --new-id: FAMILY^GIVEN")
    parser.add_argument("--new-birth-date", metavar="YYYYMMDD", help="with --new-id")
    parser.add_argument("--new-sex", metavar="M|F|O", help="with --new-id")
    parser.add_argument("--json", action="store_true", help="print JSON")
    jobs_cli.add_queue_options(parser)


def _given_choice(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.keep:
        return {"action": "keep"}
    if args.map_to:
        return {"action": "map", "patient_id": args.map_to}
    if args.new_id:
        choice = {"action": "new", "patient_id": args.new_id, "patient_name": args.new_name}
        if args.new_birth_date:
            choice["birth_date"] = args.new_birth_date
        if args.new_sex:
            choice["sex"] = args.new_sex
        return choice
    return None


def _daemon(store: ConfigStore) -> Any:
    try:
        client = jobs_cli.client_for(store.data_dir)
        client.call("hello")
        return client
    except DaemonUnavailable:
        return None


def _scan(store: ConfigStore, client: Any, source: str) -> dict[str, Any]:
    """The scan with local matches: the daemon's, or this command's own."""
    if client is not None:
        return client.call("media.scan", source=source)
    from appliance.archive import Archive
    from appliance.media_import import scan_source, scan_summary

    scratch = _scratch(store)
    archive = Archive(store.data_dir)
    try:
        return scan_summary(scan_source(source, scratch), archive)
    finally:
        archive.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _scratch(store: ConfigStore) -> Path:
    return Path(store.data_dir) / "spool" / f"import-direct-{os.getpid()}-{time.time_ns()}"


# --- the interactive reconciliation ------------------------------------------------------------


def _patient_lines(number: int, total: int, patient: dict[str, Any]) -> list[str]:
    lines = [
        f"disc patient {number} of {total}: {patient['name'] or '(no name)'}  "
        f"ID {patient['patient_id'] or '(none)'}  born {patient['birth_date'] or '?'}  "
        f"sex {patient['sex'] or '?'}"
    ]
    for study in patient["studies"]:
        modalities = "/".join(study["modalities"]) or "?"
        lines.append(
            f"  study {study['date'] or '?'} {study['description'] or '(no description)'}"
            f" [{modalities}, {study['count']} object(s)]"
        )
    matches = patient.get("local_matches") or []
    if not matches:
        lines.append("  no local patient matches")
    for n, match in enumerate(matches, start=1):
        lines.append(
            f"  {n}) local {match['patient_id']}  {match['patient_name']}  "
            f"born {match['birth_date'] or '?'}  ({match['match']}, {match['studies']} studies)"
        )
    return lines


def _ask(prompt: str) -> str:
    print(prompt, end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.strip()


def ask_choices(scan: dict[str, Any]) -> dict[str, Any] | None:
    """Ask for each disc patient; None when the operator quits."""
    reconcile: dict[str, Any] = {}
    patients = scan["patients"]
    for number, patient in enumerate(patients, start=1):
        for line in _patient_lines(number, len(patients), patient):
            print(line, file=sys.stderr)
        matches = patient.get("local_matches") or []
        while True:
            picks = f", 1-{len(matches)} map to that local patient" if matches else ""
            answer = _ask(f"[k]eep{picks}, [m]ap to another ID, [n]ew values, [q]uit? ").lower()
            if answer in ("k", "keep", ""):
                reconcile[patient["patient_id"]] = {"action": "keep"}
                break
            if answer in ("q", "quit"):
                return None
            if answer.isdigit() and 1 <= int(answer) <= len(matches):
                reconcile[patient["patient_id"]] = {
                    "action": "map",
                    "patient_id": matches[int(answer) - 1]["patient_id"],
                }
                break
            if answer in ("m", "map"):
                local = _ask("local Patient ID: ")
                if local:
                    reconcile[patient["patient_id"]] = {"action": "map", "patient_id": local}
                    break
                continue
            if answer in ("n", "new"):
                new_id = _ask("new Patient ID: ")
                name = _ask(f"new Patient Name [{patient['name']}]: ") or patient["name"]
                birth = _ask(f"birth date YYYYMMDD [{patient['birth_date']}]: ")
                sex = _ask(f"sex M/F/O [{patient['sex']}]: ")
                if new_id and name:
                    reconcile[patient["patient_id"]] = {
                        "action": "new",
                        "patient_id": new_id,
                        "patient_name": name,
                        "birth_date": birth or patient["birth_date"],
                        "sex": sex or patient["sex"],
                    }
                    break
                print("a new Patient ID and name are needed", file=sys.stderr)
    return reconcile


def _show_problems(scan: dict[str, Any]) -> None:
    for line in scan.get("problems") or []:
        print(f"problem: {line}", file=sys.stderr)


# --- the command -------------------------------------------------------------------------------


def run(args: argparse.Namespace, store: ConfigStore) -> int:
    source = args.path if args.path.startswith("/dev/") else os.path.abspath(args.path)
    choice = _given_choice(args)
    if choice is not None and choice["action"] == "new" and not args.new_name:
        print("error: --new-id needs --new-name", file=sys.stderr)
        return EXIT_USAGE
    if choice is None and (args.new_name or args.new_birth_date or args.new_sex):
        print("error: --new-name, --new-birth-date and --new-sex go with --new-id", file=sys.stderr)
        return EXIT_USAGE
    client = _daemon(store)
    try:
        return _run(args, store, client, source, choice)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.code in ("invalid", "not-found", "bad-request") else EXIT_FAILED
    finally:
        if client is not None:
            client.close()


def _run(
    args: argparse.Namespace,
    store: ConfigStore,
    client: Any,
    source: str,
    choice: dict[str, Any] | None,
) -> int:
    from appliance.media_import import MediaError

    scan: dict[str, Any] | None = None
    interactive = choice is None and sys.stdin.isatty()
    try:
        if interactive or (choice is not None and choice["action"] != "keep"):
            scan = _scan(store, client, source)
    except MediaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if scan is not None:
        _show_problems(scan)
        if not scan["patients"]:
            print(f"error: no DICOM objects to import in {source}", file=sys.stderr)
            return EXIT_FAILED
    if interactive:
        assert scan is not None
        try:
            reconcile = ask_choices(scan)
        except (EOFError, KeyboardInterrupt):
            reconcile = None
        if reconcile is None:
            print("import cancelled; nothing was stored", file=sys.stderr)
            return EXIT_FAILED
    elif choice is None:
        print(
            "note: no reconciliation choice given: the disc's patient values are kept "
            "(--keep; --map-to PATIENT_ID or --new-id/--new-name to change them)",
            file=sys.stderr,
        )
        reconcile = {"*": {"action": "keep"}}
    else:
        if scan is not None and len(scan["patients"]) > 1:
            print(
                f"error: the disc holds {len(scan['patients'])} patients; "
                f"--{'map-to' if choice['action'] == 'map' else 'new-id'} would give them all "
                "one patient's values: import on a terminal to choose per patient",
                file=sys.stderr,
            )
            return EXIT_USAGE
        reconcile = {"*": choice}
    params = {"source": source, "reconcile": reconcile}
    if client is not None:
        client.close()
    queued = jobs_cli.queue_job(
        store.data_dir,
        kind="import",
        target="media",
        params=params,
        priority=args.priority,
        wait=args.wait,
        as_json=args.json,
    )
    if queued is not None:
        return queued
    return import_directly(store, source, reconcile, as_json=args.json)


def import_directly(
    store: ConfigStore, source: str, reconcile: dict[str, Any], *, as_json: bool
) -> int:
    """Without the daemon: scan and import every file once, reporting each."""
    from appliance.archive import Archive
    from appliance.jobs import JobError
    from appliance.media_import import (
        MediaError,
        normalise_choice,
        scan_source,
    )
    from appliance.media_import import (
        import_directly as store_files,
    )

    settings = store.settings()
    archive = Archive(
        store.data_dir,
        duplicate_policy=settings.duplicate_policy,
        disk_reserve_bytes=settings.disk_reserve_mb * 2**20,
    )
    scratch = _scratch(store)
    try:
        try:
            clean = {k: normalise_choice(v, archive) for k, v in reconcile.items()}
        except JobError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        try:
            scan = scan_source(source, scratch)
        except MediaError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if not as_json:
            _show_problems({"problems": scan.problems})

        def say(scanned: Any, outcome: str, note: str) -> None:
            if not as_json:
                print(f"{outcome:<8} {scanned.path}" + (f": {note}" if note else ""))

        results = store_files(archive, scan, clean, on_result=say)
    finally:
        archive.close()
        shutil.rmtree(scratch, ignore_errors=True)
    failed = sum(1 for r in results if r["status"] == "failed")
    warned = sum(1 for r in results if r["status"] == "warning")
    if as_json:
        print(
            json.dumps({"source": source, "results": results, "problems": scan.problems}, indent=2)
        )
    else:
        print(
            f"imported {len(results) - failed} of {len(results)} object(s) from {source}"
            + (f", {failed} failed" if failed else "")
            + (f", {len(scan.problems)} problem(s)" if scan.problems else "")
        )
    if failed or not results:
        return EXIT_FAILED
    return EXIT_WARNINGS if warned else EXIT_OK
