"""The Basic Profile over a corpus: pydicom's test files plus generated objects with PHI planted in
every attribute of Table E.1-1, in nested sequences, in private tags and in dates.

The leak check is written apart from the engine: it knows only the planted values and looks for
them in the encoded output bytes and in every element value at every depth (file meta too).
dicom3tools' dciodvfy must find no more errors in the output than in the input, UID references
must stay consistent across a 3-series study, and a re-run (also after reopening the store) maps
to the same UIDs and pseudonym.
"""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from appliance.anonymize import BASIC, Anonymizer
from appliance.deid_table import ROWS
from appliance.pseudonyms import PseudonymStore
from tests.factories import ct_dataset

DCIODVFY = "/usr/bin/dciodvfy"
CORPUS_FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "rtstruct.dcm",
    "waveform_ecg.dcm",
    "JPEG2000.dcm",
]
PLANTED_UID_ROOT = "1.2.826.0.1.3680043.10.99"


@pytest.fixture
def store(tmp_path: Path):
    s = PseudonymStore(tmp_path / "data")
    yield s
    s.close()


# --- the independent leak check ------------------------------------------------------------


def _values(ds: Dataset):
    """Every element value at every depth, as text and as bytes."""
    datasets = [ds]
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        datasets.append(meta)
    while datasets:
        current = datasets.pop()
        for elem in current:
            if elem.VR == "SQ":
                datasets.extend(elem.value or [])
                continue
            value = elem.value
            if isinstance(value, bytes | bytearray):
                yield bytes(value)
            else:
                yield str(value).encode("utf-8", "replace")


def leaks(ds: Dataset, planted: set[str]) -> set[str]:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=False)
    encoded = buffer.getvalue()
    found = {p for p in planted if p.encode() in encoded}
    for value in _values(ds):
        found |= {p for p in planted if p.encode() in value}
    return found


# --- planting ---------------------------------------------------------------------------------


def _tag(tag_text: str) -> int:
    return int(tag_text[1:5] + tag_text[6:10], 16)


def plant(ds: Dataset, seed: int) -> set[str]:
    """Put a distinct identifying value into every plantable attribute of Table E.1-1 (plus
    private tags, overlays, unlisted dates and nested sequences); returns what was planted."""
    planted: set[str] = set()
    for i, row in enumerate(ROWS):
        if "x" in row.tag or "g" in row.tag:
            continue
        tag = _tag(row.tag)
        if tag >> 16 in (0x0000, 0x0002) or tag == 0x00080016:
            continue
        vr = dictionary_VR(tag).split(" or ")[0]
        marker = f"PHI{seed}X{i:03d}"
        if vr == "SQ":
            inner = Dataset()
            inner.PersonName = f"{marker}^INNER"
            inner.ReferencedSOPInstanceUID = f"{PLANTED_UID_ROOT}8.{seed}.{i}"
            inner.add_new(0x00410010, "LO", "ACME PRIVATE")
            inner.add_new(0x00411001, "LO", f"{marker}P")
            item = Dataset()
            item.PersonName = f"{marker}^OUTER"
            item.ReferencedImageSequence = Sequence([inner])
            ds.add_new(tag, "SQ", Sequence([item]))
            planted |= {marker, f"{PLANTED_UID_ROOT}8.{seed}.{i}"}
        elif vr == "UI":
            if tag in ds:
                planted.add(str(ds[tag].value))
                continue
            uid = f"{PLANTED_UID_ROOT}9.{seed}.{i}"
            ds.add_new(tag, vr, uid)
            planted.add(uid)
        elif vr in ("PN", "LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE"):
            ds.add_new(tag, vr, marker if vr in ("CS", "AE", "SH") else f"{marker} value")
            planted.add(marker)
        elif vr == "DA":
            date = f"1873{i % 12 + 1:02d}{i % 28 + 1:02d}"
            ds.add_new(tag, vr, date)
            planted.add(date)
        elif vr == "DT":
            date = f"1873{i % 12 + 1:02d}{i % 28 + 1:02d}"
            ds.add_new(tag, vr, date + "101500")
            planted.add(date)
        elif vr in ("OB", "OW", "UN"):
            ds.add_new(tag, vr, f"{marker}Z".encode())
            planted.add(marker)
    # Private block, overlay, curve, an unlisted date, a nested private.
    ds.add_new(0x00330010, "LO", "VENDOR")
    ds.add_new(0x00331001, "LO", f"PHI{seed}PRIV")
    ds.add_new(0x60003000, "OW", f"PHI{seed}OVLY".encode())
    ds.add_new(0x60004000, "LT", f"PHI{seed}OVLC")
    ds.add_new(0x50003000, "OW", f"PHI{seed}CURV".encode())
    ds.InstanceCreationDate = "18730704"
    planted |= {f"PHI{seed}PRIV", f"PHI{seed}OVLY", f"PHI{seed}OVLC", f"PHI{seed}CURV"}
    planted.add("18730704")
    return planted


def corpus() -> list[tuple[str, Dataset]]:
    out = []
    for name in CORPUS_FILES:
        path = get_testdata_file(name)
        if path is None:
            continue
        out.append((name, dcmread(path, force=True)))
    ds = ct_dataset(patient_id="MRN424242", patient_name="GENERATED^PATIENT")
    out.append(("generated-ct", ds))
    return out


