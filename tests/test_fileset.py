"""File-set creator (patient media): plans, folders and DICOMDIRs checked with real tools.

DCMTK ``dcmmkdir`` in strict mode (type 1 keys must be in the files, abort on an inconsistent
file, STD-GEN-CD transfer syntax and file name rules) rebuilds a DICOMDIR from our DICOM folder
and must accept every file; dicom3tools ``dciodvfy`` checks our DICOMDIR against the Basic
Directory IOD; pydicom loads the file-set and every file it references.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    generate_uid,
)
from pynetdicom.dsutils import encode

from appliance import fileset
from appliance.archive import Archive
from tests.factories import ct_dataset
from tests.peers import dcmtk

DCIODVFY = "/usr/bin/dciodvfy"


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    store = Archive(tmp_path / "data")
    yield store
    store.close()


def store(archive: Archive, ds, transfer_syntax: str = ExplicitVRLittleEndian) -> str:
    archive.store_encoded(
        encode(ds, transfer_syntax == ImplicitVRLittleEndian, True),
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax=transfer_syntax,
        source_ae="MODALITY",
    )
    return str(ds.SOPInstanceUID)


def jpeg_ct(tmp_path: Path, **kwargs) -> object:
    """A CT image compressed by DCMTK's dcmcjpeg (JPEG Lossless, first-order prediction)."""
    raw, compressed = tmp_path / "raw.dcm", tmp_path / "jpeg.dcm"
    ct_dataset(rows=32, columns=32, **kwargs).save_as(raw, enforce_file_format=True)
    subprocess.run([dcmtk("dcmcjpeg"), "+e1", str(raw), str(compressed)], check=True)
    ds = dcmread(compressed)
    assert ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    return ds


def make_study(archive: Archive, series: int = 2, images: int = 3, size: int = 32, **kwargs) -> str:
    study = kwargs.pop("study_uid", None) or generate_uid()
    for series_number in range(1, series + 1):
        series_uid = generate_uid()
        for number in range(1, images + 1):
            ds = ct_dataset(
                study_uid=study,
                series_uid=series_uid,
                instance_number=number,
                rows=size,
                columns=size,
                **kwargs,
            )
            ds.SeriesNumber = series_number
            store(archive, ds)
    return study


def referenced(folder: Path) -> list[tuple[Path, object]]:
    """(file, directory record) for every leaf record of the folder's DICOMDIR."""
    ds = dcmread(folder / "DICOMDIR")
    found = []
    for record in ds.DirectoryRecordSequence:
        if "ReferencedFileID" in record:
            value = record.ReferencedFileID
            parts = [value] if isinstance(value, str) else list(value)
            found.append((folder.joinpath(*parts), record))
    return found


