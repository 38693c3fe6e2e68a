"""TLS transport: the TLS listener and TLS SCU associations against DCMTK peers over loopback.

The CA, certificates and CRLs are made by tests/tls_helpers.py; the peers are DCMTK's echoscu,
storescu and storescp with `+tls`, openssl s_client for old protocol versions, and Python ssl
clients where a DCMTK option does not exist (a TLS client without a certificate).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance import tls
from appliance.archive import Archive
from appliance.config import ConfigError, ConfigStore, Node, Settings
from appliance.events import EventBus
from appliance.network import DicomServer
from tests.factories import write_ct_series
from tests.peers import LOOPBACK, StoreSCP, dcmtk, free_port, run, wait_for_port
from tests.scp_helpers import indexed_uids
from tests.tls_helpers import (
    Issued,
    PeerFiles,
    install_identity,
    make_ca,
    make_cert,
    make_crl,
    peer_files,
    write_pem,
)

OPENSSL = shutil.which("openssl")


@dataclass
class Pki:
    ca: Issued
    other_ca: Issued
    server: Issued  # the appliance
    client: Issued  # a good DCMTK peer
    expired: Issued
    stranger: Issued  # chained to other_ca
    revoked: Issued


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = make_ca("Hospital Root CA")
    other = make_ca("Someone Else CA")
    return Pki(
        ca=ca,
        other_ca=other,
        server=make_cert(ca, "APPLIANCE"),
        client=make_cert(ca, "MODALITY"),
        expired=make_cert(ca, "OLD MODALITY", expired=True),
        stranger=make_cert(other, "STRANGER"),
        revoked=make_cert(ca, "REVOKED MODALITY"),
    )


@pytest.fixture
def peers(tmp_path: Path, pki: Pki) -> dict[str, PeerFiles]:
    folder = tmp_path / "peers"
    return {
        "good": peer_files(folder, pki.client, pki.ca, "good"),
        "expired": peer_files(folder, pki.expired, pki.ca, "expired"),
        "stranger": peer_files(folder, pki.stranger, pki.ca, "stranger"),
        "revoked": peer_files(folder, pki.revoked, pki.ca, "revoked"),
    }


class Listener:
    """Our DicomServer in this process with a TLS listener, collecting association events."""

    def __init__(self, data_dir: Path, **settings: object) -> None:
        self.data_dir = data_dir
        self.settings = Settings(port=free_port(), tls_port=free_port(), **settings)  # type: ignore[arg-type]
        self.bus = EventBus()
        self.events = self.bus.subscribe({"association"})
        self.config = ConfigStore(data_dir)
        self.archive = Archive(data_dir)
        self.server = DicomServer(
            self.settings,
            self.config,
            self.archive,
            events=self.bus,
            tls_context=lambda: tls.cached_server_context(data_dir, self.settings),
        )
        self.server.start()
        self.port = self.server.tls_port
        wait_for_port(self.port)

    def tls_failures(self, count: int, timeout: float = 10) -> list[dict]:
        found: list[dict] = []
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            event = self.events.get(timeout=0.2)
            if event is not None and event.data.get("event") == "tls-failed":
                found.append(event.data)
        return found

    def close(self) -> None:
        self.server.shutdown(0)
        self.archive.close()
        self.config.close()


@pytest.fixture
def listener_factory(tmp_path: Path, pki: Pki) -> Iterator:
    made: list[Listener] = []

    def make(name: str = "data", crls: tuple = (), **settings: object) -> Listener:
        data_dir = tmp_path / name
        install_identity(data_dir, pki.server, [pki.ca], crls=crls)
        listener = Listener(data_dir, **settings)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


def echoscu(port: int, *tls_args: str, ae: str = "MODALITY") -> subprocess.CompletedProcess:
    return run(
        [dcmtk("echoscu"), "-aet", ae, "-aec", "APPLIANCE", *tls_args, LOOPBACK, str(port)],
        timeout=60,
    )


def python_tls_client(
    port: int,
    *,
    cert: PeerFiles | None = None,
    ca: Path | None = None,
    maximum: ssl.TLSVersion | None = None,
) -> str:
    """Handshake with a Python ssl client; "ok" or the error the client saw."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if ca:
        ctx.load_verify_locations(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    if maximum:
        # OpenSSL 3 refuses TLS < 1.2 at its default security level even as a client.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
    try:
        with socket.create_connection((LOOPBACK, port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as sock:
                # TLS 1.3: the server checks the client certificate after the client's
                # handshake finished; a refusal shows on the first read.
                sock.settimeout(2)
                sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
                try:
                    data = sock.recv(10)
                except TimeoutError:
                    return "ok"
                return "ok" if data else "closed"
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc}"


# --- listener ------------------------------------------------------------------------------


def test_mutual_tls_with_dcmtk_echo_and_store(tmp_path: Path, listener_factory, peers) -> None:
    listener = listener_factory()
    result = echoscu(listener.port, *peers["good"].dcmtk_args())
    assert result.returncode == 0, result.stderr
    files = write_ct_series(tmp_path / "images", 3)
    result = run(
        [
            dcmtk("storescu"),
            "-aet",
            "MODALITY",
            "-aec",
            "APPLIANCE",
            *peers["good"].dcmtk_args(),
            LOOPBACK,
            str(listener.port),
            *map(str, files),
        ]
    )
    assert result.returncode == 0, result.stderr
    assert len(indexed_uids(listener.data_dir)) == 3
    # The plain listener is still plain beside it.
    assert echoscu(listener.settings.port).returncode == 0
    assert listener.tls_failures(1, timeout=0.5) == []


def test_refused_handshakes_are_reported_and_the_listener_keeps_serving(
    listener_factory, peers, pki: Pki
) -> None:
    listener = listener_factory()
    port = listener.port
    # A certificate from a CA we do not trust, an expired one, none at all (DCMTK always
    # sends one with +tls, so a Python client), plain DICOM on the TLS port.
    assert echoscu(port, *peers["stranger"].dcmtk_args()).returncode != 0
    assert echoscu(port, *peers["expired"].dcmtk_args()).returncode != 0
    assert python_tls_client(port, ca=peers["good"].ca).startswith("refused")
    assert echoscu(port).returncode != 0
    failures = listener.tls_failures(4)
    reasons = [f["reason"] for f in failures]
    assert len(reasons) == 4, reasons
    assert all(f["peer_address"] == LOOPBACK and f["peer_port"] > 0 for f in failures)
    assert "certificate refused" in reasons[0] and "unable to get local issuer" in reasons[0]
    assert "certificate has expired" in reasons[1]
    assert "sent no certificate" in reasons[2] or "requires a certificate" in reasons[2]
    assert "plain DICOM (an A-ASSOCIATE-RQ) on the TLS port" in reasons[3]
    # Still serving: the next good peer gets through.
    result = echoscu(port, *peers["good"].dcmtk_args())
    assert result.returncode == 0, result.stderr


# Offering TLS 1.0/1.1 is the point; Python warns that the versions are deprecated.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_old_tls_versions_are_refused(listener_factory, peers) -> None:
    listener = listener_factory()
    port = listener.port
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        outcome = python_tls_client(port, cert=peers["good"], ca=peers["good"].ca, maximum=version)
        assert outcome.startswith("refused"), (version, outcome)
    if OPENSSL:
        result = run(
            [
                OPENSSL,
                "s_client",
                "-connect",
                f"{LOOPBACK}:{port}",
                "-tls1_1",
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
            ],
            input="",
            timeout=30,
        )
        assert "Cipher is (NONE)" in result.stdout or result.returncode != 0
    reasons = [f["reason"] for f in listener.tls_failures(3 if OPENSSL else 2)]
    assert reasons and all("TLS version not allowed" in r for r in reasons), reasons
    # TLS 1.2 and 1.3 are fine.
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx_result = python_tls_client(
            port, cert=peers["good"], ca=peers["good"].ca, maximum=version
        )
        assert ctx_result == "ok", (version, ctx_result)
    assert echoscu(port, *peers["good"].dcmtk_args()).returncode == 0


def test_silent_client_does_not_block_other_peers(listener_factory, peers) -> None:
    # pynetdicom would handshake in the accept loop: one idle connection would stall everyone.
    listener = listener_factory(association_timeout=2)
    with socket.create_connection((LOOPBACK, listener.port)):
        started = time.monotonic()
        result = echoscu(listener.port, *peers["good"].dcmtk_args())
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 5
        failures = listener.tls_failures(1, timeout=5)
    assert failures and "no TLS handshake" in failures[0]["reason"]


def test_peer_auth_verify_accepts_no_certificate_but_checks_one_that_is_sent(
    listener_factory, peers
) -> None:
    listener = listener_factory(tls_peer_auth="verify")
    assert python_tls_client(listener.port, ca=peers["good"].ca) == "ok"
    assert echoscu(listener.port, *peers["good"].dcmtk_args()).returncode == 0
    assert echoscu(listener.port, *peers["stranger"].dcmtk_args()).returncode != 0
    assert "certificate refused" in listener.tls_failures(1)[0]["reason"]


def test_peer_auth_ignore_accepts_any_certificate(listener_factory, peers) -> None:
    listener = listener_factory(tls_peer_auth="ignore")
    assert echoscu(listener.port, *peers["stranger"].dcmtk_args()).returncode == 0
    assert echoscu(listener.port, *peers["expired"].dcmtk_args()).returncode == 0


def test_revoked_certificate_is_refused_when_a_crl_is_present(
    listener_factory, peers, pki: Pki
) -> None:
    listener = listener_factory(crls=(make_crl(pki.ca, [pki.revoked]),))
    assert echoscu(listener.port, *peers["revoked"].dcmtk_args()).returncode != 0
    assert "revoked" in listener.tls_failures(1)[0]["reason"]
    assert echoscu(listener.port, *peers["good"].dcmtk_args()).returncode == 0


def test_intermediate_ca_chain_is_sent_and_accepted(tmp_path: Path, pki: Pki) -> None:
    # Our certificate comes from an intermediate CA; the peer trusts only the root, so the
    # listener must send chain.pem.
    intermediate = make_ca("Hospital Issuing CA", issuer=pki.ca)
    leaf = make_cert(intermediate, "APPLIANCE")
    data_dir = tmp_path / "data"
    install_identity(data_dir, leaf, [pki.ca], chain=[intermediate])
    listener = Listener(data_dir)
    try:
        good = peer_files(tmp_path / "peer", pki.client, pki.ca)
        result = echoscu(listener.port, *good.dcmtk_args())
        assert result.returncode == 0, result.stderr
    finally:
        listener.close()


def test_legacy_profile_admits_the_retired_dicom_aes_profile(tmp_path: Path, pki: Pki) -> None:
    # DCMTK's +pa is the retired "AES TLS Secure Transport Connection Profile": RSA key
    # exchange with AES-CBC, which BCP 195 excludes. RSA keys on both sides for RSA exchange.
    server = make_cert(pki.ca, "APPLIANCE", rsa_bits=2048)
    client = make_cert(pki.ca, "OLD MODALITY", rsa_bits=2048)
    peer = peer_files(tmp_path / "peer", client, pki.ca)
    for profile, works in (("bcp195", False), ("legacy", True)):
        data_dir = tmp_path / profile
        install_identity(data_dir, server, [pki.ca])
        listener = Listener(data_dir, tls_profile=profile)
        try:
            result = echoscu(listener.port, *peer.dcmtk_args(), "+pa")
            assert (result.returncode == 0) is works, (profile, result.stderr)
        finally:
            listener.close()


def test_passphrase_protected_key(tmp_path: Path, pki: Pki) -> None:
    data_dir = tmp_path / "data"
    install_identity(data_dir, pki.server, [pki.ca], passphrase=b"correct horse")
    assert isinstance(tls.server_context(data_dir, Settings()), ssl.SSLContext)
    (data_dir / "tls" / "passphrase").unlink()
    with pytest.raises(tls.TLSConfigError, match="passphrase"):
        tls.server_context(data_dir, Settings())


def test_bcp195_profile_offers_only_aead_suites_with_ephemeral_key_exchange() -> None:
    ctx = tls._base_context(ssl.PROTOCOL_TLS_SERVER, "bcp195")
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    names = [c["name"] for c in ctx.get_ciphers()]
    assert names
    for cipher in ctx.get_ciphers():
        if cipher["protocol"] == "TLSv1.3":
            continue
        assert cipher["aead"], cipher["name"]
        assert cipher["kea"] in ("kx-ecdhe", "kx-dhe"), cipher["name"]
    legacy = [c["name"] for c in tls._base_context(ssl.PROTOCOL_TLS_SERVER, "legacy").get_ciphers()]
    assert "AES128-SHA" in legacy and "AES128-SHA" not in names
    assert tls._base_context(ssl.PROTOCOL_TLS_SERVER, "legacy").minimum_version == (
        ssl.TLSVersion.TLSv1_2
    )


def test_expiry_warning(tmp_path: Path, pki: Pki) -> None:
    data_dir = tmp_path / "data"
    install_identity(data_dir, make_cert(pki.ca, "SOON", days=10), [pki.ca])
    assert "10 days left" in (tls.expiry_warning(data_dir, 30) or "") or "9 days left" in (
        tls.expiry_warning(data_dir, 30) or ""
    )
    assert tls.expiry_warning(data_dir, 5) is None
    install_identity(data_dir, pki.expired, [pki.ca])
    assert "expired" in (tls.expiry_warning(data_dir, 30) or "")


# --- daemon ---------------------------------------------------------------------------------


def test_daemon_serves_tls_beside_plain_and_says_when_tls_is_off(
    tmp_path: Path, daemon_factory, peers, pki: Pki
) -> None:
    off = daemon_factory("off", tls_port=free_port())
    off.start()
    assert "TLS listener off: no key and certificate" in off.log()
    off.stop()

    tls_port = free_port()
    daemon = daemon_factory("on", tls_port=tls_port)
    install_identity(daemon.data_dir, pki.server, [pki.ca])
    daemon.start()
    wait_for_port(tls_port)
    files = write_ct_series(tmp_path / "images", 2)
    result = run(
        [
            dcmtk("storescu"),
            "-aet",
            "MODALITY",
            "-aec",
            daemon.ae_title,
            *peers["good"].dcmtk_args(),
            LOOPBACK,
            str(tls_port),
            *map(str, files),
        ]
    )
    assert result.returncode == 0, result.stderr
    # Query/Retrieve on the TLS port too: the same services as the plain listener.
    found = run(
        [
            dcmtk("findscu"),
            "-S",
            "-aet",
            "MODALITY",
            "-aec",
            daemon.ae_title,
            *peers["good"].dcmtk_args(),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID",
            LOOPBACK,
            str(tls_port),
        ]
    )
    assert found.returncode == 0, found.stderr
    assert "Find Response: 1 (Pending)" in found.stderr, found.stderr
    assert echoscu(tls_port, *peers["stranger"].dcmtk_args()).returncode != 0
    assert echoscu(daemon.port, ae="PLAIN").returncode == 0
    daemon.stop()
    assert len(indexed_uids(daemon.data_dir)) == 2
    log = daemon.log()
    assert f"listening with TLS (bcp195, peer certificates: require) on 0.0.0.0:{tls_port}" in log
    assert "TLS handshake from 127.0.0.1:" in log and "unable to get local issuer" in log


# --- SCU ----------------------------------------------------------------------------------


def storescp_tls(folder: Path, files: PeerFiles, *extra: str) -> StoreSCP:
    return StoreSCP(folder, extra=[*files.dcmtk_args(), *extra])


def test_node_add_tls_sends_to_storescp_tls(tmp_path: Path, daemon_factory, pki: Pki) -> None:
    """`node add --tls` then `send` and `node echo` through the CLI, against storescp +tls
    (which requires our certificate: DCMTK's default)."""
    ours = daemon_factory("ours")  # not started: its data folder and CLI only
    install_identity(ours.data_dir, pki.server, [pki.ca])
    good_server = peer_files(tmp_path / "scp-good", make_cert(pki.ca, "STORESCP"), pki.ca)
    untrusted_server = peer_files(tmp_path / "scp-bad", make_cert(pki.other_ca, "STORESCP"), pki.ca)
    good = storescp_tls(tmp_path / "good", good_server)
    bad = storescp_tls(tmp_path / "bad", untrusted_server)
    try:
        for name, scp, extra in (
            ("good", good, []),
            ("bad", bad, []),
            ("bad-ignored", bad, ["--tls-peer-auth", "ignore"]),
        ):
            result = ours.cli(
                "node", "add", name, "--ae-title", "STORESCP", "--host", LOOPBACK,
                "--port", str(scp.port), "--tls", *extra,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert "over TLS" in result.stdout
        files = write_ct_series(tmp_path / "images", 3)

        result = ours.cli("send", "good", *map(str, files))
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(good.files()) == 3
        assert ours.cli("node", "echo", "good").returncode == 0

        result = ours.cli("send", "bad", *map(str, files))
        assert result.returncode != 0
        assert "TLS handshake failed: certificate refused" in result.stdout, result.stdout
        assert "unable to get local issuer" in result.stdout
        assert bad.files() == []
        echo = ours.cli("node", "echo", "bad")
        assert echo.returncode != 0 and "TLS handshake failed" in echo.stdout + echo.stderr

        result = ours.cli("send", "bad-ignored", *map(str, files))
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(bad.files()) == 3
    finally:
        good.stop()
        bad.stop()


def test_tls_node_without_our_certificate_fails_clearly(tmp_path: Path, pki: Pki) -> None:
    # No key store at all: storescp requires a client certificate; the message says why.
    server = peer_files(tmp_path / "scp", make_cert(pki.ca, "STORESCP"), pki.ca)
    scp = storescp_tls(tmp_path / "in", server)
    data_dir = tmp_path / "data"
    install_identity(data_dir, pki.server, [pki.ca])
    for name in ("key.pem", "cert.pem"):
        (data_dir / "tls" / name).unlink()
    tls.use_data_dir(data_dir)
    try:
        from appliance import scu

        node = Node("scp", "STORESCP", LOOPBACK, scp.port, tls=True)
        result = scu.echo(Settings(), node)
        assert not result.ok
        assert "TLS handshake failed" in result.message, result.message
    finally:
        scp.stop()


def test_node_tls_fields_are_validated() -> None:
    node = Node("n", "AE", "h", 104, tls=True, tls_peer_auth="verify", tls_profile="legacy")
    assert tls.node_policy(Settings(), node) == ("verify", "legacy")
    assert tls.node_policy(Settings(tls_peer_auth="ignore"), Node("m", "AE", "h", 104)) == (
        "ignore",
        "bcp195",
    )
    with pytest.raises(ConfigError):
        Node("n", "AE", "h", 104, tls=True, tls_peer_auth="sometimes")
    with pytest.raises(ConfigError):
        Node("n", "AE", "h", 104, tls=True, tls_profile="ssl3")


def test_write_pem_modes(tmp_path: Path, pki: Pki) -> None:
    assert write_pem(tmp_path / "k.pem", pki.client, key=True).stat().st_mode & 0o777 == 0o600
    tls_dir = install_identity(tmp_path / "data", pki.server, [pki.ca])
    assert tls_dir.stat().st_mode & 0o777 == 0o700


def test_daemon_refuses_to_start_when_the_tls_port_is_taken(daemon_factory, pki: Pki) -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        taken = busy.getsockname()[1]
        daemon = daemon_factory("busy", tls_port=taken, bind_address=LOOPBACK)
        install_identity(daemon.data_dir, pki.server, [pki.ca])
        result = daemon.cli("serve", "--port", str(free_port()), timeout=60)
    assert result.returncode == 1
    assert f"TLS port {taken}: Address already in use" in result.stderr


def test_c_move_sub_operations_go_over_tls_to_a_tls_node(
    tmp_path: Path, daemon_factory, pki: Pki
) -> None:
    """The daemon's own SCU associations (here C-MOVE sub-operations) use TLS for a TLS node."""
    server = peer_files(tmp_path / "scp", make_cert(pki.ca, "DEST"), pki.ca)
    dest = storescp_tls(tmp_path / "dest", server)
    try:
        daemon = daemon_factory("data", tls_port=free_port())
        install_identity(daemon.data_dir, pki.server, [pki.ca])
        result = daemon.cli(
            "node", "add", "dest", "--ae-title", "STORESCP", "--host", LOOPBACK,
            "--port", str(dest.port), "--tls",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        daemon.start()
        files = write_ct_series(tmp_path / "images", 2)
        stored = run(
            [dcmtk("storescu"), "-aec", daemon.ae_title, LOOPBACK, str(daemon.port)]
            + [str(f) for f in files]
        )
        assert stored.returncode == 0, stored.stderr
        from pydicom import dcmread

        study_uid = dcmread(files[0]).StudyInstanceUID
        moved = run(
            [
                dcmtk("movescu"), "-S", "-aet", "MOVER", "-aec", daemon.ae_title,
                "-aem", "STORESCP", "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={study_uid}", LOOPBACK, str(daemon.port),
            ]
        )  # fmt: skip
        assert moved.returncode == 0, moved.stderr
        assert len(dest.files()) == 2
    finally:
        dest.stop()
