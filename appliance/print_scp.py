"""Print SCP: the appliance as a virtual printer (DS-16 to DS-28).

Modalities print to the appliance as to a film imager: Basic Grayscale and Basic Color Print
Management Meta SOP Classes (Film Session, Film Box, Image Box, Printer) and, when the setting
``print_presentation_lut`` is on, the Presentation LUT SOP Class. Nothing is printed here: on
N-ACTION (Film Box or Film Session) each film is stored in the archive as one Stored Print plus
one Hardcopy Grayscale or Color image per filled image box (``appliance.hardcopy``), fsynced,
then one ``print`` job is queued that forwards the films to the real printer mapped to the
virtual printer, and only then is the N-ACTION answered. A film is therefore never lost once
the modality saw success: the job waits for the printer, and survives a restart.

Virtual printers are picked by the called AE title (``ConfigStore.virtual_printers()``); any
other called AE title (the main AE title, ``print_ae_title``) is the default virtual printer,
which forwards to ``print_default_printer`` or holds the films when that is empty. A virtual
printer accepts what its real printer accepts (display formats, film sizes, media,
destinations, magnification types from the printer's configuration; defaults when those are
not configured or the printer holds).

Each association has its own Film Session hierarchy, dropped when the association ends
(unprinted film boxes are discarded, like on a film imager). Associations are served
concurrently; one association's requests are served in order.

Statuses (PS3.4 H, PS3.7 C): 0105 unknown or not supported attribute, 0106 bad value, 0111
second Film Session or a duplicate SOP Instance UID, 0112 unknown instance, 0117 Film Box
without a Film Session, 0118 SOP class not part of the context's Meta SOP Class, 0120 missing
attribute, 0123 unknown action, 0211 operation the class does not have, B600 Memory Allocation
ignored, B602/B603 empty film box(es) not stored, C600 Film Session without a film box, C602
the archive cannot store the film (disk full: the modality may retry), 0110 anything else.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_ACTION, N_CREATE, N_DELETE, N_GET, N_SET
from pynetdicom.dsutils import decode, encode
from pynetdicom.presentation import PresentationContext

from appliance.archive import STATUS_OUT_OF_RESOURCES, Archive, StoreRefused
from appliance.config import (
    COMMON_DISPLAY_FORMATS,
    MAGNIFICATION_TYPES,
    ConfigError,
    ConfigStore,
    Printer,
    Settings,
    VirtualPrinter,
    validate_display_format,
)
from appliance.dicom_classes import EXPLICIT_VR_LE, UNCOMPRESSED_TRANSFER_SYNTAXES
from appliance.hardcopy import (
    COLOR_IMAGE_BOX_SOP_CLASS,
    FILM_BOX_SOP_CLASS,
    FILM_SESSION_SOP_CLASS,
    GRAYSCALE_IMAGE_BOX_SOP_CLASS,
    PRESENTATION_LUT_SOP_CLASS,
    PrintedBox,
    PrintOrigin,
    encode_explicit_le,
    hardcopy_image,
    new_uid,
    stored_print,
)
from appliance.network import DicomServer, EventHandlers, serve_requests_ourselves
from appliance.print_render import FILM_SIZES, parse_display_format

LOG = logging.getLogger("appliance.print_scp")

GRAYSCALE_META_SOP_CLASS = "1.2.840.10008.5.1.1.9"
COLOR_META_SOP_CLASS = "1.2.840.10008.5.1.1.18"
PRINTER_SOP_CLASS = "1.2.840.10008.5.1.1.16"
PRINTER_SOP_INSTANCE = "1.2.840.10008.5.1.1.17"
PRINT_META_SOP_CLASSES = (GRAYSCALE_META_SOP_CLASS, COLOR_META_SOP_CLASS)

# What each negotiated abstract syntax covers.
_META_MEMBERS: dict[str, frozenset[str]] = {
    GRAYSCALE_META_SOP_CLASS: frozenset(
        {
            FILM_SESSION_SOP_CLASS,
            FILM_BOX_SOP_CLASS,
            GRAYSCALE_IMAGE_BOX_SOP_CLASS,
            PRINTER_SOP_CLASS,
        }
    ),
    COLOR_META_SOP_CLASS: frozenset(
        {FILM_SESSION_SOP_CLASS, FILM_BOX_SOP_CLASS, COLOR_IMAGE_BOX_SOP_CLASS, PRINTER_SOP_CLASS}
    ),
    PRESENTATION_LUT_SOP_CLASS: frozenset({PRESENTATION_LUT_SOP_CLASS}),
}

SUCCESS = 0x0000
NO_SUCH_ATTRIBUTE = 0x0105
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_OBJECT_INSTANCE = 0x0112
INVALID_OBJECT_INSTANCE = 0x0117
NO_SUCH_SOP_CLASS = 0x0118
MISSING_ATTRIBUTE = 0x0120
NO_SUCH_ACTION = 0x0123
UNRECOGNIZED_OPERATION = 0x0211
MEMORY_ALLOCATION_NOT_SUPPORTED = 0xB600
EMPTY_PAGE_IN_SESSION = 0xB602
EMPTY_PAGE = 0xB603
NO_FILM_BOX = 0xC600
PRINT_QUEUE_FULL = 0xC602

PRINT_ACTION = 1

# Used when the mapped printer does not list its own (or the virtual printer holds).
DEFAULT_DISPLAY_FORMATS = COMMON_DISPLAY_FORMATS
DEFAULT_FILM_SIZES = tuple(FILM_SIZES)
DEFAULT_MEDIUM_TYPES = ("BLUE FILM", "CLEAR FILM", "PAPER")
DEFAULT_FILM_DESTINATIONS = ("MAGAZINE", "PROCESSOR")
RESOLUTION_IDS = ("STANDARD", "HIGH")
PRINT_PRIORITIES = ("MED", "HIGH", "LOW")
# Print Priority (2000,0020) to the print job's priority (higher runs first).
JOB_PRIORITIES = {"HIGH": 10, "MED": 0, "LOW": -10}
PRESENTATION_LUT_SHAPES = ("IDENTITY", "LIN OD", "INVERSE")
_CODE_STRING = re.compile(r"^[A-Z0-9_ ]{1,16}$")
# Number of Copies the print queue accepts (appliance.print_jobs).
MAX_COPIES = 99
# Film boxes one Film Session may hold; a film imager has a similar limit of its memory.
MAX_FILM_BOXES = 100

PrinterStatusLookup = Callable[[str], dict[str, Any] | None]
SubmitJob = Callable[..., Any]


def _tags(*keywords: str) -> frozenset[int]:
    tags = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        tags.add(int(tag))
    return frozenset(tags)


_SPECIFIC_CHARACTER_SET = _tags("SpecificCharacterSet")
_SESSION_TAGS = _tags(
    "NumberOfCopies",
    "PrintPriority",
    "MediumType",
    "FilmDestination",
    "FilmSessionLabel",
    "MemoryAllocation",
    "OwnerID",
)
_PLUT_LEVEL_TAGS = _tags(
    "ReferencedPresentationLUTSequence", "Illumination", "ReflectedAmbientLight"
)
_FILM_BOX_SET_TAGS = _tags(
    "MagnificationType",
    "MaxDensity",
    "ConfigurationInformation",
    "SmoothingType",
    "BorderDensity",
    "EmptyImageDensity",
    "MinDensity",
)
_FILM_BOX_CREATE_TAGS = _FILM_BOX_SET_TAGS | _tags(
    "ImageDisplayFormat",
    "ReferencedFilmSessionSequence",
    "FilmOrientation",
    "FilmSizeID",
    "RequestedResolutionID",
)
_TRIM = _tags("Trim")
_IMAGE_BOX_TAGS = _tags(
    "ImageBoxPosition",
    "Polarity",
    "MagnificationType",
    "SmoothingType",
    "ConfigurationInformation",
)
_REQUESTED_IMAGE_SIZE = _tags("RequestedImageSize")
_DECIMATE_CROP = _tags("RequestedDecimateCropBehavior")
_REFERENCED_PLUT = _tags("ReferencedPresentationLUTSequence")
_PLUT_TAGS = _tags("PresentationLUTSequence", "PresentationLUTShape")
_PRINTER_TAGS = _tags("PrinterStatus", "PrinterStatusInfo", "PrinterName")


class PrintError(Exception):
    """A request refused with ``status``; ``comment`` goes into Error Comment."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


