"""DICOM digital signatures (PS3.15 Annex C, the final standard format): sign and verify.

A signature is an item of the Digital Signatures Sequence (FFFA,FFFA) plus an item of the MAC
Parameters Sequence (4FFE,0001) with the same MAC ID Number, in the data set (or sequence item)
it signs. The MAC is a hash over a byte stream made from

1. every signed Data Element of that data set, in tag order, encoded in the MAC Calculation
   Transfer Syntax (the object's own one; Explicit VR Little Endian for implicit VR and big
   endian objects), except that sequences and items carry no lengths: a sequence is its tag and
   VR, its items each as the item tag followed by the item's elements, then the Sequence
   Delimitation tag; encapsulated pixel data likewise (item tag, fragment bytes);
2. then the Digital Signatures Sequence item's own attributes except Certificate of Signer,
   Signature and the Certified Timestamp attributes (MAC ID Number, Digital Signature UID and
   DateTime, Certificate Type, purpose code...).

The signature is the signer's private key operation over that MAC (RSA PKCS #1 v1.5 with the
MAC's DigestInfo, or ECDSA). This is byte-for-byte what DCMTK ``dcmsign`` (default
``--format-new``) computes, so signatures made here verify there and the other way round.

Verification has three results: ``valid``; ``invalid`` (the MAC or the signature does not match:
the object changed, or the signature is malformed); ``untrustworthy`` (the signature matches,
but the signer's certificate does not chain to a trusted CA, has expired, or was not valid when
it signed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import NameOID
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from appliance import ripemd160

LOG = logging.getLogger(__name__)

VALID = "valid"
INVALID = "invalid"
UNTRUSTWORTHY = "untrustworthy"
NONE = "none"
MIXED = "mixed"

MAC_ALGORITHMS = ("RIPEMD160", "SHA1", "MD5", "SHA256", "SHA384", "SHA512")
DEFAULT_MAC = "RIPEMD160"
PROFILES = ("base", "creator", "authorization")
CERTIFICATE_TYPE = "X509_1993_SIG"

DIGITAL_SIGNATURES_SEQUENCE = 0xFFFAFFFA
MAC_PARAMETERS_SEQUENCE = 0x4FFE0001
ORIGINAL_ATTRIBUTES_SEQUENCE = 0x04000561
MAC_ID_NUMBER = 0x04000005
CERTIFICATE_OF_SIGNER = 0x04000115
SIGNATURE = 0x04000120
CERTIFIED_TIMESTAMP_TYPE = 0x04000305
CERTIFIED_TIMESTAMP = 0x04000310
PIXEL_DATA = 0x7FE00010
# Digital Signatures Sequence item attributes left out of the MAC (PS3.15 C.12.1.1.3).
_NOT_IN_MAC = {CERTIFICATE_OF_SIGNER, SIGNATURE, CERTIFIED_TIMESTAMP_TYPE, CERTIFIED_TIMESTAMP}

_ITEM = b"\xfe\xff\x00\xe0"
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER_BYTES = b"\xfe\xff\xdd\xe0"
_EXTENDED_LENGTH_VRS = {
    "OB",
    "OD",
    "OF",
    "OL",
    "OV",
    "OW",
    "SQ",
    "UC",
    "UR",
    "UT",
    "UN",
    "SV",
    "UV",
}

# PKCS #1 v1.5 DigestInfo prefixes (RFC 8017 9.2, RIPEMD-160 OID 1.3.36.3.2.1).
_DIGEST_INFO = {
    "MD5": bytes.fromhex("3020300c06082a864886f70d020505000410"),
    "SHA1": bytes.fromhex("3021300906052b0e03021a05000414"),
    "RIPEMD160": bytes.fromhex("3021300906052b2403020105000414"),
    "SHA256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "SHA384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "SHA512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
_CRYPTO_HASH: dict[str, type[hashes.HashAlgorithm]] = {
    "MD5": hashes.MD5,
    "SHA1": hashes.SHA1,
    "SHA256": hashes.SHA256,
    "SHA384": hashes.SHA384,
    "SHA512": hashes.SHA512,
}
# Creator and Authorization RSA profiles: the signature must include these (PS3.15 C.2, C.3).
_PROFILE_REQUIRED_TAGS = (0x00080016, 0x00080018, 0x0020000D, 0x0020000E)


class SignatureError(Exception):
    """Signing is impossible as asked (bad key, certificate, profile or item location)."""


# --- the MAC byte stream ---------------------------------------------------------------------


def new_hasher(mac: str) -> Any:
    """A hashlib-style hasher for a MAC Algorithm (0400,0015) defined term."""
    if mac == "RIPEMD160":
        return ripemd160.new()
    names = {"SHA1": "sha1", "MD5": "md5", "SHA256": "sha256", "SHA384": "sha384"}
    names["SHA512"] = "sha512"
    if mac not in names:
        raise SignatureError(f"MAC algorithm {mac!r} is not one of {', '.join(MAC_ALGORITHMS)}")
    return hashlib.new(names[mac])


def _is_signable_tag(tag: int) -> bool:
    """Tags that may never be signed (PS3.15 C.12.1.1.3, as DCMTK's isSignableTag)."""
    group, element = tag >> 16, tag & 0xFFFF
    if element == 0 or group < 0x0008 or group == 0xFFFA:
        return False
    if tag in (0x00080001, MAC_PARAMETERS_SEQUENCE, 0xFFFCFFFC, 0xFFFEE00D, 0xFFFEE0DD):
        return False
    return True


class _Encoder:
    """Writes data elements in the signature format into a hasher (and optionally a dump)."""

    def __init__(
        self,
        hasher: Any,
        *,
        explicit: bool = True,
        raw_little_endian: bool = True,
        dump: bytearray | None = None,
    ) -> None:
        self.hasher = hasher
        self.explicit = explicit
        # Raw values read from a big endian object must be converted, not copied.
        self.raw_little_endian = raw_little_endian
        self.dump = dump

    def write(self, data: bytes) -> None:
        self.hasher.update(data)
        if self.dump is not None:
            self.dump += data

    def element(self, ds: Dataset, tag: int) -> None:
        raw = ds.get_item(tag)
        if raw is None:
            return
        vr = _element_vr(ds, tag, raw)
        if vr == "SQ":
            self._sequence(tag, ds[tag].value)
            return
        value = raw.value if isinstance(raw, RawDataElement) else None
        if tag == PIXEL_DATA and _undefined_length(raw):
            self._encapsulated(tag, vr, value if value is not None else ds[tag].value)
            return
        if isinstance(raw, RawDataElement) and self.raw_little_endian:
            # Bytes exactly as read: what DCMTK hashes too (no re-formatting of values).
            self._header(tag, vr, len(value or b""))
            self.write(value or b"")
            return
        self._converted(ds, tag, vr)

    def _header(self, tag: int, vr: str, length: int) -> None:
        self.write(struct.pack("<HH", tag >> 16, tag & 0xFFFF))
        if not self.explicit:
            self.write(struct.pack("<I", length))
        elif vr in _EXTENDED_LENGTH_VRS:
            self.write(vr.encode() + b"\x00\x00" + struct.pack("<I", length))
        else:
            self.write(vr.encode() + struct.pack("<H", length))

    def _converted(self, ds: Dataset, tag: int, vr: str) -> None:
        elem = ds[tag]
        if elem.VR != vr:
            elem = DataElement(elem.tag, vr, elem.value)
        buffer = DicomBytesIO()
        buffer.is_little_endian = True
        buffer.is_implicit_VR = not self.explicit
        write_data_element(buffer, elem, ds._character_set)
        self.write(buffer.getvalue())

    def _sequence(self, tag: int, items: Iterable[Dataset]) -> None:
        # Tag and VR, no length; each item as its tag and elements (no length, no item
        # delimiter); then the sequence delimiter tag without its length.
        self.write(struct.pack("<HH", tag >> 16, tag & 0xFFFF))
        if self.explicit:
            self.write(b"SQ\x00\x00")
        for item in items:
            self.write(_ITEM)
            for child in item.keys():
                # Unsignable tags are left out inside items too (a signature of the item
                # itself, group lengths), as dcmsign does.
                if _is_signable_tag(int(child)):
                    self.element(item, int(child))
        self.write(_SEQUENCE_DELIMITER_BYTES)

    def _encapsulated(self, tag: int, vr: str, value: bytes) -> None:
        self.write(struct.pack("<HH", tag >> 16, tag & 0xFFFF))
        if self.explicit:
            self.write(vr.encode() + b"\x00\x00")
        for fragment in _fragments(value):
            self.write(_ITEM)
            self.write(fragment)
        self.write(_SEQUENCE_DELIMITER_BYTES)


def _undefined_length(elem: DataElement | RawDataElement) -> bool:
    if isinstance(elem, RawDataElement):
        return elem.length == 0xFFFFFFFF
    return bool(elem.is_undefined_length)


def _fragments(value: bytes) -> Iterator[bytes]:
    """The items of encapsulated pixel data (basic offset table first), as stored."""
    offset = 0
    while offset + 8 <= len(value):
        group, element, length = struct.unpack_from("<HHI", value, offset)
        offset += 8
        if (group, element) != (0xFFFE, 0xE000):
            break
        yield value[offset : offset + length]
        offset += length


def _element_vr(ds: Dataset, tag: int, raw: DataElement | RawDataElement) -> str:
    """The VR the element has in an explicit VR encoding (dictionary VR for implicit VR data)."""
    vr = raw.VR
    if vr and " or " not in vr:
        return str(vr)
    if isinstance(raw, RawDataElement) and not vr:
        if tag >> 16 & 1 and 0x0010 <= tag & 0xFFFF <= 0x00FF:
            return "LO"  # Private Creator Data Element
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return "UN"
        if " or " not in vr:
            return str(vr)
    # Ambiguous dictionary VR (US or SS, OB or OW...): resolved from the data set as pydicom
    # does when it writes explicit VR (Pixel Representation, Bits Allocated).
    elem = ds[tag]
    if " or " in elem.VR:
        elem = correct_ambiguous_vr_element(DataElement(elem.tag, elem.VR, elem.value), ds, True)
    return str(elem.VR)


def _contains_unknown_vr(ds: Dataset) -> bool:
    for tag in ds.keys():
        raw = ds.get_item(tag)
        vr = _element_vr(ds, int(tag), raw) if raw is not None else ""
        if vr == "UN":
            return True
        if vr == "SQ" and any(_contains_unknown_vr(item) for item in ds[tag].value):
            return True
    return False


def _is_signable(ds: Dataset, tag: int) -> bool:
    """A top-level element may be signed: signable tag, not UN, no UN inside a sequence."""
    if not _is_signable_tag(tag):
        return False
    raw = ds.get_item(tag)
    if raw is None:
        return False
    vr = _element_vr(ds, tag, raw)
    if vr == "UN":
        return False
    if vr == "SQ":
        return not any(_contains_unknown_vr(item) for item in ds[tag].value)
    return True


def source_transfer_syntax(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return str(meta.TransferSyntaxUID)
    return None


def mac_transfer_syntax(transfer_syntax: str | None) -> str:
    """The MAC Calculation Transfer Syntax for an object in ``transfer_syntax`` (as dcmsign):
    the object's own, but Explicit VR Little Endian instead of implicit VR or big endian."""
    if not transfer_syntax or transfer_syntax in (ImplicitVRLittleEndian, ExplicitVRBigEndian):
        return ExplicitVRLittleEndian
    return str(transfer_syntax)


def _explicit(mac_ts: str) -> bool:
    return mac_ts != ImplicitVRLittleEndian


def compute_mac(
    ds: Dataset,
    signature_item: Dataset,
    mac: str,
    mac_ts: str,
    tags: Iterable[int] | None,
    *,
    raw_little_endian: bool = True,
    dump: bytearray | None = None,
) -> tuple[bytes, list[int]]:
    """The MAC over ``ds`` (only ``tags`` when given, else every signable element) and the
    signature item; returns the digest and the tags actually encoded."""
    if mac_ts == ExplicitVRBigEndian:
        raise SignatureError("MAC Calculation Transfer Syntax big endian is not supported")
    hasher = new_hasher(mac)
    encoder = _Encoder(
        hasher, explicit=_explicit(mac_ts), raw_little_endian=raw_little_endian, dump=dump
    )
    wanted = set(tags) if tags is not None else None
    signed: list[int] = []
    for key in ds.keys():
        tag = int(key)
        if wanted is not None and tag not in wanted:
            continue
        if not _is_signable(ds, tag):
            if wanted is not None:
                raise SignatureError(
                    f"attribute ({tag >> 16:04X},{tag & 0xFFFF:04X}) is unsignable"
                )
            continue
        encoder.element(ds, tag)
        signed.append(tag)
    for key in signature_item.keys():
        tag = int(key)
        if tag in _NOT_IN_MAC or not _is_signable(signature_item, tag):
            continue
        encoder.element(signature_item, tag)
    return hasher.digest(), signed


# --- keys and the signature value ------------------------------------------------------------


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def _emsa_pkcs1(mac: str, digest: bytes, size: int) -> bytes:
    info = _DIGEST_INFO[mac] + digest
    if size < len(info) + 11:
        raise SignatureError("RSA key too short for this MAC algorithm")
    return b"\x00\x01" + b"\xff" * (size - len(info) - 3) + b"\x00" + info


def _sign_digest(key: PrivateKey, mac: str, digest: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        if mac in _CRYPTO_HASH:
            return key.sign(digest, padding.PKCS1v15(), utils.Prehashed(_CRYPTO_HASH[mac]()))
        # RIPEMD-160 is not in `cryptography`: PKCS #1 v1.5 by hand (RSASP1 with CRT).
        numbers = key.private_numbers()
        size = (key.key_size + 7) // 8
        message = int.from_bytes(_emsa_pkcs1(mac, digest, size), "big")
        p, q = numbers.p, numbers.q
        m1 = pow(message, numbers.dmp1, p)
        m2 = pow(message, numbers.dmq1, q)
        h = (numbers.iqmp * (m1 - m2)) % p
        signature = (m2 + h * q).to_bytes(size, "big")
        if (
            pow(
                int.from_bytes(signature, "big"), numbers.public_numbers.e, numbers.public_numbers.n
            )
            != message
        ):
            raise SignatureError("RSA signature self-check failed")
        return signature
    if isinstance(key, ec.EllipticCurvePrivateKey):
        # ECDSA signs the bare digest; the hash object only tells `cryptography` its size.
        return key.sign(digest, ec.ECDSA(utils.Prehashed(_same_size_hash(digest))))
    raise SignatureError("signing key must be RSA or EC")


def _same_size_hash(digest: bytes) -> hashes.HashAlgorithm:
    for algorithm in (hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
        if algorithm.digest_size == len(digest):
            return algorithm
    return hashes.MD5()


def _verify_digest(key: Any, mac: str, digest: bytes, signature: bytes) -> bool:
    if isinstance(key, rsa.RSAPublicKey):
        size = (key.key_size + 7) // 8
        if len(signature) != size:
            return False
        numbers = key.public_numbers()
        decoded = pow(int.from_bytes(signature, "big"), numbers.e, numbers.n)
        try:
            expected = _emsa_pkcs1(mac, digest, size)
        except SignatureError:
            return False
        return decoded.to_bytes(size, "big") == expected
    if isinstance(key, ec.EllipticCurvePublicKey):
        try:
            key.verify(
                _der_sequence(signature), digest, ec.ECDSA(utils.Prehashed(_same_size_hash(digest)))
            )
        except (InvalidSignature, ValueError, UnsupportedAlgorithm):
            return False
        return True
    return False


def _der_sequence(signature: bytes) -> bytes:
    """An ECDSA DER signature without the pad byte an OB value of odd length got on writing."""
    if len(signature) >= 2 and signature[0] == 0x30:
        if signature[1] < 0x80:
            return signature[: signature[1] + 2]
        count = signature[1] & 0x7F
        length = int.from_bytes(signature[2 : 2 + count], "big")
        return signature[: 2 + count + length]
    return signature


def load_private_key(path: Path, passphrase: bytes | None = None) -> PrivateKey:
    data = Path(path).read_bytes()
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, passphrase)
        else:
            key = serialization.load_der_private_key(data, passphrase)
    except TypeError as exc:
        raise SignatureError(f"{path}: the key is encrypted; give its passphrase") from exc
    except ValueError as exc:
        raise SignatureError(f"{path}: cannot read the private key (wrong passphrase?)") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SignatureError(f"{path}: signing keys must be RSA or EC")
    return key


def load_certificates(path: Path) -> list[x509.Certificate]:
    data = Path(path).read_bytes()
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise SignatureError(f"{path}: not a PEM or DER certificate") from exc


# --- trust ------------------------------------------------------------------------------------


@dataclass
class TrustStore:
    """Trusted CA certificates (DATA/tls/trusted plus any given for one run)."""

    certificates: list[x509.Certificate] = field(default_factory=list)

    @classmethod
    def load(cls, data_dir: Path | None, extra: Iterable[Path] = ()) -> TrustStore:
        certs: list[x509.Certificate] = []
        if data_dir is not None:
            folder = Path(data_dir) / "tls" / "trusted"
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    if path.is_file():
                        try:
                            certs.extend(load_certificates(path))
                        except SignatureError:
                            continue
        for path in extra:
            certs.extend(load_certificates(Path(path)))
        return cls(certs)

    def check(self, cert: x509.Certificate, at: dt.datetime | None = None) -> str | None:
        """None when ``cert`` chains to a trusted certificate and every link is valid now;
        else why not."""
        now = at or dt.datetime.now(dt.UTC)
        fingerprints = {c.fingerprint(hashes.SHA256()) for c in self.certificates}
        current = cert
        for _ in range(10):
            problem = _validity_problem(current, now)
            if problem:
                return f"{_subject(current)}: {problem}"
            if current.fingerprint(hashes.SHA256()) in fingerprints:
                return None
            issuer = self._issuer_of(current)
            if issuer is None:
                return (
                    f"{_subject(current)}: issuer {current.issuer.rfc4514_string()} is not trusted"
                )
            current = issuer
        return "certificate chain too long"

    def _issuer_of(self, cert: x509.Certificate) -> x509.Certificate | None:
        for candidate in self.certificates:
            if candidate.subject != cert.issuer:
                continue
            try:
                constraints = candidate.extensions.get_extension_for_class(x509.BasicConstraints)
                if not constraints.value.ca:
                    continue
            except x509.ExtensionNotFound:
                pass
            try:
                cert.verify_directly_issued_by(candidate)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
            return candidate
        return None


def _validity_problem(cert: x509.Certificate, at: dt.datetime) -> str | None:
    if at > cert.not_valid_after_utc:
        return f"certificate expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if at < cert.not_valid_before_utc:
        return f"certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    return None


def _subject(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


# --- signing ----------------------------------------------------------------------------------


def _now_dt() -> str:
    """Digital Signature DateTime as dcmsign writes it: seconds, microseconds, UTC offset."""
    now = dt.datetime.now().astimezone()
    offset = now.strftime("%z") or "+0000"
    return now.strftime("%Y%m%d%H%M%S.%f") + offset


def _parse_dt(value: str) -> dt.datetime | None:
    text = value.strip()
    base, zone = text, ""
    for sign in "+-":
        if sign in text[8:]:
            index = text.rindex(sign)
            base, zone = text[:index], text[index:]
    fraction = ""
    if "." in base:
        base, fraction = base.split(".", 1)
    base = (base + "0101000000")[:14] if len(base) >= 4 else ""
    if not base:
        return None
    try:
        moment = dt.datetime.strptime(base, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    if fraction.isdigit():
        moment = moment.replace(microsecond=int((fraction + "000000")[:6]))
    if len(zone) == 5 and zone[1:].isdigit():
        delta = dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:]))
        moment = moment.replace(tzinfo=dt.timezone(delta if zone[0] == "+" else -delta))
    else:
        moment = moment.astimezone()
    return moment


def locate_item(ds: Dataset, location: str | None) -> Dataset:
    """The data set or sequence item at ``location`` (``ContentSequence[0]``,
    ``(0040,a730)[1].ContentSequence[0]``); the data set itself when empty."""
    if not location:
        return ds
    current = ds
    for part in location.split("."):
        name, _, rest = part.strip().partition("[")
        if not rest.endswith("]") or not rest[:-1].isdigit():
            raise SignatureError(f"item location {location!r}: use Keyword[index] parts")
        index = int(rest[:-1])
        try:
            if name.startswith("("):
                group, element = name.strip("()").split(",")
                tag = Tag(int(group, 16), int(element, 16))
            else:
                tag = Tag(name)
        except (ValueError, TypeError) as exc:
            raise SignatureError(f"item location {location!r}: unknown attribute {name!r}") from exc
        if tag not in current or current[tag].VR != "SQ":
            raise SignatureError(f"item location {location!r}: {name} is not a sequence here")
        items = current[tag].value
        if index >= len(items):
            raise SignatureError(f"item location {location!r}: {name} has {len(items)} items")
        current = items[index]
    return current


def _allocate_mac_id(target: Dataset) -> int:
    used: set[int] = set()
    for tag in (DIGITAL_SIGNATURES_SEQUENCE, MAC_PARAMETERS_SEQUENCE):
        if tag in target:
            for item in target[tag].value:
                if MAC_ID_NUMBER in item:
                    used.add(int(item[MAC_ID_NUMBER].value))
    for candidate in range(65536):
        if candidate not in used:
            return candidate
    raise SignatureError("all MAC ID numbers are in use")


def sign_dataset(
    ds: Dataset,
    key: PrivateKey,
    cert: x509.Certificate,
    *,
    mac: str = DEFAULT_MAC,
    profile: str | None = None,
    location: str | None = None,
    transfer_syntax: str | None = None,
) -> str:
    """Add a signature over every signable attribute of ``ds`` (or of the item at
    ``location``); returns the Digital Signature UID."""
    mac = mac.upper()
    if mac not in MAC_ALGORITHMS:
        raise SignatureError(f"MAC algorithm {mac!r} is not one of {', '.join(MAC_ALGORITHMS)}")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise SignatureError("the certificate does not belong to the private key")
    if profile is not None:
        if profile not in PROFILES:
            raise SignatureError(f"profile {profile!r} is not one of {', '.join(PROFILES)}")
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SignatureError(f"the {profile} RSA profile needs an RSA key")
        if profile != "base" and location:
            raise SignatureError(f"the {profile} RSA profile signs the main data set only")
    target = locate_item(ds, location)
    if profile in ("creator", "authorization"):
        missing = [
            f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in _PROFILE_REQUIRED_TAGS if t not in target
        ]
        if missing:
            raise SignatureError(f"the {profile} RSA profile needs {', '.join(missing)}")
    if transfer_syntax is None:
        transfer_syntax = source_transfer_syntax(ds)
    mac_ts = mac_transfer_syntax(transfer_syntax)
    raw_le = transfer_syntax != ExplicitVRBigEndian

    mac_id = _allocate_mac_id(target)
    sig_item = Dataset()
    sig_item.add_new(MAC_ID_NUMBER, "US", mac_id)
    sig_item.add_new(0x04000100, "UI", generate_uid())
    sig_item.add_new(0x04000105, "DT", _now_dt())
    sig_item.add_new(0x04000110, "CS", CERTIFICATE_TYPE)
    sig_item.add_new(CERTIFICATE_OF_SIGNER, "OB", cert.public_bytes(serialization.Encoding.DER))
    digest, signed = compute_mac(target, sig_item, mac, mac_ts, None, raw_little_endian=raw_le)
    sig_item.add_new(SIGNATURE, "OB", _sign_digest(key, mac, digest))

    mac_item = Dataset()
    mac_item.add_new(MAC_ID_NUMBER, "US", mac_id)
    mac_item.add_new(0x04000010, "UI", mac_ts)
    mac_item.add_new(0x04000015, "CS", mac)
    mac_item.add_new(0x04000020, "AT", signed)
    for tag, item in ((MAC_PARAMETERS_SEQUENCE, mac_item), (DIGITAL_SIGNATURES_SEQUENCE, sig_item)):
        if tag in target:
            target[tag].value.append(item)
        else:
            target.add_new(tag, "SQ", Sequence([item]))
    return str(sig_item[0x04000100].value)


def sign_file(
    source: Path,
    destination: Path,
    key_path: Path,
    cert_path: Path,
    *,
    mac: str = DEFAULT_MAC,
    profile: str | None = None,
    location: str | None = None,
    passphrase: bytes | None = None,
) -> str:
    """Sign a Part 10 file into ``destination`` (same transfer syntax); returns the UID."""
    key = load_private_key(key_path, passphrase)
    certs = load_certificates(cert_path)
    if not certs:
        raise SignatureError(f"{cert_path}: no certificate")
    ds = pydicom.dcmread(source, force=True)
    uid = sign_dataset(ds, key, certs[0], mac=mac, profile=profile, location=location)
    from appliance.fileio import atomic_write_bytes

    buffer = DicomBytesIO()
    try:
        # A Part 10 file (preamble, DICM, complete File Meta) whatever the input had.
        ds.save_as(buffer, enforce_file_format=True)
    except (AttributeError, ValueError):
        buffer = DicomBytesIO()
        ds.save_as(buffer, enforce_file_format=False)
    atomic_write_bytes(Path(destination), buffer.getvalue())
    return uid


# --- verification ---------------------------------------------------------------------------


@dataclass
class SignatureResult:
    """One signature's verification."""

    location: str
    uid: str
    status: str
    reason: str = ""
    mac_algorithm: str = ""
    mac_transfer_syntax: str = ""
    datetime: str = ""
    signer: str = ""
    signer_issuer: str = ""
    signed_tags: int = 0
    legacy_format: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def signature_containers(ds: Dataset, location: str = "") -> Iterator[tuple[str, Dataset]]:
    """Every data set or item holding a Digital Signatures Sequence, depth first, with its
    location (``""`` for the main data set); skips the Original Attributes Sequence, whose
    signatures were made over content that has since changed (as dcmsign does)."""
    if DIGITAL_SIGNATURES_SEQUENCE in ds:
        yield location, ds
    for key in ds.keys():
        tag = int(key)
        if tag in (
            DIGITAL_SIGNATURES_SEQUENCE,
            MAC_PARAMETERS_SEQUENCE,
            ORIGINAL_ATTRIBUTES_SEQUENCE,
        ):
            continue
        raw = ds.get_item(tag)
        if raw is None or _element_vr(ds, tag, raw) != "SQ":
            continue
        name = pydicom.datadict.keyword_for_tag(tag) or f"({tag >> 16:04x},{tag & 0xFFFF:04x})"
        for index, item in enumerate(ds[tag].value):
            prefix = f"{location}." if location else ""
            yield from signature_containers(item, f"{prefix}{name}[{index}]")


def _verify_one(
    container: Dataset,
    sig_item: Dataset,
    location: str,
    trust: TrustStore,
    raw_little_endian: bool,
) -> SignatureResult:
    uid = str(sig_item.get((0x0400, 0x0100)).value) if (0x0400, 0x0100) in sig_item else ""
    result = SignatureResult(location=location or "main data set", uid=uid, status=INVALID)
    if (0x0400, 0x0105) in sig_item:
        result.datetime = str(sig_item[0x04000105].value)
    mac_id = sig_item.get(MAC_ID_NUMBER)
    mac_item = None
    if mac_id is not None and MAC_PARAMETERS_SEQUENCE in container:
        for item in container[MAC_PARAMETERS_SEQUENCE].value:
            if MAC_ID_NUMBER in item and item[MAC_ID_NUMBER].value == mac_id.value:
                mac_item = item
                break
    if mac_item is None:
        result.reason = "no MAC Parameters item with this MAC ID Number"
        return result
    result.mac_algorithm = str(mac_item.get("MACAlgorithm", "")).strip()
    result.mac_transfer_syntax = str(mac_item.get("MACCalculationTransferSyntaxUID", "")).strip()
    if result.mac_algorithm not in MAC_ALGORITHMS:
        result.reason = f"unsupported MAC algorithm {result.mac_algorithm!r}"
        return result
    if 0x04000020 not in mac_item or not mac_item[0x04000020].value:
        result.reason = "no Data Elements Signed"
        return result
    signed_value = mac_item[0x04000020].value
    # One tag reads as a BaseTag, several as a MultiValue.
    tags = [int(t) for t in ([signed_value] if isinstance(signed_value, int) else signed_value)]
    result.signed_tags = len(tags)
    if CERTIFICATE_OF_SIGNER not in sig_item or SIGNATURE not in sig_item:
        result.reason = "no Certificate of Signer or no Signature"
        return result
    try:
        # An odd-length DER certificate got a pad byte as an OB value.
        cert = x509.load_der_x509_certificate(
            _der_sequence(bytes(sig_item[CERTIFICATE_OF_SIGNER].value))
        )
    except ValueError:
        result.reason = "Certificate of Signer is not an X.509 certificate"
        return result
    result.signer = _subject(cert)
    result.signer_issuer = cert.issuer.rfc4514_string()
    signature = bytes(sig_item[SIGNATURE].value)
    try:
        digest, _ = compute_mac(
            container,
            sig_item,
            result.mac_algorithm,
            result.mac_transfer_syntax,
            tags,
            raw_little_endian=raw_little_endian,
        )
    except SignatureError as exc:
        result.reason = str(exc)
        return result
    if not _verify_digest(cert.public_key(), result.mac_algorithm, digest, signature):
        result.reason = "signature does not match the signed attributes"
        return result
    # The mathematics hold; now whether the signer can be trusted.
    signed_at = _parse_dt(result.datetime) if result.datetime else None
    if signed_at is None:
        result.status = UNTRUSTWORTHY
        result.reason = "Digital Signature DateTime missing or invalid"
        return result
    problem = _validity_problem(cert, signed_at)
    if problem:
        result.status = UNTRUSTWORTHY
        result.reason = f"at signing time: {problem}"
        return result
    problem = trust.check(cert)
    if problem:
        result.status = UNTRUSTWORTHY
        result.reason = problem
        return result
    result.status = VALID
    return result


def verify_dataset(ds: Dataset, trust: TrustStore) -> list[SignatureResult]:
    """Every signature in ``ds`` (main data set and items), each verified."""
    results: list[SignatureResult] = []
    raw_le = source_transfer_syntax(ds) != ExplicitVRBigEndian
    for location, container in signature_containers(ds):
        for sig_item in container[DIGITAL_SIGNATURES_SEQUENCE].value:
            try:
                results.append(_verify_one(container, sig_item, location, trust, raw_le))
            except Exception as exc:  # noqa: BLE001 - a malformed signature is "invalid", never a crash
                results.append(
                    SignatureResult(
                        location=location or "main data set",
                        uid="",
                        status=INVALID,
                        reason=f"cannot verify: {exc}",
                    )
                )
    return results


def verify_file(path: Path, trust: TrustStore) -> list[SignatureResult]:
    ds = pydicom.dcmread(path, force=True)
    return verify_dataset(ds, trust)


def overall(results: Iterable[SignatureResult]) -> str:
    """One state for an object: none, valid, untrustworthy, or invalid (worst wins)."""
    states = {r.status for r in results}
    if not states:
        return NONE
    if INVALID in states:
        return INVALID
    if UNTRUSTWORTHY in states:
        return UNTRUSTWORTHY
    return VALID


def combine(states: Iterable[str]) -> str | None:
    """One state for several objects (a study): the common state, or mixed; None if empty."""
    distinct = set(states)
    if not distinct:
        return None
    if len(distinct) == 1:
        return distinct.pop()
    return MIXED


# --- verification on receipt (optional policy) ---------------------------------------------

_STATE_TABLE = """
CREATE TABLE IF NOT EXISTS signature_states (
    sop_instance_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    checked_at REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS signature_states_study ON signature_states(study_uid);
"""


def file_state(path: Path, trust: TrustStore) -> tuple[str, str]:
    """An archived file's signature state and a one-line detail (the first problem)."""
    try:
        results = verify_file(path, trust)
    except Exception as exc:  # noqa: BLE001 - an unreadable file cannot be judged: invalid
        return INVALID, f"cannot read: {exc}"
    state = overall(results)
    detail = next((f"{r.location}: {r.reason}" for r in results if r.status == state), "")
    if state == VALID:
        detail = f"{len(results)} valid signature{'s' if len(results) != 1 else ''}"
    return state, detail


class ReceiptVerifier:
    """Verifies received instances after they are stored and records their signature state
    in the archive index (table ``signature_states``), never touching the C-STORE: the
    storage listener only queues, and a thread of its own hashes and checks."""

    def __init__(self, data_dir: Path, *, queue_size: int = 10_000) -> None:
        import queue
        import sqlite3
        import threading

        from appliance.archive import INDEX_FILE

        self.data_dir = Path(data_dir)
        self._queue: queue.Queue[tuple[str, str, str] | None] = queue.Queue(queue_size)
        self._db = sqlite3.connect(
            self.data_dir / INDEX_FILE, timeout=30, check_same_thread=False, isolation_level=None
        )
        self._db.executescript(_STATE_TABLE)
        self._thread = threading.Thread(target=self._run, name="signature-verify", daemon=True)
        self._thread.start()

    def on_stored(self, info: dict[str, Any]) -> None:
        """Storage listener: queue the stored file (dropped when the queue is full)."""
        import queue

        if info.get("kept_existing"):
            return
        try:
            self._queue.put_nowait(
                (str(info["path"]), str(info["sop_instance_uid"]), info["study_instance_uid"] or "")
            )
        except queue.Full:
            LOG.warning("signature check queue full: %s not checked", info["sop_instance_uid"])

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            path, sop_instance_uid, study_uid = job
            try:
                # Trust is re-read for each file: a CA trusted a minute ago counts now.
                state, detail = file_state(Path(path), TrustStore.load(self.data_dir))
                self._db.execute(
                    "INSERT OR REPLACE INTO signature_states"
                    " (sop_instance_uid, study_uid, state, checked_at, detail)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (sop_instance_uid, study_uid, state, time.time(), detail),
                )
                if state in (INVALID, UNTRUSTWORTHY):
                    LOG.warning("received %s: signature %s (%s)", sop_instance_uid, state, detail)
            except Exception:
                LOG.exception("checking the signatures of %s failed", sop_instance_uid)
            finally:
                self._queue.task_done()

    def join(self) -> None:
        """Wait until every queued file is checked (tests)."""
        self._queue.join()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._db.close()


def attach_receipt_verification(
    server: Any, data_dir: Path, settings: Any
) -> ReceiptVerifier | None:
    """When ``signature_verify_on_receipt`` is on, a ReceiptVerifier listening to ``server``."""
    if not getattr(settings, "signature_verify_on_receipt", False):
        return None
    verifier = ReceiptVerifier(data_dir)
    server.add_storage_listener(verifier.on_stored)
    LOG.info("signatures of received objects are verified after storage")
    return verifier


def instance_states(db: Any, sop_instance_uids: Iterable[str]) -> dict[str, str]:
    """The recorded signature state of each listed instance that has one."""
    if not _has_state_table(db):
        return {}
    found: dict[str, str] = {}
    uids = list(sop_instance_uids)
    for start in range(0, len(uids), 500):
        chunk = uids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for uid, state in db.execute(
            "SELECT sop_instance_uid, state FROM signature_states"
            f" WHERE sop_instance_uid IN ({marks})",
            chunk,
        ):
            found[uid] = state
    return found


def study_states(db: Any, study_uids: Iterable[str]) -> dict[str, str]:
    """Per study: the signature state common to its checked instances still in the archive,
    or ``mixed``; studies with no checked instance are left out."""
    if not _has_state_table(db):
        return {}
    uids = list(study_uids)
    found: dict[str, str] = {}
    for start in range(0, len(uids), 500):
        chunk = uids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = db.execute(
            "SELECT g.study_uid, COUNT(DISTINCT g.state), MIN(g.state) FROM signature_states g"
            " JOIN instances i ON i.sop_instance_uid = g.sop_instance_uid"
            f" WHERE g.study_uid IN ({marks}) GROUP BY g.study_uid",
            chunk,
        )
        for study_uid, distinct, state in rows:
            found[study_uid] = state if distinct == 1 else MIXED
    return found


def _has_state_table(db: Any) -> bool:
    row = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='signature_states'"
    ).fetchone()
    return row is not None
