"""`dicom-appliance media`: optical drives, burning patient discs and importing discs.

Each subcommand lives with its own module: ``drives`` here, ``burn`` in
``appliance.media_burn_cli`` and ``import`` in ``appliance.media_import_cli``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from appliance import media_burn_cli, media_import_cli
from appliance.config import ConfigStore

COMMANDS = ("media",)


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    media = commands.add_parser(
        "media", parents=[common], help="optical drives, burn patient discs, import discs"
    )
    cmds = media.add_subparsers(dest="media_command", required=True)
    drives = cmds.add_parser("drives", parents=[common], help="the optical drives and their state")
    drives.add_argument("--json", action="store_true", help="print JSON")
    media_burn_cli.add_parser(cmds, common)
    media_import_cli.add_parser(cmds, common)


def cmd_drives(args: argparse.Namespace, store: ConfigStore) -> int:
    from appliance.drives import list_drives

    drives = list_drives(store)
    if args.json:
        print(json.dumps([drive.as_dict() for drive in drives], indent=2))
        return 0
    if not drives:
        print("no optical drives")
        return 0
    for drive in drives:
        print(drive.line())
    return 0


def run(args: argparse.Namespace, store: ConfigStore) -> int:
    if args.media_command == "drives":
        return cmd_drives(args, store)
    if args.media_command == "burn":
        return media_burn_cli.run(args, store)
    return media_import_cli.run(args, store)
