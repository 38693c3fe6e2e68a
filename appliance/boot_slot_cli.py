"""`dicom-appliance boot-slot`: the A/B boot slots in GRUB's environment block.

``status [--json]`` shows each slot, the booted one (``rauc.slot=`` on the kernel command line)
and the slot GRUB boots next. ``mark-good [SLOT]`` confirms a boot (the booted slot when SLOT is
left out; dicom-appliance-boot-ok.service runs it once the DICOM services are up); ``mark-bad
SLOT`` keeps GRUB from booting a slot; ``switch SLOT`` boots SLOT next, on trial; ``extra-cmdline
TEXT`` adds TEXT to the kernel command line from the next boot on. See
``appliance.boot_slots``. Needs no data folder and no daemon.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from appliance import boot_slots
from appliance.boot_slots import BootSlotError, BootStatus

COMMANDS = ("boot-slot",)
EXIT_OK = 0
EXIT_FAILED = 1


def _slot(text: str) -> str:
    try:
        return boot_slots.check_slot(text.upper())
    except BootSlotError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a slot (A or B)") from None


def _file_options() -> argparse.ArgumentParser:
    # SUPPRESS on both levels, so `boot-slot --env F status` and `boot-slot status --env F`
    # both work and neither level's default hides the other's value.
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--env",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=f"GRUB environment block (default: ${boot_slots.ENV_PATH_VARIABLE} or "
        f"{boot_slots.DEFAULT_ENV_PATH})",
    )
    parent.add_argument(
        "--cmdline",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=f"kernel command line to take rauc.slot= from (default: "
        f"{boot_slots.DEFAULT_CMDLINE_PATH})",
    )
    return parent


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    # No `common` parent: --data-dir means nothing here.
    files = _file_options()
    parser = commands.add_parser(
        "boot-slot",
        parents=[files],
        help="A/B boot slots: status, confirm a boot, switch slots",
        description="The A/B boot slots in GRUB's environment block on the EFI system "
        "partition. status: each slot, the booted one (rauc.slot= on the kernel command line) "
        "and the one GRUB boots next. mark-good confirms a boot (the booted slot when SLOT is "
        "left out); mark-bad keeps GRUB from booting a slot; switch boots SLOT next, on trial; "
        "extra-cmdline adds to the kernel command line from the next boot on.",
    )
    actions = parser.add_subparsers(dest="boot_slot_command", required=True)
    status = actions.add_parser(
        "status", parents=[files], help="each slot, the booted one and the next boot's"
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    good = actions.add_parser(
        "mark-good",
        parents=[files],
        help="confirm a boot: SLOT (default: the booted slot) holds a working system",
    )
    good.add_argument("slot", nargs="?", type=_slot, metavar="SLOT", help="A or B")
    bad = actions.add_parser("mark-bad", parents=[files], help="GRUB no longer boots SLOT")
    bad.add_argument("slot", type=_slot, metavar="SLOT", help="A or B")
    switch = actions.add_parser(
        "switch",
        parents=[files],
        help="boot SLOT next, on trial (rolls back unless that boot is confirmed)",
    )
    switch.add_argument("slot", type=_slot, metavar="SLOT", help="A or B")
    extra = actions.add_parser(
        "extra-cmdline",
        parents=[files],
        help='add TEXT to the kernel command line from the next boot on ("" for nothing)',
    )
    extra.add_argument("text", metavar="TEXT")
    backend = actions.add_parser(
        "rauc-backend",
        parents=[files],
        help="RAUC's custom boot loader backend (bootloader-custom-backend in system.conf)",
        description="Called by RAUC as its custom boot loader backend: get-primary, "
        "set-primary SLOT, get-state SLOT, set-state SLOT good|bad.",
    )
    backend.add_argument(
        "operation", choices=("get-primary", "set-primary", "get-state", "set-state")
    )
    backend.add_argument("operands", nargs="*", metavar="ARG")


def run(args: argparse.Namespace) -> int:
    env_path: Path = getattr(args, "env", None) or boot_slots.env_path_default()
    cmdline_path: Path = getattr(args, "cmdline", None) or boot_slots.DEFAULT_CMDLINE_PATH
    try:
        return _run(args, env_path, cmdline_path)
    except BootSlotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _run(args: argparse.Namespace, env_path: Path, cmdline_path: Path) -> int:
    command = args.boot_slot_command
    if command == "rauc-backend":
        return rauc_backend(args.operation, args.operands, env_path)
    if command == "status":
        state = boot_slots.status(env_path, cmdline_path)
        if args.json:
            print(json.dumps(state.as_dict(), indent=2))
        else:
            print_status(state)
        return EXIT_OK
    if command == "mark-good":
        slot = args.slot or boot_slots.booted_slot(cmdline_path)
        if slot is None:
            raise BootSlotError(
                f"no {boot_slots.CMDLINE_SLOT_PARAMETER}= on the kernel command line "
                f"({cmdline_path}): name the slot to confirm"
            )
        variables = boot_slots.mark_good(slot, env_path)
        print(f"slot {slot} confirmed ({_flags(variables, slot)})")
    elif command == "mark-bad":
        variables = boot_slots.mark_bad(args.slot, env_path)
        print(f"slot {args.slot} marked bad ({_flags(variables, args.slot)})")
    elif command == "switch":
        variables = boot_slots.switch_to(args.slot, env_path)
        print(
            f"slot {args.slot} first in ORDER ({_flags(variables, args.slot)}); its boot is on "
            "trial until confirmed"
        )
    else:
        variables = boot_slots.set_extra_cmdline(args.text, env_path)
        print(f"extra kernel command line: {args.text!r} from the next boot on")
    print(f"next boot: {boot_slots.next_boot_slot(variables)}")
    return EXIT_OK


def rauc_backend(operation: str, operands: list[str], env_path: Path) -> int:
    """RAUC's custom boot loader backend over the same variables RAUC's GRUB backend uses, so
    that RAUC needs no grub-editenv on the box. RAUC reads what is printed on stdout."""
    expected = {"get-primary": 0, "set-primary": 1, "get-state": 1, "set-state": 2}[operation]
    if len(operands) != expected:
        raise BootSlotError(f"{operation} takes {expected} argument(s), got {len(operands)}")
    if operation == "get-primary":
        variables = boot_slots.read_env(env_path)
        print(boot_slots.next_boot_slot(variables))
        return EXIT_OK
    slot = boot_slots.check_slot(operands[0].upper())
    if operation == "set-primary":
        boot_slots.switch_to(slot, env_path)
    elif operation == "get-state":
        variables = boot_slots.effective(boot_slots.read_env(env_path))
        print("good" if variables[f"{slot}_OK"] == "1" else "bad")
    elif operands[1] == "good":
        boot_slots.mark_good(slot, env_path)
    elif operands[1] == "bad":
        boot_slots.mark_bad(slot, env_path)
    else:
        raise BootSlotError(f"set-state takes good or bad, not {operands[1]!r}")
    return EXIT_OK


def _flags(variables: dict[str, str], slot: str) -> str:
    values = boot_slots.effective(variables)
    return f"OK={values[f'{slot}_OK']} TRY={values[f'{slot}_TRY']}"


def print_status(state: BootStatus) -> None:
    for slot in state.slots:
        booted = "booted" if slot.booted else ""
        print(f"{slot.slot}  {booted:<6}  {slot.describe():<13}  (OK={slot.ok} TRY={slot.tried})")
    print(f"order: {' '.join(state.order) or '(none)'}")
    if state.booted is None:
        parameter = boot_slots.CMDLINE_SLOT_PARAMETER
        print(f"booted slot: unknown (no {parameter}= on the kernel command line)")
    extra = state.variables.get("extra_cmdline", "")
    if extra:
        print(f"extra kernel command line: {extra}")
    print(f"next boot: {state.next_boot}")
