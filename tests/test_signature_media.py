"""Signatures survive a burned disc (DS-53): a signed object copied onto a STD-GEN-CD file-set,
explicit VR as stored or converted from implicit VR, still verifies with DCMTK dcmsign and ours."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from appliance import signatures as sig
from appliance.archive import Archive
from appliance.fileset import CD_BYTES, build_fileset, plan_discs
from tests.test_fileset import referenced
from tests.test_signatures import Keys, dcmsign_sign, dcmsign_verify, sample
from tests.tls_helpers import make_ca, make_cert


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    ca = make_ca("Media Signature CA", rsa_bits=2048)
    return Keys(folder, ca, make_cert(ca, "Dr Media", rsa_bits=2048))


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_signed_object_still_verifies_on_the_disc(keys: Keys, tmp_path: Path, transfer_syntax):
    source = sample(tmp_path / "plain.dcm", transfer_syntax=transfer_syntax, private=False)
    signed = tmp_path / "signed.dcm"
    dcmsign_sign(keys, source, signed)
    ds = pydicom.dcmread(signed)
    archive = Archive(tmp_path / "data")
    try:
        archive.store_encoded(
            signed.read_bytes()[132 + _meta_length(signed) :],
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            transfer_syntax=transfer_syntax,
        )
        (disc,) = plan_discs(archive, [str(ds.StudyInstanceUID)], CD_BYTES)
        built = build_fileset(disc, archive, tmp_path / "disc")
    finally:
        archive.close()
    ((path, _record),) = referenced(built.folder)
    copy = pydicom.dcmread(path)
    assert copy.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (0xFFFA, 0xFFFA) in copy
    result = dcmsign_verify(path, keys.ca_pem)
    assert result.returncode == 0, result.stdout + result.stderr
    trust = sig.TrustStore([keys.ca.cert])
    assert [r.status for r in sig.verify_file(path, trust)] == ["valid"]


def _meta_length(path: Path) -> int:
    """Length of the File Meta group after the preamble, from its group length element."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    # (0002,0000) UL 4 <value>: 12 bytes, the value counts what follows it.
    return 12 + int.from_bytes(data[140:144], "little")
