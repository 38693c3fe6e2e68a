"""`dicom-appliance backup FILE` and `dicom-appliance restore FILE [--force]`.

``backup`` asks a running daemon to make the backup (control op ``backup.create``: it holds its
job store still while it reads the jobs) and moves the file it wrote to FILE; with no daemon
running it reads the data folder itself. ``restore`` needs the daemon stopped. See
``appliance.backup`` for what a backup holds and how a restore is checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from appliance import audit
from appliance.backup import (
    BackupError,
    audit_backup,
    audit_restore,
    create_backup,
    daemon_running,
    restore_backup,
    take_staged,
    verify_backup,
)

COMMANDS = ("backup", "restore")
# Making a backup of a large audit trail takes a while: wait this long for the daemon.
DAEMON_TIMEOUT = 600.0


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    backup = commands.add_parser(
        "backup",
        parents=[common],
        help="write a backup of the configuration, jobs, certificates and pseudonyms",
        description="Write the appliance's state to FILE (tar.gz, mode 0600): configuration, "
        "jobs, TLS key and certificates, the pseudonym mapping, audit logs, commitment, routing "
        "and MPPS state. Not the archive's instances. A running daemon makes it; else it is "
        "read from the data folder.",
    )
    backup.add_argument("file", type=Path, metavar="FILE")
    backup.add_argument("--json", action="store_true", help="print the manifest as JSON")
    restore = commands.add_parser(
        "restore",
        parents=[common],
        help="restore a backup into the data folder (the daemon must be stopped)",
        description="Check FILE whole (format version, SHA-256 of every file, paths), then "
        "restore it into the data folder. The daemon must be stopped. A data folder that "
        "already holds state is only replaced with --force; what is replaced is kept in "
        "pre-restore-<date>/ in the data folder.",
    )
    restore.add_argument("file", type=Path, metavar="FILE")
    restore.add_argument(
        "--force", action="store_true", help="replace the state already in the data folder"
    )
    restore.add_argument(
        "--check", action="store_true", help="only check the backup; write nothing"
    )


def _backup_through_daemon(data_dir: Path, destination: Path) -> dict[str, Any]:
    from appliance.control import control_socket_path
    from appliance.control_client import ApiError, ControlClient, DaemonUnavailable

    try:
        with ControlClient(
            control_socket_path(data_dir), role="service", timeout=DAEMON_TIMEOUT
        ) as client:
            answer = client.call("backup.create", destination=str(destination))
    except ApiError as exc:
        raise BackupError(f"the daemon refused the backup: {exc.message}") from None
    except DaemonUnavailable as exc:
        raise BackupError(str(exc)) from None
    staged = Path(answer["path"])
    take_staged(staged, destination)
    return answer["manifest"]


def cmd_backup(args: argparse.Namespace, data_dir: Path) -> int:
    destination = args.file.absolute()
    if not data_dir.is_dir():
        raise BackupError(f"there is no data folder at {data_dir}")
    if daemon_running(data_dir):
        manifest = _backup_through_daemon(data_dir, destination)
        how = "made by the running daemon"
    else:
        _audit_to(data_dir)
        try:
            made = create_backup(data_dir, destination)
        except BackupError as exc:
            audit_backup(data_dir, destination, None, str(exc))
            raise
        audit_backup(data_dir, destination, made)
        manifest = made.as_dict()
        how = "read from the data folder (no daemon running)"
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    files = manifest["files"]
    total = sum(f["size"] for f in files)
    sections = sorted({f["path"].split("/", 1)[0] for f in files})
    print(f"wrote {destination} (mode 0600): {len(files)} files, {total} bytes, {how}")
    print(f"holds: {', '.join(sections) or 'nothing'}")
    print("not in it: the archive's instances (archive/, index.sqlite)")
    print("it holds the TLS key and the re-identification mapping: keep it safe")
    return 0


def cmd_restore(args: argparse.Namespace, data_dir: Path) -> int:
    if args.check:
        manifest = verify_backup(args.file)
        print(
            f"{args.file}: a good backup, {len(manifest['files'])} files, made "
            f"{manifest.get('created')} on {manifest.get('host')} "
            f"by dicom-appliance {manifest.get('appliance_version')}"
        )
        return 0
    result = restore_backup(data_dir, args.file, force=args.force)
    _audit_to(data_dir)  # the restored trail, with the restored settings
    audit_restore(data_dir, args.file, result)
    manifest = result.manifest
    print(
        f"restored {len(manifest['files'])} files ({', '.join(result.restored)}) into "
        f"{data_dir} from the backup made {manifest.get('created')} on {manifest.get('host')}"
    )
    if result.moved_aside is not None:
        print(f"what was there before is kept in {result.moved_aside}")
    print("start the daemon again (systemctl start dicom-appliance)")
    return 0


def _audit_to(data_dir: Path) -> None:
    """Audit into the data folder's trail (with its settings: syslog forwarding)."""
    from appliance.audit_cli import configure_sink
    from appliance.config import ConfigError, ConfigStore

    try:
        store = ConfigStore(data_dir)
    except (ConfigError, OSError):
        audit.configure(data_dir, None)
        return
    try:
        configure_sink(data_dir, store)
    finally:
        store.close()


def run(args: argparse.Namespace, data_dir: Path) -> int:
    try:
        if args.command == "backup":
            return cmd_backup(args, data_dir)
        return cmd_restore(args, data_dir)
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        audit.shutdown()
