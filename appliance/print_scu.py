"""Print SCU: print films on a film imager (DICOM Print SCP).

:func:`print_film` prints ONE film over ONE association (DS-31, DS-33), in this order:

1. N-GET of the Printer SOP instance (empty attribute list): its Printer Status and Printer
   Status Info go to ``on_printer_status(..., "n-get")``; Printer Status FAILURE stops here,
   before any film session exists, with a retryable error (the queue holds and says why);
2. N-CREATE Presentation LUT (Shape IDENTITY: the image boxes carry P-values rendered by
   :mod:`appliance.print_render`), only when the printer is configured for it and accepted
   the Presentation LUT SOP class (DS-36);
3. N-CREATE Film Session, then N-CREATE Film Box (Referenced Film Session Sequence, and the
   Presentation LUT reference with Illumination 2000 and Reflected Ambient Light 10 when one
   was created, and the Annotation Display Format ID when annotation boxes are used, DS-37);
4. N-SET of each filled Image Box (Basic Grayscale or Basic Color Image Box), then one N-SET
   per annotation text;
5. N-ACTION print on the Film Box, then, when the printer returned a Referenced Print Job
   Sequence and accepted the Print Job SOP class, a best-effort N-GET of the print job;
6. N-DELETE of the Film Box, the Film Session and the Presentation LUT, release.

DS-35: attributes are sent only when set, by the film or by the printer's configuration (the
film's value wins). Any failure status stops the film with an error naming the step and the
status (DS-32: the association is released with no further request); warnings (Bxxx) are
recorded and printing goes on. After the N-ACTION succeeded the film counts as printed, so a
failing N-DELETE is only a warning (retrying would print the film twice).

N-EVENT-REPORTs from the printer (DS-38) are answered with 0000 whenever they arrive, also while
a request waits for its response; each one is recorded in the report and, for the Printer SOP
class, passed to ``on_printer_status(..., "event")`` (called from a network thread: it must be
quick and thread-safe).

Limits: the Annotation Display Format ID is :data:`ANNOTATION_DISPLAY_FORMAT_ID` for every
printer; one Presentation LUT per film, always Shape IDENTITY; Requested Image Size, Smoothing
Type, Resolution ID and Configuration Information are never sent.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_EVENT_REPORT

from appliance.config import Node, Printer, Settings
from appliance.print_render import (
    film_pixels,
    image_box_dataset,
    parse_display_format,
    render_image_box,
)
from appliance.scu import (
    associate,
    contexts_all_rejected,
    describe_failed_association,
    requestor_ae,
)

LOG = logging.getLogger(__name__)

GRAYSCALE_META_SOP_CLASS = "1.2.840.10008.5.1.1.9"
COLOR_META_SOP_CLASS = "1.2.840.10008.5.1.1.18"
PRINTER_SOP_CLASS = "1.2.840.10008.5.1.1.16"
PRINTER_SOP_INSTANCE = "1.2.840.10008.5.1.1.17"
FILM_SESSION_SOP_CLASS = "1.2.840.10008.5.1.1.1"
FILM_BOX_SOP_CLASS = "1.2.840.10008.5.1.1.2"
GRAYSCALE_IMAGE_BOX_SOP_CLASS = "1.2.840.10008.5.1.1.4"
COLOR_IMAGE_BOX_SOP_CLASS = "1.2.840.10008.5.1.1.4.1"
PRESENTATION_LUT_SOP_CLASS = "1.2.840.10008.5.1.1.23"
ANNOTATION_BOX_SOP_CLASS = "1.2.840.10008.5.1.1.15"
PRINT_JOB_SOP_CLASS = "1.2.840.10008.5.1.1.14"

#: Resolution used to size the rendered image boxes when the printer's is not known.
DEFAULT_DPI = 100.0
#: Film size used to size the rendered image boxes when neither the film nor the printer names one.
DEFAULT_FILM_SIZE = "14INX17IN"
#: Annotation Display Format ID sent with annotation boxes. PS3.3 C.13.3 leaves the formats to
#: each printer's conformance statement; this is the common name for a label line.
ANNOTATION_DISPLAY_FORMAT_ID = "LABEL"
#: Presentation LUT viewing conditions sent with a Presentation LUT (DS-36, PS3.14 defaults):
#: light box illumination in cd/m2 and reflected ambient light in cd/m2.
ILLUMINATION = 2000
REFLECTED_AMBIENT_LIGHT = 10
#: How long the release waits for event reports still being answered.
EVENT_DRAIN_SECONDS = 2.0
#: Film Session Label (LO) holds at most 64 characters.
LABEL_MAX = 64

#: Callback for printer status: (Printer Status, Printer Status Info, source "n-get"|"event").
PrinterStatusCallback = Callable[[str, str | None, str], None]

#: Print Management statuses (PS3.4 H.4, PS3.7 C) worth a short name in reports.
STATUS_NAMES: dict[int, str] = {
    0x0000: "success",
    0x0105: "no such attribute",
    0x0106: "invalid attribute value",
    0x0107: "attribute list error",
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance",
    0x0112: "no such SOP instance",
    0x0116: "attribute value out of range",
    0x0117: "invalid object instance",
    0x0118: "no such SOP class",
    0x0119: "class-instance conflict",
    0x0120: "missing attribute",
    0x0121: "missing attribute value",
    0x0122: "SOP class not supported",
    0x0123: "no such action",
    0x0210: "duplicate invocation",
    0x0211: "unrecognized operation",
    0x0212: "mistyped argument",
    0x0213: "resource limitation",
    0xB600: "memory allocation not supported",
    0xB601: "film session printing not supported",
    0xB602: "film session contains an empty page",
    0xB603: "film box contains an empty page",
    0xB604: "image larger than the image box, demagnified",
    0xB605: "requested Min or Max Density outside the printer's range",
    0xB609: "image larger than the image box, cropped",
    0xB60A: "image larger than the image box, decimated",
    0xC600: "film session SOP instance hierarchy contains no film box",
    0xC601: "unable to create print job, print queue full",
    0xC602: "unable to create print job, print queue full",
    0xC603: "image size larger than the image box size",
    0xC613: "combined print image size larger than the image box size",
}

#: Printer Status Info defined terms (PS3.3 C.13.9.1) for conditions that an operator or the
#: printer itself clears (film loaded, jam removed, processor warmed up, buffer drained), so the
#: same film printed later succeeds. Left out: NORMAL, UNKNOWN and the faults that need service
#: or a different request (ELEC CONFIG ERR, ELEC SW ERROR, CALIBRATION ERR, EXPOSURE FAILURE).
TRANSIENT_PRINTER_INFO = frozenset(
    {
        "BAD RECEIVE MGZ",
        "BAD SUPPLY MGZ",
        "CALIBRATING",
        "CHECK CHEMISTRY",
        "CHECK PRINTER",
        "CHECK PROC",
        "CHECK SORTER",
        "CHEMICALS EMPTY",
        "CHEMICALS LOW",
        "COVER OPEN",
        "ELEC DOWN",
        "FILM JAM",
        "FILM TRANSP ERR",
        "FINISHER EMPTY",
        "FINISHER ERROR",
        "FINISHER LOW",
        "NO RECEIVE MGZ",
        "NO RIBBON",
        "NO SUPPLY MGZ",
        "PRINT BUFF FULL",
        "PRINTER BUSY",
        "PRINTER DOWN",
        "PRINTER INIT",
        "PRINTER OFFLINE",
        "PROC DOWN",
        "PROC INIT",
        "PROC OVERFLOW FL",
        "PROC OVERFLOW HI",
        "QUEUED",
        "RECEIVER FULL",
        "REQ MED NOT AVAI",
        "REQ MED NOT INST",
        "RIBBON ERROR",
        "SUPPLY EMPTY",
        "SUPPLY LOW",
        "WARMING UP",
    }
)

#: Event Type IDs of N-EVENT-REPORTs (PS3.4 H.4.9.1.2 Printer, H.4.8.1.2 Print Job).
PRINTER_EVENTS = {1: "NORMAL", 2: "WARNING", 3: "FAILURE"}
PRINT_JOB_EVENTS = {1: "PENDING", 2: "PRINTING", 3: "DONE", 4: "FAILURE"}


def status_name(status: int) -> str:
    known = STATUS_NAMES.get(status)
    if known:
        return known
    if 0xB000 <= status <= 0xBFFF:
        return "warning"
    if 0xC000 <= status <= 0xCFFF:
        return "failure"
    return "unknown status"


def is_warning(status: int) -> bool:
    return status == 0x0001 or 0xB000 <= status <= 0xBFFF


def is_retryable_status(status: int) -> bool:
    """Transient failures: the printer is busy or short of resources (queue full, out of
    memory, film or supplies), so the same request may succeed later."""
    return 0xC600 <= status <= 0xC6FF or status == 0x0213 or 0xA700 <= status <= 0xA7FF


def is_transient_printer_info(info: str | None) -> bool:
    """Whether a Printer Status Info (or Execution Status Info) names a condition that a later
    attempt may find cleared: FILM JAM, PRINT BUFF FULL, SUPPLY EMPTY, COVER OPEN, the
    ``EMPTY <size>`` / ``LOW <size>`` terms, ... (PS3.3 C.13.9.1)."""
    text = " ".join((info or "").upper().split())
    if not text:
        return False
    if text in TRANSIENT_PRINTER_INFO:
        return True
    # EMPTY 14X17, EMPTY 8X10 BLUE, LOW A4 PAPR, ...: the size-specific supply terms.
    return text.startswith(("EMPTY ", "LOW "))


@dataclass
class Film:
    """One film to print: its layout and the image of each box (None leaves the box empty).

    ``copies`` (Number of Copies), ``medium_type``, ``film_destination`` and ``label`` (Film
    Session Label) go into the Film Session; the others into the Film Box, except ``polarity``
    (every Image Box) and ``windows`` ((center, width) per image for the rendering; None = the
    image's own VOI). ``annotations`` are the texts of annotation boxes 1..n. Empty strings and
    None mean "not set": the attribute is not sent (unless the printer configures a value) and
    the printer uses its default.
    """

    display_format: str
    images: list[Dataset | None]
    film_size: str | None = None
    orientation: str | None = None
    copies: int | None = None
    medium_type: str | None = None
    film_destination: str | None = None
    magnification_type: str | None = None
    windows: list[tuple[float, float] | None] | None = None
    annotations: list[str] = field(default_factory=list)
    polarity: str | None = None
    label: str | None = None


@dataclass
class StepResult:
    """One DIMSE exchange of the session: what was asked and the printer's status."""

    step: str
    status: int | None
    comment: str | None = None

    @property
    def status_hex(self) -> str | None:
        return None if self.status is None else f"0x{self.status:04X}"

    def line(self) -> str:
        if self.status is None:
            return f"{self.step}: no response"
        text = f"{self.step}: {self.status_hex} ({status_name(self.status)})"
        return f"{text}: {self.comment}" if self.comment else text


@dataclass
class PrinterEvent:
    """One N-EVENT-REPORT the printer sent during the association."""

    sop_class_uid: str
    event_type_id: int
    status: str  # NORMAL/WARNING/FAILURE (Printer) or PENDING/PRINTING/DONE/FAILURE (Print Job)
    info: str | None
    received: float  # time.time()

    @property
    def source(self) -> str:
        return "print job" if self.sop_class_uid == PRINT_JOB_SOP_CLASS else "printer"

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "event_type_id": self.event_type_id,
            "status": self.status,
            "info": self.info,
            "received": self.received,
        }


