"""The dcmprscp film imager peer: a minimal print session with pynetdicom lands in its database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    BasicFilmBox,
    BasicFilmSession,
    BasicGrayscaleImageBox,
    BasicGrayscalePrintManagementMeta,
    Printer,
    PrinterInstance,
)

from tests.print_peers import (
    HARDCOPY_GRAYSCALE_SOP_CLASS,
    Dcmprscp,
    full_printer,
    restricted_printer,
)

# dcmprscp refuses an Image Display Format that is not in the printer's DisplayFormat list with
# this status (Invalid attribute value), and creates no film box.
STATUS_INVALID_ATTRIBUTE_VALUE = 0x0106
META = BasicGrayscalePrintManagementMeta


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


def _associate(peer: Dcmprscp, syntaxes: list[str]) -> Association:
    ae = AE(ae_title="PRINTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(BasicGrayscalePrintManagementMeta, syntaxes)
    received: list[object] = []
    assoc = ae.associate(
        "127.0.0.1",
        peer.port,
        ae_title=peer.ae_title,
        evt_handlers=[(evt.EVT_DIMSE_RECV, lambda event: received.append(event.message))],
    )
    assert assoc.is_established, peer.log()
    assoc.received_messages = received  # type: ignore[attr-defined]
    return assoc


def _created_uid(assoc: Association) -> str:
    """The Affected SOP Instance UID of the last N-CREATE-RSP.

    pynetdicom's ``send_n_create`` returns only the status and the attribute list, not the
    instance UID the SCP assigned when the request carried none, so read it off the message.
    """
    messages = assoc.received_messages  # type: ignore[attr-defined]
    rsp = next(m for m in reversed(messages) if type(m).__name__ == "N_CREATE_RSP")
    return str(rsp.command_set.AffectedSOPInstanceUID)


def _image_box(sop_instance_uid: str) -> Dataset:
    pixels = (np.arange(256, dtype=np.uint16)[None, :] + np.arange(256)[:, None]) // 2
    image = Dataset()
    image.SamplesPerPixel = 1
    image.PhotometricInterpretation = "MONOCHROME2"
    image.Rows = 256
    image.Columns = 256
    image.BitsAllocated = 8
    image.BitsStored = 8
    image.HighBit = 7
    image.PixelRepresentation = 0
    image.PixelData = pixels.astype(np.uint8).tobytes()
    box = Dataset()
    box.ImageBoxPosition = 1
    box.BasicGrayscaleImageSequence = [image]
    return box


def _status(status: Dataset) -> int:
    return int(status.Status) if "Status" in status else -1


def _create_session(assoc: Association) -> str:
    status, printer = assoc.send_n_get([], Printer, PrinterInstance, meta_uid=META)
    assert _status(status) == 0x0000
    assert printer.PrinterStatus == "NORMAL"
    status, _ = assoc.send_n_create(None, BasicFilmSession, None, meta_uid=META)
    assert _status(status) == 0x0000, status
    return _created_uid(assoc)


def _create_film_box(assoc: Association, session_uid: str, layout: str) -> tuple[int, Dataset]:
    film = Dataset()
    film.ImageDisplayFormat = layout
    ref = Dataset()
    ref.ReferencedSOPClassUID = BasicFilmSession
    ref.ReferencedSOPInstanceUID = session_uid
    film.ReferencedFilmSessionSequence = [ref]
    status, film_box = assoc.send_n_create(film, BasicFilmBox, None, meta_uid=META)
    return _status(status), film_box


def _print_one_image(assoc: Association, film_box: Dataset) -> None:
    film_uid = _created_uid(assoc)
    assert len(film_box.ReferencedImageBoxSequence) == 1
    box_ref = film_box.ReferencedImageBoxSequence[0]
    assert box_ref.ReferencedSOPClassUID == BasicGrayscaleImageBox
    status, _ = assoc.send_n_set(
        _image_box(box_ref.ReferencedSOPInstanceUID),
        BasicGrayscaleImageBox,
        box_ref.ReferencedSOPInstanceUID,
        meta_uid=META,
    )
    assert _status(status) == 0x0000
    status, _ = assoc.send_n_action(None, 1, BasicFilmBox, film_uid, meta_uid=META)
    assert _status(status) == 0x0000


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["explicit", "implicit"]
)
def test_full_printer_stores_a_printed_film(printers: dict[str, Dcmprscp], syntax: str) -> None:
    peer = printers["full"]
    assoc = _associate(peer, [syntax])
    try:
        session_uid = _create_session(assoc)
        status, film_box = _create_film_box(assoc, session_uid, "STANDARD\\1,1")
        assert status == 0x0000, peer.log()
        _print_one_image(assoc, film_box)
        status = assoc.send_n_delete(BasicFilmSession, session_uid, meta_uid=META)
        assert _status(status) == 0x0000
    finally:
        assoc.release()

    stored = peer.stored_prints()
    assert len(stored) == 1, peer.log()
    printer = stored[0].PrinterCharacteristicsSequence[0]
    assert printer.Originator == "PRINTSCU"
    film_content = stored[0].FilmBoxContentSequence[0]
    assert film_content.ImageDisplayFormat == "STANDARD\\1,1"
    image_refs = stored[0].ImageBoxContentSequence
    hardcopies = peer.hardcopy_images()
    assert len(hardcopies) == 1
    assert hardcopies[0].SOPClassUID == HARDCOPY_GRAYSCALE_SOP_CLASS
    assert hardcopies[0].Modality == "HC"
    assert (hardcopies[0].Rows, hardcopies[0].Columns) == (256, 256)
    assert image_refs[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == (
        hardcopies[0].SOPInstanceUID
    )


def test_restricted_printer_refuses_an_unconfigured_layout(
    printers: dict[str, Dcmprscp],
) -> None:
    peer = printers["restricted"]
    assoc = _associate(peer, [ImplicitVRLittleEndian])
    try:
        session_uid = _create_session(assoc)
        status, _ = _create_film_box(assoc, session_uid, "STANDARD\\2,2")
        assert status == STATUS_INVALID_ATTRIBUTE_VALUE, peer.log()
        assert peer.stored_prints() == []
        # The refusal leaves the session usable: the configured layout prints.
        status, film_box = _create_film_box(assoc, session_uid, "STANDARD\\1,1")
        assert status == 0x0000, peer.log()
        _print_one_image(assoc, film_box)
        status = assoc.send_n_delete(BasicFilmSession, session_uid, meta_uid=META)
        assert _status(status) == 0x0000
    finally:
        assoc.release()
    assert len(peer.stored_prints()) == 1
    assert len(peer.hardcopy_images()) == 1


def test_restricted_printer_accepts_implicit_vr_only(printers: dict[str, Dcmprscp]) -> None:
    """dcmprscp rejects the presentation context for explicit VR; pynetdicom then aborts."""
    ae = AE(ae_title="PRINTSCU")
    ae.add_requested_context(BasicGrayscalePrintManagementMeta, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", printers["restricted"].port, ae_title="RESTRICTED")
    assert not assoc.is_established
    assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [META]


def test_n_create_rsp_affected_sop_class_uid(printers: dict[str, Dcmprscp]) -> None:
    """The restricted printer leaves (0000,0002) out of N-CREATE-RSP (DS-27); the UID of the
    created instance is always there."""
    for name, present in (("full", True), ("restricted", False)):
        assoc = _associate(printers[name], [ImplicitVRLittleEndian])
        try:
            _create_session(assoc)
        finally:
            assoc.release()
        rsp = next(
            m
            for m in assoc.received_messages
            if type(m).__name__ == "N_CREATE_RSP"  # type: ignore[attr-defined]
        )
        assert ("AffectedSOPClassUID" in rsp.command_set) is present
        assert rsp.command_set.AffectedSOPInstanceUID
