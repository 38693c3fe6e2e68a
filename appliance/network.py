"""The DICOM listener: Verification and Storage SCP around one pynetdicom AE."""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import register_uid, uid_to_service_class

from appliance import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, audit, tls
from appliance.acceptor import EventDrivenRequestHandler, ListenerServer
from appliance.archive import STATUS_OUT_OF_RESOURCES, Archive, StoreOutcome, StoreRefused
from appliance.config import NODE_SERVICES, ConfigStore, Node, Settings
from appliance.dicom_classes import (
    DICOMSCOPE_SHUTDOWN_SOP_CLASS,
    STORAGE_SOP_CLASSES,
    VERIFICATION_SOP_CLASS,
)
from appliance.events import EventBus

LOG = logging.getLogger("appliance.network")

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_NO_REASON = (0x01, 0x01, 0x01)

# PS3.7 C.5.9: Refused: Not Authorized
STATUS_NOT_AUTHORIZED = 0x0124


def apply_timeouts(ae: AE, settings: Settings) -> None:
    ae.acse_timeout = settings.association_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.connection_timeout = settings.association_timeout


def register_storage_classes() -> None:
    """Make pynetdicom serve C-STORE for every class we negotiate.

    pynetdicom maps retired storage classes (Standalone PET Curve, Stored Print, the old
    Ultrasound and NM classes ...) to no service: it accepts their presentation contexts and
    then aborts the association on the first C-STORE.
    """
    for sop_class in STORAGE_SOP_CLASSES:
        if uid_to_service_class(sop_class) is not StorageServiceClass:
            keyword = UID(sop_class).keyword or "Storage_" + sop_class.replace(".", "_")
            register_uid(sop_class, keyword, StorageServiceClass)


def _negotiated_as_storage(abstract_syntax: str) -> bool:
    """Whether pynetdicom's accept-any negotiation takes this abstract syntax as storage."""
    service = uid_to_service_class(abstract_syntax)
    return UID(abstract_syntax).is_private or service in (StorageServiceClass, ServiceClass)


def _hang_up(assoc: Association) -> None:
    """Shut the association's connection down, which wakes a reader blocked in recv()."""
    transport = assoc.dul.socket
    if transport is not None and transport.socket is not None:
        try:
            transport.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def error_status(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    # Error Comment is LO: at most 64 characters.
    ds.ErrorComment = comment[:64]
    return ds


EventHandlers = list[tuple[evt.EventType, Callable]]
StorageListener = Callable[[dict[str, Any]], None]


def _attribute(ds: Dataset | None, keyword: str) -> str:
    if ds is None:
        return ""
    try:
        value = ds.get(keyword)
    except Exception:  # a value pydicom cannot decode; the archive stored it anyway
        return ""
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(item).strip() for item in value)
    return str(value).strip()


def serve_requests_ourselves(
    assoc: Association,
    message_types: tuple[type, ...],
    sop_classes: Collection[str],
    serve: Callable[[Any, PresentationContext], None],
    what: str,
) -> None:
    """Route this association's requests of ``message_types`` on contexts of ``sop_classes`` to
    ``serve(msg, context)`` instead of pynetdicom's service classes; others go on as before.

    Call it from EVT_ACCEPTED: that runs on the association's own thread before it reads any
    request, so the dispatcher is replaced before a request can reach it. Wrappers chain, so
    several services can each take their own requests on one association.
    """
    if not any(str(cx.abstract_syntax) in sop_classes for cx in assoc.accepted_contexts):
        return
    original = assoc._serve_request

    def serve_request(msg: Any, context_id: int) -> None:
        context = assoc._accepted_cx.get(context_id)
        if not (
            isinstance(msg, message_types)
            # Answerable; a request without an identifier gets an error status from us
            # rather than silence from pynetdicom.
            and msg.MessageID is not None
            # N-SET, N-GET, N-ACTION and N-DELETE name their class as Requested SOP Class UID.
            and (
                msg.AffectedSOPClassUID is not None
                or getattr(msg, "RequestedSOPClassUID", None) is not None
            )
            and not assoc._sent_release
            and context is not None
            and str(context.abstract_syntax) in sop_classes
        ):
            original(msg, context_id)
            return
        # What pynetdicom's dispatcher does around a service class: C-CANCELs received before
        # this request are not for it, and the reactor (this thread) is not reading messages
        # while the request is served, which send_c_store() of C-GET sub-operations waits for.
        assoc.dimse.cancel_req = {}
        assoc._is_paused = True
        try:
            serve(msg, context)
        except Exception:
            LOG.exception("%s from %s failed; aborting", what, assoc.requestor.address)
            assoc.abort(block=False)
        finally:
            assoc._is_paused = False
            assoc.dimse.cancel_req = {}

    assoc._serve_request = serve_request  # type: ignore[method-assign]


