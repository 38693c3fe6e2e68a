"""A pynetdicom Print SCP for print tests that DCMTK's dcmprscp cannot serve (colour, annotation
boxes, Print Job, crafted statuses, N-EVENT-REPORTs).

`FakePrinter` listens on a free loopback port and records every DIMSE message of every
association, in the order it was received or sent, with its decoded data set (``messages``).
Each step (``"N-CREATE film box"``, ``"N-ACTION film box"``, ``"N-GET printer"``, ...; see
:func:`step_of`) answers 0000 unless ``statuses`` says otherwise; ``printer_status`` and
``printer_status_info`` are what the Printer N-GET returns; ``events`` sends Printer (or Print
Job) N-EVENT-REPORTs while a step is handled (before its response) or right after its response.
Supports the Basic Grayscale and Basic Color Print Management Meta SOP classes, Presentation
LUT, Basic Annotation Box and Print Job, each switchable.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom._handlers import standard_dimse_recv_handler, standard_dimse_sent_handler
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.dsutils import decode, encode

from tests.peers import LOOPBACK, free_port

GRAYSCALE_META = "1.2.840.10008.5.1.1.9"
COLOR_META = "1.2.840.10008.5.1.1.18"
PRINTER = "1.2.840.10008.5.1.1.16"
PRINTER_INSTANCE = "1.2.840.10008.5.1.1.17"
FILM_SESSION = "1.2.840.10008.5.1.1.1"
FILM_BOX = "1.2.840.10008.5.1.1.2"
GRAYSCALE_IMAGE_BOX = "1.2.840.10008.5.1.1.4"
COLOR_IMAGE_BOX = "1.2.840.10008.5.1.1.4.1"
PRESENTATION_LUT = "1.2.840.10008.5.1.1.23"
ANNOTATION_BOX = "1.2.840.10008.5.1.1.15"
PRINT_JOB = "1.2.840.10008.5.1.1.14"

OBJECT_NAMES = {
    PRINTER: "printer",
    FILM_SESSION: "film session",
    FILM_BOX: "film box",
    GRAYSCALE_IMAGE_BOX: "image box",
    COLOR_IMAGE_BOX: "image box",
    PRESENTATION_LUT: "presentation lut",
    ANNOTATION_BOX: "annotation box",
    PRINT_JOB: "print job",
}


def step_of(command: str, sop_class: str | None) -> str:
    """``"N-CREATE film box"`` for an N-CREATE-RQ/RSP of the Basic Film Box SOP class."""
    base = command.rsplit("-", 1)[0]  # N-CREATE-RQ -> N-CREATE
    return f"{base} {OBJECT_NAMES.get(sop_class or '', sop_class or '?')}"


@dataclass
class Message:
    """One DIMSE message as the fake printer saw it."""

    direction: Literal["in", "out"]  # in: from the SCU; out: from the fake printer
    command: str  # "N-CREATE-RQ", "N-EVENT-REPORT-RSP", ...
    sop_class: str | None
    sop_instance: str | None
    status: int | None
    dataset: Dataset | None
    fields: dict[str, Any] = field(default_factory=dict)  # EventTypeID, ActionTypeID, ...

    @property
    def step(self) -> str:
        return step_of(self.command, self.sop_class)

    @property
    def is_request(self) -> bool:
        return self.command.endswith("-RQ")


@dataclass
class EventSpec:
    """An N-EVENT-REPORT to send ``when`` the named step is handled: ``"during"`` (before its
    response, while the SCU waits) or ``"after"`` (right behind its response)."""

    step: str
    event_type_id: int
    info: str | None = None
    when: Literal["during", "after"] = "after"
    sop_class: str = PRINTER


class FakePrinter:
    def __init__(
        self,
        *,
        ae_title: str = "FAKEPRINTER",
        grayscale: bool = True,
        color: bool = True,
        presentation_lut: bool = True,
        annotation: bool = True,
        print_job: bool = True,
        annotation_boxes: int = 2,
        statuses: dict[str, int] | None = None,
        printer_status: str = "NORMAL",
        printer_status_info: str = "NORMAL",
        events: list[EventSpec] | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.annotation_boxes = annotation_boxes
        self.statuses = dict(statuses or {})
        self.printer_status = printer_status
        self.printer_status_info = printer_status_info
        self.events = list(events or [])
        self.messages: list[Message] = []
        self.released = 0
        self.aborted = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1000)
        self._after: list[tuple[Any, EventSpec, int]] = []
        ae = AE(ae_title=ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        for uid, wanted in (
            (GRAYSCALE_META, grayscale),
            (COLOR_META, color),
            (PRESENTATION_LUT, presentation_lut),
            (ANNOTATION_BOX, annotation),
            (PRINT_JOB, print_job),
        ):
            if wanted:
                ae.add_supported_context(uid, syntaxes)
        self.server = ae.start_server(
            (LOOPBACK, self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, self._on_open),
                (evt.EVT_DIMSE_RECV, self._on_recv),
                (evt.EVT_DIMSE_SENT, self._on_sent),
                (evt.EVT_RELEASED, self._on_released),
                (evt.EVT_ABORTED, self._on_aborted),
                (evt.EVT_N_GET, self._n_get),
                (evt.EVT_N_CREATE, self._n_create),
                (evt.EVT_N_SET, self._n_set),
                (evt.EVT_N_ACTION, self._n_action),
                (evt.EVT_N_DELETE, self._n_delete),
            ],
        )

    def stop(self) -> None:
        self.server.shutdown()

    # --- what the tests read ----------------------------------------------------------------

    def requests(self) -> list[Message]:
        """The SCU's requests, in order."""
        with self._lock:
            return [m for m in self.messages if m.direction == "in" and m.is_request]

    def request_steps(self) -> list[str]:
        return [m.step for m in self.requests()]

    def find(self, command: str, sop_class: str | None = None) -> list[Message]:
        with self._lock:
            return [
                m
                for m in self.messages
                if m.command == command and (sop_class is None or m.sop_class == sop_class)
            ]

    # --- recording --------------------------------------------------------------------------

    def _record(self, event: evt.Event, direction: Literal["in", "out"]) -> None:
        message = event.message
        command_set = message.command_set
        name = type(message).__name__.replace("_", "-")  # N_CREATE_RQ -> N-CREATE-RQ
        sop_class = command_set.get("AffectedSOPClassUID") or command_set.get(
            "RequestedSOPClassUID"
        )
        sop_instance = command_set.get("AffectedSOPInstanceUID") or command_set.get(
            "RequestedSOPInstanceUID"
        )
        dataset = None
        raw = message.data_set.getvalue() if message.data_set is not None else b""
        if raw:
            context = event.assoc._accepted_cx.get(message.context_id)
            implicit = context is not None and context.transfer_syntax[0].is_implicit_VR
            dataset = decode(BytesIO(raw), implicit, True)
        fields = {
            key: command_set.get(key)
            for key in ("EventTypeID", "ActionTypeID", "MessageID", "MessageIDBeingRespondedTo")
            if key in command_set
        }
        if "AttributeIdentifierList" in command_set:
            fields["AttributeIdentifierList"] = command_set.AttributeIdentifierList
        status = int(command_set.Status) if "Status" in command_set else None
        with self._lock:
            self.messages.append(
                Message(
                    direction,
                    name,
                    str(sop_class) if sop_class else None,
                    str(sop_instance) if sop_instance else None,
                    status,
                    dataset,
                    fields,
                )
            )

    def _on_recv(self, event: evt.Event) -> None:
        self._record(event, "in")

    def _on_sent(self, event: evt.Event) -> None:
        self._record(event, "out")

    def _on_released(self, event: evt.Event) -> None:
        self.released += 1

    def _on_aborted(self, event: evt.Event) -> None:
        self.aborted += 1

    def _on_open(self, event: evt.Event) -> None:
        # Events "after" a step go out right behind that step's response: wrap the sender.
        assoc = event.assoc
        # pynetdicom's logging handlers fail on an N-GET with an empty attribute list, and an
        # exception in one handler skips the handlers after it (ours, which record).
        assoc.unbind(evt.EVT_DIMSE_RECV, standard_dimse_recv_handler)
        assoc.unbind(evt.EVT_DIMSE_SENT, standard_dimse_sent_handler)
        send_msg = assoc.dimse.send_msg

        def send_then_events(primitive: Any, context_id: int) -> None:
            send_msg(primitive, context_id)
            if primitive.MessageIDBeingRespondedTo is None:
                return
            with self._lock:
                due, self._after = self._after, []
            for owner, spec, event_context in due:
                if owner is assoc:
                    self._send_event(assoc, spec, event_context, send_msg)

        assoc.dimse.send_msg = send_then_events

    # --- events -----------------------------------------------------------------------------

    def _send_event(self, assoc: Any, spec: EventSpec, context_id: int, send: Any) -> None:
        """Send an N-EVENT-REPORT-RQ without waiting for its response (the SCU's answer is
        recorded like any other message); waiting would take the SCU's next request off the
        queue as if it were the answer."""
        info = Dataset()
        if spec.sop_class == PRINT_JOB:
            info.ExecutionStatusInfo = spec.info or "NORMAL"
        else:
            info.PrinterStatusInfo = spec.info or "NORMAL"
            info.PrinterName = self.ae_title
        context = assoc._accepted_cx[context_id]
        request = N_EVENT_REPORT()
        request.MessageID = next(self._ids)
        request.AffectedSOPClassUID = spec.sop_class
        request.AffectedSOPInstanceUID = (
            PRINTER_INSTANCE if spec.sop_class == PRINTER else generate_uid()
        )
        request.EventTypeID = spec.event_type_id
        request.EventInformation = BytesIO(
            encode(info, context.transfer_syntax[0].is_implicit_VR, True)
        )
        send(request, context_id)

    def _events_for(self, event: evt.Event, step: str) -> None:
        for spec in [s for s in self.events if s.step == step]:
            self.events.remove(spec)
            context_id = event.context.context_id
            if spec.when == "during":
                self._send_event(event.assoc, spec, context_id, event.assoc.dimse.send_msg)
            else:
                with self._lock:
                    self._after.append((event.assoc, spec, context_id))

    def _status(self, event: evt.Event, command: str, sop_class: str | None) -> int:
        step = step_of(command, sop_class)
        self._events_for(event, step)
        return self.statuses.get(step, 0x0000)

    # --- handlers ---------------------------------------------------------------------------

    def _n_get(self, event: evt.Event) -> tuple[int, Dataset | None]:
        request = event.request
        sop_class = str(request.RequestedSOPClassUID)
        status = self._status(event, "N-GET-RQ", sop_class)
        ds = Dataset()
        if sop_class == PRINTER:
            ds.PrinterStatus = self.printer_status
            ds.PrinterStatusInfo = self.printer_status_info
            ds.PrinterName = self.ae_title
        elif sop_class == PRINT_JOB:
            ds.ExecutionStatus = "DONE"
            ds.ExecutionStatusInfo = "NORMAL"
        return status, ds if status < 0xA000 else None

    def _n_create(self, event: evt.Event) -> tuple[int, Dataset | None]:
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        status = self._status(event, "N-CREATE-RQ", sop_class)
        if status >= 0xA000:
            return status, None
        attrs = event.attribute_list if request.AttributeList is not None else Dataset()
        ds = Dataset()
        ds.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID or generate_uid()
        if sop_class == FILM_BOX:
            ds.update(attrs)
            count = _box_count(str(attrs.get("ImageDisplayFormat", "STANDARD\\1,1")))
            box_class = (
                COLOR_IMAGE_BOX
                if str(event.context.abstract_syntax) == COLOR_META
                else GRAYSCALE_IMAGE_BOX
            )
            ds.ReferencedImageBoxSequence = [_ref(box_class) for _ in range(count)]
            if "AnnotationDisplayFormatID" in attrs:
                ds.ReferencedBasicAnnotationBoxSequence = [
                    _ref(ANNOTATION_BOX) for _ in range(self.annotation_boxes)
                ]
        return status, ds

    def _n_set(self, event: evt.Event) -> tuple[int, Dataset | None]:
        request = event.request
        status = self._status(event, "N-SET-RQ", str(request.RequestedSOPClassUID))
        return status, Dataset() if status < 0xA000 else None

    def _n_action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        request = event.request
        status = self._status(event, "N-ACTION-RQ", str(request.RequestedSOPClassUID))
        if status >= 0xA000:
            return status, None
        ds = Dataset()
        if any(str(cx.abstract_syntax) == PRINT_JOB for cx in event.assoc.accepted_contexts):
            ds.ReferencedPrintJobSequence = [_ref(PRINT_JOB)]
        return status, ds

    def _n_delete(self, event: evt.Event) -> int:
        return self._status(event, "N-DELETE-RQ", str(event.request.RequestedSOPClassUID))


def _ref(sop_class: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = generate_uid()
    return item


def _box_count(display_format: str) -> int:
    kind, _, rest = display_format.partition("\\")
    numbers = [int(n) for n in rest.split(",") if n.strip().isdigit()]
    if kind.upper() == "STANDARD" and len(numbers) == 2:
        return numbers[0] * numbers[1]
    return max(1, sum(numbers))