@dataclass(frozen=True)
class PrintPolicy:
    """What the virtual printers accept beyond the required attributes (DICOMscope's switches,
    DS-20, DS-23, DS-24, DS-27), with DICOMscope's defaults."""

    presentation_lut: bool = False
    # A LUT of 256 entries goes with 8-bit images, 4096 with 12-bit ones (DS-23).
    lut_match_required: bool = True
    # CP 173: Referenced Presentation LUT, Illumination, Reflected Ambient Light on the Film Box
    # (True) or on the Film Session (False).
    lut_on_film_box: bool = True
    trim: bool = False
    requested_image_size: bool = False
    decimate_crop: bool = False
    twelve_bit: bool = True
    # For testing print SCUs: leave Affected SOP Class UID out of N-CREATE responses.
    omit_create_sop_class: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> PrintPolicy:
        return cls(presentation_lut=settings.print_presentation_lut)


@dataclass(frozen=True)
class Target:
    """The virtual printer an association prints to, and what it accepts."""

    name: str
    ae_title: str
    printer: str | None
    display_formats: tuple[str, ...] = DEFAULT_DISPLAY_FORMATS
    film_sizes: tuple[str, ...] = DEFAULT_FILM_SIZES
    medium_types: tuple[str, ...] = DEFAULT_MEDIUM_TYPES
    film_destinations: tuple[str, ...] = DEFAULT_FILM_DESTINATIONS
    magnification_types: tuple[str, ...] = MAGNIFICATION_TYPES

    @classmethod
    def for_printer(cls, virtual: VirtualPrinter, printer: Printer | None) -> Target:
        if printer is None:
            return cls(virtual.name, virtual.ae_title, virtual.printer)
        return cls(
            virtual.name,
            virtual.ae_title,
            virtual.printer,
            display_formats=tuple(printer.display_formats) or DEFAULT_DISPLAY_FORMATS,
            film_sizes=tuple(printer.film_sizes) or DEFAULT_FILM_SIZES,
            medium_types=tuple(printer.medium_types) or DEFAULT_MEDIUM_TYPES,
            film_destinations=tuple(printer.film_destinations) or DEFAULT_FILM_DESTINATIONS,
            magnification_types=tuple(printer.magnification_types) or MAGNIFICATION_TYPES,
        )


def resolve_target(config: ConfigStore, settings: Settings, called_ae: str) -> Target:
    """The virtual printer with this AE title, else the default one."""
    called = called_ae.strip()
    try:
        virtual = next((v for v in config.virtual_printers() if v.ae_title == called), None)
    except ConfigError as exc:
        LOG.error("virtual printers unreadable, printing to the default one: %s", exc)
        virtual = None
    if virtual is None:
        virtual = VirtualPrinter(
            name="default",
            ae_title=settings.print_ae_title,
            printer=settings.print_default_printer or None,
        )
    printer = None
    if virtual.printer is not None:
        try:
            printer = config.printer(virtual.printer)
        except ConfigError:
            LOG.error(
                "virtual printer %s forwards to %s, which is not a configured printer: "
                "films are held",
                virtual.name,
                virtual.printer,
            )
    return Target.for_printer(virtual, printer)


# --- the objects of one association -----------------------------------------------------------


@dataclass
class _ImageBox:
    uid: str
    sop_class: str
    position: int
    film_box: str
    attributes: Dataset = field(default_factory=Dataset)
    item: Dataset | None = None


@dataclass
class _FilmBox:
    uid: str
    attributes: Dataset
    image_boxes: list[str]
    color: bool
    printed: bool = False


@dataclass
class _FilmSession:
    uid: str
    attributes: Dataset
    # What the SCU set itself (not our defaults): what the print job passes on.
    requested: Dataset
    origin: PrintOrigin
    film_boxes: list[str] = field(default_factory=list)
    stored_prints: int = 0
    hardcopies: int = 0


@dataclass
class _Association:
    target: Target
    calling_ae: str
    called_ae: str
    lut_negotiated: bool
    session: _FilmSession | None = None
    film_boxes: dict[str, _FilmBox] = field(default_factory=dict)
    image_boxes: dict[str, _ImageBox] = field(default_factory=dict)
    luts: dict[str, Dataset] = field(default_factory=dict)


# --- attribute checks ---------------------------------------------------------------------------


def _check_known(ds: Dataset, allowed: frozenset[int], what: str) -> None:
    unknown = [
        Tag(elem.tag) for elem in ds if int(elem.tag) not in allowed | _SPECIFIC_CHARACTER_SET
    ]
    if unknown:
        names = ", ".join(str(tag) for tag in unknown[:4])
        raise PrintError(NO_SUCH_ATTRIBUTE, f"{what}: not supported: {names}")


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _one_of(ds: Dataset, keyword: str, allowed: Iterable[str]) -> None:
    if keyword not in ds:
        return
    value = _text(ds, keyword).upper()
    choices = list(allowed)
    if value not in choices:
        raise PrintError(
            INVALID_ATTRIBUTE_VALUE,
            f"{keyword} {value!r} is not one of {', '.join(choices)}",
        )


