"""`anonymize` jobs through a running daemon: a de-identified copy of a study in the archive,
sent on to DCMTK storescp, held instances, re-runs, a SIGKILL mid-job, the preview table and
the ``anonymize.*`` control ops.

What the daemon stored is read back from its archive index and files with pydicom; what
storescp received is read from its folder. The original study is checked byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from appliance import audit
from appliance.control import ApiError, control_socket_path
from appliance.control_client import ControlClient
from appliance.job_store import JobStore
from tests.factories import ct_dataset
from tests.peers import LOOPBACK
from tests.scp_helpers import storescu
from tests.test_jobs_daemon import wait_job

FINAL = {"succeeded", "failed", "partially-failed", "cancelled"}
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
PHI = ("DOE^JOHN", "PAT001", "ACC001", "REF^DOC", "19700101")


def write_study(folder: Path, *, series: int = 3, count: int = 2, size: int = 32) -> dict:
    """A CT study of ``series`` series sharing a Frame of Reference; every image after the
    first series references the first image of series 1 (Referenced Image Sequence)."""
    folder.mkdir(parents=True, exist_ok=True)
    study, frame = generate_uid(), generate_uid()
    files, uids = [], []
    first: Dataset | None = None
    for s in range(series):
        series_uid = generate_uid()
        for n in range(1, count + 1):
            ds = ct_dataset(
                study_uid=study, series_uid=series_uid, instance_number=n, rows=size, columns=size
            )
            ds.SeriesNumber = s + 1
            ds.FrameOfReferenceUID = frame
            ds.InstitutionName = "General Hospital"
            if first is None:
                first = ds
            else:
                item = Dataset()
                item.ReferencedSOPClassUID = CTImageStorage
                item.ReferencedSOPInstanceUID = first.SOPInstanceUID
                ds.ReferencedImageSequence = [item]
            path = folder / f"s{s}-{n}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
            uids.append(str(ds.SOPInstanceUID))
    assert first is not None
    return {"study": study, "frame": frame, "files": files, "uids": uids, "first": first}


def us_file(folder: Path, study_uid: str) -> tuple[Path, str]:
    """An ultrasound image without Burned In Annotation, with 'text' (a bright band) at the
    top left, as scanners burn the patient's name in."""
    ds = ct_dataset(study_uid=study_uid, rows=48, columns=64)
    ds.file_meta.MediaStorageSOPClassUID = US_IMAGE_STORAGE
    ds.SOPClassUID = US_IMAGE_STORAGE
    ds.Modality = "US"
    for keyword in ("RescaleIntercept", "RescaleSlope", "KVP", "SliceThickness"):
        delattr(ds, keyword)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    pixels = np.full((48, 64), 40, dtype=np.uint8)
    pixels[2:10, 2:40] = 250
    ds.PixelData = pixels.tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "us.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


def store(daemon, files: list[Path]) -> None:
    result = storescu(daemon, files)
    assert result.returncode == 0, result.stdout + result.stderr


def index_rows(daemon, study_uid: str) -> list[tuple[str, Path]]:
    db = sqlite3.connect(daemon.data_dir / "index.sqlite")
    try:
        rows = db.execute(
            "SELECT sop_instance_uid, path FROM instances WHERE study_uid=? ORDER BY path",
            (study_uid,),
        ).fetchall()
    finally:
        db.close()
    return [(uid, daemon.data_dir / "archive" / path) for uid, path in rows]


def digests(daemon, study_uid: str) -> dict[str, str]:
    return {
        uid: hashlib.sha256(path.read_bytes()).hexdigest()
        for uid, path in index_rows(daemon, study_uid)
    }


def copies(daemon, study_uid: str) -> list[Dataset]:
    return [pydicom.dcmread(path) for _, path in index_rows(daemon, study_uid)]


def anonymize(daemon, *args: str, timeout: float = 120):
    return daemon.cli("anonymize", *args, timeout=timeout)


