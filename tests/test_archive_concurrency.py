"""Two associations storing the same SOP Instance UID at the same moment."""

from __future__ import annotations

import threading

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from appliance.archive import Archive
from tests.factories import ct_dataset
from tests.scp_helpers import encode_dataset


def _store_concurrently(archive: Archive, uid: str, names: list[str]) -> list[bool]:
    encoded = [
        encode_dataset(ct_dataset(sop_instance_uid=uid, patient_name=name, rows=256, columns=256))
        for name in names
    ]
    barrier = threading.Barrier(len(names))
    kept_existing: list[bool] = []

    def store(blob: bytes) -> None:
        barrier.wait()
        outcome = archive.store_encoded(
            blob,
            sop_class_uid=CTImageStorage,
            sop_instance_uid=uid,
            transfer_syntax=ExplicitVRLittleEndian,
        )
        kept_existing.append(outcome.kept_existing)

    threads = [threading.Thread(target=store, args=(blob,)) for blob in encoded]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return kept_existing


@pytest.mark.parametrize("policy", ["keep-first", "overwrite"])
def test_simultaneous_duplicates_leave_index_and_file_describing_the_same_instance(
    tmp_path, policy
):
    archive = Archive(tmp_path, duplicate_policy=policy)
    names = [f"RACE^N{n}" for n in range(8)]
    for _ in range(5):
        uid = generate_uid()
        kept_existing = _store_concurrently(archive, uid, names)
        if policy == "keep-first":
            assert kept_existing.count(False) == 1
        else:
            assert not any(kept_existing)
        record = archive.instance(uid)
        assert record is not None
        on_disk = str(dcmread(record.path).PatientName)
        patient_id = dcmread(record.path).PatientID
        assert archive.patient(patient_id)["patient_name"] == on_disk
    archive.close()
