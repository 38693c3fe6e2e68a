"""The Print SCP with real peers (DS-29): DCMTK ``dcmpsprt`` and ``dcmprscu`` print to a running
daemon as a modality would; the films land in the archive as Stored Print and Hardcopy objects,
and a virtual printer mapped to DCMTK ``dcmprscp`` (a film imager) gets them printed, also
across a SIGKILL of the daemon right after the modality's print was answered."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

import tests.print_peers as print_peers
from tests.factories import write_ct_series
from tests.peers import LOOPBACK, Daemon, dcmtk, free_port
from tests.print_peers import Dcmprscp
from tests.test_jobs_daemon import FAST_RETRY, wait_job
from tests.test_print_scp import assert_dciodvfy_clean

STORED_PRINT = "1.2.840.10008.5.1.1.27"
HARDCOPY_GRAYSCALE = "1.2.840.10008.5.1.1.29"
FINAL = {"succeeded", "failed", "partially-failed", "cancelled"}


class Modality:
    """A DCMTK print workstation: a dcmpstat.cfg with one PRINTER entry (our virtual printer),
    its own database and spool folders, and CT images to print."""

    def __init__(self, folder: Path, port: int, ae_title: str) -> None:
        self.folder = folder
        for sub in ("database", "spool", "log", "lut"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        self.config = folder / "dcmpstat.cfg"
        self.config.write_text(
            f"""[[GENERAL]]
[APPLICATION]
LogDirectory = {folder / "log"}
LogFile = general.log
LogLevel = INFO
MessagePort = 0
KeepMessagePortOpen = false
[PRINT]
Spooler = {dcmtk("dcmprscu")}
Server = {dcmtk("dcmprscp")}
Directory = {folder / "spool"}
Sleep = 1
DetailedLog = false
BinaryLog = false
DeletePrintJobs = true
AlwaysDeleteTerminateJobs = true
DefaultIllumination = 2000
DefaultReflection = 10
[DATABASE]
Directory = {folder / "database"}
[LUT]
Directory = {folder / "lut"}
[NETWORK]
Aetitle = CT_MODALITY

