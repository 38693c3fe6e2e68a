"""Virtual printer commands: `virtual-printer add`, `remove` and `list`.

A virtual printer is an AE title modalities print to (``appliance.print_scp``); each forwards
its films to a configured printer or holds them in the archive. A running daemon uses a change
from the next print association on.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from appliance.config import ConfigStore, VirtualPrinter

EXIT_OK = 0

COMMANDS = ("virtual-printer",)


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    virtual = commands.add_parser(
        "virtual-printer",
        parents=[common],
        help="virtual printers: AE titles modalities print to, forwarded to a printer or held",
    )
    cmds = virtual.add_subparsers(dest="virtual_printer_command", required=True)
    add = cmds.add_parser(
        "add",
        parents=[common],
        help="add (or with --replace, change) a virtual printer",
        description="Films printed to AE title T are stored in the archive (Stored Print and "
        "Hardcopy images), then printed on printer P, or held with --hold (print them later "
        "with `print --printer P --stored-print UID`).",
    )
    add.add_argument("name")
    add.add_argument("--ae-title", required=True, help="the AE title modalities print to")
    where = add.add_mutually_exclusive_group(required=True)
    where.add_argument("--printer", help="configured printer the films go to")
    where.add_argument("--hold", action="store_true", help="store the films, print nothing")
    add.add_argument(
        "--replace", action="store_true", help="replace a virtual printer of the same name"
    )
    remove = cmds.add_parser("remove", parents=[common], help="remove a virtual printer")
    remove.add_argument("name")
    listing = cmds.add_parser("list", parents=[common], help="list the virtual printers")
    listing.add_argument("--json", action="store_true", help="print JSON")


def _describe(printer: VirtualPrinter) -> str:
    where = f"prints on {printer.printer}" if printer.printer else "holds films"
    return f"{printer.name}: AE title {printer.ae_title}, {where}"


def run(args: argparse.Namespace, store: ConfigStore) -> int:
    """Run a `virtual-printer` command; ConfigError (bad name, unknown printer) propagates."""
    command = args.virtual_printer_command
    if command == "add":
        printer = VirtualPrinter(
            name=args.name,
            ae_title=args.ae_title,
            printer=None if args.hold else args.printer,
        )
        store.add_virtual_printer(printer, replace=args.replace)
        print(f"{'replaced' if args.replace else 'added'} {_describe(printer)}")
        return EXIT_OK
    if command == "remove":
        store.remove_virtual_printer(args.name)
        print(f"removed virtual printer {args.name}")
        return EXIT_OK
    settings = store.settings()
    printers = store.virtual_printers()
    default = {
        "name": "default",
        "ae_title": settings.print_ae_title,
        "printer": settings.print_default_printer or None,
        "note": "any other called AE title, also the main one",
    }
    if args.json:
        print(json.dumps({"virtual_printers": [asdict(p) for p in printers], "default": default}))
        return EXIT_OK
    for printer in printers:
        print(_describe(printer))
    where = f"prints on {default['printer']}" if default["printer"] else "holds films"
    port = f"print port {settings.print_port}" if settings.print_port else "no print port"
    print(
        f"default: AE title {settings.print_ae_title} and any other called AE title, "
        f"{where} ({port})"
    )
    return EXIT_OK
