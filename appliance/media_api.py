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
        for op, handler in (("media.drives", self.media_drives),):
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
