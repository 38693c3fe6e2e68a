"""Query/Retrieve C-FIND SCP: Patient Root, Study Root and Patient/Study Only (PS3.4 C.4.1).

Plugged into ``DicomServer`` as an ``ScpService``. Matching is ``appliance.query``'s; this module
negotiates the FIND contexts, checks the calling node's permission, and streams the matches as
pending responses, stopping on C-CANCEL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt

from appliance.config import Settings
from appliance.dicom_classes import IMPLICIT_VR_LE, UNCOMPRESSED_TRANSFER_SYNTAXES
from appliance.network import DicomServer, EventHandlers, error_status
from appliance.query import (
    FIND_SOP_CLASSES,
    STATUS_OUT_OF_RESOURCES,
    STATUS_UNABLE_TO_PROCESS,
    QueryError,
    find,
)

LOG = logging.getLogger("appliance.query")

STATUS_PENDING = 0xFF00
# PS3.4 C.4.1.1.4: pending, but some optional keys of the identifier are not supported.
STATUS_PENDING_UNSUPPORTED_KEYS = 0xFF01
STATUS_CANCEL = 0xFE00
STATUS_SUCCESS = 0x0000

FindStatus = int | Dataset


def find_transfer_syntaxes(settings: Settings) -> list[str]:
    """The configured transfer syntaxes that suit a C-FIND identifier, in their order.

    Compressed syntaxes only describe pixel data and a query carries none; Deflate is left out
    because small identifiers gain nothing from it. Implicit VR Little Endian, the DICOM default,
    stands in when the configuration lists no uncompressed syntax.
    """
    chosen = [ts for ts in settings.transfer_syntaxes if ts in UNCOMPRESSED_TRANSFER_SYNTAXES]
    return chosen or [IMPLICIT_VR_LE]


class FindService:
    """C-FIND SCP for the three Query/Retrieve information models."""

    def __init__(self) -> None:
        self._server: DicomServer | None = None

    def add_contexts(self, ae: AE, settings: Settings) -> None:
        for sop_class in FIND_SOP_CLASSES:
            ae.add_supported_context(sop_class, find_transfer_syntaxes(settings))
        # pynetdicom formats every request and response identifier for its debug log even
        # when that log is off, which costs more than the matching on a long result list.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False

    def handlers(self, server: DicomServer) -> EventHandlers:
        self._server = server
        return [(evt.EVT_C_FIND, self._on_find)]

    def _on_find(self, event: evt.Event) -> Iterator[tuple[FindStatus, Dataset | None]]:
        server = self._server
        assert server is not None
        refused = server.refuse_service(event, "find")
        if refused is not None:
            yield refused, None
            return
        settings = server.settings
        sop_class = str(event.request.AffectedSOPClassUID)
        peer = f"{event.assoc.requestor.ae_title.strip()} at {event.assoc.requestor.address}"
        started = time.monotonic()
        try:
            identifier = event.identifier
            result = find(
                server.archive,
                identifier,
                sop_class,
                ae_title=settings.ae_title,
                case_insensitive_names=settings.query_case_insensitive_names,
                max_matches=settings.max_query_matches,
            )
        except QueryError as exc:
            LOG.error("C-FIND from %s refused with 0x%04X: %s", peer, exc.status, exc.comment)
            yield error_status(exc.status, exc.comment), None
            return
        except Exception as exc:  # an identifier pydicom cannot decode, an unreadable index
            LOG.exception("C-FIND from %s failed", peer)
            yield error_status(STATUS_UNABLE_TO_PROCESS, f"cannot process the query: {exc}"), None
            return
        pending = STATUS_PENDING_UNSUPPORTED_KEYS if result.query.unsupported else STATUS_PENDING
        sent = 0
        for response in result.responses():
            # A C-CANCEL arrives between our responses; PS3.4 C.4.1.3.2: stop, answer FE00.
            if event.is_cancelled:
                LOG.info("C-FIND from %s cancelled after %d matches", peer, sent)
                yield STATUS_CANCEL, None
                return
            yield pending, response
            sent += 1
        if event.is_cancelled:
            LOG.info("C-FIND from %s cancelled after %d matches", peer, sent)
            yield STATUS_CANCEL, None
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
            yield (
                error_status(
                    STATUS_OUT_OF_RESOURCES,
                    f"too many matches: only the first {settings.max_query_matches} returned",
                ),
                None,
            )
            return
        yield STATUS_SUCCESS, None
