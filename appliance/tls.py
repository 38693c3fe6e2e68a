"""TLS transport for DICOM (PS3.15 Annex B): SSL contexts, the TLS listener, SCU wrapping.

Key material lives in ``DATA/tls/``: ``key.pem`` (PKCS#8, optionally encrypted with the
passphrase in ``passphrase``), ``cert.pem``, optional ``chain.pem`` (intermediates sent to
peers), ``trusted/`` (one PEM per trusted CA) and optional ``crl/`` (PEM or DER CRLs).

Profiles after BCP 195 (RFC 9325): TLS 1.2 and 1.3 only, ephemeral (EC)DH key exchange with
AEAD suites; never static DH/ECDH ("DH certificate") suites, anonymous or null ciphers. The
legacy profile keeps the TLS 1.2 floor but adds RSA key exchange and CBC suites (the retired
DICOM "AES" and "Basic" TLS profiles) for peers that offer nothing better.

The listener does the handshake in the connection's own thread (pynetdicom does it in the
accept loop, where one silent client would stall every other peer), with the association
timeout as deadline, and reports a failed handshake with the peer's address and OpenSSL's
reason instead of dropping it silently.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.acceptor import ListenerServer
from appliance.config import TLS_PEER_AUTH, TLS_PROFILES, Node, Settings

LOG = logging.getLogger(__name__)

TLS_DIR = "tls"
KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
CHAIN_FILE = "chain.pem"
TRUSTED_DIR = "trusted"
CRL_DIR = "crl"
PASSPHRASE_FILE = "passphrase"

PROFILES = TLS_PROFILES
PEER_AUTH = TLS_PEER_AUTH

# TLS 1.3 suites are OpenSSL's defaults (all AEAD); these govern TLS 1.2.
_BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"
# RSA key exchange and CBC for old peers; 3DES only if this OpenSSL still has it. Security
# level 1 admits the 1024-bit keys and SHA-1 signatures such peers tend to have.
_LEGACY_CIPHERS = _BCP195_CIPHERS + ":ECDHE+AES:DHE+AES:RSA+AESGCM:RSA+AES:RSA+3DES:@SECLEVEL=1"
# Never: anonymous, null, static DH/ECDH (DH certificates), DSS, PSK, SRP.
_EXCLUDED = ":!aNULL:!eNULL:!kDH:!kECDH:!DSS:!PSK:!SRP"

# The data folder whose tls/ the SCU side uses; set by the entry point (CLI or daemon).
_data_dir: Path | None = None


class TLSConfigError(Exception):
    """Key material missing or unusable; the message says which file and why."""


def use_data_dir(data_dir: Path) -> None:
    """Tell the SCU side where the key material is (called once by the entry point)."""
    global _data_dir
    _data_dir = Path(data_dir)


def active_data_dir() -> Path:
    if _data_dir is not None:
        return _data_dir
    from appliance.paths import default_data_dir

    return default_data_dir()


def tls_dir(data_dir: Path) -> Path:
    return Path(data_dir) / TLS_DIR


def has_identity(data_dir: Path) -> bool:
    """Whether our key and certificate exist (the TLS listener needs both)."""
    folder = tls_dir(data_dir)
    return (folder / KEY_FILE).is_file() and (folder / CERT_FILE).is_file()


# --- contexts --------------------------------------------------------------------------------


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _fingerprint(data_dir: Path) -> tuple[tuple[str, float, int], ...]:
    """What a cached context depends on: every file of the key store (name, mtime, size)."""
    folder = tls_dir(data_dir)
    paths = [folder / n for n in (KEY_FILE, CERT_FILE, CHAIN_FILE, PASSPHRASE_FILE)]
    paths += _files(folder / TRUSTED_DIR) + _files(folder / CRL_DIR)
    result = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        result.append((str(path), st.st_mtime, st.st_size))
    return tuple(result)


def _base_context(purpose: int, profile: str) -> ssl.SSLContext:
    if profile not in PROFILES:
        raise TLSConfigError(f"unknown TLS profile {profile!r}: one of {', '.join(PROFILES)}")
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ctx.set_ciphers((_BCP195_CIPHERS if profile == "bcp195" else _LEGACY_CIPHERS) + _EXCLUDED)
    # No renegotiation, no compression (CRIME), fresh ECDH keys per handshake.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_ECDH_USE
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


def _load_identity(ctx: ssl.SSLContext, data_dir: Path) -> None:
    folder = tls_dir(data_dir)
    key, cert, chain = folder / KEY_FILE, folder / CERT_FILE, folder / CHAIN_FILE
    for path in (key, cert):
        if not path.is_file():
            raise TLSConfigError(f"{path} is missing (run `dicom-appliance tls generate`)")
    password: bytes | None = None
    passphrase = folder / PASSPHRASE_FILE
    if passphrase.is_file():
        password = passphrase.read_bytes().rstrip(b"\r\n")
    certfile = cert
    combined: str | None = None
    if chain.is_file():
        # load_cert_chain takes one file: our certificate followed by the intermediates.
        fd, combined = tempfile.mkstemp(prefix="tls-chain-", suffix=".pem")
        with os.fdopen(fd, "wb") as out:
            out.write(cert.read_bytes().rstrip(b"\n") + b"\n" + chain.read_bytes())
        certfile = Path(combined)
    try:
        # A password callback (not bytes) so an encrypted key without a passphrase file
        # fails with a clear error instead of OpenSSL prompting on the terminal.
        ctx.load_cert_chain(certfile, key, password=lambda: password or b"")
    except ssl.SSLError as exc:
        hint = " (wrong or missing passphrase?)" if _is_encrypted(key) else ""
        raise TLSConfigError(f"cannot load {key} with {cert}: {exc.reason or exc}{hint}") from exc
    finally:
        if combined:
            os.unlink(combined)


def _is_encrypted(key: Path) -> bool:
    try:
        return b"ENCRYPTED" in key.read_bytes()[:64]
    except OSError:
        return False


def _load_trust(ctx: ssl.SSLContext, data_dir: Path) -> int:
    """Trust every CA in trusted/ (one file each, so one bad file names itself), and load CRLs.

    Returns the number of trusted CA files loaded.
    """
    folder = tls_dir(data_dir)
    count = 0
    for path in _files(folder / TRUSTED_DIR):
        try:
            ctx.load_verify_locations(cafile=str(path))
            count += 1
        except (ssl.SSLError, OSError) as exc:
            LOG.warning("TLS: ignoring trusted CA file %s: %s", path, exc)
    crls = 0
    for path in _files(folder / CRL_DIR):
        try:
            _load_crl(ctx, path)
            crls += 1
        except (ssl.SSLError, OSError, ValueError) as exc:
            LOG.warning("TLS: ignoring CRL file %s: %s", path, exc)
    if crls:
        # Leaf only: a CA rarely publishes CRLs for its own issuer, and a missing CRL fails.
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    # Trusting an intermediate CA directly (without its root) is a valid site choice.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return count


def _load_crl(ctx: ssl.SSLContext, path: Path) -> None:
    data = path.read_bytes()
    if b"-----BEGIN X509 CRL-----" in data:
        ctx.load_verify_locations(cafile=str(path))
        return
    # DER: OpenSSL's cafile loader reads PEM only, so convert.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pem = x509.load_der_x509_crl(data).public_bytes(serialization.Encoding.PEM)
    fd, name = tempfile.mkstemp(prefix="tls-crl-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        ctx.load_verify_locations(cafile=name)
    finally:
        os.unlink(name)


_VERIFY_MODES = {
    "require": ssl.CERT_REQUIRED,
    "verify": ssl.CERT_OPTIONAL,
    "ignore": ssl.CERT_NONE,
}


def server_context(data_dir: Path, settings: Settings) -> ssl.SSLContext:
    """Context for the TLS listener: our identity, the trusted CAs, the peer-auth policy."""
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER, settings.tls_profile)
    _load_identity(ctx, data_dir)
    policy = settings.tls_peer_auth
    if policy not in PEER_AUTH:
        raise TLSConfigError(f"unknown peer authentication {policy!r}")
    trusted = _load_trust(ctx, data_dir)
    if policy != "ignore" and not trusted:
        LOG.warning(
            "TLS: no trusted CA in %s: every peer certificate will be refused",
            tls_dir(data_dir) / TRUSTED_DIR,
        )
    ctx.verify_mode = _VERIFY_MODES[policy]
    return ctx


def node_policy(settings: Settings, node: Node) -> tuple[str, str]:
    """The (peer_auth, profile) a node uses: its own, else the settings'."""
    peer_auth = getattr(node, "tls_peer_auth", None) or settings.tls_peer_auth
    profile = getattr(node, "tls_profile", None) or settings.tls_profile
    return peer_auth, profile


