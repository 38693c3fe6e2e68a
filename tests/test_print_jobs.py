"""Print jobs in the job engine: the film composer, the runner against real and crafted printers,
and the printer status board."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.dsutils import encode

from appliance.config import Printer
from appliance.jobs import JobError
from appliance.print_jobs import (
    ComposeError,
    PrinterStatusBoard,
    compose_films,
    layout_doc,
    load_images,
    register_print,
)
from tests.factories import ct_dataset
from tests.fake_printer import FakePrinter
from tests.job_helpers import Env, make_env, wait_for
from tests.peers import LOOPBACK, free_port
from tests.print_peers import STORED_PRINT_SOP_CLASS, Dcmprscp

FINAL = ("succeeded", "failed", "partially-failed")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from make_env(tmp_path)


@pytest.fixture
def imager(tmp_path: Path) -> Iterator[Dcmprscp]:
    peer = Dcmprscp(tmp_path / "imager")
    yield peer
    peer.stop()


def store(env: Env, ds: Dataset) -> str:
    env.archive.store_encoded(
        encode(ds, False, True),
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax=ExplicitVRLittleEndian,
        source_ae="MODALITY",
    )
    return str(ds.SOPInstanceUID)


def two_series(env: Env) -> tuple[str, dict[tuple[int, int], str]]:
    """A study of series 2 (3 images) then series 1 (3 images), stored last image first."""
    study = generate_uid()
    uids: dict[tuple[int, int], str] = {}
    for series_number in (2, 1):
        series = generate_uid()
        for number in (3, 1, 2):
            ds = ct_dataset(
                study_uid=study, series_uid=series, instance_number=number, rows=16, columns=16
            )
            ds.SeriesNumber = series_number
            uids[(series_number, number)] = store(env, ds)
    return study, uids


def printer_for(name: str, port: int, ae_title: str, **extra: object) -> Printer:
    return Printer(name=name, ae_title=ae_title, host=LOOPBACK, port=port, **extra)  # type: ignore[arg-type]


def engine_with_print(env: Env) -> tuple[object, PrinterStatusBoard]:
    engine = env.engine(start=False)
    board = PrinterStatusBoard(env.events)
    register_print(engine, board, env.archive)
    engine.start()
    return engine, board


# --- composing ---------------------------------------------------------------------------------


def test_compose_orders_by_series_and_instance_and_splits_films(env: Env) -> None:
    study, uids = two_series(env)
    films = compose_films(env.archive, {"study_uids": [study], "layout": "STANDARD\\2,2"}, None)
    assert [f.sources for f in films] == [
        [uids[(1, 1)], uids[(1, 2)], uids[(1, 3)], uids[(2, 1)]],
        [uids[(2, 2)], uids[(2, 3)]],
    ]
    assert all(f.film.images[0] is not None for f in films)
    assert films[0].labels[3] == "CT se 2 im 1"
    doc = layout_doc(films)
    assert [len(f["boxes"]) for f in doc["films"]] == [4, 4]
    assert doc["films"][1]["boxes"][2] == {"position": 3, "sop_instance_uid": None, "label": ""}

    # A printer's first display format and film size are the defaults.
    printer = printer_for(
        "p", 104, "P", display_formats=["STANDARD\\3,2"], film_sizes=["11INX14IN"]
    )
    films = compose_films(env.archive, {"study_uids": [study]}, printer, load=False)
    assert len(films) == 1 and films[0].film.film_size == "11INX14IN"
    assert films[0].film.images == [None] * 6  # not loaded

    # The most specific source selects; a series outside the study is refused.
    series_uid = str(
        pydicom.dcmread(env.archive.instance(uids[(2, 1)]).path).SeriesInstanceUID  # type: ignore[union-attr]
    )
    films = compose_films(
        env.archive, {"study_uids": [study], "series_uids": [series_uid], "layout": "ROW\\3"}, None
    )
    assert films[0].sources == [uids[(2, 1)], uids[(2, 2)], uids[(2, 3)]]
    picked = [uids[(2, 3)], uids[(1, 1)]]
    films = compose_films(env.archive, {"sop_instance_uids": picked}, None)
    assert [f.sources for f in films] == [[picked[0]], [picked[1]]]
    with pytest.raises(ComposeError, match="not in the studies given"):
        compose_films(
            env.archive, {"study_uids": [generate_uid()], "sop_instance_uids": picked}, None
        )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "nothing to print"),
        ({"study_uids": ["1.2.3"]}, "the archive has no study 1.2.3"),
        ({"study_uids": ["1.2"], "layout": "STANDARD\\2"}, "columns,rows"),
        ({"study_uids": ["1.2"], "film_size": "A0"}, "unknown film size"),
        ({"study_uids": ["1.2"], "film_size": "8INX10IN"}, "does not offer film size"),
        ({"study_uids": ["1.2"], "window_center": 40}, "go together"),
        ({"study_uids": ["1.2"], "copies": 0}, "copies must be"),
        ({"study_uids": ["1.2"], "polarity": "UPSIDE"}, "NORMAL or REVERSE"),
        ({"stored_print_uids": ["1.2"], "study_uids": ["1.2"]}, "cannot be combined"),
    ],
)
def test_compose_refuses_bad_requests(env: Env, params: dict, message: str) -> None:
    printer = printer_for("p", 104, "P", film_sizes=["14INX17IN"])
    with pytest.raises(ComposeError, match=message):
        compose_films(env.archive, params, printer)


def test_objects_without_pixels_are_left_out(env: Env) -> None:
    study = generate_uid()
    image = ct_dataset(study_uid=study, rows=8, columns=8)
    store(env, image)
    report = ct_dataset(study_uid=study, series_uid=generate_uid(), rows=8, columns=8)
    for keyword in ("Rows", "Columns", "PixelData", "BitsAllocated", "BitsStored", "HighBit"):
        delattr(report, keyword)
    store(env, report)
    films = compose_films(env.archive, {"study_uids": [study]}, None)
    assert [f.sources for f in films] == [[str(image.SOPInstanceUID)]]


# --- the print job ---------------------------------------------------------------------------


def test_print_job_prints_each_film_once(env: Env, imager: Dcmprscp) -> None:
    study, _ = two_series(env)
    env.config.add_printer(printer_for("film", imager.port, imager.ae_title))
    engine, board = engine_with_print(env)
    events = env.events.subscribe({"printer"})
    job = engine.submit("print", "film", {"study_uids": [study], "layout": "STANDARD\\2,2"})  # type: ignore[attr-defined]
    done = env.wait_state(job.id, *FINAL)
    assert done.state == "succeeded", done.log
    assert [(i.sop_instance_uid, i.status) for i in done.instances] == [
        ("film-1", "success"),
        ("film-2", "success"),
    ]
    assert done.summary["films"] == 2 and done.summary["patient_id"] == "PAT001"
    assert len(done.params["composed"]) == 2
    assert len(imager.stored_prints()) == 2
    status = board.get("film")
    assert status is not None and status["printer_status"] == "NORMAL"
    event = events.get(timeout=5)
    assert event is not None and event.topic == "printer"
    assert event.data["printer"] == "film" and event.data["printer_status"] == "NORMAL"

    # A retry of the finished job prints nothing again: every film is printed.
    engine.act(job.id, "retry")  # type: ignore[attr-defined]
    wait_for(lambda: env.state(job.id) in FINAL and env.store.get(job.id).attempts == 1)  # type: ignore[union-attr]
    assert env.state(job.id) == "succeeded"
    assert len(imager.stored_prints()) == 2


def test_print_job_validation(env: Env) -> None:
    engine, _ = engine_with_print(env)
    env.config.add_printer(printer_for("film", free_port(), "FILM"))
    with pytest.raises(JobError, match="no printer named 'nope'"):
        engine.submit("print", "nope", {"study_uids": ["1.2"]})  # type: ignore[attr-defined]
    with pytest.raises(JobError, match="the archive has no study"):
        engine.submit("print", "film", {"study_uids": ["1.2"]})  # type: ignore[attr-defined]
    with pytest.raises(JobError, match="nothing to print"):
        engine.submit("print", "film", {})  # type: ignore[attr-defined]


def test_film_jam_holds_the_queue_then_prints(env: Env) -> None:
    study = generate_uid()
    store(env, ct_dataset(study_uid=study, rows=16, columns=16))
    fake = FakePrinter(printer_status="FAILURE", printer_status_info="FILM JAM")
    try:
        env.config.add_printer(printer_for("film", fake.port, fake.ae_title))
        engine, board = engine_with_print(env)
        job = engine.submit("print", "film", {"study_uids": [study]})  # type: ignore[attr-defined]
        waiting = env.wait_state(job.id, "waiting-retry")
        assert waiting.error == "printer reports FAILURE: FILM JAM"
        assert "printer reports FAILURE: FILM JAM" in waiting.log[-1][1]
        assert waiting.instances[0].status == "pending"
        entry = board.get("film")
        assert entry is not None
        assert (entry["printer_status"], entry["printer_status_info"]) == ("FAILURE", "FILM JAM")
        assert fake.find("N-CREATE-RQ") == []  # nothing sent to a jammed printer
        # The jam is cleared: the next attempt prints.
        fake.printer_status, fake.printer_status_info = "NORMAL", "NORMAL"
        done = env.wait_state(job.id, *FINAL)
        assert done.state == "succeeded", done.log
        assert len(fake.find("N-ACTION-RQ")) == 1
        assert board.get("film")["printer_status"] == "NORMAL"  # type: ignore[index]
    finally:
        fake.stop()


def test_a_refused_film_fails_without_retries(env: Env, imager: Dcmprscp) -> None:
    study, _ = two_series(env)
    env.config.add_printer(printer_for("film", imager.port, imager.ae_title))
    engine, _ = engine_with_print(env)
    # dcmprscp's printer offers no ROW\5 layout: 0106, the same every time.
    job = engine.submit("print", "film", {"study_uids": [study], "layout": "ROW\\5"})  # type: ignore[attr-defined]
    done = env.wait_state(job.id, *FINAL)
    assert done.state == "failed"
    assert done.attempts == 1
    assert all("0x0106" in i.error and not i.retryable for i in done.instances)
    assert imager.stored_prints() == []


def test_stored_print_is_printed_as_it_was_composed(env: Env, imager: Dcmprscp) -> None:
    # A real Stored Print and its Hardcopy images: dcmprscp's own, put in our archive.
    study, _ = two_series(env)
    env.config.add_printer(printer_for("film", imager.port, imager.ae_title))
    engine, _ = engine_with_print(env)
    first = engine.submit(  # type: ignore[attr-defined]
        "print",
        "film",
        {"study_uids": [study], "layout": "STANDARD\\3,3", "film_size": "10INX12IN"},
    )
    assert env.wait_state(first.id, *FINAL).state == "succeeded"
    (stored,) = imager.stored_prints()
    for ds in [stored, *imager.hardcopy_images()]:
        store(env, ds)
    films = compose_films(env.archive, {"stored_print_uids": [str(stored.SOPInstanceUID)]}, None)
    assert len(films) == 1
    film = films[0].film
    assert film.display_format == "STANDARD\\3,3" and film.film_size == "10INX12IN"
    assert sum(uid is not None for uid in films[0].sources) == 6
    loaded = load_images(env.archive, films[0])
    assert sum(image is not None for image in loaded.film.images) == 6
    assert stored.SOPClassUID == STORED_PRINT_SOP_CLASS

    second = engine.submit(  # type: ignore[attr-defined]
        "print", "film", {"stored_print_uids": [str(stored.SOPInstanceUID)]}
    )
    done = env.wait_state(second.id, *FINAL)
    assert done.state == "succeeded", done.log
    reprinted = [ds for ds in imager.stored_prints() if ds.SOPInstanceUID != stored.SOPInstanceUID]
    assert len(reprinted) == 1
    assert reprinted[0].FilmBoxContentSequence[0].ImageDisplayFormat == "STANDARD\\3,3"
    assert len(reprinted[0].ImageBoxContentSequence) == 6
    with pytest.raises(ComposeError, match="not a Stored Print"):
        compose_films(env.archive, {"stored_print_uids": [films[0].sources[0]]}, None)


def test_board_refresh_marks_unreachable_printers(env: Env, imager: Dcmprscp) -> None:
    board = PrinterStatusBoard(env.events)
    printers = [
        printer_for("film", imager.port, imager.ae_title),
        printer_for("gone", free_port(), "NOBODY"),
    ]
    board.refresh(env.config.settings(), printers, timeout=2)
    assert board.get("film")["printer_status"] == "NORMAL"  # type: ignore[index]
    gone = board.get("gone")
    assert gone is not None and gone["printer_status"] is None
    assert "cannot connect" in gone["error"]
    assert set(board.all()) == {"film", "gone"}
