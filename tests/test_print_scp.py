"""Print SCP (DS-16 to DS-28): crafted pynetdicom print sessions against an in-process listener.

Each status the rules name comes from a real request on a real association; the Stored Print
and Hardcopy objects of a print are read back from the archive with pydicom and checked with
dciodvfy.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association

from appliance.archive import Archive
from appliance.config import ConfigError, ConfigStore, Printer, VirtualPrinter
from appliance.hardcopy import (
    HARDCOPY_COLOR_SOP_CLASS,
    HARDCOPY_GRAYSCALE_SOP_CLASS,
    STORED_PRINT_SOP_CLASS,
)
from appliance.jobs import JobError
from appliance.network import DicomServer
from appliance.print_scp import PrintPolicy, PrintService
from tests.peers import LOOPBACK, free_port

GRAY_META = "1.2.840.10008.5.1.1.9"
COLOR_META = "1.2.840.10008.5.1.1.18"
PLUT = "1.2.840.10008.5.1.1.23"
FILM_SESSION = "1.2.840.10008.5.1.1.1"
FILM_BOX = "1.2.840.10008.5.1.1.2"
GRAY_BOX = "1.2.840.10008.5.1.1.4"
COLOR_BOX = "1.2.840.10008.5.1.1.4.1"
PRINTER = "1.2.840.10008.5.1.1.16"
PRINTER_INSTANCE = "1.2.840.10008.5.1.1.17"


@dataclass
class Scp:
    config: ConfigStore
    archive: Archive
    service: PrintService
    server: DicomServer
    jobs: list[tuple[tuple, dict]] = field(default_factory=list)
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    refuse_jobs: bool = False

    @property
    def port(self) -> int:
        return self.server.port

    def stored(self, sop_class: str) -> list[pydicom.Dataset]:
        return [
            pydicom.dcmread(record.path)
            for record in self.archive.instances()
            if record.sop_class_uid == sop_class
        ]


def _make_scp(tmp_path: Path, policy: PrintPolicy | None = None, **settings: Any) -> Scp:
    config = ConfigStore(tmp_path / "data")
    config.set("disk_reserve_mb", 0)
    for key, value in settings.items():
        config.set(key, value)
    archive = Archive(tmp_path / "data")
    scp_settings = config.settings()
    scp_settings.port = free_port()
    scp_settings.bind_address = LOOPBACK
    holder: dict[str, Scp] = {}

    def submit(*args: Any, **kwargs: Any) -> Any:
        scp = holder["scp"]
        if scp.refuse_jobs:
            raise JobError("print jobs are not available on this appliance")
        scp.jobs.append((args, kwargs))
        return None

    service = PrintService(
        config,
        archive,
        submit=submit,
        printer_status=lambda name: holder["scp"].statuses.get(name),
        policy=policy,
    )
    server = DicomServer(scp_settings, config, archive, services=[service])
    scp = Scp(config, archive, service, server)
    holder["scp"] = scp
    server.start()
    return scp


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[Scp]:
    made = _make_scp(tmp_path)
    yield made
    made.server.shutdown(1)
    made.archive.close()
    made.config.close()


@pytest.fixture
def make_scp(tmp_path: Path) -> Iterator[Any]:
    made: list[Scp] = []

    def make(policy: PrintPolicy | None = None, **settings: Any) -> Scp:
        scp = _make_scp(tmp_path / f"scp{len(made)}", policy, **settings)
        made.append(scp)
        return scp

    yield make
    for scp in made:
        scp.server.shutdown(1)
        scp.archive.close()
        scp.config.close()


class Session:
    """A pynetdicom print SCU that keeps every message it receives."""

    def __init__(
        self,
        port: int,
        called: str = "APPLIANCE",
        contexts: tuple[str, ...] = (GRAY_META,),
        syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian),
    ) -> None:
        ae = AE(ae_title="MODALITY")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        for context in contexts:
            ae.add_requested_context(context, list(syntaxes))
        self.received: list[Any] = []
        self.assoc: Association = ae.associate(
            LOOPBACK,
            port,
            ae_title=called,
            evt_handlers=[(evt.EVT_DIMSE_RECV, lambda event: self.received.append(event.message))],
        )
        assert self.assoc.is_established
        self.meta = contexts[0]

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()

    def last(self, name: str) -> Any:
        return next(m for m in reversed(self.received) if type(m).__name__ == name)

    def create(
        self, ds: Dataset | None, sop_class: str, uid: str | None = None, meta: str | None = None
    ) -> tuple[int, str | None, Dataset | None]:
        status, attrs = self.assoc.send_n_create(ds, sop_class, uid, meta_uid=meta or self.meta)
        rsp = self.last("N_CREATE_RSP").command_set
        return int(status.Status), rsp.get("AffectedSOPInstanceUID"), attrs

    def session(self, ds: Dataset | None = None) -> str:
        status, uid, _ = self.create(ds, FILM_SESSION)
        assert status == 0 and uid
        return str(uid)

    def film_box(
        self, session_uid: str, display_format: str = "STANDARD\\1,1", **attrs: Any
    ) -> tuple[int, str | None, list[str]]:
        ds = Dataset()
        ds.ImageDisplayFormat = display_format
        ds.ReferencedFilmSessionSequence = [_ref(FILM_SESSION, session_uid)]
        for key, value in attrs.items():
            setattr(ds, key, value)
        status, uid, rsp = self.create(ds, FILM_BOX)
        boxes = [str(i.ReferencedSOPInstanceUID) for i in rsp.ReferencedImageBoxSequence] if (
            rsp is not None and "ReferencedImageBoxSequence" in rsp
        ) else []  # fmt: skip
        return status, uid, boxes

    def set(self, ds: Dataset, sop_class: str, uid: str) -> int:
        status, _ = self.assoc.send_n_set(ds, sop_class, uid, meta_uid=self.meta)
        return int(status.Status)

    def action(self, sop_class: str, uid: str, action: int = 1) -> int:
        status, _ = self.assoc.send_n_action(None, action, sop_class, uid, meta_uid=self.meta)
        return int(status.Status)

    def delete(self, sop_class: str, uid: str, meta: str | None = None) -> int:
        status = self.assoc.send_n_delete(sop_class, uid, meta_uid=meta or self.meta)
        return int(status.Status)

    def get_printer(self, tags: list[int] | None = None) -> tuple[int, Dataset | None]:
        status, attrs = self.assoc.send_n_get(
            tags or [], PRINTER, PRINTER_INSTANCE, meta_uid=self.meta
        )
        return int(status.Status), attrs


@pytest.fixture
def session(scp: Scp) -> Iterator[Session]:
    peer = Session(scp.port)
    yield peer
    peer.close()


def _ref(sop_class: str, uid: str) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = sop_class
    ref.ReferencedSOPInstanceUID = uid
    return ref


def gray_item(bits: int = 8, rows: int = 32, columns: int = 24) -> Dataset:
    item = Dataset()
    item.SamplesPerPixel = 1
    item.PhotometricInterpretation = "MONOCHROME2"
    item.Rows = rows
    item.Columns = columns
    if bits == 8:
        item.BitsAllocated, item.BitsStored, item.HighBit = 8, 8, 7
        pixels = (np.arange(rows * columns) % 256).astype(np.uint8)
    else:
        item.BitsAllocated, item.BitsStored, item.HighBit = 16, 12, 11
        pixels = (np.arange(rows * columns) % 4096).astype("<u2")
    item.PixelRepresentation = 0
    item.PixelData = pixels.tobytes()
    return item


def color_item(rows: int = 16, columns: int = 16) -> Dataset:
    item = Dataset()
    item.SamplesPerPixel = 3
    item.PhotometricInterpretation = "RGB"
    item.PlanarConfiguration = 1
    item.Rows = rows
    item.Columns = columns
    item.BitsAllocated, item.BitsStored, item.HighBit = 8, 8, 7
    item.PixelRepresentation = 0
    item.PixelData = bytes(range(256)) * (rows * columns * 3 // 256)
    return item


def image_box(position: int, item: Dataset | None = None, **attrs: Any) -> Dataset:
    ds = Dataset()
    ds.ImageBoxPosition = position
    item = item if item is not None else gray_item()
    if int(item.SamplesPerPixel) == 3:
        ds.BasicColorImageSequence = [item]
    else:
        ds.BasicGrayscaleImageSequence = [item]
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def one(**attrs: Any) -> Dataset:
    ds = Dataset()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


# --- DS-16 Printer N-GET -----------------------------------------------------------------------


def test_printer_n_get_normal_and_unsupported_attribute(session):
    status, attrs = session.get_printer()
    assert status == 0
    assert attrs.PrinterStatus == "NORMAL" and attrs.PrinterStatusInfo == "NORMAL"
    status, attrs = session.get_printer([0x21100010])
    assert status == 0 and "PrinterStatus" in attrs and "PrinterStatusInfo" not in attrs
    # Printer Serial Number: not supported.
    assert session.get_printer([0x00181000])[0] == 0x0105
    status, _ = session.assoc.send_n_get([], PRINTER, "1.2.3.4", meta_uid=GRAY_META)
    assert int(status.Status) == 0x0112


def test_printer_n_get_reports_the_mapped_printers_status(scp):
    scp.config.add_printer(Printer(name="film", ae_title="FILM", host=LOOPBACK, port=104))
    scp.config.add_virtual_printer(VirtualPrinter("ct", "CTPRINT", "film"))
    peer = Session(scp.port, called="CTPRINT")
    try:
        assert peer.get_printer()[1].PrinterStatus == "NORMAL"  # nothing known yet
        scp.statuses["film"] = {"printer_status": "FAILURE", "printer_status_info": "FILM JAM"}
        attrs = peer.get_printer()[1]
        assert (attrs.PrinterStatus, attrs.PrinterStatusInfo) == ("FAILURE", "FILM JAM")
        scp.statuses["film"] = {"printer_status": None, "error": "cannot connect"}
        attrs = peer.get_printer()[1]
        assert (attrs.PrinterStatus, attrs.PrinterStatusInfo) == ("WARNING", "PRINTER OFFLINE")
    finally:
        peer.close()
    # The default virtual printer holds: always NORMAL.
    held = Session(scp.port)
    try:
        assert held.get_printer()[1].PrinterStatus == "NORMAL"
    finally:
        held.close()


# --- DS-17, DS-18 Film Session -----------------------------------------------------------------


def test_film_session_defaults(session):
    status, uid, attrs = session.create(None, FILM_SESSION)
    assert status == 0 and uid
    assert attrs.NumberOfCopies == 1
    assert attrs.PrintPriority == "MED"
    assert attrs.OwnerID == "DEFAULT"
    assert attrs.MediumType and attrs.FilmDestination
    assert attrs.FilmSessionLabel.startswith('print job for "MODALITY" created ')
    # DS-27: Affected SOP Class UID in every N-CREATE-RSP.
    assert session.last("N_CREATE_RSP").command_set.AffectedSOPClassUID == FILM_SESSION


@pytest.mark.parametrize(
    ("attrs", "status"),
    [
        ({"NumberOfCopies": "0"}, 0x0106),
        ({"PrintPriority": "URGENT"}, 0x0106),
        ({"MediumType": "PARCHMENT"}, 0x0106),
        ({"FilmDestination": "BIN_9"}, 0x0106),
        ({"MemoryAllocation": "1000"}, 0xB600),
        ({"PatientName": "X"}, 0x0105),
        # DS-24: Presentation LUT attributes belong to the Film Box (CP 173).
        ({"Illumination": 2000}, 0x0105),
    ],
)
def test_film_session_validation(session, attrs, status):
    got, uid, _ = session.create(one(**attrs), FILM_SESSION)
    assert got == status
    assert (uid is not None) == (status == 0xB600)


def test_second_film_session_and_unknown_instances(session):
    uid = session.session()
    assert session.create(None, FILM_SESSION)[0] == 0x0111
    assert session.set(one(NumberOfCopies="2"), FILM_SESSION, uid) == 0
    assert session.set(one(NumberOfCopies="2"), FILM_SESSION, "1.2.3") == 0x0112
    assert session.delete(FILM_SESSION, "1.2.3") == 0x0112
    assert session.action(FILM_SESSION, "1.2.3") == 0x0112


# --- DS-19 to DS-21 Film Box -------------------------------------------------------------------


def test_film_box_without_session_and_missing_attributes(session):
    ds = one(ImageDisplayFormat="STANDARD\\1,1")
    ds.ReferencedFilmSessionSequence = [_ref(FILM_SESSION, "1.2.3")]
    assert session.create(ds, FILM_BOX)[0] == 0x0117
    uid = session.session()
    assert session.create(one(ImageDisplayFormat="STANDARD\\1,1"), FILM_BOX)[0] == 0x0120
    missing_format = Dataset()
    missing_format.ReferencedFilmSessionSequence = [_ref(FILM_SESSION, uid)]
    assert session.create(missing_format, FILM_BOX)[0] == 0x0120


def test_film_box_layouts_defaults_and_image_boxes(session):
    uid = session.session()
    assert session.film_box(uid, "STANDARD\\7,7")[0] == 0x0106
    assert session.film_box(uid, "ROW\\2")[0] == 0x0106
    assert session.film_box(uid, "STANDARD\\2,2", FilmSizeID="99INX99IN")[0] == 0x0106
    assert session.film_box(uid, "STANDARD\\2,2", FilmOrientation="SIDEWAYS")[0] == 0x0106
    assert session.film_box(uid, "STANDARD\\2,2", Trim="YES")[0] == 0x0105
    assert session.film_box(uid, "STANDARD\\2,2", AnnotationDisplayFormatID="A")[0] == 0x0105
    status, box_uid, boxes = session.film_box(uid, "STANDARD\\2,3")
    assert status == 0 and box_uid
    rsp = session.assoc.send_n_create  # keep the name short below
    del rsp
    attrs = session.last("N_CREATE_RSP")
    assert attrs.command_set.AffectedSOPClassUID == FILM_BOX
    assert len(boxes) == 6 and len(set(boxes)) == 6
    status, _, rsp_attrs = session.create(
        one(
            ImageDisplayFormat="STANDARD\\1,1",
            ReferencedFilmSessionSequence=[_ref(FILM_SESSION, uid)],
        ),
        FILM_BOX,
    )
    assert rsp_attrs.FilmOrientation == "PORTRAIT"
    assert [i.ReferencedSOPClassUID for i in rsp_attrs.ReferencedImageBoxSequence] == [GRAY_BOX]


def test_film_box_n_set_scope(session):
    uid = session.session()
    _, box_uid, _ = session.film_box(uid)
    assert session.set(one(MagnificationType="CUBIC", MaxDensity=300), FILM_BOX, box_uid) == 0
    assert session.set(one(FilmSizeID="8INX10IN"), FILM_BOX, box_uid) == 0x0105
    assert session.set(one(ImageDisplayFormat="STANDARD\\2,2"), FILM_BOX, box_uid) == 0x0105
    assert session.set(one(MagnificationType="FANCY"), FILM_BOX, box_uid) == 0x0106
    assert session.set(one(MaxDensity=300), FILM_BOX, "1.2.3") == 0x0112
    assert session.delete(FILM_BOX, "1.2.3") == 0x0112


# --- DS-22 Image Box ---------------------------------------------------------------------------


def _bad_item(**changes: Any) -> Dataset:
    item = gray_item()
    for key, value in changes.items():
        setattr(item, key, value)
    return item


@pytest.mark.parametrize(
    ("box", "status"),
    [
        (image_box(1, gray_item(12)), 0x0000),
        (image_box(1, gray_item(), Polarity="REVERSE"), 0x0000),
        (image_box(1, _bad_item(BitsAllocated=16, BitsStored=16, HighBit=15)), 0x0106),
        (image_box(1, _bad_item(PixelRepresentation=1)), 0x0106),
        (image_box(1, _bad_item(PhotometricInterpretation="RGB")), 0x0106),
        (
            one(ImageBoxPosition=1, BasicGrayscaleImageSequence=[_bad_item(SamplesPerPixel=3)]),
            0x0106,
        ),
        (image_box(1, _bad_item(PixelData=b"\0" * 10)), 0x0106),
        (image_box(2), 0x0106),
        (image_box(1, gray_item(), Polarity="SIDEWAYS"), 0x0106),
        (one(ImageBoxPosition=1), 0x0120),
        (image_box(1, gray_item(), RequestedImageSize="100"), 0x0105),
        (image_box(1, gray_item(), RequestedDecimateCropBehavior="CROP"), 0x0105),
    ],
)
def test_image_box_rules(session, box, status):
    uid = session.session()
    _, _, boxes = session.film_box(uid)
    assert session.set(box, GRAY_BOX, boxes[0]) == status


def test_image_box_unknown_instance_and_twelve_bit_off(make_scp):
    scp = make_scp(PrintPolicy(twelve_bit=False))
    peer = Session(scp.port)
    try:
        uid = peer.session()
        _, _, boxes = peer.film_box(uid)
        assert peer.set(image_box(1), GRAY_BOX, "1.2.3") == 0x0112
        assert peer.set(image_box(1, gray_item(12)), GRAY_BOX, boxes[0]) == 0x0106
        assert peer.set(image_box(1, gray_item(8)), GRAY_BOX, boxes[0]) == 0
    finally:
        peer.close()


# --- DS-25, DS-26 printing ---------------------------------------------------------------------


def test_film_box_print_stores_a_stored_print_and_hardcopies(scp, session, tmp_path):
    uid = session.session(one(NumberOfCopies="2", MediumType="PAPER"))
    _, box_uid, boxes = session.film_box(
        uid, "STANDARD\\2,2", FilmSizeID="14INX17IN", MagnificationType="REPLICATE"
    )
    assert session.set(image_box(1, gray_item(8)), GRAY_BOX, boxes[0]) == 0
    assert session.set(image_box(3, gray_item(12), Polarity="REVERSE"), GRAY_BOX, boxes[2]) == 0
    assert session.action(FILM_BOX, box_uid) == 0

    [stored] = scp.stored(STORED_PRINT_SOP_CLASS)
    hardcopies = {str(ds.SOPInstanceUID): ds for ds in scp.stored(HARDCOPY_GRAYSCALE_SOP_CLASS)}
    assert len(hardcopies) == 2
    printer = stored.PrinterCharacteristicsSequence[0]
    assert (printer.Originator, printer.DestinationAE) == ("MODALITY", "APPLIANCE")
    assert printer.PrinterName == "default"
    capabilities = {
        str(i.ReferencedSOPClassUID) for i in stored.PrintManagementCapabilitiesSequence
    }
    assert capabilities == {FILM_SESSION, FILM_BOX, GRAY_BOX, HARDCOPY_GRAYSCALE_SOP_CLASS}
    content = stored.FilmBoxContentSequence[0]
    assert content.ImageDisplayFormat == "STANDARD\\2,2"
    assert (content.FilmSizeID, content.MagnificationType) == ("14INX17IN", "REPLICATE")
    items = stored.ImageBoxContentSequence
    assert [int(i.ImageBoxPosition) for i in items] == [1, 3]
    assert [i.Polarity for i in items] == ["", "REVERSE"]
    for item in items:
        ref = item.ReferencedImageSequence[0]
        image = hardcopies[str(ref.ReferencedSOPInstanceUID)]
        assert ref.ReferencedSOPClassUID == HARDCOPY_GRAYSCALE_SOP_CLASS
        assert ref.RetrieveAETitle == "APPLIANCE"
        assert ref.StudyInstanceUID == image.StudyInstanceUID == stored.StudyInstanceUID
        assert ref.SeriesInstanceUID == image.SeriesInstanceUID
        assert image.Modality == "HC" and list(image.ImageType) == ["DERIVED", "SECONDARY"]
    twelve = hardcopies[str(items[1].ReferencedImageSequence[0].ReferencedSOPInstanceUID)]
    assert (twelve.BitsAllocated, twelve.BitsStored) == (16, 12)
    assert np.array_equal(twelve.pixel_array.ravel(), np.frombuffer(gray_item(12).PixelData, "<u2"))
    # The default virtual printer holds: nothing queued.
    assert scp.jobs == []
    for record in scp.archive.instances():
        assert_dciodvfy_clean(record.path)


def assert_dciodvfy_clean(path: Path) -> None:
    """dciodvfy has no definition of these retired IODs ("Information Object Not found"); every
    other check it makes (VRs, VMs, values, lengths) must pass without an error."""
    result = subprocess.run(
        ["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True, timeout=30
    )
    errors = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.startswith("Error") and "Information Object Not found" not in line
    ]
    assert errors == [], result.stdout + result.stderr


def test_empty_film_box_and_film_session_statuses(scp, session):
    uid = session.session()
    # C600: a film session with no film box.
    assert session.action(FILM_SESSION, uid) == 0xC600
    _, empty_uid, _ = session.film_box(uid, "STANDARD\\1,2")
    # B603: an empty film box is not stored.
    assert session.action(FILM_BOX, empty_uid) == 0xB603
    assert scp.stored(STORED_PRINT_SOP_CLASS) == []
    _, full_uid, boxes = session.film_box(uid, "STANDARD\\2,1")
    assert session.set(image_box(2), GRAY_BOX, boxes[1]) == 0
    assert session.action(FILM_BOX, full_uid, action=2) == 0x0123
    # B602: one of two film boxes is empty; only the filled one is stored.
    assert session.action(FILM_SESSION, uid) == 0xB602
    [stored] = scp.stored(STORED_PRINT_SOP_CLASS)
    assert stored.FilmBoxContentSequence[0].ImageDisplayFormat == "STANDARD\\2,1"
    assert len(scp.stored(HARDCOPY_GRAYSCALE_SOP_CLASS)) == 1


def test_hierarchy_deletion_keeps_what_was_printed(scp, session):
    uid = session.session()
    _, film_uid, boxes = session.film_box(uid)
    assert session.set(image_box(1), GRAY_BOX, boxes[0]) == 0
    assert session.action(FILM_BOX, film_uid) == 0
    assert session.delete(FILM_SESSION, uid) == 0
    # DS-28: the deleted session's film box and image box are gone...
    assert session.set(one(MaxDensity=300), FILM_BOX, film_uid) == 0x0112
    assert session.set(image_box(1), GRAY_BOX, boxes[0]) == 0x0112
    assert session.action(FILM_BOX, film_uid) == 0x0112
    # ...the film printed before is not, and a new session prints again.
    assert len(scp.stored(STORED_PRINT_SOP_CLASS)) == 1
    uid = session.session()
    _, film_uid, boxes = session.film_box(uid)
    assert session.set(image_box(1), GRAY_BOX, boxes[0]) == 0
    assert session.action(FILM_BOX, film_uid) == 0
    assert len(scp.stored(STORED_PRINT_SOP_CLASS)) == 2


def test_malformed_and_unknown_requests_lose_nothing(scp, session):
    uid = session.session()
    _, film_uid, boxes = session.film_box(uid, "STANDARD\\1,2")
    assert session.set(image_box(1), GRAY_BOX, boxes[0]) == 0
    assert session.action(FILM_BOX, film_uid) == 0
    # An unknown instance, a class the context does not cover, an operation the class lacks.
    assert session.action(FILM_BOX, "1.2.840.99.1") == 0x0112
    assert session.set(image_box(1), COLOR_BOX, boxes[0]) == 0x0118
    status, _ = session.assoc.send_n_get([], FILM_BOX, film_uid, meta_uid=GRAY_META)
    assert int(status.Status) == 0x0211
    # An attribute list that does not decode: a sequence holding garbage.
    broken = Dataset()
    broken.ImageBoxPosition = 2
    garbage = b"\xfe\xff\x00\xe0\x08\x00\x00\x00" + b"\x28\x00\x10\x00ZZ\xff\xff"
    broken[0x20200110] = RawDataElement(
        Tag(0x20200110), "SQ", len(garbage), garbage, 0, False, True
    )
    assert session.set(broken, GRAY_BOX, boxes[1]) == 0x0110
    # The association goes on: the film is still there and the session prints again.
    assert session.set(image_box(2), GRAY_BOX, boxes[1]) == 0
    assert session.action(FILM_BOX, film_uid) == 0
    assert len(scp.stored(STORED_PRINT_SOP_CLASS)) == 2
    assert len(scp.stored(HARDCOPY_GRAYSCALE_SOP_CLASS)) == 3


def test_color_print_stores_hardcopy_color(scp):
    peer = Session(scp.port, contexts=(COLOR_META,))
    try:
        uid = peer.session()
        _, film_uid, boxes = peer.film_box(uid, "STANDARD\\1,1")
        assert peer.last("N_CREATE_RSP").command_set.AffectedSOPClassUID == FILM_BOX
        assert peer.set(image_box(1, gray_item()), COLOR_BOX, boxes[0]) == 0x0105
        assert peer.set(one(ImageBoxPosition=1), COLOR_BOX, boxes[0]) == 0x0120
        assert peer.set(image_box(1, color_item()), COLOR_BOX, boxes[0]) == 0
        assert peer.action(FILM_BOX, film_uid) == 0
    finally:
        peer.close()
    [image] = scp.stored(HARDCOPY_COLOR_SOP_CLASS)
    assert image.PhotometricInterpretation == "RGB" and image.SamplesPerPixel == 3
    [stored] = scp.stored(STORED_PRINT_SOP_CLASS)
    ref = stored.ImageBoxContentSequence[0].ReferencedImageSequence[0]
    assert ref.ReferencedSOPClassUID == HARDCOPY_COLOR_SOP_CLASS
    assert_dciodvfy_clean(scp.archive.instance(str(image.SOPInstanceUID)).path)


# --- virtual printers and print jobs -----------------------------------------------------------


def test_virtual_printer_forwards_to_its_printer(scp):
    scp.config.add_printer(
        Printer(
            name="film",
            ae_title="FILM",
            host=LOOPBACK,
            port=104,
            display_formats=["STANDARD\\1,1", "STANDARD\\2,2"],
            medium_types=["PAPER", "BLUE FILM"],
        )
    )
    scp.config.add_virtual_printer(VirtualPrinter("ct", "CTPRINT", "film"))
    peer = Session(scp.port, called="CTPRINT")
    try:
        # What the real printer cannot print is refused at once.
        assert peer.create(one(MediumType="CLEAR FILM"), FILM_SESSION)[0] == 0x0106
        uid = peer.session(one(NumberOfCopies="3", MediumType="PAPER", PrintPriority="HIGH"))
        assert peer.film_box(uid, "STANDARD\\2,3")[0] == 0x0106
        _, first, boxes = peer.film_box(uid, "STANDARD\\2,2")
        assert peer.set(image_box(4), GRAY_BOX, boxes[3]) == 0
        _, second, boxes = peer.film_box(uid, "STANDARD\\1,1")
        assert peer.set(image_box(1), GRAY_BOX, boxes[0]) == 0
        assert peer.action(FILM_SESSION, uid) == 0
    finally:
        peer.close()
    stored = {str(ds.SOPInstanceUID): ds for ds in scp.stored(STORED_PRINT_SOP_CLASS)}
    assert len(stored) == 2
    [(args, kwargs)] = scp.jobs
    kind, printer, params = args
    assert (kind, printer) == ("print", "film")
    assert set(params.pop("stored_print_uids")) == set(stored)
    assert params == {"copies": 3, "medium_type": "PAPER"}
    assert kwargs["priority"] > 0
    assert all(ds.PrinterCharacteristicsSequence[0].PrinterName == "ct" for ds in stored.values())


def test_a_film_is_kept_when_the_job_cannot_be_queued(scp):
    scp.config.add_printer(Printer(name="film", ae_title="FILM", host=LOOPBACK, port=104))
    scp.config.add_virtual_printer(VirtualPrinter("ct", "CTPRINT", "film"))
    scp.refuse_jobs = True
    peer = Session(scp.port, called="CTPRINT")
    try:
        uid = peer.session()
        _, film_uid, boxes = peer.film_box(uid)
        assert peer.set(image_box(1), GRAY_BOX, boxes[0]) == 0
        assert peer.action(FILM_BOX, film_uid) == 0
    finally:
        peer.close()
    assert len(scp.stored(STORED_PRINT_SOP_CLASS)) == 1


def test_archive_full_answers_c602_and_stores_nothing(scp, session):
    scp.archive.disk_reserve_bytes = 2**62
    uid = session.session()
    _, film_uid, boxes = session.film_box(uid)
    assert session.set(image_box(1), GRAY_BOX, boxes[0]) == 0
    assert session.action(FILM_BOX, film_uid) == 0xC602
    assert scp.stored(STORED_PRINT_SOP_CLASS) == []


def test_virtual_printer_configuration(tmp_path):
    config = ConfigStore(tmp_path)
    with pytest.raises(ConfigError, match="no printer named"):
        config.add_virtual_printer(VirtualPrinter("ct", "CTPRINT", "nope"))
    config.add_printer(Printer(name="film", ae_title="FILM", host=LOOPBACK, port=104))
    config.add_virtual_printer(VirtualPrinter("ct", "CTPRINT", "film"))
    config.add_virtual_printer(VirtualPrinter("mr", "MRPRINT", None))
    with pytest.raises(ConfigError, match="already has AE title"):
        config.add_virtual_printer(VirtualPrinter("us", "CTPRINT", None))
    with pytest.raises(ConfigError, match="already exists"):
        config.add_virtual_printer(VirtualPrinter("ct", "OTHER", None))
    config.add_virtual_printer(VirtualPrinter("ct", "CTPRINT2", None), replace=True)
    with pytest.raises(ConfigError):
        VirtualPrinter("bad name!", "X", None)
    with pytest.raises(ConfigError):
        VirtualPrinter("x", "A" * 17, None)
    assert [(v.name, v.ae_title, v.printer) for v in ConfigStore(tmp_path).virtual_printers()] == [
        ("ct", "CTPRINT2", None),
        ("mr", "MRPRINT", None),
    ]
    config.remove_virtual_printer("mr")
    with pytest.raises(ConfigError):
        config.remove_virtual_printer("mr")
    assert config.settings().print_port == 0
    with pytest.raises(ConfigError):
        config.set("print_port", 70000)
    config.set("print_default_printer", "film")
    config.set("print_default_printer", "")


# --- DS-23 Presentation LUT, DS-27 -------------------------------------------------------------


def _lut(entries: int) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [entries, 0, 12]
    item.LUTExplanation = "test"
    item.add_new(0x00283006, "US", [n * 4095 // (entries - 1) for n in range(entries)])
    ds = Dataset()
    ds.PresentationLUTSequence = [item]
    return ds


def test_presentation_lut_is_refused_by_default(scp):
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(PLUT)
    ae.add_requested_context(GRAY_META)
    assoc = ae.associate(LOOPBACK, scp.port, ae_title="APPLIANCE")
    try:
        assert assoc.is_established
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [GRAY_META]
    finally:
        assoc.release()


def test_presentation_lut_rules(make_scp):
    scp = make_scp(print_presentation_lut=True)
    peer = Session(scp.port, contexts=(GRAY_META, PLUT))
    try:
        status, shape_uid, _ = peer.create(one(PresentationLUTShape="IDENTITY"), PLUT, meta=PLUT)
        assert status == 0
        assert peer.create(one(PresentationLUTShape="LIN OD"), PLUT, meta=PLUT)[0] == 0
        assert peer.create(one(PresentationLUTShape="WAVY"), PLUT, meta=PLUT)[0] == 0x0106
        assert peer.create(one(LUTExplanation="none"), PLUT, meta=PLUT)[0] == 0x0105
        assert peer.create(None, PLUT, meta=PLUT)[0] == 0x0120
        assert peer.create(_lut(1000), PLUT, meta=PLUT)[0] == 0x0106
        status, lut_uid, _ = peer.create(_lut(256), PLUT, meta=PLUT)
        assert status == 0
        uid = peer.session()
        ref = [_ref(PLUT, lut_uid)]
        status, film_uid, boxes = peer.film_box(uid, ReferencedPresentationLUTSequence=ref)
        assert status == 0
        # A 256-entry LUT does not fit a 12-bit image; an 8-bit one is fine.
        assert peer.set(image_box(1, gray_item(12)), GRAY_BOX, boxes[0]) == 0x0106
        assert peer.set(image_box(1, gray_item(8)), GRAY_BOX, boxes[0]) == 0
        assert peer.delete(PLUT, lut_uid, meta=PLUT) == 0x0110
        assert peer.delete(PLUT, "1.2.3", meta=PLUT) == 0x0112
        assert peer.action(FILM_BOX, film_uid) == 0
        assert peer.delete(PLUT, shape_uid, meta=PLUT) == 0
    finally:
        peer.close()
    [stored] = scp.stored(STORED_PRINT_SOP_CLASS)
    content = stored.FilmBoxContentSequence[0]
    assert (content.Illumination, content.ReflectedAmbientLight) == (2000, 10)
    assert stored.PresentationLUTContentSequence[0].SOPInstanceUID == lut_uid
    assert PLUT in {
        str(i.ReferencedSOPClassUID) for i in stored.PrintManagementCapabilitiesSequence
    }
    [image] = scp.stored(HARDCOPY_GRAYSCALE_SOP_CLASS)
    assert len(image.PresentationLUTSequence[0].LUTData) == 256
    for record in scp.archive.instances():
        assert_dciodvfy_clean(record.path)


def test_n_create_response_can_leave_out_the_sop_class(make_scp):
    scp = make_scp(PrintPolicy(omit_create_sop_class=True))
    peer = Session(scp.port)
    try:
        peer.session()
        assert "AffectedSOPClassUID" not in peer.last("N_CREATE_RSP").command_set
    finally:
        peer.close()


def test_print_only_listener_refuses_storage(tmp_path):
    config = ConfigStore(tmp_path / "data")
    archive = Archive(tmp_path / "data")
    settings = config.settings()
    settings.port = free_port()
    settings.bind_address = LOOPBACK
    server = DicomServer(
        settings, config, archive, services=[PrintService(config, archive)], storage=False
    )
    server.start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
        ae.add_requested_context("1.2.840.10008.1.1")
        ae.add_requested_context(GRAY_META)
        assoc = ae.associate(LOOPBACK, server.port)
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        assert accepted == {"1.2.840.10008.1.1", GRAY_META}
        assoc.release()
    finally:
        server.shutdown(1)
        archive.close()
        config.close()
