"""`dicom-appliance printer ...` and `dicom-appliance print ...`: printers, print jobs, previews.

``printer add|remove`` change the configuration file (the daemon reads it at each use);
``printer list`` shows each printer's live status, asked by the daemon (or, without one, by
this command) with an N-GET of the printer. ``print`` queues a print job through the daemon
and prints its id (``--wait`` follows it to the end); without a daemon it prints directly, once,
and says so. ``print preview`` writes the films as a PDF or PNGs without printing.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from appliance import jobs_cli
from appliance.config import COMMON_DISPLAY_FORMATS, ConfigError, ConfigStore, Printer
from appliance.control import ApiError
from appliance.control_client import DaemonUnavailable
from appliance.print_render import FILM_SIZES, ORIENTATIONS

COMMANDS = ("printer", "print")
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WARNINGS = 3


def _window(text: str) -> tuple[float, float]:
    center, sep, width = text.partition(",")
    try:
        if not sep:
            raise ValueError
        return float(center), float(width)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give CENTER,WIDTH (for a negative center: --window=-600,1500)"
        ) from None


def add_parsers(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    printer = commands.add_parser("printer", parents=[common], help="manage film printers")
    printer_cmds = printer.add_subparsers(dest="printer_command", required=True)
    add = printer_cmds.add_parser(
        "add", parents=[common], help="add (or with --replace, change) a printer"
    )
    add.add_argument("name")
    add.add_argument("--ae-title", required=True)
    add.add_argument("--host", required=True)
    add.add_argument("--port", type=int, required=True)
    add.add_argument("--color", action="store_true", help="the printer prints colour too")
    add.add_argument("--color-only", action="store_true", help="the printer prints colour only")
    for option, dest, text in (
        ("--film-size", "film_sizes", "a film size it offers (repeatable; first = default)"),
        ("--layout", "display_formats", "a display format it accepts, e.g. 'STANDARD\\2,2'"),
        ("--medium-type", "medium_types", "a medium type it offers (repeatable)"),
        ("--film-destination", "film_destinations", "a film destination (repeatable)"),
        ("--magnification-type", "magnification_types", "a magnification type (repeatable)"),
    ):
        add.add_argument(option, dest=dest, action="append", default=[], help=text)
    add.add_argument("--bits", type=int, choices=(8, 12), default=8, help="image depth it takes")
    add.add_argument("--min-density", type=int, help="hundredths of OD")
    add.add_argument("--max-density", type=int, help="hundredths of OD")
    add.add_argument("--border-density", help="BLACK, WHITE or hundredths of OD")
    add.add_argument("--empty-image-density", help="BLACK, WHITE or hundredths of OD")
    add.add_argument(
        "--trim", action=argparse.BooleanOptionalAction, default=None, help="trim boxes"
    )
    add.add_argument(
        "--presentation-lut", action="store_true", help="it supports the Presentation LUT"
    )
    add.add_argument("--annotation", action="store_true", help="it supports annotation boxes")
    add.add_argument(
        "--send-all-attributes",
        action="store_true",
        help="send every film attribute, not only those set",
    )
    add.add_argument("--replace", action="store_true", help="replace a printer of this name")
    remove = printer_cmds.add_parser("remove", parents=[common], help="remove a printer")
    remove.add_argument("name")
    listing = printer_cmds.add_parser(
        "list", parents=[common], help="printers with their live status"
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    status = printer_cmds.add_parser("status", parents=[common], help="one printer's live status")
    status.add_argument("name")
    status.add_argument("--json", action="store_true", help="print JSON")

    job = commands.add_parser(
        "print",
        parents=[common],
        help="print images on a film printer (a print job), or preview the films",
        description="Queue a print job (`print --printer P --study UID`), or write a preview "
        "of the films without printing (`print preview --study UID --output FILE.pdf`).",
    )
    job.add_argument(
        "action", nargs="?", choices=("preview",), help="preview: write the films to --output"
    )
    job.add_argument("--printer", help="configured printer name")
    job.add_argument("--study", action="append", default=[], metavar="UID", help="a study")
    job.add_argument("--series", action="append", default=[], metavar="UID", help="a series")
    job.add_argument("--instance", action="append", default=[], metavar="UID", help="an image")
    job.add_argument(
        "--stored-print",
        action="append",
        default=[],
        metavar="UID",
        help="a Stored Print in the archive (one film, as it was composed)",
    )
    job.add_argument("--layout", help="image display format, e.g. 'STANDARD\\2,2', 'ROW\\2,3'")
    job.add_argument("--film-size", type=str.upper, help=f"one of {', '.join(FILM_SIZES)}")
    job.add_argument("--orientation", type=str.upper, choices=ORIENTATIONS)
    job.add_argument("--copies", type=int)
    job.add_argument("--medium-type", type=str.upper, help="PAPER, CLEAR FILM, BLUE FILM, ...")
    job.add_argument("--film-destination", type=str.upper, help="MAGAZINE, PROCESSOR, ...")
    job.add_argument("--magnification-type", type=str.upper, help="REPLICATE, BILINEAR, ...")
    job.add_argument(
        "--window", type=_window, metavar="C,W", help="window center,width for every image"
    )
    job.add_argument("--annotation", help="annotation text")
    job.add_argument("--polarity", type=str.upper, choices=("NORMAL", "REVERSE"))
    job.add_argument("--output", type=Path, help="preview: FILE.pdf, or FILE.png (one per film)")
    job.add_argument("--dpi", type=float, default=100.0, help="preview resolution (default 100)")
    job.add_argument("--json", action="store_true", help="print JSON")
    jobs_cli.add_queue_options(job)


# --- printers ----------------------------------------------------------------------------------


def cmd_printer(args: argparse.Namespace, store: ConfigStore) -> int:
    if args.printer_command == "add":
        printer = Printer(
            name=args.name,
            ae_title=args.ae_title,
            host=args.host,
            port=args.port,
            color=args.color or args.color_only,
            grayscale=not args.color_only,
            film_sizes=[s.upper() for s in args.film_sizes],
            medium_types=[s.upper() for s in args.medium_types],
            film_destinations=[s.upper() for s in args.film_destinations],
            magnification_types=[s.upper() for s in args.magnification_types],
            display_formats=args.display_formats or list(COMMON_DISPLAY_FORMATS),
            min_density=args.min_density,
            max_density=args.max_density,
            border_density=args.border_density,
            empty_image_density=args.empty_image_density,
            trim=args.trim,
            bits=args.bits,
            presentation_lut=args.presentation_lut,
            annotation=args.annotation,
            send_only_set_attributes=not args.send_all_attributes,
        )
        store.add_printer(printer, replace=args.replace)
        print(f"added printer {printer.name}: {printer.ae_title}@{printer.host}:{printer.port}")
        return EXIT_OK
    if args.printer_command == "remove":
        store.remove_printer(args.name)
        print(f"removed printer {args.name}")
        return EXIT_OK
    printers = live_printers(store)
    if args.printer_command == "status":
        chosen = [p for p in printers if p["name"] == args.name]
        if not chosen:
            raise ConfigError("printer", f"no printer named {args.name!r}")
        printers = chosen
    if args.json:
        print(json.dumps(printers if args.printer_command == "list" else printers[0], indent=2))
    else:
        print(f"{'NAME':<16} {'AE TITLE':<16} {'ADDRESS':<26} {'TYPE':<10} STATUS")
        for p in printers:
            kind = "grayscale"
            if p["color"]:
                kind = "gray+color" if p["grayscale"] else "color"
            address = f"{p['host']}:{p['port']}"
            print(f"{p['name']:<16} {p['ae_title']:<16} {address:<26} {kind:<10} {status_text(p)}")
    if args.printer_command == "status":
        entry = printers[0]["status"] or {}
        return EXIT_OK if entry.get("printer_status") == "NORMAL" else EXIT_FAILED
    return EXIT_OK


def status_text(printer: dict[str, Any]) -> str:
    """One printer's live status for a listing: NORMAL, WARNING (info), unreachable (why)."""
    entry = printer.get("status")
    if not entry:
        return "unknown"
    if entry.get("printer_status"):
        text = str(entry["printer_status"])
        info = entry.get("printer_status_info")
        return f"{text} ({info})" if info and info != text else text
    return f"unreachable ({entry.get('error') or 'no answer'})"


