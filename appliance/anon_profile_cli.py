"""Anonymization settings from the command line.

``anonymize-profile add|list|remove``: the site's named profiles (Annex E options, per-attribute
overrides, pseudonym patterns, project); ``basic`` is built in. ``pixel-region add|list|remove``:
rectangles of burned-in text blanked by Clean Pixel Data, per modality, manufacturer and size.
``pseudonyms export FILE [--project P]``: the pseudonym mapping as CSV for the study
coordinator. It re-identifies patients, so while a daemon runs only a caller it grants the
service role (root, its own user, or an unlocked service session) may export; each export is
audited (Export, to the file).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from appliance import audit
from appliance.config import (
    RESERVED_ANON_PROFILES,
    AnonProfileConfig,
    ConfigError,
    ConfigStore,
    PixelRegionRule,
    anon_options,
)

COMMANDS = ("anonymize-profile", "pixel-region", "pseudonyms")
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def _size(text: str) -> tuple[int, int]:
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not COLUMNSxROWS (e.g. 800x600)")
    return int(match.group(1)), int(match.group(2))


def _rectangle(text: str) -> list[int]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not x,y,width,height (e.g. 0,0,800,40)")
    return [int(p) for p in parts]


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    profile = commands.add_parser(
        "anonymize-profile",
        parents=[common],
        help="manage anonymization profiles (PS3.15 Annex E options and overrides)",
    )
    profile_cmds = profile.add_subparsers(dest="anon_profile_command", required=True)
    add = profile_cmds.add_parser(
        "add",
        parents=[common],
        help="add (or with --replace change) a site profile",
        description="A profile is the Basic Application Level Confidentiality Profile plus "
        "the options named, then the overrides. Options: " + ", ".join(_option_names()) + ".",
    )
    add.add_argument("name", help="profile name (not 'basic', which is built in)")
    add.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="OPTION",
        help="an Annex E option (repeat for more; - or _ both accepted)",
    )
    add.add_argument(
        "--keep", action="append", default=[], metavar="ATTR", help="keep this attribute as is"
    )
    add.add_argument(
        "--remove", action="append", default=[], metavar="ATTR", help="remove this attribute"
    )
    add.add_argument(
        "--replace",
        action="append",
        default=[],
        metavar="ATTR=VALUE",
        help="replace this attribute's value (ATTR: keyword like StudyDescription or tag "
        "like 0008,1030)",
    )
    add.add_argument(
        "--id-pattern",
        metavar="PATTERN",
        help="new Patient ID: {n} is the patient's number in the project (e.g. {n:06d}), "
        "{hash8} 8 hex digits from the project key (default ANON{n:06d})",
    )
    add.add_argument(
        "--name-pattern", metavar="PATTERN", help="new Patient's Name (default ANONYMOUS^{n:06d})"
    )
    add.add_argument(
        "--project",
        metavar="NAME",
        help="project: the key of new UIDs and the numbering of pseudonyms (default 'default')",
    )
    add.add_argument("--description", default="", help="one line shown with the profile")
    add.add_argument("--replace-existing", dest="replace_existing", action="store_true",
                     help="replace a profile of that name")  # fmt: skip
    listing = profile_cmds.add_parser("list", parents=[common], help="list profiles")
    listing.add_argument("--json", action="store_true", help="print JSON")
    remove = profile_cmds.add_parser("remove", parents=[common], help="remove a site profile")
    remove.add_argument("name")

    region = commands.add_parser(
        "pixel-region",
        parents=[common],
        help="manage burned-in text regions blanked by Clean Pixel Data",
    )
    region_cmds = region.add_subparsers(dest="pixel_region_command", required=True)
    radd = region_cmds.add_parser(
        "add",
        parents=[common],
        help="add a rule: rectangles to blank on images of one modality and size",
    )
    rremove = region_cmds.add_parser(
        "remove", parents=[common], help="remove the rule of a modality, manufacturer and size"
    )
    for sub in (radd, rremove):
        sub.add_argument("--modality", required=True, help="e.g. US")
        sub.add_argument(
            "--manufacturer", default="", help="only this Manufacturer (0008,0070); any if absent"
        )
        sub.add_argument(
            "--model", default="", help="only this Manufacturer's Model Name (0008,1090)"
        )
        sub.add_argument(
            "--size",
            required=True,
            type=_size,
            metavar="COLSxROWS",
            help="image size, e.g. 800x600",
        )
    radd.add_argument(
        "--region",
        action="append",
        required=True,
        type=_rectangle,
        metavar="X,Y,W,H",
        help="a rectangle in pixels from the top left (repeat for more)",
    )
    radd.add_argument("--replace", action="store_true", help="replace an existing rule")
    rlist = region_cmds.add_parser("list", parents=[common], help="list rules")
    rlist.add_argument("--json", action="store_true", help="print JSON")

    pseudonyms = commands.add_parser(
        "pseudonyms", parents=[common], help="the pseudonym mapping (re-identifies patients)"
    )
    pseudonym_cmds = pseudonyms.add_subparsers(dest="pseudonyms_command", required=True)
    export = pseudonym_cmds.add_parser(
        "export",
        parents=[common],
        help="write the pseudonym mapping as CSV (mode 0600) for the study coordinator",
        description="Columns: project, pseudonym_id, pseudonym_name, patient_id, patient_name, "
        "birth_date, date_shift_days, first_seen, last_seen. The file re-identifies patients: "
        "it is created readable by its owner only. Exporting is audited.",
    )
    export.add_argument("file", type=Path, help="CSV file to write (replaced if it exists)")
    export.add_argument("--project", help="only this project (default: every project)")


def _option_names() -> list[str]:
    try:
        return list(anon_options())
    except ImportError:  # the engine's table is missing: help still works
        return []


def _option(text: str) -> str:
    return text.strip().lower().replace("-", "_")


def profile_from_args(args: argparse.Namespace) -> AnonProfileConfig:
    overrides: dict[str, str] = {}
    for attribute in args.keep:
        overrides[attribute] = "keep"
    for attribute in args.remove:
        overrides[attribute] = "remove"
    for item in args.replace:
        attribute, equals, value = item.partition("=")
        if not equals:
            raise ConfigError("--replace", f"{item!r} is not ATTR=VALUE")
        overrides[attribute] = f"replace:{value}"
    named = args.keep + args.remove + [item.partition("=")[0] for item in args.replace]
    if len(set(named)) != len(named):
        raise ConfigError("anon_profile.overrides", "an attribute is named in two overrides")
    data: dict[str, Any] = {
        "name": args.name,
        "options": [_option(o) for o in args.option],
        "overrides": overrides,
        "description": args.description,
    }
    if args.id_pattern is not None:
        data["patient_id_pattern"] = args.id_pattern
    if args.name_pattern is not None:
        data["patient_name_pattern"] = args.name_pattern
    if args.project is not None:
        data["project"] = args.project
    return AnonProfileConfig.from_mapping(data)


def _profile_line(profile: AnonProfileConfig) -> str:
    options = ", ".join(profile.options) or "no options"
    overrides = ", ".join(f"{k}={v}" for k, v in profile.overrides.items())
    text = (
        f"{profile.name:<20} project {profile.project:<12} {options}"
        f"{'; overrides ' + overrides if overrides else ''}"
    )
    if not profile.builtin:
        text += f"; id {profile.patient_id_pattern}, name {profile.patient_name_pattern}"
    else:
        text += " (built in: Basic Profile)"
    return text + (f"  -- {profile.description}" if profile.description else "")


def cmd_profile(args: argparse.Namespace, store: ConfigStore) -> int:
    command = args.anon_profile_command
    if command == "add":
        profile = profile_from_args(args)
        store.add_anon_profile(profile, replace=args.replace_existing)
        print(f"profile {profile.name} saved: {_profile_line(profile)}")
        return EXIT_OK
    if command == "remove":
        store.remove_anon_profile(args.name)
        print(f"profile {args.name} removed")
        return EXIT_OK
    profiles = [store.anon_profile(name) for name in RESERVED_ANON_PROFILES]
    profiles += store.anon_profiles()
    if args.json:
        print(json.dumps([{**asdict(p), "builtin": p.builtin} for p in profiles], indent=2))
    else:
        for profile in profiles:
            print(_profile_line(profile))
    return EXIT_OK


def _rule_line(rule: PixelRegionRule) -> str:
    rectangles = " ".join(",".join(str(v) for v in r) for r in rule.regions)
    return f"{rule.describe():<40} blank {rectangles}"


def cmd_region(args: argparse.Namespace, store: ConfigStore) -> int:
    command = args.pixel_region_command
    if command == "list":
        rules = store.pixel_regions()
        if args.json:
            print(json.dumps([asdict(r) for r in rules], indent=2))
        else:
            for rule in rules:
                print(_rule_line(rule))
        return EXIT_OK
    columns, rows = args.size
    if command == "remove":
        removed = store.remove_pixel_region(
            args.modality, columns, rows, manufacturer=args.manufacturer, model=args.model
        )
        print(f"rule removed: {removed.describe()}")
        return EXIT_OK
    rule = PixelRegionRule(
        modality=args.modality,
        columns=columns,
        rows=rows,
        regions=list(args.region),
        manufacturer=args.manufacturer,
        model=args.model,
    )
    store.add_pixel_region(rule, replace=args.replace)
    print(f"rule saved: {_rule_line(rule)}")
    return EXIT_OK


def _service_refusal(data_dir: Path) -> str | None:
    """Why this caller may not export now, or None. Without a daemon, reading the store needs
    the file's owner (the file is 0600); with one, the caller must hold the service role."""
    from appliance.control import ApiError
    from appliance.control_client import DaemonUnavailable
    from appliance.jobs_cli import client_for

    try:
        with client_for(data_dir) as client:
            hello = client.call("hello")
    except DaemonUnavailable:
        return None
    except ApiError as exc:
        return str(exc)
    if hello.get("role") != "service":
        return "the pseudonym export needs the service role"
    return None


