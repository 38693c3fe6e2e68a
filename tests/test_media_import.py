"""Importing patient media: DICOMDIRs made by DCMTK dcmmkdir (every FSR profile the reference
statements name), disc images made by xorriso, folders without a DICOMDIR, hostile media, the
reconciliation of patient values, the import job through a real daemon (SIGKILL included),
the CLI with and without a daemon, and sending imported objects on to DCMTK storescp."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from appliance.archive import Archive
from appliance.control import control_socket_path
from appliance.control_client import ControlClient
from appliance.media_import import (
    MAX_DEPTH,
    ScannedPatient,
    import_directly,
    local_matches,
    normalise_choice,
    scan_source,
)
from tests.factories import ct_dataset
from tests.peers import appliance_cmd, dcmtk, run
from tests.test_jobs_daemon import FAST_RETRY, add_node, wait_job

FINAL = {"succeeded", "failed", "partially-failed", "cancelled"}
XORRISO = "/usr/bin/xorriso"

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "USMF": "1.2.840.10008.5.1.4.1.1.3.1",
}


def make_object(kind: str, number: int, study: str, series: str, **kwargs: object):
    ds = ct_dataset(
        study_uid=study, series_uid=series, instance_number=number, rows=32, columns=32, **kwargs
    )
    if kind == "CT":
        return ds
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SOP_CLASSES[kind]
    ds.Modality = "XA" if kind == "XA" else "US"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    for keyword in ("RescaleIntercept", "RescaleSlope", "ImagePositionPatient", "KVP"):
        del ds[keyword]
    for keyword in ("ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
        del ds[keyword]
    frames = 2 if kind == "USMF" else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = (np.arange(32 * 32 * frames) % 256).astype(np.uint8).tobytes()
    return ds


def write_disc(
    folder: Path, count: int, *, kind: str = "CT", study: str | None = None, **kwargs: object
) -> list[str]:
    """``count`` objects of one series as DICOM/ST1/SE1/IMnnnnnn (8-character File IDs);
    returns their SOP Instance UIDs."""
    target = folder / "DICOM" / "ST1" / "SE1"
    target.mkdir(parents=True, exist_ok=True)
    study = study or generate_uid()
    series = generate_uid()
    uids = []
    for number in range(1, count + 1):
        ds = make_object(kind, number, study, series, **kwargs)
        ds.save_as(target / f"IM{number:06d}", enforce_file_format=True)
        uids.append(str(ds.SOPInstanceUID))
    return uids


def dcmmkdir(folder: Path, profile: str = "-Pgp") -> None:
    result = run(
        [dcmtk("dcmmkdir"), "+r", profile, "+I", "-Nxc", "-Nec", "-Nrc", "DICOM"], cwd=folder
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (folder / "DICOMDIR").is_file()


def make_iso(folder: Path, iso: Path) -> None:
    result = run(
        [XORRISO, "-outdev", str(iso), "-volid", "PATIENT", "-joliet", "on", "-map",
         str(folder), "/", "-commit"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def snapshot(folder: Path, depth: int = 40) -> dict[str, tuple[int, int]]:
    """Every file and folder below ``folder`` (to ``depth`` levels) with size and mtime, not
    following links."""
    seen = {}
    pending = [(str(folder), 0)]
    while pending:
        directory, level = pending.pop()
        for entry in os.scandir(directory):
            info = entry.stat(follow_symlinks=False)
            seen[entry.path] = (info.st_size, info.st_mtime_ns)
            if entry.is_dir(follow_symlinks=False) and level < depth:
                pending.append((entry.path, level + 1))
    return seen


# --- scanning ----------------------------------------------------------------------------------

# dcmmkdir's options for the nine profiles of the reference statement (-Pcm makes the
# STD-CTMR-CD, -DVD and -DVD-RAM DICOMDIRs alike: the profiles differ only in the medium).
PROFILES = [
    ("STD-GEN-CD", "-Pgp", "CT"),
    ("STD-CTMR-CD/DVD/DVD-RAM", "-Pcm", "CT"),
    ("STD-XABC-CD", "-Pbc", "XA"),
    ("STD-XA1K-CD", "-Pxa", "XA"),
    ("STD-XA1K-DVD", "-Pxd", "XA"),
    ("STD-US-ID-SF-CD", "-Pus", "US"),
    ("STD-US-ID-MF-CD", "-Pum", "USMF"),
]


@pytest.mark.parametrize(("profile", "option", "kind"), PROFILES, ids=[p[0] for p in PROFILES])
def test_dicomdir_of_every_profile_is_read(tmp_path, profile, option, kind):
    disc = tmp_path / "disc"
    uids = write_disc(disc, 3, kind=kind)
    dcmmkdir(disc, option)
    # A viewer folder and the PDI extras are not DICOM and are not reported as problems.
    (disc / "VIEWER").mkdir()
    (disc / "VIEWER" / "VIEWER.EXE").write_bytes(b"MZ" + b"\x00" * 200)
    (disc / "README.TXT").write_text("patient disc\n")
    scan = scan_source(str(disc), tmp_path / "scratch")
    assert scan.dicomdir == "read", scan.problems
    assert scan.problems == []
    assert scan.fileset_id == "DCMTK_MEDIA_DEMO"
    assert sorted(f.sop_instance_uid for f in scan.files) == sorted(uids)
    assert {f.sop_class_uid for f in scan.files} == {SOP_CLASSES[kind]}
    [patient] = scan.patients
    assert (patient.patient_id, patient.name, patient.birth_date) == (
        "PAT001",
        "DOE^JOHN",
        "19700101",
    )
    assert patient.studies[0].count == 3


def test_iso_and_folder_without_dicomdir(tmp_path):
    disc = tmp_path / "disc"
    uids = write_disc(disc, 2)
    other = write_disc(disc / "MORE", 1, patient_id="PAT002", patient_name="ROE^JANE")
    (disc / "VIEWER" / "lib").mkdir(parents=True)
    (disc / "VIEWER" / "lib" / "junk.bin").write_bytes(os.urandom(300))
    scan = scan_source(str(disc), tmp_path / "scratch")
    assert scan.dicomdir == "missing"
    assert scan.skipped_folders == ["VIEWER"]
    assert scan.problems == []
    assert sorted(f.sop_instance_uid for f in scan.files) == sorted(uids + other)
    assert sorted(p.patient_id for p in scan.patients) == ["PAT001", "PAT002"]
    # The same folder as a disc image: extracted with xorriso into the scratch folder.
    dcmmkdir(disc)
    iso = tmp_path / "disc.iso"
    make_iso(disc, iso)
    scan = scan_source(str(iso), tmp_path / "scratch")
    assert scan.kind == "iso" and scan.dicomdir == "read", scan.problems
    assert Path(scan.root) == (tmp_path / "scratch" / "disc").resolve()
    # What the DICOMDIR references (dcmmkdir was given DICOM/ only), not every file.
    assert sorted(f.sop_instance_uid for f in scan.files) == sorted(uids)
    assert scan_source(str(iso), tmp_path / "scratch").root == scan.root  # extracted once


def _patch_file_id(dicomdir: Path, old: bytes, new: bytes) -> None:
    """Replace a Referenced File ID in place, keeping its length (and every record offset)."""
    assert len(new) <= len(old)
    new = new + b"/" * (len(old) - len(new)) if new.startswith(b"/") else new.ljust(len(old), b" ")
    data = dicomdir.read_bytes()
    assert data.count(old) == 1
    dicomdir.write_bytes(data.replace(old, new))


def make_hostile_disc(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    """A folder with every kind of hostile or broken content next to good objects."""
    disc = tmp_path / "hostile"
    good = write_disc(disc, 3)
    dcmmkdir(disc)
    # Outside the disc: a DICOM object a reference or a link could reach.
    outside = tmp_path / "OUTSIDE"
    outside_ds = ct_dataset(patient_id="STOLEN")
    outside_ds.save_as(outside, enforce_file_format=True)
    (disc / "DICOM" / "ST1" / "SE2").mkdir()
    dicomdir = disc / "DICOMDIR"
    _patch_file_id(dicomdir, b"DICOM\\ST1\\SE1\\IM000001", b"..\\..\\..\\OUTSIDE")
    _patch_file_id(dicomdir, b"DICOM\\ST1\\SE1\\IM000002", b"/etc/passwd")
    # A link out of the disc, to a file and to a folder.
    os.symlink(outside, disc / "DICOM" / "LINKOUT")
    os.symlink("/etc", disc / "DICOM" / "ETC")
    # Not DICOM, and a truncated object.
    (disc / "DICOM" / "JUNK").write_bytes(os.urandom(4000))
    truncated_ds = make_object("CT", 9, generate_uid(), generate_uid())
    buffer = io.BytesIO()
    truncated_ds.save_as(buffer, enforce_file_format=True)
    (disc / "DICOM" / "ST1" / "SE2" / "TRUNC").write_bytes(buffer.getvalue()[:-1500])
    # Cut in the header (past the UIDs), and cut in the File Meta Information.
    header_cut = make_object("CT", 10, generate_uid(), generate_uid())
    header_cut.save_as(buffer := io.BytesIO(), enforce_file_format=True)
    (disc / "DICOM" / "ST1" / "SE2" / "HEADCUT").write_bytes(buffer.getvalue()[:700])
    (disc / "DICOM" / "ST1" / "SE2" / "METACUT").write_bytes(buffer.getvalue()[:150])
    # 10,000 nested folders (made relative to each parent: the path is longer than PATH_MAX).
    fd = os.open(disc, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(10_000):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    return disc, {
        "good": good,
        "outside_uid": str(outside_ds.SOPInstanceUID),
        "truncated_uid": str(truncated_ds.SOPInstanceUID),
    }


def remove_deep(folder: Path) -> None:
    """Remove the disc with its 10,000 nested folders, one level at a time: the level below
    is moved up beside the disc before its parent is removed (rm -rf takes 20 s on it)."""
    names = [folder.parent / ".deep-a", folder.parent / ".deep-b"]
    current, step = folder / "d", 0
    while current.is_dir():
        child = current / "d"
        if not child.is_dir():
            os.rmdir(current)
            break
        os.rename(child, names[step % 2])
        os.rmdir(current)
        current, step = names[step % 2], step + 1
    shutil.rmtree(folder)


def test_hostile_media_are_reported_and_nothing_escapes(tmp_path):
    disc, facts = make_hostile_disc(tmp_path)
    try:
        before = snapshot(tmp_path)
        started = time.monotonic()
        scan = scan_source(str(disc), tmp_path / "scratch")
        assert time.monotonic() - started < 10
        text = "\n".join(scan.problems)
        assert scan.dicomdir == "broken"
        assert "'..\\\\..\\\\..\\\\OUTSIDE' refers outside the file-set" in text
        assert "'/etc/passwd" in text and "refers outside the file-set" in text
        assert "DICOM/LINKOUT: a link to" in text and "outside the source; skipped" in text
        assert "DICOM/ETC: a link to /etc, outside the source; skipped" in text
        assert "DICOM/JUNK: not a DICOM file; skipped" in text
        assert "DICOM/ST1/SE2/HEADCUT: the file is truncated" in text
        assert "DICOM/ST1/SE2/METACUT: " in text
        assert "DICOM/ST1/SE2/TRUNC: the file is truncated" in text
        assert f"nested deeper than {MAX_DEPTH} levels" in text
        assert "every file is read instead" in text
        uids = {f.sop_instance_uid: f for f in scan.files}
        assert set(facts["good"]) <= set(uids)
        assert facts["outside_uid"] not in uids
        assert uids[facts["truncated_uid"]].error.startswith("the file is truncated")
        # Stored: the good ones; the truncated one failed; nothing outside the archive changed.
        data = tmp_path / "data"
        archive = Archive(data)
        try:
            results = import_directly(archive, scan, {})
            assert archive.instance(facts["outside_uid"]) is None
            assert {archive.instance(uid) is not None for uid in facts["good"]} == {True}
        finally:
            archive.close()
        outcome = {r["sop_instance_uid"]: r["status"] for r in results}
        assert outcome[facts["truncated_uid"]] == "failed"
        assert [outcome[uid] for uid in facts["good"]] == ["success"] * 3
        after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(str(data))}
        assert after == {k: v for k, v in before.items() if not k.startswith(str(data))}
    finally:
        remove_deep(disc)


def test_broken_dicomdir_loop_and_garbage(tmp_path):
    disc = tmp_path / "disc"
    uids = write_disc(disc, 2)
    dcmmkdir(disc)
    ds = pydicom.dcmread(disc / "DICOMDIR")
    first = ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity
    # The patient record's next record is itself: a loop pydicom would follow for ever.
    ds.DirectoryRecordSequence[0].OffsetOfTheNextDirectoryRecord = first
    ds.save_as(disc / "DICOMDIR")
    scan = scan_source(str(disc), tmp_path / "scratch")
    assert scan.dicomdir == "broken"
    assert any("linked twice (a loop)" in p for p in scan.problems), scan.problems
    assert sorted(f.sop_instance_uid for f in scan.files) == sorted(uids)
    (disc / "DICOMDIR").write_bytes(b"\x00" * 128 + b"DICM" + os.urandom(500))
    scan = scan_source(str(disc), tmp_path / "scratch")
    assert scan.dicomdir == "broken" and len(scan.files) == 2


# --- reconciliation and local matches ----------------------------------------------------------


def test_local_matches_by_id_then_name_and_birth_date(tmp_path):
    data = tmp_path / "data"
    archive = Archive(data)
    try:
        for patient_id, name in (("PAT001", "DOE^JOHN"), ("H-77", "doe^john^^"), ("X", "ROE")):
            ds = ct_dataset(patient_id=patient_id, patient_name=name)
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            blob = buffer.getvalue()
            archive.store_encoded(
                blob[132 + 12 + int.from_bytes(blob[140:144], "little") :],
                sop_class_uid=ds.SOPClassUID,
                sop_instance_uid=ds.SOPInstanceUID,
                transfer_syntax=ds.file_meta.TransferSyntaxUID,
            )
        disc = ScannedPatient("PAT001", "DOE^JOHN", "19700101", "M")
        matches = local_matches(archive, disc)
        assert [(m["patient_id"], m["match"]) for m in matches] == [
            ("PAT001", "id"),
            ("H-77", "name+birth date"),
        ]
        assert matches[0]["studies"] == 1
        unknown = ScannedPatient("OTHER", "DOE^JOHN", "19700101", "M")
        assert [m["patient_id"] for m in local_matches(archive, unknown)] == ["PAT001", "H-77"]
        assert local_matches(archive, ScannedPatient("Z", "DOE^JOHN", "19800101")) == []
    finally:
        archive.close()


def test_reconciliation_keep_map_new_in_the_stored_objects(tmp_path):
    data = tmp_path / "data"
    archive = Archive(data)
    try:
        local = ct_dataset(patient_id="LOCAL7", patient_name="DOE^JOHANNES")
        local.PatientBirthDate, local.PatientSex = "19700102", "M"
        buffer = io.BytesIO()
        local.save_as(buffer, enforce_file_format=True)
        blob = buffer.getvalue()
        archive.store_encoded(
            blob[132 + 12 + int.from_bytes(blob[140:144], "little") :],
            sop_class_uid=local.SOPClassUID,
            sop_instance_uid=local.SOPInstanceUID,
            transfer_syntax=local.file_meta.TransferSyntaxUID,
        )
        cases = {
            "keep": {"action": "keep"},
            "map": {"action": "map", "patient_id": "LOCAL7"},
            "new": {
                "action": "new",
                "patient_id": "NEW1",
                "patient_name": "NEW^NAME",
                "birth_date": "19700101",
            },
        }
        stored = {}
        for name, choice in cases.items():
            disc = tmp_path / name
            [uid] = write_disc(disc, 1)
            original = pydicom.dcmread(disc / "DICOM" / "ST1" / "SE1" / "IM000001")
            original.IssuerOfPatientID = "OTHER HOSPITAL"
            original.save_as(disc / "DICOM" / "ST1" / "SE1" / "IM000001")
            scan = scan_source(str(disc), tmp_path / "scratch")
            clean = normalise_choice(choice, archive)
            [result] = import_directly(archive, scan, {"PAT001": clean})
            assert result["status"] == "success", result
            stored[name] = (original, pydicom.dcmread(archive.instance(uid).path))
    finally:
        archive.close()

    original, kept = stored["keep"]
    assert kept.PatientID == "PAT001" and "OriginalAttributesSequence" not in kept
    assert kept.IssuerOfPatientID == "OTHER HOSPITAL"
    assert kept.PixelData == original.PixelData

    _, mapped = stored["map"]
    assert (mapped.PatientID, mapped.PatientName, mapped.PatientBirthDate) == (
        "LOCAL7",
        "DOE^JOHANNES",
        "19700102",
    )
    assert "IssuerOfPatientID" not in mapped
    [item] = mapped.OriginalAttributesSequence
    assert item.ReasonForTheAttributeModification == "COERCE"
    assert item.ModifyingSystem and len(item.AttributeModificationDateTime) == 14
    assert str(tmp_path / "map").endswith(item.SourceOfPreviousValues)
    [old] = item.ModifiedAttributesSequence
    assert (old.PatientID, old.PatientName, old.PatientBirthDate) == (
        "PAT001",
        "DOE^JOHN",
        "19700101",
    )
    assert old.IssuerOfPatientID == "OTHER HOSPITAL"
    assert "PatientSex" not in old  # unchanged values are not listed
    [other] = mapped.OtherPatientIDsSequence
    assert (other.PatientID, other.IssuerOfPatientID, other.TypeOfPatientID) == (
        "PAT001",
        "OTHER HOSPITAL",
        "TEXT",
    )

    _, new = stored["new"]
    assert (new.PatientID, new.PatientName, new.PatientBirthDate) == (
        "NEW1",
        "NEW^NAME",
        "19700101",
    )
    [old] = new.OriginalAttributesSequence[0].ModifiedAttributesSequence
    assert (old.PatientID, old.PatientName) == ("PAT001", "DOE^JOHN")
    assert "PatientBirthDate" not in old
    assert new.OtherPatientIDsSequence[0].PatientID == "PAT001"
    # An independent reader sees the same (DCMTK).
    path = tmp_path / "new.dcm"
    new.save_as(path)
    dump = run([dcmtk("dcmdump"), str(path)]).stdout
    assert "(0400,0561) SQ" in dump and "(0400,0550) SQ" in dump and "(0010,1002) SQ" in dump
    assert "[COERCE]" in dump


def test_choices_are_checked(tmp_path):
    from appliance.jobs import JobError

    archive = Archive(tmp_path / "data")
    try:
        with pytest.raises(JobError, match="no patient 'NOPE'"):
            normalise_choice({"action": "map", "patient_id": "NOPE"}, archive)
        with pytest.raises(JobError, match="patient_name"):
            normalise_choice({"action": "new", "patient_id": "N1"}, archive)
        with pytest.raises(JobError, match="YYYYMMDD"):
            normalise_choice(
                {"action": "new", "patient_id": "N", "patient_name": "A", "birth_date": "1970"},
                archive,
            )
        with pytest.raises(JobError, match="keep, map or new"):
            normalise_choice({"action": "merge"}, archive)
    finally:
        archive.close()


def test_interactive_choices(monkeypatch):
    from appliance import media_import_cli

    scan = {
        "patients": [
            {
                "patient_id": "PAT001",
                "name": "DOE^JOHN",
                "birth_date": "19700101",
                "sex": "M",
                "studies": [
                    {"date": "20240115", "description": "CT", "modalities": ["CT"], "count": 3}
                ],  # fmt: skip
                "local_matches": [
                    {
                        "patient_id": "H-77",
                        "patient_name": "DOE^JOHN",
                        "birth_date": "19700101",
                        "match": "name+birth date",
                        "studies": 2,
                    }  # fmt: skip
                ],
            },
            {"patient_id": "P2", "name": "ROE", "birth_date": "", "sex": "", "studies": []},
            {"patient_id": "P3", "name": "X", "birth_date": "", "sex": "", "studies": []},
        ]
    }
    monkeypatch.setattr("sys.stdin", io.StringIO("1\nn\nNEW9\nNEW^ONE\n19990101\nF\nk\n"))
    assert media_import_cli.ask_choices(scan) == {
        "PAT001": {"action": "map", "patient_id": "H-77"},
        "P2": {
            "action": "new",
            "patient_id": "NEW9",
            "patient_name": "NEW^ONE",
            "birth_date": "19990101",
            "sex": "F",
        },
        "P3": {"action": "keep"},
    }
    monkeypatch.setattr("sys.stdin", io.StringIO("q\n"))
    assert media_import_cli.ask_choices(scan) is None


# --- through the daemon ------------------------------------------------------------------------


def test_disc_image_import_through_the_daemon_then_send_on(daemon_factory, storescp, tmp_path):
    daemon = daemon_factory(**FAST_RETRY).start()
    disc = tmp_path / "disc"
    uids = write_disc(disc, 4)
    dcmmkdir(disc)
    iso = tmp_path / "patient.iso"
    make_iso(disc, iso)

    with ControlClient(control_socket_path(daemon.data_dir), role="technologist") as client:
        scan = client.call("media.scan", source=str(iso))
        assert scan["dicomdir"] == "read" and scan["files"] == 4 and scan["importable"] == 4
        assert scan["patients"][0]["local_matches"] == []
        bad = daemon.cli("media", "import", str(tmp_path / "nothing"), "--keep")
        assert bad.returncode == 2 and "No such file" in bad.stderr

    # No choice and no terminal: the values are kept, and the command says so.
    result = daemon.cli("media", "import", str(iso), "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "values are kept" in result.stderr
    assert "succeeded" in result.stdout
    job_id = int(json.loads(daemon.cli("jobs", "list", "--json").stdout)[0]["id"])
    done = wait_job(daemon, job_id, FINAL)
    assert done["kind"] == "import" and done["target"] == "media"
    assert sorted(i["sop_instance_uid"] for i in done["instances"]) == sorted(uids)
    assert {i["status"] for i in done["instances"]} == {"success"}
    assert done["summary"]["patient_name"] == "DOE^JOHN"
    assert not (daemon.data_dir / "spool" / f"import-{job_id}").exists()  # scratch removed

    with ControlClient(control_socket_path(daemon.data_dir), role="technologist") as client:
        studies = client.call("archive.studies", patient_id="PAT001")
        assert len(studies) == 1, studies
        # Now the disc's patient is a local one.
        again = client.call("media.scan", source=str(disc))
        assert [m["match"] for m in again["patients"][0]["local_matches"]] == ["id"]

    # Imported objects are sent on like any others.
    add_node(daemon, "pacs", storescp.ae_title, storescp.port)
    archive_files = []
    for uid in uids:
        archive = Archive(daemon.data_dir)
        try:
            archive_files.append(str(archive.instance(uid).path))
        finally:
            archive.close()
    sent = daemon.cli("send", "pacs", *archive_files, "--wait")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    received = {str(pydicom.dcmread(p).SOPInstanceUID) for p in storescp.files()}
    assert received == set(uids)


def test_map_to_through_the_cli_and_hostile_folder_as_a_job(daemon_factory, tmp_path):
    daemon = daemon_factory(**FAST_RETRY).start()
    disc = tmp_path / "disc"
    uids = write_disc(disc, 2, patient_id="EXT-1", patient_name="DOE^JOHN")
    local = tmp_path / "local"
    write_disc(local, 1, patient_id="LOCAL1", patient_name="DOE^J")
    first = daemon.cli("media", "import", str(local), "--keep", "--wait")
    assert first.returncode == 0, first.stdout + first.stderr

    refused = daemon.cli("media", "import", str(disc), "--map-to", "NOBODY")
    assert refused.returncode == 2 and "no patient 'NOBODY'" in refused.stderr
    mapped = daemon.cli("media", "import", str(disc), "--map-to", "LOCAL1", "--wait", "--json")
    assert mapped.returncode == 0, mapped.stdout + mapped.stderr
    job = json.loads(mapped.stdout)
    assert job["params"]["reconcile"]["*"]["patient_id"] == "LOCAL1"
    archive = Archive(daemon.data_dir)
    try:
        for uid in uids:
            ds = pydicom.dcmread(archive.instance(uid).path)
            assert ds.PatientID == "LOCAL1" and ds.PatientName == "DOE^J"
            assert ds.OtherPatientIDsSequence[0].PatientID == "EXT-1"
            old = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
            assert old.PatientID == "EXT-1"
    finally:
        archive.close()

    hostile, facts = make_hostile_disc(tmp_path)
    try:
        before = {k: v for k, v in snapshot(tmp_path).items() if "/data" not in k}
        result = daemon.cli("media", "import", str(hostile), "--keep", "--wait")
        assert result.returncode == 1, result.stdout + result.stderr
        job_id = int(result.stderr.split("job ")[1].split()[0])
        done = wait_job(daemon, job_id, FINAL)
        assert done["state"] == "partially-failed"
        log = "\n".join(text for _, text in done["log"])
        assert "refers outside the file-set" in log and "not a DICOM file" in log
        status = {i["sop_instance_uid"]: i for i in done["instances"]}
        assert status[facts["truncated_uid"]]["status"] == "failed"
        assert facts["outside_uid"] not in status
        assert all(status[uid]["status"] == "success" for uid in facts["good"])
        after = {k: v for k, v in snapshot(tmp_path).items() if "/data" not in k}
        assert after == before
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        remove_deep(hostile)


def test_sigkill_mid_import_finishes_without_duplicates(daemon_factory, tmp_path):
    daemon = daemon_factory(**FAST_RETRY).start()
    disc = tmp_path / "disc"
    count = 150
    uids = write_disc(disc, count)
    dcmmkdir(disc)
    iso = tmp_path / "big.iso"
    make_iso(disc, iso)
    client = ControlClient(control_socket_path(daemon.data_dir), role="service")
    events = client.subscribe(["job"])
    result = daemon.cli("media", "import", str(iso), "--keep")
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout.split()[0])
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "nothing imported"
        event = events.get(timeout=1)
        if event is None or event.get("topic") != "job":
            continue
        data = event["data"]
        if data["id"] == job_id and data["counts"].get("success", 0) >= 1:
            daemon.kill()
            break
    events.close()
    client.close()
    daemon.start()
    done = wait_job(daemon, job_id, FINAL, timeout=60)
    assert done["state"] == "succeeded", done
    assert any("interrupted by a daemon restart" in text for _, text in done["log"])
    assert sorted(i["sop_instance_uid"] for i in done["instances"]) == sorted(uids)
    archive = Archive(daemon.data_dir)
    try:
        assert archive.count() == count
        stored = list(archive.root.rglob("*.dcm"))
        assert len(stored) == count
    finally:
        archive.close()


def test_without_a_daemon_the_import_runs_directly(tmp_path):
    data = tmp_path / "data"
    disc = tmp_path / "disc"
    uids = write_disc(disc, 2)
    (disc / "DICOM" / "JUNK").write_bytes(b"not dicom at all" * 20)
    result = run(
        [
            *appliance_cmd(
                "media", "import", str(disc), "--new-id", "NEW5", "--new-name", "NEW^FIVE"
            ),
            "--data-dir",
            str(data),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "daemon is not running" in result.stderr
    assert "DICOM/JUNK: not a DICOM file" in result.stderr
    assert "imported 2 of 2 object(s)" in result.stdout
    archive = Archive(data)
    try:
        for uid in uids:
            ds = pydicom.dcmread(archive.instance(uid).path)
            assert (ds.PatientID, ds.PatientName) == ("NEW5", "NEW^FIVE")
            assert ds.OtherPatientIDsSequence[0].PatientID == "PAT001"
    finally:
        archive.close()
    assert not (data / "spool").exists() or not list((data / "spool").iterdir())
