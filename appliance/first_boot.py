"""`dicom-appliance first-boot`: what a freshly imaged appliance sets up once, before the daemon.

- the AE title from the host name (its first label, upper-cased, characters other than A-Z, 0-9
  and ``_`` replaced by ``_``, at most 16), while the AE title is still the default;
- the image's port and control-socket group (``--port``, ``--control-group``), while those
  settings are still their defaults;
- a TLS key and a self-signed certificate (DATA/tls, as ``tls generate``) when there is no key;
- the console's address printed (the unit sends it to the system console and the journal).

It changes only what is still at its default and never replaces a key, so running it again
changes nothing; at the end it writes DATA/first-boot.done, which the unit's condition tests.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import fcntl
import grp
import json
import os
import re
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from appliance import audit, certificates
from appliance.certificates import CertificateError
from appliance.config import ConfigError, ConfigStore, Settings
from appliance.fileio import atomic_write_bytes

COMMANDS = ("first-boot",)
STAMP_FILE = "first-boot.done"
EXIT_OK = 0
EXIT_FAILED = 1

_SIOCGIFADDR = 0x8915
_NOT_AE = re.compile(r"[^A-Z0-9_]")
# Host names that say nothing about this box.
_ANONYMOUS_HOSTS = {"", "localhost", "localhost6", "debian", "(none)"}


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "first-boot",
        parents=[common],
        help="first-boot set-up: AE title from the host name, TLS key and certificate",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--port", type=int, help="DICOM port of this installation (e.g. 104)")
    parser.add_argument("--control-group", help="group given the control socket (the console's)")
    parser.add_argument("--hostname", help="use this host name instead of the system's")
    parser.add_argument("--json", action="store_true", help="print what was done as JSON")


def ae_title_from_hostname(hostname: str) -> str | None:
    """``dicom-box-2.example.org`` -> ``DICOM_BOX_2``; None for an anonymous name."""
    label = hostname.strip().split(".")[0]
    if label.lower() in _ANONYMOUS_HOSTS:
        return None
    title = _NOT_AE.sub("_", label.upper())[:16].strip("_")
    return title or None


def interface_addresses() -> list[tuple[str, str]]:
    """(interface, IPv4 address) of every configured interface but the loopback."""
    found: list[tuple[str, str]] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return found
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name in names:
            if name == "lo":
                continue
            request = array.array("B", struct.pack("256s", name.encode()[:15]))
            try:
                fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue  # down or without an IPv4 address
            address = socket.inet_ntoa(request.tobytes()[20:24])
            if not address.startswith("127."):
                found.append((name, address))
    return found


def _default(key: str) -> object:
    return getattr(Settings.from_mapping({}), key)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


DISK_RESERVE_SHARE = 10
MIN_DISK_RESERVE_MB = 16


def _file_system_mb(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_blocks * stats.f_frsize // 2**20  # MB as disk_reserve_mb counts them (MiB)


def first_boot(
    store: ConfigStore,
    *,
    hostname: str | None = None,
    port: int | None = None,
    control_group: str | None = None,
    disk_mb: int | None = None,
) -> dict[str, Any]:
    """Set up what is still at its default; returns what was done, step by step. ``disk_mb``:
    the size of the data folder's file system (read from it when None)."""
    data_dir = store.data_dir
    steps: dict[str, str] = {}
    settings = store.settings()
    host = hostname if hostname is not None else socket.gethostname()

    title = ae_title_from_hostname(host)
    if settings.ae_title != _default("ae_title"):
        steps["ae_title"] = f"kept {settings.ae_title}"
    elif title is None:
        steps["ae_title"] = f"kept {settings.ae_title} (host name {host!r} says nothing)"
    else:
        store.set("ae_title", title)
        steps["ae_title"] = f"set to {title} (host name {host})"

    if port is not None:
        if settings.port != _default("port"):
            steps["port"] = f"kept {settings.port}"
        else:
            store.set("port", port)
            steps["port"] = f"set to {port}"

    if control_group:
        if settings.control_group:
            steps["control_group"] = f"kept {settings.control_group}"
        elif not _group_exists(control_group):
            steps["control_group"] = f"not set: no group {control_group} on this system"
        else:
            store.set("control_group", control_group)
            steps["control_group"] = f"set to {control_group}"

    reserve = settings.disk_reserve_mb
    size = disk_mb if disk_mb is not None else _file_system_mb(Path(data_dir))
    if reserve == _default("disk_reserve_mb") and size // DISK_RESERVE_SHARE < reserve:
        # The default reserve would refuse every store on a small data disk (an image booted
        # on a disk no larger than itself); a tenth of the disk is kept free instead.
        smaller = max(MIN_DISK_RESERVE_MB, size // DISK_RESERVE_SHARE)
        store.set("disk_reserve_mb", smaller)
        steps["disk_reserve_mb"] = (
            f"set to {smaller} MB (a tenth of the {size} MB data disk; the default {reserve} MB "
            "would leave no room for studies)"
        )
    else:
        steps["disk_reserve_mb"] = f"kept {reserve} MB"

    settings = store.settings()
    folder = certificates.tls_dir(data_dir)
    if (folder / certificates.KEY_FILE).exists():
        steps["tls"] = f"kept the key in {folder}"
    else:
        info = certificates.generate(
            data_dir, cn=settings.ae_title, sans=certificates.default_sans()
        )
        steps["tls"] = (
            f"new {info['key']} key and self-signed certificate {info['subject']}, "
            f"SHA-256 {info['fingerprint']}"
        )

    addresses = interface_addresses()
    result: dict[str, Any] = {
        "hostname": host,
        "ae_title": settings.ae_title,
        "port": settings.port,
        "tls_port": settings.tls_port,
        "addresses": [address for _, address in addresses],
        "steps": steps,
    }
    stamp = {"done": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result}
    atomic_write_bytes(
        Path(data_dir) / STAMP_FILE, (json.dumps(stamp, indent=2) + "\n").encode(), mode=0o644
    )
    return result


def console_lines(result: dict[str, Any]) -> list[str]:
    """What the system console shows: how to reach this appliance."""
    addresses = result["addresses"] or [result["hostname"]]
    lines = [f"DICOM appliance {result['ae_title']} on {result['hostname']}"]
    for address in addresses:
        lines.append(f"  console over SSH:  ssh USER@{address}  (USER in group dicom-console)")
        lines.append(f"  DICOM:             {result['ae_title']} at {address}:{result['port']}")
    if not result["addresses"]:
        lines.append("  (no network address yet: the console is on this screen, tty1)")
    return lines


def run(args: argparse.Namespace, store: ConfigStore) -> int:
    own_sink = not audit.configured()
    if own_sink:
        audit.configure(store.data_dir, store.settings())
    try:
        result = first_boot(
            store, hostname=args.hostname, port=args.port, control_group=args.control_group
        )
    except (CertificateError, ConfigError, OSError) as exc:
        print(f"error: first boot: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if own_sink:
            with contextlib.suppress(Exception):
                audit.shutdown()
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    for name, done in result["steps"].items():
        print(f"{name}: {done}")
    print("\n".join(console_lines(result)))
    return EXIT_OK
