"""`dicom-appliance anonymize`: de-identified copies of studies or of plain files.

- ``anonymize --profile NAME --study UID [--study UID ...] [--send NODE] [--burn DEVICE]
  [--confirm-pixels UID ...] [--wait] [--json]`` queues an ``anonymize`` job in the daemon and
  prints its id: the copy goes into the archive, then (optionally) to a node or onto a disc.
  Without a daemon the copy is made directly, once, and the command says so.
- ``anonymize --profile NAME --input DIR --output DIR`` anonymizes every DICOM file under DIR
  into the output folder (``<study>/<series>/<instance>.dcm`` by the new UIDs, written
  atomically); no daemon needed. Exit 3 when some files were held (pixels that may show
  burned-in text, no cleaning rule, not confirmed), 1 when some failed.
- ``anonymize preview --profile NAME (--study UID | --file F) [--json]``: the side-by-side
  table (attribute, original, action, result) for one instance, without changing anything.

Profiles: ``basic`` (built in) and the site's (``dicom-appliance anonymize-profile``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from appliance import jobs_cli
from appliance.config import ConfigError, ConfigStore
from appliance.control import ApiError

COMMANDS = ("anonymize",)
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_HELD = 3
PREVIEW_WIDTH = 38


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    anon = commands.add_parser(
        "anonymize",
        parents=[common],
        help="de-identified copies of studies (into the archive) or of plain files",
        description="Anonymize archived studies with a profile (PS3.15 Annex E): the copy is "
        "stored in the archive as a new study, then optionally sent or burned. With --input "
        "and --output, anonymize plain files instead. `anonymize preview` shows what a "
        "profile does to one instance.",
    )
    anon.add_argument("--profile", metavar="NAME", help="basic, or a site profile")
    anon.add_argument(
        "--study", action="append", default=[], metavar="UID", help="a study of the archive"
    )
    anon.add_argument("--send", metavar="NODE", help="send the anonymized studies to this node")
    anon.add_argument(
        "--burn", metavar="DEVICE", help="burn them: /dev/sr0, or stdio:/path/disc.iso"
    )
    anon.add_argument(
        "--confirm-pixels",
        nargs="+",
        action="extend",
        default=[],
        metavar="UID",
        help="SOP Instance UIDs you looked at and release although their pixels may carry "
        "burned-in text",
    )
    anon.add_argument("--input", type=Path, metavar="DIR", help="plain files to anonymize")
    anon.add_argument("--output", type=Path, metavar="DIR", help="where the copies go")
    anon.add_argument("--json", action="store_true", help="print JSON")
    jobs_cli.add_queue_options(anon)
    cmds = anon.add_subparsers(dest="anon_command", metavar="preview")
    preview = cmds.add_parser(
        "preview",
        parents=[common],
        help="what a profile does to one instance: attribute, original, action, result",
    )
    # SUPPRESS: a value not given here must not hide the parent parser's.
    preview.add_argument("--profile", required=True, metavar="NAME", default=argparse.SUPPRESS)
    source = preview.add_mutually_exclusive_group(required=True)
    source.add_argument("--study", dest="preview_study", metavar="UID", help="an archived study")
    source.add_argument("--file", type=Path, metavar="FILE", help="a DICOM file")
    preview.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON"
    )


def _usage(text: str) -> int:
    print(f"error: {text}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace, store: ConfigStore) -> int:
    if getattr(args, "anon_command", None) == "preview":
        return cmd_preview(args, store)
    if not args.profile:
        return _usage("--profile is required (basic, or a site profile)")
    if args.input is not None or args.output is not None:
        if args.input is None or args.output is None:
            return _usage("--input and --output go together")
        if args.study or args.send or args.burn or args.wait:
            return _usage("--input/--output work on files: no --study, --send, --burn, --wait")
        return cmd_files(args, store)
    if not args.study:
        return _usage("give --study UID (archived studies) or --input DIR --output DIR")
    return cmd_studies(args, store)


# --- archived studies -------------------------------------------------------------------------


def _device(text: str) -> str:
    from appliance.media_burn import FILE_PREFIX

    if text.startswith(FILE_PREFIX):
        path = text[len(FILE_PREFIX) :]
        if path and not path.endswith("/"):
            return FILE_PREFIX + os.path.abspath(os.path.expanduser(path))
    return text


def request_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"study_uids": list(args.study), "profile": args.profile}
    if args.send:
        params["send"] = args.send
    if args.burn:
        params["burn"] = _device(args.burn)
    if args.confirm_pixels:
        params["confirm_pixels"] = list(args.confirm_pixels)
    return params


def cmd_studies(args: argparse.Namespace, store: ConfigStore) -> int:
    from appliance.anonymize_jobs import KIND, TARGET, AnonymizeError, normalise_params

    params = request_params(args)
    try:
        normalise_params(params, store)
    except (AnonymizeError, ConfigError) as exc:
        return _usage(str(exc))
    try:
        queued = jobs_cli.queue_job(
            store.data_dir,
            kind=KIND,
            target=TARGET,
            params=params,
            priority=args.priority,
            wait=args.wait,
            as_json=args.json,
        )
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if queued is not None:
        return queued
    return studies_directly(store, params, as_json=args.json)


def studies_directly(store: ConfigStore, params: dict[str, Any], *, as_json: bool) -> int:
    """Without the daemon: the copies made once, then sent and burned directly."""
    from appliance import anonymize_jobs as aj
    from appliance.archive import Archive

    archive = Archive(store.data_dir)
    try:
        try:
            report = aj.anonymize_studies(archive, store, store.data_dir, params)
        except aj.AnonymizeError as exc:
            return _usage(str(exc))
        output = report.as_dict()
        follow = not report.failed and bool(report.done)
        copies = list(dict.fromkeys(report.anonymized.values()))
        if params.get("send") and follow:
            output["send"] = _send_directly(store, archive, params["send"], report)
        if params.get("burn") and follow:
            output["burn"] = _burn_directly(store, archive, params["burn"], copies)
    finally:
        archive.close()
    if as_json:
        print(json.dumps(output, indent=2))
    else:
        for original, copy in report.anonymized.items():
            print(f"study {original} -> {copy}")
        for item in output["held"]:
            print(f"held    {item['instance']}: {item['reason']}")
        for item in output["failed"]:
            print(f"FAILURE {item['instance']}: {item['error']}")
        if "send" in output:
            print(f"send to {params['send']}: {output['send']['summary']}")
        for disc in output.get("burn", []):
            state = "burned and verified" if disc["ok"] else f"failed: {disc['error']}"
            print(f"disc {disc['disc']} of {disc['total']} {state}: {disc['target']}")
        print(_summary_line(report))
        if (params.get("send") or params.get("burn")) and not follow:
            print("not sent or burned: some instances failed", file=sys.stderr)
    return _exit_for(report, output)


def _send_directly(store: ConfigStore, archive: Any, node_name: str, report: Any) -> dict:
    from appliance import scu

    node = store.node(node_name)
    paths = []
    for outcome in report.done:
        record = archive.instance(outcome.new_uid)
        if record is not None:
            paths.append(record.path)
    sent = scu.send(store.settings(), node, paths)
    return {"summary": sent.summary(), "failed": len(sent.failed), "ok": not sent.failed}


def _burn_directly(store: ConfigStore, archive: Any, device: str, studies: list[str]) -> list:
    from appliance import media_burn

    try:
        results = media_burn.burn_directly(
            archive, store.settings(), device, {"study_uids": studies}, store.data_dir
        )
    except media_burn.BurnError as exc:
        return [{"disc": 0, "total": 0, "ok": False, "target": device, "error": str(exc)}]
    return [r.as_dict() for r in results]


def _summary_line(report: Any) -> str:
    text = f"{len(report.done)} anonymized, {len(report.held)} held, {len(report.failed)} failed"
    if report.skipped:
        text += f", {len(report.skipped)} skipped"
    return f"{text} in {report.seconds:.1f} s"


def _exit_for(report: Any, output: dict[str, Any] | None = None) -> int:
    output = output or {}
    if report.failed or not (report.done or report.held):
        return EXIT_FAILED
    if "send" in output and not output["send"]["ok"]:
        return EXIT_FAILED
    if any(not disc["ok"] for disc in output.get("burn", [])):
        return EXIT_FAILED
    return EXIT_HELD if report.held else EXIT_OK


# --- plain files ----------------------------------------------------------------------------


def cmd_files(args: argparse.Namespace, store: ConfigStore) -> int:
    from appliance import anonymize_jobs as aj

    def say(outcome: aj.Outcome) -> None:
        if args.json:
            return
        if outcome.held:
            print(f"held    {outcome.path}: {outcome.held}", flush=True)
        elif outcome.error:
            print(f"FAILURE {outcome.path}: {outcome.error}", flush=True)

    try:
        report = aj.anonymize_files(
            store,
            store.data_dir,
            args.profile,
            args.input,
            args.output,
            confirm_pixels=args.confirm_pixels,
            progress=say,
        )
    except aj.AnonymizeError as exc:
        return _usage(str(exc))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for path, why in report.skipped:
            print(f"skipped {path}: {why}")
        print(f"{_summary_line(report)} into {args.output.resolve()}")
    return _exit_for(report)


# --- preview -------------------------------------------------------------------------------------


def cmd_preview(args: argparse.Namespace, store: ConfigStore) -> int:
    from pydicom import dcmread

    from appliance import anonymize_jobs as aj

    as_json = bool(getattr(args, "json", False))
    try:
        if args.file is not None:
            try:
                ds = dcmread(args.file)
            except Exception as exc:  # noqa: BLE001 - said as it is
                return _usage(f"cannot read {args.file}: {exc}")
            answer = aj.preview_rows(store, store.data_dir, args.profile, ds)
        else:
            answer = _preview_study(store, args.profile, args.preview_study)
    except aj.AnonymizeError as exc:
        return _usage(str(exc))
    except ApiError as exc:
        return _usage(exc.message if hasattr(exc, "message") else str(exc))
    if as_json:
        print(json.dumps(answer, indent=2))
        return EXIT_OK
    for line in preview_lines(answer):
        print(line)
    return EXIT_OK


def _preview_study(store: ConfigStore, profile: str, study_uid: str) -> dict[str, Any]:
    """Through the daemon when it runs (its archive, its pixel rules), else directly."""
    from appliance.control_client import DaemonUnavailable

    try:
        with jobs_cli.client_for(store.data_dir) as client:
            return client.call("anonymize.preview", profile=profile, study_uid=study_uid)
    except DaemonUnavailable:
        pass
    from appliance.anon_api import AnonOperations
    from appliance.archive import Archive

    archive = Archive(store.data_dir)
    try:
        ops = AnonOperations(data_dir=store.data_dir, config=store, archive=archive, engine=None)  # type: ignore[arg-type]
        return ops.preview({"profile": profile, "study_uid": study_uid}, None)  # type: ignore[arg-type]
    finally:
        archive.close()


def _cell(text: str, width: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def preview_lines(answer: dict[str, Any]) -> list[str]:
    rows = answer.get("rows") or []
    lines = [f"instance {answer.get('instance', '')}, profile {answer.get('profile', '')}"]
    head = ("ATTRIBUTE", "ORIGINAL", "ACTION", "RESULT")
    table = [
        (
            f"{r['keyword'] or r['tag']} {r['tag']}" if r["keyword"] else r["tag"],
            r["original"],
            r["action"],
            r["result"],
        )
        for r in rows
    ]
    widths = [len(h) for h in head]
    for row in table:
        for n, cell in enumerate(row):
            widths[n] = min(PREVIEW_WIDTH if n in (1, 3) else 48, max(widths[n], len(cell)))
    for row in [head, *table]:
        cells = [_cell(cell, widths[n]).ljust(widths[n]) for n, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    held = answer.get("held")
    lines.append(f"held: {held}" if held else "pixels: released")
    for item in answer.get("held_instances") or []:
        lines.append(
            f"  held in the study: {item['instance']} ({item['modality']}): {item['reason']}"
        )
    return lines
