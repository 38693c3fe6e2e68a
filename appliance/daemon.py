"""`dicom-appliance serve`: the daemon in the foreground."""

from __future__ import annotations

import logging
import signal
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType

from appliance import audit, tls
from appliance.anonymize_jobs import register_anonymize
from appliance.api import Operations
from appliance.archive import Archive
from appliance.commitment import CommitmentService
from appliance.config import ConfigError, ConfigStore, Settings
from appliance.control import ControlServer, ControlSocketError, control_socket_path
from appliance.drives import DriveWatcher
from appliance.events import EventBus
from appliance.fileio import remove_stale_partials
from appliance.job_engine import JobEngine
from appliance.job_store import JobStore
from appliance.media_burn import register_burn
from appliance.media_import import register_import
from appliance.network import DicomServer
from appliance.print_jobs import PrinterStatusBoard, register_print
from appliance.print_scp import PrintService
from appliance.qr_scp import FindService
from appliance.retrieve_scp import RetrieveService
from appliance.routing import Router
from appliance.sd_notify import sd_notify
from appliance.watchdog import Watchdog

LOG = logging.getLogger("appliance.daemon")


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pynetdicom narrates every PDU at INFO; our own lines say what an operator needs.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def effective_settings(
    store: ConfigStore, port: int | None = None, ae_title: str | None = None
) -> Settings:
    """The stored settings with this run's command-line overrides, validated like the file."""
    settings = store.settings()
    if port is not None:
        settings.port = int(Settings.validate_value("port", port))  # type: ignore[arg-type]
    if ae_title is not None:
        settings.ae_title = str(Settings.validate_value("ae_title", ae_title))
    return settings


def tls_listener_context(data_dir: Path, settings: Settings) -> Callable[[], ssl.SSLContext] | None:
    """The TLS listener's context source, or None (logged) when TLS is off or unusable."""
    tls.use_data_dir(data_dir)
    if not settings.tls_port:
        LOG.info("TLS listener off (tls_port is 0)")
        return None
    if not tls.has_identity(data_dir):
        LOG.info(
            "TLS listener off: no key and certificate in %s (dicom-appliance tls generate)",
            tls.tls_dir(data_dir),
        )
        return None
    try:
        tls.cached_server_context(data_dir, settings)
    except (tls.TLSConfigError, ssl.SSLError, OSError) as exc:
        LOG.error("TLS listener off: %s", exc)
        return None
    warning = tls.expiry_warning(data_dir, settings.tls_expiry_warning_days)
    if warning:
        LOG.warning("%s", warning)
    return lambda: tls.cached_server_context(data_dir, settings)


