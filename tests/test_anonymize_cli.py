"""`dicom-appliance anonymize` on plain files and without a daemon, and its refusals.

Plain files need no daemon: every DICOM file under --input is written under --output by its
new UIDs (no original file or folder name survives), held files are reported with exit 3,
files that are not DICOM are skipped and listed. Archived studies without a daemon are
anonymized directly, once, and the command says so.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pydicom

from tests.factories import write_ct_series
from tests.peers import appliance_cmd, run
from tests.scp_helpers import storescu
from tests.test_anonymize_jobs import PHI, index_rows, us_file, write_study


def cli(data_dir: Path, *args: str, cwd: Path | None = None):
    return run(appliance_cmd("anonymize", *args, "--data-dir", str(data_dir)), cwd=cwd)


def every_byte_clean(path: Path) -> None:
    blob = path.read_bytes()
    for value in PHI:
        assert value.encode() not in blob, (path, value)


def test_plain_files_in_and_out(tmp_path):
    data = tmp_path / "data"
    source = tmp_path / "in"
    # Folders named after the patient, as exports often are.
    write_ct_series(source / "DOE_JOHN" / "CT", 3)
    us_path, us_uid = us_file(source / "DOE_JOHN" / "US", "1.2.3.4.5")
    (source / "notes.txt").write_text("not DICOM")
    out = tmp_path / "out"

    result = cli(data, "--profile", "basic", "--input", str(source), "--output", str(out))
    assert result.returncode == 3, result.stdout + result.stderr  # one file held
    assert "held    DOE_JOHN/US/us.dcm: held: burned-in annotation possible" in result.stdout
    assert "skipped notes.txt: not a DICOM file" in result.stdout
    assert "3 anonymized, 1 held, 0 failed, 1 skipped" in result.stdout
    written = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(written) == 3
    for path in written:
        assert "DOE" not in str(path.relative_to(out))
        assert path.suffix == ".dcm" and path.stem.startswith("2.25.")
        every_byte_clean(path)
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert str(ds.SOPInstanceUID) == path.stem
    assert not list(out.rglob(".*.part"))
    assert (data / "anonymization" / "pseudonyms.sqlite").stat().st_mode & 0o777 == 0o600

    # The same files again, the US image confirmed: the same copies, plus the US image.
    again = cli(
        data, "--profile", "basic", "--input", str(source), "--output", str(out),
        "--confirm-pixels", us_uid, "--json",
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    report = json.loads(again.stdout)
    assert report["done"] == 4 and report["held"] == [] and len(report["skipped"]) == 1
    rewritten = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(rewritten) == 4 and set(written) <= set(rewritten)
    assert {str(pydicom.dcmread(p).PatientID) for p in rewritten} == {"ANON000001"}

    # Refusals: the output inside the input, a missing input, an unknown profile.
    inside = cli(data, "--profile", "basic", "--input", str(source), "--output", str(source / "x"))
    assert inside.returncode == 2 and "must not be the input folder" in inside.stderr
    missing = cli(data, "--profile", "basic", "--input", str(tmp_path / "nope"), "--output", "o")
    assert missing.returncode == 2 and "no such folder" in missing.stderr
    unknown = cli(data, "--profile", "nope", "--input", str(source), "--output", str(out))
    assert unknown.returncode == 2 and "no anonymization profile named 'nope'" in unknown.stderr
    alone = cli(data, "--profile", "basic", "--input", str(source))
    assert alone.returncode == 2 and "go together" in alone.stderr
    nothing = cli(data, "--profile", "basic")
    assert nothing.returncode == 2 and "give --study" in nothing.stderr
    no_profile = cli(data, "--study", "1.2.3")
    assert no_profile.returncode == 2 and "--profile is required" in no_profile.stderr


def test_archived_study_without_a_daemon(daemon_factory, tmp_path):
    daemon = daemon_factory().start()
    made = write_study(tmp_path / "in", series=2, count=2)
    us_path, us_uid = us_file(tmp_path / "us", made["study"])
    stored = storescu(daemon, [*made["files"], us_path])
    assert stored.returncode == 0, stored.stdout + stored.stderr
    # A refusal while the daemon runs comes from the job's validator.
    refused = daemon.cli("anonymize", "--profile", "basic", "--study", "1.2.3")
    assert refused.returncode == 2 and "no study 1.2.3" in refused.stderr
    daemon.stop()

    result = daemon.cli("anonymize", "--profile", "basic", "--study", made["study"])
    assert result.returncode == 3, result.stdout + result.stderr
    assert "daemon is not running" in result.stderr
    assert f"held    {us_uid}: held: burned-in annotation possible" in result.stdout
    assert "4 anonymized, 1 held, 0 failed" in result.stdout
    new_study = result.stdout.split(f"study {made['study']} -> ")[1].split()[0]
    assert len(index_rows(daemon, new_study)) == 4

    confirmed = daemon.cli(
        "anonymize", "--profile", "basic", "--study", made["study"], "--confirm-pixels", us_uid,
        "--json",
    )  # fmt: skip
    assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
    report = json.loads(confirmed.stdout)
    assert report["anonymized"] == {made["study"]: new_study}
    assert report["done"] == 5 and not report["held"]
    assert len(index_rows(daemon, new_study)) == 5
    links = sqlite3.connect(daemon.data_dir / "anonymization" / "links.sqlite")
    try:
        assert links.execute("SELECT DISTINCT anonymized_study FROM links").fetchall() == [
            (new_study,)
        ]
    finally:
        links.close()

    # Preview without a daemon: the archive read directly.
    shown = daemon.cli("anonymize", "preview", "--profile", "basic", "--study", made["study"])
    assert shown.returncode == 0, shown.stderr
    assert "held in the study: " + us_uid in shown.stdout
    bad = daemon.cli("anonymize", "preview", "--profile", "basic", "--study", "1.2.3")
    assert bad.returncode == 2 and "no study 1.2.3" in bad.stderr