def _integer(ds: Dataset, keyword: str, low: int, high: int) -> int | None:
    if keyword not in ds or ds[keyword].value in (None, ""):
        return None
    try:
        value = int(str(ds[keyword].value).strip())
    except ValueError:
        raise PrintError(INVALID_ATTRIBUTE_VALUE, f"{keyword} is not a number") from None
    if not low <= value <= high:
        raise PrintError(INVALID_ATTRIBUTE_VALUE, f"{keyword} {value} is outside {low}..{high}")
    return value


def _density(ds: Dataset, keyword: str) -> None:
    if keyword not in ds:
        return
    value = _text(ds, keyword).upper()
    if value not in ("BLACK", "WHITE") and not value.isdigit():
        raise PrintError(
            INVALID_ATTRIBUTE_VALUE, f"{keyword} {value!r} is not BLACK, WHITE or a density"
        )


def _code_string(ds: Dataset, keyword: str) -> None:
    if keyword in ds and not _CODE_STRING.match(_text(ds, keyword).upper()):
        raise PrintError(INVALID_ATTRIBUTE_VALUE, f"{keyword} {_text(ds, keyword)!r} is not a code")


def _lut_entries(lut: Dataset) -> int | None:
    if "PresentationLUTSequence" not in lut:
        return None
    descriptor = lut.PresentationLUTSequence[0].LUTDescriptor
    return int(descriptor[0]) or 65536


def _merge(into: Dataset, changes: Dataset) -> None:
    for elem in changes:
        if int(elem.tag) not in _SPECIFIC_CHARACTER_SET:
            into.add(elem)


# --- the service --------------------------------------------------------------------------------


