"""The console's only way to the appliance: the daemon's control API, with the console's role.

Blocking calls (a Unix socket round trip, or a remote C-FIND through the daemon): screens run
them in thread workers, never in a handler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.control import ApiError, control_socket_path
from appliance.control_client import ControlClient, DaemonUnavailable, EventStream

__all__ = ["ApiError", "ApplianceClient", "DaemonUnavailable", "EventStream"]

TECHNOLOGIST = "technologist"
SERVICE = "service"
SCAN_TIMEOUT = 600.0  # seconds: media.scan reads a whole disc when its DICOMDIR is missing


class ApplianceClient:
    """Typed calls to the daemon. Starts as a technologist; ``unlock`` asks for service mode."""

    def __init__(self, socket_path: Path, timeout: float = 30.0) -> None:
        self.socket_path = Path(socket_path)
        self._control = ControlClient(self.socket_path, role=TECHNOLOGIST, timeout=timeout)

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> ApplianceClient:
        return cls(control_socket_path(data_dir))

    # --- connection and role ---------------------------------------------------------------

    @property
    def role(self) -> str:
        return self._control.role

    @property
    def is_service(self) -> bool:
        return self._control.role == SERVICE

    def call(self, op: str, **args: Any) -> Any:
        return self._control.call(op, **args)

    def hello(self) -> dict[str, Any]:
        return dict(self.call("hello"))

    def subscribe(self, topics: list[str] | None = None) -> EventStream:
        return self._control.subscribe(topics)

    def unlock(self, password: str) -> dict[str, Any]:
        """Service mode for this connection; ApiError("forbidden") with the reason otherwise."""
        result = self.call("auth.unlock", password=password)
        self._control.role = SERVICE
        return dict(result or {})

    def lock(self) -> None:
        self._control.role = TECHNOLOGIST
        try:
            self.call("auth.lock")
        except (ApiError, DaemonUnavailable):
            pass  # locked on our side whatever the daemon says

    def auth_status(self) -> dict[str, Any]:
        return dict(self.call("auth.status"))

    def close(self) -> None:
        self._control.close()

    # --- status and jobs -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return dict(self.call("status"))

    def jobs(
        self,
        *,
        limit: int = 200,
        states: list[str] | None = None,
        kinds: list[str] | None = None,
        target: str | None = None,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        return list(
            self.call(
                "jobs.list",
                limit=limit,
                states=states,
                kinds=kinds,
                target=target,
                before_id=before_id,
            )
        )

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(self.call("jobs.show", id=job_id))

    def job_action(self, job_id: int, action: str, **extra: Any) -> dict[str, Any]:
        """pause, resume, cancel, retry, retry-failed, reroute (target=), priority (priority=)."""
        return dict(self.call("jobs.action", id=job_id, action=action, **extra))

    def submit(
        self, kind: str, target: str, params: dict[str, Any], *, priority: int = 0
    ) -> dict[str, Any]:
        return dict(
            self.call("jobs.submit", kind=kind, target=target, params=params, priority=priority)
        )

    def send_studies(self, node: str, study_uids: list[str]) -> dict[str, Any]:
        return self.submit("send", node, {"study_uids": study_uids})

    def retrieve_studies(self, node: str, study_uids: list[str]) -> dict[str, Any]:
        return self.submit("retrieve", node, {"study_uids": study_uids})

    # --- archive and remote query ----------------------------------------------------------

    def studies(self, **filters: Any) -> list[dict[str, Any]]:
        """patient_name, patient_id, date_from, date_to, modality, accession, limit."""
        return list(self.call("archive.studies", **{k: v for k, v in filters.items() if v}))

    def series(self, study_uid: str) -> list[dict[str, Any]]:
        return list(self.call("archive.series", study_uid=study_uid))

    def remote_find(
        self, node: str, level: str, keys: dict[str, str], limit: int | None = None
    ) -> dict[str, Any]:
        args: dict[str, Any] = {"node": node, "level": level, "keys": keys}
        if limit:
            args["limit"] = limit
        return dict(self.call("qr.find", **args))

    # --- nodes and configuration -----------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.call("nodes.list"))

    def add_node(self, fields: dict[str, Any], *, replace: bool = False) -> dict[str, Any]:
        return dict(self.call("nodes.add", node=fields, replace=replace))

    def remove_node(self, name: str) -> None:
        self.call("nodes.remove", name=name)

    def echo(self, name: str) -> dict[str, Any]:
        """{"ok": bool, "message": text, "seconds": round trip}."""
        return dict(self.call("nodes.echo", name=name))

    def settings(self) -> dict[str, Any]:
        return dict(self.call("config.get"))

    def set_setting(self, key: str, value: Any) -> dict[str, Any]:
        return dict(self.call("config.set", key=key, value=value))

    def retry_policies(self) -> dict[str, Any]:
        return dict(self.call("retry.list"))

    def set_retry_policy(self, scope: str, values: dict[str, Any]) -> dict[str, Any]:
        return dict(self.call("retry.set", scope=scope, values=values))

    def clear_retry_policy(self, scope: str) -> None:
        self.call("retry.clear", scope=scope)

    # --- printing --------------------------------------------------------------------------

    def printers(self, *, refresh: bool = False) -> list[dict[str, Any]]:
        """The configured printers, each with ``status`` (the last known Printer N-GET or
        N-EVENT-REPORT, or None); ``refresh`` asks each printer now (a short N-GET)."""
        return list(self.call("printers.list", refresh=refresh))

    def compose_print(self, printer: str | None, request: dict[str, Any]) -> dict[str, Any]:
        """The films a print would make: ``request`` holds the source (study_uids,
        series_uids or sop_instance_uids) and the composer options."""
        return dict(self.call("print.compose", printer=printer, **request))

    def preview_print(
        self, printer: str | None, request: dict[str, Any], *, output: str | None = None
    ) -> dict[str, Any]:
        """Render the films to files the daemon writes: {"files": [absolute paths]}."""
        args: dict[str, Any] = dict(request)
        if output:
            args["output"] = output
        return dict(self.call("print.preview", printer=printer, **args))

    def submit_print(
        self, printer: str, request: dict[str, Any], *, priority: int = 0
    ) -> dict[str, Any]:
        """Queue a print job; the job as jobs.show gives it."""
        return dict(self.call("print.submit", printer=printer, priority=priority, **request))

    # --- patient media ---------------------------------------------------------------------

    def drives(self) -> list[dict[str, Any]]:
        """The optical drives the daemon watches, each as its last udev event left it: device,
        model, state (empty, blank-cd, blank-dvd, appendable, closed-data, busy, unknown,
        gone), media, capacity_bytes, label, can_write_dvd, updated."""
        return list(self.call("media.drives"))

    def burn(
        self,
        drive: str,
        study_uids: list[str],
        *,
        capacity_bytes: int | None = None,
        label: bool | None = None,
    ) -> dict[str, Any]:
        """Queue a burn job of studies of one patient on ``drive`` (a device or a
        ``stdio:/path/disc.iso`` file-backed drive); the job as jobs.show gives it."""
        args: dict[str, Any] = {"drive": drive, "study_uids": list(study_uids)}
        if capacity_bytes is not None:
            args["capacity_bytes"] = capacity_bytes
        if label is not None:
            args["label"] = label
        return dict(self.call("media.burn", **args))

    def scan_media(self, source: str) -> dict[str, Any]:
        """What a disc, folder or ISO file holds: its patients with their studies and the local
        patients matching each, and the problems found (files that are not DICOM, paths
        pointing outside the disc). Reading a disc takes a while: a longer timeout."""
        return dict(self.slow_call("media.scan", SCAN_TIMEOUT, source=source))

    def import_media(self, source: str, reconcile: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Queue an import job of ``source`` with a choice per disc patient ID (keep, map to a
        local patient, new values); the job as jobs.show gives it."""
        return dict(self.call("media.import", source=source, reconcile=reconcile))

    def slow_call(self, op: str, timeout: float, **args: Any) -> Any:
        """A call that may outlast the usual timeout, on a connection of its own."""
        control = ControlClient(self.socket_path, role=self.role, timeout=timeout)
        try:
            return control.call(op, **args)
        finally:
            control.close()

    # --- security --------------------------------------------------------------------------

    def tls_show(self) -> dict[str, Any]:
        """Our key and certificate (subject, issuer, SANs, not-after, days left, warning), the
        trusted CAs and the TLS settings, as ``dicom-appliance tls show --json`` prints them."""
        return dict(self.call("tls.show"))

    def tls_generate(self, **request: Any) -> dict[str, Any]:
        """A new key and self-signed certificate (service): cn, sans, days, rsa, passphrase,
        force (a key exists)."""
        return dict(self.call("tls.generate", **request) or {})

    def tls_csr(self, **request: Any) -> dict[str, Any]:
        """A certificate signing request for our key, made first when there is none (service):
        cn, sans, rsa, passphrase -> {pem, subject, sans, key, new_key, path}."""
        return dict(self.call("tls.csr", **request) or {})

    def tls_import_cert(self, cert: str, chain: str | None = None) -> dict[str, Any]:
        """Install the signed certificate (and chain) from files the daemon reads (service)."""
        args: dict[str, Any] = {"path": cert}
        if chain:
            args["chain_path"] = chain
        return dict(self.call("tls.import_cert", **args) or {})

    def tls_trust(self, path: str) -> list[dict[str, Any]]:
        """Trust each CA certificate in ``path`` (a file the daemon reads; service): each with
        its file name and status ("added" or "already trusted")."""
        return list(self.call("tls.trust", path=path) or [])

    def tls_untrust(self, name: str) -> dict[str, Any]:
        """Stop trusting a CA, by its file name or fingerprint (service)."""
        return dict(self.call("tls.untrust", name=name) or {})

    def audit_list(
        self, *, since: str | None = None, event: str | None = None, limit: int = 500
    ) -> dict[str, Any]:
        """The newest ``limit`` audit messages (service: the log holds patient data):
        {"entries": oldest first, "count", "damaged": lines that did not parse, "syslog"}."""
        args: dict[str, Any] = {"limit": limit}
        if since:
            args["since"] = since
        if event:
            args["event"] = event
        return dict(self.call("audit.list", **args))

    # --- anonymization ---------------------------------------------------------------------

    def anonymize_profiles(self) -> list[dict[str, Any]]:
        """The profiles a study can be anonymized with: the built-in ``basic`` (the Basic
        Profile, no options) and the site's, each with its options, overrides and patterns."""
        answer = self.call("anonymize.profiles")
        if isinstance(answer, dict):  # {"profiles": [...]} is read the same way
            answer = answer.get("profiles") or []
        return [dict(profile) for profile in answer or []]

    def anonymize_preview(
        self, profile: str, *, study_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> dict[str, Any]:
        """What ``profile`` does to a sample instance of the study (or to the instance), as a
        dry run: {"instance", "rows": [{tag, keyword, original, action, result}], "held"}."""
        args: dict[str, Any] = {"profile": profile}
        if study_uid:
            args["study_uid"] = study_uid
        if sop_instance_uid:
            args["sop_instance_uid"] = sop_instance_uid
        return dict(self.call("anonymize.preview", **args))

    def anonymize(
        self,
        profile: str,
        study_uids: list[str],
        *,
        send: str | None = None,
        burn: str | None = None,
        confirm_pixels: list[str] | None = None,
    ) -> dict[str, Any]:
        """Queue an anonymize job (the copy goes into the archive, then to ``send``/``burn``);
        ``confirm_pixels`` are the held instances the operator looked at and releases. The job
        as jobs.show gives it."""
        args: dict[str, Any] = {"profile": profile, "study_uids": list(study_uids)}
        if send:
            args["send"] = send
        if burn:
            args["burn"] = burn
        if confirm_pixels:
            args["confirm_pixels"] = list(confirm_pixels)
        return dict(self.call("anonymize.submit", **args))

    def render_images(self, sop_instance_uids: list[str]) -> list[str]:
        """PNG files of the instances, one image per page, that the daemon renders (with the
        print preview) so the operator can look at them before releasing them."""
        answer = self.preview_print(
            None, {"sop_instance_uids": list(sop_instance_uids), "layout": "STANDARD\\1,1"}
        )
        return [str(path) for path in answer.get("files") or [] if str(path).endswith(".png")]
