"""The appliance's TLS key material in ``DATA/tls/``: key, certificate, chain, trusted CAs.

Layout (the TLS transport in ``appliance.tls`` reads the same files)::

    DATA/tls/            0700
      key.pem            0600  PKCS#8, encrypted when a passphrase is set
      passphrase         0600  the key's passphrase (only when the key is encrypted)
      cert.pem                 our certificate (self-signed, or issued for key.pem by a CA)
      chain.pem                intermediates, leaf-side first (optional)
      csr.pem                  the last certificate signing request made
      trusted/           0700  one PEM per trusted CA: <sanitized CN>-<8 hex of SHA-256>.pem
      crl/                     CRLs (optional; shown, not managed here)

Every write goes through ``fileio.atomic_write_bytes`` (a crash leaves the old file or the new
one, never half a key) and changes are serialized by a lock file, so the CLI and the daemon's
control API may both manage the folder. Each change is recorded in the audit trail
(``_record_change``).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import ipaddress
import os
import re
import socket
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance import audit
from appliance.fileio import atomic_write_bytes, fsync_dir

TLS_FOLDER = "tls"
KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
CHAIN_FILE = "chain.pem"
CSR_FILE = "csr.pem"
PASSPHRASE_FILE = "passphrase"
TRUSTED_FOLDER = "trusted"
CRL_FOLDER = "crl"
LOCK_FILE = ".lock"

FOLDER_MODE = 0o700
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644

RSA_SIZES = (2048, 3072, 4096)
DEFAULT_DAYS = 825
MAX_DAYS = 36500
DEFAULT_WARNING_DAYS = 30

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
P = ParamSpec("P")
R = TypeVar("R")


class CertificateError(Exception):
    """A refused certificate operation; the text says why and what to do."""


# --- paths ------------------------------------------------------------------------------------


def tls_dir(data_dir: Path) -> Path:
    return Path(data_dir) / TLS_FOLDER


def ensure_tls_dir(data_dir: Path) -> Path:
    """DATA/tls and DATA/tls/trusted, both 0700 (made so if they were created looser)."""
    folder = tls_dir(data_dir)
    for path in (folder, folder / TRUSTED_FOLDER):
        path.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        if stat.S_IMODE(path.stat().st_mode) != FOLDER_MODE:
            path.chmod(FOLDER_MODE)
    return folder


@contextmanager
def _locked(data_dir: Path) -> Iterator[Path]:
    """The TLS folder, held exclusively: one change at a time across processes."""
    folder = ensure_tls_dir(data_dir)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, SECRET_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        os.close(fd)


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


# --- names and subjects ---------------------------------------------------------------------

_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def parse_san(text: str) -> x509.GeneralName:
    """``DNS:name`` or ``IP:address``; a bare value is an IP address when it parses as one."""
    kind, sep, value = text.strip().partition(":")
    if not sep or kind.upper() not in ("DNS", "IP"):
        # A bare IPv6 address has colons too: try the whole text as an address first.
        try:
            return x509.IPAddress(ipaddress.ip_address(text.strip()))
        except ValueError:
            if sep:
                raise CertificateError(
                    f"subject alternative name {text!r}: use DNS:name or IP:address"
                ) from None
            kind, value = "DNS", text.strip()
    value = value.strip()
    if kind.upper() == "IP":
        try:
            return x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            raise CertificateError(f"IP:{value}: not an IPv4 or IPv6 address") from None
    labels = value.split(".")
    if labels and labels[0] == "*":
        labels = labels[1:]  # a wildcard only as the whole left-most label
    if not value or len(value) > 253 or not labels or not all(map(_DNS_LABEL.match, labels)):
        raise CertificateError(f"DNS:{value}: not a host name")
    return x509.DNSName(value)


def san_text(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    return str(name.value)


def default_sans() -> list[str]:
    """The host's own names: what a peer that checks host names would connect to."""
    names = [socket.gethostname()]
    fqdn = socket.getfqdn()
    if fqdn not in names and fqdn != "localhost" and "." in fqdn:
        names.append(fqdn)
    return [f"DNS:{name}" for name in names if name]


