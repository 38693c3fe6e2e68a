"""Test certificate authority: CAs, leaf certificates and PEM files made with `cryptography`.

Every TLS, certificate, signature and audit test builds its own key material here, so no test
depends on files checked into the repository or on the clock of the machine that made them.
EC P-256 keys by default (fast to generate); `rsa_bits` gives RSA keys where a peer or a
profile needs them (DICOM digital signature profiles are RSA).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

DEFAULT_SANS = ("DNS:localhost", "IP:127.0.0.1")


@dataclass
class Issued:
    """A key and its certificate; `issuer` is the CA that signed it (None for a root)."""

    key: PrivateKey
    cert: x509.Certificate
    issuer: Issued | None = None

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, passphrase: bytes | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    @property
    def subject_cn(self) -> str:
        return str(self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _new_key(rsa_bits: int | None) -> PrivateKey:
    if rsa_bits:
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    return ec.generate_private_key(ec.SECP256R1())


def _validity(expired: bool, days: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    if expired:
        # Expired yesterday, valid for a while before: a real "expired", not "not yet valid".
        return now - dt.timedelta(days=days + 1), now - dt.timedelta(days=1)
    # A little backdating so a clock a minute behind does not make the cert "not yet valid".
    return now - dt.timedelta(hours=1), now + dt.timedelta(days=days)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Appliance Test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _parse_sans(sans: tuple[str, ...] | list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for san in sans:
        kind, _, value = san.partition(":")
        if kind.upper() == "IP":
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        elif kind.upper() == "DNS":
            names.append(x509.DNSName(value))
        else:
            raise ValueError(f"SAN {san!r}: use DNS:name or IP:address")
    return names


def make_ca(
    cn: str = "Test Root CA",
    *,
    issuer: Issued | None = None,
    expired: bool = False,
    days: int = 3650,
    rsa_bits: int | None = None,
) -> Issued:
    """A CA certificate: self-signed root, or an intermediate when `issuer` is given."""
    key = _new_key(rsa_bits)
    not_before, not_after = _validity(expired, days)
    signer_key = issuer.key if issuer else key
    issuer_name = issuer.cert.subject if issuer else _name(cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    cert = builder.sign(signer_key, hashes.SHA256())
    return Issued(key=key, cert=cert, issuer=issuer)


def make_cert(
    ca: Issued,
    cn: str,
    sans: tuple[str, ...] | list[str] = DEFAULT_SANS,
    *,
    expired: bool = False,
    client: bool = True,
    server: bool = True,
    days: int = 365,
    rsa_bits: int | None = None,
) -> Issued:
    """A leaf certificate signed by `ca`, for TLS client and/or server use.

    Default SANs cover loopback (localhost and 127.0.0.1) so hostname checks pass in tests.
    """
    key = _new_key(rsa_bits)
    not_before, not_after = _validity(expired, days)
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=rsa_bits is not None,
                # RSA key exchange suites (legacy profile) need key encipherment.
                key_encipherment=rsa_bits is not None,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(_parse_sans(sans)), False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return Issued(key=key, cert=cert, issuer=ca)


def make_crl(ca: Issued, revoked: list[Issued] | None = None) -> x509.CertificateRevocationList:
    """A CRL from `ca` listing `revoked` certificates (empty list: a valid, empty CRL)."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(hours=1))
        .next_update(now + dt.timedelta(days=30))
    )
    for item in revoked or []:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(item.cert.serial_number)
            .revocation_date(now - dt.timedelta(minutes=5))
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256())


def write_pem(
    path: Path,
    *items: Issued | x509.Certificate | x509.CertificateRevocationList | bytes,
    key: bool = False,
    passphrase: bytes | None = None,
) -> Path:
    """Write certificates (or with key=True the first item's private key) as PEM to `path`.

    Several certificates are concatenated (a chain file). Key files get mode 0600 like the real
    key store; other files 0644.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks: list[bytes] = []
    for item in items:
        if isinstance(item, bytes):
            chunks.append(item)
        elif isinstance(item, Issued):
            chunks.append(item.key_pem(passphrase) if key else item.cert_pem)
        elif isinstance(item, x509.CertificateRevocationList):
            chunks.append(item.public_bytes(serialization.Encoding.PEM))
        else:
            chunks.append(item.public_bytes(serialization.Encoding.PEM))
    path.write_bytes(b"".join(chunks))
    os.chmod(path, 0o600 if key else 0o644)
    return path


def install_identity(
    data_dir: Path,
    leaf: Issued,
    trusted: list[Issued] | tuple[Issued, ...] = (),
    *,
    chain: list[Issued] | tuple[Issued, ...] = (),
    crls: list[x509.CertificateRevocationList] | tuple = (),
    passphrase: bytes | None = None,
) -> Path:
    """Lay out DATA/tls/ as the appliance expects: key.pem, cert.pem, chain.pem, trusted/, crl/.

    Written directly (not through the `tls` CLI) so transport tests do not depend on it.
    """
    tls_dir = data_dir / "tls"
    tls_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(tls_dir, 0o700)
    write_pem(tls_dir / "key.pem", leaf, key=True, passphrase=passphrase)
    write_pem(tls_dir / "cert.pem", leaf)
    if chain:
        write_pem(tls_dir / "chain.pem", *chain)
    if passphrase:
        (tls_dir / "passphrase").write_bytes(passphrase)
        os.chmod(tls_dir / "passphrase", 0o600)
    trusted_dir = tls_dir / "trusted"
    trusted_dir.mkdir(exist_ok=True)
    for ca in trusted:
        fingerprint = ca.cert.fingerprint(hashes.SHA256()).hex()[:8]
        safe = "".join(c if c.isalnum() else "_" for c in ca.subject_cn)
        write_pem(trusted_dir / f"{safe}-{fingerprint}.pem", ca)
    if crls:
        crl_dir = tls_dir / "crl"
        crl_dir.mkdir(exist_ok=True)
        for index, crl in enumerate(crls):
            write_pem(crl_dir / f"crl{index}.pem", crl)
    return tls_dir


@dataclass
class PeerFiles:
    """PEM files for a DCMTK peer: its key, its certificate and the CA file it trusts."""

    key: Path
    cert: Path
    ca: Path

    def dcmtk_args(self, *, trust: bool = True) -> list[str]:
        """`+tls key cert` (PEM format is DCMTK's default) plus `+cf ca` to trust our CA."""
        args = ["+tls", str(self.key), str(self.cert)]
        if trust:
            args += ["+cf", str(self.ca)]
        return args


def peer_files(folder: Path, leaf: Issued, trusted: Issued, name: str = "peer") -> PeerFiles:
    """Write a peer's key, certificate and trusted CA to `folder` for DCMTK `+tls`/`+cf`."""
    return PeerFiles(
        key=write_pem(folder / f"{name}-key.pem", leaf, key=True),
        cert=write_pem(folder / f"{name}-cert.pem", leaf),
        ca=write_pem(folder / f"{name}-ca.pem", trusted),
    )
