"""Archive.recover(): the index and the files brought back in step after a crash."""

from __future__ import annotations

import os

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from appliance.archive import Archive, StoreRefused, relative_path_for
from tests.factories import ct_dataset
from tests.scp_helpers import encode_dataset, files_under


def _store(archive: Archive, **kwargs: object) -> str:
    ds = ct_dataset(**kwargs)  # type: ignore[arg-type]
    archive.store_encoded(
        encode_dataset(ds),
        sop_class_uid=CTImageStorage,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax=ExplicitVRLittleEndian,
        source_ae="RECOVERY",
    )
    return str(ds.SOPInstanceUID)


def test_recover_repairs_every_kind_of_crash_leftover(tmp_path):
    archive = Archive(tmp_path)
    kept, orphan, lost = (_store(archive, instance_number=n) for n in (1, 2, 3))
    root = tmp_path / "archive"

    # A crash between rename and index commit: a file without its row.
    archive._db.execute("DELETE FROM instances WHERE sop_instance_uid=?", (orphan,))
    # A file gone behind the index's back.
    (root / relative_path_for(lost)).unlink()
    # A crash in the middle of a write: the temporary file.
    partial = root / "ab" / "cd" / ".something.dcm.123.abc.part"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"\x00" * 100)
    # Something unreadable that is not ours.
    junk = root / "ef" / "01" / ("f" * 64 + ".dcm")
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(os.urandom(64))
    archive.close()

    archive = Archive(tmp_path)
    summary = archive.recover()
    assert summary == {"removed_partial": 1, "indexed": 1, "dropped": 1}
    assert {record.sop_instance_uid for record in archive.instances()} == {kept, orphan}
    assert not partial.exists()
    assert not junk.exists()
    assert junk.with_suffix(".unreadable").exists()
    record = archive.instance(orphan)
    assert record is not None and record.path.is_file()
    assert record.transfer_syntax == ExplicitVRLittleEndian
    # Running it again finds nothing left to do.
    assert archive.recover() == {"removed_partial": 0, "indexed": 0, "dropped": 0}
    assert not [p for p in files_under(root) if p.name.endswith(".part")]
    archive.close()


def test_store_leaves_no_partial_file_when_the_write_fails(tmp_path, monkeypatch):
    archive = Archive(tmp_path)
    ds = ct_dataset()

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StoreRefused) as refused:
        archive.store_encoded(
            encode_dataset(ds),
            sop_class_uid=CTImageStorage,
            sop_instance_uid=ds.SOPInstanceUID,
            transfer_syntax=ExplicitVRLittleEndian,
        )
    monkeypatch.undo()
    assert refused.value.status == 0xA700
    assert files_under(tmp_path / "archive") == set()
    assert archive.count() == 0
    archive.close()
