"""Certificate management: `dicom-appliance tls generate|csr|import-cert|trust|untrust|show` and
the `tls.*` control API ops.

Key material is made by the tests (tests/tls_helpers.py) and every result is checked with the
`openssl` command line tool as an independent reader: certificates (`openssl x509`), requests
(`openssl req -verify`), keys (`openssl pkey`) and chains (`openssl verify`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from appliance import audit, certificates, cli
from appliance.certificates import CertificateError
from appliance.control import control_socket_path
from appliance.control_client import ApiError, ControlClient
from tests.peers import appliance_cmd, dcmtk, free_port, run, wait_for_port
from tests.tls_helpers import Issued, make_ca, make_cert, peer_files, write_pem

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")


def tls_process(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`dicom-appliance tls ...` as its own process (the installed entry point's path)."""
    return run(appliance_cmd("tls", *args, "--data-dir", str(data_dir)))


def tls(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """The same command line run in this process: most tests make many calls, and a process
    start (imports of pydicom and pynetdicom) costs most of a second."""
    argv = ["tls", *args, "--data-dir", str(data_dir)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def show_json(data_dir: Path) -> dict[str, Any]:
    result = tls(data_dir, "show", "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def openssl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    assert OPENSSL is not None
    result = subprocess.run([OPENSSL, *args], capture_output=True, text=True, timeout=30)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sign_csr(ca: Issued, csr_pem: bytes, *, days: int = 365) -> x509.Certificate:
    """What a CA does with our request: its subject, key and names, the CA as issuer."""
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca.cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    for extension in csr.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(ca.key, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def audit_messages(data_dir: Path) -> list[ET.Element]:
    folder = data_dir / "audit"
    lines = [
        line
        for path in sorted(folder.glob("audit-*.log"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    return [ET.fromstring(line) for line in lines]


def security_configuration(messages: list[ET.Element]) -> list[ET.Element]:
    """Security Alert / Security Configuration messages about key material (settings changes
    are audited the same way: left out here)."""
    return [
        m
        for m in messages
        if m.find("EventIdentification/EventID").get("csd-code") == "110113"
        and description(m).startswith("tls ")
        and any(
            t.get("csd-code") == "110129" for t in m.findall("EventIdentification/EventTypeCode")
        )
    ]


def description(message: ET.Element) -> str:
    return message.findtext("EventIdentification/EventOutcomeDescription") or ""


def outcome(message: ET.Element) -> str:
    return message.find("EventIdentification").get("EventOutcomeIndicator")


# --- generate and show ---------------------------------------------------------------------------


@needs_openssl
def test_generate_makes_a_private_key_and_a_self_signed_certificate(data_dir: Path) -> None:
    result = tls_process(
        data_dir, "generate", "--cn", "CT SCANNER 1", "--san", "DNS:ct1.example.org",
        "--san", "IP:192.0.2.7", "--san", "::1", "--days", "400",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "EC P-256" in result.stdout and "CN=CT SCANNER 1" in result.stdout
    folder = data_dir / "tls"
    assert mode(folder) == 0o700 and mode(folder / "trusted") == 0o700
    assert mode(folder / "key.pem") == 0o600
    assert not (folder / "passphrase").exists()
    assert not list(folder.glob(".*.part"))

    text = openssl("x509", "-in", str(folder / "cert.pem"), "-noout", "-text").stdout
    assert "Subject: CN = CT SCANNER 1" in text and "Issuer: CN = CT SCANNER 1" in text
    assert "DNS:ct1.example.org" in text and "IP Address:192.0.2.7" in text
    assert "IP Address:0:0:0:0:0:0:0:1" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "CA:FALSE" in text and "ecdsa-with-SHA256" in text
    key_text = openssl("pkey", "-in", str(folder / "key.pem"), "-noout", "-text").stdout
    assert "256 bit" in key_text and "P-256" in key_text
    assert (folder / "key.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    # A self-signed end-entity certificate works as its own trust anchor at a peer.
    openssl("verify", "-CAfile", str(folder / "cert.pem"), str(folder / "cert.pem"))

    info = show_json(data_dir)
    cert = info["certificate"]
    assert cert["subject"] == "CN=CT SCANNER 1" and cert["self_signed"] and cert["matches_key"]
    assert cert["sans"] == ["DNS:ct1.example.org", "IP:192.0.2.7", "IP:::1"]
    assert cert["days_left"] == 399 and not cert["expiring"]
    assert info["key"]["type"] == "EC P-256" and info["key"]["mode"] == "0600"
    assert info["key"]["encrypted"] is False
    assert info["warnings"] == []

    text = tls_process(data_dir, "show").stdout
    assert "CN=CT SCANNER 1" in text and "(399 days left)" in text and "WARNING" not in text


@needs_openssl
def test_generate_defaults_and_replacing_needs_force(data_dir: Path) -> None:
    result = run(appliance_cmd("config", "set", "ae_title", "MRI_3T", "--data-dir", str(data_dir)))
    assert result.returncode == 0, result.stderr
    result = tls(data_dir, "generate")
    assert result.returncode == 0, result.stderr
    info = show_json(data_dir)
    first = info["certificate"]
    # Default subject: the AE title; default names: this host's.
    assert first["subject"] == "CN=MRI_3T"
    assert f"DNS:{socket.gethostname()}" in first["sans"]
    assert first["days_left"] == certificates.DEFAULT_DAYS - 1

    key_before = (data_dir / "tls" / "key.pem").read_bytes()
    again = tls(data_dir, "generate")
    assert again.returncode == 1 and "--force" in again.stderr
    assert (data_dir / "tls" / "key.pem").read_bytes() == key_before

    (data_dir / "tls" / "chain.pem").write_bytes(pem(make_ca().cert))  # an old chain
    forced = tls(data_dir, "generate", "--force", "--rsa", "2048", "--san", "DNS:mri")
    assert forced.returncode == 0, forced.stderr
    info = show_json(data_dir)
    assert info["certificate"]["fingerprint"] != first["fingerprint"]
    assert info["key"]["type"] == "RSA 2048" and info["certificate"]["key"] == "RSA 2048"
    assert info["chain"] == [] and not (data_dir / "tls" / "chain.pem").exists()
    text = openssl("x509", "-in", str(data_dir / "tls" / "cert.pem"), "-noout", "-text").stdout
    # RSA key exchange (legacy profile) needs key encipherment.
    assert "Digital Signature, Key Encipherment" in text and "sha256WithRSAEncryption" in text
    openssl("pkey", "-in", str(data_dir / "tls" / "key.pem"), "-check", "-noout")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--san", "DNS:bad_name!"], "not a host name"),
        (["--san", "IP:300.1.1.1"], "not an IPv4 or IPv6 address"),
        (["--san", "URI:http://x"], "use DNS:name or IP:address"),
        (["--cn", " "], "common name"),
        (["--days", "0"], "validity 0 days"),
    ],
)
def test_bad_generate_arguments_are_refused_before_a_key_is_made(
    data_dir: Path, args: list[str], message: str
) -> None:
    result = tls(data_dir, "generate", *args)
    assert result.returncode == 1 and message in result.stderr
    assert not (data_dir / "tls" / "key.pem").exists()


def test_expiry_warning_follows_the_setting(data_dir: Path) -> None:
    assert tls(data_dir, "generate", "--days", "20", "--san", "DNS:a").returncode == 0
    info = show_json(data_dir)
    assert info["certificate"]["days_left"] == 19 and info["certificate"]["expiring"]
    assert info["warning_days"] == 30
    assert any("the certificate expires in 19 days" in w for w in info["warnings"])
    text = tls(data_dir, "show").stdout
    assert "WARNING: the certificate expires in 19 days (on " in text

    result = run(
        appliance_cmd("config", "set", "tls_expiry_warning_days", "10", "--data-dir", str(data_dir))
    )
    assert result.returncode == 0, result.stderr
    info = show_json(data_dir)
    assert info["warning_days"] == 10 and not info["certificate"]["expiring"]
    assert info["warnings"] == []


def test_show_warns_about_expired_material_and_loose_modes(data_dir: Path) -> None:
    ca = make_ca()
    expired = make_cert(ca, "old", expired=True)
    folder = data_dir / "tls"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    write_pem(folder / "key.pem", expired, key=True)
    (folder / "key.pem").chmod(0o644)
    write_pem(folder / "cert.pem", expired)
    expiring_ca = make_ca("Short CA", days=5)
    write_pem(folder / "trusted" / certificates.trusted_file_name(expiring_ca.cert), expiring_ca)
    (folder / "trusted" / "junk.pem").write_text("not a certificate\n")
    info = show_json(data_dir)
    warnings = "\n".join(info["warnings"])
    assert "the certificate expired on" in warnings
    assert "is mode 0755" in warnings and "is mode 0644 (want 0600)" in warnings
    assert "expires in 4 days" in warnings and "junk.pem" in warnings
    assert info["certificate"]["expired"] is True

    # A change tightens the folder again.
    assert tls(data_dir, "trust", str(write_pem(data_dir / "ca.pem", ca))).returncode == 0
    assert mode(folder) == 0o700 and mode(folder / "trusted") == 0o700


def test_show_without_key_material_says_tls_is_off(data_dir: Path) -> None:
    info = show_json(data_dir)
    assert info["key"] is None and info["certificate"] is None and info["trusted"] == []
    assert any("TLS is off" in w for w in info["warnings"])
    assert not (data_dir / "tls").exists()  # showing creates nothing


# --- certificate signing requests and imported certificates ------------------------------------


@needs_openssl
def test_csr_signed_by_a_ca_then_imported_with_its_chain(data_dir: Path, tmp_path: Path) -> None:
    request = tmp_path / "request.pem"
    result = tls(
        data_dir, "csr", "--cn", "ct1.example.org", "--san", "DNS:ct1.example.org",
        "--san", "IP:192.0.2.7", "--output", str(request),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "a new EC P-256 key" in result.stdout
    folder = data_dir / "tls"
    assert mode(folder / "key.pem") == 0o600 and not (folder / "cert.pem").exists()
    assert request.read_bytes() == (folder / "csr.pem").read_bytes()
    verified = openssl("req", "-in", str(request), "-noout", "-verify", "-text")
    assert "verify OK" in verified.stdout + verified.stderr
    assert "Subject: CN = ct1.example.org" in verified.stdout
    assert "DNS:ct1.example.org, IP Address:192.0.2.7" in verified.stdout
    info = show_json(data_dir)
    assert info["csr"]["subject"] == "CN=ct1.example.org"
    assert any("no certificate" in w for w in info["warnings"])

    # The request is made for the existing key from now on; a stdout copy is the same request.
    again = tls(data_dir, "csr", "--cn", "ct1.example.org", "--output", "-")
    assert again.returncode == 0 and again.stdout.startswith("-----BEGIN CERTIFICATE REQUEST")
    assert (
        x509.load_pem_x509_csr(again.stdout.encode()).public_key()
        == x509.load_pem_x509_csr(request.read_bytes()).public_key()
    )
    refused = tls(data_dir, "csr", "--rsa", "2048", "--output", str(tmp_path / "x.pem"))
    assert refused.returncode == 1 and "new key only" in refused.stderr

    root = make_ca("Hospital Root CA")
    intermediate = make_ca("Hospital Issuing CA", issuer=root)
    issued = sign_csr(intermediate, request.read_bytes())
    cert_file = tmp_path / "issued.pem"
    cert_file.write_bytes(pem(issued))
    chain_file = write_pem(tmp_path / "chain.pem", intermediate)
    result = tls(data_dir, "import-cert", str(cert_file), "--chain", str(chain_file))
    assert result.returncode == 0, result.stderr
    assert "certificate installed" in result.stdout and "Hospital Issuing CA" in result.stdout

    info = show_json(data_dir)
    assert info["certificate"]["issuer"] == "CN=Hospital Issuing CA,O=Appliance Test"
    assert info["certificate"]["matches_key"] and not info["certificate"]["self_signed"]
    assert [c["cn"] for c in info["chain"]] == ["Hospital Issuing CA"]
    assert info["warnings"] == []
    root_file = write_pem(tmp_path / "root.pem", root)
    openssl(
        "verify", "-CAfile", str(root_file), "-untrusted", str(folder / "chain.pem"),
        str(folder / "cert.pem"),
    )  # fmt: skip
    # The key in the store signs what the certificate's public key verifies.
    pub = openssl("x509", "-in", str(folder / "cert.pem"), "-noout", "-pubkey").stdout
    assert pub == openssl("pkey", "-in", str(folder / "key.pem"), "-pubout").stdout


def test_import_orders_the_chain_from_one_bundle(data_dir: Path, tmp_path: Path) -> None:
    assert tls(data_dir, "csr", "--cn", "ct1", "--output", str(tmp_path / "r.pem")).returncode == 0
    root = make_ca("Root")
    middle = make_ca("Middle", issuer=root)
    issuing = make_ca("Issuing", issuer=middle)
    issued = sign_csr(issuing, (tmp_path / "r.pem").read_bytes())
    # Leaf first, the rest scrambled, the root included: stored leaf-side first.
    bundle = tmp_path / "fullchain.pem"
    bundle.write_bytes(pem(issued, root.cert, issuing.cert, middle.cert))
    result = tls(data_dir, "import-cert", str(bundle), "--json")
    assert result.returncode == 0, result.stderr
    assert [c["cn"] for c in json.loads(result.stdout)["chain"]] == ["Issuing", "Middle", "Root"]
    stored = x509.load_pem_x509_certificates((data_dir / "tls" / "chain.pem").read_bytes())
    assert [certificates.common_name(c.subject) for c in stored] == ["Issuing", "Middle", "Root"]
    assert x509.load_pem_x509_certificate((data_dir / "tls" / "cert.pem").read_bytes()) == issued

    # Without a chain the old chain file goes: it belonged to the other certificate.
    reissued = sign_csr(root, (tmp_path / "r.pem").read_bytes())
    (tmp_path / "direct.pem").write_bytes(pem(reissued))
    assert tls(data_dir, "import-cert", str(tmp_path / "direct.pem")).returncode == 0
    assert not (data_dir / "tls" / "chain.pem").exists()


def test_a_certificate_for_another_key_is_refused(data_dir: Path, tmp_path: Path) -> None:
    assert tls(data_dir, "generate", "--san", "DNS:a").returncode == 0
    before = (data_dir / "tls" / "cert.pem").read_bytes()
    ca = make_ca()
    other = make_cert(ca, "someone else")
    result = tls(data_dir, "import-cert", str(write_pem(tmp_path / "other.pem", other)))
    assert result.returncode == 1
    assert "was issued for another key" in result.stderr and "csr.pem" in result.stderr
    assert (data_dir / "tls" / "cert.pem").read_bytes() == before


def test_bad_chains_and_expired_certificates_are_refused(data_dir: Path, tmp_path: Path) -> None:
    assert tls(data_dir, "csr", "--cn", "ct1", "--output", str(tmp_path / "r.pem")).returncode == 0
    csr = (tmp_path / "r.pem").read_bytes()
    root = make_ca("Root")
    issuing = make_ca("Issuing", issuer=root)
    issued = sign_csr(issuing, csr)
    (tmp_path / "issued.pem").write_bytes(pem(issued))
    stranger = write_pem(tmp_path / "stranger.pem", make_ca("Stranger CA"))
    result = tls(data_dir, "import-cert", str(tmp_path / "issued.pem"), "--chain", str(stranger))
    assert result.returncode == 1 and "the chain does not fit" in result.stderr
    assert "Stranger CA" in result.stderr

    # An end-entity certificate cannot be an intermediate.
    fake_issuer = make_cert(root, "Not A CA")
    signed_by_leaf = sign_csr(fake_issuer, csr)
    (tmp_path / "by-leaf.pem").write_bytes(pem(signed_by_leaf, fake_issuer.cert))
    result = tls(data_dir, "import-cert", str(tmp_path / "by-leaf.pem"))
    assert result.returncode == 1 and "is not a CA certificate" in result.stderr

    # Expired: refused whatever the key.
    key = certificates.load_private_key(data_dir)
    now = dt.datetime.now(dt.UTC)
    old = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=ct1"))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(root.key, hashes.SHA256())
    )
    (tmp_path / "old.pem").write_bytes(pem(old))
    result = tls(data_dir, "import-cert", str(tmp_path / "old.pem"))
    assert result.returncode == 1 and "expired on" in result.stderr

    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n")
    result = tls(data_dir, "import-cert", str(tmp_path / "garbage.pem"))
    assert result.returncode == 1 and "not a PEM certificate" in result.stderr
    result = tls(data_dir, "import-cert", str(tmp_path / "missing.pem"))
    assert result.returncode == 1 and "No such file" in result.stderr
    assert not (data_dir / "tls" / "cert.pem").exists()


def test_import_without_a_key_says_how_to_make_one(data_dir: Path, tmp_path: Path) -> None:
    leaf = make_cert(make_ca(), "x")
    result = tls(data_dir, "import-cert", str(write_pem(tmp_path / "x.pem", leaf)))
    assert result.returncode == 1 and "tls generate" in result.stderr


def test_a_der_certificate_is_accepted(data_dir: Path, tmp_path: Path) -> None:
    assert tls(data_dir, "csr", "--cn", "ct1", "--output", str(tmp_path / "r.pem")).returncode == 0
    issued = sign_csr(make_ca(), (tmp_path / "r.pem").read_bytes())
    (tmp_path / "issued.der").write_bytes(issued.public_bytes(serialization.Encoding.DER))
    result = tls(data_dir, "import-cert", str(tmp_path / "issued.der"))
    assert result.returncode == 0, result.stderr
    assert show_json(data_dir)["certificate"]["matches_key"]


# --- passphrase-protected keys --------------------------------------------------------------


@needs_openssl
def test_passphrase_protected_key(data_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("tr0ub4dor & 3\n")
    result = tls(data_dir, "generate", "--san", "DNS:a", "--passphrase-file", str(secret))
    assert result.returncode == 0, result.stderr
    assert "(encrypted)" in result.stdout
    folder = data_dir / "tls"
    key_pem = (folder / "key.pem").read_bytes()
    assert key_pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert mode(folder / "passphrase") == 0o600 and mode(folder / "key.pem") == 0o600
    assert (folder / "passphrase").read_bytes() == b"tr0ub4dor & 3\n"
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(key_pem, password=None)

    # The key loads with the passphrase file (ours, OpenSSL's and Python ssl's readers)...
    key = certificates.load_private_key(data_dir)
    assert certificates.key_description(key) == "EC P-256"
    openssl("pkey", "-in", str(folder / "key.pem"), "-passin", f"file:{secret}", "-noout")
    assert openssl("pkey", "-in", str(folder / "key.pem"), "-passin", "pass:wrong", "-noout",
                   check=False).returncode != 0  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(folder / "cert.pem", folder / "key.pem", password=b"tr0ub4dor & 3")
    info = show_json(data_dir)
    assert info["key"]["encrypted"] and info["key"]["passphrase_file"]
    assert info["key"]["type"] == "EC P-256" and info["warnings"] == []

    # ... and not without it, nor with a wrong one.
    (folder / "passphrase").write_bytes(b"wrong passphrase\n")
    with pytest.raises(CertificateError, match="does not decrypt"):
        certificates.load_private_key(data_dir)
    (folder / "passphrase").unlink()
    with pytest.raises(CertificateError, match="passphrase is missing"):
        certificates.load_private_key(data_dir)
    info = show_json(data_dir)
    assert any("passphrase is missing" in w for w in info["warnings"])

    # A CSR on the encrypted key needs the passphrase too; once restored it works.
    result = tls(data_dir, "csr", "--cn", "x", "--output", str(tmp_path / "r.pem"))
    assert result.returncode == 1 and "passphrase is missing" in result.stderr
    (folder / "passphrase").write_bytes(b"tr0ub4dor & 3\n")
    result = tls(data_dir, "csr", "--cn", "x", "--output", str(tmp_path / "r.pem"))
    assert result.returncode == 0, result.stderr

    # Generating without a passphrase removes the old one with the old key.
    assert tls(data_dir, "generate", "--force", "--san", "DNS:a").returncode == 0
    assert not (folder / "passphrase").exists()
    assert (folder / "key.pem").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_a_short_or_empty_passphrase_file_is_refused(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "short").write_text("abc\n")
    (tmp_path / "empty").write_text("\n")
    for name, message in (("short", "shorter than 8"), ("empty", "is empty"), ("none", "No such")):
        result = tls(data_dir, "generate", "--passphrase-file", str(tmp_path / name))
        assert result.returncode == 1 and message in result.stderr
    assert not (data_dir / "tls" / "key.pem").exists()


# --- trusted CAs --------------------------------------------------------------------------------


def test_trust_and_untrust(data_dir: Path, tmp_path: Path) -> None:
    root = make_ca("Hospital Root CA")
    other = make_ca("Vendor CA")
    result = tls(data_dir, "trust", str(write_pem(tmp_path / "root.pem", root)))
    assert result.returncode == 0, result.stderr
    name = certificates.trusted_file_name(root.cert)
    assert name == f"Hospital_Root_CA-{root.cert.fingerprint(hashes.SHA256()).hex()[:8]}.pem"
    assert f"added: {name}" in result.stdout
    stored = data_dir / "tls" / "trusted" / name
    assert x509.load_pem_x509_certificate(stored.read_bytes()) == root.cert

    again = tls(data_dir, "trust", str(tmp_path / "root.pem"))
    assert again.returncode == 0 and f"already trusted: {name}" in again.stdout

    # A bundle (and a DER file) adds each certificate; a pinned self-signed peer cert is fine.
    intermediate = make_ca("Issuing CA", issuer=root)
    bundle = write_pem(tmp_path / "bundle.pem", other, intermediate)
    result = tls(data_dir, "trust", str(bundle), "--json")
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in json.loads(result.stdout)] == ["added", "added"]
    peer_dir = tmp_path / "peer"
    assert tls(peer_dir, "generate", "--cn", "PEER", "--san", "DNS:peer").returncode == 0
    peer_der = tmp_path / "peer.der"
    peer_der.write_bytes(
        x509.load_pem_x509_certificate((peer_dir / "tls" / "cert.pem").read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
    )
    assert tls(data_dir, "trust", str(peer_der)).returncode == 0
    listed = show_json(data_dir)["trusted"]
    assert sorted(e["cn"] for e in listed) == [
        "Hospital Root CA", "Issuing CA", "PEER", "Vendor CA",
    ]  # fmt: skip

    # Refused: a leaf someone else issued, an expired CA.
    leaf = write_pem(tmp_path / "leaf.pem", make_cert(root, "some peer"))
    result = tls(data_dir, "trust", str(leaf))
    assert result.returncode == 1 and "neither a CA certificate nor self-signed" in result.stderr
    expired = write_pem(tmp_path / "expired.pem", make_ca("Old CA", expired=True))
    result = tls(data_dir, "trust", str(expired))
    assert result.returncode == 1 and "expired on" in result.stderr

    # Untrust by fingerprint (colons allowed), by file name, by common name.
    colons = ":".join(f"{b:02X}" for b in other.cert.fingerprint(hashes.SHA256())[:6])
    result = tls(data_dir, "untrust", colons)
    assert result.returncode == 0 and "Vendor_CA-" in result.stdout
    result = tls(data_dir, "untrust", name.removesuffix(".pem"))
    assert result.returncode == 0 and "Hospital Root CA" in result.stdout
    result = tls(data_dir, "untrust", "issuing ca", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["cn"] == "Issuing CA"
    assert [e["cn"] for e in show_json(data_dir)["trusted"]] == ["PEER"]

    result = tls(data_dir, "untrust", "Vendor CA")
    assert result.returncode == 1 and "no trusted CA matches" in result.stderr


def test_untrust_refuses_an_ambiguous_name(data_dir: Path, tmp_path: Path) -> None:
    first, second = make_ca("Same Name CA"), make_ca("Same Name CA")
    for index, ca in enumerate((first, second)):
        assert tls(data_dir, "trust", str(write_pem(tmp_path / f"{index}.pem", ca))).returncode == 0
    result = tls(data_dir, "untrust", "Same Name CA")
    assert result.returncode == 1 and "matches 2 trusted CAs" in result.stderr
    assert len(list((data_dir / "tls" / "trusted").iterdir())) == 2
    result = tls(data_dir, "untrust", first.cert.fingerprint(hashes.SHA256()).hex())
    assert result.returncode == 0
    remaining = show_json(data_dir)["trusted"]
    assert [e["fingerprint"] for e in remaining] == [certificates.fingerprint(second.cert)]


# --- the result works for TLS ------------------------------------------------------------------


def test_generated_identities_complete_a_mutual_tls_handshake(tmp_path: Path) -> None:
    """Two appliances with self-signed certificates that trust each other's."""
    server_dir, client_dir = tmp_path / "server", tmp_path / "client"
    for folder, cn in ((server_dir, "SERVER"), (client_dir, "CLIENT")):
        result = tls(
            folder, "generate", "--cn", cn, "--san", "DNS:localhost", "--san", "IP:127.0.0.1"
        )
        assert result.returncode == 0, result.stderr
    (tmp_path / "pass").write_text("a long passphrase\n")
    assert tls(client_dir, "generate", "--force", "--rsa", "2048", "--cn", "CLIENT",
               "--passphrase-file", str(tmp_path / "pass")).returncode == 0  # fmt: skip
    assert tls(server_dir, "trust", str(client_dir / "tls" / "cert.pem")).returncode == 0
    assert tls(client_dir, "trust", str(server_dir / "tls" / "cert.pem")).returncode == 0

    def context(folder: Path, purpose: int) -> ssl.SSLContext:
        ctx = ssl.SSLContext(purpose)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        tls_folder = folder / "tls"
        password = None
        if (tls_folder / "passphrase").exists():
            password = (tls_folder / "passphrase").read_bytes().rstrip(b"\n")
        ctx.load_cert_chain(tls_folder / "cert.pem", tls_folder / "key.pem", password=password)
        for path in (tls_folder / "trusted").iterdir():
            ctx.load_verify_locations(path)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    server_ctx = context(server_dir, ssl.PROTOCOL_TLS_SERVER)
    client_ctx = context(client_dir, ssl.PROTOCOL_TLS_CLIENT)
    left, right = socket.socketpair()
    seen: dict[str, Any] = {}

    def serve() -> None:
        with server_ctx.wrap_socket(left, server_side=True) as conn:
            seen["client"] = conn.getpeercert()
            conn.sendall(b"ok")

    thread = threading.Thread(target=serve)
    thread.start()
    with client_ctx.wrap_socket(right, server_hostname="localhost") as conn:
        assert conn.recv(2) == b"ok"
        assert dict(x[0] for x in conn.getpeercert()["subject"])["commonName"] == "SERVER"
    thread.join(10)
    assert dict(x[0] for x in seen["client"]["subject"])["commonName"] == "CLIENT"


# --- audit trail ----------------------------------------------------------------------------------


def test_changes_and_refusals_are_audited(data_dir: Path, tmp_path: Path) -> None:
    ca = make_ca("Audit CA")
    ca_file = write_pem(tmp_path / "ca.pem", ca)
    # Separate processes: each appends to the same month's log.
    assert tls_process(data_dir, "generate", "--san", "DNS:a").returncode == 0
    assert tls_process(data_dir, "generate", "--san", "DNS:a").returncode == 1  # refused
    assert tls_process(data_dir, "trust", str(ca_file)).returncode == 0
    assert tls(data_dir, "trust", str(ca_file)).returncode == 0  # already trusted: no change
    assert tls(data_dir, "untrust", "Audit CA").returncode == 0
    assert tls(data_dir, "show").returncode == 0  # reading is not a change

    messages = audit_messages(data_dir)
    changes = security_configuration(messages)
    assert [description(m).split(":")[0] for m in changes] == [
        "tls generate", "tls generate", "tls trust", "tls untrust",
    ]  # fmt: skip
    assert [outcome(m) for m in changes] == ["0", "4", "0", "0"]
    assert "refused" in description(changes[1]) and "--force" in description(changes[1])
    for message in changes:
        requestor = [
            p for p in message.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true"
        ]
        assert len(requestor) == 1 and requestor[0].get("AlternativeUserID").startswith("uid=")
        obj = message.find("ParticipantObjectIdentification")
        assert obj.get("ParticipantObjectTypeCode") == "2"
        assert obj.get("ParticipantObjectTypeCodeRole") == "13"
        assert obj.find("ParticipantObjectIDTypeCode").get("csd-code") == "12"
        assert obj.get("ParticipantObjectID").startswith(f"file://{data_dir}/tls")
    generated = changes[0].find("ParticipantObjectIdentification")
    assert generated.get("ParticipantObjectID").endswith("/tls/cert.pem")
    fingerprint = show_json(data_dir)["certificate"]["fingerprint"]
    assert fingerprint in description(changes[0])
    trusted = changes[2].find("ParticipantObjectIdentification").get("ParticipantObjectID")
    assert trusted.endswith("/tls/trusted/" + certificates.trusted_file_name(ca.cert))
    assert certificates.fingerprint(ca.cert) in description(changes[3])


def test_api_calls_record_their_caller(data_dir: Path) -> None:
    """In a process: the requestor is the control socket's peer, not the process owner."""
    audit.configure(data_dir)
    try:
        caller = audit.os_user(65534, 4242)
        certificates.generate(data_dir, cn="X", sans=["DNS:x"], requestor=caller)
        with pytest.raises(CertificateError):
            certificates.untrust(data_dir, "nothing", requestor=caller)
    finally:
        audit.shutdown()
    changes = security_configuration(audit_messages(data_dir))
    assert [outcome(m) for m in changes] == ["0", "4"]
    for message in changes:
        ids = {p.get("AlternativeUserID") for p in message.findall("ActiveParticipant")}
        assert "uid=65534 pid=4242" in ids


# --- the control API --------------------------------------------------------------------------


def test_tls_ops_through_the_daemon(daemon_factory, tmp_path: Path) -> None:
    daemon = daemon_factory(tls_port=0).start()
    path = control_socket_path(daemon.data_dir)
    root = make_ca("API Root CA")
    with ControlClient(path, role="technologist") as tech:
        shown = tech.call("tls.show")
        assert shown["key"] is None and shown["warning_days"] == 30
        for op, args in (
            ("tls.generate", {}),
            ("tls.csr", {}),
            ("tls.import_cert", {"pem": "x"}),
            ("tls.trust", {"pem": "x"}),
            ("tls.untrust", {"name": "x"}),
        ):
            with pytest.raises(ApiError) as refused:
                tech.call(op, **args)
            assert refused.value.code == "forbidden", op
    assert not (daemon.data_dir / "tls" / "key.pem").exists()

    with ControlClient(path, role="service") as service:
        made = service.call("tls.generate", cn="API", sans=["DNS:api"], days=90)
        assert made["subject"] == "CN=API" and made["days_left"] == 89
        with pytest.raises(ApiError) as refused:
            service.call("tls.generate", cn="API")
        assert refused.value.code == "invalid" and "--force" in refused.value.message
        with pytest.raises(ApiError) as refused:
            service.call("tls.generate", force=True, passphrase="short")
        assert refused.value.code == "bad-request"
        made = service.call(
            "tls.generate", force=True, rsa=2048, passphrase="long enough passphrase"
        )
        assert made["key"] == "RSA 2048" and made["subject"] == "CN=APPLIANCE"
        assert (daemon.data_dir / "tls" / "passphrase").read_text() == "long enough passphrase\n"

        request = service.call("tls.csr", cn="api.example.org", sans=["DNS:api.example.org"])
        assert request["new_key"] is False and request["key"] == "RSA 2048"
        issued = sign_csr(root, request["pem"].encode())
        installed = service.call("tls.import_cert", pem=pem(issued).decode())
        assert installed["issuer"] == "CN=API Root CA,O=Appliance Test"
        with pytest.raises(ApiError) as refused:
            service.call("tls.import_cert", pem=pem(make_cert(root, "x").cert).decode())
        assert refused.value.code == "invalid" and "another key" in refused.value.message
        with pytest.raises(ApiError) as refused:
            service.call("tls.import_cert")
        assert refused.value.code == "bad-request"

        ca_file = write_pem(tmp_path / "ca.pem", root)
        added = service.call("tls.trust", path=str(ca_file))
        assert added[0]["status"] == "added" and added[0]["cn"] == "API Root CA"
        with pytest.raises(ApiError) as refused:
            service.call("tls.trust", path=str(tmp_path / "missing.pem"))
        assert refused.value.code == "invalid"

    with ControlClient(path, role="technologist") as tech:
        shown = tech.call("tls.show")
        assert shown["certificate"]["subject"] == "CN=api.example.org"
        assert shown["certificate"]["matches_key"] and shown["key"]["encrypted"]
        assert [e["cn"] for e in shown["trusted"]] == ["API Root CA"]
        assert shown["warnings"] == []

    with ControlClient(path, role="service") as service:
        removed = service.call("tls.untrust", name="API Root CA")
        assert removed["cn"] == "API Root CA"
        with pytest.raises(ApiError) as refused:
            service.call("tls.untrust", name="API Root CA")
        assert refused.value.code == "invalid"

    changes = security_configuration(audit_messages(daemon.data_dir))
    actions = [description(m).split(":")[0] for m in changes]
    assert actions == [
        "tls generate", "tls generate", "tls generate", "tls csr", "tls import-cert",
        "tls import-cert", "tls trust", "tls untrust", "tls untrust",
    ]  # fmt: skip
    assert [outcome(m) for m in changes] == ["0", "4", "0", "0", "0", "4", "0", "0", "4"]
    requestors = {
        p.get("AlternativeUserID")
        for m in changes
        for p in m.findall("ActiveParticipant")
        if p.get("UserIsRequestor") == "true"
    }
    assert all(r.startswith(f"uid={os.geteuid()} pid=") for r in requestors)


# --- with a real DICOM peer ---------------------------------------------------------------------


def test_a_daemon_serves_tls_with_the_managed_identity(daemon_factory, tmp_path: Path) -> None:
    """CSR, CA-signed certificate with an intermediate, passphrase-protected key and a trusted
    peer CA, all through `tls`: DCMTK echoscu completes mutual TLS; untrusting the peer's CA
    refuses it from the next association on, without a restart."""
    tls_port = free_port()
    daemon = daemon_factory(tls_port=tls_port)
    data_dir = daemon.data_dir
    (tmp_path / "pass").write_text("appliance key passphrase\n")
    request = tmp_path / "r.pem"
    result = tls(
        data_dir, "csr", "--cn", "APPLIANCE", "--san", "DNS:localhost", "--san", "IP:127.0.0.1",
        "--passphrase-file", str(tmp_path / "pass"), "--output", str(request),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    root = make_ca("Hospital Root CA")
    issuing = make_ca("Hospital Issuing CA", issuer=root)
    (tmp_path / "issued.pem").write_bytes(pem(sign_csr(issuing, request.read_bytes())))
    chain = write_pem(tmp_path / "chain.pem", issuing)
    assert (
        tls(data_dir, "import-cert", str(tmp_path / "issued.pem"), "--chain", str(chain)).returncode
        == 0
    )
    modality_ca = make_ca("Modality Vendor CA")
    assert tls(data_dir, "trust", str(write_pem(tmp_path / "mca.pem", modality_ca))).returncode == 0

    # The modality trusts only the hospital root: our chain.pem must reach it.
    peer = peer_files(tmp_path / "peer", make_cert(modality_ca, "MODALITY"), root)
    daemon.start()
    wait_for_port(tls_port)

    def echo() -> subprocess.CompletedProcess:
        return run(
            [dcmtk("echoscu"), "-aet", "MODALITY", "-aec", daemon.ae_title,
             *peer.dcmtk_args(), "127.0.0.1", str(tls_port)]
        )  # fmt: skip

    result = echo()
    assert result.returncode == 0, result.stderr
    assert tls(data_dir, "untrust", "Modality Vendor CA").returncode == 0
    assert echo().returncode != 0
    assert daemon.proc is not None and daemon.proc.poll() is None
