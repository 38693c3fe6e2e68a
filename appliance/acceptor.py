"""Event-driven association acceptor on top of pynetdicom.

pynetdicom runs two polling loops per association: the DUL reactor sleeps 1 ms whenever the
socket has no data, and the association reactor sleeps 1 ms before every look at its queues.
Each C-STORE crosses those loops three times (request complete, response queued, next request
arriving), so the sleeps add milliseconds per instance, and eight idle associations wake the
process 16 000 times a second.

The subclasses here keep pynetdicom's state machine and service code and only change how the
loops wait: the DUL blocks in ``select()`` on its socket plus a wake-up socket that other threads
poke when they queue a primitive for it, and the association reactor blocks on an event set
whenever the DUL hands it a message or primitive. Both still wake every ``POLL_INTERVAL`` to check
their timers (ARTIM, network idle timeout), which run in seconds.

``EventDrivenRequestHandler`` builds these associations; pass it to
``ThreadedAssociationServer`` through ``AE.make_server(..., request_handler=...)``.
The reactor bodies follow pynetdicom 3.0's (``DULServiceProvider.run_reactor``,
``Association._run_reactor``, ``RequestHandler._create_association``).
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import threading
import time
from copy import deepcopy
from datetime import datetime
from typing import Any

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

LOG = logging.getLogger("pynetdicom.dul")

# Longest a reactor blocks before it looks at its timers again, in seconds.
POLL_INTERVAL = 0.05

# Largest PDU body read into a buffer allocated up front (the largest max_pdu we allow).
_PREALLOCATE_LIMIT = 131072


class _NotifyingQueue(queue.Queue):
    """A FIFO queue that calls ``notify()`` after every item it receives."""

    def __init__(self, notify: Any) -> None:
        super().__init__()
        self._notify = notify

    def _put(self, item: Any) -> None:
        super()._put(item)
        self._notify()


class _ReadIntoSocket(AssociationSocket):
    """Reads a PDU with one ``recv_into()`` per arriving segment, not 4 KiB ``recv()`` calls.

    The buffer is sized from the PDU header, which the peer chose: lengths over
    ``_PREALLOCATE_LIMIT`` go through pynetdicom's loop, which only grows with the data that
    actually arrives, so a forged length cannot make us allocate gigabytes.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > _PREALLOCATE_LIMIT:
            return super().recv(nr_bytes)
        sock = self.socket
        assert sock is not None
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        while received < nr_bytes:
            count = sock.recv_into(view[received:], nr_bytes - received)
            if not count:
                # Connection closed: return what arrived, as pynetdicom's recv() does.
                del view
                del buffer[received:]
                return buffer
            received += count
        return buffer


class EventDrivenDUL(DULServiceProvider):
    """DUL service provider that sleeps in ``select()`` instead of 1 ms naps."""

    def __init__(self, assoc: Association) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._killed = False
        super().__init__(assoc)
        self.to_provider_queue = _NotifyingQueue(self.wake)
        self.event_queue = _NotifyingQueue(self._wake_from_other_thread)

    # The base class and Association.kill() stop the reactor by setting this flag.
    @property
    def _kill_thread(self) -> bool:
        return self._killed

    @_kill_thread.setter
    def _kill_thread(self, value: bool) -> None:
        self._killed = value
        if value:
            self.wake()

    def wake(self) -> None:
        """Make the reactor look at its queues now."""
        try:
            self._wake_w.send(b"\0")
        except OSError:  # buffer full (a wake-up is pending anyway) or already closed
            pass

    def _wake_from_other_thread(self) -> None:
        if threading.get_ident() != self.ident:
            self.wake()

    def _wait_for_work(self) -> None:
        if self.event_queue.qsize() or self.to_provider_queue.qsize():
            return
        sock = self.socket.socket if self.socket is not None else None
        if sock is None or not self.socket._is_connected:  # type: ignore[union-attr]
            time.sleep(self._run_loop_delay)
            return
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        try:
            ready, _, _ = select.select([sock, self._wake_r], [], [], POLL_INTERVAL)
        except (OSError, ValueError):
            return  # the socket closed under us; the reactor notices on its next step
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:
                pass

    def run_reactor(self) -> None:
        try:
            self._run_reactor()
        finally:
            self._wake_r.close()
            self._wake_w.close()

    def _run_reactor(self) -> None:
        self._idle_timer.start()
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                idle = True
            if idle:
                self._wait_for_work()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                # Either send one queued primitive or read one PDU per step.
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                LOG.error("Exception in DUL.run(), aborting association")
                LOG.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                if self.socket is not None:
                    self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False


class EventDrivenAssociation(Association):
    """Acceptor association whose reactor waits on an event instead of polling every 1 ms."""

    def __init__(self, ae: Any, mode: str) -> None:
        super().__init__(ae, mode)
        self._activity = threading.Event()
        # Replace the polling DUL (never started) and re-apply the timeouts it carries.
        self.dul = EventDrivenDUL(self)
        self.dul.to_user_queue = _NotifyingQueue(self._activity.set)
        self.dimse.msg_queue = _NotifyingQueue(self._activity.set)
        self.acse_timeout = self.ae.acse_timeout
        self.network_timeout = self.ae.network_timeout

    def kill(self) -> None:
        self._activity.set()
        super().kill()

    def _run_reactor(self) -> None:
        self._is_paused = False
        wait = True
        while not self._kill:
            if wait:
                self._activity.wait(POLL_INTERVAL)
            # Clear before looking: anything queued from here on sets the event again.
            self._activity.clear()

            # Paused while the local user sends DIMSE or ACSE messages on this association.
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, context_id)  # type: ignore[arg-type]
            wait = msg is None

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                LOG.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                LOG.info(log_msg)
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                LOG.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class EventDrivenRequestHandler(RequestHandler):
    """Builds ``EventDrivenAssociation`` acceptors; otherwise pynetdicom's request handler."""

    def _create_association(self) -> Association:
        assoc = EventDrivenAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"

        sock = _ReadIntoSocket(assoc, client_socket=self.request)
        assoc.set_socket(sock)

        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote

        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    assoc.bind(event, handler[0], handler[1])
        return assoc


# Linux's IP_FREEBIND (ip(7)); the socket module does not always name it.
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


class ListenerServer(ThreadedAssociationServer):
    """pynetdicom's threaded server that may bind an address the host does not have yet.

    The daemon starts before the network is configured (a box must answer on its DICOM port as
    soon as possible); with ``bind_address`` set to one of the box's addresses, that address may
    come only later from DHCP. IP_FREEBIND lets the bind succeed now, and the listener answers
    once the address exists, as systemd's FreeBind= does for socket units.
    """

    def server_bind(self) -> None:
        if self.socket.family in (socket.AF_INET, socket.AF_INET6):
            try:
                self.socket.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            except OSError:
                pass  # not Linux: bind as usual
        super().server_bind()
