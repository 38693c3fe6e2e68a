"""`media burn` through a running daemon (and without one) to file-backed drives.

Every disc image is read back with xorriso and checked with independent tools: DCMTK
``dcmmkdir`` in strict mode rebuilds a DICOMDIR from the extracted files (STD-GEN-CD rules:
names, transfer syntax, Type 1 keys), ``dcmdump`` reads the DICOMDIR, dicom3tools
``dciodvfy`` finds no error in it, every file it references exists and every file is
Explicit VR Little Endian.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from appliance.control import ApiError, control_socket_path
from appliance.control_client import ControlClient
from appliance.job_store import JobStore
from tests.factories import write_ct_series
from tests.peers import appliance_cmd, dcmtk, run
from tests.scp_helpers import storescu
from tests.test_jobs_daemon import wait_job

XORRISO = "/usr/bin/xorriso"
DCIODVFY = "/usr/bin/dciodvfy"
FINAL = {"succeeded", "failed", "partially-failed", "cancelled"}
QUICK_RETRY = {
    "retry_first_delay": 0.5,
    "retry_multiplier": 1,
    "retry_max_delay": 1,
    "retry_max_attempts": 2,
}


def store_study(
    daemon, folder: Path, series: int = 1, count: int = 3, size: int = 32, **kwargs: object
) -> str:
    """A study of ``series`` series of ``count`` CT images stored in the daemon."""
    study_uid = str(kwargs.pop("study_uid", None) or generate_uid())
    files: list[Path] = []
    for n in range(series):
        files += write_ct_series(
            folder / f"s{n}", count, rows=size, columns=size, study_uid=study_uid, **kwargs
        )
    result = storescu(daemon, files)
    assert result.returncode == 0, result.stdout + result.stderr
    return study_uid


def burn(daemon, target: str, *studies: str, extra: tuple[str, ...] = ()):
    args = [arg for uid in studies for arg in ("--study", uid)]
    return daemon.cli("media", "burn", *args, "--drive", target, *extra)


def queue_burn(daemon, target: str, *studies: str, extra: tuple[str, ...] = ()) -> int:
    result = burn(daemon, target, *studies, extra=extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return int(result.stdout.split()[0])


def extract(iso: Path, into: Path) -> Path:
    done = subprocess.run(
        [XORRISO, "-osirrox", "on", "-indev", f"stdio:{iso}", "-extract", "/", str(into)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return into


def check_fileset(root: Path, scratch: Path) -> set[str]:
    """Every check an independent tool can make of an extracted disc; returns the SOP
    Instance UIDs on it."""
    dicomdir = root / "DICOMDIR"
    assert dicomdir.is_file()
    for name in ("README.TXT", "INDEX.HTM"):
        assert (root / name).is_file(), name
    dumped = subprocess.run(
        [dcmtk("dcmdump"), str(dicomdir)], capture_output=True, text=True, timeout=60
    )
    assert dumped.returncode == 0 and "E:" not in dumped.stderr, dumped.stderr
    verified = subprocess.run([DCIODVFY, str(dicomdir)], capture_output=True, text=True, timeout=60)
    errors = [line for line in verified.stderr.splitlines() if line.startswith("Error")]
    assert not errors, verified.stderr
    # Strict: DCMTK builds a STD-GEN-CD DICOMDIR of the same files or says why not (a bad
    # name, a transfer syntax the profile does not allow, a Type 1 key missing).
    scratch.mkdir(parents=True, exist_ok=True)
    strict = subprocess.run(
        [dcmtk("dcmmkdir"), "-Pgp", "-I", "-a", "+r", "+id", str(root),
         "+D", str(scratch / "DICOMDIR"), "DICOM"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert strict.returncode == 0, strict.stdout + strict.stderr
    fs = pydicom.dcmread(dicomdir)
    referenced = [
        root.joinpath(*record.ReferencedFileID)
        for record in fs.DirectoryRecordSequence
        if "ReferencedFileID" in record
    ]
    assert referenced
    uids = set()
    for path in referenced:
        assert path.is_file(), path
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, path
        uids.add(str(ds.SOPInstanceUID))
    dicom_files = [p for p in (root / "DICOM").rglob("*") if p.is_file()]
    assert len(dicom_files) == len(referenced)
    return uids


def stages_seen(events) -> list[str]:
    seen: list[str] = []
    while True:
        event = events.get(timeout=0.2)
        if event is None:
            return seen
        stage = event.get("data", {}).get("stage")
        if event.get("topic") == "job" and stage and (not seen or seen[-1] != stage):
            seen.append(stage)


def test_burn_a_study_through_the_daemon(daemon_factory, tmp_path):
    daemon = daemon_factory(media_institution="General Hospital").start()
    # Implicit VR objects too: a CD file-set holds Explicit VR Little Endian only.
    study = store_study(daemon, tmp_path / "study", count=2)
    store_study(
        daemon, tmp_path / "more", count=2, study_uid=study, transfer_syntax=ImplicitVRLittleEndian
    )
    out = tmp_path / "out"
    out.mkdir()
    iso = out / "disc.iso"
    client = ControlClient(control_socket_path(daemon.data_dir), role="service")
    events = client.subscribe(["job"])
    result = burn(daemon, f"stdio:{iso}", study)
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout.split()[0])
    assert f"queued burn job {job_id}" in result.stderr
    done = wait_job(daemon, job_id, FINAL)
    assert done["state"] == "succeeded", done
    assert done["kind"] == "burn" and done["target"] == f"stdio:{iso}"
    assert [i["sop_instance_uid"] for i in done["instances"]] == ["disc-1"]
    assert done["instances"][0]["path"] == f"stdio:{iso}"
    assert done["summary"]["patient_name"] == "DOE^JOHN"
    assert done["summary"]["discs"] == 1 and done["summary"]["profile"] == "STD-GEN-CD"
    stages = stages_seen(events)
    events.close()
    client.close()
    for stage in (
        "planning",
        "building disc 1 of 1",
        "writing disc 1 of 1",
        "verifying disc 1 of 1",
    ):
        assert any(s.startswith(stage) for s in stages), stages
    assert not (daemon.data_dir / "spool" / f"burn-{job_id}").exists()

    root = extract(iso, tmp_path / "read")
    assert len(check_fileset(root, tmp_path / "check")) == 4
    label = (root / "LABEL.TXT").read_text()
    assert "DOE, JOHN" in label and "General Hospital" in label and "1 of 1" in label
    shown = daemon.cli("jobs", "show", str(job_id))
    assert f"disc 1 of 1 burned and verified: stdio:{iso}" in shown.stdout


def test_a_study_spans_two_discs(daemon_factory, tmp_path):
    daemon = daemon_factory().start()
    # Two series of ~0.8 MB: a 5 MB disc keeps 4 MB for the DICOMDIR and the PDI files.
    study = store_study(daemon, tmp_path / "study", series=2, count=6, size=256)
    iso = tmp_path / "out" / "disc.iso"
    iso.parent.mkdir()
    result = burn(daemon, f"stdio:{iso}", study, extra=("--capacity", "5", "--wait"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stdout
    second = tmp_path / "out" / "disc-2.iso"
    assert iso.is_file() and second.is_file()
    assert not (tmp_path / "out" / "disc-3.iso").exists()
    on_discs = []
    for number, image in enumerate((iso, second), start=1):
        root = extract(image, tmp_path / f"read{number}")
        on_discs.append(check_fileset(root, tmp_path / f"check{number}"))
        assert f"{number} of 2" in (root / "LABEL.TXT").read_text()
        assert f"{number} of 2" in (root / "INDEX.HTM").read_text()
    assert on_discs[0] and on_discs[1] and not on_discs[0] & on_discs[1]
    assert len(on_discs[0] | on_discs[1]) == 12


def test_refusals_non_blank_and_unwritable_targets(daemon_factory, tmp_path):
    daemon = daemon_factory(**QUICK_RETRY).start()
    study = store_study(daemon, tmp_path / "study")
    other = store_study(daemon, tmp_path / "other", patient_id="PAT002", patient_name="ROE^JANE")
    out = tmp_path / "out"
    out.mkdir()

    # Refused at once, with the reason.
    unknown = burn(daemon, f"stdio:{out / 'x.iso'}", "1.2.3.4")
    assert unknown.returncode == 2 and "no study 1.2.3.4" in unknown.stderr
    mixed = burn(daemon, f"stdio:{out / 'x.iso'}", study, other)
    assert mixed.returncode == 2 and "different patients" in mixed.stderr, mixed.stderr
    assert "DOE^JOHN" in mixed.stderr and "ROE^JANE" in mixed.stderr
    bad_drive = burn(daemon, "cdrom", study)
    assert bad_drive.returncode == 2 and "not a drive" in bad_drive.stderr
    assert not list(out.iterdir())

    # A disc that is not blank: the job fails with the reason, the next job still burns.
    used = out / "used.iso"
    first = queue_burn(daemon, f"stdio:{used}", study)
    assert wait_job(daemon, first, FINAL)["state"] == "succeeded"
    before = used.read_bytes()
    refused = queue_burn(daemon, f"stdio:{used}", other)
    with ControlClient(control_socket_path(daemon.data_dir), role="technologist") as client:
        # The same through the API: media.burn answers with the job.
        queued = client.call("media.burn", drive=f"stdio:{out / 'next.iso'}", study_uids=[other])
        assert queued["kind"] == "burn" and queued["state"] == "queued"
        with pytest.raises(ApiError, match="different patients"):
            client.call("media.burn", drive=f"stdio:{out / 'y.iso'}", study_uids=[study, other])
        with pytest.raises(ApiError, match="not a drive"):
            client.call("media.burn", drive="cdrom", study_uids=[study])
        with pytest.raises(ApiError, match="absolute path"):
            client.call("media.burn", drive="stdio:disc.iso", study_uids=[study])
    failed = wait_job(daemon, refused, FINAL)
    assert failed["state"] == "failed", failed
    assert "not blank" in failed["error"]
    assert failed["attempts"] == 1  # another attempt on the same medium cannot help
    assert used.read_bytes() == before
    assert wait_job(daemon, queued["id"], FINAL)["state"] == "succeeded"
    extract(out / "next.iso", tmp_path / "next")

    # A target that cannot be written: xorriso's reason.
    unwritable = queue_burn(daemon, "stdio:/proc/disc.iso", study)
    done = wait_job(daemon, unwritable, FINAL)
    assert done["state"] == "failed", done
    assert "Failed to open device" in done["error"], done["error"]


def test_sigkill_during_a_two_disc_burn_burns_only_the_rest(daemon_factory, tmp_path):
    daemon = daemon_factory().start()
    study = store_study(daemon, tmp_path / "study", series=2, count=6, size=256)
    iso = tmp_path / "out" / "disc.iso"
    second = tmp_path / "out" / "disc-2.iso"
    iso.parent.mkdir()
    client = ControlClient(control_socket_path(daemon.data_dir), role="service")
    events = client.subscribe(["job"])
    job_id = queue_burn(daemon, f"stdio:{iso}", study, extra=("--capacity", "5"))
    # Killed as soon as disc 2 is being written: disc 1 is burned and recorded, disc 2's
    # image is half written (or written but not verified).
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "disc 2 never started"
        event = events.get(timeout=1)
        if event is None or event.get("topic") != "job":
            continue
        data = event["data"]
        if data["id"] == job_id and str(data.get("stage", "")).startswith("writing disc 2"):
            daemon.kill()
            break
    events.close()
    client.close()
    assert iso.is_file()
    first = iso.stat()
    # What the killed daemon left on disk: disc 1 burned, disc 2 still to do.
    store = JobStore(daemon.data_dir)
    try:
        left = store.get(job_id)
    finally:
        store.close()
    assert left is not None and left.state == "running"
    assert [(i.sop_instance_uid, i.status) for i in left.instances] == [
        ("disc-1", "success"),
        ("disc-2", "pending"),
    ]
    # The job knows it was writing disc 2 to a file that was not there before: what the
    # killed xorriso left (here made sure of: a half-written image) is removed, not kept.
    assert left.params["writing"] == {"disc": 2, "path": str(second), "fresh": True}
    if not second.exists():
        second.write_bytes(b"\0" * 65536 + b"CD001 half written")

    daemon.start()
    done = wait_job(daemon, job_id, FINAL)
    assert done["state"] == "succeeded", done
    assert any("interrupted by a daemon restart" in text for _, text in done["log"])
    assert any("unfinished image of disc 2" in text for _, text in done["log"])
    burned = [text for _, text in done["log"] if "burned and verified" in text]
    assert [t.split(" burned")[0] for t in burned] == ["disc 1 of 2", "disc 2 of 2"], burned
    # Disc 1 was not written again.
    again = iso.stat()
    assert (again.st_ino, again.st_mtime_ns, again.st_size) == (
        first.st_ino,
        first.st_mtime_ns,
        first.st_size,
    )
    for number, image in enumerate((iso, second), start=1):
        root = extract(image, tmp_path / f"read{number}")
        check_fileset(root, tmp_path / f"check{number}")


def test_without_a_daemon_the_disc_is_burned_directly(daemon_factory, tmp_path):
    daemon = daemon_factory().start()
    study = store_study(daemon, tmp_path / "study")
    daemon.stop()
    iso = tmp_path / "disc.iso"
    result = burn(daemon, f"stdio:{iso}", study, extra=("--no-label",))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "daemon is not running" in result.stderr
    assert f"disc 1 of 1 burned and verified: stdio:{iso}" in result.stdout
    root = extract(iso, tmp_path / "read")
    assert len(check_fileset(root, tmp_path / "check")) == 3
    assert not (root / "LABEL.TXT").exists()
    # The same disc again: not blank, said so, nothing overwritten.
    before = iso.read_bytes()
    again = burn(daemon, f"stdio:{iso}", study, extra=("--json",))
    assert again.returncode == 1, again.stdout + again.stderr
    report = json.loads(again.stdout)
    assert [(r["disc"], r["ok"]) for r in report] == [(1, False)]
    assert "not blank" in report[0]["error"]
    assert iso.read_bytes() == before
    # A relative stdio: path is the caller's, made absolute before it reaches the burner.
    relative = run(
        appliance_cmd("media", "burn", "--study", study, "--drive", "stdio:rel.iso",
                      "--data-dir", str(daemon.data_dir)),
        cwd=tmp_path,
    )  # fmt: skip
    assert relative.returncode == 0, relative.stdout + relative.stderr
    assert f"burned and verified: stdio:{tmp_path / 'rel.iso'}" in relative.stdout
