"""Print SCU: print grayscale films on a film imager (DICOM Print SCP).

:func:`print_film_session` runs one Basic Grayscale Print Management session in the order of
DS-31: N-GET Printer, N-CREATE Film Session, then per film N-CREATE Film Box, N-SET of each
Image Box, N-ACTION print and N-DELETE of the Film Box, then N-DELETE of the Film Session and
release. Any failure status stops the session with an error that names the step and the
status; warnings (Bxxx) are recorded and the session goes on. Failures a later attempt may
cure (printer unreachable, association rejected or aborted, no response, C6xx and resource
statuses) are marked ``retryable`` for the print queue.

Limits: grayscale only (no Color Meta SOP class), no Presentation LUT, no Annotation Box, no
Print Job SOP class, N-EVENT-REPORTs from the printer are not handled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.association import Association

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

GRAYSCALE_META_SOP_CLASS = "1.2.840.10008.5.1.1.9"
PRINTER_SOP_CLASS = "1.2.840.10008.5.1.1.16"
PRINTER_SOP_INSTANCE = "1.2.840.10008.5.1.1.17"
FILM_SESSION_SOP_CLASS = "1.2.840.10008.5.1.1.1"
FILM_BOX_SOP_CLASS = "1.2.840.10008.5.1.1.2"
GRAYSCALE_IMAGE_BOX_SOP_CLASS = "1.2.840.10008.5.1.1.4"

#: Resolution used to size the rendered image boxes when the printer's is not known.
DEFAULT_DPI = 100.0
#: Film size used to size the rendered image boxes when the film does not name one.
DEFAULT_FILM_SIZE = "14INX17IN"

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


@dataclass
class Film:
    """One film to print: its layout and the image of each box (None leaves the box empty).

    ``copies`` is the Number of Copies of the session; ``medium_type`` and ``film_destination``
    are film session attributes too (the first film's values are used). Empty strings and None
    mean "not set": the attribute is not sent and the printer uses its default.
    """

    display_format: str
    images: list[Dataset | None]
    film_size: str | None = None
    orientation: str | None = None
    copies: int | None = None
    medium_type: str | None = None
    film_destination: str | None = None


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
class PrintReport:
    """The outcome of one print session."""

    printer: str
    steps: list[StepResult] = field(default_factory=list)
    printer_status: str | None = None
    printer_status_info: str | None = None
    films_printed: int = 0
    error: str | None = None
    retryable: bool = False
    warnings: list[str] = field(default_factory=list)

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
        }


class _Stop(Exception):
    """The session cannot go on; the report already says why."""


def _printer_node(printer: Printer) -> Node:
    return Node(name=printer.name, ae_title=printer.ae_title, host=printer.host, port=printer.port)


def _text(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


class _Session:
    def __init__(self, assoc: Association, report: PrintReport, received: list[Any]) -> None:
        self.assoc = assoc
        self.report = report
        self.received = received

    def check(self, step: str, status_ds: Dataset | None) -> int:
        """Record the status of ``step``; raise _Stop for anything but success or warning."""
        if status_ds is None or "Status" not in status_ds:
            self.report.steps.append(StepResult(step, None))
            self.report.error = (
                f"{step}: no response from the printer (timeout, or the association was aborted)"
            )
            self.report.retryable = True
            raise _Stop
        status = int(status_ds.Status)
        comment = _text(status_ds.get("ErrorComment"))
        result = StepResult(step, status, comment)
        self.report.steps.append(result)
        if status == 0x0000:
            return status
        if is_warning(status):
            self.report.warnings.append(result.line())
            return status
        self.report.error = f"{step} failed with status {result.line().split(': ', 1)[1]}"
        self.report.retryable = is_retryable_status(status)
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

    def get_printer(self) -> None:
        status, attrs = self.assoc.send_n_get(
            # An empty list asks for every attribute: printers refuse some optional ones
            # (dcmprscp answers 0105 for Printer Name).
            [],
            PRINTER_SOP_CLASS,
            PRINTER_SOP_INSTANCE,
            meta_uid=GRAYSCALE_META_SOP_CLASS,
        )
        self.check("Printer N-GET", status)
        if attrs is not None:
            self.report.printer_status = _text(attrs.get("PrinterStatus"))
            self.report.printer_status_info = _text(attrs.get("PrinterStatusInfo"))

    def create_session(self, films: list[Film]) -> str:
        session = Dataset()
        first = films[0]
        if first.copies is not None:
            session.NumberOfCopies = str(first.copies)
        if first.medium_type:
            session.MediumType = first.medium_type
        if first.film_destination:
            session.FilmDestination = first.film_destination
        # An empty attribute list must go out as no data set at all (dcmprscp refuses an
        # empty one).
        status, _ = self.assoc.send_n_create(
            session if len(session) else None,
            FILM_SESSION_SOP_CLASS,
            None,
            meta_uid=GRAYSCALE_META_SOP_CLASS,
        )
        self.check("Film Session N-CREATE", status)
        return self.created_uid()

    def print_film(
        self, number: int, film: Film, session_uid: str, printer: Printer, dpi: float
    ) -> None:
        label = f"film {number}"
        geometry = parse_display_format(film.display_format)
        box = Dataset()
        box.ImageDisplayFormat = film.display_format
        ref = Dataset()
        ref.ReferencedSOPClassUID = FILM_SESSION_SOP_CLASS
        ref.ReferencedSOPInstanceUID = session_uid
        box.ReferencedFilmSessionSequence = [ref]
        if film.orientation:
            box.FilmOrientation = film.orientation
        if film.film_size:
            box.FilmSizeID = film.film_size
        status, attrs = self.assoc.send_n_create(
            box, FILM_BOX_SOP_CLASS, None, meta_uid=GRAYSCALE_META_SOP_CLASS
        )
        self.check(f"Film Box N-CREATE ({label}, {film.display_format})", status)
        film_uid = self.created_uid()
        refs = list(attrs.get("ReferencedImageBoxSequence", [])) if attrs is not None else []
        if len(refs) < len(geometry):
            self.report.error = (
                f"Film Box N-CREATE ({label}): the printer returned {len(refs)} image boxes, "
                f"{len(geometry)} expected for {film.display_format}"
            )
            raise _Stop
        columns, rows = film_pixels(
            film.film_size or DEFAULT_FILM_SIZE, film.orientation or "PORTRAIT", dpi
        )
        bits: Literal[8, 12] = 12 if printer.bits == 12 else 8
        for place, image in zip(geometry, film.images, strict=False):
            if image is None:
                continue
            _, _, box_columns, box_rows = place.pixels(columns, rows)
            item = render_image_box(image, box_columns, box_rows, bits=bits)
            box_uid = str(refs[place.position - 1].ReferencedSOPInstanceUID)
            status, _ = self.assoc.send_n_set(
                image_box_dataset(place.position, item),
                GRAYSCALE_IMAGE_BOX_SOP_CLASS,
                box_uid,
                meta_uid=GRAYSCALE_META_SOP_CLASS,
            )
            self.check(f"Image Box N-SET ({label}, position {place.position})", status)
        status, _ = self.assoc.send_n_action(
            None, 1, FILM_BOX_SOP_CLASS, film_uid, meta_uid=GRAYSCALE_META_SOP_CLASS
        )
        self.check(f"Film Box N-ACTION print ({label})", status)
        self.report.films_printed += 1
        status = self.assoc.send_n_delete(
            FILM_BOX_SOP_CLASS, film_uid, meta_uid=GRAYSCALE_META_SOP_CLASS
        )
        self.check(f"Film Box N-DELETE ({label})", status)

    def delete_session(self, session_uid: str) -> None:
        status = self.assoc.send_n_delete(
            FILM_SESSION_SOP_CLASS, session_uid, meta_uid=GRAYSCALE_META_SOP_CLASS
        )
        self.check("Film Session N-DELETE", status)


def _validate(films: list[Film]) -> str | None:
    if not films:
        return "nothing to print: no films"
    for number, film in enumerate(films, start=1):
        try:
            boxes = parse_display_format(film.display_format)
        except ValueError as exc:
            return f"film {number}: {exc}"
        if len(film.images) > len(boxes):
            return (
                f"film {number}: {len(film.images)} images for {len(boxes)} image boxes "
                f"({film.display_format})"
            )
    return None


def print_film_session(
    settings: Settings,
    printer: Printer,
    films: list[Film],
    *,
    dpi: float | None = None,
) -> PrintReport:
    """Print ``films`` on ``printer`` in one grayscale film session; never raises for a
    printer or network problem (the report says what happened).

    Image boxes are rendered at ``dpi`` (default :data:`DEFAULT_DPI`) over the film size, in 8
    or 12 bits as ``printer.bits`` says.
    """
    report = PrintReport(printer.name)
    problem = _validate(films)
    if problem is not None:
        report.error = problem
        return report
    received: list[Any] = []
    ae = requestor_ae(settings)
    context = build_context(
        GRAYSCALE_META_SOP_CLASS, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    )
    assoc, connected = associate(
        ae,
        settings,
        _printer_node(printer),
        [context],
        evt_handlers=[(evt.EVT_DIMSE_RECV, lambda event: received.append(event.message))],
    )
    if not assoc.is_established:
        report.error = f"association with {printer.name}: " + describe_failed_association(
            assoc, connected=connected
        )
        # A printer that accepts none of the contexts is misconfigured, not busy.
        report.retryable = not (connected and contexts_all_rejected(assoc))
        return report
    session = _Session(assoc, report, received)
    aborted = False
    try:
        session.get_printer()
        session_uid = session.create_session(films)
        for number, film in enumerate(films, start=1):
            session.print_film(number, film, session_uid, printer, dpi or DEFAULT_DPI)
        session.delete_session(session_uid)
    except _Stop:
        aborted = report.retryable and bool(report.steps) and report.steps[-1].status is None
    except (ValueError, RuntimeError, AttributeError) as exc:
        report.error = f"print session stopped: {exc}"
    finally:
        if aborted or not assoc.is_established:
            assoc.abort()
        else:
            assoc.release()
    return report