def client_context(data_dir: Path, settings: Settings, node: Node) -> ssl.SSLContext:
    """Context for an SCU association to ``node``.

    We always present our certificate (if we have one), since most TLS peers require it.
    require/verify check the server's chain (a server always presents one, so the two are
    the same here); ignore accepts any server. Host names are not checked: DICOM peers are
    often configured by address and identified by their certificate's chain, as DCMTK does.
    """
    peer_auth, profile = node_policy(settings, node)
    if peer_auth not in PEER_AUTH:
        raise TLSConfigError(f"unknown peer authentication {peer_auth!r}")
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT, profile)
    ctx.check_hostname = False
    if has_identity(data_dir):
        _load_identity(ctx, data_dir)
    _load_trust(ctx, data_dir)
    ctx.verify_mode = ssl.CERT_NONE if peer_auth == "ignore" else ssl.CERT_REQUIRED
    return ctx


class _ContextCache:
    """Contexts rebuilt only when a file of the key store changes (a new certificate applies
    to the next association, no restart)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[tuple[Any, ...], tuple[tuple[Any, ...], ssl.SSLContext]] = {}

    def get(
        self, key: tuple[Any, ...], data_dir: Path, build: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        stamp = _fingerprint(data_dir)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        ctx = build()
        with self._lock:
            self._cache[key] = (stamp, ctx)
        return ctx


_CONTEXTS = _ContextCache()


def cached_client_context(settings: Settings, node: Node) -> ssl.SSLContext:
    data_dir = active_data_dir()
    peer_auth, profile = node_policy(settings, node)
    return _CONTEXTS.get(
        ("client", str(data_dir), peer_auth, profile),
        data_dir,
        lambda: client_context(data_dir, settings, node),
    )


def cached_server_context(data_dir: Path, settings: Settings) -> ssl.SSLContext:
    return _CONTEXTS.get(
        ("server", str(data_dir), settings.tls_peer_auth, settings.tls_profile),
        data_dir,
        lambda: server_context(data_dir, settings),
    )


# --- SCU side --------------------------------------------------------------------------------


class RecordingContext:
    """Wraps an SSLContext for pynetdicom's ``tls_args`` and keeps why the handshake failed.

    pynetdicom turns a failed handshake into "connection failed" and only logs the exception;
    the operator needs OpenSSL's reason in the job's message. With ``ctx`` None (our key store
    is unusable) every connection fails with ``error`` before anything is sent.
    """

    def __init__(
        self, ctx: ssl.SSLContext | None, error: str | None = None, note: str = ""
    ) -> None:
        self.ctx = ctx
        self.error = error
        # Appended to a failure: e.g. that we had no certificate to present.
        self.note = note

    def _record(self, exc: OSError) -> None:
        if self.error is None:
            self.error = f"TLS handshake failed: {describe_handshake_error(exc)}{self.note}"

    def wrap_socket(self, sock: socket.socket, **kwargs: Any) -> ssl.SSLSocket:
        if self.ctx is None:
            raise OSError(self.error)
        # The handshake runs after the TCP connect, so a refused connection stays "cannot
        # connect" and only a TLS problem is recorded as one.
        wrapped = self.ctx.wrap_socket(sock, do_handshake_on_connect=False, **kwargs)
        tcp_connect = wrapped.connect
        tls_recv = wrapped.recv

        def connect(address: Any) -> None:
            tcp_connect(address)
            try:
                wrapped.do_handshake()
            except OSError as exc:
                self._record(exc)
                raise

        def recv(bufsize: int, flags: int = 0) -> bytes:
            # TLS 1.3: the server judges our certificate after our side of the handshake is
            # done, so its refusal (an alert) arrives on the first read.
            try:
                return tls_recv(bufsize, flags)
            except ssl.SSLError as exc:
                self._record(exc)
                raise

        wrapped.connect = connect  # type: ignore[method-assign]
        wrapped.recv = recv  # type: ignore[method-assign]
        return wrapped


def tls_args(settings: Settings, node: Node) -> tuple[RecordingContext, str] | None:
    """pynetdicom ``tls_args`` for an association to ``node``, or None for plain TCP."""
    if not getattr(node, "tls", False):
        return None
    try:
        ctx = cached_client_context(settings, node)
    except (TLSConfigError, ssl.SSLError, OSError) as exc:
        return RecordingContext(None, f"TLS not usable: {exc}"), node.host
    note = ""
    if not has_identity(active_data_dir()):
        note = f" (we have no certificate to present: none in {tls_dir(active_data_dir())})"
    return RecordingContext(ctx, note=note), node.host


def failure_of(tls: tuple[RecordingContext, str] | None) -> str | None:
    """The recorded TLS failure of an association attempt, if any."""
    return tls[0].error if tls is not None else None


# --- listener --------------------------------------------------------------------------------


# The first byte of a TLS ClientHello record; a DICOM PDU starts with its type (01..07).
_TLS_HANDSHAKE_RECORD = 0x16


class _NotTLS(Exception):
    def __init__(self, first_byte: int) -> None:
        super().__init__(first_byte)
        self.first_byte = first_byte


def describe_handshake_error(exc: BaseException) -> str:
    """OpenSSL's reason in words an operator can act on, with the reason code kept."""
    if isinstance(exc, _NotTLS):
        if exc.first_byte == 0x01:
            return "plain DICOM (an A-ASSOCIATE-RQ) on the TLS port"
        return f"not a TLS handshake (first byte 0x{exc.first_byte:02X})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate refused: {exc.verify_message}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no TLS handshake before the association timeout"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        hints = {
            "WRONG_VERSION_NUMBER": "not a TLS handshake (plain DICOM on the TLS port?)",
            "HTTP_REQUEST": "not a TLS handshake (HTTP on the TLS port)",
            "UNSUPPORTED_PROTOCOL": "TLS version not allowed (TLS 1.2 or 1.3 required)",
            "TLSV1_ALERT_PROTOCOL_VERSION": "TLS version not allowed by the peer",
            "NO_SHARED_CIPHER": "no cipher suite in common (check the TLS profile)",
            "SSLV3_ALERT_HANDSHAKE_FAILURE": "handshake failure (no common cipher or protocol)",
            "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the peer sent no certificate",
            "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust our certificate (unknown CA)",
            "SSLV3_ALERT_BAD_CERTIFICATE": "the peer refused our certificate",
            "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the peer says our certificate has expired",
            "TLSV1_ALERT_DECRYPT_ERROR": "the peer could not verify our key",
            "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a certificate",
            "UNEXPECTED_EOF_WHILE_READING": "the peer closed the connection during the handshake",
        }
        text = hints.get(reason)
        if text:
            return f"{text} [{exc.reason}]"
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, ConnectionError):
        return "the peer closed the connection during the handshake"
    return f"TLS handshake failed: {exc}"


