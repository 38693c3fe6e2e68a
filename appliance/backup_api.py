"""``backup.create`` of the control API (service only): the running daemon makes a backup.

The daemon holds its job store's lock while it reads the job files, so no job is caught moving
between them, and writes the backup (0600) into ``DATA/backups/`` (0700): it writes nowhere
outside its data folder, and a client never names a path the daemon writes. The answer is the
staged file's path and the manifest; the command line moves the file to where it was asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.backup import STAGING_DIR, BackupError, audit_backup, staged_backup
from appliance.control import ApiError, Caller, ControlServer
from appliance.job_engine import JobEngine


class BackupOperations:
    def __init__(self, *, data_dir: Path, engine: JobEngine) -> None:
        self.data_dir = Path(data_dir)
        self.engine = engine

    def register(self, control: ControlServer) -> None:
        control.register("backup.create", self.backup_create, service_only=True)

    def backup_create(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """Make a backup: {destination?} -> {path, manifest}.

        ``destination`` is only recorded in the audit trail (Export): where the command that
        asked will move the file. The daemon writes the staged file and nothing else.
        """
        destination = args.get("destination")
        if destination is not None and not isinstance(destination, str):
            raise ApiError("bad-request", "destination must be text")
        # The job store is the daemon's alone, behind one lock: held while the jobs are read.
        jobs_lock = self.engine.store._lock
        try:
            path, manifest = staged_backup(self.data_dir, jobs_lock)
        except (BackupError, OSError) as exc:
            audit_backup(self.data_dir, destination or STAGING_DIR, None, str(exc))
            raise ApiError("unavailable", f"cannot make the backup: {exc}") from None
        audit_backup(self.data_dir, destination or path, manifest)
        return {"path": str(path), "manifest": manifest.as_dict()}
