"""Print SCU against DCMTK dcmprscp: films land as Stored Print objects, refusals are reported."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import Printer, Settings
from appliance.print_scu import Film, print_film_session
from tests.factories import ct_dataset
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
