"""`dicom-appliance tls`: the appliance's TLS key, certificate and trusted CAs (DATA/tls).

``generate`` makes a key and a self-signed certificate, ``csr`` a certificate signing request
for a CA, ``import-cert`` installs the certificate the CA issued (and its chain), ``trust`` and
``untrust`` manage the CAs whose certificates peers may present, ``show`` prints it all with
expiry warnings. The commands work on the data folder directly (its permissions are the access
control); each change is recorded in the audit trail.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from appliance import audit, certificates
from appliance.certificates import CertificateError
from appliance.config import ConfigStore, Settings

COMMANDS = ("tls",)
EXIT_OK = 0
EXIT_FAILED = 1


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    tls = commands.add_parser(
        "tls", parents=[common], help="TLS key, certificate and trusted CAs (DATA/tls)"
    )
    cmds = tls.add_subparsers(dest="tls_command", required=True)

    def identity(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--cn", help="subject common name (default: the AE title)", metavar="CN"
        )
        parser.add_argument(
            "--san",
            action="append",
            default=[],
            metavar="NAME",
            help="subject alternative name DNS:host or IP:address; repeat for more "
            "(default: this host's names)",
        )

    def new_key(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--rsa",
            type=int,
            metavar="BITS",
            choices=certificates.RSA_SIZES,
            help="an RSA key of BITS (2048, 3072, 4096) instead of EC P-256",
        )
        parser.add_argument(
            "--passphrase-file",
            type=Path,
            metavar="FILE",
            help="encrypt the key with the passphrase on FILE's first line (kept in "
            "DATA/tls/passphrase, mode 0600, for the daemon)",
        )

    generate = cmds.add_parser(
        "generate", parents=[common], help="make a key and a self-signed certificate"
    )
    identity(generate)
    generate.add_argument(
        "--days",
        type=int,
        default=certificates.DEFAULT_DAYS,
        help=f"validity in days (default {certificates.DEFAULT_DAYS})",
    )
    new_key(generate)
    generate.add_argument(
        "--force", action="store_true", help="replace an existing key and certificate"
    )
    generate.add_argument("--json", action="store_true", help="print JSON")

    csr = cmds.add_parser(
        "csr",
        parents=[common],
        help="make a certificate signing request for the key (a new key when there is none)",
    )
    identity(csr)
    new_key(csr)
    csr.add_argument(
        "--output", required=True, metavar="FILE", help="where to write the request ('-': stdout)"
    )

    imp = cmds.add_parser(
        "import-cert",
        parents=[common],
        help="install the certificate a CA issued for the key, with its chain",
    )
    imp.add_argument("cert", type=Path, metavar="CERT.pem", help="the certificate (PEM or DER)")
    imp.add_argument(
        "--chain", type=Path, metavar="CHAIN.pem", help="intermediate CA certificates (any order)"
    )
    imp.add_argument("--json", action="store_true", help="print JSON")

    trust = cmds.add_parser("trust", parents=[common], help="trust a CA certificate")
    trust.add_argument("ca", type=Path, metavar="CA.pem", help="CA certificate(s), PEM or DER")
    trust.add_argument("--json", action="store_true", help="print JSON")

    untrust = cmds.add_parser("untrust", parents=[common], help="stop trusting a CA")
    untrust.add_argument(
        "ref", metavar="NAME|FINGERPRINT", help="file name, common name or SHA-256 fingerprint"
    )
    untrust.add_argument("--json", action="store_true", help="print JSON")

    show = cmds.add_parser(
        "show", parents=[common], help="key, certificate, chain, trusted CAs and expiry warnings"
    )
    show.add_argument("--json", action="store_true", help="print JSON")


def default_cn(settings: Settings) -> str:
    return settings.ae_title


def warning_days(settings: Settings) -> int:
    return int(getattr(settings, "tls_expiry_warning_days", certificates.DEFAULT_WARNING_DAYS))


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"{what} {path}: {exc.strerror or exc}") from None


def _print_when_used(settings: Settings) -> None:
    port = int(getattr(settings, "tls_port", 0) or 0)
    if port:
        # The TLS context is rebuilt when the files change; the listener itself is only
        # started at daemon start (when a key and certificate exist).
        print(
            f"a running daemon uses it from the next TLS association; if its TLS listener "
            f"(port {port}) is off, restart the daemon"
        )
    else:
        print("TLS listener off (tls_port 0); nodes with TLS use it from their next association")


def _print_cert(info: dict[str, Any]) -> None:
    sans = ", ".join(info["sans"]) or "-"
    print(f"  subject  {info['subject']}")
    print(f"  issuer   {info['issuer']}")
    print(f"  names    {sans}")
    print(f"  valid to {info['not_after'][:10]} ({info['days_left']} days)")
    print(f"  SHA-256  {info['fingerprint']}")


def cmd_generate(args: argparse.Namespace, data_dir: Path, settings: Settings) -> int:
    passphrase = (
        certificates.read_passphrase_file(args.passphrase_file) if args.passphrase_file else None
    )
    info = certificates.generate(
        data_dir,
        cn=args.cn or default_cn(settings),
        sans=args.san or certificates.default_sans(),
        days=args.days,
        rsa_bits=args.rsa,
        passphrase=passphrase,
        force=args.force,
    )
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    folder = certificates.tls_dir(data_dir)
    print(f"new {info['key']} key{' (encrypted)' if passphrase else ''} in {folder}/key.pem")
    print(f"self-signed certificate in {folder}/cert.pem:")
    _print_cert(info)
    _print_when_used(settings)
    return EXIT_OK


def cmd_csr(args: argparse.Namespace, data_dir: Path, settings: Settings) -> int:
    passphrase = (
        certificates.read_passphrase_file(args.passphrase_file) if args.passphrase_file else None
    )
    pem, info = certificates.make_csr(
        data_dir,
        cn=args.cn or default_cn(settings),
        sans=args.san or certificates.default_sans(),
        rsa_bits=args.rsa,
        passphrase=passphrase,
    )
    if args.output == "-":
        sys.stdout.write(pem.decode("ascii"))
        return EXIT_OK
    output = Path(args.output)
    try:
        output.write_bytes(pem)
    except OSError as exc:
        raise CertificateError(f"output {output}: {exc.strerror or exc}") from None
    made = "a new" if info["new_key"] else "the"
    print(f"request for {made} {info['key']} key: {info['subject']} ({', '.join(info['sans'])})")
    print(f"written to {output} (a copy is in {info['path']})")
    print("have a CA sign it, then: dicom-appliance tls import-cert CERT.pem [--chain CHAIN.pem]")
    return EXIT_OK


def cmd_import(args: argparse.Namespace, data_dir: Path, settings: Settings) -> int:
    info = certificates.import_cert(
        data_dir,
        _read(args.cert, "certificate"),
        _read(args.chain, "chain") if args.chain else None,
        source=str(args.cert),
        chain_source=str(args.chain),
        warning_days=warning_days(settings),
    )
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print("certificate installed:")
    _print_cert(info)
    for item in info["chain"]:
        print(f"  chain    {item['subject']} (until {item['not_after'][:10]})")
    for warning in info["warnings"]:
        print(f"WARNING: {warning}")
    _print_when_used(settings)
    return EXIT_OK


def cmd_trust(args: argparse.Namespace, data_dir: Path) -> int:
    results = certificates.trust(data_dir, _read(args.ca, "CA certificate"), source=str(args.ca))
    if args.json:
        print(json.dumps(results, indent=2))
        return EXIT_OK
    for info in results:
        print(f"{info['status']}: {info['name']}  {info['subject']}")
    return EXIT_OK


def cmd_untrust(args: argparse.Namespace, data_dir: Path) -> int:
    entry = certificates.untrust(data_dir, args.ref)
    if args.json:
        print(json.dumps(entry, indent=2))
        return EXIT_OK
    print(f"removed: {entry['name']}  {entry.get('subject', '')}".rstrip())
    return EXIT_OK


def cmd_show(args: argparse.Namespace, data_dir: Path, settings: Settings) -> int:
    info = certificates.show(data_dir, warning_days(settings))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(certificates.format_show(info))
    return EXIT_OK


def run(args: argparse.Namespace, store: ConfigStore) -> int:
    data_dir = store.data_dir
    settings = store.settings()
    command = args.tls_command
    if command == "show":
        try:
            return cmd_show(args, data_dir, settings)
        except CertificateError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
    # A change is audited; the daemon's audit sink is not ours, so set one up for this run
    # unless the caller already did.
    own_sink = not audit.configured()
    if own_sink:
        audit.configure(data_dir, settings)
    try:
        if command == "generate":
            return cmd_generate(args, data_dir, settings)
        if command == "csr":
            return cmd_csr(args, data_dir, settings)
        if command == "import-cert":
            return cmd_import(args, data_dir, settings)
        if command == "trust":
            return cmd_trust(args, data_dir)
        return cmd_untrust(args, data_dir)
    except CertificateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if own_sink:
            audit.shutdown()
