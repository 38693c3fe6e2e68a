"""`dicom-appliance`: the daemon and its administration commands."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from appliance import (
    __version__,
    anon_profile_cli,
    anonymize_cli,
    audit,
    audit_cli,
    backup_cli,
    boot_slot_cli,
    commitment_cli,
    first_boot,
    jobs_cli,
    media_cli,
    print_cli,
    print_scp_cli,
    qr_cli,
    retry_cli,
    routing_cli,
    sign_cli,
    tls,
    tls_cli,
    workflow_cli,
)
from appliance.config import (
    NODE_SERVICES,
    TLS_PEER_AUTH,
    TLS_PROFILES,
    ConfigError,
    ConfigStore,
    Node,
    Settings,
)
from appliance.paths import default_data_dir

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WARNINGS = 3


def _data_dir_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="data folder (default: $DICOM_APPLIANCE_DATA or $XDG_DATA_HOME/dicom-appliance)",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    common = _data_dir_parent()
    parser = argparse.ArgumentParser(prog="dicom-appliance", description=__doc__, parents=[common])
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="run the daemon in the foreground")
    serve.add_argument("--port", type=int, help="DICOM port for this run")
    serve.add_argument("--ae-title", help="local AE title for this run")

    config = commands.add_parser("config", parents=[common], help="show or change settings")
    config_cmds = config.add_subparsers(dest="config_command", required=True)
    show = config_cmds.add_parser("show", parents=[common], help="print every setting")
    show.add_argument("--json", action="store_true", help="print JSON")
    setter = config_cmds.add_parser("set", parents=[common], help="change one setting")
    setter.add_argument("key", choices=Settings.keys(), metavar="KEY")
    setter.add_argument("value", metavar="VALUE")

    password = commands.add_parser(
        "service-password",
        parents=[common],
        help="set the field-service password that unlocks service mode in the console",
        description="Set the field-service password: typed twice on a terminal, else one line "
        "read from standard input. Only its scrypt hash is stored.",
    )
    password.add_argument(
        "--clear", action="store_true", help="remove it (service mode can then not be unlocked)"
    )

    node = commands.add_parser("node", parents=[common], help="manage remote DICOM nodes")
    node_cmds = node.add_subparsers(dest="node_command", required=True)
    add = node_cmds.add_parser(
        "add", parents=[common], help="add (or with --replace, change) a node"
    )
    add.add_argument("name")
    add.add_argument("--ae-title", required=True)
    add.add_argument("--host", required=True)
    add.add_argument("--port", type=int, required=True)
    add.add_argument(
        "--services",
        default=",".join(NODE_SERVICES),
        help=f"services it may use against us, comma-separated ({','.join(NODE_SERVICES)})",
    )
    add.add_argument(
        "--no-move-destination",
        action="store_true",
        help="never send C-MOVE results to this node",
    )
    add.add_argument(
        "--retrieve-method",
        choices=qr_cli.METHODS,
        default="move",
        help="how `retrieve` fetches from it: C-MOVE to us (default) or C-GET",
    )
    add.add_argument("--tls", action="store_true", help="use TLS for our associations to this node")
    add.add_argument(
        "--tls-peer-auth",
        choices=TLS_PEER_AUTH,
        help="check the node's certificate: require, verify or ignore (default: tls_peer_auth)",
    )
    add.add_argument(
        "--tls-profile",
        choices=TLS_PROFILES,
        help="TLS profile for this node: bcp195 or legacy (default: the tls_profile setting)",
    )
    add.add_argument("--replace", action="store_true", help="replace a node of the same name")
    remove = node_cmds.add_parser("remove", parents=[common], help="remove a node")
    remove.add_argument("name")
    listing = node_cmds.add_parser("list", parents=[common], help="list nodes")
    listing.add_argument("--json", action="store_true", help="print JSON")
    echo = node_cmds.add_parser("echo", parents=[common], help="C-ECHO a node")
    echo.add_argument("name")

    send = commands.add_parser("send", parents=[common], help="C-STORE files or folders to a node")
    send.add_argument("node")
    send.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    send.add_argument("--json", action="store_true", help="print per-instance results as JSON")
    commitment_cli.add_send_option(send)
    jobs_cli.add_queue_options(send)
    commitment_cli.add_parsers(commands, common)

    qr_cli.add_parsers(commands, common)
    jobs_cli.add_queue_options(commands.choices["retrieve"])
    workflow_cli.add_parsers(commands, common)
    jobs_cli.add_parsers(commands, common)
    routing_cli.add_parsers(commands, common)
    retry_cli.add_parsers(commands, common)
    print_cli.add_parsers(commands, common)
    print_scp_cli.add_parsers(commands, common)
    media_cli.add_parsers(commands, common)
    sign_cli.add_parsers(commands, common)
    tls_cli.add_parsers(commands, common)
    first_boot.add_parsers(commands, common)
    audit_cli.add_parsers(commands, common)
    anonymize_cli.add_parsers(commands, common)
    anon_profile_cli.add_parsers(commands, common)
    backup_cli.add_parsers(commands, common)
    boot_slot_cli.add_parsers(commands, common)
    return parser


def _format_value(value: object) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def cmd_config(args: argparse.Namespace, store: ConfigStore) -> int:
    if args.config_command == "set":
        stored = store.set(args.key, args.value)
        print(f"{args.key} = {_format_value(stored)}")
        return EXIT_OK
    settings = asdict(store.settings())
    if args.json:
        print(json.dumps(settings, indent=2))
        return EXIT_OK
    width = max(len(k) for k in settings)
    for key, value in settings.items():
        print(f"{key:<{width}}  {_format_value(value):<32}  # {Settings.describe(key)}")
    return EXIT_OK


def read_new_password() -> str | None:
    """The new password: asked twice on a terminal, else one line of standard input.

    None (after saying why on standard error) when the two entries differ or nothing came.
    """
    if sys.stdin.isatty():
        first = getpass.getpass("New service password: ")
        second = getpass.getpass("Repeat it: ")
        if first != second:
            print("error: the two passwords differ; nothing changed", file=sys.stderr)
            return None
        return first
    line = sys.stdin.readline()
    if not line:
        print("error: no password on standard input; nothing changed", file=sys.stderr)
        return None
    return line.removesuffix("\n").removesuffix("\r")


def cmd_service_password(args: argparse.Namespace, store: ConfigStore) -> int:
    if args.clear:
        if store.clear_service_password():
            print("service password removed: service mode cannot be unlocked in the console")
        else:
            print("no service password was set")
        return EXIT_OK
    password = read_new_password()
    if password is None:
        return EXIT_USAGE
    store.set_service_password(password)
    print("service password set (stored as a scrypt hash)")
    return EXIT_OK


def cmd_node(args: argparse.Namespace, store: ConfigStore) -> int:
    if args.node_command == "add":
        node = Node(
            name=args.name,
            ae_title=args.ae_title,
            host=args.host,
            port=args.port,
            services=args.services.split(","),
            move_destination=not args.no_move_destination,
            retrieve_method=args.retrieve_method,
            tls=args.tls,
            tls_peer_auth=args.tls_peer_auth,
            tls_profile=args.tls_profile,
        )
        if (args.tls_peer_auth or args.tls_profile) and not args.tls:
            raise ConfigError("node.tls", "--tls-peer-auth and --tls-profile need --tls")
        store.add_node(node, replace=args.replace)
        over = " over TLS" if node.tls else ""
        print(f"added {node.name}: {node.ae_title}@{node.host}:{node.port}{over}")
        return EXIT_OK
    if args.node_command == "remove":
        store.remove_node(args.name)
        print(f"removed {args.name}")
        return EXIT_OK
    if args.node_command == "list":
        nodes = store.nodes()
        if args.json:
            print(json.dumps([asdict(n) for n in nodes], indent=2))
            return EXIT_OK
        print(f"{'NAME':<16} {'AE TITLE':<16} {'HOST':<24} {'PORT':>5}  MOVE-DEST  SERVICES")
        for n in nodes:
            print(
                f"{n.name:<16} {n.ae_title:<16} {n.host:<24} {n.port:>5}  "
                f"{'yes' if n.move_destination else 'no':<9}  {','.join(n.services)}"
                + ("  TLS" if n.tls else "")
            )
        return EXIT_OK
    # echo
    from appliance import scu

    node = store.node(args.name)
    result = scu.echo(store.settings(), node)
    print(result.describe())
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_send(args: argparse.Namespace, store: ConfigStore) -> int:
    from appliance import scu

    node = store.node(args.node)
    queued = jobs_cli.queue_job(
        store.data_dir,
        kind="send",
        target=node.name,
        params={"paths": [str(p.absolute()) for p in args.paths], "commit": bool(args.commit)},
        priority=args.priority,
        wait=args.wait,
        as_json=args.json,
    )
    if queued is not None:
        return queued
    settings = store.settings()
    committed = None
    if args.json:
        report = scu.send(settings, node, args.paths)
        output = report.as_dict()
        if args.commit:
            committed = commitment_cli.commit_sent(settings, node, report, store.data_dir)
            output["commitment"] = committed.as_dict() if committed else None
        print(json.dumps(output, indent=2))
    else:
        # Print each instance as it is answered: a large send takes minutes and the operator
        # should see it moving. The output is the same as report.lines().
        print(scu.SendReport(node).header(), flush=True)
        report = scu.send(
            settings, node, args.paths, progress=lambda result: print(result.line(), flush=True)
        )
        print(report.summary(), flush=True)
        if args.commit:
            committed = commitment_cli.commit_sent(settings, node, report, store.data_dir)
            print("\n".join(committed.lines()) if committed else "commitment: nothing to commit")
    # With --commit, an instance the node has not committed is a failure of the send.
    if args.commit and committed is not None and committed.status() != "committed":
        return EXIT_FAILED
    if report.failed:
        return EXIT_FAILED
    if report.warnings:
        return EXIT_WARNINGS
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in boot_slot_cli.COMMANDS:
        return boot_slot_cli.run(args)
    data_dir: Path = getattr(args, "data_dir", None) or default_data_dir()
    # SCU associations to TLS nodes use this data folder's key store.
    tls.use_data_dir(data_dir)

    if args.command == "serve":
        from appliance.daemon import serve

        return serve(data_dir, port=args.port, ae_title=args.ae_title)
    if args.command in jobs_cli.COMMANDS:
        return jobs_cli.run(args, data_dir)
    if args.command in sign_cli.COMMANDS:
        return sign_cli.run(args, data_dir)
    if args.command in backup_cli.COMMANDS:
        return backup_cli.run(args, data_dir)

    try:
        store = ConfigStore(data_dir)
        # What a command changes directly is audited in this data folder's trail.
        audit_cli.configure_sink(data_dir, store)
        try:
            if args.command in audit_cli.COMMANDS:
                return audit_cli.run(args, data_dir)
            if args.command == "config":
                return cmd_config(args, store)
            if args.command == "node":
                return cmd_node(args, store)
            if args.command == "service-password":
                return cmd_service_password(args, store)
            if args.command == "send":
                return cmd_send(args, store)
            if args.command == "query":
                return qr_cli.cmd_query(args, store)
            if args.command == "retrieve":
                return qr_cli.cmd_retrieve(args, store)
            if args.command in workflow_cli.COMMANDS:
                return workflow_cli.run(args, store)
            if args.command in commitment_cli.COMMANDS:
                return commitment_cli.run(args, store)
            if args.command in routing_cli.COMMANDS:
                return routing_cli.run(args, store)
            if args.command in retry_cli.COMMANDS:
                return retry_cli.run(args, store)
            if args.command in print_cli.COMMANDS:
                return print_cli.run(args, store)
            if args.command in print_scp_cli.COMMANDS:
                return print_scp_cli.run(args, store)
            if args.command in media_cli.COMMANDS:
                return media_cli.run(args, store)
            if args.command in tls_cli.COMMANDS:
                return tls_cli.run(args, store)
            if args.command in first_boot.COMMANDS:
                return first_boot.run(args, store)
            if args.command in anonymize_cli.COMMANDS:
                return anonymize_cli.run(args, store)
            if args.command in anon_profile_cli.COMMANDS:
                return anon_profile_cli.run(args, store)
        finally:
            store.close()
            audit.shutdown()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