def dcmmkdir_strict(folder: Path, tmp_path: Path, profile_flag: str = "-Pgp") -> str:
    """DCMTK builds its own DICOMDIR from our DICOM folder (written elsewhere, so ours stays):
    strict type 1 keys, abort on the first inconsistent file, the profile's transfer syntaxes
    and file name rules. Returns its output; fails the test on any error."""
    target = tmp_path / f"dcmtk-{folder.name}.dicomdir"
    result = subprocess.run(
        [dcmtk("dcmmkdir"), profile_flag, "-I", "-a", "-nb", "+r", "+id", str(folder)]
        + ["DICOM", "+D", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not re.search(r"^(E|F):", output, re.MULTILINE), output
    return output


def dciodvfy_errors(dicomdir: Path) -> list[str]:
    result = subprocess.run([DCIODVFY, str(dicomdir)], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert "BasicDirectory" in output, output
    return [line for line in output.splitlines() if line.startswith("Error")]


def test_cd_fileset_passes_dcmmkdir_dciodvfy_and_pydicom(archive: Archive, tmp_path: Path):
    study = make_study(archive)
    jpeg = jpeg_ct(tmp_path, study_uid=study)
    jpeg.SeriesNumber = 3
    jpeg_uid = store(archive, jpeg, JPEGLosslessSV1)

    discs = fileset.plan_discs(archive, [study], fileset.CD_BYTES)
    assert [(d.number, d.total) for d in discs] == [(1, 1)]
    built = fileset.build_fileset(discs[0], archive, tmp_path / "disc", institution="GENERAL")
    folder = built.folder

    output = dcmmkdir_strict(folder, tmp_path)
    assert "inconsistent" not in output
    assert dciodvfy_errors(folder / "DICOMDIR") == []
    dump = subprocess.run(
        [dcmtk("dcmdump"), str(folder / "DICOMDIR")], capture_output=True, text=True
    )
    assert dump.returncode == 0 and "MediaStorageDirectoryStorage" in dump.stdout

    # Every referenced file exists, is read by pydicom, is Explicit VR Little Endian and is
    # the instance its record names; every DICOM file on the disc is referenced.
    refs = referenced(folder)
    assert len(refs) == 7
    for path, record in refs:
        ds = dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert record.ReferencedTransferSyntaxUIDInFile == ExplicitVRLittleEndian
        assert ds.SOPInstanceUID == record.ReferencedSOPInstanceUIDInFile
        ds.pixel_array  # noqa: B018 - decodes
    on_disc = {p for p in (folder / "DICOM").rglob("*") if p.is_file()}
    assert on_disc == {path for path, _ in refs}
    decoded = next(dcmread(p) for p, r in refs if r.ReferencedSOPInstanceUIDInFile == jpeg_uid)
    assert (decoded.pixel_array == jpeg.pixel_array).all()  # lossless: same pixels
    # The archive keeps its JPEG copy.
    assert archive.instance(jpeg_uid).transfer_syntax == JPEGLosslessSV1
    assert dcmread(archive.instance(jpeg_uid).path).file_meta.TransferSyntaxUID == JPEGLosslessSV1

    loaded = FileSet(folder / "DICOMDIR")
    assert len(loaded) == 7
    for instance in loaded:
        instance.load()
    assert sorted(str(p) for p in built.files) == sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
    )


def test_names_are_iso9660_level1_and_no_autorun(archive: Archive, tmp_path: Path):
    study = make_study(archive, series=2, images=2)
    viewer = tmp_path / "viewer"
    (viewer / "lib").mkdir(parents=True)
    (viewer / "viewer.exe").write_bytes(b"MZ")
    (viewer / "lib" / "core.dat").write_bytes(b"x" * 10)
    (viewer / "AUTORUN.INF").write_text("[autorun]\nopen=viewer.exe\n")
    (disc,) = fileset.plan_discs(archive, [study], fileset.CD_BYTES, viewer_folder=viewer)
    built = fileset.build_fileset(disc, archive, tmp_path / "disc", viewer_folder=viewer)
    folder = built.folder
    for path in (folder / "DICOM").rglob("*"):
        parts = path.relative_to(folder).parts
        assert fileset.is_valid_file_id(parts), parts
        assert len(parts) + 1 <= 8  # the root counts as the first level
    for path, _record in referenced(folder):
        assert re.fullmatch(r"[A-Z0-9_]{1,8}", path.name)
    names = {p.name.lower() for p in folder.rglob("*")}
    assert "autorun.inf" not in names
    assert (folder / "VIEWER" / "viewer.exe").read_bytes() == b"MZ"
    assert (folder / "VIEWER" / "lib" / "core.dat").exists()
    # The viewer is not DICOM: the DICOMDIR does not reference it.
    assert all("VIEWER" not in p.parts for p, _ in referenced(folder))
    assert "VIEWER" in (folder / "README.TXT").read_text()
    assert 'href="VIEWER/"' in (folder / "INDEX.HTM").read_text()


def test_readme_index_and_label_name_patient_and_studies(archive: Archive, tmp_path: Path):
    first = make_study(
        archive, series=1, images=2, patient_name="MÜLLER^ANNA", charset="ISO_IR 192"
    )
    second = generate_uid()
    for n in (1, 2):
        ds = ct_dataset(
            study_uid=second, instance_number=n, rows=16, columns=16,
            patient_name="MÜLLER^ANNA", charset="ISO_IR 192",
        )  # fmt: skip
        ds.StudyDate, ds.StudyDescription = "20250301", "CT ABDOMEN <contrast>"
        store(archive, ds)
    (disc,) = fileset.plan_discs(archive, [first, second], fileset.CD_BYTES)
    built = fileset.build_fileset(disc, archive, tmp_path / "disc", institution="St. Mary's")
    readme = (built.folder / "README.TXT").read_text()
    index = (built.folder / "INDEX.HTM").read_text()
    label = (built.folder / "LABEL.TXT").read_text()
    for text in (readme, index):
        assert "MÜLLER, ANNA" in text
        assert "PAT001" in text
        assert "2024-01-15" in text and "2025-03-01" in text
        assert "CT CHEST" in text
        assert "disc 1 of 1" in text
        assert "St. Mary" in text
    assert "CT ABDOMEN &lt;contrast&gt;" in index  # escaped
    assert "<script" not in index.lower()
    assert 'href="README.TXT"' in index
    assert "starts automatically" in readme
    assert "Patient:     MÜLLER, ANNA" in label
    assert "Birth date:  1970-01-01" in label
    assert "Study dates: 2024-01-15, 2025-03-01" in label
    assert "Institution: St. Mary's" in label
    assert "Disc:        1 of 1" in label
    # A UTF-8 name in the records, with its character set.
    ds = dcmread(built.folder / "DICOMDIR")
    patient = ds.DirectoryRecordSequence[0]
    assert patient.SpecificCharacterSet == "ISO_IR 192" and patient.PatientName == "MÜLLER^ANNA"
    dcmmkdir_strict(built.folder, tmp_path)
    assert dciodvfy_errors(built.folder / "DICOMDIR") == []
    no_label = fileset.build_fileset(disc, archive, tmp_path / "nolabel", label=False)
    assert not (no_label.folder / "LABEL.TXT").exists()


def test_spanning_two_small_discs_each_a_complete_fileset(archive: Archive, tmp_path: Path):
    # Two studies of one patient; each ~ 6 x 8 KiB: one disc holds one study, not both.
    first = make_study(archive, series=2, images=3, size=64)
    second = make_study(archive, series=2, images=3, size=64)
    capacity = fileset.DEFAULT_RESERVE_BYTES + 70_000
    discs = fileset.plan_discs(archive, [first, second], capacity)
    assert [(d.number, d.total) for d in discs] == [(1, 2), (2, 2)]
    assert [d.study_uids for d in discs] == [[first], [second]]  # split by study
    for disc in discs:
        built = fileset.build_fileset(disc, archive, tmp_path / f"disc{disc.number}")
        dcmmkdir_strict(built.folder, tmp_path)
        assert dciodvfy_errors(built.folder / "DICOMDIR") == []
        refs = referenced(built.folder)
        assert len(refs) == 6 and all(p.exists() for p, _ in refs)
        assert f"disc {disc.number} of 2" in (built.folder / "README.TXT").read_text()
        assert f"Disc:        {disc.number} of 2" in (built.folder / "LABEL.TXT").read_text()
        assert f"disc {disc.number} of 2" in (built.folder / "INDEX.HTM").read_text()
        assert built.bytes <= capacity


def test_study_larger_than_a_disc_splits_by_series_then_by_instance(
    archive: Archive, tmp_path: Path
):
    study = make_study(archive, series=3, images=4, size=64)  # 12 x ~10 KiB
    one = fileset.plan_discs(archive, [study], 10**9)[0]
    cost = (one.bytes - fileset.DEFAULT_RESERVE_BYTES) // 12
    # A disc holds one series (4 images) and a bit: series are kept whole.
    by_series = fileset.plan_discs(archive, [study], fileset.DEFAULT_RESERVE_BYTES + cost * 5)
    assert len(by_series) == 3
    assert [len({r.series_uid for r in d.instances}) for d in by_series] == [1, 1, 1]
    # A disc holds 3 images: a series is split by instance, in instance order.
    by_instance = fileset.plan_discs(archive, [study], fileset.DEFAULT_RESERVE_BYTES + cost * 3)
    assert len(by_instance) == 4
    assert sum(len(d.instances) for d in by_instance) == 12
    numbers = [
        int(dcmread(r.path, stop_before_pixels=True).InstanceNumber)
        for d in by_instance
        for r in d.instances
    ]
    assert numbers == [1, 2, 3, 4] * 3
    with pytest.raises(fileset.FileSetError, match="larger than a disc"):
        fileset.plan_discs(archive, [study], fileset.DEFAULT_RESERVE_BYTES + cost // 2)
    with pytest.raises(fileset.FileSetError, match="no instances of study"):
        fileset.plan_discs(archive, [generate_uid()], fileset.CD_BYTES)


def test_missing_keys_filled_on_the_disc_only(archive: Archive, tmp_path: Path):
    study = generate_uid()
    series = generate_uid()
    uids = []
    for number in (1, 2, 3):
        ds = ct_dataset(
            study_uid=study, series_uid=series, instance_number=number, rows=16, columns=16
        )
        del ds.PatientID, ds.StudyTime, ds.SeriesNumber
        ds.StudyDate = ""
        ds.SeriesDate = "20230202"
        if number == 2:
            del ds.InstanceNumber
        if number != 3:
            del ds.StudyID  # number 3 has one: the others take it
        uids.append(store(archive, ds))
    (disc,) = fileset.plan_discs(archive, [study], fileset.CD_BYTES)
    built = fileset.build_fileset(disc, archive, tmp_path / "disc")
    output = dcmmkdir_strict(built.folder, tmp_path)  # strict: type 1 keys must be present
    assert "inconsistent" not in output
    assert dciodvfy_errors(built.folder / "DICOMDIR") == []
    copies = {str(d.SOPInstanceUID): d for d in (dcmread(p) for p, _ in referenced(built.folder))}
    assert len({c.PatientID for c in copies.values()}) == 1
    assert next(iter(copies.values())).PatientID.startswith("NOID")
    assert {c.StudyDate for c in copies.values()} == {"20230202"}  # from the Series Date
    assert {c.StudyTime for c in copies.values()} == {"000000"}  # no time at all: placeholder
    assert {c.StudyID for c in copies.values()} == {"1"}
    assert {c.SeriesNumber for c in copies.values()} == {1}
    assert copies[uids[1]].InstanceNumber == 4  # after the highest number in the series
    text = "\n".join(built.filled)
    for keyword in ("PatientID", "StudyDate", "StudyTime", "StudyID", "SeriesNumber"):
        assert keyword in text
    assert f"InstanceNumber missing in instance {uids[1]}" in text
    # The archive is untouched.
    for uid in uids:
        original = dcmread(archive.instance(uid).path)
        assert "PatientID" not in original and "SeriesNumber" not in original


def test_dvd_jpeg_profile_keeps_jpeg_and_cd_decodes_implicit(archive: Archive, tmp_path: Path):
    study = generate_uid()
    jpeg = jpeg_ct(tmp_path, study_uid=study)
    jpeg_uid = store(archive, jpeg, JPEGLosslessSV1)
    implicit = ct_dataset(study_uid=study, rows=16, columns=16)
    implicit.SeriesNumber = 2
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit_uid = store(archive, implicit, ImplicitVRLittleEndian)
    (disc,) = fileset.plan_discs(archive, [study], fileset.DVD_BYTES, profile="STD-GEN-DVD-JPEG")
    built = fileset.build_fileset(disc, archive, tmp_path / "dvd", profile="STD-GEN-DVD-JPEG")
    syntaxes = {
        str(r.ReferencedSOPInstanceUIDInFile): str(dcmread(p).file_meta.TransferSyntaxUID)
        for p, r in referenced(built.folder)
    }
    assert syntaxes == {jpeg_uid: JPEGLosslessSV1, implicit_uid: ExplicitVRLittleEndian}
    dcmmkdir_strict(built.folder, tmp_path, "-Pdv")
    assert dciodvfy_errors(built.folder / "DICOMDIR") == []
    cd = fileset.build_fileset(disc, archive, tmp_path / "cd")
    assert {str(dcmread(p).file_meta.TransferSyntaxUID) for p, _ in referenced(cd.folder)} == {
        ExplicitVRLittleEndian
    }
    dcmmkdir_strict(cd.folder, tmp_path)
    with pytest.raises(fileset.FileSetError, match="unknown media profile"):
        fileset.build_fileset(disc, archive, tmp_path / "x", profile="STD-GEN-DVD")


def test_rebuild_replaces_the_folder_and_progress_reaches_one(archive: Archive, tmp_path: Path):
    study = make_study(archive, series=1, images=2)
    (disc,) = fileset.plan_discs(archive, [study], fileset.CD_BYTES)
    out = tmp_path / "disc"
    out.mkdir()
    (out / "stale").write_text("left from an interrupted build")
    seen: list[float] = []
    built = fileset.build_fileset(disc, archive, out, progress=seen.append)
    assert not (out / "stale").exists()
    assert seen[-1] == 1.0 and seen == sorted(seen)
    assert built.bytes == sum((out / p).stat().st_size for p in built.files)
    with pytest.raises(fileset.FileSetError, match="stopped"):
        fileset.build_fileset(disc, archive, tmp_path / "stop", should_stop=lambda: True)
    shutil.rmtree(out)