def serve(data_dir: Path, *, port: int | None = None, ae_title: str | None = None) -> int:
    configure_logging()
    if Path(data_dir).is_dir():
        for leftover in remove_stale_partials(data_dir):
            LOG.warning("removed %s, left by a writer that was killed", leftover.name)
    try:
        store = ConfigStore(data_dir)
        settings = effective_settings(store, port, ae_title)
    except ConfigError as exc:
        LOG.error("refusing to start: bad configuration in %s: %s", data_dir, exc)
        return 2
    audit.configure(data_dir, settings)

    # Installed before recovery and the listener, so an early SIGTERM still exits cleanly.
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        LOG.info("received %s, finishing in-flight work", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    archive = Archive(
        data_dir,
        duplicate_policy=settings.duplicate_policy,
        disk_reserve_bytes=settings.disk_reserve_mb * 2**20,
    )
    archive.recover()
    events = EventBus()
    jobs = JobStore(data_dir)
    engine = JobEngine(jobs, store, archive, events, data_dir)
    printer_board = PrinterStatusBoard(events)
    register_print(engine, printer_board, archive)
    commitment = CommitmentService(data_dir)
    # Films printed to us are stored, then queued as print jobs to the mapped printer.
    print_service = PrintService(
        store, archive, submit=engine.submit, printer_status=printer_board.get
    )
    server = DicomServer(
        settings,
        store,
        archive,
        services=[FindService(), RetrieveService(), commitment, print_service],
        events=events,
        tls_context=tls_listener_context(data_dir, settings),
    )
    # The print port: Verification and print only, answering as print_ae_title.
    print_server = None
    if settings.print_port:
        print_server = DicomServer(
            replace(settings, port=settings.print_port, ae_title=settings.print_ae_title),
            store,
            archive,
            services=[print_service],
            events=events,
            storage=False,
        )
    router = Router(store, engine.submit, archive, data_dir)
    # Optical drives through udev; without udev (a container) it warns and lists none.
    drive_watcher = DriveWatcher(events, debounce=settings.media_debounce_seconds)
    register_burn(engine, archive, drive_watcher)
    register_anonymize(engine, archive)
    register_import(engine, archive)
    server.add_storage_listener(router.on_stored)
    # Optional: signatures of received objects checked after storage (never rejects).
    from appliance.signatures import attach_receipt_verification

    signature_checker = attach_receipt_verification(server, data_dir, settings)
    control = ControlServer(
        control_socket_path(data_dir),
        events,
        group=settings.control_group or None,
        passwords=store,
        service_idle_minutes=lambda: store.settings().service_idle_minutes,
    )
    Operations(
        data_dir=data_dir,
        config=store,
        archive=archive,
        engine=engine,
        server=server,
        router=router,
        printer_board=printer_board,
        drive_watcher=drive_watcher,
    ).register(control)

    def close_stores() -> None:
        router.close()
        jobs.close()
        archive.close()
        store.close()

    # WATCHDOG=1 only while the threads these start calls begin are running.
    watchdog = Watchdog.from_environment()
    # The control socket comes up before the DICOM port, so whoever sees the port can ask it.
    try:
        watchdog.watch_threads("control API", control.start, "ControlAccept")
    except ControlSocketError as exc:
        LOG.error("cannot open the control socket: %s", exc)
        close_stores()
        return 1
    try:
        watchdog.watch_threads("DICOM listener", server.start, "AcceptorServer", "TLSAcceptor")
    except OSError as exc:
        LOG.error("cannot listen on %s:%d: %s", settings.bind_address, settings.port, exc)
        control.stop()
        close_stores()
        return 1
    if print_server is not None:
        try:
            watchdog.watch_threads("print listener", print_server.start, "AcceptorServer")
        except OSError as exc:
            LOG.error(
                "cannot listen for print on %s:%d: %s",
                settings.bind_address,
                settings.print_port,
                exc,
            )
            server.shutdown(0)
            control.stop()
            close_stores()
            return 1
    # Reports left undelivered by the last run go out now; jobs left running are queued again.
    commitment.start(server)
    watchdog.watch_threads("job scheduler", engine.start, "job-scheduler")
    watchdog.watch_threads("auto-routing", router.start, "Router")
    drive_watcher.start()

    LOG.info("ready: data folder %s, %d instances archived", data_dir, archive.count())
    audit.application(start=True)
    sd_notify(f"READY=1\nSTATUS=listening as {settings.ae_title} on port {server.port}")
    # Wake up now and then: a signal delivered to one of pynetdicom's threads would not
    # interrupt a wait without timeout in the main thread, and the handler would never run.
    # The loop also proves the services alive to systemd's watchdog.
    while not stop.wait(timeout=0.5):
        watchdog.tick()
    sd_notify("STOPPING=1")
    drive_watcher.stop()
    router.stop()
    # Running jobs stop between instances and stay queued for the next start.
    engine.stop(settings.shutdown_timeout)
    commitment.stop()
    if print_server is not None:
        print_server.shutdown(settings.shutdown_timeout)
    server.shutdown(settings.shutdown_timeout)
    if signature_checker is not None:
        signature_checker.stop()
    control.stop()
    commitment.close()
    close_stores()
    audit.application(start=False)
    audit.shutdown()
    LOG.info("stopped")
    return 0