class ScpService(Protocol):
    """A DICOM service the listener serves besides Verification and Storage (Q/R, commitment...).

    Each lives in its own module, owns its handlers, and is handed to ``DicomServer``; it checks
    the calling node's permission with ``DicomServer.refuse_service``.
    """

    def add_contexts(self, ae: AE, settings: Settings) -> None:
        """Add the presentation contexts this service accepts."""

    def handlers(self, server: DicomServer) -> EventHandlers:
        """The pynetdicom event handlers that serve it."""


@dataclass
class AssociationStats:
    peer_ae: str
    address: str
    # Services this peer may use against us; see DicomServer.services_for.
    allowed: frozenset[str] = frozenset(NODE_SERVICES)
    stored: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    # For the control API: DicomServer.associations() and the association events.
    assoc_id: int = 0
    host: str = ""
    port: int = 0
    called_ae: str = ""
    started_at: float = field(default_factory=time.time)
    last_op: str = ""
    last_op_at: float | None = None
    ops: dict[str, int] = field(default_factory=dict)
    # Studies stored on this association, for its audit messages when it closes.
    received: audit.ReceivedTally = field(default_factory=audit.ReceivedTally)
    tls: bool = False

    def info(self) -> dict[str, Any]:
        return {
            "id": self.assoc_id,
            "tls": self.tls,
            "peer_address": self.host,
            "peer_port": self.port,
            "calling_ae": self.peer_ae,
            "called_ae": self.called_ae,
            "started": self.started_at,
        }


