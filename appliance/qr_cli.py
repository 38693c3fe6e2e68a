"""`dicom-appliance query` and `dicom-appliance retrieve`: the Query/Retrieve SCU commands."""

from __future__ import annotations

import argparse
import json
import sys

from appliance import jobs_cli
from appliance.config import RETRIEVE_METHODS, ConfigStore

# The same as appliance.qr_scu's, which validates them again; that module (pydicom, pynetdicom,
# the archive) is imported only when a query or retrieve runs, so other commands start fast.
LEVELS = ("patient", "study", "series", "image")
MODELS = ("patient", "study")
METHODS = RETRIEVE_METHODS

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WARNINGS = 3


def add_parsers(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    find = commands.add_parser(
        "query",
        parents=[common],
        help="C-FIND a node (Query/Retrieve SCU)",
        description=(
            "Ask NODE with C-FIND and print the matches. Keys are keywords or tags: "
            "KEY=VALUE matches (wildcards * and ?, date ranges like 20240101-20240131), "
            "KEY alone asks for it to be returned."
        ),
    )
    find.add_argument("node")
    find.add_argument("--level", choices=LEVELS, default="study")
    find.add_argument(
        "--model", choices=MODELS, default="study", help="information model (root), default study"
    )
    find.add_argument(
        "--key",
        "-k",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="PatientName=DOE*, 0010,0020=123, StudyDate=20240101-20240131, Modality ...",
    )
    find.add_argument(
        "--no-default-keys",
        action="store_true",
        help="ask only for the --key keys, not the level's default columns",
    )
    find.add_argument("--limit", type=int, help="stop after N matches (sends C-CANCEL to the node)")
    find.add_argument("--json", action="store_true", help="print a JSON list of matches")

    fetch = commands.add_parser(
        "retrieve",
        parents=[common],
        help="fetch studies, series or images from a node (C-MOVE or C-GET)",
        description=(
            "C-MOVE asks NODE to send to our AE title: the daemon must be running and NODE must "
            "know us as a move destination. C-GET receives on this command's own association "
            "and stores into the archive directly. The node's retrieve_method chooses."
        ),
    )
    fetch.add_argument("node")
    fetch.add_argument("--study", action="append", default=[], metavar="UID")
    fetch.add_argument(
        "--series", action="append", default=[], metavar="UID", help="needs one --study"
    )
    fetch.add_argument(
        "--image", action="append", default=[], metavar="UID", help="needs --study and --series"
    )
    fetch.add_argument(
        "--patient", action="append", default=[], metavar="ID", help="patient root model only"
    )
    fetch.add_argument("--model", choices=MODELS, default="study")
    fetch.add_argument(
        "--method", choices=METHODS, help="override the node's retrieve_method for this run"
    )
    fetch.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_query(args: argparse.Namespace, store: ConfigStore) -> int:
    from appliance.qr_scu import FAILURE, WARNING, QueryError, parse_key, query

    node = store.node(args.node)
    settings = store.settings()
    try:
        keys = [parse_key(text) for text in args.key]
        result = query(
            settings,
            node,
            level=args.level,
            keys=keys,
            model=args.model,
            limit=args.limit,
            default_keys=not args.no_default_keys,
        )
    except QueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.rows(), indent=2, ensure_ascii=False))
        if result.outcome == FAILURE:
            print(f"error: {result.summary()}", file=sys.stderr)
    else:
        if result.matches or result.outcome != FAILURE:
            print(result.table())
        stream = sys.stderr if result.outcome == FAILURE else sys.stdout
        print(result.summary(), file=stream)
    if result.outcome == FAILURE:
        return EXIT_FAILED
    if result.outcome == WARNING:
        return EXIT_WARNINGS
    return EXIT_OK


def cmd_retrieve(args: argparse.Namespace, store: ConfigStore) -> int:
    from appliance.qr_scu import (
        FAILURE,
        WARNING,
        Progress,
        QueryError,
        plan_retrieve,
        retrieve,
        retrieve_header,
    )

    node = store.node(args.node)
    settings = store.settings()
    try:
        request = plan_retrieve(
            model=args.model,
            patients=args.patient,
            studies=args.study,
            series=args.series,
            images=args.image,
        )
    except QueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    queued = jobs_cli.queue_job(
        store.data_dir,
        kind="retrieve",
        target=node.name,
        params={
            "model": args.model,
            "patient_ids": args.patient,
            "study_uids": args.study,
            "series_uids": args.series,
            "sop_instance_uids": args.image,
            "method": args.method,
        },
        priority=args.priority,
        wait=args.wait,
        as_json=args.json,
    )
    if queued is not None:
        return queued
    try:
        method = args.method or node.retrieve_method
        if args.json:
            report = retrieve(settings, node, request, store.data_dir, method=method)
        else:
            print(retrieve_header(node, method, settings.ae_title), flush=True)

            def show(step: Progress) -> None:
                print(step.line(), flush=True)

            report = retrieve(settings, node, request, store.data_dir, method=method, progress=show)
    except QueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for line in report.problem_lines():
            print(line)
        for note in report.notes():
            print(f"note: {note}", file=sys.stderr)
        stream = sys.stderr if report.outcome == FAILURE else sys.stdout
        print(report.summary(), file=stream)
    if report.outcome == FAILURE:
        return EXIT_FAILED
    if report.outcome == WARNING:
        return EXIT_WARNINGS
    return EXIT_OK
