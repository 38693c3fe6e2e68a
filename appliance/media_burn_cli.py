"""`dicom-appliance media burn`: burn one patient's studies onto a disc (a ``burn`` job).

``media burn --study UID [--study UID ...] --drive DEVICE`` queues a burn job through the
daemon and prints its id (``--wait`` follows it to the end). DEVICE is the drive (``/dev/sr0``)
or a file-backed drive, ``stdio:/path/disc.iso``: the disc image is written there (when the
studies need several discs, disc n goes to ``/path/disc-n.iso``). Without a daemon the discs
are burned directly, once, and the command says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from appliance import jobs_cli
from appliance.config import ConfigStore
from appliance.control import ApiError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
MB = 1000**2


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of megabytes") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the capacity must be more than 0 MB")
    return value


def add_parser(cmds: Any, common: argparse.ArgumentParser) -> None:
    from appliance.media_burn import PROFILES

    burn = cmds.add_parser(
        "burn",
        parents=[common],
        help="burn one patient's studies onto a CD or DVD (a burn job)",
        description="Queue a burn job: the studies (of one patient) as DICOM file-sets with "
        "a DICOMDIR, README.TXT and INDEX.HTM, split over several discs when they do not fit "
        "one. Each disc is written, read back and compared, then ejected.",
    )
    burn.add_argument(
        "--study", action="append", default=[], metavar="UID", required=True, help="a study"
    )
    burn.add_argument(
        "--drive",
        required=True,
        metavar="DEVICE",
        help="the drive (/dev/sr0), or stdio:/path/disc.iso to write a disc image file",
    )
    burn.add_argument(
        "--capacity",
        type=_megabytes,
        metavar="MB",
        help="what one disc holds, in MB of 1,000,000 bytes (default: the blank disc's space, "
        "700 for a file-backed drive)",
    )
    burn.add_argument(
        "--profile",
        type=str.upper,
        choices=PROFILES,
        help="media profile (default STD-GEN-CD; STD-GEN-DVD-JPEG on a DVD when the setting "
        "media_dvd_jpeg is on)",
    )
    burn.add_argument(
        "--no-label", action="store_true", help="no LABEL.TXT (patient, dates, disc n of N)"
    )
    burn.add_argument("--json", action="store_true", help="print JSON")
    jobs_cli.add_queue_options(burn)


def _device(text: str) -> str:
    """The drive as the daemon must see it: a file-backed drive's path made absolute (the
    daemon runs in another folder)."""
    from appliance.media_burn import FILE_PREFIX

    if text.startswith(FILE_PREFIX):
        path = text[len(FILE_PREFIX) :]
        if path and not path.endswith("/"):
            return FILE_PREFIX + os.path.abspath(os.path.expanduser(path))
    return text


def request_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"study_uids": list(args.study)}
    if args.capacity is not None:
        params["capacity_bytes"] = int(args.capacity * MB)
    if args.profile:
        params["profile"] = args.profile
    if args.no_label:
        params["label"] = False
    return params


def run(args: argparse.Namespace, store: ConfigStore) -> int:
    from appliance.media_burn import BurnError, check_device, normalise_params

    device = _device(args.drive)
    params = request_params(args)
    try:
        check_device(device)
        normalise_params(params)
    except BurnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        queued = jobs_cli.queue_job(
            store.data_dir,
            kind="burn",
            target=device,
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
    return burn_directly(store, device, params, as_json=args.json)


def burn_directly(store: ConfigStore, device: str, params: dict[str, Any], *, as_json: bool) -> int:
    """Burn without the daemon: every disc once, in order, stopping at the first failure."""
    from appliance import media_burn
    from appliance.archive import Archive

    settings = store.settings()
    archive = Archive(store.data_dir)
    drive_info = None
    if not media_burn.is_file_target(device):
        from appliance.drives import enumerate_drives

        known = {d.device: d for d in enumerate_drives()}
        drive_info = known.get

    def say(text: str) -> None:
        if not as_json:
            print(text, file=sys.stderr, flush=True)

    try:
        try:
            results = media_burn.burn_directly(
                archive, settings, device, params, store.data_dir, say=say, drive_info=drive_info
            )
        except media_burn.BurnError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    finally:
        archive.close()
    if as_json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            if r.ok:
                print(f"disc {r.number} of {r.total} burned and verified: {r.target}")
            else:
                print(f"disc {r.number} of {r.total} failed: {r.error}")
    total = results[0].total if results else 0
    return EXIT_OK if len(results) == total and all(r.ok for r in results) else EXIT_FAILED
