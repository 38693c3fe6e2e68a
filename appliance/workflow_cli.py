"""`dicom-appliance worklist` and `dicom-appliance mpps`: the modality workflow commands."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from appliance.config import ConfigError, ConfigStore
from appliance.worklist import (
    COMPLETED,
    DISCONTINUATION_REASONS,
    DISCONTINUED,
    FINAL_STATUSES,
    MppsRecord,
    MppsStore,
    WorkflowError,
    WorklistItem,
    WorklistQuery,
    date_matching_value,
    find_worklist,
    mpps_create,
    mpps_set,
    performed_series_from_files,
    validate_charset,
    worklist_table,
)

# The same exit codes as the rest of the CLI (appliance.cli).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WARNINGS = 3

COMMANDS = ("worklist", "mpps")


def add_parsers(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    worklist = commands.add_parser(
        "worklist", parents=[common], help="query a node's modality worklist (C-FIND)"
    )
    worklist.add_argument("node")
    worklist.add_argument(
        "--date",
        help="scheduled start date: YYYYMMDD, today, yesterday, tomorrow, or a range FROM-TO "
        "(e.g. 20240101-20240131, today-, -20240131); default any date",
    )
    worklist.add_argument("--modality", help="e.g. CT, MR, PT")
    worklist.add_argument("--station-ae", help="scheduled station AE title (default: any)")
    worklist.add_argument("--patient-name", help="wildcards * and ? allowed, e.g. DOE*")
    worklist.add_argument("--patient-id")
    worklist.add_argument("--accession", help="accession number")
    _charset_option(worklist)
    worklist.add_argument("--json", action="store_true", help="print JSON")

    mpps = commands.add_parser(
        "mpps", parents=[common], help="report performed procedure steps (MPPS) to a node"
    )
    mpps_cmds = mpps.add_subparsers(dest="mpps_command", required=True)

    start = mpps_cmds.add_parser(
        "start",
        parents=[common],
        help="N-CREATE an IN PROGRESS step for a worklist item (or, with --from-file, an "
        "unscheduled one)",
    )
    start.add_argument("node", help="the MPPS node")
    start.add_argument(
        "--worklist-node", help="node to find the worklist item on (default: the MPPS node)"
    )
    start.add_argument("--accession", help="select the worklist item by accession number")
    start.add_argument("--sps-id", help="select by Scheduled Procedure Step ID")
    start.add_argument("--patient-id", help="select by Patient ID")
    start.add_argument("--study-uid", help="select by Study Instance UID")
    start.add_argument("--date", help="select by scheduled date (as for `worklist --date`)")
    start.add_argument(
        "--from-file",
        type=Path,
        metavar="PATH",
        help="unscheduled: take patient and study from this DICOM file, no worklist query",
    )
    start.add_argument("--modality", help="modality performed (default: the scheduled one)")
    start.add_argument("--station-ae", help="Performed Station AE Title (default: our AE title)")
    start.add_argument("--pps-id", help="Performed Procedure Step ID (default: start time)")
    _charset_option(start)
    start.add_argument("--json", action="store_true", help="print JSON")

    for name, status in (("complete", COMPLETED), ("discontinue", DISCONTINUED)):
        cmd = mpps_cmds.add_parser(
            name, parents=[common], help=f"N-SET a step we started to {status}"
        )
        cmd.add_argument("node", help="the MPPS node the step was started on")
        cmd.add_argument("uid", help="the step's SOP Instance UID, from `mpps start`")
        cmd.add_argument(
            "--series-from",
            nargs="+",
            type=Path,
            required=status == COMPLETED,
            default=[],
            metavar="PATH",
            help="DICOM files or folders produced by the step: they become the Performed "
            "Series Sequence",
        )
        cmd.add_argument(
            "--retrieve-ae",
            help="Retrieve AE Title for the series (default: our AE title; '' for none)",
        )
        if status == DISCONTINUED:
            cmd.add_argument(
                "--reason",
                choices=sorted(DISCONTINUATION_REASONS),
                help="discontinuation reason (PS3.16 CID 9300)",
            )
        cmd.add_argument("--json", action="store_true", help="print JSON")

    listing = mpps_cmds.add_parser("list", parents=[common], help="list the steps we started")
    listing.add_argument("--json", action="store_true", help="print JSON")


def _charset_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--charset",
        help="the node's Specific Character Set (e.g. 'ISO_IR 100', 'ISO_IR 192'): used to "
        "encode non-ASCII query values and assumed for answers that declare none",
    )


def run(args: argparse.Namespace, store: ConfigStore) -> int:
    if args.command == "worklist":
        return cmd_worklist(args, store)
    return cmd_mpps(args, store)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def cmd_worklist(args: argparse.Namespace, store: ConfigStore) -> int:
    node = store.node(args.node)
    query = WorklistQuery(
        date=date_matching_value(args.date) if args.date else None,
        modality=args.modality,
        station_ae=args.station_ae,
        patient_name=args.patient_name,
        patient_id=args.patient_id,
        accession_number=args.accession,
        charset=validate_charset(args.charset) if args.charset else None,
    )
    result = find_worklist(store.settings(), node, query)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
    else:
        print("\n".join(worklist_table(result)))
    if not result.ok:
        _error(result.error or "worklist query failed")
        return EXIT_FAILED
    return EXIT_OK


def cmd_mpps(args: argparse.Namespace, store: ConfigStore) -> int:
    with MppsStore(store.data_dir) as steps:
        if args.mpps_command == "list":
            return _mpps_list(args, steps)
        if args.mpps_command == "start":
            return _mpps_start(args, store, steps)
        return _mpps_finish(args, store, steps)


def _mpps_list(args: argparse.Namespace, steps: MppsStore) -> int:
    records = steps.all()
    if args.json:
        print(json.dumps([asdict(r) for r in records], indent=2, ensure_ascii=False))
        return EXIT_OK
    print(f"{'STARTED':<19}  {'STATUS':<12}  {'NODE':<12}  {'ACCESSION':<12}  PATIENT  UID")
    for r in records:
        print(
            f"{r.started:<19}  {r.status:<12}  {r.node:<12}  {r.accession_number:<12}  "
            f"{r.patient_name} ({r.patient_id})  {r.uid}"
        )
    return EXIT_OK


def _select_worklist_item(args: argparse.Namespace, store: ConfigStore) -> WorklistItem:
    keys = (args.accession, args.sps_id, args.patient_id, args.study_uid)
    if not any(keys):
        raise ConfigError(
            "mpps start",
            "select the worklist item with --accession, --sps-id, --patient-id or "
            "--study-uid, or start an unscheduled step with --from-file",
        )
    node = store.node(args.worklist_node or args.node)
    query = WorklistQuery(
        date=date_matching_value(args.date) if args.date else None,
        accession_number=args.accession,
        sps_id=args.sps_id,
        patient_id=args.patient_id,
        study_instance_uid=args.study_uid,
        charset=args.charset,
    )
    result = find_worklist(store.settings(), node, query)
    if not result.ok:
        raise WorkflowError(result.error or "worklist query failed")
    # An SCP need not match on every key (wlmscpfs ignores the SPS ID): check the answers.
    wanted = {
        "accession_number": args.accession,
        "scheduled_procedure_step_id": args.sps_id,
        "patient_id": args.patient_id,
        "study_instance_uid": args.study_uid,
    }
    result.items = [
        item
        for item in result.items
        if all(item.as_dict()[key] == value for key, value in wanted.items() if value)
    ]
    if not result.items:
        raise WorkflowError(f"no scheduled procedure step on {node.name} matches the selection")
    if len(result.items) > 1:
        lines = worklist_table(result)[1:]
        raise WorkflowError(
            f"{len(result.items)} scheduled procedure steps on {node.name} match; narrow the "
            "selection (e.g. with --sps-id):\n" + "\n".join(lines)
        )
    return result.items[0]


def _mpps_start(args: argparse.Namespace, store: ConfigStore, steps: MppsStore) -> int:
    node = store.node(args.node)
    if args.charset:
        validate_charset(args.charset)
    warnings: list[str] = []
    try:
        if args.from_file is not None:
            if any((args.accession, args.sps_id, args.patient_id, args.study_uid, args.date)):
                raise ConfigError(
                    "--from-file", "an unscheduled step takes no worklist selection options"
                )
            source: WorklistItem | Dataset = _read_source(args.from_file)
        else:
            source = _select_worklist_item(args, store)
        uid = mpps_create(
            store.settings(),
            node,
            source,
            station_ae=args.station_ae,
            pps_id=args.pps_id,
            modality=args.modality,
            store=steps,
            on_warning=warnings.append,
        )
    except WorkflowError as exc:
        _error(str(exc))
        return EXIT_FAILED
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        _error(str(exc))
        return EXIT_USAGE
    record = steps.get(uid)
    assert record is not None
    _report(args, record, warnings, f"started MPPS {uid} on {node.name}")
    return EXIT_WARNINGS if warnings else EXIT_OK


def _read_source(path: Path) -> Dataset:

    try:
        return dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise ConfigError("--from-file", f"{path} is not a readable DICOM file ({exc})") from None


def _mpps_finish(args: argparse.Namespace, store: ConfigStore, steps: MppsStore) -> int:
    node = store.node(args.node)
    status = COMPLETED if args.mpps_command == "complete" else DISCONTINUED
    record = steps.get(args.uid)
    if record is None:
        raise ConfigError(
            "uid",
            f"no step {args.uid} was started from this appliance (see `dicom-appliance mpps list`)",
        )
    if record.node != node.name:
        raise ConfigError("node", f"step {args.uid} was started on {record.node}, not {node.name}")
    if record.status in FINAL_STATUSES:
        raise ConfigError("uid", f"step {args.uid} is already {record.status}")
    settings = store.settings()
    retrieve_ae = settings.ae_title if args.retrieve_ae is None else args.retrieve_ae
    series, problems, studies = performed_series_from_files(
        args.series_from, retrieve_ae_title=retrieve_ae
    )
    if problems:
        # A mistyped path must not turn into a step that claims fewer images than were made.
        for problem in problems:
            _error(problem)
        _error("nothing sent: fix or leave out the files above")
        return EXIT_USAGE
    if status == COMPLETED and not series:
        raise ConfigError("--series-from", "no DICOM instances found: nothing was performed?")
    other = sorted(studies - {record.study_instance_uid})
    if record.study_instance_uid and other:
        print(
            f"warning: instances of other studies than the step's "
            f"({record.study_instance_uid}): {', '.join(other)}",
            file=sys.stderr,
        )
    warnings: list[str] = []
    try:
        mpps_set(
            settings,
            node,
            args.uid,
            status,
            series,
            discontinuation_reason=getattr(args, "reason", None),
            store=steps,
            on_warning=warnings.append,
        )
    except WorkflowError as exc:
        _error(str(exc))
        return EXIT_FAILED
    updated = steps.get(args.uid)
    assert updated is not None
    summary = (
        f"MPPS {args.uid} on {node.name}: {status}, {updated.series} series, "
        f"{updated.instances} instances"
    )
    _report(args, updated, warnings, summary)
    return EXIT_WARNINGS if warnings else EXIT_OK


def _report(
    args: argparse.Namespace, record: MppsRecord, warnings: list[str], summary: str
) -> None:
    if args.json:
        print(json.dumps({**asdict(record), "warnings": warnings}, indent=2, ensure_ascii=False))
        return
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(summary)
    print(
        f"  patient {record.patient_name} ({record.patient_id}), accession "
        f"{record.accession_number or '-'}, SPS {record.scheduled_procedure_step_id or '-'}, "
        f"PPS ID {record.pps_id}, status {record.status}"
    )