def _subject(cn: str) -> x509.Name:
    cn = cn.strip()
    if not cn:
        raise CertificateError("the common name (--cn) is empty")
    if len(cn) > 64:
        raise CertificateError(f"common name {cn!r} is longer than 64 characters")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san_extension(sans: list[str]) -> x509.SubjectAlternativeName | None:
    names: list[x509.GeneralName] = []
    for text in sans:
        name = parse_san(text)
        if name not in names:
            names.append(name)
    return x509.SubjectAlternativeName(names) if names else None


def common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint, lower-case hex without separators."""
    return cert.fingerprint(hashes.SHA256()).hex()


def trusted_file_name(cert: x509.Certificate) -> str:
    """``<CN with anything but letters and digits as _>-<8 hex of SHA-256>.pem``."""
    label = common_name(cert.subject) or cert.subject.rfc4514_string() or "ca"
    safe = "".join(c if c.isalnum() else "_" for c in label)[:64]
    return f"{safe}-{fingerprint(cert)[:8]}.pem"


# --- keys ----------------------------------------------------------------------------------------


def _new_key(rsa_bits: int | None) -> PrivateKey:
    if rsa_bits is None:
        return ec.generate_private_key(ec.SECP256R1())
    if rsa_bits not in RSA_SIZES:
        sizes = ", ".join(map(str, RSA_SIZES))
        raise CertificateError(f"RSA key size {rsa_bits}: use one of {sizes}")
    return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)


def key_description(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"EC {curve.get(key.curve.name, key.curve.name)}"
    return type(key).__name__


def _key_pem(key: PrivateKey, passphrase: bytes | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def read_passphrase_file(path: Path) -> bytes:
    """A passphrase from a file: its first line without the line end; never empty."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CertificateError(f"passphrase file {path}: {exc.strerror or exc}") from None
    passphrase = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not passphrase:
        raise CertificateError(f"passphrase file {path} is empty")
    if len(passphrase) < 8:
        raise CertificateError(f"passphrase in {path} is shorter than 8 characters")
    return passphrase


def _is_encrypted(pem: bytes) -> bool:
    return b"ENCRYPTED PRIVATE KEY" in pem or b"Proc-Type: 4,ENCRYPTED" in pem


