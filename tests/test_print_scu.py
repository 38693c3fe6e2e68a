"""Print SCU against DCMTK dcmprscp (films land as Stored Print objects, refusals are reported)
and against a pynetdicom fake printer (DIMSE order and content, colour, annotation, events,
crafted statuses)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset

from appliance.config import Printer, Settings
from appliance.print_scu import Film, is_transient_printer_info, print_film, print_film_session
from tests.factories import ct_dataset
from tests.fake_printer import (
    ANNOTATION_BOX,
    COLOR_IMAGE_BOX,
    FILM_BOX,
    FILM_SESSION,
    GRAYSCALE_IMAGE_BOX,
    PRESENTATION_LUT,
    EventSpec,
    FakePrinter,
)
from tests.peers import LOOPBACK, free_port
from tests.print_peers import (
    HARDCOPY_GRAYSCALE_SOP_CLASS,
    Dcmprscp,
    full_printer,
    restricted_printer,
)


@pytest.fixture
def printers(tmp_path: Path) -> Iterator[dict[str, Dcmprscp]]:
    entries = [full_printer(), restricted_printer()]
    peers = {
        "full": Dcmprscp(tmp_path / "full", entries, printer="FULLPRINTER"),
        "restricted": Dcmprscp(tmp_path / "restricted", entries, printer="RESTRICTED"),
    }
    yield peers
    for peer in peers.values():
        peer.stop()


def _printer(peer: Dcmprscp, **extra: object) -> Printer:
    return Printer(
        name=peer.entry.name.lower(),
        ae_title=peer.ae_title,
        host=LOOPBACK,
        port=peer.port,
        **extra,  # type: ignore[arg-type]
    )


def _settings() -> Settings:
    return Settings(ae_title="PRINTSCU")


def test_two_films_land_as_stored_prints(printers: dict[str, Dcmprscp]) -> None:
    peer = printers["full"]
    images = [ct_dataset(instance_number=n) for n in range(1, 7)]
    films = [
        Film("STANDARD\\2,2", images[:4], film_size="14INX17IN", orientation="PORTRAIT", copies=1),
        Film("STANDARD\\2,2", [*images[4:], None], film_size="14INX17IN", orientation="PORTRAIT"),
    ]
    report = print_film_session(_settings(), _printer(peer, bits=12), films)
    assert report.ok, (report.error, peer.log())
    assert report.films_printed == 2
    assert report.printer_status == "NORMAL"
    steps = [s.step.split(" (")[0] for s in report.steps]
    assert steps[:3] == ["Printer N-GET", "Film Session N-CREATE", "Film Box N-CREATE"]
    assert steps.count("Image Box N-SET") == 6
    assert steps.count("Film Box N-ACTION print") == 2
    assert steps[-1] == "Film Session N-DELETE"
    stored = peer.stored_prints()
    assert len(stored) == 2, peer.log()
    for ds in stored:
        assert ds.FilmBoxContentSequence[0].ImageDisplayFormat == "STANDARD\\2,2"
        assert ds.PrinterCharacteristicsSequence[0].Originator == "PRINTSCU"
    hardcopies = peer.hardcopy_images()
    assert len(hardcopies) == 6
    assert {ds.SOPClassUID for ds in hardcopies} == {HARDCOPY_GRAYSCALE_SOP_CLASS}
    assert {int(ds.BitsStored) for ds in hardcopies} == {12}
    referenced = {
        item.ReferencedImageSequence[0].ReferencedSOPInstanceUID
        for ds in stored
        for item in ds.ImageBoxContentSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in hardcopies}


def test_restricted_printer_refuses_the_layout(printers: dict[str, Dcmprscp]) -> None:
    peer = printers["restricted"]
    films = [Film("STANDARD\\2,2", [ct_dataset()])]
    report = print_film_session(_settings(), _printer(peer), films)
    assert not report.ok
    assert report.error is not None
    assert "Film Box N-CREATE" in report.error
    assert "0x0106" in report.error
    assert "invalid attribute value" in report.error
    assert not report.retryable
    assert report.films_printed == 0
    assert peer.stored_prints() == []


def test_restricted_printer_prints_its_own_layout(printers: dict[str, Dcmprscp]) -> None:
    peer = printers["restricted"]
    report = print_film_session(
        _settings(), _printer(peer), [Film("STANDARD\\1,1", [ct_dataset()])]
    )
    assert report.ok, (report.error, peer.log())
    assert len(peer.stored_prints()) == 1
    assert len(peer.hardcopy_images()) == 1


def test_printer_down_is_retryable() -> None:
    printer = Printer(name="down", ae_title="NOBODY", host=LOOPBACK, port=free_port())
    report = print_film_session(_settings(), printer, [Film("STANDARD\\1,1", [ct_dataset()])])
    assert not report.ok
    assert report.retryable
    assert report.error is not None and "cannot connect" in report.error
    assert report.steps == []


def test_bad_layout_is_refused_before_connecting() -> None:
    printer = Printer(name="down", ae_title="NOBODY", host=LOOPBACK, port=free_port())
    report = print_film_session(_settings(), printer, [Film("STANDARD\\1,1", [ct_dataset()] * 2)])
    assert not report.ok
    assert not report.retryable
    assert report.error is not None and "2 images for 1 image boxes" in report.error


# --- Presentation LUT against dcmprscp (DS-36, DS-39) -----------------------------------------


def test_presentation_lut_on_the_full_printer(printers: dict[str, Dcmprscp]) -> None:
    peer = printers["full"]
    printer = _printer(peer, bits=12, presentation_lut=True)
    report = print_film(_settings(), printer, Film("STANDARD\\1,2", [ct_dataset(), ct_dataset()]))
    assert report.ok, (report.error, peer.log())
    steps = [s.step.split(" (")[0] for s in report.steps]
    assert steps == [
        "Printer N-GET",
        "Presentation LUT N-CREATE",
        "Film Session N-CREATE",
        "Film Box N-CREATE",
        "Image Box N-SET",
        "Image Box N-SET",
        "Film Box N-ACTION print",
        "Film Box N-DELETE",
        "Film Session N-DELETE",
        "Presentation LUT N-DELETE",
    ]
    (stored,) = peer.stored_prints()
    lut = stored.PresentationLUTContentSequence[0]
    assert lut.PresentationLUTShape == "IDENTITY"
    box = stored.FilmBoxContentSequence[0]
    assert int(box.Illumination) == 2000
    assert int(box.ReflectedAmbientLight) == 10
    assert {int(ds.BitsStored) for ds in peer.hardcopy_images()} == {12}


def test_identity_presentation_lut_meets_the_match_rule(printers: dict[str, Dcmprscp]) -> None:
    # The restricted printer requires the LUT's entries to match the bit depth: an IDENTITY
    # shape has no entries, so the film prints (DS-36).
    peer = printers["restricted"]
    printer = _printer(peer, presentation_lut=True)
    report = print_film(_settings(), printer, Film("STANDARD\\1,1", [ct_dataset()]))
    assert report.ok, (report.error, peer.log())
    assert [s.step for s in report.steps].count("Presentation LUT N-CREATE") == 1
    (stored,) = peer.stored_prints()
    assert stored.PresentationLUTContentSequence[0].PresentationLUTShape == "IDENTITY"


def test_configured_densities_reach_the_full_printer(printers: dict[str, Dcmprscp]) -> None:
    peer = printers["full"]
    printer = _printer(
        peer,
        magnification_types=["CUBIC"],
        max_density=320,
        min_density=20,
        border_density="BLACK",
        empty_image_density="WHITE",
        trim=True,
    )
    film = Film("STANDARD\\1,1", [ct_dataset()], magnification_type="BILINEAR", medium_type="PAPER")
    report = print_film(_settings(), printer, film)
    assert report.ok, (report.error, peer.log())
    (stored,) = peer.stored_prints()
    box = stored.FilmBoxContentSequence[0]
    assert box.MagnificationType == "BILINEAR"  # the film's value wins over the printer's
    assert int(box.MaxDensity) == 320 and int(box.MinDensity) == 20
    assert box.BorderDensity == "BLACK" and box.EmptyImageDensity == "WHITE"
    assert box.Trim == "YES"


# --- the fake printer: DIMSE order and content --------------------------------------------------


@pytest.fixture
def fake_factory() -> Iterator[Callable[..., FakePrinter]]:
    started: list[FakePrinter] = []

    def start(**options: Any) -> FakePrinter:
        fake = FakePrinter(**options)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


def _fake_printer(fake: FakePrinter, **extra: object) -> Printer:
    return Printer(
        name="fake",
        ae_title=fake.ae_title,
        host=LOOPBACK,
        port=fake.port,
        **extra,  # type: ignore[arg-type]
    )


def _wait_released(fake: FakePrinter, count: int = 1) -> None:
    # The printer marks the release just after it answered it, so it may trail our return.
    deadline = time.monotonic() + 5
    while fake.released + fake.aborted < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.released == count, (fake.released, fake.aborted)


def _rgb_image(rows: int = 32, columns: int = 48) -> Dataset:
    ds = ct_dataset(rows=rows, columns=columns)
    for keyword in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    values = np.zeros((rows, columns, 3), dtype=np.uint8)
    values[..., 0] = 200  # red everywhere, so the planes tell R from G and B
    ds.PixelData = values.tobytes()
    return ds


def test_color_film_uses_the_color_meta_sop_class(fake_factory: Callable[..., FakePrinter]) -> None:
    fake = fake_factory(presentation_lut=False, annotation=False, print_job=False)
    printer = _fake_printer(fake, color=True)
    report = print_film(_settings(), printer, Film("STANDARD\\1,2", [_rgb_image(), ct_dataset()]))
    assert report.ok, report.error
    _wait_released(fake)
    assert fake.request_steps() == [
        "N-GET printer",
        "N-CREATE film session",
        "N-CREATE film box",
        "N-SET image box",
        "N-SET image box",
        "N-ACTION film box",
        "N-DELETE film box",
        "N-DELETE film session",
    ]
    sets = fake.find("N-SET-RQ")
    assert {m.sop_class for m in sets} == {COLOR_IMAGE_BOX}
    for message, position in zip(sets, (1, 2), strict=True):
        assert message.dataset is not None
        assert int(message.dataset.ImageBoxPosition) == position
        item = message.dataset.BasicColorImageSequence[0]
        assert item.PhotometricInterpretation == "RGB"
        assert int(item.SamplesPerPixel) == 3 and int(item.PlanarConfiguration) == 1
        assert "BasicGrayscaleImageSequence" not in message.dataset
    red = np.frombuffer(sets[0].dataset.BasicColorImageSequence[0].PixelData, np.uint8)
    planes = red.reshape(3, -1)
    assert planes[0].min() == 200 and planes[1].max() == 0 and planes[2].max() == 0
    assert fake.find("N-ACTION-RQ")[0].fields["ActionTypeID"] == 1


def test_color_only_printer_gets_grayscale_images_in_color(
    fake_factory: Callable[..., FakePrinter],
) -> None:
    fake = fake_factory(grayscale=False, presentation_lut=False, annotation=False)
    printer = _fake_printer(fake, color=True, grayscale=False)
    report = print_film(_settings(), printer, Film("STANDARD\\1,1", [ct_dataset()]))
    assert report.ok, report.error
    (message,) = fake.find("N-SET-RQ")
    assert message.sop_class == COLOR_IMAGE_BOX
    assert message.dataset is not None
    assert message.dataset.BasicColorImageSequence[0].PhotometricInterpretation == "RGB"


def test_grayscale_printer_gets_color_images_as_grayscale(
    fake_factory: Callable[..., FakePrinter],
) -> None:
    fake = fake_factory()
    printer = _fake_printer(fake, bits=12)
    report = print_film(_settings(), printer, Film("STANDARD\\1,1", [_rgb_image()]))
    assert report.ok, report.error
    (message,) = fake.find("N-SET-RQ")
    assert message.sop_class == GRAYSCALE_IMAGE_BOX
    assert message.dataset is not None
    item = message.dataset.BasicGrayscaleImageSequence[0]
    assert item.PhotometricInterpretation == "MONOCHROME2"
    assert (int(item.BitsAllocated), int(item.BitsStored), int(item.HighBit)) == (16, 12, 11)


def test_presentation_lut_and_print_job_order(fake_factory: Callable[..., FakePrinter]) -> None:
    fake = fake_factory()
    printer = _fake_printer(fake, presentation_lut=True)
    report = print_film(_settings(), printer, Film("STANDARD\\1,1", [ct_dataset()]))
    assert report.ok, report.error
    _wait_released(fake)
    assert fake.request_steps() == [
        "N-GET printer",
        "N-CREATE presentation lut",
        "N-CREATE film session",
        "N-CREATE film box",
        "N-SET image box",
        "N-ACTION film box",
        "N-GET print job",
        "N-DELETE film box",
        "N-DELETE film session",
        "N-DELETE presentation lut",
    ]
    (plut,) = fake.find("N-CREATE-RQ", PRESENTATION_LUT)
    assert plut.dataset is not None and plut.dataset.PresentationLUTShape == "IDENTITY"
    (plut_rsp,) = fake.find("N-CREATE-RSP", PRESENTATION_LUT)
    (film_box,) = fake.find("N-CREATE-RQ", FILM_BOX)
    assert film_box.dataset is not None
    ref = film_box.dataset.ReferencedPresentationLUTSequence[0]
    assert ref.ReferencedSOPInstanceUID == plut_rsp.sop_instance
    assert int(film_box.dataset.Illumination) == 2000
    assert int(film_box.dataset.ReflectedAmbientLight) == 10
    (delete,) = fake.find("N-DELETE-RQ", PRESENTATION_LUT)
    assert delete.sop_instance == plut_rsp.sop_instance
    assert report.print_job_status == "DONE"


def test_no_presentation_lut_when_the_printer_refuses_the_class(
    fake_factory: Callable[..., FakePrinter],
) -> None:
    fake = fake_factory(presentation_lut=False, print_job=False)
    report = print_film(
        _settings(),
        _fake_printer(fake, presentation_lut=True),
        Film("STANDARD\\1,1", [ct_dataset()]),
    )
    assert report.ok, report.error
    assert "N-CREATE presentation lut" not in fake.request_steps()
    (film_box,) = fake.find("N-CREATE-RQ", FILM_BOX)
    assert film_box.dataset is not None
    assert "ReferencedPresentationLUTSequence" not in film_box.dataset
    assert "Illumination" not in film_box.dataset


def test_annotation_boxes(fake_factory: Callable[..., FakePrinter]) -> None:
    fake = fake_factory(annotation_boxes=2, print_job=False)
    film = Film("STANDARD\\1,1", [ct_dataset()], annotations=["DOE^JOHN  CT", "R"])
    report = print_film(_settings(), _fake_printer(fake, annotation=True), film)
    assert report.ok, report.error
    steps = fake.request_steps()
    assert steps[steps.index("N-SET image box") + 1 :] == [
        "N-SET annotation box",
        "N-SET annotation box",
        "N-ACTION film box",
        "N-DELETE film box",
        "N-DELETE film session",
    ]
    (film_box,) = fake.find("N-CREATE-RQ", FILM_BOX)
    assert film_box.dataset is not None and film_box.dataset.AnnotationDisplayFormatID
    (box_rsp,) = fake.find("N-CREATE-RSP", FILM_BOX)
    assert box_rsp.dataset is not None
    offered = [
        r.ReferencedSOPInstanceUID for r in box_rsp.dataset.ReferencedBasicAnnotationBoxSequence
    ]
    sets = fake.find("N-SET-RQ", ANNOTATION_BOX)
    assert [m.sop_instance for m in sets] == offered
    assert [(int(m.dataset.AnnotationPosition), m.dataset.TextString) for m in sets] == [
        (1, "DOE^JOHN  CT"),
        (2, "R"),
    ]
    assert fake.find("N-CREATE-RQ", FILM_SESSION)[0].dataset is None


def test_annotation_text_goes_into_the_session_label_without_annotation_boxes(
    fake_factory: Callable[..., FakePrinter],
) -> None:
    fake = fake_factory(annotation=False)
    film = Film("STANDARD\\1,1", [ct_dataset()], annotations=["DOE^JOHN"], label="ER")
    report = print_film(_settings(), _fake_printer(fake, annotation=True), film)
    assert report.ok, report.error
    assert "N-SET annotation box" not in fake.request_steps()
    (session,) = fake.find("N-CREATE-RQ", FILM_SESSION)
    assert session.dataset is not None and session.dataset.FilmSessionLabel == "ER DOE^JOHN"
    (film_box,) = fake.find("N-CREATE-RQ", FILM_BOX)
    assert film_box.dataset is not None and "AnnotationDisplayFormatID" not in film_box.dataset


def test_send_only_what_is_set(fake_factory: Callable[..., FakePrinter]) -> None:
    fake = fake_factory(print_job=False)
    report = print_film(_settings(), _fake_printer(fake), Film("STANDARD\\2,1", [ct_dataset()]))
    assert report.ok, report.error
    (session,) = fake.find("N-CREATE-RQ", FILM_SESSION)
    assert session.dataset is None
    (film_box,) = fake.find("N-CREATE-RQ", FILM_BOX)
    assert film_box.dataset is not None
    assert {e.keyword for e in film_box.dataset} == {
        "ImageDisplayFormat",
        "ReferencedFilmSessionSequence",
    }
    (image_box,) = fake.find("N-SET-RQ")  # the empty second box gets no N-SET
    assert image_box.dataset is not None
    assert {e.keyword for e in image_box.dataset} == {
        "ImageBoxPosition",
        "BasicGrayscaleImageSequence",
    }


def test_configured_and_chosen_values_are_sent(fake_factory: Callable[..., FakePrinter]) -> None:
    fake = fake_factory(print_job=False)
    printer = _fake_printer(
        fake,
        film_sizes=["11INX14IN"],
        medium_types=["BLUE FILM"],
        film_destinations=["PROCESSOR"],
        magnification_types=["CUBIC"],
        min_density=20,
        max_density=300,
        border_density="BLACK",
        empty_image_density="BLACK",
        trim=False,
    )
    film = Film(
        "STANDARD\\1,1",
        [ct_dataset()],
        orientation="LANDSCAPE",
        copies=2,
        medium_type="PAPER",
        polarity="REVERSE",
    )
    report = print_film(_settings(), printer, film)
    assert report.ok, report.error
    (session,) = fake.find("N-CREATE-RQ", FILM_SESSION)
    assert session.dataset is not None
    assert int(session.dataset.NumberOfCopies) == 2
    assert session.dataset.MediumType == "PAPER"
    assert session.dataset.FilmDestination == "PROCESSOR"
    (film_box,) = fake.find("N-CREATE-RQ", FILM_BOX)
    box = film_box.dataset
    assert box is not None
    assert (box.FilmSizeID, box.FilmOrientation, box.MagnificationType) == (
        "11INX14IN",
        "LANDSCAPE",
        "CUBIC",
    )
    assert (int(box.MinDensity), int(box.MaxDensity)) == (20, 300)
    assert (box.BorderDensity, box.EmptyImageDensity, box.Trim) == ("BLACK", "BLACK", "NO")
    (image_box,) = fake.find("N-SET-RQ")
    assert image_box.dataset is not None and image_box.dataset.Polarity == "REVERSE"


def test_window_per_image(fake_factory: Callable[..., FakePrinter]) -> None:
    fake = fake_factory(print_job=False)
    image = ct_dataset()
    film = Film("STANDARD\\1,2", [image, image], windows=[(-5000.0, 10.0), None])
    report = print_film(_settings(), _fake_printer(fake), film)
    assert report.ok, report.error
    first, second = (
        np.frombuffer(m.dataset.BasicGrayscaleImageSequence[0].PixelData, np.uint8)
        for m in fake.find("N-SET-RQ")
    )
    assert first.min() == 255  # every CT value is far above that window: white
    assert not np.array_equal(first, second)


# --- N-EVENT-REPORTs (DS-38) ------------------------------------------------------------------


def test_event_reports_are_answered_and_reported(
    fake_factory: Callable[..., FakePrinter],
) -> None:
    fake = fake_factory(
        events=[
            EventSpec("N-CREATE film session", 2, "SUPPLY LOW", when="after"),
            EventSpec("N-ACTION film box", 1, "NORMAL", when="during"),
        ]
    )
    seen: list[tuple[str, str | None, str]] = []
    report = print_film(
        _settings(),
        _fake_printer(fake),
        Film("STANDARD\\1,1", [ct_dataset()]),
        on_printer_status=lambda *args: seen.append(args),
    )
    assert report.ok, report.error
    assert report.films_printed == 1
    _wait_released(fake)
    assert seen == [
        ("NORMAL", "NORMAL", "n-get"),
        ("WARNING", "SUPPLY LOW", "event"),
        ("NORMAL", "NORMAL", "event"),
    ]
    assert [(e.status, e.info) for e in report.events] == [
        ("WARNING", "SUPPLY LOW"),
        ("NORMAL", "NORMAL"),
    ]
    answers = fake.find("N-EVENT-REPORT-RSP")
    assert [m.status for m in answers] == [0x0000, 0x0000]
    assert all(m.direction == "in" for m in answers)
    # The first event went out right behind the Film Session N-CREATE-RSP.
    commands = [(m.direction, m.command) for m in fake.messages]
    rsp = commands.index(("out", "N-CREATE-RSP"))
    assert commands[rsp + 1] == ("out", "N-EVENT-REPORT-RQ")
    # Every request still got its own response.
    assert len(fake.find("N-CREATE-RSP")) == 2
    assert report.printer_status == "NORMAL"


# --- failures (DS-32) and printer status --------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "sent"),
    [
        ("N-GET printer", 1),
        ("N-CREATE film session", 2),
        ("N-CREATE film box", 3),
    ],
)
def test_failure_releases_without_further_requests(
    fake_factory: Callable[..., FakePrinter], step: str, sent: int
) -> None:
    fake = fake_factory(statuses={step: 0x0110})
    report = print_film(_settings(), _fake_printer(fake), Film("STANDARD\\1,1", [ct_dataset()]))
    assert not report.ok
    assert report.error is not None and "0x0110 (processing failure)" in report.error
    assert not report.retryable
    assert report.films_printed == 0
    _wait_released(fake)
    assert len(fake.requests()) == sent
    assert fake.request_steps()[-1] == step


def test_printer_failure_status_holds_the_film(fake_factory: Callable[..., FakePrinter]) -> None:
    fake = fake_factory(printer_status="FAILURE", printer_status_info="FILM JAM")
    seen: list[tuple[str, str | None, str]] = []
    report = print_film(
        _settings(),
        _fake_printer(fake),
        Film("STANDARD\\1,1", [ct_dataset()]),
        on_printer_status=lambda *args: seen.append(args),
    )
    assert not report.ok
    assert report.error == "printer reports FAILURE: FILM JAM"
    assert report.retryable
    assert (report.printer_status, report.printer_status_info) == ("FAILURE", "FILM JAM")
    assert seen == [("FAILURE", "FILM JAM", "n-get")]
    _wait_released(fake)
    assert fake.request_steps() == ["N-GET printer"]


def test_failure_after_a_transient_event_is_retryable(
    fake_factory: Callable[..., FakePrinter],
) -> None:
    fake = fake_factory(
        statuses={"N-ACTION film box": 0x0110},
        events=[EventSpec("N-ACTION film box", 3, "FILM JAM", when="during")],
    )
    report = print_film(_settings(), _fake_printer(fake), Film("STANDARD\\1,1", [ct_dataset()]))
    assert not report.ok
    assert report.retryable
    assert report.error is not None
    assert "Film Box N-ACTION print" in report.error and "FILM JAM" in report.error


def test_failure_with_a_normal_printer_is_not_retryable(
    fake_factory: Callable[..., FakePrinter],
) -> None:
    fake = fake_factory(statuses={"N-ACTION film box": 0x0110})
    report = print_film(_settings(), _fake_printer(fake), Film("STANDARD\\1,1", [ct_dataset()]))
    assert not report.ok and not report.retryable


def test_print_job_and_cleanup_failures_do_not_fail_a_printed_film(
    fake_factory: Callable[..., FakePrinter],
) -> None:
    fake = fake_factory(statuses={"N-GET print job": 0x0112, "N-DELETE film box": 0x0110})
    report = print_film(_settings(), _fake_printer(fake), Film("STANDARD\\1,1", [ct_dataset()]))
    assert report.ok, report.error
    assert report.films_printed == 1
    assert len(report.warnings) == 2
    _wait_released(fake)
    assert fake.request_steps()[-1] == "N-DELETE film session"


def test_each_film_of_a_session_has_its_own_association(
    fake_factory: Callable[..., FakePrinter],
) -> None:
    fake = fake_factory(print_job=False)
    films = [Film("STANDARD\\1,1", [ct_dataset()]) for _ in range(3)]
    report = print_film_session(_settings(), _fake_printer(fake), films)
    assert report.ok, report.error
    assert report.films_printed == 3
    _wait_released(fake, 3)
    assert fake.request_steps().count("N-GET printer") == 3
    assert fake.request_steps().count("N-CREATE film box") == 3


def test_session_stops_at_the_first_failed_film(fake_factory: Callable[..., FakePrinter]) -> None:
    fake = fake_factory(printer_status="FAILURE", printer_status_info="SUPPLY EMPTY")
    films = [Film("STANDARD\\1,1", [ct_dataset()]) for _ in range(2)]
    report = print_film_session(_settings(), _fake_printer(fake), films)
    assert not report.ok and report.retryable
    assert report.films_printed == 0
    assert fake.request_steps() == ["N-GET printer"]


@pytest.mark.parametrize(
    ("info", "transient"),
    [
        ("FILM JAM", True),
        ("PRINT BUFF FULL", True),
        ("SUPPLY EMPTY", True),
        ("supply  low", True),
        ("EMPTY 14X17 BLUE", True),
        ("LOW A4 PAPR", True),
        ("COVER OPEN", True),
        ("NORMAL", False),
        ("ELEC SW ERROR", False),
        ("CALIBRATION ERR", False),
        ("", False),
        (None, False),
    ],
)
def test_transient_printer_info(info: str | None, transient: bool) -> None:
    assert is_transient_printer_info(info) is transient


def test_defaults_are_sent_when_the_printer_wants_every_attribute(
    fake_factory: Callable[..., FakePrinter],
) -> None:
    fake = fake_factory(print_job=False)
    printer = _fake_printer(fake, send_only_set_attributes=False)
    report = print_film(_settings(), printer, Film("STANDARD\\1,1", [ct_dataset()]))
    assert report.ok, report.error
    (session,) = fake.find("N-CREATE-RQ", FILM_SESSION)
    assert session.dataset is not None and int(session.dataset.NumberOfCopies) == 1
    (film_box,) = fake.find("N-CREATE-RQ", FILM_BOX)
    assert film_box.dataset is not None and film_box.dataset.FilmOrientation == "PORTRAIT"


def test_an_unrenderable_image_fails_before_connecting(
    fake_factory: Callable[..., FakePrinter],
) -> None:
    fake = fake_factory()
    broken = ct_dataset()
    del broken.PixelData
    report = print_film(
        _settings(), _fake_printer(fake), Film("STANDARD\\1,2", [ct_dataset(), broken]), number=4
    )
    assert not report.ok and not report.retryable
    assert report.error is not None
    assert report.error.startswith("film 4: image box 2: cannot render the image")
    assert fake.messages == []


def test_report_as_dict_is_json(fake_factory: Callable[..., FakePrinter]) -> None:
    fake = fake_factory(events=[EventSpec("N-SET image box", 2, "SUPPLY LOW", when="during")])
    report = print_film(_settings(), _fake_printer(fake), Film("STANDARD\\1,1", [ct_dataset()]))
    data = json.loads(json.dumps(report.as_dict()))
    assert data["ok"] and data["films_printed"] == 1
    assert data["events"][0]["status"] == "WARNING"
    assert data["events"][0]["info"] == "SUPPLY LOW"
    assert data["print_job_status"] == "DONE"