def live_printers(store: ConfigStore) -> list[dict[str, Any]]:
    """The printers with a status asked just now: by the daemon, or by this command."""
    try:
        client = jobs_cli.client_for(store.data_dir)
        with client:
            return client.call("printers.list", refresh=True)
    except DaemonUnavailable:
        pass
    from appliance.print_jobs import PrinterStatusBoard

    board = PrinterStatusBoard()
    printers = store.printers()
    board.refresh(store.settings(), printers)
    return [{**asdict(p), "status": board.get(p.name)} for p in printers]


# --- print and preview -------------------------------------------------------------------------


def request_params(args: argparse.Namespace) -> dict[str, Any]:
    """The print request (job parameters) the options describe."""
    params: dict[str, Any] = {}
    for key, values in (
        ("study_uids", args.study),
        ("series_uids", args.series),
        ("sop_instance_uids", args.instance),
        ("stored_print_uids", args.stored_print),
    ):
        if values:
            params[key] = list(values)
    for key in (
        "layout",
        "film_size",
        "orientation",
        "copies",
        "medium_type",
        "film_destination",
        "magnification_type",
        "annotation",
        "polarity",
    ):
        value = getattr(args, key)
        if value is not None:
            params[key] = value
    if args.window is not None:
        params["window_center"], params["window_width"] = args.window
    return params