class PrintService:
    """Print SCP plugged into ``DicomServer`` as an ``ScpService`` (one instance may serve
    several listeners: the main one and the print port)."""

    def __init__(
        self,
        config: ConfigStore,
        archive: Archive,
        *,
        submit: SubmitJob | None = None,
        printer_status: PrinterStatusLookup | None = None,
        policy: PrintPolicy | None = None,
    ) -> None:
        self.config = config
        self.archive = archive
        self.submit = submit
        self.printer_status = printer_status
        self.policy = policy
        self._associations: dict[int, _Association] = {}

    def _policy(self, settings: Settings) -> PrintPolicy:
        return self.policy or PrintPolicy.from_settings(settings)

    def add_contexts(self, ae: AE, settings: Settings) -> None:
        syntaxes = [ts for ts in settings.transfer_syntaxes if ts in UNCOMPRESSED_TRANSFER_SYNTAXES]
        syntaxes = syntaxes or [EXPLICIT_VR_LE]
        for sop_class in PRINT_META_SOP_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        if self._policy(settings).presentation_lut:
            ae.add_supported_context(PRESENTATION_LUT_SOP_CLASS, syntaxes)

    def handlers(self, server: DicomServer) -> EventHandlers:
        def accepted(event: evt.Event) -> None:
            self._on_accepted(server, event)

        return [
            (evt.EVT_ACCEPTED, accepted),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]

    # --- association ----------------------------------------------------------------------

    def _on_accepted(self, server: DicomServer, event: evt.Event) -> None:
        assoc = event.assoc
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        if not accepted & set(_META_MEMBERS):
            return
        primitive = assoc.requestor.primitive
        called = str(primitive.called_ae_title).strip() if primitive is not None else ""
        calling = str(assoc.requestor.ae_title).strip()
        settings = server.settings
        state = _Association(
            target=resolve_target(self.config, settings, called),
            calling_ae=calling,
            called_ae=called or settings.ae_title,
            lut_negotiated=PRESENTATION_LUT_SOP_CLASS in accepted,
        )
        self._associations[id(assoc)] = state
        policy = self._policy(settings)
        serve_requests_ourselves(
            assoc,
            (N_CREATE, N_SET, N_GET, N_DELETE, N_ACTION),
            frozenset(_META_MEMBERS),
            lambda msg, context: self._answer(server, assoc, state, policy, msg, context),
            "print request",
        )
        LOG.info(
            "print association from %s to virtual printer %s (%s)",
            calling,
            state.target.name,
            f"forwards to {state.target.printer}" if state.target.printer else "holds films",
        )

    def _on_closed(self, event: evt.Event) -> None:
        state = self._associations.pop(id(event.assoc), None)
        if state is None:
            return
        unprinted = [fb for fb in state.film_boxes.values() if not fb.printed]
        if state.session is not None and unprinted:
            LOG.info(
                "print association from %s ended: %d film box(es) not printed discarded",
                state.calling_ae,
                len(unprinted),
            )

    # --- requests -------------------------------------------------------------------------

    def _answer(
        self,
        server: DicomServer,
        assoc: Association,
        state: _Association,
        policy: PrintPolicy,
        msg: Any,
        context: PresentationContext,
    ) -> None:
        meta = str(context.abstract_syntax)
        syntax = UID(context.transfer_syntax[0])
        sop_class = str(msg.AffectedSOPClassUID or getattr(msg, "RequestedSOPClassUID", "") or "")
        instance = msg.AffectedSOPInstanceUID or getattr(msg, "RequestedSOPInstanceUID", None)
        instance = str(instance) if instance else None
        request = _Request(self, server, state, policy, meta, syntax, sop_class, instance, msg)
        try:
            if sop_class not in _META_MEMBERS[meta]:
                raise PrintError(
                    NO_SUCH_SOP_CLASS, f"{sop_class} is not part of the negotiated {meta}"
                )
            status, instance, attributes = request.serve()
            comment = ""
        except PrintError as exc:
            status, attributes, comment = exc.status, None, exc.comment
        except Exception as exc:  # a bug, or a data set pydicom cannot read
            LOG.exception("%s from %s failed", type(msg).__name__, state.calling_ae)
            status, attributes, comment = PROCESSING_FAILURE, None, f"processing failure: {exc}"
        warning = 0xB000 <= status <= 0xBFFF
        if status != SUCCESS and not warning:
            LOG.warning(
                "%s %s from %s refused with 0x%04X: %s",
                type(msg).__name__.replace("_", "-"),
                _class_name(sop_class),
                state.calling_ae,
                status,
                comment,
            )
        elif warning:
            LOG.info(
                "%s %s from %s: warning 0x%04X %s",
                type(msg).__name__.replace("_", "-"),
                _class_name(sop_class),
                state.calling_ae,
                status,
                comment,
            )
        rsp = type(msg)()
        rsp.MessageIDBeingRespondedTo = msg.MessageID
        if not (isinstance(msg, N_CREATE) and policy.omit_create_sop_class):
            rsp.AffectedSOPClassUID = sop_class
        # A failed N-CREATE created nothing: no instance to name.
        if instance and (status == SUCCESS or warning or not isinstance(msg, N_CREATE)):
            rsp.AffectedSOPInstanceUID = instance
        rsp.Status = status
        if comment and status != SUCCESS and not warning:
            rsp.ErrorComment = comment[:64]
        if isinstance(msg, N_ACTION):
            rsp.ActionTypeID = msg.ActionTypeID
        if attributes is not None and not isinstance(msg, (N_DELETE, N_ACTION)):
            data = encode(attributes, syntax.is_implicit_VR, syntax.is_little_endian)
            if data is not None:
                rsp.AttributeList = BytesIO(data)
        if assoc.is_established:
            assoc.dimse.send_msg(rsp, int(context.context_id))  # type: ignore[arg-type]

    # --- printer status -------------------------------------------------------------------

    def status_of(self, target: Target) -> tuple[str, str]:
        """Printer Status and Printer Status Info for N-GET (DS-16): NORMAL while the real
        printer is fine or unknown (or the virtual printer holds); its own WARNING or FAILURE;
        WARNING / PRINTER OFFLINE when it cannot be reached (films are spooled meanwhile)."""
        if target.printer is None or self.printer_status is None:
            return "NORMAL", "NORMAL"
        try:
            entry = self.printer_status(target.printer)
        except Exception:
            LOG.exception("printer status of %s unavailable", target.printer)
            return "NORMAL", "NORMAL"
        if not entry:
            return "NORMAL", "NORMAL"
        status = str(entry.get("printer_status") or "").strip().upper()
        info = str(entry.get("printer_status_info") or "").strip().upper()
        if entry.get("error") and status not in ("WARNING", "FAILURE"):
            return "WARNING", "PRINTER OFFLINE"
        if status in ("WARNING", "FAILURE"):
            return status, info or status
        return "NORMAL", info or "NORMAL"

    # --- printing -------------------------------------------------------------------------

    def store_films(
        self, state: _Association, session: _FilmSession, film_boxes: list[_FilmBox]
    ) -> list[str]:
        """Store each film box as a Stored Print plus its hardcopy images; their UIDs."""
        uids = []
        for film_box in film_boxes:
            boxes = []
            for uid in film_box.image_boxes:
                box = state.image_boxes[uid]
                if box.item is None:
                    continue
                lut = _referenced_lut(state, box.attributes) or _referenced_lut(
                    state, film_box.attributes
                )
                boxes.append(
                    PrintedBox(
                        position=box.position,
                        item=box.item,
                        color=box.sop_class == COLOR_IMAGE_BOX_SOP_CLASS,
                        box_uid=box.uid,
                        attributes=box.attributes,
                        presentation_lut=lut,
                    )
                )
            luts = {}
            for attrs in [film_box.attributes, *(b.attributes for b in boxes)]:
                ref = _referenced_lut_uid(attrs)
                if ref and ref in state.luts:
                    luts[ref] = state.luts[ref]
            for box in boxes:
                session.hardcopies += 1
                self._store(hardcopy_image(box, session.origin, session.hardcopies), state)
            session.stored_prints += 1
            sp_uid = new_uid()
            self._store(
                stored_print(
                    origin=session.origin,
                    sop_instance_uid=sp_uid,
                    film_box=film_box.attributes,
                    boxes=boxes,
                    presentation_luts=luts,
                    instance_number=session.stored_prints,
                ),
                state,
            )
            LOG.info(
                "film from %s stored: Stored Print %s with %d image(s)",
                state.calling_ae,
                sp_uid,
                len(boxes),
            )
            uids.append(sp_uid)
            film_box.printed = True
        return uids

    def _store(self, ds: Dataset, state: _Association) -> None:
        try:
            self.archive.store_encoded(
                encode_explicit_le(ds),
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                transfer_syntax=EXPLICIT_VR_LE,
                source_ae=state.calling_ae,
            )
        except StoreRefused as exc:
            if exc.status == STATUS_OUT_OF_RESOURCES:
                raise PrintError(PRINT_QUEUE_FULL, f"cannot store the film: {exc.comment}") from exc
            raise PrintError(PROCESSING_FAILURE, f"cannot store the film: {exc.comment}") from exc

    def queue(self, state: _Association, session: _FilmSession, uids: list[str]) -> None:
        """Queue the print job for stored films, unless the virtual printer holds them."""
        target = state.target
        if not uids:
            return
        if target.printer is None:
            LOG.info(
                "virtual printer %s holds %d film(s): %s",
                target.name,
                len(uids),
                ", ".join(uids),
            )
            return
        if self.submit is None:
            LOG.error("no job engine: %d film(s) for %s are held", len(uids), target.printer)
            return
        params: dict[str, Any] = {"stored_print_uids": list(uids)}
        requested = session.requested
        copies = _integer(requested, "NumberOfCopies", 1, MAX_COPIES)
        if copies is not None:
            params["copies"] = copies
        for keyword, key in (
            ("MediumType", "medium_type"),
            ("FilmDestination", "film_destination"),
        ):
            if _text(requested, keyword):
                params[key] = _text(requested, keyword).upper()
        priority = JOB_PRIORITIES.get(_text(session.attributes, "PrintPriority").upper(), 0)
        summary = {
            "study_description": session.origin.label,
            "calling_ae": state.calling_ae,
            "virtual_printer": target.name,
            "films": len(uids),
        }
        try:
            job = self.submit("print", target.printer, params, priority=priority, summary=summary)
        except Exception as exc:  # JobError, ConfigError: the films stay stored, held
            LOG.error(
                "print job for %d film(s) from %s to %s not queued, the films are held: %s",
                len(uids),
                state.calling_ae,
                target.printer,
                exc,
            )
            return
        LOG.info(
            "print job %s queued: %d film(s) from %s to %s",
            getattr(job, "id", "?"),
            len(uids),
            state.calling_ae,
            target.printer,
        )


def _class_name(sop_class: str) -> str:
    return UID(sop_class).name if sop_class else "(no SOP class)"


