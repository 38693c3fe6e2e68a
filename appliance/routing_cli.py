"""Auto-routing commands: `route add`, `route remove`, `route list`.

Rules live in the configuration; a running daemon picks a change up with the next instance it
receives (see ``appliance.routing``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from appliance.config import ConfigStore, RoutingRule

EXIT_OK = 0

COMMANDS = ("route",)


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    route = commands.add_parser(
        "route",
        parents=[common],
        help="auto-routing rules: forward received instances to nodes",
    )
    route_cmds = route.add_subparsers(dest="route_command", required=True)
    add = route_cmds.add_parser(
        "add",
        parents=[common],
        help="add (or with --replace, change) a rule",
        description="Forward every received instance that matches all given criteria (none "
        "given: every instance) to the nodes, one job per study and node once the study has "
        "been quiet for routing_quiet_seconds.",
    )
    add.add_argument("name")
    add.add_argument(
        "--to",
        required=True,
        metavar="NODE[,NODE...]",
        help="configured nodes to forward to, comma-separated",
    )
    add.add_argument(
        "--calling-ae",
        default="",
        metavar="AE[,AE...]",
        help="only instances sent by these calling AE titles (exact match)",
    )
    add.add_argument(
        "--modality",
        default="",
        metavar="MOD[,MOD...]",
        help="only instances of these modalities, e.g. CT,MR (any case)",
    )
    add.add_argument(
        "--sop-class",
        default="",
        metavar="UID[,UID...]",
        help="only instances of these SOP Class UIDs",
    )
    add.add_argument("--disabled", action="store_true", help="store the rule switched off")
    add.add_argument("--replace", action="store_true", help="replace a rule of the same name")
    remove = route_cmds.add_parser("remove", parents=[common], help="remove a rule")
    remove.add_argument("name")
    listing = route_cmds.add_parser("list", parents=[common], help="list the rules")
    listing.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace, store: ConfigStore) -> int:
    """Run a `route` command; ConfigError (a bad rule, an unknown node) propagates."""
    if args.route_command == "add":
        rule = RoutingRule(
            name=args.name,
            calling_aes=args.calling_ae,
            modalities=args.modality,
            sop_classes=args.sop_class,
            destinations=args.to,
            enabled=not args.disabled,
        )
        store.add_routing_rule(rule, replace=args.replace)
        print(f"{'changed' if args.replace else 'added'} {describe(rule)}")
        return EXIT_OK
    if args.route_command == "remove":
        store.remove_routing_rule(args.name)
        print(f"removed {args.name}")
        return EXIT_OK
    rules = store.routing_rules()
    if args.json:
        print(json.dumps([asdict(rule) for rule in rules], indent=2))
        return EXIT_OK
    if not rules:
        print("no routing rules")
        return EXIT_OK
    print(f"{'NAME':<16} {'ON':<3} {'CALLING AE':<16} {'MODALITY':<10} {'SOP CLASS':<30} TO")
    for rule in rules:
        print(
            f"{rule.name:<16} {'yes' if rule.enabled else 'no':<3} "
            f"{_any(rule.calling_aes):<16} {_any(rule.modalities):<10} "
            f"{_any(rule.sop_classes):<30} {','.join(rule.destinations)}"
        )
    return EXIT_OK


def _any(values: list[str]) -> str:
    return ",".join(values) if values else "any"


def describe(rule: RoutingRule) -> str:
    criteria = [
        f"calling AE {_any(rule.calling_aes)}",
        f"modality {_any(rule.modalities)}",
        f"SOP class {_any(rule.sop_classes)}",
    ]
    state = "" if rule.enabled else " (disabled)"
    return f"{rule.name}{state}: {'; '.join(criteria)} -> {', '.join(rule.destinations)}"