@dataclass(frozen=True)
class HandshakeFailure:
    address: str
    port: int
    reason: str


class TLSAssociationServer(ListenerServer):
    """pynetdicom's threaded server with the TLS handshake moved into the connection thread.

    Set ``context_source`` (returns the current SSLContext), ``handshake_timeout`` and
    ``on_failure`` after construction; ``ssl_context`` stays None so the base class never
    wraps in the accept loop.
    """

    context_source: Callable[[], ssl.SSLContext]
    handshake_timeout: float = 30.0
    on_failure: Callable[[HandshakeFailure], None] | None = None

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        address, port = str(client_address[0]), int(client_address[1])
        try:
            request.settimeout(self.handshake_timeout)
            # A connection closed before sending anything is a port probe (a monitor, a
            # load balancer), not a failed handshake: close it without an alarm.
            first = request.recv(1, socket.MSG_PEEK)
            if not first:
                LOG.debug(
                    "TLS port: %s:%d connected and closed without a handshake", *client_address
                )
                self._close_quietly(request)
                return
            if first[0] != _TLS_HANDSHAKE_RECORD:
                raise _NotTLS(first[0])
            ctx = self.context_source()
            wrapped = ctx.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
            request = wrapped
            wrapped.do_handshake()
        except Exception as exc:  # any failure is this peer's, never the listener's
            reason = str(exc) if isinstance(exc, TLSConfigError) else describe_handshake_error(exc)
            self._close_quietly(request)
            if self.on_failure is not None:
                try:
                    self.on_failure(HandshakeFailure(address, port, reason))
                except Exception:
                    LOG.exception("reporting a TLS handshake failure failed")
            return
        # The association's own timeouts take over from here (set on connection open).
        wrapped.settimeout(None)
        super().process_request_thread(wrapped, client_address)

    @staticmethod
    def _close_quietly(sock: Any) -> None:
        try:
            sock.close()
        except OSError:
            pass


def peer_certificate_subject(sock: Any) -> str | None:
    """The verified peer certificate's subject CN, for logs (None when it sent none)."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        cert = sock.getpeercert()
    except (ValueError, OSError):
        return None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def expiry_warning(data_dir: Path, warning_days: int) -> str | None:
    """A warning when our certificate expires within ``warning_days`` (or has expired)."""
    path = tls_dir(data_dir) / CERT_FILE
    try:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    not_after = cert.not_valid_after_utc
    left = not_after - dt.datetime.now(dt.UTC)
    if left.total_seconds() <= 0:
        return f"our TLS certificate expired on {not_after:%Y-%m-%d}"
    if left.days < warning_days:
        return f"our TLS certificate expires on {not_after:%Y-%m-%d} ({left.days} days left)"
    return None
