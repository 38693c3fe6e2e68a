"""`dicom-appliance retry-policy list|set|clear`: how often and how soon failed jobs are tried
again, per job kind and per node, over the defaults of the settings (retry_max_attempts,
retry_first_delay, retry_multiplier, retry_max_delay).

A job uses the defaults, then its kind's policy over them, then its target node's policy over
that (``ConfigStore.retry_policy``). The daemon reads the policy at the end of every attempt, so
a change applies to the next failure of a running or waiting job.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from appliance.config import ConfigStore
from appliance.jobs import JOB_KINDS, RetryPolicy

COMMANDS = ("retry-policy",)

EXIT_OK = 0
EXIT_USAGE = 2

# option name -> RetryPolicy field
OPTIONS = {
    "max_attempts": "--max-attempts",
    "first_delay": "--first-delay",
    "multiplier": "--multiplier",
    "max_delay": "--max-delay",
}


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    policy = commands.add_parser(
        "retry-policy",
        parents=[common],
        help="how often and how soon failed jobs are tried again, per job kind or node",
        description=(
            "A job uses the retry_* settings, then its kind's policy over them, then its node's "
            "policy over that. The delay before attempt n+1 is first_delay * multiplier^(n-1), "
            "at most max_delay; after max_attempts attempts the job fails."
        ),
    )
    actions = policy.add_subparsers(dest="retry_command", required=True)
    listing = actions.add_parser(
        "list", parents=[common], help="the defaults and every kind's and node's policy"
    )
    listing.add_argument("--json", action="store_true", help="print JSON")

    setter = actions.add_parser(
        "set",
        parents=[common],
        help="set values of a job kind's or a node's policy (the others are kept)",
    )
    _scope_options(setter)
    setter.add_argument("--max-attempts", type=int, metavar="N", help="attempts in all (1..1000)")
    setter.add_argument(
        "--first-delay", type=float, metavar="SECONDS", help="delay after the first failure"
    )
    setter.add_argument(
        "--multiplier", type=float, metavar="X", help="factor by which each delay grows (1..10)"
    )
    setter.add_argument(
        "--max-delay", type=float, metavar="SECONDS", help="longest delay between attempts"
    )
    setter.add_argument("--json", action="store_true", help="print the stored policy as JSON")

    clear = actions.add_parser(
        "clear", parents=[common], help="remove a job kind's or a node's policy"
    )
    _scope_options(clear)


def _scope_options(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group(required=True)
    scope.add_argument("--kind", choices=JOB_KINDS, help="the policy of one job kind")
    scope.add_argument("--node", metavar="NODE", help="the policy of jobs to one node")


def _scope(args: argparse.Namespace) -> str:
    return f"kind:{args.kind}" if args.kind else f"node:{args.node}"


def describe(policy: RetryPolicy) -> str:
    return (
        f"{policy.max_attempts} attempts, first delay {policy.first_delay:g} s, "
        f"x{policy.multiplier:g}, at most {policy.max_delay:g} s"
    )


def _values_text(values: dict[str, float]) -> str:
    return " ".join(f"{OPTIONS.get(k, k)}={v:g}" for k, v in values.items())


def run(args: argparse.Namespace, store: ConfigStore) -> int:
    """The retry-policy commands; ConfigError (a bad value, an unknown node or scope) is left
    to the caller, which prints it and exits 2."""
    command = args.retry_command
    if command == "set":
        values = {name: getattr(args, name) for name in OPTIONS if getattr(args, name) is not None}
        if not values:
            print(f"error: give at least one of {', '.join(OPTIONS.values())}", file=sys.stderr)
            return EXIT_USAGE
        scope = _scope(args)
        stored = store.set_retry_policy(scope, values)
        effective = RetryPolicy.validated(stored, base=store.default_retry_policy())
        if args.json:
            print(json.dumps({"scope": scope, "values": stored, "effective": asdict(effective)}))
        else:
            print(f"{scope}: {_values_text(stored)}")
            print(f"  over the defaults: {describe(effective)}")
        return EXIT_OK
    if command == "clear":
        scope = _scope(args)
        store.clear_retry_policy(scope)
        print(f"{scope}: cleared; the defaults apply ({describe(store.default_retry_policy())})")
        return EXIT_OK
    return _list(args, store)


def _list(args: argparse.Namespace, store: ConfigStore) -> int:
    defaults = store.default_retry_policy()
    policies = store.retry_policies()
    rows = []
    for scope in sorted(policies, key=lambda s: (not s.startswith("kind:"), s)):
        values = policies[scope]
        effective = RetryPolicy.validated(values, base=defaults)
        rows.append((scope, values, effective))
    if args.json:
        print(
            json.dumps(
                {
                    "defaults": asdict(defaults),
                    "policies": [
                        {"scope": scope, "values": values, "effective": asdict(effective)}
                        for scope, values, effective in rows
                    ],
                },
                indent=2,
            )
        )
        return EXIT_OK
    print(f"defaults (settings retry_*): {describe(defaults)}")
    if not rows:
        print("no job kind or node has a policy of its own")
        return EXIT_OK
    width = max(len(scope) for scope, _, _ in rows)
    for scope, values, effective in rows:
        print(f"{scope:<{width}}  {_values_text(values)}")
        print(f"{'':<{width}}  = {describe(effective)}")
    print("a job uses the defaults, then its kind's policy, then its node's")
    return EXIT_OK
