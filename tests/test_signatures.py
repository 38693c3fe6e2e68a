"""DICOM digital signatures (PS3.15 Annex C): interop with DCMTK dcmsign both ways for every MAC
algorithm and profile, tampering, trust (untrusted CA, expired signer), item signatures,
implicit VR and encapsulated objects, the CLI, verification on receipt and preservation through
the archive and our send (DS-47, DS-48, DS-53, DS-55)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from appliance import ripemd160
from appliance import signatures as sig
from appliance.browse import StudyFilter, studies
from tests.factories import ct_dataset
from tests.peers import LOOPBACK, StoreSCP, appliance_cmd, dcmtk, run
from tests.tls_helpers import Issued, install_identity, make_ca, make_cert, write_pem

MACS = list(sig.MAC_ALGORITHMS)
DCMSIGN_MAC = {
    "RIPEMD160": "+mr",
    "SHA1": "+ms",
    "MD5": "+mm",
    "SHA256": "+m2",
    "SHA384": "+m3",
    "SHA512": "+m5",
}


class Keys:
    """A CA, an RSA signer it issued, and their PEM files."""

    def __init__(self, folder: Path, ca: Issued, signer: Issued) -> None:
        self.ca, self.signer = ca, signer
        self.ca_pem = write_pem(folder / "ca.pem", ca)
        self.cert_pem = write_pem(folder / "signer-cert.pem", signer)
        self.key_pem = write_pem(folder / "signer-key.pem", signer, key=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    ca = make_ca("Signature Test CA", rsa_bits=2048)
    return Keys(folder, ca, make_cert(ca, "Dr Signer", rsa_bits=2048))


@pytest.fixture(scope="module")
def trust(keys: Keys) -> sig.TrustStore:
    return sig.TrustStore([keys.ca.cert])


def sample(
    path: Path, *, transfer_syntax: str = ExplicitVRLittleEndian, private: bool = True
) -> Path:
    """A CT with nested sequences, an empty item, a private block; encapsulated for JPEG.

    A private data element unknown to the dictionaries becomes UN when the object travels in
    implicit VR, and a signature over it can no longer be checked (dcmsign agrees): objects
    meant for an implicit VR trip are made with ``private=False``."""
    ds = ct_dataset(rows=4, columns=4)
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "X", "99", "odd"
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "T-D3000", "SRT", "Chest"
    region.ModifierCodeSequence = Sequence([inner])
    ds.AnatomicRegionSequence = Sequence([region, Dataset()])
    ds.add_new(0x00090010, "LO", "ACME")
    if private:
        ds.add_new(0x00091010, "LO", "PRIV")
    if transfer_syntax == JPEGBaseline8Bit:
        ds.PixelData = encapsulate([b"\xff\xd8abc\xff\xd9", b"\xff\xd8defg\xff\xd9"])
        ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    implicit = transfer_syntax == ImplicitVRLittleEndian
    ds.save_as(path, implicit_vr=implicit, little_endian=True)
    return path


def dcmsign(*args: str) -> subprocess.CompletedProcess:
    return run([dcmtk("dcmsign"), *args], timeout=60)


def dcmsign_verify(path: Path, ca: Path | None, *extra: str) -> subprocess.CompletedProcess:
    return dcmsign("--verify", *extra, str(path), *(["+cf", str(ca)] if ca else []))


def dcmsign_sign(keys: Keys, source: Path, out: Path, *extra: str) -> None:
    result = dcmsign(
        "-pw", *extra, "+s", str(keys.key_pem), str(keys.cert_pem), str(source), str(out)
    )
    assert result.returncode == 0, result.stderr


def tamper(path: Path, out: Path) -> Path:
    ds = pydicom.dcmread(path)
    ds.PatientName = "SOMEONE^ELSE"
    ds.save_as(out)
    return out


def statuses(path: Path, trust: sig.TrustStore) -> list[tuple[str, str]]:
    return [(r.status, r.location) for r in sig.verify_file(path, trust)]


# --- RIPEMD-160 -------------------------------------------------------------------------------

RIPEMD_VECTORS = {
    b"": "9c1185a5c5e9fc54612808977ee8f548b2258d31",
    b"a": "0bdc9d2d256b3ee9daae347be6f4dc835a467ffe",
    b"abc": "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc",
    b"message digest": "5d0689ef49d2fae572b881b123a85ffa21595f36",
    b"abcdefghijklmnopqrstuvwxyz": "f71c27109c692c1b56bbdceb5b9d2865b3708dbc",
    b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq": (
        "12a053384a9c0c88e405a06c27dcf49ada62eb2b"
    ),
    b"1234567890" * 8: "9b752e45573d4b39f4dbd3323cab82bf63326bfb",
}


@pytest.mark.parametrize("message", list(RIPEMD_VECTORS), ids=lambda m: f"{len(m)}B")
def test_pure_python_ripemd160_matches_the_published_vectors(message):
    assert ripemd160.new(message, pure=True).hexdigest() == RIPEMD_VECTORS[message]
    hasher = ripemd160.PureRIPEMD160()
    for offset in range(0, len(message), 7):  # incremental updates across block borders
        hasher.update(message[offset : offset + 7])
    assert hasher.hexdigest() == RIPEMD_VECTORS[message]


def test_pure_python_ripemd160_million_a():
    digest = ripemd160.new(b"a" * 1_000_000, pure=True).hexdigest()
    assert digest == "52783243c1697bdbe16d37f97f68f08325dc1528"


# --- interop with dcmsign --------------------------------------------------------------------


def test_mac_byte_stream_is_the_one_dcmsign_hashes(keys, tmp_path):
    source = sample(tmp_path / "in.dcm")
    dump = tmp_path / "dump.bin"
    dcmsign_sign(keys, source, tmp_path / "signed.dcm", "+d", str(dump))
    ds = pydicom.dcmread(tmp_path / "signed.dcm")
    mac_item = ds[sig.MAC_PARAMETERS_SEQUENCE].value[0]
    ours = bytearray()
    sig.compute_mac(
        ds,
        ds[sig.DIGITAL_SIGNATURES_SEQUENCE].value[0],
        "RIPEMD160",
        ExplicitVRLittleEndian,
        [int(t) for t in mac_item.DataElementsSigned],
        dump=ours,
    )
    assert bytes(ours) == dump.read_bytes()


@pytest.mark.parametrize("mac", MACS)
def test_dcmsign_signatures_verify_with_ours_and_tampering_fails_both(mac, keys, trust, tmp_path):
    signed = tmp_path / "signed.dcm"
    dcmsign_sign(keys, sample(tmp_path / "in.dcm"), signed, DCMSIGN_MAC[mac])
    results = sig.verify_file(signed, trust)
    assert [(r.status, r.mac_algorithm) for r in results] == [(sig.VALID, mac)]

    changed = tamper(signed, tmp_path / "changed.dcm")
    assert statuses(changed, trust) == [(sig.INVALID, "main data set")]
    assert dcmsign_verify(changed, keys.ca_pem).returncode != 0


@pytest.mark.parametrize("mac", MACS)
@pytest.mark.parametrize("profile", [None, "base", "creator", "authorization"])
def test_our_signatures_verify_with_dcmsign(mac, profile, keys, trust, tmp_path):
    signed = tmp_path / "ours.dcm"
    sig.sign_file(
        sample(tmp_path / "in.dcm"), signed, keys.key_pem, keys.cert_pem, mac=mac, profile=profile
    )
    require = {"creator": ["+rc"], "authorization": ["+ru"]}.get(profile or "", [])
    result = dcmsign_verify(signed, keys.ca_pem, *require)
    assert result.returncode == 0, result.stderr
    assert "Signature Verification : OK" in result.stderr
    assert statuses(signed, trust) == [(sig.VALID, "main data set")]

    changed = tamper(signed, tmp_path / "changed.dcm")
    assert dcmsign_verify(changed, keys.ca_pem).returncode != 0
    assert statuses(changed, trust) == [(sig.INVALID, "main data set")]


@pytest.mark.parametrize(
    "transfer_syntax", [ImplicitVRLittleEndian, JPEGBaseline8Bit], ids=["implicit", "encapsulated"]
)
def test_implicit_and_encapsulated_objects_both_ways(transfer_syntax, keys, trust, tmp_path):
    source = sample(tmp_path / "in.dcm", transfer_syntax=transfer_syntax)
    theirs, ours = tmp_path / "theirs.dcm", tmp_path / "ours.dcm"
    dcmsign_sign(keys, source, theirs)
    assert statuses(theirs, trust) == [(sig.VALID, "main data set")]
    sig.sign_file(source, ours, keys.key_pem, keys.cert_pem)
    assert pydicom.dcmread(ours).file_meta.TransferSyntaxUID == transfer_syntax
    assert dcmsign_verify(ours, keys.ca_pem).returncode == 0


def test_item_signatures_both_ways_and_a_main_signature_over_them(keys, trust, tmp_path):
    source = sample(tmp_path / "in.dcm")
    theirs = tmp_path / "theirs.dcm"
    result = dcmsign(
        "-pw",
        "+si",
        str(keys.key_pem),
        str(keys.cert_pem),
        "AnatomicRegionSequence[0]",
        str(source),
        str(theirs),
    )
    assert result.returncode == 0, result.stderr
    assert statuses(theirs, trust) == [(sig.VALID, "AnatomicRegionSequence[0]")]

    ours = tmp_path / "ours.dcm"
    sig.sign_file(source, ours, keys.key_pem, keys.cert_pem, location="AnatomicRegionSequence[0]")
    both = tmp_path / "both.dcm"
    sig.sign_file(ours, both, keys.key_pem, keys.cert_pem, mac="SHA512")
    assert statuses(both, trust) == [
        (sig.VALID, "main data set"),
        (sig.VALID, "AnatomicRegionSequence[0]"),
    ]
    assert dcmsign_verify(both, keys.ca_pem).returncode == 0

    ds = pydicom.dcmread(both)
    ds.AnatomicRegionSequence[0].CodeMeaning = "Abdomen"
    ds.save_as(tmp_path / "changed.dcm")
    assert statuses(tmp_path / "changed.dcm", trust) == [
        (sig.INVALID, "main data set"),
        (sig.INVALID, "AnatomicRegionSequence[0]"),
    ]
    assert dcmsign_verify(tmp_path / "changed.dcm", keys.ca_pem).returncode != 0


def test_a_second_signature_leaves_the_first_valid(keys, trust, tmp_path):
    once, twice = tmp_path / "once.dcm", tmp_path / "twice.dcm"
    dcmsign_sign(keys, sample(tmp_path / "in.dcm"), once)
    sig.sign_file(once, twice, keys.key_pem, keys.cert_pem, mac="SHA384")
    ds = pydicom.dcmread(twice)
    assert [item.MACIDNumber for item in ds.MACParametersSequence] == [0, 1]
    assert [r.status for r in sig.verify_file(twice, trust)] == [sig.VALID, sig.VALID]
    assert dcmsign_verify(twice, keys.ca_pem).returncode == 0


# --- trust ------------------------------------------------------------------------------------


def test_signer_from_an_untrusted_ca_is_untrustworthy_not_invalid(keys, tmp_path):
    signed = tmp_path / "signed.dcm"
    sig.sign_file(sample(tmp_path / "in.dcm"), signed, keys.key_pem, keys.cert_pem)
    other = make_ca("Some Other CA")
    results = sig.verify_file(signed, sig.TrustStore([other.cert]))
    assert [r.status for r in results] == [sig.UNTRUSTWORTHY]
    assert "not trusted" in results[0].reason
    assert dcmsign_verify(signed, None).returncode != 0


def test_expired_signer_is_untrustworthy(keys, tmp_path):
    expired = make_cert(keys.ca, "Expired Signer", expired=True, rsa_bits=2048)
    key = write_pem(tmp_path / "k.pem", expired, key=True)
    cert = write_pem(tmp_path / "c.pem", expired)
    signed = tmp_path / "signed.dcm"
    sig.sign_file(sample(tmp_path / "in.dcm"), signed, key, cert)
    results = sig.verify_file(signed, sig.TrustStore([keys.ca.cert]))
    assert [r.status for r in results] == [sig.UNTRUSTWORTHY]
    assert "expired" in results[0].reason
    assert dcmsign_verify(signed, keys.ca_pem).returncode != 0


def test_intermediate_ca_chains_to_the_trusted_root(tmp_path):
    root = make_ca("Root", rsa_bits=2048)
    middle = make_ca("Intermediate", issuer=root, rsa_bits=2048)
    signer = make_cert(middle, "Signer", rsa_bits=2048)
    signed = tmp_path / "signed.dcm"
    sig.sign_file(
        sample(tmp_path / "in.dcm"),
        signed,
        write_pem(tmp_path / "k.pem", signer, key=True),
        write_pem(tmp_path / "c.pem", signer),
    )
    assert statuses(signed, sig.TrustStore([root.cert, middle.cert]))[0][0] == sig.VALID
    assert statuses(signed, sig.TrustStore([root.cert]))[0][0] == sig.UNTRUSTWORTHY


def test_ec_signer_works_without_a_profile_and_is_refused_by_the_rsa_profiles(tmp_path):
    ca = make_ca("EC CA")
    signer = make_cert(ca, "EC Signer")
    key, cert = (
        write_pem(tmp_path / "k.pem", signer, key=True),
        write_pem(tmp_path / "c.pem", signer),
    )
    signed = tmp_path / "signed.dcm"
    sig.sign_file(sample(tmp_path / "in.dcm"), signed, key, cert, mac="SHA256")
    assert statuses(signed, sig.TrustStore([ca.cert])) == [(sig.VALID, "main data set")]
    assert dcmsign_verify(signed, write_pem(tmp_path / "ca.pem", ca)).returncode == 0
    with pytest.raises(sig.SignatureError, match="RSA"):
        sig.sign_file(tmp_path / "in.dcm", tmp_path / "x.dcm", key, cert, profile="base")


def test_certificate_of_another_key_is_refused(keys, tmp_path):
    other = make_cert(keys.ca, "Other", rsa_bits=2048)
    with pytest.raises(sig.SignatureError, match="does not belong"):
        sig.sign_file(
            sample(tmp_path / "in.dcm"),
            tmp_path / "out.dcm",
            keys.key_pem,
            write_pem(tmp_path / "other.pem", other),
        )
    assert not (tmp_path / "out.dcm").exists()


# --- CLI --------------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    return run(appliance_cmd(*args), timeout=60)


def test_cli_sign_and_verify_exit_codes(keys, tmp_path, data_dir):
    source = sample(tmp_path / "in.dcm")
    out = tmp_path / "out.dcm"
    result = cli(
        "sign", str(source), str(out), "--key", str(keys.key_pem), "--cert", str(keys.cert_pem),
        "--mac", "sha384", "--profile", "creator", "--data-dir", str(data_dir),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert pydicom.dcmread(out).MACParametersSequence[0].MACAlgorithm == "SHA384"

    # Not trusted yet: untrustworthy (exit 3); --trust for this run: valid (exit 0).
    result = cli("verify", str(out), "--data-dir", str(data_dir))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "UNTRUSTWORTHY" in result.stdout
    result = cli("verify", str(out), "--trust", str(keys.ca_pem), "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "VALID" in result.stdout and "Dr Signer" in result.stdout

    # Trusted through DATA/tls/trusted.
    install_identity(data_dir, keys.signer, [keys.ca])
    result = cli("verify", str(out), "--json", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"state": "valid"' in result.stdout

    changed = tamper(out, tmp_path / "changed.dcm")
    result = cli("verify", str(changed), "--data-dir", str(data_dir))
    assert result.returncode == 1 and "INVALID" in result.stdout
    result = cli("verify", str(source), "--data-dir", str(data_dir))
    assert result.returncode == 1 and "no digital signatures" in result.stdout


def test_cli_encrypted_key_needs_the_right_passphrase(keys, tmp_path):
    source = sample(tmp_path / "in.dcm")
    key = write_pem(tmp_path / "enc.pem", keys.signer, key=True, passphrase=b"correct horse")
    (tmp_path / "wrong").write_text("wrong\n")
    (tmp_path / "right").write_text("correct horse\n")
    out = tmp_path / "out.dcm"
    base = ["sign", str(source), str(out), "--key", str(key), "--cert", str(keys.cert_pem)]
    result = run(appliance_cmd(*base), timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "passphrase" in result.stderr
    result = cli(*base, "--passphrase-file", str(tmp_path / "wrong"))
    assert result.returncode == 1 and "passphrase" in result.stderr
    assert not out.exists()
    result = cli(*base, "--passphrase-file", str(tmp_path / "right"))
    assert result.returncode == 0, result.stderr
    assert dcmsign_verify(out, keys.ca_pem).returncode == 0


# --- archive: preservation (DS-53) and verification on receipt ------------------------------


def test_signed_object_survives_storage_and_send_and_is_flagged_on_receipt(
    keys, tmp_path, daemon_factory
):
    good = tmp_path / "good.dcm"
    dcmsign_sign(keys, sample(tmp_path / "in.dcm", private=False), good, "+m5")
    bad = tamper(good, tmp_path / "bad.dcm")
    bad_ds = pydicom.dcmread(bad)
    bad_ds.SOPInstanceUID = bad_ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    bad_ds.save_as(bad)

    daemon = daemon_factory(tmp_path / "data")
    install_identity(daemon.data_dir, keys.signer, [keys.ca])
    daemon.configure(signature_verify_on_receipt=True)
    daemon.start()
    result = run(
        [dcmtk("storescu"), "-xi", LOOPBACK, str(daemon.port), "-aec", daemon.ae_title, str(good)]
    )
    assert result.returncode == 0, result.stderr
    study_uid = str(pydicom.dcmread(good).StudyInstanceUID)
    index = daemon.data_dir / "index.sqlite"
    state = _wait_for_state(index, study_uid, "valid")
    assert state == "valid"

    # Our send from the archive to DCMTK storescp: dcmsign still says OK.
    archived = [p for p in (daemon.data_dir / "archive").rglob("*") if p.is_file()]
    assert len(archived) == 1
    assert dcmsign_verify(archived[0], keys.ca_pem).returncode == 0
    scp = StoreSCP(tmp_path / "scp")
    try:
        assert (
            daemon.cli(
                "node",
                "add",
                "pacs",
                "--ae-title",
                scp.ae_title,
                "--host",
                LOOPBACK,
                "--port",
                str(scp.port),
            ).returncode
            == 0
        )
        sent = daemon.cli("send", "pacs", str(archived[0]))
        assert sent.returncode == 0, sent.stdout + sent.stderr
    finally:
        scp.stop()
    (arrived,) = scp.files()
    result = dcmsign_verify(arrived, keys.ca_pem)
    assert result.returncode == 0, result.stderr
    assert len(pydicom.dcmread(arrived).DigitalSignaturesSequence) == 1

    # A tampered instance of the same study is stored (status 0000) and flags the study.
    result = run([dcmtk("storescu"), LOOPBACK, str(daemon.port), "-aec", daemon.ae_title, str(bad)])
    assert result.returncode == 0, result.stderr
    assert _wait_for_state(index, study_uid, "mixed") == "mixed"
    daemon.stop()


def _wait_for_state(index: Path, study_uid: str, wanted: str, timeout: float = 20) -> str | None:
    import time

    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        found = {s["study_uid"]: s for s in studies(index, StudyFilter())}
        state = found.get(study_uid, {}).get("signatures")
        if state == wanted:
            return state
        time.sleep(0.2)
    return state