def cmd_print(args: argparse.Namespace, store: ConfigStore) -> int:
    params = request_params(args)
    if not any(k in params for k in ("study_uids", "series_uids", "sop_instance_uids")) and not (
        params.get("stored_print_uids")
    ):
        print(
            "error: say what to print: --study, --series, --instance or --stored-print",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.action == "preview":
        return cmd_preview(args, store, params)
    if not args.printer:
        print("error: --printer is required (see `dicom-appliance printer list`)", file=sys.stderr)
        return EXIT_USAGE
    printer = store.printer(args.printer)
    queued = jobs_cli.queue_job(
        store.data_dir,
        kind="print",
        target=printer.name,
        params=params,
        priority=args.priority,
        wait=args.wait,
        as_json=args.json,
    )
    if queued is not None:
        return queued
    return print_directly(store, printer, params, as_json=args.json)


def print_directly(
    store: ConfigStore, printer: Printer, params: dict[str, Any], *, as_json: bool
) -> int:
    """Print without the daemon: every film once, in order, stopping at the first failure."""
    from appliance.archive import Archive
    from appliance.print_jobs import ComposeError, compose_films, load_images, print_one

    settings = store.settings()
    archive = Archive(store.data_dir)
    results: list[dict[str, Any]] = []
    try:
        try:
            films = compose_films(archive, params, printer, load=False)
        except ComposeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        for number, composed in enumerate(films, start=1):
            try:
                loaded = load_images(archive, composed)
            except ComposeError as exc:
                results.append({"film": number, "ok": False, "error": str(exc)})
                break
            report = print_one(settings, printer, loaded.film, number=number)
            results.append({"film": number, **report.as_dict()})
            if not as_json:
                if report.ok:
                    warned = f" ({'; '.join(report.warnings)})" if report.warnings else ""
                    print(f"film {number} of {len(films)} printed on {printer.name}{warned}")
                else:
                    print(f"film {number} of {len(films)} failed: {report.error}")
            if not report.ok:
                break
    finally:
        archive.close()
    if as_json:
        print(json.dumps(results, indent=2))
    if len(results) < len(films) or not all(r["ok"] for r in results):
        return EXIT_FAILED
    return EXIT_WARNINGS if any(r.get("warnings") for r in results) else EXIT_OK


def cmd_preview(args: argparse.Namespace, store: ConfigStore, params: dict[str, Any]) -> int:
    if args.output is None:
        print("error: print preview needs --output FILE.pdf or FILE.png", file=sys.stderr)
        return EXIT_USAGE
    output = args.output.absolute()
    if output.suffix.lower() not in (".pdf", ".png"):
        print("error: --output must end in .pdf or .png", file=sys.stderr)
        return EXIT_USAGE
    files = _preview_locally(store, params, args.printer, output, args.dpi)
    if files is None:
        return EXIT_USAGE
    if args.json:
        print(json.dumps({"files": [str(f) for f in files]}, indent=2))
    else:
        for path in files:
            print(path)
    return EXIT_OK


def _preview_locally(
    store: ConfigStore, params: dict[str, Any], printer_name: str | None, output: Path, dpi: float
) -> list[Path] | None:
    """The preview files; None after saying why on standard error. The archive is read
    directly (its index allows readers next to the running daemon) so the files are written
    by the user who asked."""
    from appliance.archive import Archive
    from appliance.print_jobs import ComposeError, compose_films, load_images
    from appliance.print_preview import PreviewError, render_preview

    printer = store.printer(printer_name) if printer_name else None
    archive = Archive(store.data_dir)
    try:
        films = compose_films(archive, params, printer, load=False)
        return render_preview((load_images(archive, f) for f in films), output, dpi)
    except (ComposeError, PreviewError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    finally:
        archive.close()


def run(args: argparse.Namespace, store: ConfigStore) -> int:
    try:
        if args.command == "printer":
            return cmd_printer(args, store)
        return cmd_print(args, store)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