def _referenced_lut_uid(attrs: Dataset) -> str | None:
    seq = attrs.get("ReferencedPresentationLUTSequence")
    if not seq:
        return None
    return _text(seq[0], "ReferencedSOPInstanceUID") or None


def _referenced_lut(state: _Association, attrs: Dataset) -> Dataset | None:
    uid = _referenced_lut_uid(attrs)
    return state.luts.get(uid) if uid else None


ServeResult = tuple[int, str | None, Dataset | None]


class _Request:
    """One N-request on one association."""

    def __init__(
        self,
        service: PrintService,
        server: DicomServer,
        state: _Association,
        policy: PrintPolicy,
        meta: str,
        syntax: UID,
        sop_class: str,
        instance: str | None,
        msg: Any,
    ) -> None:
        self.service = service
        self.server = server
        self.state = state
        self.policy = policy
        self.meta = meta
        self.syntax = syntax
        self.sop_class = sop_class
        self.instance = instance
        self.msg = msg

    def dataset(self, stream: BytesIO | None) -> Dataset:
        if stream is None:
            return Dataset()
        stream.seek(0)
        if not stream.getvalue():
            return Dataset()
        try:
            ds = decode(
                stream,
                self.syntax.is_implicit_VR,
                self.syntax.is_little_endian,
                self.syntax.is_deflated,
            )
            # Parse every element, inside sequences too, so a broken one fails here.
            ds.walk(lambda _ds, _elem: None)
        except Exception as exc:
            raise PrintError(
                PROCESSING_FAILURE, f"attribute list cannot be decoded: {exc}"
            ) from exc
        return ds

    def serve(self) -> ServeResult:
        msg = self.msg
        handler = {
            (N_GET, PRINTER_SOP_CLASS): self.get_printer,
            (N_CREATE, FILM_SESSION_SOP_CLASS): self.create_session,
            (N_SET, FILM_SESSION_SOP_CLASS): self.set_session,
            (N_DELETE, FILM_SESSION_SOP_CLASS): self.delete_session,
            (N_ACTION, FILM_SESSION_SOP_CLASS): self.print_session,
            (N_CREATE, FILM_BOX_SOP_CLASS): self.create_film_box,
            (N_SET, FILM_BOX_SOP_CLASS): self.set_film_box,
            (N_DELETE, FILM_BOX_SOP_CLASS): self.delete_film_box,
            (N_ACTION, FILM_BOX_SOP_CLASS): self.print_film_box,
            (N_SET, GRAYSCALE_IMAGE_BOX_SOP_CLASS): self.set_image_box,
            (N_SET, COLOR_IMAGE_BOX_SOP_CLASS): self.set_image_box,
            (N_CREATE, PRESENTATION_LUT_SOP_CLASS): self.create_lut,
            (N_DELETE, PRESENTATION_LUT_SOP_CLASS): self.delete_lut,
        }.get((type(msg), self.sop_class))
        if handler is None:
            raise PrintError(
                UNRECOGNIZED_OPERATION,
                f"{type(msg).__name__.replace('_', '-')} is not an operation of "
                f"{_class_name(self.sop_class)}",
            )
        return handler()

    # --- Printer --------------------------------------------------------------------------

    def get_printer(self) -> ServeResult:
        if self.instance != PRINTER_SOP_INSTANCE:
            raise PrintError(NO_SUCH_OBJECT_INSTANCE, f"no printer instance {self.instance}")
        listed = self.msg.AttributeIdentifierList or []
        # One tag is decoded as a single value, not a list of one.
        listed = [listed] if isinstance(listed, int) else listed
        wanted = [int(Tag(tag)) for tag in listed]
        unknown = [tag for tag in wanted if tag not in _PRINTER_TAGS]
        if unknown:
            names = ", ".join(str(Tag(tag)) for tag in unknown[:4])
            raise PrintError(NO_SUCH_ATTRIBUTE, f"Printer: not supported: {names}")
        status, info = self.service.status_of(self.state.target)
        ds = Dataset()
        if not wanted or int(Tag(0x21100010)) in wanted:
            ds.PrinterStatus = status
        if not wanted or int(Tag(0x21100020)) in wanted:
            ds.PrinterStatusInfo = info
        if int(Tag(0x21100030)) in wanted:
            ds.PrinterName = self.state.target.name
        return SUCCESS, PRINTER_SOP_INSTANCE, ds

    # --- Film Session ---------------------------------------------------------------------

    def _session_tags(self) -> frozenset[int]:
        if self.state.lut_negotiated and not self.policy.lut_on_film_box:
            return _SESSION_TAGS | _PLUT_LEVEL_TAGS
        return _SESSION_TAGS

    def _check_session(self, ds: Dataset) -> int:
        target = self.state.target
        _check_known(ds, self._session_tags(), "Film Session")
        _integer(ds, "NumberOfCopies", 1, MAX_COPIES)
        _one_of(ds, "PrintPriority", PRINT_PRIORITIES)
        _one_of(ds, "MediumType", target.medium_types)
        _one_of(ds, "FilmDestination", target.film_destinations)
        _integer(ds, "Illumination", 0, 65535)
        _integer(ds, "ReflectedAmbientLight", 0, 65535)
        self._check_lut_reference(ds)
        if "FilmSessionLabel" in ds:
            ds.FilmSessionLabel = _text(ds, "FilmSessionLabel")
        if "MemoryAllocation" in ds:
            # Ignored (PS3.4 H.4.1.1.3): we have no printer memory to reserve.
            del ds.MemoryAllocation
            return MEMORY_ALLOCATION_NOT_SUPPORTED
        return SUCCESS

    def _session(self) -> _FilmSession:
        session = self.state.session
        if session is None or session.uid != self.instance:
            raise PrintError(NO_SUCH_OBJECT_INSTANCE, f"no film session {self.instance}")
        return session

    def create_session(self) -> ServeResult:
        state = self.state
        if state.session is not None:
            raise PrintError(DUPLICATE_SOP_INSTANCE, "this association has a film session")
        uid = self._new_instance_uid()
        ds = self.dataset(self.msg.AttributeList)
        status = self._check_session(ds)
        requested = Dataset()
        _merge(requested, ds)
        now = dt.datetime.now()
        attrs = Dataset()
        attrs.NumberOfCopies = "1"
        attrs.PrintPriority = "MED"
        attrs.MediumType = state.target.medium_types[0]
        attrs.FilmDestination = state.target.film_destinations[0]
        attrs.FilmSessionLabel = (
            f'print job for "{state.calling_ae}" created {now:%Y-%m-%d} {now:%H:%M:%S}'
        )[:64]
        attrs.OwnerID = "DEFAULT"
        _merge(attrs, ds)
        for keyword in ("PrintPriority", "MediumType", "FilmDestination"):
            setattr(attrs, keyword, _text(attrs, keyword).upper())
        label = _text(attrs, "FilmSessionLabel")
        state.session = _FilmSession(
            uid=uid,
            attributes=attrs,
            requested=requested,
            origin=PrintOrigin(
                calling_ae=state.calling_ae,
                called_ae=state.called_ae,
                printer_name=state.target.name,
                retrieve_ae=self.server.settings.ae_title,
                label=label,
                created=now,
            ),
        )
        return status, uid, attrs

    def set_session(self) -> ServeResult:
        session = self._session()
        ds = self.dataset(self.msg.ModificationList)
        status = self._check_session(ds)
        _merge(session.attributes, ds)
        _merge(session.requested, ds)
        if "FilmSessionLabel" in ds:
            session.origin.label = _text(ds, "FilmSessionLabel")
        return status, session.uid, None

    def delete_session(self) -> ServeResult:
        session = self._session()
        for uid in list(session.film_boxes):
            self._drop_film_box(uid)
        self.state.session = None
        return SUCCESS, session.uid, None

    def print_session(self) -> ServeResult:
        session = self._session()
        self._check_action()
        if not session.film_boxes:
            raise PrintError(NO_FILM_BOX, "the film session holds no film box")
        boxes = [self.state.film_boxes[uid] for uid in session.film_boxes]
        filled = [fb for fb in boxes if self._filled(fb)]
        self._check_luts(filled)
        uids = self.service.store_films(self.state, session, filled)
        self.service.queue(self.state, session, uids)
        if len(filled) < len(boxes):
            raise PrintError(
                EMPTY_PAGE_IN_SESSION,
                f"{len(boxes) - len(filled)} of {len(boxes)} film boxes empty, not stored",
            )
        return SUCCESS, session.uid, None

    # --- Film Box -------------------------------------------------------------------------

    def _film_box_tags(self, *, create: bool) -> frozenset[int]:
        tags = _FILM_BOX_CREATE_TAGS if create else _FILM_BOX_SET_TAGS
        if self.policy.trim:
            tags |= _TRIM
        if self.state.lut_negotiated and self.policy.lut_on_film_box:
            tags |= _PLUT_LEVEL_TAGS
        return tags

    def _check_film_box(self, ds: Dataset) -> None:
        target = self.state.target
        _one_of(ds, "FilmOrientation", ("PORTRAIT", "LANDSCAPE"))
        _one_of(ds, "FilmSizeID", target.film_sizes)
        _one_of(ds, "MagnificationType", target.magnification_types)
        _one_of(ds, "RequestedResolutionID", RESOLUTION_IDS)
        _one_of(ds, "Trim", ("YES", "NO"))
        _code_string(ds, "SmoothingType")
        _density(ds, "BorderDensity")
        _density(ds, "EmptyImageDensity")
        low = _integer(ds, "MinDensity", 0, 65535)
        high = _integer(ds, "MaxDensity", 0, 65535)
        if low is not None and high is not None and low >= high:
            raise PrintError(INVALID_ATTRIBUTE_VALUE, f"Min Density {low} >= Max Density {high}")
        _integer(ds, "Illumination", 0, 65535)
        _integer(ds, "ReflectedAmbientLight", 0, 65535)
        self._check_lut_reference(ds)
        for keyword in ("FilmOrientation", "FilmSizeID", "MagnificationType", "Trim"):
            if keyword in ds:
                setattr(ds, keyword, _text(ds, keyword).upper())

    def _film_box(self) -> _FilmBox:
        film_box = self.state.film_boxes.get(self.instance or "")
        if film_box is None:
            raise PrintError(NO_SUCH_OBJECT_INSTANCE, f"no film box {self.instance}")
        return film_box

    def create_film_box(self) -> ServeResult:
        state = self.state
        session = state.session
        if session is None:
            raise PrintError(INVALID_OBJECT_INSTANCE, "no film session: create one first")
        uid = self._new_instance_uid()
        ds = self.dataset(self.msg.AttributeList)
        _check_known(ds, self._film_box_tags(create=True), "Film Box")
        for keyword in ("ImageDisplayFormat", "ReferencedFilmSessionSequence"):
            if keyword not in ds or not ds[keyword].value:
                raise PrintError(MISSING_ATTRIBUTE, f"Film Box: {keyword} is missing")
        ref = ds.ReferencedFilmSessionSequence[0]
        if (
            _text(ref, "ReferencedSOPClassUID") != FILM_SESSION_SOP_CLASS
            or _text(ref, "ReferencedSOPInstanceUID") != session.uid
        ):
            raise PrintError(INVALID_OBJECT_INSTANCE, "Referenced Film Session is not ours")
        if len(session.film_boxes) >= MAX_FILM_BOXES:
            raise PrintError(
                PROCESSING_FAILURE, f"a film session holds at most {MAX_FILM_BOXES} film boxes"
            )
        display_format = self._display_format(_text(ds, "ImageDisplayFormat"))
        self._check_film_box(ds)
        attrs = Dataset()
        attrs.ImageDisplayFormat = display_format
        attrs.FilmOrientation = "PORTRAIT"
        attrs.FilmSizeID = state.target.film_sizes[0]
        _merge(attrs, ds)
        attrs.ImageDisplayFormat = display_format
        del attrs.ReferencedFilmSessionSequence
        if "ReferencedPresentationLUTSequence" in attrs:
            # CP 173 defaults (DS-24)
            if "Illumination" not in attrs:
                attrs.Illumination = 2000
            if "ReflectedAmbientLight" not in attrs:
                attrs.ReflectedAmbientLight = 10
        color = self.meta == COLOR_META_SOP_CLASS
        box_class = COLOR_IMAGE_BOX_SOP_CLASS if color else GRAYSCALE_IMAGE_BOX_SOP_CLASS
        image_boxes = []
        for place in parse_display_format(display_format):
            box = _ImageBox(new_uid(), box_class, place.position, uid)
            state.image_boxes[box.uid] = box
            image_boxes.append(box.uid)
        state.film_boxes[uid] = _FilmBox(uid, attrs, image_boxes, color)
        session.film_boxes.append(uid)
        rsp = Dataset()
        _merge(rsp, attrs)
        rsp.ReferencedFilmSessionSequence = ds.ReferencedFilmSessionSequence
        refs = []
        for box_uid in image_boxes:
            item = Dataset()
            item.ReferencedSOPClassUID = box_class
            item.ReferencedSOPInstanceUID = box_uid
            refs.append(item)
        rsp.ReferencedImageBoxSequence = refs
        return SUCCESS, uid, rsp

    def _display_format(self, text: str) -> str:
        try:
            normalised = validate_display_format("ImageDisplayFormat", text)
            parse_display_format(normalised)
        except (ConfigError, ValueError):
            raise PrintError(
                INVALID_ATTRIBUTE_VALUE, f"Image Display Format {text!r} is not supported"
            ) from None
        if normalised not in self.state.target.display_formats:
            raise PrintError(
                INVALID_ATTRIBUTE_VALUE,
                f"Image Display Format {normalised} is not supported by this printer",
            )
        return normalised

    def set_film_box(self) -> ServeResult:
        film_box = self._film_box()
        ds = self.dataset(self.msg.ModificationList)
        _check_known(ds, self._film_box_tags(create=False), "Film Box N-SET")
        self._check_film_box(ds)
        _merge(film_box.attributes, ds)
        self._check_luts([film_box])
        return SUCCESS, film_box.uid, None

    def delete_film_box(self) -> ServeResult:
        film_box = self._film_box()
        self._drop_film_box(film_box.uid)
        return SUCCESS, film_box.uid, None

    def _drop_film_box(self, uid: str) -> None:
        state = self.state
        film_box = state.film_boxes.pop(uid, None)
        if film_box is None:
            return
        for box_uid in film_box.image_boxes:
            state.image_boxes.pop(box_uid, None)
        if state.session is not None and uid in state.session.film_boxes:
            state.session.film_boxes.remove(uid)

    def print_film_box(self) -> ServeResult:
        film_box = self._film_box()
        self._check_action()
        session = self.state.session
        assert session is not None  # a film box exists only inside a session
        if not self._filled(film_box):
            raise PrintError(EMPTY_PAGE, "the film box holds no image, nothing stored")
        self._check_luts([film_box])
        uids = self.service.store_films(self.state, session, [film_box])
        self.service.queue(self.state, session, uids)
        return SUCCESS, film_box.uid, None

    def _filled(self, film_box: _FilmBox) -> bool:
        boxes = self.state.image_boxes
        return any(boxes[uid].item is not None for uid in film_box.image_boxes)

    def _check_action(self) -> None:
        action = self.msg.ActionTypeID
        if action != PRINT_ACTION:
            raise PrintError(NO_SUCH_ACTION, f"Action Type ID {action} is not 1 (print)")

    # --- Image Box ------------------------------------------------------------------------

    def set_image_box(self) -> ServeResult:
        state = self.state
        box = state.image_boxes.get(self.instance or "")
        if box is None:
            raise PrintError(NO_SUCH_OBJECT_INSTANCE, f"no image box {self.instance}")
        if box.sop_class != self.sop_class:
            raise PrintError(0x0119, f"image box {box.uid} is a {_class_name(box.sop_class)}")
        color = box.sop_class == COLOR_IMAGE_BOX_SOP_CLASS
        sequence = "BasicColorImageSequence" if color else "BasicGrayscaleImageSequence"
        tags = _IMAGE_BOX_TAGS | _tags(sequence)
        if self.policy.requested_image_size:
            tags |= _REQUESTED_IMAGE_SIZE
        if self.policy.decimate_crop:
            tags |= _DECIMATE_CROP
        if state.lut_negotiated:
            tags |= _REFERENCED_PLUT
        ds = self.dataset(self.msg.ModificationList)
        _check_known(ds, tags, "Image Box")
        for keyword in ("ImageBoxPosition", sequence):
            value = ds[keyword].value if keyword in ds else None
            if value is None or value == "" or (keyword == sequence and not len(value)):
                raise PrintError(MISSING_ATTRIBUTE, f"Image Box: {keyword} is missing")
        position = _integer(ds, "ImageBoxPosition", 1, 65535)
        if position != box.position:
            raise PrintError(
                INVALID_ATTRIBUTE_VALUE,
                f"Image Box Position {position} is not this box's ({box.position})",
            )
        _one_of(ds, "Polarity", ("NORMAL", "REVERSE"))
        _one_of(ds, "MagnificationType", state.target.magnification_types)
        _one_of(ds, "RequestedDecimateCropBehavior", ("DECIMATE", "CROP", "FAIL"))
        _code_string(ds, "SmoothingType")
        if "RequestedImageSize" in ds:
            try:
                if float(ds.RequestedImageSize) <= 0:
                    raise ValueError
            except (TypeError, ValueError):
                raise PrintError(
                    INVALID_ATTRIBUTE_VALUE, "Requested Image Size is not a positive number"
                ) from None
        self._check_lut_reference(ds)
        items = ds[sequence].value
        if len(items) != 1:
            raise PrintError(INVALID_ATTRIBUTE_VALUE, f"{sequence} must hold one item")
        item = items[0]
        (_check_color_item if color else self._check_grayscale_item)(item)
        attributes = Dataset()
        _merge(attributes, ds)
        del attributes[sequence]
        for keyword in ("Polarity", "MagnificationType", "RequestedDecimateCropBehavior"):
            if keyword in attributes:
                setattr(attributes, keyword, _text(attributes, keyword).upper())
        previous = (box.item, box.attributes)
        box.item, box.attributes = item, attributes
        try:
            self._check_luts([state.film_boxes[box.film_box]])
        except PrintError:
            box.item, box.attributes = previous
            raise
        return SUCCESS, box.uid, None

    def _check_grayscale_item(self, item: Dataset) -> None:
        _require(
            item,
            "SamplesPerPixel",
            "PhotometricInterpretation",
            "Rows",
            "Columns",
            "BitsAllocated",
            "BitsStored",
            "HighBit",
            "PixelRepresentation",
            "PixelData",
        )
        _equal(item, "SamplesPerPixel", 1)
        _equal(item, "PixelRepresentation", 0)
        _one_of(item, "PhotometricInterpretation", ("MONOCHROME1", "MONOCHROME2"))
        bits = (int(item.BitsAllocated), int(item.BitsStored), int(item.HighBit))
        allowed = [(8, 8, 7)] + ([(16, 12, 11)] if self.policy.twelve_bit else [])
        if bits not in allowed:
            raise PrintError(
                INVALID_ATTRIBUTE_VALUE,
                "Bits Allocated/Stored/High Bit {}/{}/{} not supported".format(*bits),
            )
        _pixel_length(item, 1, 2 if bits[0] == 16 else 1)

    # --- Presentation LUT -----------------------------------------------------------------

    def _check_lut_reference(self, ds: Dataset) -> None:
        if "ReferencedPresentationLUTSequence" not in ds:
            return
        seq = ds.ReferencedPresentationLUTSequence
        if len(seq) != 1:
            raise PrintError(INVALID_ATTRIBUTE_VALUE, "Referenced Presentation LUT: one item")
        uid = _text(seq[0], "ReferencedSOPInstanceUID")
        if (
            _text(seq[0], "ReferencedSOPClassUID") != PRESENTATION_LUT_SOP_CLASS
            or uid not in self.state.luts
        ):
            raise PrintError(INVALID_ATTRIBUTE_VALUE, f"no Presentation LUT {uid}")

    def _check_luts(self, film_boxes: list[_FilmBox]) -> None:
        """DS-23: a 256-entry LUT goes with 8-bit images, a 4096-entry one with 12-bit ones."""
        if not self.policy.lut_match_required:
            return
        state = self.state
        for film_box in film_boxes:
            film_lut = _referenced_lut(state, film_box.attributes)
            for uid in film_box.image_boxes:
                box = state.image_boxes[uid]
                if box.item is None or box.sop_class == COLOR_IMAGE_BOX_SOP_CLASS:
                    continue
                lut = _referenced_lut(state, box.attributes) or film_lut
                entries = _lut_entries(lut) if lut is not None else None
                bits = int(box.item.BitsStored)
                if entries is not None and entries != {8: 256, 12: 4096}.get(bits):
                    raise PrintError(
                        INVALID_ATTRIBUTE_VALUE,
                        f"a {entries}-entry Presentation LUT does not fit {bits}-bit images",
                    )

    def create_lut(self) -> ServeResult:
        uid = self._new_instance_uid()
        ds = self.dataset(self.msg.AttributeList)
        _check_known(ds, _PLUT_TAGS, "Presentation LUT")
        has_seq = "PresentationLUTSequence" in ds and len(ds.PresentationLUTSequence)
        has_shape = bool(_text(ds, "PresentationLUTShape"))
        if not has_seq and not has_shape:
            raise PrintError(MISSING_ATTRIBUTE, "Presentation LUT Sequence or Shape is missing")
        if has_seq and has_shape:
            raise PrintError(
                INVALID_ATTRIBUTE_VALUE, "both a Presentation LUT Sequence and a Shape"
            )
        if has_shape:
            _one_of(ds, "PresentationLUTShape", PRESENTATION_LUT_SHAPES)
            ds.PresentationLUTShape = _text(ds, "PresentationLUTShape").upper()
        else:
            if len(ds.PresentationLUTSequence) != 1:
                raise PrintError(INVALID_ATTRIBUTE_VALUE, "Presentation LUT Sequence: one item")
            item = ds.PresentationLUTSequence[0]
            _require(item, "LUTDescriptor", "LUTData")
            descriptor = item.LUTDescriptor
            if len(descriptor) != 3:
                raise PrintError(INVALID_ATTRIBUTE_VALUE, "LUT Descriptor needs 3 values")
            entries = int(descriptor[0]) or 65536
            if not 10 <= int(descriptor[2]) <= 16:
                raise PrintError(INVALID_ATTRIBUTE_VALUE, "LUT Descriptor: 10 to 16 bits")
            if self.policy.lut_match_required and entries not in (256, 4096):
                raise PrintError(
                    INVALID_ATTRIBUTE_VALUE, f"a {entries}-entry LUT fits neither 8 nor 12 bits"
                )
        self.state.luts[uid] = ds
        return SUCCESS, uid, None

    def delete_lut(self) -> ServeResult:
        state = self.state
        uid = self.instance or ""
        if uid not in state.luts:
            raise PrintError(NO_SUCH_OBJECT_INSTANCE, f"no Presentation LUT {uid}")
        users = [
            attrs
            for attrs in (
                *(fb.attributes for fb in state.film_boxes.values()),
                *(b.attributes for b in state.image_boxes.values()),
                *([state.session.attributes] if state.session else []),
            )
            if _referenced_lut_uid(attrs) == uid
        ]
        if users:
            raise PrintError(PROCESSING_FAILURE, "Presentation LUT in use, cannot be deleted")
        del state.luts[uid]
        return SUCCESS, uid, None

    # --- helpers --------------------------------------------------------------------------

    def _new_instance_uid(self) -> str:
        """The SCU's Affected SOP Instance UID when it chose one, else a new one."""
        uid = self.instance
        if not uid:
            return new_uid()
        if len(uid) > 64 or not re.match(r"^[0-9]+(\.[0-9]+)*$", uid):
            raise PrintError(INVALID_ATTRIBUTE_VALUE, f"{uid!r} is not a valid UID")
        state = self.state
        taken = set(state.film_boxes) | set(state.image_boxes) | set(state.luts)
        if state.session is not None:
            taken.add(state.session.uid)
        if uid in taken:
            raise PrintError(DUPLICATE_SOP_INSTANCE, f"{uid} exists already")
        return uid