def load_private_key(data_dir: Path) -> PrivateKey:
    """DATA/tls/key.pem, decrypted with DATA/tls/passphrase when it is encrypted."""
    folder = tls_dir(data_dir)
    try:
        pem = (folder / KEY_FILE).read_bytes()
    except FileNotFoundError:
        raise CertificateError(
            f"no key in {folder}: make one with `dicom-appliance tls generate` or `tls csr`"
        ) from None
    passphrase = None
    if _is_encrypted(pem):
        try:
            passphrase = (folder / PASSPHRASE_FILE).read_bytes().split(b"\n", 1)[0].rstrip(b"\r")
        except FileNotFoundError:
            raise CertificateError(
                f"{folder / KEY_FILE} is encrypted and {folder / PASSPHRASE_FILE} is missing"
            ) from None
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except (ValueError, TypeError) as exc:
        if passphrase is not None:
            raise CertificateError(
                f"the passphrase in {folder / PASSPHRASE_FILE} does not decrypt {folder / KEY_FILE}"
            ) from None
        raise CertificateError(f"{folder / KEY_FILE} is not a readable key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(f"{folder / KEY_FILE}: only EC and RSA keys are supported")
    return key


def _same_public_key(key: PrivateKey, cert: x509.Certificate) -> bool:
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


def _write_key(folder: Path, key: PrivateKey, passphrase: bytes | None) -> None:
    # The passphrase first: a key written encrypted is never without it.
    if passphrase:
        atomic_write_bytes(folder / PASSPHRASE_FILE, passphrase + b"\n", mode=SECRET_MODE)
    atomic_write_bytes(folder / KEY_FILE, _key_pem(key, passphrase), mode=SECRET_MODE)
    if not passphrase:
        _remove(folder / PASSPHRASE_FILE)


# --- certificates ------------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_usage(key: PrivateKey) -> x509.KeyUsage:
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        # RSA key exchange (legacy profile suites) encrypts the premaster secret with our key.
        key_encipherment=is_rsa,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


# We are a TLS server (SCP) and a TLS client (SCU) with the same certificate.
_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


def _self_signed(key: PrivateKey, cn: str, sans: list[str], days: int) -> x509.Certificate:
    now = _now()
    subject = _subject(cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Backdated a little: a peer whose clock is a few minutes behind still accepts it.
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(key), critical=True)
        .add_extension(_EKU, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    extension = _san_extension(sans)
    if extension is not None:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256())


def _directly_issued(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def is_self_signed(cert: x509.Certificate) -> bool:
    return _directly_issued(cert, cert)


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def load_certificates(data: bytes, source: str) -> list[x509.Certificate]:
    """Every certificate in PEM text (a bundle) or one DER certificate."""
    if b"-----BEGIN" in data:
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise CertificateError(f"{source}: not a PEM certificate ({exc})") from None
    else:
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise CertificateError(f"{source}: neither a PEM nor a DER certificate") from None
    if not certs:
        raise CertificateError(f"{source}: no certificate in it")
    return certs


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def days_left(cert: x509.Certificate, now: dt.datetime | None = None) -> int:
    """Whole days until the certificate expires (negative once it has)."""
    remaining = cert.not_valid_after_utc - (now or _now())
    return remaining.days


def certificate_info(
    cert: x509.Certificate, warning_days: int = DEFAULT_WARNING_DAYS
) -> dict[str, Any]:
    now = _now()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [san_text(name) for name in san]
    except x509.ExtensionNotFound:
        sans = []
    left = days_left(cert, now)
    expired = cert.not_valid_after_utc <= now
    return {
        "subject": cert.subject.rfc4514_string(),
        "cn": common_name(cert.subject),
        "issuer": cert.issuer.rfc4514_string(),
        "sans": sans,
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "days_left": left,
        "expired": expired,
        "not_yet_valid": cert.not_valid_before_utc > now,
        "expiring": not expired and left < warning_days,
        "self_signed": is_self_signed(cert),
        "ca": is_ca(cert),
        "key": key_description(cert.public_key()),
        "fingerprint": fingerprint(cert),
    }


def _expiry_warning(what: str, info: dict[str, Any]) -> str | None:
    if info["expired"]:
        return f"{what} expired on {info['not_after'][:10]}"
    if info["expiring"]:
        days = info["days_left"]
        unit = "day" if days == 1 else "days"
        return f"{what} expires in {days} {unit} (on {info['not_after'][:10]})"
    return None


# --- audit ----------------------------------------------------------------------------------


def _record_change(
    data_dir: Path,
    action: str,
    requestor: audit.Participant | None,
    detail: str,
    *,
    target: Path | None = None,
    cert: x509.Certificate | None = None,
    extra: dict[str, str] | None = None,
    outcome: str = "success",
) -> None:
    """Every change of key material (and every refused attempt, outcome minor failure) is a
    Security Alert / Security Configuration message in the audit trail (PS3.15 A.5.3.11): the
    person who asked is the requestor, the changed file the alert subject."""
    subject = target or tls_dir(data_dir)
    details = {"action": action}
    if cert is not None:
        details["fingerprint"] = fingerprint(cert)
        details["subject"] = cert.subject.rfc4514_string()
    details.update(extra or {})
    audit.emit(
        "security-alert",
        event_type="security-configuration",
        outcome=outcome,
        description=f"tls {action}: {detail}",
        participants=[requestor or audit.os_user()],
        objects=[
            audit.ParticipantObject(
                object_id=subject.absolute().as_uri(),
                id_type=audit.URI_TYPE,
                role=audit.ROLE_SECURITY_RESOURCE,
                name=f"TLS {'certificate' if 'fingerprint' in details else 'key material'}",
                details=details,
            )
        ],
    )


def _audited(action: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Record a refused change too: someone tried to change the appliance's trust."""

    def wrap(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return func(*args, **kwargs)
            except CertificateError as exc:
                data_dir = Path(args[0] if args else kwargs["data_dir"])  # type: ignore[arg-type]
                requestor = kwargs.get("requestor")
                _record_change(
                    data_dir,
                    action,
                    requestor if isinstance(requestor, audit.Participant) else None,
                    f"refused: {exc}",
                    outcome="minor",
                )
                raise

        return inner

    return wrap


# --- operations ---------------------------------------------------------------------------------


@_audited("generate")
def generate(
    data_dir: Path,
    *,
    cn: str,
    sans: list[str],
    days: int = DEFAULT_DAYS,
    rsa_bits: int | None = None,
    passphrase: bytes | None = None,
    force: bool = False,
    requestor: audit.Participant | None = None,
) -> dict[str, Any]:
    """A new key and a self-signed certificate for it; the old chain and CSR are removed (they
    belong to the old key). Refused when a key exists, unless ``force``."""
    if not 1 <= days <= MAX_DAYS:
        raise CertificateError(f"validity {days} days: use 1..{MAX_DAYS}")
    subject_sans = list(sans)
    _subject(cn)
    _san_extension(subject_sans)  # refuse a bad name before a key is made
    with _locked(data_dir) as folder:
        if (folder / KEY_FILE).exists() and not force:
            raise CertificateError(
                f"{folder / KEY_FILE} exists: --force replaces the key and its certificate"
            )
        key = _new_key(rsa_bits)
        cert = _self_signed(key, cn, subject_sans, days)
        _write_key(folder, key, passphrase)
        atomic_write_bytes(folder / CERT_FILE, _pem(cert), mode=PUBLIC_MODE)
        _remove(folder / CHAIN_FILE)
        _remove(folder / CSR_FILE)
    info = certificate_info(cert)
    _record_change(
        data_dir,
        "generate",
        requestor,
        f"new {key_description(key)} key and self-signed certificate {info['subject']}, "
        f"SHA-256 {info['fingerprint']}, valid to {info['not_after'][:10]}",
        target=tls_dir(data_dir) / CERT_FILE,
        cert=cert,
    )
    return info


@_audited("csr")
def make_csr(
    data_dir: Path,
    *,
    cn: str,
    sans: list[str],
    rsa_bits: int | None = None,
    passphrase: bytes | None = None,
    requestor: audit.Participant | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """A certificate signing request for DATA/tls/key.pem (made first when there is none),
    kept as DATA/tls/csr.pem. Returns the PEM and what it asks for."""
    _subject(cn)
    extension = _san_extension(list(sans))
    with _locked(data_dir) as folder:
        new_key = not (folder / KEY_FILE).exists()
        if new_key:
            key = _new_key(rsa_bits)
            _write_key(folder, key, passphrase)
        else:
            if rsa_bits is not None or passphrase is not None:
                raise CertificateError(
                    f"{folder / KEY_FILE} exists and the request is made for it: the key type "
                    "and passphrase apply to a new key only (tls generate --force makes one)"
                )
            key = load_private_key(data_dir)
        builder = x509.CertificateSigningRequestBuilder().subject_name(_subject(cn))
        if extension is not None:
            builder = builder.add_extension(extension, critical=False)
        builder = builder.add_extension(_key_usage(key), critical=True).add_extension(
            _EKU, critical=False
        )
        csr = builder.sign(key, hashes.SHA256())
        pem = csr.public_bytes(serialization.Encoding.PEM)
        atomic_write_bytes(folder / CSR_FILE, pem, mode=PUBLIC_MODE)
    info = {
        "subject": csr.subject.rfc4514_string(),
        "sans": [san_text(name) for name in extension or []],
        "key": key_description(key),
        "new_key": new_key,
        "path": str(folder / CSR_FILE),
    }
    _record_change(
        data_dir,
        "csr",
        requestor,
        f"certificate signing request {info['subject']} for "
        f"{'a new' if new_key else 'the existing'} {info['key']} key",
        target=tls_dir(data_dir) / (KEY_FILE if new_key else CSR_FILE),
    )
    return pem, info


def _order_chain(leaf: x509.Certificate, extra: list[x509.Certificate]) -> list[x509.Certificate]:
    """The intermediates from the leaf up, whatever order they came in; a certificate that
    signs nothing on the path is refused (a wrong or foreign file)."""
    pool: dict[str, x509.Certificate] = {}
    for cert in extra:
        if fingerprint(cert) != fingerprint(leaf):
            pool.setdefault(fingerprint(cert), cert)
    ordered: list[x509.Certificate] = []
    current = leaf
    while pool and not (ordered and is_self_signed(current)):
        issuer = next((c for c in pool.values() if _directly_issued(current, c)), None)
        if issuer is None:
            break
        ordered.append(issuer)
        del pool[fingerprint(issuer)]
        current = issuer
    if pool:
        names = "; ".join(c.subject.rfc4514_string() for c in pool.values())
        last = current.subject.rfc4514_string()
        raise CertificateError(
            f"the chain does not fit: {names} did not sign {last} or any certificate above it"
        )
    for cert in ordered:
        if not is_ca(cert):
            raise CertificateError(
                f"{cert.subject.rfc4514_string()} in the chain is not a CA certificate"
            )
    return ordered


@_audited("import-cert")
def import_cert(
    data_dir: Path,
    cert_data: bytes,
    chain_data: bytes | None = None,
    *,
    source: str = "certificate",
    chain_source: str = "chain",
    warning_days: int = DEFAULT_WARNING_DAYS,
    requestor: audit.Participant | None = None,
) -> dict[str, Any]:
    """Install the certificate a CA issued for DATA/tls/key.pem, with its intermediates (in the
    certificate file after the leaf, or in a chain file, in any order)."""
    certs = load_certificates(cert_data, source)
    leaf, extra = certs[0], certs[1:]
    if chain_data is not None:
        extra += load_certificates(chain_data, chain_source)
    info = certificate_info(leaf, warning_days)
    if info["expired"]:
        raise CertificateError(f"{info['subject']} expired on {info['not_after'][:10]}")
    chain = _order_chain(leaf, extra)
    with _locked(data_dir) as folder:
        key = load_private_key(data_dir)
        if not _same_public_key(key, leaf):
            raise CertificateError(
                f"{info['subject']} was issued for another key, not {folder / KEY_FILE} "
                f"(the request for this key is {folder / CSR_FILE})"
            )
        atomic_write_bytes(folder / CERT_FILE, _pem(leaf), mode=PUBLIC_MODE)
        if chain:
            atomic_write_bytes(folder / CHAIN_FILE, _pem(*chain), mode=PUBLIC_MODE)
        else:
            _remove(folder / CHAIN_FILE)
    info["chain"] = [certificate_info(cert, warning_days) for cert in chain]
    info["warnings"] = [
        warning
        for what, item in [("the certificate", info)]
        + [(f"chain certificate {c['subject']}", c) for c in info["chain"]]
        if (warning := _expiry_warning(what, item))
    ]
    if info["not_yet_valid"]:
        info["warnings"].append(f"the certificate is not valid before {info['not_before']}")
    _record_change(
        data_dir,
        "import-cert",
        requestor,
        f"certificate {info['subject']} issued by {info['issuer']}, SHA-256 "
        f"{info['fingerprint']}, valid to {info['not_after'][:10]}, "
        f"{len(chain)} chain certificate(s)",
        target=tls_dir(data_dir) / CERT_FILE,
        cert=leaf,
    )
    return info


def trusted_cas(data_dir: Path, warning_days: int = DEFAULT_WARNING_DAYS) -> list[dict[str, Any]]:
    """The trusted CA files, by name; one that cannot be read says so in ``error``."""
    folder = tls_dir(data_dir) / TRUSTED_FOLDER
    entries = []
    if not folder.is_dir():
        return []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        entry: dict[str, Any] = {"name": path.name}
        try:
            certs = load_certificates(path.read_bytes(), path.name)
        except (CertificateError, OSError) as exc:
            entry["error"] = str(exc)
        else:
            entry.update(certificate_info(certs[0], warning_days))
            if len(certs) > 1:
                entry["more"] = len(certs) - 1
        entries.append(entry)
    return entries


@_audited("trust")
def trust(
    data_dir: Path,
    data: bytes,
    *,
    source: str = "CA certificate",
    requestor: audit.Participant | None = None,
) -> list[dict[str, Any]]:
    """Add each CA certificate of a file (PEM bundle or DER) to DATA/tls/trusted.

    A CA certificate or a self-signed one (a peer's own certificate, pinned) is accepted; an
    expired one or a leaf issued by someone else (nothing would chain to it) is refused."""
    certs = load_certificates(data, source)
    for cert in certs:
        subject = cert.subject.rfc4514_string()
        if not (is_ca(cert) or is_self_signed(cert)):
            raise CertificateError(
                f"{subject} is neither a CA certificate nor self-signed: trust the CA that "
                f"issued it ({cert.issuer.rfc4514_string()})"
            )
        if cert.not_valid_after_utc <= _now():
            raise CertificateError(
                f"{subject} expired on {cert.not_valid_after_utc.date().isoformat()}"
            )
    results: list[tuple[x509.Certificate, dict[str, Any]]] = []
    with _locked(data_dir) as folder:
        trusted = folder / TRUSTED_FOLDER
        known = {entry.get("fingerprint") for entry in trusted_cas(data_dir)}
        for cert in certs:
            info = certificate_info(cert)
            info["name"] = trusted_file_name(cert)
            if info["fingerprint"] in known:
                info["status"] = "already trusted"
            else:
                atomic_write_bytes(trusted / info["name"], _pem(cert), mode=PUBLIC_MODE)
                known.add(info["fingerprint"])
                info["status"] = "added"
            results.append((cert, info))
    for cert, info in results:
        if info["status"] == "added":
            _record_change(
                data_dir,
                "trust",
                requestor,
                f"trusted CA {info['subject']} added as {info['name']}, SHA-256 "
                f"{info['fingerprint']}",
                target=folder / TRUSTED_FOLDER / info["name"],
                cert=cert,
            )
    return [info for _, info in results]


def _normalize_hex(text: str) -> str:
    return text.replace(":", "").replace(" ", "").lower()


@_audited("untrust")
def untrust(
    data_dir: Path, ref: str, *, requestor: audit.Participant | None = None
) -> dict[str, Any]:
    """Remove one trusted CA, named by its file name (with or without .pem), its common name,
    or its SHA-256 fingerprint (8 hex digits at least, colons allowed)."""
    ref = ref.strip()
    if not ref:
        raise CertificateError("name the CA to remove: its file name, common name or fingerprint")
    with _locked(data_dir) as folder:
        entries = trusted_cas(data_dir)
        by_name = [e for e in entries if ref in (e["name"], e["name"].rsplit(".", 1)[0])]
        hex_ref = _normalize_hex(ref)
        by_fingerprint = (
            [e for e in entries if e.get("fingerprint", "").startswith(hex_ref)]
            if len(hex_ref) >= 8 and all(c in "0123456789abcdef" for c in hex_ref)
            else []
        )
        by_cn = [e for e in entries if e.get("cn", "").casefold() == ref.casefold()]
        matches = by_name or by_fingerprint or by_cn
        if not matches:
            raise CertificateError(f"no trusted CA matches {ref!r} (tls show lists them)")
        if len(matches) > 1:
            names = ", ".join(e["name"] for e in matches)
            raise CertificateError(f"{ref!r} matches {len(matches)} trusted CAs: {names}")
        entry = matches[0]
        _remove(folder / TRUSTED_FOLDER / entry["name"])
    _record_change(
        data_dir,
        "untrust",
        requestor,
        f"trusted CA {entry.get('subject', entry['name'])} removed ({entry['name']}"
        + (f", SHA-256 {entry['fingerprint']})" if "fingerprint" in entry else ")"),
        target=folder / TRUSTED_FOLDER / entry["name"],
        extra={key: entry[key] for key in ("fingerprint", "subject") if key in entry},
    )
    return entry


def _crls(folder: Path) -> list[dict[str, Any]]:
    crl_dir = folder / CRL_FOLDER
    if not crl_dir.is_dir():
        return []
    entries = []
    for path in sorted(crl_dir.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        entry: dict[str, Any] = {"name": path.name}
        try:
            data = path.read_bytes()
            crl = (
                x509.load_pem_x509_crl(data)
                if b"-----BEGIN" in data
                else x509.load_der_x509_crl(data)
            )
        except (ValueError, OSError) as exc:
            entry["error"] = f"not a readable CRL ({exc})"
        else:
            next_update = crl.next_update_utc
            entry.update(
                issuer=crl.issuer.rfc4514_string(),
                revoked=len(crl),
                next_update=next_update.isoformat() if next_update else None,
                stale=bool(next_update and next_update < _now()),
            )
        entries.append(entry)
    return entries


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None


def show(data_dir: Path, warning_days: int = DEFAULT_WARNING_DAYS) -> dict[str, Any]:
    """Everything about DATA/tls: key, certificate, chain, trusted CAs, CRLs, the last CSR, and
    the warnings an operator must see (expiry within ``warning_days``, loose modes, a
    certificate for another key)."""
    folder = tls_dir(data_dir)
    warnings: list[str] = []
    result: dict[str, Any] = {
        "folder": str(folder),
        "warning_days": warning_days,
        "key": None,
        "certificate": None,
        "chain": [],
        "trusted": trusted_cas(data_dir, warning_days),
        "crls": _crls(folder),
        "csr": None,
        "warnings": warnings,
    }
    folder_mode = _mode(folder)
    if folder_mode is not None and folder_mode & 0o077:
        warnings.append(f"{folder} is mode {folder_mode:04o}: others may read it (want 0700)")

    key: PrivateKey | None = None
    key_mode = _mode(folder / KEY_FILE)
    if key_mode is not None:
        pem = (folder / KEY_FILE).read_bytes()
        key_entry: dict[str, Any] = {
            "path": str(folder / KEY_FILE),
            "mode": f"{key_mode:04o}",
            "encrypted": _is_encrypted(pem),
            "passphrase_file": (folder / PASSPHRASE_FILE).exists(),
        }
        result["key"] = key_entry
        if key_mode & 0o077:
            warnings.append(f"{folder / KEY_FILE} is mode {key_mode:04o} (want 0600)")
        try:
            key = load_private_key(data_dir)
        except CertificateError as exc:
            key_entry["error"] = str(exc)
            warnings.append(str(exc))
        else:
            key_entry["type"] = key_description(key)

    cert_path = folder / CERT_FILE
    if cert_path.exists():
        try:
            cert = load_certificates(cert_path.read_bytes(), str(cert_path))[0]
        except CertificateError as exc:
            warnings.append(str(exc))
        else:
            info = certificate_info(cert, warning_days)
            info["matches_key"] = key is not None and _same_public_key(key, cert)
            result["certificate"] = info
            if warning := _expiry_warning("the certificate", info):
                warnings.append(warning)
            if key is not None and not info["matches_key"]:
                warnings.append(f"{cert_path} was issued for another key, not {folder / KEY_FILE}")
    if key_mode is None:
        warnings.append("no key: TLS is off (tls generate or tls csr makes one)")
    elif result["certificate"] is None:
        warnings.append("no certificate: TLS is off until one is imported (tls import-cert)")

    chain_path = folder / CHAIN_FILE
    if chain_path.exists():
        try:
            chain = load_certificates(chain_path.read_bytes(), str(chain_path))
        except CertificateError as exc:
            warnings.append(str(exc))
        else:
            for cert in chain:
                info = certificate_info(cert, warning_days)
                result["chain"].append(info)
                if warning := _expiry_warning(f"chain certificate {info['subject']}", info):
                    warnings.append(warning)
    for entry in result["trusted"]:
        if "error" in entry:
            warnings.append(f"trusted/{entry['name']}: {entry['error']}")
        elif warning := _expiry_warning(f"trusted CA {entry['name']}", entry):
            warnings.append(warning)
    for entry in result["crls"]:
        if "error" in entry:
            warnings.append(f"crl/{entry['name']}: {entry['error']}")
        elif entry["stale"]:
            warnings.append(f"crl/{entry['name']} is past its next update ({entry['next_update']})")

    csr_path = folder / CSR_FILE
    if csr_path.exists():
        try:
            csr = x509.load_pem_x509_csr(csr_path.read_bytes())
            try:
                san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                csr_sans = [san_text(name) for name in san]
            except x509.ExtensionNotFound:
                csr_sans = []
            result["csr"] = {
                "path": str(csr_path),
                "subject": csr.subject.rfc4514_string(),
                "sans": csr_sans,
            }
        except ValueError as exc:
            warnings.append(f"{csr_path}: not a readable request ({exc})")
    return result


def format_show(info: dict[str, Any]) -> str:
    """``tls show`` as text: one block per item, warnings last."""
    lines: list[str] = []
    key = info["key"]
    if key is None:
        lines.append("key:          none")
    else:
        kind = key.get("type", "unreadable")
        extra = ", encrypted (passphrase file)" if key["encrypted"] else ""
        lines.append(f"key:          {kind}{extra}, mode {key['mode']}")
    cert = info["certificate"]
    if cert is None:
        lines.append("certificate:  none")
    else:
        lines += _cert_lines(cert, "certificate:  ")
        if cert["self_signed"]:
            lines.append("              self-signed")
    for item in info["chain"]:
        lines += _cert_lines(item, "chain:        ")
    if info["csr"]:
        sans = ", ".join(info["csr"]["sans"]) or "-"
        lines.append(f"request:      {info['csr']['subject']} ({sans}) in {info['csr']['path']}")
    if info["trusted"]:
        lines.append("trusted CAs:")
        for entry in info["trusted"]:
            if "error" in entry:
                lines.append(f"  {entry['name']}: {entry['error']}")
            else:
                lines.append(
                    f"  {entry['name']}  {entry['subject']}  until {entry['not_after'][:10]} "
                    f"({entry['days_left']} days)"
                )
    else:
        lines.append("trusted CAs:  none")
    for entry in info["crls"]:
        if "error" not in entry:
            lines.append(
                f"CRL:          {entry['name']}  {entry['issuer']}  {entry['revoked']} revoked"
            )
    for warning in info["warnings"]:
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)


def _cert_lines(cert: dict[str, Any], label: str) -> list[str]:
    pad = " " * len(label)
    lines = [
        f"{label}{cert['subject']}",
        f"{pad}issuer {cert['issuer']}",
    ]
    if cert["sans"]:
        lines.append(f"{pad}names {', '.join(cert['sans'])}")
    lines.append(
        f"{pad}valid until {cert['not_after'][:19].replace('T', ' ')} UTC "
        f"({cert['days_left']} days left)"
    )
    lines.append(f"{pad}SHA-256 {cert['fingerprint']}")
    return lines