def run_job(daemon, *args: str) -> dict:
    result = anonymize(daemon, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = int(result.stdout.split()[0])
    assert f"queued anonymize job {job_id}" in result.stderr
    return wait_job(daemon, job_id, FINAL)


def no_phi_left(ds: Dataset) -> None:
    text = str(ds)
    for value in PHI:
        assert value not in text, value


def test_a_three_series_study_is_copied_into_the_archive(daemon_factory, tmp_path):
    daemon = daemon_factory().start()
    made = write_study(tmp_path / "in")
    store(daemon, made["files"])
    before = digests(daemon, made["study"])
    assert len(before) == 6

    job = run_job(daemon, "--profile", "basic", "--study", made["study"])
    assert job["state"] == "succeeded", job
    assert job["kind"] == "anonymize" and job["target"] == "archive"
    assert sorted(i["sop_instance_uid"] for i in job["instances"]) == sorted(made["uids"])
    new_study = job["summary"]["anonymized"][made["study"]]
    assert new_study != made["study"] and new_study.startswith("2.25.")

    # The original is untouched, byte for byte.
    assert digests(daemon, made["study"]) == before
    made_copies = copies(daemon, new_study)
    assert len(made_copies) == 6
    new_uids = {str(ds.SOPInstanceUID) for ds in made_copies}
    assert not new_uids & set(made["uids"])
    series = {str(ds.SeriesInstanceUID) for ds in made_copies}
    assert len(series) == 3
    frames = {str(ds.FrameOfReferenceUID) for ds in made_copies}
    assert len(frames) == 1 and made["frame"] not in frames
    names = {str(ds.PatientName) for ds in made_copies}
    ids = {str(ds.PatientID) for ds in made_copies}
    assert len(names) == 1 and len(ids) == 1 and "DOE" not in names.pop()
    # Every reference points at the copy of the first image, which exists.
    first_copy = [ds for ds in made_copies if "ReferencedImageSequence" not in ds]
    assert len(first_copy) == 1
    for ds in made_copies:
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.StudyInstanceUID == new_study
        no_phi_left(ds)
        if "ReferencedImageSequence" in ds:
            ref = ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID
            assert ref == first_copy[0].SOPInstanceUID

    # The link and the audit message, in the protected stores only.
    links = sqlite3.connect(daemon.data_dir / "anonymization" / "links.sqlite")
    try:
        rows = links.execute(
            "SELECT original_study, profile, anonymized_study FROM links"
        ).fetchall()
    finally:
        links.close()
    assert rows == [(made["study"], "basic", new_study)]
    assert (daemon.data_dir / "anonymization" / "links.sqlite").stat().st_mode & 0o777 == 0o600
    entries = list(audit.read(daemon.data_dir, event="instances-accessed"))
    mine = [e for e in entries if "de-identified with profile basic" in e.description]
    assert len(mine) == 1, [e.description for e in entries]
    assert new_study in mine[0].description and "DOE" not in mine[0].description
    assert made["study"] in mine[0].xml and "uid=" in mine[0].xml  # the operator, by OS user

    # Again: the same UIDs and pseudonym, nothing stored twice.
    again = run_job(daemon, "--profile", "basic", "--study", made["study"])
    assert again["state"] == "succeeded", again
    assert again["summary"]["anonymized"] == {made["study"]: new_study}
    second = copies(daemon, new_study)
    assert {str(ds.SOPInstanceUID) for ds in second} == new_uids
    assert {str(ds.PatientName) for ds in second} == {str(made_copies[0].PatientName)}
    db = sqlite3.connect(daemon.data_dir / "index.sqlite")
    try:
        assert db.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 12
    finally:
        db.close()


def test_send_reaches_storescp_with_the_copy_only(daemon_factory, storescp, tmp_path):
    daemon = daemon_factory().start()
    result = daemon.cli(
        "node", "add", "research", "--ae-title", storescp.ae_title, "--host", LOOPBACK,
        "--port", str(storescp.port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    made = write_study(tmp_path / "in", series=2)
    store(daemon, made["files"])
    job = run_job(daemon, "--profile", "basic", "--study", made["study"], "--send", "research")
    assert job["state"] == "succeeded", job
    send_id = job["params"]["follow_ups"]["send"]
    assert isinstance(send_id, int)
    sent = wait_job(daemon, send_id, FINAL)
    assert sent["state"] == "succeeded", sent
    assert sent["kind"] == "send" and sent["target"] == "research"
    # The send job shows the copy's pseudonym, never the original patient.
    assert "DOE" not in str(sent["summary"])
    new_study = job["summary"]["anonymized"][made["study"]]
    received = [pydicom.dcmread(path) for path in storescp.files()]
    assert len(received) == 4
    for ds in received:
        assert ds.StudyInstanceUID == new_study
        assert str(ds.SOPInstanceUID) not in made["uids"]
        no_phi_left(ds)
    # The audit message names the destination.
    entries = list(audit.read(daemon.data_dir, event="instances-accessed"))
    assert any("send to research" in e.description for e in entries)


def test_an_ultrasound_image_is_held_until_confirmed(daemon_factory, tmp_path):
    daemon = daemon_factory().start()
    made = write_study(tmp_path / "in", series=1, count=2)
    us_path, us_uid = us_file(tmp_path / "us", made["study"])
    store(daemon, [*made["files"], us_path])

    job = run_job(daemon, "--profile", "basic", "--study", made["study"])
    assert job["state"] == "partially-failed", job
    held = [i for i in job["instances"] if i["status"] == "failed"]
    assert [i["sop_instance_uid"] for i in held] == [us_uid]
    assert held[0]["error"].startswith("held: burned-in annotation possible"), held
    assert "US" in held[0]["error"] and not held[0]["retryable"]
    assert job["attempts"] == 1
    new_study = job["summary"]["anonymized"][made["study"]]
    assert len(copies(daemon, new_study)) == 2  # the CT images, nothing else lost
    assert any("held" in text for _, text in job["log"])

    # The preview lists it too, for the console's confirmation.
    with ControlClient(control_socket_path(daemon.data_dir), role="technologist") as client:
        answer = client.call("anonymize.preview", profile="basic", study_uid=made["study"])
    assert [h["instance"] for h in answer["held_instances"]] == [us_uid]

    confirmed = run_job(
        daemon, "--profile", "basic", "--study", made["study"], "--confirm-pixels", us_uid
    )
    assert confirmed["state"] == "succeeded", confirmed
    assert confirmed["summary"]["anonymized"][made["study"]] == new_study
    kinds = {str(ds.Modality) for ds in copies(daemon, new_study)}
    assert kinds == {"CT", "US"} and len(copies(daemon, new_study)) == 3


def test_sigkill_mid_job_finishes_without_duplicates(daemon_factory, tmp_path):
    daemon = daemon_factory().start()
    made = write_study(tmp_path / "in", series=2, count=30, size=128)
    store(daemon, made["files"])
    result = anonymize(daemon, "--profile", "basic", "--study", made["study"])
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout.split()[0])
    deadline = time.monotonic() + 60
    with ControlClient(control_socket_path(daemon.data_dir), role="technologist") as client:
        while True:
            assert time.monotonic() < deadline, "the job never got going"
            current = client.call("jobs.show", id=job_id)
            if 5 <= current["counts"]["success"] < 60:
                break
            assert current["state"] not in FINAL, "finished before the kill: make it larger"
            time.sleep(0.02)
    daemon.kill()
    jobs = JobStore(daemon.data_dir)
    try:
        left = jobs.get(job_id)
    finally:
        jobs.close()
    assert left is not None and left.state == "running"
    done_before = sum(1 for i in left.instances if i.status == "success")
    assert done_before < 60

    daemon.start()
    job = wait_job(daemon, job_id, FINAL)
    assert job["state"] == "succeeded", job
    assert any("interrupted by a daemon restart" in text for _, text in job["log"])
    new_study = job["summary"]["anonymized"][made["study"]]
    rows = index_rows(daemon, new_study)
    assert len(rows) == 60 and len({uid for uid, _ in rows}) == 60
    assert len(copies(daemon, new_study)) == 60
    assert len(index_rows(daemon, made["study"])) == 60


def test_preview_table_and_the_control_ops(daemon_factory, tmp_path):
    daemon = daemon_factory().start()
    made = write_study(tmp_path / "in", series=1, count=1)
    store(daemon, made["files"])

    shown = anonymize(daemon, "preview", "--profile", "basic", "--study", made["study"])
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1].split() == ["ATTRIBUTE", "ORIGINAL", "ACTION", "RESULT"]
    name_row = next(line for line in lines if line.startswith("PatientName"))
    assert "DOE^JOHN" in name_row and "(0010,0010)" in name_row
    as_json = anonymize(daemon, "preview", "--profile", "basic", "--file", str(made["files"][0]),
                        "--json")  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert answer["instance"] == made["uids"][0] and answer["held"] is None
    rows = {r["keyword"]: r for r in answer["rows"]}
    assert rows["PatientName"]["original"] == "DOE^JOHN"
    assert rows["PatientName"]["result"] != "DOE^JOHN"
    assert set(rows["PatientName"]) == {"tag", "keyword", "original", "action", "result"}

    with ControlClient(control_socket_path(daemon.data_dir), role="technologist") as client:
        profiles = client.call("anonymize.profiles")
        assert profiles[0]["name"] == "basic" and profiles[0]["builtin"]
        by_uid = client.call("anonymize.preview", profile="basic", sop_instance_uid=made["uids"][0])

        # The archive's file has a Source AE Title in its meta: otherwise the same table.
        def dataset_rows(rows: list[dict]) -> list[dict]:
            return [r for r in rows if not r["tag"].startswith("(0002,")]

        assert dataset_rows(by_uid["rows"]) == dataset_rows(answer["rows"])
        with pytest.raises(ApiError, match="no anonymization profile"):
            client.call("anonymize.preview", profile="nope", study_uid=made["study"])
        with pytest.raises(ApiError, match="no study"):
            client.call("anonymize.preview", profile="basic", study_uid="1.2.3")
        with pytest.raises(ApiError, match="no study 1.2.3"):
            client.call("anonymize.submit", profile="basic", study_uids=["1.2.3"])
        with pytest.raises(ApiError, match="no node"):
            client.call(
                "anonymize.submit", profile="basic", study_uids=[made["study"]], send="nowhere"
            )
        job = client.call("anonymize.submit", profile="basic", study_uids=[made["study"]])
        assert job["kind"] == "anonymize" and job["state"] == "queued"
        assert job["params"]["requested_by"]["user_name"] == "technologist"
    # Looking does not make pseudonyms: only the job did.
    done = wait_job(daemon, job["id"], FINAL)
    assert done["state"] == "succeeded", done