@dataclass
class PrintReport:
    """The outcome of printing one film (or, from :func:`print_film_session`, several)."""

    printer: str
    steps: list[StepResult] = field(default_factory=list)
    printer_status: str | None = None
    printer_status_info: str | None = None
    films_printed: int = 0
    error: str | None = None
    retryable: bool = False
    warnings: list[str] = field(default_factory=list)
    events: list[PrinterEvent] = field(default_factory=list)
    print_job_status: str | None = None
    print_job_status_info: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "printer": self.printer,
            "ok": self.ok,
            "steps": [
                {"step": s.step, "status": s.status_hex, "comment": s.comment} for s in self.steps
            ],
            "printer_status": self.printer_status,
            "printer_status_info": self.printer_status_info,
            "films_printed": self.films_printed,
            "error": self.error,
            "retryable": self.retryable,
            "warnings": list(self.warnings),
            "events": [e.as_dict() for e in self.events],
            "print_job_status": self.print_job_status,
            "print_job_status_info": self.print_job_status_info,
        }


class _Stop(Exception):
    """The film cannot go on; the report already says why."""


def _printer_node(printer: Printer) -> Node:
    return Node(name=printer.name, ae_title=printer.ae_title, host=printer.host, port=printer.port)


def _text(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _is_color_image(ds: Dataset | None) -> bool:
    if ds is None:
        return False
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    return samples > 1 or str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR"


class _Events:
    """Answers and records the printer's N-EVENT-REPORTs (DS-38).

    pynetdicom 3 hands an N-EVENT-REPORT request to ``Association._serve_request`` in a thread
    of its own, whether or not a send_n_*() waits for its response; appliance.scu replaces that
    method on our associations (so a stray response goes back to the waiting caller), so
    :meth:`install` routes event reports back to pynetdicom's own dispatcher, which calls
    :meth:`handle` and sends the N-EVENT-REPORT-RSP. Sends are serialised with a lock so the
    response never lands between the P-DATA fragments of one of our requests.
    """

    def __init__(self, report: PrintReport, callback: PrinterStatusCallback | None) -> None:
        self.report = report
        self.callback = callback
        self.lock = threading.Lock()
        self.idle = threading.Condition()
        self.in_flight = 0

    def on_open(self, event: evt.Event) -> None:
        self.install(event.assoc)

    @staticmethod
    def installed(assoc: Association) -> bool:
        return getattr(assoc._serve_request, "serves_print_events", False)

    def install(self, assoc: Association) -> None:
        if self.installed(assoc):
            return
        keep = assoc._serve_request
        send_lock = threading.Lock()
        send_msg = assoc.dimse.send_msg

        def serve(msg: Any, context_id: int) -> None:
            if isinstance(msg, N_EVENT_REPORT) and msg.is_valid_request:
                with self.idle:
                    self.in_flight += 1
                try:
                    Association._serve_request(assoc, msg, context_id)
                finally:
                    with self.idle:
                        self.in_flight -= 1
                        self.idle.notify_all()
            else:
                keep(msg, context_id)

        def locked_send(primitive: Any, context_id: int) -> None:
            with send_lock:
                send_msg(primitive, context_id)

        serve.serves_print_events = True  # type: ignore[attr-defined]
        assoc._serve_request = serve  # type: ignore[method-assign]
        assoc.dimse.send_msg = locked_send  # type: ignore[method-assign]

    def wait_idle(self, timeout: float = EVENT_DRAIN_SECONDS) -> None:
        """Wait until every event report received so far is answered and recorded, so the
        release does not overtake an answer and the report is complete."""
        with self.idle:
            self.idle.wait_for(lambda: self.in_flight == 0, timeout=timeout)

    def handle(self, event: evt.Event) -> tuple[int, Dataset | None]:
        request = event.request
        sop_class = str(request.AffectedSOPClassUID or "")
        type_id = int(request.EventTypeID or 0)
        try:
            information = event.event_information
            info = _text(
                information.get("PrinterStatusInfo")
                if sop_class != PRINT_JOB_SOP_CLASS
                else information.get("ExecutionStatusInfo")
            )
        except Exception:  # noqa: BLE001 - a malformed Event Information still gets its 0000
            info = None
        if sop_class == PRINT_JOB_SOP_CLASS:
            status = PRINT_JOB_EVENTS.get(type_id, f"event {type_id}")
        else:
            status = PRINTER_EVENTS.get(type_id, f"event {type_id}")
        record = PrinterEvent(sop_class, type_id, status, info, time.time())
        with self.lock:
            self.report.events.append(record)
            if record.source == "printer":
                self.report.printer_status = status
                self.report.printer_status_info = info
            elif status == "FAILURE":
                self.report.warnings.append(f"print job event: FAILURE {info or ''}".rstrip())
        if record.source == "printer" and self.callback is not None:
            try:
                self.callback(status, info, "event")
            except Exception:  # noqa: BLE001 - the printer must get its answer regardless
                LOG.exception("printer status callback failed")
        return 0x0000, None


class _Session:
    def __init__(
        self,
        assoc: Association,
        report: PrintReport,
        received: list[Any],
        printer: Printer,
        callback: PrinterStatusCallback | None,
    ) -> None:
        self.assoc = assoc
        self.report = report
        self.received = received
        self.printer = printer
        self.callback = callback
        self.accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        self.meta = GRAYSCALE_META_SOP_CLASS
        self.color = False
        self.plut_uid: str | None = None
        self.cleanup = False  # after the N-ACTION: failures are warnings
        self._message_ids = itertools.count(1)

    def msg_id(self) -> int:
        # pynetdicom uses 1 for every request unless told; distinct IDs keep printer logs and
        # responses unambiguous.
        return next(self._message_ids)

    # --- statuses ---------------------------------------------------------------------------

    def _printer_trouble(self) -> str | None:
        status = self.report.printer_status
        if status and status.upper() != "NORMAL":
            info = self.report.printer_status_info
            return f"printer reports {status}" + (f": {info}" if info else "")
        return None

    def _printer_trouble_is_transient(self) -> bool:
        status = (self.report.printer_status or "").upper()
        return status in ("WARNING", "FAILURE") and is_transient_printer_info(
            self.report.printer_status_info
        )

    def check(self, step: str, status_ds: Dataset | None) -> int:
        """Record the status of ``step``; raise _Stop for anything but success or warning
        (after the N-ACTION a failure is only a warning: the film is printed)."""
        if status_ds is None or "Status" not in status_ds:
            self.report.steps.append(StepResult(step, None))
            message = (
                f"{step}: no response from the printer (timeout, or the association was aborted)"
            )
            if self.cleanup:
                self.report.warnings.append(message)
            else:
                self.report.error = message
                self.report.retryable = True
            raise _Stop
        status = int(status_ds.Status)
        comment = _text(status_ds.get("ErrorComment"))
        result = StepResult(step, status, comment)
        self.report.steps.append(result)
        if status == 0x0000:
            return status
        if is_warning(status) or self.cleanup:
            self.report.warnings.append(result.line())
            return status
        error = f"{step} failed with status {result.line().split(': ', 1)[1]}"
        trouble = self._printer_trouble()
        self.report.error = f"{error} ({trouble})" if trouble else error
        self.report.retryable = is_retryable_status(status) or self._printer_trouble_is_transient()
        raise _Stop

    def created_uid(self) -> str:
        """The Affected SOP Instance UID of the last N-CREATE-RSP (pynetdicom does not return
        it when the request carried none)."""
        for message in reversed(self.received):
            if type(message).__name__ == "N_CREATE_RSP":
                uid = message.command_set.get("AffectedSOPInstanceUID")
                if uid:
                    return str(uid)
                break
        self.report.error = "the printer's N-CREATE response carries no SOP Instance UID"
        raise _Stop

    # --- steps ------------------------------------------------------------------------------

    def choose_meta(self, film: Film) -> None:
        """Color meta SOP class for a film with a colour image on a colour printer, or on a
        printer that only does colour; grayscale otherwise (colour images are then rendered to
        luminance)."""
        has_gray = GRAYSCALE_META_SOP_CLASS in self.accepted
        has_color = COLOR_META_SOP_CLASS in self.accepted
        wants_color = any(_is_color_image(image) for image in film.images)
        self.color = has_color and (wants_color or not has_gray)
        self.meta = COLOR_META_SOP_CLASS if self.color else GRAYSCALE_META_SOP_CLASS

    def get_printer(self) -> None:
        status, attrs = self.assoc.send_n_get(
            # An empty list asks for every attribute: printers refuse some optional ones
            # (dcmprscp answers 0105 for Printer Name).
            [],
            PRINTER_SOP_CLASS,
            PRINTER_SOP_INSTANCE,
            meta_uid=self.meta,
            msg_id=self.msg_id(),
        )
        self.check("Printer N-GET", status)
        if attrs is None:
            return
        printer_status = _text(attrs.get("PrinterStatus"))
        info = _text(attrs.get("PrinterStatusInfo"))
        self.report.printer_status = printer_status
        self.report.printer_status_info = info
        if printer_status is not None and self.callback is not None:
            try:
                self.callback(printer_status, info, "n-get")
            except Exception:  # noqa: BLE001 - a display problem must not stop the print
                LOG.exception("printer status callback failed")
        if printer_status and printer_status.upper() == "FAILURE":
            self.report.error = f"printer reports FAILURE: {info or 'no reason given'}"
            # The queue holds and retries: a failing printer is usually cleared by an operator.
            self.report.retryable = True
            raise _Stop
        if printer_status and printer_status.upper() == "WARNING":
            self.report.warnings.append(f"printer reports WARNING: {info or 'no reason given'}")

    def create_presentation_lut(self) -> None:
        if not self.printer.presentation_lut or PRESENTATION_LUT_SOP_CLASS not in self.accepted:
            return
        plut = Dataset()
        # The image boxes already carry P-values (VOI applied in the renderer), so the LUT is
        # IDENTITY, whatever the printer's entry-count rules (DS-36).
        plut.PresentationLUTShape = "IDENTITY"
        status, _ = self.assoc.send_n_create(
            plut, PRESENTATION_LUT_SOP_CLASS, None, msg_id=self.msg_id()
        )
        self.check("Presentation LUT N-CREATE", status)
        self.plut_uid = self.created_uid()

    def _session_label(self, film: Film, annotate: bool) -> str | None:
        parts = [film.label or ""]
        if not annotate:
            # DS-37: without Annotation Box support the text goes into the Film Session Label.
            parts += film.annotations
        label = " ".join(" ".join(p.split()) for p in parts if p and p.strip())
        return label[:LABEL_MAX] or None

    def create_session(self, film: Film, annotate: bool) -> str:
        session = Dataset()
        printer = self.printer
        copies = film.copies
        if copies is None and not printer.send_only_set_attributes:
            copies = 1
        if copies is not None:
            session.NumberOfCopies = str(copies)
        medium = film.medium_type or (printer.medium_types[0] if printer.medium_types else None)
        if medium:
            session.MediumType = medium
        destination = film.film_destination or (
            printer.film_destinations[0] if printer.film_destinations else None
        )
        if destination:
            session.FilmDestination = destination
        label = self._session_label(film, annotate)
        if label:
            session.FilmSessionLabel = label
        # An empty attribute list must go out as no data set at all (dcmprscp refuses an
        # empty one).
        status, _ = self.assoc.send_n_create(
            session if len(session) else None,
            FILM_SESSION_SOP_CLASS,
            None,
            meta_uid=self.meta,
            msg_id=self.msg_id(),
        )
        self.check("Film Session N-CREATE", status)
        return self.created_uid()

    def create_film_box(
        self, label: str, film: Film, session_uid: str, annotate: bool
    ) -> tuple[str, Dataset | None]:
        printer = self.printer
        box = Dataset()
        box.ImageDisplayFormat = film.display_format
        ref = Dataset()
        ref.ReferencedSOPClassUID = FILM_SESSION_SOP_CLASS
        ref.ReferencedSOPInstanceUID = session_uid
        box.ReferencedFilmSessionSequence = [ref]
        orientation = film.orientation
        if orientation is None and not printer.send_only_set_attributes:
            orientation = "PORTRAIT"
        if orientation:
            box.FilmOrientation = orientation
        film_size = _film_size(film, printer)
        if film_size:
            box.FilmSizeID = film_size
        magnification = film.magnification_type or (
            printer.magnification_types[0] if printer.magnification_types else None
        )
        if magnification:
            box.MagnificationType = magnification
        if printer.max_density is not None:
            box.MaxDensity = printer.max_density
        if printer.min_density is not None:
            box.MinDensity = printer.min_density
        if printer.border_density:
            box.BorderDensity = printer.border_density
        if printer.empty_image_density:
            box.EmptyImageDensity = printer.empty_image_density
        if printer.trim is not None:
            box.Trim = "YES" if printer.trim else "NO"
        if annotate:
            box.AnnotationDisplayFormatID = ANNOTATION_DISPLAY_FORMAT_ID
        if self.plut_uid is not None:
            plut = Dataset()
            plut.ReferencedSOPClassUID = PRESENTATION_LUT_SOP_CLASS
            plut.ReferencedSOPInstanceUID = self.plut_uid
            box.ReferencedPresentationLUTSequence = [plut]
            box.Illumination = ILLUMINATION
            box.ReflectedAmbientLight = REFLECTED_AMBIENT_LIGHT
        status, attrs = self.assoc.send_n_create(
            box, FILM_BOX_SOP_CLASS, None, meta_uid=self.meta, msg_id=self.msg_id()
        )
        self.check(f"Film Box N-CREATE ({label}, {film.display_format})", status)
        return self.created_uid(), attrs

    def set_image_boxes(
        self, label: str, film: Film, refs: list[Dataset], items: dict[int, Dataset], dpi: float
    ) -> None:
        if _item_is_color(items) != self.color:
            # The printer accepted another meta SOP class than its configuration suggested.
            items = render_film(film, self.printer, color=self.color, dpi=dpi)
        image_box_class = COLOR_IMAGE_BOX_SOP_CLASS if self.color else GRAYSCALE_IMAGE_BOX_SOP_CLASS
        for position, item in items.items():
            ref = refs[position - 1]
            status, _ = self.assoc.send_n_set(
                image_box_dataset(position, item, polarity=film.polarity or None),
                str(ref.get("ReferencedSOPClassUID") or image_box_class),
                str(ref.ReferencedSOPInstanceUID),
                meta_uid=self.meta,
                msg_id=self.msg_id(),
            )
            self.check(f"Image Box N-SET ({label}, position {position})", status)

    def set_annotation_boxes(self, label: str, film: Film, refs: list[Dataset]) -> None:
        texts = [(n, t.strip()) for n, t in enumerate(film.annotations, start=1) if t.strip()]
        for position, text in texts:
            if position > len(refs):
                self.report.warnings.append(
                    f"annotation {position} not printed: the printer offers {len(refs)} "
                    "annotation boxes"
                )
                continue
            ref = refs[position - 1]
            annotation = Dataset()
            annotation.AnnotationPosition = position
            annotation.TextString = text[:64]
            status, _ = self.assoc.send_n_set(
                annotation,
                ANNOTATION_BOX_SOP_CLASS,
                str(ref.ReferencedSOPInstanceUID),
                msg_id=self.msg_id(),
            )
            self.check(f"Annotation Box N-SET ({label}, position {position})", status)

    def print_and_follow_job(self, label: str, film_uid: str) -> None:
        status, attrs = self.assoc.send_n_action(
            None, 1, FILM_BOX_SOP_CLASS, film_uid, meta_uid=self.meta, msg_id=self.msg_id()
        )
        self.check(f"Film Box N-ACTION print ({label})", status)
        self.report.films_printed += 1
        self.cleanup = True
        jobs = list(attrs.get("ReferencedPrintJobSequence", [])) if attrs is not None else []
        if not jobs or PRINT_JOB_SOP_CLASS not in self.accepted:
            return
        job_uid = _text(jobs[0].get("ReferencedSOPInstanceUID"))
        if job_uid is None:
            return
        # Best effort: the film is printed as far as the N-ACTION goes; the job status only
        # adds detail (a printer may already have dropped a finished job: 0112).
        status, job = self.assoc.send_n_get([], PRINT_JOB_SOP_CLASS, job_uid, msg_id=self.msg_id())
        self.check(f"Print Job N-GET ({label})", status)
        if job is not None:
            self.report.print_job_status = _text(job.get("ExecutionStatus"))
            self.report.print_job_status_info = _text(job.get("ExecutionStatusInfo"))
            if (self.report.print_job_status or "").upper() == "FAILURE":
                self.report.warnings.append(
                    f"print job reports FAILURE: {self.report.print_job_status_info or ''}".rstrip()
                )

    def print_film(self, number: int, film: Film, items: dict[int, Dataset], dpi: float) -> None:
        label = f"film {number}"
        self.choose_meta(film)
        self.get_printer()
        self.create_presentation_lut()
        annotate = (
            self.printer.annotation
            and ANNOTATION_BOX_SOP_CLASS in self.accepted
            and any(t.strip() for t in film.annotations)
        )
        session_uid = self.create_session(film, annotate)
        film_uid, attrs = self.create_film_box(label, film, session_uid, annotate)
        refs = list(attrs.get("ReferencedImageBoxSequence", [])) if attrs is not None else []
        expected = len(parse_display_format(film.display_format))
        if len(refs) < expected:
            self.report.error = (
                f"Film Box N-CREATE ({label}): the printer returned {len(refs)} image boxes, "
                f"{expected} expected for {film.display_format}"
            )
            raise _Stop
        self.set_image_boxes(label, film, refs, items, dpi)
        if annotate:
            annotation_refs = (
                list(attrs.get("ReferencedBasicAnnotationBoxSequence", []))
                if attrs is not None
                else []
            )
            self.set_annotation_boxes(label, film, annotation_refs)
        self.print_and_follow_job(label, film_uid)
        status = self.assoc.send_n_delete(
            FILM_BOX_SOP_CLASS, film_uid, meta_uid=self.meta, msg_id=self.msg_id()
        )
        self.check(f"Film Box N-DELETE ({label})", status)
        status = self.assoc.send_n_delete(
            FILM_SESSION_SOP_CLASS, session_uid, meta_uid=self.meta, msg_id=self.msg_id()
        )
        self.check("Film Session N-DELETE", status)
        if self.plut_uid is not None:
            status = self.assoc.send_n_delete(
                PRESENTATION_LUT_SOP_CLASS, self.plut_uid, msg_id=self.msg_id()
            )
            self.check("Presentation LUT N-DELETE", status)


class RenderError(Exception):
    """An image of the film cannot be rendered (unreadable or unsupported pixel data)."""


def _film_size(film: Film, printer: Printer) -> str | None:
    if film.film_size:
        return film.film_size
    return printer.film_sizes[0] if printer.film_sizes else None


def _expects_color(film: Film, printer: Printer) -> bool:
    """The meta SOP class the film will most likely use: colour for a colour image on a colour
    printer, and always on a colour-only printer."""
    if not printer.grayscale:
        return True
    return printer.color and any(_is_color_image(image) for image in film.images)


def _item_is_color(items: dict[int, Dataset]) -> bool:
    return any(int(item.SamplesPerPixel) == 3 for item in items.values())


def render_film(
    film: Film, printer: Printer, *, color: bool, dpi: float | None = None
) -> dict[int, Dataset]:
    """The preformatted image item of each filled image box, by Image Box Position: sized to
    the box on the film at ``dpi``, 8 or 12 bit grayscale as the printer is configured, or 8
    bit RGB when ``color``. Raises :class:`RenderError` naming the box."""
    geometry = parse_display_format(film.display_format)
    columns, rows = film_pixels(
        _film_size(film, printer) or DEFAULT_FILM_SIZE,
        film.orientation or "PORTRAIT",
        dpi or DEFAULT_DPI,
    )
    bits: Literal[8, 12] = 12 if printer.bits == 12 and not color else 8
    items: dict[int, Dataset] = {}
    for index, (place, image) in enumerate(zip(geometry, film.images, strict=False)):
        if image is None:
            continue  # no unused N-SETs (DS-31): the printer fills it with empty density
        window = film.windows[index] if film.windows and index < len(film.windows) else None
        _, _, box_columns, box_rows = place.pixels(columns, rows)
        try:
            items[place.position] = render_image_box(
                image, box_columns, box_rows, bits=bits, window=window, color=color
            )
        except Exception as exc:  # noqa: BLE001 - pydicom and numpy fail in many ways on bad pixels
            raise RenderError(
                f"image box {place.position}: cannot render the image ({type(exc).__name__}: {exc})"
            ) from exc
    return items


def _validate(film: Film, number: int) -> str | None:
    try:
        boxes = parse_display_format(film.display_format)
    except ValueError as exc:
        return f"film {number}: {exc}"
    if len(film.images) > len(boxes):
        return (
            f"film {number}: {len(film.images)} images for {len(boxes)} image boxes "
            f"({film.display_format})"
        )
    if not any(image is not None for image in film.images):
        return f"film {number}: no images"
    return None


def _contexts(printer: Printer) -> list[Any]:
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    # Both meta SOP classes when the printer does both: the film picks one by its images.
    abstract = []
    if printer.grayscale:
        abstract.append(GRAYSCALE_META_SOP_CLASS)
    if printer.color:
        abstract.append(COLOR_META_SOP_CLASS)
    if printer.presentation_lut:
        abstract.append(PRESENTATION_LUT_SOP_CLASS)
    if printer.annotation:
        abstract.append(ANNOTATION_BOX_SOP_CLASS)
    # Printers without the Print Job SOP class just reject this context.
    abstract.append(PRINT_JOB_SOP_CLASS)
    return [build_context(uid, syntaxes) for uid in abstract]


def print_film(
    settings: Settings,
    printer: Printer,
    film: Film,
    *,
    dpi: float | None = None,
    on_printer_status: PrinterStatusCallback | None = None,
    number: int = 1,
) -> PrintReport:
    """Print one film on ``printer`` over one association; never raises for a printer or
    network problem (the report says what happened).

    Image boxes are rendered at ``dpi`` (default :data:`DEFAULT_DPI`) over the film size, in 8
    or 12 bits as ``printer.bits`` says (colour always 8). ``number`` only names the film in
    the report ("film 3").
    """
    report = PrintReport(printer.name)
    problem = _validate(film, number)
    if problem is not None:
        report.error = problem
        return report
    # Rendered before the association opens, so the printer never waits for it and a bad
    # image fails the film without touching the printer.
    try:
        items = render_film(film, printer, color=_expects_color(film, printer), dpi=dpi)
    except RenderError as exc:
        report.error = f"film {number}: {exc}"
        return report
    received: list[Any] = []
    events = _Events(report, on_printer_status)
    assoc, connected = associate(
        requestor_ae(settings),
        settings,
        _printer_node(printer),
        _contexts(printer),
        evt_handlers=[
            (evt.EVT_DIMSE_RECV, lambda event: received.append(event.message)),
            # Bound after appliance.scu's own EVT_CONN_OPEN handler, which it wraps.
            (evt.EVT_CONN_OPEN, events.on_open),
            (evt.EVT_N_EVENT_REPORT, events.handle),
        ],
    )
    if not assoc.is_established:
        report.error = f"association with {printer.name}: " + describe_failed_association(
            assoc, connected=connected
        )
        # A printer that accepts none of the contexts is misconfigured, not busy.
        report.retryable = not (connected and contexts_all_rejected(assoc))
        return report
    if not _Events.installed(assoc):
        # Some later handler replaced ours; events from here on are still answered.
        events.install(assoc)
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    if not accepted & {GRAYSCALE_META_SOP_CLASS, COLOR_META_SOP_CLASS}:
        report.error = (
            f"{printer.name} accepted neither the Basic Grayscale nor the Basic Color Print "
            "Management Meta SOP class"
        )
        assoc.release()
        return report
    session = _Session(assoc, report, received, printer, on_printer_status)
    aborted = False
    try:
        session.print_film(number, film, items, dpi or DEFAULT_DPI)
    except _Stop:
        aborted = bool(report.steps) and report.steps[-1].status is None
    except RenderError as exc:
        report.error = f"film {number}: {exc}"
    except (ValueError, RuntimeError, AttributeError) as exc:
        report.error = f"film {number}: print stopped: {exc}"
    finally:
        events.wait_idle()
        if aborted or not assoc.is_established:
            assoc.abort()
        else:
            assoc.release()
    return report


def print_film_session(
    settings: Settings,
    printer: Printer,
    films: list[Film],
    *,
    dpi: float | None = None,
    on_printer_status: PrinterStatusCallback | None = None,
) -> PrintReport:
    """Print ``films`` one association each (:func:`print_film`), stopping at the first film
    that fails; the report sums them (steps, warnings and events in order, the last printer
    status, ``films_printed``)."""
    total = PrintReport(printer.name)
    if not films:
        total.error = "nothing to print: no films"
        return total
    for number, film in enumerate(films, start=1):
        problem = _validate(film, number)
        if problem is not None:
            total.error = problem
            return total
    for number, film in enumerate(films, start=1):
        report = print_film(
            settings, printer, film, dpi=dpi, on_printer_status=on_printer_status, number=number
        )
        total.steps += report.steps
        total.warnings += report.warnings
        total.events += report.events
        total.films_printed += report.films_printed
        if report.printer_status is not None:
            total.printer_status = report.printer_status
            total.printer_status_info = report.printer_status_info
        if report.print_job_status is not None:
            total.print_job_status = report.print_job_status
            total.print_job_status_info = report.print_job_status_info
        if not report.ok:
            total.error = report.error
            total.retryable = report.retryable
            break
    return total