class DicomServer:
    """Accepts associations and serves C-ECHO and C-STORE into the archive."""

    def __init__(
        self,
        settings: Settings,
        config: ConfigStore,
        archive: Archive,
        services: Sequence[ScpService] = (),
        events: EventBus | None = None,
        *,
        storage: bool = True,
        tls_context: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self.settings = settings
        # With a context source: a TLS listener on settings.tls_port beside the plain one,
        # same AE, services and handlers (the source is asked per connection, so a new
        # certificate applies without a restart).
        self.tls_context = tls_context
        self._tls_server: tls.TLSAssociationServer | None = None
        self.services = list(services)
        # False: a listener for its services only (the print port), without Storage.
        self.storage = storage
        self.events = events
        self._association_ids = itertools.count(1)
        self._storage_listeners: list[StorageListener] = []
        self.config = config
        self.archive = archive
        self._server: ListenerServer | None = None
        self._stats: dict[int, AssociationStats] = {}
        self._lock = threading.Lock()
        self._stores_in_flight = 0
        self._closing = False
        self._draining_done = False
        # The node list as last read; used while config.json cannot be read (a hand edit in
        # progress), so access control never fails open. Validated when the daemon started.
        self._last_good_nodes: list[Node] = config.nodes()
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        settings = self.settings
        # Accept-any is process-wide in pynetdicom; the daemon owns exactly one AE.
        _config.UNRESTRICTED_STORAGE_SERVICE = settings.accept_any_storage_class
        ae = AE(ae_title=settings.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_pdu_size = settings.max_pdu
        ae.maximum_associations = settings.max_associations
        ae.require_called_aet = settings.check_called_ae
        apply_timeouts(ae, settings)
        register_storage_classes()
        ae.add_supported_context(VERIFICATION_SOP_CLASS, settings.transfer_syntaxes)
        if self.storage:
            for sop_class in STORAGE_SOP_CLASSES:
                ae.add_supported_context(sop_class, settings.transfer_syntaxes)
        for service in self.services:
            service.add_contexts(ae, settings)
        return ae

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        handlers: EventHandlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_CONN_OPEN, self._on_connection_open),
            (evt.EVT_CONN_CLOSE, self._on_connection_closed),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_DIMSE_RECV, self._on_dimse_received),
        ]
        for service in self.services:
            handlers.extend(service.handlers(self))
        # AE.start_server(block=False) with event-driven acceptors instead of polling ones.
        server = self.ae.make_server(
            (self.settings.bind_address, self.settings.port),
            evt_handlers=handlers,
            server_class=ListenerServer,
            request_handler=EventDrivenRequestHandler,
        )
        threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True).start()
        self.ae._servers.append(server)
        self._server = server
        LOG.info(
            "listening as %s on %s:%d",
            self.settings.ae_title,
            self.settings.bind_address,
            self.port,
        )
        if self.tls_context is not None and self.settings.tls_port:
            self._start_tls(handlers)

    def _start_tls(self, handlers: EventHandlers) -> None:
        # No ssl_context here: the server does the handshake in the connection's thread.
        try:
            server = self.ae.make_server(
                (self.settings.bind_address, self.settings.tls_port),
                evt_handlers=handlers,
                server_class=tls.TLSAssociationServer,
                request_handler=EventDrivenRequestHandler,
            )
        except OSError as exc:
            # The caller reports the plain port; say which listener could not start.
            raise OSError(exc.errno, f"TLS port {self.settings.tls_port}: {exc.strerror}") from exc
        assert self.tls_context is not None
        server.context_source = self.tls_context
        server.handshake_timeout = float(self.settings.association_timeout)
        server.on_failure = self._tls_failed
        threading.Thread(target=server.serve_forever, name="TLSAcceptor", daemon=True).start()
        self.ae._servers.append(server)
        self._tls_server = server
        LOG.info(
            "listening with TLS (%s, peer certificates: %s) on %s:%d",
            self.settings.tls_profile,
            self.settings.tls_peer_auth,
            self.settings.bind_address,
            self.tls_port,
        )

    @property
    def tls_port(self) -> int:
        """The TLS listener's port, 0 when there is none."""
        if self._tls_server is None:
            return 0
        return int(self._tls_server.server_address[1])

    def _tls_failed(self, failure: tls.HandshakeFailure) -> None:
        # No A-ASSOCIATE yet, so no AE title: name the configured nodes at that address.
        nodes = [n.name for n in self._last_good_nodes if n.host == failure.address]
        known = f" (node {', '.join(nodes)})" if nodes else ""
        audit.tls_handshake_failed(failure.address, failure.port, failure.reason, nodes)
        LOG.warning(
            "TLS handshake from %s:%d%s failed: %s",
            failure.address,
            failure.port,
            known,
            failure.reason,
        )
        self._publish(
            "association",
            {
                "event": "tls-failed",
                "peer_address": failure.address,
                "peer_port": failure.port,
                "nodes": nodes,
                "reason": failure.reason,
                "time": time.time(),
            },
        )

    # --- association events --------------------------------------------------------------

    @staticmethod
    def _peer(assoc: Association) -> tuple[str, str]:
        requestor = assoc.requestor
        ae_title = requestor.ae_title
        if not ae_title and requestor.primitive is not None:
            # pynetdicom copies the calling AE title from the A-ASSOCIATE-RQ only after
            # EVT_REQUESTED; access control runs in EVT_REQUESTED.
            ae_title = requestor.primitive.calling_ae_title
        return ae_title.strip(), f"{requestor.address}:{requestor.port}"

    def _reject(self, assoc: Association, reason: tuple[int, int, int], why: str) -> None:
        ae_title, address = self._peer(assoc)
        LOG.warning("association from %s at %s rejected: %s", ae_title, address, why)
        self._publish_rejected(assoc, why)
        assoc.acse.send_reject(*reason)
        # No EVT_REJECTED: its only handler, _on_rejected, would log this rejection again.
        assoc.kill()

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        calling, _address = self._peer(assoc)
        if self._closing:
            self._reject(assoc, (0x02, 0x03, 0x01), "shutting down")
            return
        if not self.settings.accept_unknown_calling_ae and not self._nodes_with_ae_title(calling):
            self._reject(assoc, REJECT_CALLING_AE, f"calling AE title {calling!r} is not known")
            return
        proposed = assoc.requestor.primitive.presentation_context_definition_list
        if self.settings.accept_any_storage_class and any(
            cx.abstract_syntax == DICOMSCOPE_SHUTDOWN_SOP_CLASS for cx in proposed
        ):
            # Accept-any would otherwise take DICOMscope's private IPC class as storage.
            self._reject(assoc, REJECT_NO_REASON, "proposes DICOMscope's private IPC class")
            return
        if self.settings.accept_any_storage_class:
            self._restrict_to_our_transfer_syntaxes(proposed)

    def _restrict_to_our_transfer_syntaxes(self, proposed: list[PresentationContext]) -> None:
        """Make accept-any negotiation honour ``transfer_syntaxes`` and its order.

        pynetdicom's accept-any negotiation accepts every storage context with the first
        transfer syntax the peer proposed, whatever we support or prefer. So each proposal is
        cut down to ours, in our order. A storage context with none of ours is relabelled as
        Verification, which the normal negotiation then rejects with 0x04 (transfer syntaxes
        not supported); the A-ASSOCIATE-AC carries no abstract syntax, so the peer sees exactly
        that rejection.
        """
        ours = self.settings.transfer_syntaxes
        for cx in proposed:
            wanted = [ts for ts in ours if ts in cx.transfer_syntax]
            if wanted:
                cx.transfer_syntax = wanted
            elif _negotiated_as_storage(str(cx.abstract_syntax)):
                cx.abstract_syntax = VERIFICATION_SOP_CLASS

    def _on_connection_open(self, event: evt.Event) -> None:
        # pynetdicom means accepted sockets to time out after network_timeout but sets that on
        # the listening socket only, and accept() does not pass it on. Without it a peer that
        # stops in the middle of a PDU holds its thread, and an association slot, for ever.
        transport = event.assoc.dul.socket
        if transport is not None and transport.socket is not None:
            transport.socket.settimeout(self.settings.network_timeout)
            # Responses are small writes (C-FIND pendings, C-STORE statuses); with Nagle's
            # algorithm each waits for the peer's delayed ACK, about 40 ms.
            try:
                transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def _on_connection_closed(self, event: evt.Event) -> None:
        assoc = event.assoc
        stats = self._stats.get(id(assoc))
        if stats is not None:
            # Normally EVT_RELEASED or EVT_ABORTED closed it already, or is about to on the
            # association's thread; if neither did after a moment, the connection was lost.
            timer = threading.Timer(2.0, self._connection_lost, (id(assoc), stats))
            timer.daemon = True
            timer.start()
        # pynetdicom's acceptor thread waits for an A-ASSOCIATE-RQ until the ACSE timeout even
        # when the connection is already gone (a port probe, a malformed PDU), and until then
        # it counts against max_associations. An empty item ends that wait now.
        if (
            assoc.is_acceptor
            and assoc.requestor.primitive is None
            and assoc.dul.to_user_queue.empty()
        ):
            assoc.dul.to_user_queue.put(None)

    def _nodes_with_ae_title(self, ae_title: str) -> list[Node]:
        try:
            self._last_good_nodes = self.config.nodes()
        except Exception as exc:  # ConfigError, or any other way a hand edit can break it
            LOG.error("configuration unreadable, using the node list read before: %s", exc)
        return [node for node in self._last_good_nodes if node.ae_title == ae_title.strip()]

    def nodes_with_ae_title(self, ae_title: str) -> list[Node]:
        """The configured nodes with this AE title; the node list read before while
        config.json cannot be read."""
        return self._nodes_with_ae_title(ae_title)

    def services_for(self, calling_ae: str) -> frozenset[str]:
        """A configured node may use only its listed services; an unknown peer that the access
        policy lets in may use all of them."""
        nodes = self._nodes_with_ae_title(calling_ae)
        if not nodes:
            return frozenset(NODE_SERVICES)
        return frozenset(service for node in nodes for service in node.services)

    def _on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        ae_title, address = self._peer(assoc)
        # Looked up once per association, so the C-STORE path never reads the configuration.
        stats = AssociationStats(
            ae_title,
            address,
            allowed=self.services_for(ae_title),
            assoc_id=next(self._association_ids),
            host=str(assoc.requestor.address),
            port=int(assoc.requestor.port or 0),
            called_ae=self._called(assoc),
            tls=isinstance(getattr(assoc.dul.socket, "socket", None), ssl.SSLSocket),
        )
        with self._lock:
            self._stats[id(assoc)] = stats
        self._publish("association", {"event": "opened", **stats.info()})
        audit.association_accepted(assoc)

    def refuse_service(self, event: evt.Event, service: str) -> Dataset | None:
        stats = self._stats.get(id(event.assoc))
        if stats is None or service in stats.allowed:
            return None
        stats.failed += 1
        LOG.error(
            "%s from %s at %s refused: the node is not allowed to use %s",
            service,
            stats.peer_ae,
            stats.address,
            service,
        )
        return error_status(STATUS_NOT_AUTHORIZED, f"{stats.peer_ae} may not use {service}")

    def _on_rejected(self, event: evt.Event) -> None:
        rejection = event.assoc.acceptor.primitive
        if rejection is None or self._stats.get(id(event.assoc)):
            return
        ae_title, address = self._peer(event.assoc)
        LOG.info(
            "association from %s at %s rejected (result %s, source %s, reason %s)",
            ae_title,
            address,
            rejection.result,
            rejection.result_source,
            rejection.diagnostic,
        )
        self._publish_rejected(
            event.assoc,
            f"result {rejection.result}, source {rejection.result_source}, "
            f"reason {rejection.diagnostic}",
        )

    def _on_closed(self, event: evt.Event) -> None:
        with self._lock:
            stats = self._stats.pop(id(event.assoc), None)
        if stats is None:
            return
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        self._closed(stats, how)

    def _connection_lost(self, key: int, stats: AssociationStats) -> None:
        with self._lock:
            if self._stats.get(key) is not stats:
                return
            del self._stats[key]
        self._closed(stats, "aborted")

    def _closed(self, stats: AssociationStats, how: str) -> None:
        duration = time.monotonic() - stats.started
        stats.received.failed = stats.failed
        audit.instances_received(stats.peer_ae, stats.host, stats.called_ae, stats.received, how)
        LOG.info(
            "association from %s at %s %s after %.1f s: %d stored, %d failed",
            stats.peer_ae,
            stats.address,
            how,
            duration,
            stats.stored,
            stats.failed,
        )
        self._publish(
            "association",
            {
                "event": "closed",
                **stats.info(),
                "how": how,
                "duration": duration,
                "stored": stats.stored,
                "failed": stats.failed,
            },
        )

    def _on_dimse_received(self, event: evt.Event) -> None:
        stats = self._stats.get(id(event.assoc))
        name = type(event.message).__name__  # C_STORE_RQ, C_FIND_RQ, N_ACTION_RQ ...
        if stats is None or not name.endswith("_RQ"):
            return
        op = name[:-3].replace("_", "-")
        stats.last_op = op
        stats.last_op_at = time.time()
        stats.ops[op] = stats.ops.get(op, 0) + 1

    # --- control API hooks ---------------------------------------------------------------

    def associations(self) -> list[dict[str, Any]]:
        """The associations open now, oldest first: peer, AE titles, when it started, the
        last request received and the number of requests of each kind, instances stored and
        failed."""
        with self._lock:
            current = list(self._stats.values())
        now = time.monotonic()
        return [
            {
                **stats.info(),
                "duration": now - stats.started,
                "last_op": stats.last_op,
                "last_op_at": stats.last_op_at,
                "ops": dict(stats.ops),
                "stored": stats.stored,
                "failed": stats.failed,
            }
            for stats in sorted(current, key=lambda s: s.assoc_id)
        ]

    def add_storage_listener(self, listener: StorageListener) -> None:
        """Call ``listener(info)`` after every instance stored with success (duplicates
        included), on the association's thread before the C-STORE response is sent: keep it
        short. ``info``: sop_instance_uid, sop_class_uid, study_instance_uid,
        series_instance_uid, modality, patient_id, patient_name, calling_ae, called_ae,
        association_id, transfer_syntax, path, duplicate, kept_existing. An exception in a
        listener is logged and never fails the C-STORE."""
        with self._lock:
            self._storage_listeners.append(listener)

    def _publish(self, topic: str, data: dict[str, Any]) -> None:
        if self.events is None:
            return
        try:
            self.events.publish(topic, data)
        except Exception:
            LOG.exception("publishing a %s event failed", topic)

    @staticmethod
    def _called(assoc: Association) -> str:
        primitive = assoc.requestor.primitive
        return str(primitive.called_ae_title).strip() if primitive is not None else ""

    def _publish_rejected(self, assoc: Association, why: str) -> None:
        audit.association_rejected(assoc, why)
        if self.events is None:
            return
        calling, _address = self._peer(assoc)
        requestor = assoc.requestor
        self._publish(
            "association",
            {
                "event": "closed",
                "id": next(self._association_ids),
                "peer_address": str(requestor.address),
                "peer_port": int(requestor.port or 0),
                "calling_ae": calling,
                "called_ae": self._called(assoc),
                "started": time.time(),
                "how": "rejected",
                "reason": why,
                "duration": 0.0,
                "stored": 0,
                "failed": 0,
            },
        )

    def _store_done(
        self,
        event: evt.Event,
        calling_ae: str,
        sop_class: str,
        sop_instance: str,
        status: int,
        comment: str = "",
        outcome: StoreOutcome | None = None,
    ) -> None:
        """Report a C-STORE: a storage event, and the listeners when it was stored.
        Never raises: nothing here may change the C-STORE's status."""
        if self.events is None and not self._storage_listeners:
            return
        try:
            ds = outcome.dataset if outcome is not None else None
            stats = self._stats.get(id(event.assoc))
            info: dict[str, Any] = {
                "sop_instance_uid": sop_instance,
                "sop_class_uid": sop_class,
                "study_instance_uid": _attribute(ds, "StudyInstanceUID"),
                "series_instance_uid": _attribute(ds, "SeriesInstanceUID"),
                "modality": _attribute(ds, "Modality"),
                "patient_id": _attribute(ds, "PatientID"),
                "patient_name": _attribute(ds, "PatientName"),
                "calling_ae": calling_ae,
                "called_ae": stats.called_ae if stats else self._called(event.assoc),
                "association_id": stats.assoc_id if stats else None,
            }
            self._publish(
                "storage",
                {
                    **info,
                    "status": status,
                    "ok": outcome is not None,
                    "comment": comment,
                    "duplicate": bool(outcome and outcome.duplicate),
                },
            )
            if outcome is None:
                return
            info.update(
                path=str(outcome.path),
                transfer_syntax=str(event.context.transfer_syntax),
                duplicate=outcome.duplicate,
                kept_existing=outcome.kept_existing,
            )
            with self._lock:
                listeners = list(self._storage_listeners)
        except Exception:
            LOG.exception("reporting the C-STORE of %s failed", sop_instance)
            return
        for listener in listeners:
            try:
                listener(dict(info))
            except Exception:
                LOG.exception(
                    "a storage listener failed on %s (the instance is stored)", sop_instance
                )

    # --- DIMSE services ------------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int | Dataset:
        return self.refuse_service(event, "echo") or 0x0000

    def _on_store(self, event: evt.Event) -> int | Dataset:
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        sop_instance = str(request.AffectedSOPInstanceUID)
        refused = self.refuse_service(event, "store")
        if refused is None and not self.storage:
            # Only reachable when accept_any_storage_class (process-wide in pynetdicom) let a
            # storage context through on a listener that does not store.
            refused = error_status(0x0122, "this listener does not store instances")
        ae_title, address = self._peer(event.assoc)
        if refused is not None:
            self._store_done(
                event, ae_title, sop_class, sop_instance, refused.Status, refused.ErrorComment
            )
            return refused
        stats = self._stats.get(id(event.assoc))
        with self._lock:
            draining_done = self._draining_done
            if not draining_done:
                self._stores_in_flight += 1
        if draining_done:
            LOG.error(
                "C-STORE from %s at %s of %s failed with 0x%04X: shutting down",
                ae_title,
                address,
                sop_instance,
                STATUS_OUT_OF_RESOURCES,
            )
            self._store_done(
                event, ae_title, sop_class, sop_instance, STATUS_OUT_OF_RESOURCES, "shutting down"
            )
            return error_status(STATUS_OUT_OF_RESOURCES, "shutting down")
        try:
            outcome = self.archive.store_encoded(
                event.encoded_dataset(include_meta=False),
                sop_class_uid=sop_class,
                sop_instance_uid=sop_instance,
                transfer_syntax=str(event.context.transfer_syntax),
                source_ae=ae_title,
            )
            # Inside the in-flight count: shutdown waits for the listeners too.
            self._store_done(event, ae_title, sop_class, sop_instance, 0x0000, outcome=outcome)
            if stats:
                stats.received.add(outcome.dataset, sop_class)
        except StoreRefused as exc:
            if stats:
                stats.failed += 1
            LOG.error(
                "C-STORE from %s at %s of %s failed with 0x%04X: %s",
                ae_title,
                address,
                sop_instance,
                exc.status,
                exc.comment,
            )
            self._store_done(event, ae_title, sop_class, sop_instance, exc.status, exc.comment)
            return error_status(exc.status, exc.comment)
        except Exception as exc:
            if stats:
                stats.failed += 1
            LOG.exception("C-STORE from %s at %s of %s failed", ae_title, address, sop_instance)
            comment = f"internal error: {exc}"
            self._store_done(
                event, ae_title, sop_class, sop_instance, STATUS_OUT_OF_RESOURCES, comment
            )
            return error_status(STATUS_OUT_OF_RESOURCES, comment)
        finally:
            with self._lock:
                self._stores_in_flight -= 1
        if stats:
            stats.stored += 1
        return 0x0000

    # --- shutdown ------------------------------------------------------------------------

    def active_associations(self) -> int:
        # A connection that never sent an A-ASSOCIATE-RQ is not work in flight.
        return len([a for a in self.ae.active_associations if a.is_acceptor and a.is_established])

    def shutdown(self, timeout: float) -> None:
        """Stop listening, let running associations finish up to ``timeout``, then abort them.

        A C-STORE being written when the timeout expires is completed before the abort, so a
        peer never sees 0000 for an instance that is not on disk.
        """
        self._closing = True
        if self._server is not None:
            # Stop accepting connections; running associations keep their threads.
            self._server.shutdown()
        if self._tls_server is not None:
            self._tls_server.shutdown()
        deadline = time.monotonic() + timeout
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            self._draining_done = True
        while True:
            with self._lock:
                if self._stores_in_flight == 0:
                    break
            time.sleep(0.01)
        # Never block on a peer here: a blocking abort waits for the connection's reader thread,
        # which a peer stalled inside a PDU keeps in recv() until the network timeout.
        for assoc in list(self.ae.active_associations):
            ae_title, address = self._peer(assoc)
            LOG.warning("aborting association from %s at %s at shutdown", ae_title, address)
            if assoc.is_established:
                assoc.abort(block=False)
            else:  # no association yet, nothing to abort: just hang up
                _hang_up(assoc)
        grace = time.monotonic() + 1.0
        while self.ae.active_associations and time.monotonic() < grace:
            time.sleep(0.05)
        for assoc in self.ae.active_associations:
            _hang_up(assoc)  # still there: stalled inside a PDU
        self.ae.shutdown()
