"""`dicom-appliance sign` and `dicom-appliance verify`: DICOM digital signatures (PS3.15 Annex C).

``sign IN OUT --key KEY --cert CERT [--mac SHA256] [--profile base|creator|authorization]
[--item LOCATION] [--passphrase-file F]`` signs every signable attribute of the object (or of a
sequence item, e.g. ``ContentSequence[0]``) and writes OUT in the input's transfer syntax.

``verify FILE [--trust CA.pem ...] [--json]`` checks every signature (main data set and items)
against the trusted CAs of DATA/tls/trusted plus the ``--trust`` certificates. Exit status: 0
when every signature is valid, 1 when one is invalid or there is none, 3 when all match but
some signer is untrustworthy.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

COMMANDS = ("sign", "verify")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNTRUSTWORTHY = 3


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    from appliance.signatures import MAC_ALGORITHMS, PROFILES

    sign = commands.add_parser(
        "sign", parents=[common], help="add a DICOM digital signature to a file"
    )
    sign.add_argument("input", type=Path, help="DICOM file to sign")
    sign.add_argument("output", type=Path, help="signed copy to write")
    sign.add_argument("--key", type=Path, required=True, help="signer's private key (PEM or DER)")
    sign.add_argument("--cert", type=Path, required=True, help="signer's certificate (PEM or DER)")
    sign.add_argument(
        "--mac",
        default="SHA256",
        type=str.upper,
        choices=MAC_ALGORITHMS,
        help="MAC algorithm (default SHA256)",
    )
    sign.add_argument(
        "--profile",
        choices=PROFILES,
        help="signature profile: base, creator or authorization RSA (needs an RSA key)",
    )
    sign.add_argument(
        "--item",
        metavar="LOCATION",
        help="sign a sequence item instead of the main data set, e.g. ContentSequence[0]",
    )
    sign.add_argument(
        "--passphrase-file",
        type=Path,
        help="file holding the key's passphrase (else asked on the terminal when encrypted)",
    )

    verify = commands.add_parser(
        "verify", parents=[common], help="verify every digital signature in a file"
    )
    verify.add_argument("file", type=Path, help="DICOM file to verify")
    verify.add_argument(
        "--trust",
        type=Path,
        action="append",
        default=[],
        metavar="CA.pem",
        help="also trust this CA certificate for this run (repeatable)",
    )
    verify.add_argument("--json", action="store_true", help="print the results as JSON")


def _passphrase(args: argparse.Namespace) -> bytes | None:
    if args.passphrase_file:
        return args.passphrase_file.read_bytes().rstrip(b"\r\n")
    from cryptography.hazmat.primitives import serialization

    data = args.key.read_bytes()
    try:
        if b"-----BEGIN" in data:
            serialization.load_pem_private_key(data, None)
        else:
            serialization.load_der_private_key(data, None)
    except TypeError:
        # Encrypted: ask on the terminal (never echoed); a wrong one fails before writing.
        if not sys.stdin.isatty():
            raise
        return getpass.getpass(f"passphrase for {args.key}: ").encode()
    except ValueError:
        return None
    return None


def cmd_sign(args: argparse.Namespace) -> int:
    from appliance.signatures import SignatureError, sign_file

    try:
        passphrase = _passphrase(args)
    except TypeError:
        print(f"error: {args.key} is encrypted: give --passphrase-file", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        uid = sign_file(
            args.input,
            args.output,
            args.key,
            args.cert,
            mac=args.mac,
            profile=args.profile,
            location=args.item,
            passphrase=passphrase,
        )
    except SignatureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - unreadable DICOM input: one clean line, no trace
        print(f"error: {args.input}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    where = args.item or "main data set"
    print(f"signed {where} of {args.input} with {args.mac}: {args.output} (signature {uid})")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, data_dir: Path) -> int:
    from appliance.signatures import (
        INVALID,
        NONE,
        UNTRUSTWORTHY,
        SignatureError,
        TrustStore,
        overall,
        verify_file,
    )

    try:
        trust = TrustStore.load(data_dir, args.trust)
    except (SignatureError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        results = verify_file(args.file, trust)
    except Exception as exc:  # noqa: BLE001 - unreadable input: one clean line
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    state = overall(results)
    if args.json:
        print(
            json.dumps(
                {
                    "file": str(args.file),
                    "state": state,
                    "signatures": [r.as_dict() for r in results],
                },
                indent=2,
            )
        )
    elif not results:
        print(f"{args.file}: no digital signatures")
    else:
        for number, result in enumerate(results, 1):
            line = (
                f"signature {number} ({result.location}): {result.status.upper()}"
                f"  {result.mac_algorithm}  signer {result.signer or '?'}"
                f"  {result.datetime}  UID {result.uid}"
            )
            print(line)
            if result.reason:
                print(f"  {result.reason}")
    if state in (INVALID, NONE):
        return EXIT_FAILED
    if state == UNTRUSTWORTHY:
        return EXIT_UNTRUSTWORTHY
    return EXIT_OK


def run(args: argparse.Namespace, data_dir: Path) -> int:
    if args.command == "sign":
        return cmd_sign(args)
    return cmd_verify(args, data_dir)
