"""Stored Print and Hardcopy Grayscale/Color objects: a printed film as archive instances.

The Print SCP (``appliance.print_scp``) keeps each film it is asked to print as one Stored Print
(1.2.840.10008.5.1.1.27) plus one Hardcopy Grayscale (1.2.840.10008.5.1.1.29) or Hardcopy
Color (1.2.840.10008.5.1.1.30) image per filled image box, the way DICOMscope and DCMTK's
``dcmprscp`` spool print jobs (DS-25, DS-26). The print spooler prints a Stored Print again
from these objects, and the console shows them like any other study.

The three IODs were retired from PS3.3 (2004); the module tables used here are those of
PS3.3 2003 A.31 (Stored Print), A.32.1/A.32.2 (Hardcopy Grayscale/Color) and the DICOMscope
conformance statement. ``dciodvfy`` has no definition for them: it checks the attributes but
reports "Information Object Not found".

All print jobs of one Film Session share one study: the Film Session Label is its Study
Description, the Stored Prints are one series (Modality ``STORED_PRINT``, DICOMscope's term),
the hardcopy images another (Modality ``HC``). The patient is empty: a print session carries
only pixels, no patient data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dsutils import encode

from appliance import IMPLEMENTATION_CLASS_UID, __version__

STORED_PRINT_SOP_CLASS = "1.2.840.10008.5.1.1.27"
HARDCOPY_GRAYSCALE_SOP_CLASS = "1.2.840.10008.5.1.1.29"
HARDCOPY_COLOR_SOP_CLASS = "1.2.840.10008.5.1.1.30"

FILM_SESSION_SOP_CLASS = "1.2.840.10008.5.1.1.1"
FILM_BOX_SOP_CLASS = "1.2.840.10008.5.1.1.2"
GRAYSCALE_IMAGE_BOX_SOP_CLASS = "1.2.840.10008.5.1.1.4"
COLOR_IMAGE_BOX_SOP_CLASS = "1.2.840.10008.5.1.1.4.1"
PRESENTATION_LUT_SOP_CLASS = "1.2.840.10008.5.1.1.23"

MANUFACTURER = "dicom-appliance"
# Our UIDs: below our own root, so they never collide with a modality's.
UID_PREFIX = IMPLEMENTATION_CLASS_UID + "."

# Film Box Content Sequence items, in the order PS3.3 2003 C.13.3 lists them; type 2 ones
# are always present (empty when the print session did not set them).
FILM_BOX_CONTENT_KEYWORDS = (
    "ImageDisplayFormat",
    "AnnotationDisplayFormatID",
    "FilmOrientation",
    "FilmSizeID",
    "MagnificationType",
    "SmoothingType",
    "BorderDensity",
    "EmptyImageDensity",
    "MinDensity",
    "MaxDensity",
    "Trim",
    "ConfigurationInformation",
    "Illumination",
    "ReflectedAmbientLight",
    "RequestedResolutionID",
    "ReferencedPresentationLUTSequence",
)
_FILM_BOX_TYPE_2 = ("MagnificationType", "MaxDensity", "ConfigurationInformation")
IMAGE_BOX_CONTENT_KEYWORDS = (
    "MagnificationType",
    "SmoothingType",
    "ConfigurationInformation",
    "RequestedImageSize",
    "RequestedDecimateCropBehavior",
    "ReferencedPresentationLUTSequence",
)


def new_uid() -> str:
    return generate_uid(prefix=UID_PREFIX)


def _has_non_ascii(*texts: str) -> bool:
    return any(not text.isascii() for text in texts)


@dataclass
class PrintOrigin:
    """Who printed what where: shared by the objects of one Film Session."""

    calling_ae: str
    called_ae: str
    printer_name: str
    retrieve_ae: str
    label: str = ""
    created: dt.datetime = field(default_factory=dt.datetime.now)
    study_uid: str = field(default_factory=new_uid)
    stored_print_series_uid: str = field(default_factory=new_uid)
    hardcopy_series_uid: str = field(default_factory=new_uid)

    @property
    def date(self) -> str:
        return self.created.strftime("%Y%m%d")

    @property
    def time(self) -> str:
        return self.created.strftime("%H%M%S")


@dataclass
class PrintedBox:
    """One filled image box of a film: its N-SET attributes and the hardcopy made of it."""

    position: int
    item: Dataset  # the Basic Grayscale/Color Image Sequence item
    color: bool
    box_uid: str
    attributes: Dataset = field(default_factory=Dataset)  # polarity, magnification ...
    presentation_lut: Dataset | None = None  # the referenced PLUT's N-CREATE attributes
    hardcopy_uid: str = field(default_factory=new_uid)


def _common(ds: Dataset, origin: PrintOrigin, sop_class: str, sop_instance: str) -> None:
    """Patient, General Study, SOP Common: the same in every object of the session."""
    if _has_non_ascii(origin.label):
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.InstanceCreationDate = dt.datetime.now().strftime("%Y%m%d")
    ds.InstanceCreationTime = dt.datetime.now().strftime("%H%M%S")
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = origin.date
    ds.StudyTime = origin.time
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = origin.study_uid
    ds.StudyID = ""
    if origin.label:
        ds.StudyDescription = origin.label[:64]
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = __version__
    ds.StationName = origin.called_ae[:16]


def hardcopy_image(box: PrintedBox, origin: PrintOrigin, instance_number: int) -> Dataset:
    """The Hardcopy Grayscale or Color Image of one image box, its pixels as received."""
    sop_class = HARDCOPY_COLOR_SOP_CLASS if box.color else HARDCOPY_GRAYSCALE_SOP_CLASS
    ds = Dataset()
    _common(ds, origin, sop_class, box.hardcopy_uid)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ContentDate = origin.date
    ds.ContentTime = origin.time
    ds.Modality = "HC"
    ds.SeriesInstanceUID = origin.hardcopy_series_uid
    ds.SeriesNumber = "2"
    ds.InstanceNumber = str(instance_number)
    ds.PatientOrientation = ""
    ds.DerivationDescription = (
        f"Hardcopy received by {origin.called_ae} from {origin.calling_ae}, "
        f"image box {box.position}"
    )[:1024]
    # Hardcopy Equipment (PS3.3 2003 C.13.10)
    ds.HardcopyCreationDeviceID = origin.called_ae[:64]
    ds.HardcopyDeviceManufacturer = MANUFACTURER
    ds.HardcopyDeviceSoftwareVersion = __version__
    ds.HardcopyDeviceManufacturerModelName = "virtual printer"
    item = box.item
    ds.SamplesPerPixel = int(item.SamplesPerPixel)
    ds.PhotometricInterpretation = str(item.PhotometricInterpretation)
    if box.color:
        ds.PlanarConfiguration = int(item.get("PlanarConfiguration", 1))
    ds.Rows = int(item.Rows)
    ds.Columns = int(item.Columns)
    aspect = item.get("PixelAspectRatio")
    if aspect is not None and len(aspect) == 2 and int(aspect[0]) != int(aspect[1]):
        ds.PixelAspectRatio = list(aspect)
    ds.BitsAllocated = int(item.BitsAllocated)
    ds.BitsStored = int(item.BitsStored)
    ds.HighBit = int(item.HighBit)
    ds.PixelRepresentation = 0
    frame = int(item.Rows) * int(item.Columns) * int(item.SamplesPerPixel)
    size = frame * (2 if int(item.BitsAllocated) == 16 else 1)
    pixels = bytes(item.PixelData[:size])
    if len(pixels) % 2:
        pixels += b"\0"
    ds.add_new(0x7FE00010, "OW" if int(item.BitsAllocated) == 16 else "OB", pixels)
    lut = box.presentation_lut
    if lut is not None and "PresentationLUTSequence" in lut:
        # HC Presentation LUT (DICOMscope's extension, DS-26): the LUT the image was printed
        # with, so a reprint can use it again.
        ds.PresentationLUTSequence = [_copy(lut.PresentationLUTSequence[0])]
    return ds


def _copy(item: Dataset) -> Dataset:
    out = Dataset()
    for elem in item:
        out.add(elem)
    return out


def _reference(sop_class: str, sop_instance: str | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    if sop_instance is not None:
        item.ReferencedSOPInstanceUID = sop_instance
    return item


def stored_print(
    *,
    origin: PrintOrigin,
    sop_instance_uid: str,
    film_box: Dataset,
    boxes: Sequence[PrintedBox],
    presentation_luts: dict[str, Dataset],
    instance_number: int,
) -> Dataset:
    """The Stored Print of one film: its film box attributes and references to the hardcopy
    images at their Image Positions (DS-26).

    ``film_box``: the film box attributes as negotiated (N-CREATE and N-SET, with the SCP's
    defaults); ``presentation_luts``: the PLUTs the film or its boxes reference, by SOP
    Instance UID.
    """
    ds = Dataset()
    _common(ds, origin, STORED_PRINT_SOP_CLASS, sop_instance_uid)
    ds.Modality = "STORED_PRINT"
    ds.SeriesInstanceUID = origin.stored_print_series_uid
    ds.SeriesNumber = "1"
    ds.InstanceNumber = str(instance_number)

    # Printer Characteristics (PS3.3 2003 C.13.9.2)
    capabilities = [
        FILM_SESSION_SOP_CLASS,
        FILM_BOX_SOP_CLASS,
    ]
    if any(not box.color for box in boxes):
        capabilities += [GRAYSCALE_IMAGE_BOX_SOP_CLASS, HARDCOPY_GRAYSCALE_SOP_CLASS]
    if any(box.color for box in boxes):
        capabilities += [COLOR_IMAGE_BOX_SOP_CLASS, HARDCOPY_COLOR_SOP_CLASS]
    if presentation_luts:
        capabilities.append(PRESENTATION_LUT_SOP_CLASS)
    ds.PrintManagementCapabilitiesSequence = [_reference(uid) for uid in capabilities]
    printer = Dataset()
    printer.Originator = origin.calling_ae[:16]
    printer.DestinationAE = origin.called_ae[:16]
    printer.PrinterName = origin.printer_name[:64]
    ds.PrinterCharacteristicsSequence = [printer]

    # Film Box (PS3.3 2003 C.13.3.1)
    content = Dataset()
    for keyword in FILM_BOX_CONTENT_KEYWORDS:
        if keyword in film_box:
            content.add(film_box[keyword])
        elif keyword in _FILM_BOX_TYPE_2:
            setattr(content, keyword, None)
    if "ReferencedPresentationLUTSequence" in content:
        for keyword in ("Illumination", "ReflectedAmbientLight"):
            if keyword not in content:
                setattr(content, keyword, None)
    ds.FilmBoxContentSequence = [content]

    # Image Box List (PS3.3 2003 C.13.11)
    items = []
    for box in boxes:
        item = Dataset()
        item.SOPInstanceUID = box.box_uid
        ref = _reference(
            HARDCOPY_COLOR_SOP_CLASS if box.color else HARDCOPY_GRAYSCALE_SOP_CLASS,
            box.hardcopy_uid,
        )
        ref.RetrieveAETitle = origin.retrieve_ae[:16]
        ref.StudyInstanceUID = origin.study_uid
        ref.SeriesInstanceUID = origin.hardcopy_series_uid
        ref.PatientID = ""
        item.ReferencedImageSequence = [ref]
        item.ImageBoxPosition = box.position
        item.Polarity = box.attributes.get("Polarity", None) or None
        for keyword in IMAGE_BOX_CONTENT_KEYWORDS:
            if keyword in box.attributes:
                item.add(box.attributes[keyword])
        items.append(item)
    ds.ImageBoxContentSequence = items

    # Presentation LUT List (PS3.3 2003 C.13.12)
    if presentation_luts:
        luts = []
        for uid, lut in presentation_luts.items():
            item = Dataset()
            item.SOPInstanceUID = uid
            if "PresentationLUTSequence" in lut:
                item.PresentationLUTSequence = [_copy(lut.PresentationLUTSequence[0])]
            else:
                item.PresentationLUTShape = lut.PresentationLUTShape
            luts.append(item)
        ds.PresentationLUTContentSequence = luts
    return ds


def encode_explicit_le(ds: Dataset) -> bytes:
    """The data set in Explicit VR Little Endian, without File Meta (Archive.store_encoded)."""
    encoded = encode(ds, False, True)
    if encoded is None:
        raise ValueError("the data set cannot be encoded")
    return encoded
