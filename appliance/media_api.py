"""``media.*`` of the control API: optical drives, burning patient discs, importing discs.

``appliance.api.Operations`` registers these. Each op is a method here; burning and importing
add theirs next to ``media.drives`` (``media.burn``, ``media.scan``, ``media.import``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.archive import Archive
from appliance.config import ConfigStore
from appliance.control import ApiError, Caller, ControlServer
from appliance.job_engine import JobEngine

if TYPE_CHECKING:
    from appliance.drives import DriveWatcher


class MediaOperations:
    """The media ops, bound to the daemon's parts (the drive watcher may be absent)."""

    def __init__(
        self,
        *,
        data_dir: Path,
        config: ConfigStore,
        archive: Archive,
        engine: JobEngine,
        watcher: DriveWatcher | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.config = config
        self.archive = archive
        self.engine = engine
        self.watcher = watcher

    def register(self, control: ControlServer) -> None:
        for op, handler in (
            ("media.drives", self.media_drives),
            ("media.burn", self.media_burn),
            ("media.scan", self.media_scan),
            ("media.import", self.media_import),
        ):
            control.register(op, handler)

    @staticmethod
    def _error(code: str, text: str) -> ApiError:
        return ApiError(code, text)

    # --- drives --------------------------------------------------------------------------

    def media_drives(self, args: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        """The watched drives and their state; none when udev is not available."""
        if self.watcher is None:
            return []
        return [drive.as_dict() for drive in self.watcher.drives()]

    # --- burning -------------------------------------------------------------------------

    def media_burn(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Queue a burn job: {drive, study_uids, profile?, capacity_bytes?, label?, viewer?,
        priority?} -> the job (job_detail)."""
        from appliance.api import job_detail
        from appliance.jobs import JobError
        from appliance.media_burn import REQUEST_KEYS

        drive = args.get("drive")
        if not isinstance(drive, str) or not drive.strip():
            raise self._error("bad-request", "drive is required: /dev/sr0, or stdio:/path/disc.iso")
        priority = args.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise self._error("bad-request", "priority must be an integer")
        params = {key: args[key] for key in REQUEST_KEYS if key in args}
        try:
            job = self.engine.submit("burn", drive.strip(), params, priority=priority)
        except JobError as exc:
            raise self._error("invalid", str(exc)) from None
        return job_detail(job)

    # --- importing -----------------------------------------------------------------------

    def media_scan(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """What a source holds, without storing anything: {source} -> patients with their
        studies and local matches, files, problems (appliance.media_import)."""
        from appliance.media_import import api_scan

        return api_scan(self.data_dir, self.archive, args)

    def media_import(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Queue an import job: {source, reconcile: {disc patient ID or "*": choice},
        priority?} -> the job (job_detail)."""
        from appliance.media_import import api_import

        return api_import(self.engine, args)