def _require(item: Dataset, *keywords: str) -> None:
    for keyword in keywords:
        if keyword not in item or item[keyword].value is None:
            raise PrintError(MISSING_ATTRIBUTE, f"image: {keyword} is missing")


def _equal(item: Dataset, keyword: str, expected: int) -> None:
    if int(item[keyword].value) != expected:
        raise PrintError(
            INVALID_ATTRIBUTE_VALUE, f"{keyword} {item[keyword].value} is not {expected}"
        )


def _pixel_length(item: Dataset, samples: int, bytes_per_sample: int) -> None:
    rows, columns = int(item.Rows), int(item.Columns)
    if rows < 1 or columns < 1:
        raise PrintError(INVALID_ATTRIBUTE_VALUE, f"image of {rows} x {columns} pixels")
    needed = rows * columns * samples * bytes_per_sample
    if len(item.PixelData) < needed:
        raise PrintError(
            INVALID_ATTRIBUTE_VALUE,
            f"Pixel Data holds {len(item.PixelData)} bytes, {needed} needed",
        )


def _check_color_item(item: Dataset) -> None:
    _require(
        item,
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PlanarConfiguration",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PixelData",
    )
    _equal(item, "SamplesPerPixel", 3)
    _one_of(item, "PhotometricInterpretation", ("RGB",))
    _equal(item, "PlanarConfiguration", 1)
    _equal(item, "BitsAllocated", 8)
    _equal(item, "BitsStored", 8)
    _equal(item, "HighBit", 7)
    _equal(item, "PixelRepresentation", 0)
    _pixel_length(item, 3, 1)
