"""Query/Retrieve C-FIND SCP: Patient Root, Study Root and Patient/Study Only (PS3.4 C.4.1).

Plugged into ``DicomServer`` as an ``ScpService``. Matching is ``appliance.query``'s; this module
negotiates the FIND contexts, checks the calling node's permission, and streams the matches as
pending responses, stopping on C-CANCEL.

A C-FIND on our contexts is served here in full rather than through pynetdicom's C-FIND loop:
that loop encodes every pending response twice with pydicom (command set and identifier) and
sends command and identifier as two PDUs, which costs several times the matching itself on a
list of a few hundred studies. Here the command set and a plain identifier are encoded directly
and go out together in one P-DATA-TF PDU when they fit; answers with text outside ASCII, or for
a big endian context, are encoded by pydicom, and answers larger than the peer's maximum PDU are
fragmented by pynetdicom.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterator
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext

from appliance import audit
from appliance.config import Settings
from appliance.dicom_classes import IMPLICIT_VR_LE, UNCOMPRESSED_TRANSFER_SYNTAXES
from appliance.network import DicomServer, EventHandlers, error_status, serve_requests_ourselves
from appliance.query import (
    FIND_SOP_CLASSES,
    STATUS_IDENTIFIER_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
    STATUS_UNABLE_TO_PROCESS,
    FindResult,
    Match,
    QueryError,
    build_response,
    encode_response,
    find,
)

LOG = logging.getLogger("appliance.query")

STATUS_PENDING = 0xFF00
# PS3.4 C.4.1.1.4: pending, but some optional keys of the identifier are not supported.
STATUS_PENDING_UNSUPPORTED_KEYS = 0xFF01
STATUS_CANCEL = 0xFE00
STATUS_SUCCESS = 0x0000

FindStatus = int | Dataset
# What the matching yields: a final status, or a pending status with the match to answer.
Step = tuple[FindStatus, FindResult | None, Match | None]

_C_FIND_RSP = 0x8020
_MAX_QUEUED_PDUS = 8
_DATA_SET_PRESENT = 0x0001
_NO_DATA_SET = 0x0101


def find_transfer_syntaxes(settings: Settings) -> list[str]:
    """The configured transfer syntaxes that suit a C-FIND identifier, in their order.

    Compressed syntaxes only describe pixel data and a query carries none; Deflate is left out
    because small identifiers gain nothing from it. Implicit VR Little Endian, the DICOM default,
    stands in when the configuration lists no uncompressed syntax.
    """
    chosen = [ts for ts in settings.transfer_syntaxes if ts in UNCOMPRESSED_TRANSFER_SYNTAXES]
    return chosen or [IMPLICIT_VR_LE]


def _command_element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def encode_find_rsp_command(sop_class: str, message_id: int, status: int, data_set: bool) -> bytes:
    """A C-FIND-RSP command set (PS3.7 9.3.2.2), Implicit VR Little Endian as PS3.7 6.3.1 says."""
    uid = sop_class.encode("ascii")
    if len(uid) % 2:
        uid += b"\0"
    body = b"".join(
        [
            _command_element(0x0002, uid),
            _command_element(0x0100, struct.pack("<H", _C_FIND_RSP)),
            _command_element(0x0120, struct.pack("<H", message_id)),
            _command_element(
                0x0800, struct.pack("<H", _DATA_SET_PRESENT if data_set else _NO_DATA_SET)
            ),
            _command_element(0x0900, struct.pack("<H", status)),
        ]
    )
    return _command_element(0x0000, struct.pack("<I", len(body))) + body


class FindService:
    """C-FIND SCP for the three Query/Retrieve information models."""

    def __init__(self) -> None:
        self._server: DicomServer | None = None

    def add_contexts(self, ae: AE, settings: Settings) -> None:
        for sop_class in FIND_SOP_CLASSES:
            ae.add_supported_context(sop_class, find_transfer_syntaxes(settings))

    def handlers(self, server: DicomServer) -> EventHandlers:
        self._server = server
        return [(evt.EVT_ACCEPTED, self._on_accepted)]

    # --- the matching ---------------------------------------------------------------------

    def _steps(
        self,
        assoc: Association,
        sop_class: str,
        identifier: Callable[[], Dataset],
        cancelled: Callable[[], bool],
    ) -> Iterator[Step]:
        server = self._server
        assert server is not None
        refused = server.refuse_service(evt.Event(assoc, evt.EVT_C_FIND, {}), "find")
        if refused is not None:
            yield refused, None, None
            return
        settings = server.settings
        peer = f"{assoc.requestor.ae_title.strip()} at {assoc.requestor.address}"
        started = time.monotonic()
        try:
            result = find(
                server.archive,
                identifier(),
                sop_class,
                ae_title=settings.ae_title,
                case_insensitive_names=settings.query_case_insensitive_names,
                max_matches=settings.max_query_matches,
            )
        except QueryError as exc:
            LOG.error("C-FIND from %s refused with 0x%04X: %s", peer, exc.status, exc.comment)
            yield error_status(exc.status, exc.comment), None, None
            return
        except Exception as exc:  # an identifier pydicom cannot decode, an unreadable index
            LOG.exception("C-FIND from %s failed", peer)
            yield (
                error_status(STATUS_UNABLE_TO_PROCESS, f"cannot process the query: {exc}"),
                None,
                None,
            )
            return
        pending = STATUS_PENDING_UNSUPPORTED_KEYS if result.query.unsupported else STATUS_PENDING
        sent = 0
        for match in result.matches:
            # A C-CANCEL arrives between our responses; PS3.4 C.4.1.3.2: stop, answer FE00.
            if cancelled():
                LOG.info("C-FIND from %s cancelled after %d matches", peer, sent)
                yield STATUS_CANCEL, None, None
                return
            yield pending, result, match
            sent += 1
        if cancelled():
            LOG.info("C-FIND from %s cancelled after %d matches", peer, sent)
            yield STATUS_CANCEL, None, None
            return
        LOG.info(
            "C-FIND from %s at %s level: %d matches in %.1f ms%s",
            peer,
            result.query.level,
            sent,
            (time.monotonic() - started) * 1000,
            f", unsupported keys {', '.join(result.query.unsupported)}"
            if result.query.unsupported
            else "",
        )
        if result.truncated:
            # The list is incomplete: say so rather than end with a plain success, so no
            # operator mistakes the first N studies for all of them.
            comment = f"too many matches: only the first {settings.max_query_matches} returned"
            yield error_status(STATUS_OUT_OF_RESOURCES, comment), None, None
            return
        yield STATUS_SUCCESS, None, None

    # --- serving a request ----------------------------------------------------------------

    def _on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        serve_requests_ourselves(
            assoc,
            (C_FIND,),
            FIND_SOP_CLASSES,
            lambda msg, context: self._answer(assoc, msg, context),
            "C-FIND",
        )

    def _answer(self, assoc: Association, msg: C_FIND, context: PresentationContext) -> None:
        transfer_syntax = UID(context.transfer_syntax[0])
        context_id = int(context.context_id)  # type: ignore[arg-type]
        message_id = int(msg.MessageID)  # type: ignore[arg-type]
        sop_class = str(msg.AffectedSOPClassUID)
        little_endian = transfer_syntax.is_little_endian
        implicit = transfer_syntax.is_implicit_VR

        def identifier() -> Dataset:
            stream = msg.Identifier
            if stream is None:
                raise QueryError(STATUS_IDENTIFIER_MISMATCH, "no identifier")
            try:
                return decode(stream, implicit, little_endian, transfer_syntax.is_deflated)  # type: ignore[arg-type]
            except Exception as exc:
                raise QueryError(
                    STATUS_UNABLE_TO_PROCESS, f"identifier cannot be decoded: {exc}"
                ) from exc

        def cancelled() -> bool:
            return assoc.dimse.cancel_req.pop(message_id, None) is not None

        for status, result, match in self._steps(assoc, sop_class, identifier, cancelled):
            if not assoc.is_established:
                return  # the requestor is gone: nobody to answer
            if match is None or result is None:
                self._send_final(assoc, msg, context_id, status)
                audit.query(assoc, sop_class, msg.Identifier, str(transfer_syntax), status)
                continue
            assert isinstance(status, int)
            data = None
            if little_endian:
                data = encode_response(result.query, match, result.ae_title, implicit_vr=implicit)
            if data is None:  # text outside ASCII, or big endian: pydicom encodes it
                data = encode(
                    build_response(result.query, match, result.ae_title),
                    implicit,
                    little_endian,
                    transfer_syntax.is_deflated,
                )
            self._send_pending(assoc, msg, context_id, message_id, sop_class, status, data)

    @staticmethod
    def _send_pending(
        assoc: Association,
        msg: C_FIND,
        context_id: int,
        message_id: int,
        sop_class: str,
        status: int,
        data: bytes,
    ) -> None:
        command = encode_find_rsp_command(sop_class, message_id, status, data_set=True)
        limit = assoc.dimse.maximum_pdu_size
        # One PDV item is its 4-byte length, the context ID, the message control header and
        # the fragment; the peer's maximum length bounds the PDU's items together (PS3.8 9.3.5).
        if limit and 12 + len(command) + len(data) > limit:
            # Does not fit in one PDU: pynetdicom fragments it.
            rsp = C_FIND()
            rsp.MessageIDBeingRespondedTo = msg.MessageID
            rsp.AffectedSOPClassUID = msg.AffectedSOPClassUID
            rsp.Status = status
            rsp.Identifier = BytesIO(data)
            assoc.dimse.send_msg(rsp, context_id)
            return
        pdata = P_DATA()
        # Message control header: bit 0 command (1) or data set (0), bit 1 last fragment.
        pdata.presentation_data_value_list = [
            [context_id, b"\x03" + command],
            [context_id, b"\x02" + data],
        ]
        assoc.dul.send_pdu(pdata)
        # Stay a few PDUs ahead of the network, not a whole result list: a long list would sit in
        # memory, and a C-CANCEL would arrive after every match had been queued.
        pending = assoc.dul.to_provider_queue
        while pending.qsize() > _MAX_QUEUED_PDUS and assoc.is_established:
            time.sleep(0.0002)

    @staticmethod
    def _send_final(assoc: Association, msg: C_FIND, context_id: int, status: FindStatus) -> None:
        rsp = C_FIND()
        rsp.MessageIDBeingRespondedTo = msg.MessageID
        rsp.AffectedSOPClassUID = msg.AffectedSOPClassUID
        if isinstance(status, Dataset):
            rsp.Status = int(status.Status)
            comment = status.get("ErrorComment")
            if comment:
                rsp.ErrorComment = str(comment)
        else:
            rsp.Status = status
        assoc.dimse.send_msg(rsp, context_id)
