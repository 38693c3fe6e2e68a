"""`printer` and `print` through a running daemon, with DCMTK dcmprscp as the film imager."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.print_peers as print_peers
from appliance.control import control_socket_path
from appliance.control_client import ControlClient
from tests.factories import write_ct_series
from tests.peers import LOOPBACK, free_port
from tests.print_peers import Dcmprscp
from tests.scp_helpers import storescu
from tests.test_jobs_daemon import FAST_RETRY, wait_job

FINAL = {"succeeded", "failed", "partially-failed", "cancelled"}


@pytest.fixture
def imager(tmp_path: Path) -> Iterator[Dcmprscp]:
    peer = Dcmprscp(tmp_path / "imager")
    yield peer
    peer.stop()


def store_study(daemon, folder: Path, count: int, **kwargs: object) -> str:
    files = write_ct_series(folder, count, rows=32, columns=32, **kwargs)
    result = storescu(daemon, files)
    assert result.returncode == 0, result.stdout + result.stderr
    import pydicom

    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def add_printer(daemon, name: str, ae_title: str, port: int, *extra: str) -> None:
    result = daemon.cli(
        "printer", "add", name, "--ae-title", ae_title, "--host", LOOPBACK, "--port", str(port),
        *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def queue_print(daemon, printer: str, study: str, *extra: str) -> int:
    result = daemon.cli(
        "print", "--printer", printer, "--study", study, "--layout", "STANDARD\\2,2", *extra
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return int(result.stdout.split()[0])


def test_print_a_study_through_the_daemon(daemon_factory, imager, tmp_path):
    daemon = daemon_factory(**FAST_RETRY).start()
    study = store_study(daemon, tmp_path / "study", 6)
    add_printer(daemon, "film", imager.ae_title, imager.port, "--bits", "12")

    job_id = queue_print(daemon, "film", study)
    done = wait_job(daemon, job_id, FINAL)
    assert done["state"] == "succeeded", done
    assert done["kind"] == "print" and done["target"] == "film"
    assert [i["sop_instance_uid"] for i in done["instances"]] == ["film-1", "film-2"]
    assert done["summary"]["patient_name"] == "DOE^JOHN"
    assert done["summary"]["films"] == 2
    # 6 images on 2x2: two films, 4 + 2 images, each one Stored Print at the imager
    stored = imager.stored_prints()
    assert len(stored) == 2, imager.log()
    assert sorted(len(ds.ImageBoxContentSequence) for ds in stored) == [2, 4]
    for ds in stored:
        assert ds.FilmBoxContentSequence[0].ImageDisplayFormat == "STANDARD\\2,2"
    assert {int(ds.BitsStored) for ds in imager.hardcopy_images()} == {12}
    shown = daemon.cli("jobs", "show", str(job_id))
    assert "film 2 of 2 printed on film" in shown.stdout

    # The printer's status is live: NORMAL from dcmprscp, an unreachable one said so.
    add_printer(daemon, "gone", "NOBODY", free_port())
    listing = daemon.cli("printer", "list")
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    assert "NORMAL" in lines["film"]
    assert "unreachable" in lines["gone"]
    as_json = json.loads(daemon.cli("printer", "list", "--json").stdout)
    assert {p["name"]: p["status"]["printer_status"] for p in as_json} == {
        "film": "NORMAL",
        "gone": None,
    }
    assert daemon.cli("printer", "remove", "gone").returncode == 0
    assert [p["name"] for p in json.loads(daemon.cli("printer", "list", "--json").stdout)] == [
        "film"
    ]


def test_print_wait_and_refusals(daemon_factory, imager, tmp_path):
    daemon = daemon_factory(**FAST_RETRY).start()
    study = store_study(daemon, tmp_path / "study", 3)
    add_printer(daemon, "film", imager.ae_title, imager.port)
    result = daemon.cli(
        "print", "--printer", "film", "--study", study, "--layout", "STANDARD\\1,2",
        "--film-size", "14INX17IN", "--copies", "2", "--window", "40,400", "--wait",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stdout
    stored = imager.stored_prints()
    assert len(stored) == 2
    assert {ds.FilmBoxContentSequence[0].FilmSizeID for ds in stored} == {"14INX17IN"}

    # Refused at once, with the reason: no such printer, no such study, a bad layout.
    unknown = daemon.cli("print", "--printer", "nope", "--study", study)
    assert unknown.returncode == 2 and "nope" in unknown.stderr
    missing = daemon.cli("print", "--printer", "film", "--study", "1.2.3.4")
    assert missing.returncode == 2 and "no study 1.2.3.4" in missing.stderr
    bad = daemon.cli("print", "--printer", "film", "--study", study, "--layout", "GRID\\2")
    assert bad.returncode == 2 and "Image Display Format" in bad.stderr


def test_printer_down_then_up_the_job_waits_then_prints(daemon_factory, tmp_path, monkeypatch):
    daemon = daemon_factory(**FAST_RETRY).start()
    study = store_study(daemon, tmp_path / "study", 4)
    port = free_port()
    add_printer(daemon, "film", "FULLPRINTER", port)
    job_id = queue_print(daemon, "film", study)
    waiting = wait_job(daemon, job_id, {"waiting-retry"})
    assert "cannot connect" in waiting["error"], waiting
    # `jobs show` says why the queue holds (the job may be in its next attempt by now).
    shown = daemon.cli("jobs", "show", str(job_id))
    assert "attempt 1 failed: association with film: cannot connect" in shown.stdout
    assert "next attempt at" in shown.stdout
    # The printer comes up on its configured port: the next attempt prints.
    monkeypatch.setattr(print_peers, "free_port", lambda: port)
    peer = Dcmprscp(tmp_path / "imager")
    try:
        done = wait_job(daemon, job_id, FINAL, timeout=30)
        assert done["state"] == "succeeded", done
        assert len(peer.stored_prints()) == 1
    finally:
        peer.stop()


def test_sigkill_mid_job_printed_films_are_not_printed_again(daemon_factory, imager, tmp_path):
    daemon = daemon_factory(**FAST_RETRY).start()
    study = store_study(daemon, tmp_path / "study", 8)
    add_printer(daemon, "film", imager.ae_title, imager.port)
    client = ControlClient(control_socket_path(daemon.data_dir), role="service")
    events = client.subscribe(["job"])
    result = daemon.cli(
        "print", "--printer", "film", "--study", study, "--layout", "STANDARD\\1,1",
        "--film-size", "14INX17IN",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout.split()[0])
    # Killed as soon as the first film is recorded printed: the next film is being rendered.
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, "no film printed"
        event = events.get(timeout=1)
        if event is None or event.get("topic") != "job":
            continue
        data = event["data"]
        if data["id"] == job_id and data["counts"].get("success", 0) >= 1:
            daemon.kill()
            break
    events.close()
    client.close()
    printed_before = len(imager.stored_prints())
    assert 1 <= printed_before < 8

    daemon.start()
    done = wait_job(daemon, job_id, FINAL, timeout=60)
    assert done["state"] == "succeeded", done
    assert any("interrupted by a daemon restart" in text for _, text in done["log"])
    stored = imager.stored_prints()
    # Every film once: eight films, eight Stored Prints, no image printed twice.
    assert len(stored) == 8, imager.log()
    hardcopies = imager.hardcopy_images()
    assert len(hardcopies) == 8


def test_reroute_a_print_job_to_another_printer(daemon_factory, imager, tmp_path):
    daemon = daemon_factory(**FAST_RETRY).start()
    study = store_study(daemon, tmp_path / "study", 2)
    add_printer(daemon, "down", "NOBODY", free_port())
    add_printer(daemon, "film", imager.ae_title, imager.port)
    job_id = queue_print(daemon, "down", study)
    wait_job(daemon, job_id, {"waiting-retry"})
    # A print job goes to printers only.
    refused = daemon.cli("jobs", "reroute", str(job_id), "pacs")
    assert refused.returncode != 0 and "no printer named 'pacs'" in refused.stderr
    assert daemon.cli("jobs", "pause", str(job_id)).returncode == 0
    rerouted = daemon.cli("jobs", "reroute", str(job_id), "film")
    assert rerouted.returncode == 0, rerouted.stderr
    assert daemon.cli("jobs", "resume", str(job_id)).returncode == 0
    done = wait_job(daemon, job_id, FINAL)
    assert done["state"] == "succeeded" and done["target"] == "film", done
    assert len(imager.stored_prints()) == 1
    # Reprint: a retry of the finished job prints nothing again (every film printed).
    assert daemon.cli("jobs", "retry", str(job_id)).returncode == 0
    again = wait_job(daemon, job_id, FINAL)
    assert again["state"] == "succeeded"
    assert len(imager.stored_prints()) == 1


def test_preview_pdf_and_png(daemon_factory, tmp_path):
    daemon = daemon_factory().start()
    study = store_study(daemon, tmp_path / "study", 5)
    pdf = tmp_path / "out" / "films.pdf"
    pdf.parent.mkdir()
    result = daemon.cli(
        "print", "preview", "--study", study, "--layout", "STANDARD\\2,2", "--output", str(pdf)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(pdf)]
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-1.4") and data.count(b"/Type /Page ") == 2
    png = tmp_path / "out" / "film.png"
    result = daemon.cli(
        "print", "preview", "--study", study, "--layout", "STANDARD\\2,2", "--output", str(png)
    )
    assert result.returncode == 0, result.stderr
    names = [Path(p).name for p in result.stdout.split()]
    assert names == ["film-1.png", "film-2.png"]
    for name in names:
        assert (tmp_path / "out" / name).read_bytes().startswith(b"\x89PNG")
    one = tmp_path / "out" / "one.png"
    result = daemon.cli(
        "print", "preview", "--study", study, "--layout", "STANDARD\\3,3", "--output", str(one)
    )
    assert result.returncode == 0 and result.stdout.split() == [str(one)]
    # The same through the API, with the default output in the data folder.
    with ControlClient(control_socket_path(daemon.data_dir), role="technologist") as client:
        layout = client.call("print.compose", study_uids=[study], layout="STANDARD\\2,2")
        assert [len([b for b in f["boxes"] if b["sop_instance_uid"]]) for f in layout["films"]] == [
            4,
            1,
        ]
        assert layout["films"][0]["boxes"][0]["label"] == "CT se 1 im 1"
        files = client.call("print.preview", study_uids=[study], layout="STANDARD\\2,2")["files"]
    assert [Path(f).suffix for f in files] == [".pdf", ".png", ".png"]
    assert all(Path(f).parent == daemon.data_dir / "previews" for f in files)


def test_without_a_daemon_print_goes_directly(daemon_factory, imager, tmp_path):
    daemon = daemon_factory().start()
    study = store_study(daemon, tmp_path / "study", 2)
    daemon.stop()
    add_printer(daemon, "film", imager.ae_title, imager.port)
    listing = daemon.cli("printer", "list")
    assert "NORMAL" in listing.stdout, listing.stdout + listing.stderr
    result = daemon.cli("print", "--printer", "film", "--study", study, "--layout", "STANDARD\\1,2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "daemon is not running" in result.stderr
    assert "film 1 of 1 printed on film" in result.stdout
    assert len(imager.stored_prints()) == 1