@pytest.mark.parametrize("name,ds", corpus(), ids=lambda v: v if isinstance(v, str) else "")
def test_no_planted_value_survives_the_basic_profile(name: str, ds: Dataset, store) -> None:
    planted = plant(ds, seed=7)
    for keyword in ("PatientName", "PatientID"):
        value = str(ds.get(keyword, "") or "")
        if len(value) >= 3:
            planted.add(value)
    result = Anonymizer(BASIC, store).anonymize(ds)
    assert leaks(result.dataset, planted) == set()
    # The walker itself finds what it should: on the input everything is there.
    assert leaks(ds, planted) >= {p for p in planted if p.startswith("PHI")}


def _dciodvfy_errors(path: Path) -> int:
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return sum(1 for line in lines if line.startswith("Error"))


@pytest.mark.skipif(not Path(DCIODVFY).exists(), reason="dicom3tools missing")
@pytest.mark.parametrize("name,ds", corpus(), ids=lambda v: v if isinstance(v, str) else "")
def test_dciodvfy_no_worse_than_the_input(name: str, ds: Dataset, store, tmp_path: Path) -> None:
    source = tmp_path / "in.dcm"
    dcmwrite(source, ds, enforce_file_format=False)
    out = tmp_path / "out.dcm"
    dcmwrite(out, Anonymizer(BASIC, store).anonymize(ds).dataset, enforce_file_format=False)
    assert _dciodvfy_errors(out) <= _dciodvfy_errors(source), name


def three_series_study() -> list[Dataset]:
    study = generate_uid()
    frame = generate_uid()
    series = [generate_uid() for _ in range(3)]
    objects: list[Dataset] = []
    for s, count in ((0, 3), (1, 2), (2, 2)):
        for n in range(1, count + 1):
            ds = ct_dataset(
                patient_id="MRN555",
                patient_name="STUDY^PATIENT",
                study_uid=study,
                series_uid=series[s],
                instance_number=n,
                rows=8,
                columns=8,
            )
            ds.SeriesNumber = s + 1
            ds.FrameOfReferenceUID = frame
            ds.PositionReferenceIndicator = ""
            objects.append(ds)
    first, second = objects[:3], objects[3:5]
    for ds in second:
        ds.ReferencedImageSequence = Sequence(
            [_ref(target) for target in first]  # series 2 references series 1
        )
    for ds in objects[5:]:
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SourceImageSequence = Sequence([_ref(target) for target in second])
    return objects


def _ref(target: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = target.SOPClassUID
    item.ReferencedSOPInstanceUID = target.SOPInstanceUID
    return item


def test_uid_references_stay_consistent_across_a_three_series_study(store) -> None:
    objects = three_series_study()
    results = [Anonymizer(BASIC, store).anonymize(ds) for ds in objects]
    out = [r.dataset for r in results]
    new_of = {r.original_sop_instance_uid: r.sop_instance_uid for r in results}
    assert len(set(new_of.values())) == len(objects)
    assert len({d.StudyInstanceUID for d in out}) == 1
    assert out[0].StudyInstanceUID != objects[0].StudyInstanceUID
    assert len({d.SeriesInstanceUID for d in out}) == 3
    assert len({d.FrameOfReferenceUID for d in out}) == 1
    for src, dst in zip(objects, out, strict=True):
        assert (src.SeriesInstanceUID == objects[0].SeriesInstanceUID) == (
            dst.SeriesInstanceUID == out[0].SeriesInstanceUID
        )
        assert dst.file_meta.MediaStorageSOPInstanceUID == dst.SOPInstanceUID
        for keyword in ("ReferencedImageSequence", "SourceImageSequence"):
            for item_in, item_out in zip(src.get(keyword, []), dst.get(keyword, []), strict=True):
                assert item_out.ReferencedSOPInstanceUID == new_of[item_in.ReferencedSOPInstanceUID]
                assert item_out.ReferencedSOPClassUID == item_in.ReferencedSOPClassUID
    assert {d.PatientID for d in out} == {out[0].PatientID}
    assert re.fullmatch(r"ANON\d{6}", out[0].PatientID)


def test_rerun_maps_to_the_same_uids_and_pseudonym(tmp_path: Path) -> None:
    objects = three_series_study()
    other = ct_dataset(patient_id="MRN999", patient_name="OTHER^PATIENT")
    with PseudonymStore(tmp_path / "data") as first_store:
        first = [Anonymizer(BASIC, first_store).anonymize(ds).dataset for ds in objects]
        Anonymizer(BASIC, first_store).anonymize(other)
    # A new process: the store reopened from disk.
    with PseudonymStore(tmp_path / "data") as second_store:
        second = [Anonymizer(BASIC, second_store).anonymize(ds).dataset for ds in objects]
        third = Anonymizer(BASIC, second_store).anonymize(other).dataset
    for a, b in zip(first, second, strict=True):
        assert a.SOPInstanceUID == b.SOPInstanceUID
        assert a.StudyInstanceUID == b.StudyInstanceUID
        assert (a.PatientID, a.PatientName) == (b.PatientID, b.PatientName)
    assert third.PatientID != first[0].PatientID
    # Another store (another appliance) has another key: other UIDs.
    with PseudonymStore(tmp_path / "elsewhere") as foreign:
        elsewhere = Anonymizer(BASIC, foreign).anonymize(objects[0]).dataset
    assert elsewhere.SOPInstanceUID != first[0].SOPInstanceUID