[[COMMUNICATION]]
[OURPRINTER]
Aetitle = {ae_title}
Description = the appliance as a virtual printer
Hostname = {LOOPBACK}
Port = {port}
Type = PRINTER
ImplicitOnly = false
DisableNewVRs = false
MaxPDU = 32768
DisplayFormat = 1,1\\2,1\\1,2\\2,2
FilmSizeID = 14INX17IN\\8INX10IN
MediumType = BLUE FILM\\PAPER
FilmDestination = PROCESSOR\\MAGAZINE
MagnificationType = REPLICATE\\BILINEAR\\CUBIC\\NONE
Supports12Bit = true
SupportsPresentationLUT = false
SupportsTrim = false
SupportsImageSize = false
SupportsDecimateCrop = false
""",
            encoding="ascii",
        )
        self.images = write_ct_series(folder / "images", 2, rows=64, columns=64)

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [dcmtk(tool), "-c", str(self.config), "-p", "OURPRINTER", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.folder,
        )

    def make_job(self, *args: str) -> Path:
        """dcmpsprt without spooling: a Stored Print and its Hardcopy images in the database."""
        before = set((self.folder / "database").glob("SP_*.dcm"))
        result = self.run("dcmpsprt", *args, *map(str, self.images))
        assert result.returncode == 0, result.stdout + result.stderr
        [made] = set((self.folder / "database").glob("SP_*.dcm")) - before
        return made


def archived(daemon: Daemon, sop_class: str) -> list[pydicom.Dataset]:
    with sqlite3.connect(daemon.data_dir / "index.sqlite") as db:
        rows = db.execute(
            "SELECT path FROM instances WHERE sop_class_uid = ? ORDER BY path", (sop_class,)
        ).fetchall()
    return [pydicom.dcmread(daemon.data_dir / "archive" / row[0]) for row in rows]


def wait_archived(daemon: Daemon, sop_class: str, count: int, timeout: float = 30) -> list:
    deadline = time.monotonic() + timeout
    while True:
        found = archived(daemon, sop_class)
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{len(found)} of {count} {sop_class}\n{daemon.log()}"
        time.sleep(0.2)


def print_jobs(daemon: Daemon) -> list[dict]:
    result = daemon.cli("jobs", "list", "--kind", "print", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def imager(tmp_path: Path) -> Iterator[Dcmprscp]:
    peer = Dcmprscp(tmp_path / "imager")
    yield peer
    peer.stop()


def test_dcmpsprt_spools_a_film_to_the_print_port(daemon_factory, tmp_path):
    print_port = free_port()
    daemon = daemon_factory(print_port=print_port).start()
    modality = Modality(tmp_path / "modality", print_port, "APPLIANCE_PRINT")
    # dcmpsprt renders the job and starts DCMTK's spooler (dcmprscu), which prints it to us.
    result = modality.run("dcmpsprt", "--spool", "--layout", "2", "1", *map(str, modality.images))
    assert result.returncode == 0, result.stdout + result.stderr
    [stored] = wait_archived(daemon, STORED_PRINT, 1)
    hardcopies = wait_archived(daemon, HARDCOPY_GRAYSCALE, 2)
    assert stored.FilmBoxContentSequence[0].ImageDisplayFormat == "STANDARD\\2,1"
    printer = stored.PrinterCharacteristicsSequence[0]
    assert (printer.Originator, printer.DestinationAE) == ("CT_MODALITY", "APPLIANCE_PRINT")
    refs = {
        str(item.ReferencedImageSequence[0].ReferencedSOPInstanceUID)
        for item in stored.ImageBoxContentSequence
    }
    assert refs == {str(ds.SOPInstanceUID) for ds in hardcopies}
    for ds in [stored, *hardcopies]:
        assert_dciodvfy_clean(Path(ds.filename))
    # The default virtual printer holds: no print job.
    assert print_jobs(daemon) == []
    # The print port stores nothing but films: a C-STORE there is refused.
    store = subprocess.run(
        [dcmtk("storescu"), LOOPBACK, str(print_port), str(modality.images[0])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert store.returncode != 0 or "Success" not in store.stdout + store.stderr
    assert len(archived(daemon, "1.2.840.10008.5.1.4.1.1.2")) == 0


def test_dcmprscu_prints_on_the_main_port_film_box_and_session_print(daemon_factory, tmp_path):
    daemon = daemon_factory().start()
    modality = Modality(tmp_path / "modality", daemon.port, daemon.ae_title)
    job = modality.make_job("--layout", "1", "2", "--filmsize", "14INX17IN")
    for options in ((), ("--session-print",)):
        result = modality.run(
            "dcmprscu", *options, "--copies", "2", "--medium-type", "PAPER", str(job)
        )
        assert result.returncode == 0, result.stdout + result.stderr
    stored = wait_archived(daemon, STORED_PRINT, 2)
    assert len(wait_archived(daemon, HARDCOPY_GRAYSCALE, 4)) == 4
    for ds in stored:
        content = ds.FilmBoxContentSequence[0]
        assert (content.ImageDisplayFormat, content.FilmSizeID) == ("STANDARD\\1,2", "14INX17IN")
        assert ds.PrinterCharacteristicsSequence[0].DestinationAE == "APPLIANCE"
        assert_dciodvfy_clean(Path(ds.filename))
    # Films keep their own study, apart from the images the modality printed.
    assert len({str(ds.StudyInstanceUID) for ds in stored}) == 2
    # The Stored Prints and their Hardcopy images agree on patient, study and series.
    files = [str(ds.filename) for ds in stored + archived(daemon, HARDCOPY_GRAYSCALE)]
    check = subprocess.run(["/usr/bin/dcentvfy", *files], capture_output=True, text=True)
    assert "Error" not in check.stdout + check.stderr, check.stdout + check.stderr


def _virtual_printer(daemon: Daemon, port: int) -> None:
    result = daemon.cli(
        "printer", "add", "film", "--ae-title", "FULLPRINTER", "--host", LOOPBACK,
        "--port", str(port), "--layout", "STANDARD\\1,1", "--layout", "STANDARD\\1,2",
        "--layout", "STANDARD\\2,2", "--film-size", "14INX17IN", "--film-size", "8INX10IN",
        "--medium-type", "PAPER", "--medium-type", "BLUE FILM",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    result = daemon.cli(
        "virtual-printer", "add", "ct", "--ae-title", "CTPRINT", "--printer", "film"
    )
    assert result.returncode == 0, result.stderr
    listing = daemon.cli("virtual-printer", "list")
    assert "ct: AE title CTPRINT, prints on film" in listing.stdout


def test_a_modality_prints_through_the_appliance_onto_a_film_imager(
    daemon_factory, imager, tmp_path
):
    daemon = daemon_factory(**FAST_RETRY).start()
    _virtual_printer(daemon, imager.port)
    modality = Modality(tmp_path / "modality", daemon.port, "CTPRINT")
    job = modality.make_job("--layout", "1", "2", "--filmsize", "8INX10IN")
    result = modality.run("dcmprscu", "--medium-type", "PAPER", str(job))
    assert result.returncode == 0, result.stdout + result.stderr
    [stored] = wait_archived(daemon, STORED_PRINT, 1)
    [queued] = print_jobs(daemon)
    assert queued["target"] == "film"
    done = wait_job(daemon, queued["id"], FINAL, timeout=60)
    assert done["state"] == "succeeded", done
    assert done["params"]["stored_print_uids"] == [str(stored.SOPInstanceUID)]
    [printed] = imager.stored_prints()
    assert printed.FilmBoxContentSequence[0].ImageDisplayFormat == "STANDARD\\1,2"
    assert printed.FilmBoxContentSequence[0].FilmSizeID == "8INX10IN"
    assert len(imager.hardcopy_images()) == 2


def test_sigkill_after_the_print_was_answered_loses_nothing(daemon_factory, tmp_path, monkeypatch):
    daemon = daemon_factory(**FAST_RETRY).start()
    imager_port = free_port()  # nothing listens there yet: the film imager is down
    _virtual_printer(daemon, imager_port)
    modality = Modality(tmp_path / "modality", daemon.port, "CTPRINT")
    job = modality.make_job("--layout", "2", "2")
    result = modality.run("dcmprscu", str(job))
    assert result.returncode == 0, result.stdout + result.stderr
    # The modality has its answer: kill the daemon at once.
    daemon.kill()
    [stored] = archived(daemon, STORED_PRINT)
    assert len(archived(daemon, HARDCOPY_GRAYSCALE)) == 2
    assert str(stored.SOPInstanceUID) in (daemon.data_dir / "jobs" / "active.json").read_text()

    monkeypatch.setattr(print_peers, "free_port", lambda: imager_port)
    imager = Dcmprscp(tmp_path / "imager")
    try:
        daemon.start()
        [queued] = print_jobs(daemon)
        done = wait_job(daemon, queued["id"], FINAL, timeout=60)
        assert done["state"] == "succeeded", done
        [printed] = imager.stored_prints()
        assert printed.FilmBoxContentSequence[0].ImageDisplayFormat == "STANDARD\\2,2"
    finally:
        imager.stop()
