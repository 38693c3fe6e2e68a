"""The control API's operations: what the console and the CLI may ask of the running daemon.

``Operations.register`` binds each operation name to the engine part that answers it. Reads, job
actions, browsing the archive and querying remote nodes are open to technologists; changing
configuration and nodes is service-only. The service-mode ops (``auth.*``) are the control
server's own (``appliance.control``): they need the connection.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance import __version__, browse
from appliance.anon_api import AnonOperations
from appliance.archive import INDEX_FILE, Archive
from appliance.backup_api import BackupOperations
from appliance.config import ConfigError, ConfigStore, Node, Settings
from appliance.control import ApiError, Caller, ControlServer
from appliance.job_engine import JobEngine
from appliance.jobs import ACTIONS, JOB_KINDS, Job, JobError, JobState
from appliance.media_api import MediaOperations
from appliance.network import DicomServer
from appliance.print_jobs import PrinterStatusBoard, PrintOperations
from appliance.security_api import SecurityOperations

if TYPE_CHECKING:
    from appliance.drives import DriveWatcher
    from appliance.routing import Router

# Job kinds an operator may queue through the API; the others are queued by their own screens
# and services (burn, import, anonymize register theirs when they exist).
SUBMITTABLE_KINDS = (
    "send",
    "retrieve",
    "commitment",
    "forward",
    "print",
    "burn",
    "import",
    "anonymize",
)
MAX_LIST = 1000
# qr.find: levels the console drills through (Study Root), and the most matches it asks for.
QR_FIND_LEVELS = ("study", "series")
QR_FIND_DEFAULT_LIMIT = 500
QR_FIND_MAX_LIMIT = 5000


def _int_arg(args: dict[str, Any], name: str, default: int | None = None) -> int:
    value = args.get(name, default)
    if value is None:
        raise ApiError("bad-request", f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ApiError("bad-request", f"{name} must be an integer")
    try:
        return int(value)
    except ValueError:
        raise ApiError("bad-request", f"{name} must be an integer, not {value!r}") from None


def _str_list(args: dict[str, Any], name: str) -> list[str] | None:
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError("bad-request", f"{name} must be a list of strings")
    return value


def _str_arg(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError("bad-request", f"{name} is required (text)")
    return value


def _opt_str(args: dict[str, Any], name: str) -> str | None:
    """An optional text argument: None when absent, null or empty."""
    value = args.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError("bad-request", f"{name} must be text")
    return value.strip() or None


def job_detail(job: Job) -> dict[str, Any]:
    doc = job.to_doc()
    doc["counts"] = job.counts()
    return doc


class Operations:
    """The daemon's parts, and one method per operation."""

    def __init__(
        self,
        *,
        data_dir: Path,
        config: ConfigStore,
        archive: Archive,
        engine: JobEngine,
        server: DicomServer,
        started: float | None = None,
        router: Router | None = None,
        printer_board: PrinterStatusBoard | None = None,
        drive_watcher: DriveWatcher | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.drive_watcher = drive_watcher
        self.printer_board = printer_board or PrinterStatusBoard(engine.events)
        self.config = config
        self.archive = archive
        self.engine = engine
        self.server = server
        self.router = router
        self.started = started if started is not None else time.time()
        self.control: ControlServer | None = None

    def register(self, control: ControlServer) -> None:
        open_to_all = {
            "status": self.status,
            "jobs.list": self.jobs_list,
            "jobs.show": self.jobs_show,
            "jobs.submit": self.jobs_submit,
            "jobs.action": self.jobs_action,
            "nodes.list": self.nodes_list,
            "nodes.echo": self.nodes_echo,
            "config.get": self.config_get,
            "retry.list": self.retry_list,
            "archive.studies": self.archive_studies,
            "archive.series": self.archive_series,
            "qr.find": self.qr_find,
        }
        service_only = {
            "config.set": self.config_set,
            "nodes.add": self.nodes_add,
            "nodes.remove": self.nodes_remove,
            "retry.set": self.retry_set,
            "retry.clear": self.retry_clear,
        }
        self.control = control
        for op, handler in open_to_all.items():
            control.register(op, handler)
        for op, handler in service_only.items():
            control.register(op, handler, service_only=True)
        PrintOperations(
            data_dir=self.data_dir,
            config=self.config,
            archive=self.archive,
            engine=self.engine,
            board=self.printer_board,
        ).register(control)
        MediaOperations(
            data_dir=self.data_dir,
            config=self.config,
            archive=self.archive,
            engine=self.engine,
            watcher=self.drive_watcher,
        ).register(control)
        SecurityOperations(data_dir=self.data_dir, config=self.config).register(control)
        AnonOperations(
            data_dir=self.data_dir, config=self.config, archive=self.archive, engine=self.engine
        ).register(control)
        BackupOperations(data_dir=self.data_dir, engine=self.engine).register(control)

    # --- status --------------------------------------------------------------------------

    def status(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        settings = self.config.settings()
        usage = shutil.disk_usage(self.data_dir)
        reserve = settings.disk_reserve_mb * 2**20
        counts = self.engine.counts()
        return {
            "version": __version__,
            "data_dir": str(self.data_dir),
            "uptime": round(time.time() - self.started, 1),
            "role": caller.role,
            "services": [
                {
                    "name": "dicom",
                    "ae_title": self.server.settings.ae_title,
                    "bind_address": settings.bind_address,
                    "port": self.server.port,
                    "state": "listening",
                },
            ],
            "associations": self.server.associations(),
            "disk": {
                "path": str(self.data_dir),
                "total": usage.total,
                "used": usage.used,
                "free": usage.free,
                "reserve": reserve,
                "low": usage.free < reserve,
            },
            "archive": {"instances": self.archive.count()},
            "jobs": {state.value: counts.get(state.value, 0) for state in JobState},
            "service_password_set": self.config.service_password_set(),
            "auth": None if self.control is None else self.control.auth_state(caller),
            "routing": {"pending": None if self.router is None else len(self.router.pending())},
        }

    # --- jobs ----------------------------------------------------------------------------

    def jobs_list(self, args: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        limit = _int_arg(args, "limit", 50)
        if not 1 <= limit <= MAX_LIST:
            raise ApiError("bad-request", f"limit must be in 1..{MAX_LIST}")
        states = _str_list(args, "states")
        for state in states or []:
            if state not in {s.value for s in JobState}:
                raise ApiError("invalid", f"unknown state {state!r}")
        kinds = _str_list(args, "kinds")
        for kind in kinds or []:
            if kind not in JOB_KINDS:
                raise ApiError("invalid", f"unknown job kind {kind!r}")
        before = args.get("before_id")
        jobs = self.engine.list(
            limit=limit,
            states=states,
            kinds=kinds,
            target=args.get("target") if isinstance(args.get("target"), str) else None,
            before_id=None if before is None else _int_arg(args, "before_id"),
        )
        return [job.brief() for job in jobs]

    def _job(self, args: dict[str, Any]) -> Job:
        job_id = _int_arg(args, "id")
        job = self.engine.get(job_id)
        if job is None:
            raise ApiError("not-found", f"no job {job_id}")
        return job

    def jobs_show(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return job_detail(self._job(args))

    def jobs_submit(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        kind = _str_arg(args, "kind")
        if kind not in SUBMITTABLE_KINDS:
            raise ApiError("invalid", f"{kind!r} jobs cannot be queued here: {SUBMITTABLE_KINDS}")
        target = _str_arg(args, "target")
        self._target(kind, target)
        params = args.get("params", {})
        if not isinstance(params, dict):
            raise ApiError("bad-request", "params must be an object")
        summary = args.get("summary")
        if summary is not None and not isinstance(summary, dict):
            raise ApiError("bad-request", "summary must be an object")
        priority = _int_arg(args, "priority", 0)
        try:
            job = self.engine.submit(kind, target, params, priority=priority, summary=summary)
        except JobError as exc:
            raise ApiError("invalid", str(exc)) from None
        return job.brief()

    def jobs_action(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        job = self._job(args)
        action = _str_arg(args, "action")
        if action not in ACTIONS:
            raise ApiError("invalid", f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
        extra: dict[str, Any] = {}
        if action == "reroute":
            target = _str_arg(args, "target")
            self._target(job.kind, target)
            extra["target"] = target
        if action == "priority":
            extra["priority"] = _int_arg(args, "priority")
        try:
            return self.engine.act(job.id, action, **extra).brief()
        except JobError as exc:
            raise ApiError("invalid", str(exc)) from None

    # --- nodes and configuration ---------------------------------------------------------

    def _target(self, kind: str, name: str) -> None:
        """A job's target: a configured printer for print jobs, a drive device for burn jobs,
        "media" for import jobs and "archive" for anonymize jobs (checked by their
        validators), else a configured node."""
        if kind in ("burn", "import", "anonymize"):
            return
        if kind != "print":
            self._node(name)
            return
        try:
            self.config.printer(name)
        except ConfigError:
            raise ApiError("not-found", f"no printer named {name!r}") from None

    def _node(self, name: str) -> Node:
        try:
            return self.config.node(name)
        except ConfigError:
            raise ApiError("not-found", f"no node named {name!r}") from None

    def nodes_list(self, args: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        return [asdict(node) for node in self.config.nodes()]

    def nodes_echo(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        from appliance import scu

        node = self._node(_str_arg(args, "name"))
        started = time.monotonic()
        result = scu.echo(self.config.settings(), node)
        return {
            "ok": result.ok,
            "message": result.describe(),
            "seconds": round(time.monotonic() - started, 4),
        }

    def nodes_add(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        fields = args.get("node")
        if not isinstance(fields, dict):
            raise ApiError("bad-request", "node must be an object of node fields")
        try:
            node = Node.from_mapping(dict(fields))
            self.config.add_node(node, replace=bool(args.get("replace", False)))
        except (ConfigError, TypeError) as exc:
            raise ApiError("invalid", str(exc)) from None
        return asdict(node)

    def nodes_remove(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = _str_arg(args, "name")
        self._node(name)
        self.config.remove_node(name)
        return {"removed": name}

    def config_get(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return asdict(self.config.settings())

    def config_set(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        key = _str_arg(args, "key")
        if key not in Settings.keys():
            raise ApiError("invalid", f"{key}: unknown setting")
        if "value" not in args:
            raise ApiError("bad-request", "value is required")
        try:
            stored = self.config.set(key, args["value"])
        except ConfigError as exc:
            raise ApiError("invalid", str(exc)) from None
        return {"key": key, "value": stored}

    def retry_list(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {
            "default": asdict(self.config.default_retry_policy()),
            "overrides": self.config.retry_policies(),
        }

    def retry_set(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        scope = _str_arg(args, "scope")
        values = args.get("values")
        if not isinstance(values, dict):
            raise ApiError("bad-request", "values must be an object")
        try:
            return self.config.set_retry_policy(scope, values)
        except ConfigError as exc:
            raise ApiError("invalid", str(exc)) from None

    def retry_clear(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        scope = _str_arg(args, "scope")
        try:
            self.config.clear_retry_policy(scope)
        except ConfigError as exc:
            raise ApiError("not-found", str(exc)) from None
        return {"cleared": scope}

    # --- the local archive (Studies screen) ----------------------------------------------

    def archive_studies(self, args: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        limit = _int_arg(args, "limit", browse.DEFAULT_LIMIT)
        if not 1 <= limit <= browse.MAX_LIMIT:
            raise ApiError("bad-request", f"limit must be in 1..{browse.MAX_LIMIT}")
        try:
            flt = browse.StudyFilter(
                patient_name=_opt_str(args, "patient_name"),
                patient_id=_opt_str(args, "patient_id"),
                date_from=_opt_str(args, "date_from"),
                date_to=_opt_str(args, "date_to"),
                modality=_opt_str(args, "modality"),
                accession=_opt_str(args, "accession"),
                limit=limit,
            )
        except browse.BrowseError as exc:
            raise ApiError("invalid", str(exc)) from None
        return browse.studies(self.data_dir / INDEX_FILE, flt)

    def archive_series(self, args: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        study_uid = _str_arg(args, "study_uid").strip()
        try:
            found = browse.series(self.data_dir / INDEX_FILE, study_uid)
        except browse.BrowseError as exc:
            raise ApiError("invalid", str(exc)) from None
        if found is None:
            raise ApiError("not-found", f"the archive has no study {study_uid}")
        return found

    # --- remote query (Query/Retrieve screen) --------------------------------------------

    def qr_find(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        from appliance import qr_scu

        node = self._node(_str_arg(args, "node"))
        level = _str_arg(args, "level")
        if level not in QR_FIND_LEVELS:
            raise ApiError("invalid", f"level must be one of {', '.join(QR_FIND_LEVELS)}")
        limit = _int_arg(args, "limit", QR_FIND_DEFAULT_LIMIT)
        if not 1 <= limit <= QR_FIND_MAX_LIMIT:
            raise ApiError("bad-request", f"limit must be in 1..{QR_FIND_MAX_LIMIT}")
        raw_keys = args.get("keys", {})
        if raw_keys is None:
            raw_keys = {}
        if not isinstance(raw_keys, dict):
            raise ApiError("bad-request", "keys must be an object of keyword: value")
        keys = []
        for name, value in raw_keys.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
                raise ApiError("bad-request", f"keys.{name} must be text, a number or null")
            text = None if value is None or value == "" else str(value)
            try:
                keys.append(qr_scu.QueryKey(qr_scu.resolve_tag(name), text))
            except qr_scu.QueryError as exc:
                raise ApiError("invalid", f"keys.{name}: {exc}") from None
        missing = qr_scu.missing_parent_keys(level, "study", keys)
        if missing:
            raise ApiError(
                "invalid", f"a {level}-level query needs a value for {', '.join(missing)}"
            )
        try:
            result = qr_scu.query(
                self.config.settings(), node, level=level, keys=keys, model="study", limit=limit
            )
        except qr_scu.QueryError as exc:
            raise ApiError("invalid", str(exc)) from None
        return {
            "ok": result.ok,
            "status": result.message,
            "status_code": None if result.status is None else f"0x{result.status:04X}",
            "outcome": result.outcome,
            "cancelled": result.cancelled,
            "notes": list(result.notes),
            "columns": [qr_scu.column_label(tag) for tag in result.columns],
            "rows": result.rows(),
        }
