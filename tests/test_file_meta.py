"""The hand-encoded File Meta Information is what pydicom writes."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from appliance import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from appliance.archive import encode_file_meta


def pydicom_meta(sop_class: str, sop_instance: str, syntax: str, source_ae: str) -> bytes:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae
    buffer = BytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buffer.getvalue()


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "syntax", "source_ae"),
    [
        (CTImageStorage, "1.2.3.4", ExplicitVRLittleEndian, "STORESCU"),
        (CTImageStorage, "1.2.3.45", ImplicitVRLittleEndian, "ODD"),
        ("1.2.840.10008.5.1.4.1.1.7", "1." + "2" * 62, "1.2.840.10008.1.2.4.70", ""),
        ("1.2.840.10008.5.1.4.1.1.4", "9", "1.2.840.10008.1.2.5", "A" * 16),
    ],
)
def test_encode_file_meta_matches_pydicom(sop_class, sop_instance, syntax, source_ae, tmp_path):
    ours = encode_file_meta(sop_class, sop_instance, syntax, source_ae)
    assert ours == pydicom_meta(sop_class, sop_instance, syntax, source_ae)
    (tmp_path / "meta").write_bytes(ours)
    meta = read_file_meta_info(tmp_path / "meta")
    assert meta.MediaStorageSOPInstanceUID == sop_instance
    assert meta.TransferSyntaxUID == syntax