def cmd_pseudonyms(args: argparse.Namespace, store: ConfigStore) -> int:
    from appliance.pseudonyms import STORE_DIR, STORE_FILE, PseudonymError, PseudonymStore

    refusal = _service_refusal(store.data_dir)
    if refusal is not None:
        print(f"error: {refusal}", file=sys.stderr)
        return EXIT_FAILED
    source = store.data_dir / STORE_DIR / STORE_FILE
    if not source.exists():
        print(f"error: no pseudonyms yet ({source} does not exist)", file=sys.stderr)
        return EXIT_FAILED
    target = args.file.expanduser().absolute()
    outcome, description = "success", ""
    try:
        with PseudonymStore(store.data_dir) as pseudonyms:
            count = pseudonyms.export(args.project, target)
        description = (
            f"pseudonym mapping exported ({count} patients, "
            f"project {args.project or 'all'}) to {target}"
        )
    except PseudonymError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        outcome, description = "serious", f"pseudonym export to {target} failed: {exc}"
        print(f"error: cannot write {target}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if description:
            _audit_export(source, target, outcome, description)
    print(f"{count} patients written to {target} (mode 0600; it re-identifies them)")
    return EXIT_OK


def _audit_export(source: Path, target: Path, outcome: str, description: str) -> None:
    """Export (110106): the mapping went to a file; the store is the object exported."""
    audit.emit(
        "export",
        outcome=outcome,
        description=description,
        participants=[
            audit.actor() or audit.os_user(),
            audit.Participant(user_id=target.as_uri(), role="destination-media", media_type="uri"),
        ],
        local_role="source",
        objects=[
            audit.ParticipantObject(
                object_id=source.resolve().as_uri(),
                id_type=audit.URI_TYPE,
                role=audit.ROLE_SECURITY_RESOURCE,
                name="Pseudonym mapping",
            )
        ],
    )


def run(args: argparse.Namespace, store: ConfigStore) -> int:
    if args.command == "anonymize-profile":
        return cmd_profile(args, store)
    if args.command == "pixel-region":
        return cmd_region(args, store)
    return cmd_pseudonyms(args, store)
