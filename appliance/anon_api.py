"""``anonymize.*`` of the control API: profiles, the preview table and queuing a job.

``appliance.api.Operations`` registers these, open to technologists (the preview shows
original values: the same people see the original study on the Studies screen):

- ``anonymize.profiles`` -> the built-in ``basic`` profile and the site's, with their
  options, overrides, patterns and project;
- ``anonymize.preview`` {profile, study_uid | sop_instance_uid} -> {"instance", "profile",
  "rows": [{"tag", "keyword", "original", "action", "result"}], "held": reason | null}; with a
  study, the sample is its first instance and ``held_instances`` lists every instance of the
  study the pixel guard would hold ({"instance", "series_uid", "modality", "reason"});
- ``anonymize.submit`` {profile, study_uids, send?, burn?, confirm_pixels?, priority?} -> the
  job (``job_detail``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom import dcmread

from appliance.archive import Archive
from appliance.config import ConfigError, ConfigStore
from appliance.control import ApiError, Caller, ControlServer
from appliance.job_engine import JobEngine


class AnonOperations:
    def __init__(
        self, *, data_dir: Path, config: ConfigStore, archive: Archive, engine: JobEngine
    ) -> None:
        self.data_dir = Path(data_dir)
        self.config = config
        self.archive = archive
        self.engine = engine

    def register(self, control: ControlServer) -> None:
        for op, handler in (
            ("anonymize.profiles", self.profiles),
            ("anonymize.preview", self.preview),
            ("anonymize.submit", self.submit),
        ):
            control.register(op, handler)

    def profiles(self, args: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        from appliance.anonymize_jobs import BUILTIN_PROFILE, describe_profile

        try:
            stored = [self.config.anon_profile(BUILTIN_PROFILE), *self.config.anon_profiles()]
        except ConfigError as exc:
            raise ApiError("invalid", str(exc)) from None
        return [describe_profile(p) for p in stored]

    def preview(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        from appliance import anonymize_jobs as aj

        profile = args.get("profile")
        study_uid = args.get("study_uid")
        sop_uid = args.get("sop_instance_uid")
        if bool(study_uid) == bool(sop_uid):
            raise ApiError("bad-request", "give study_uid or sop_instance_uid (one of them)")
        for name, value in (("study_uid", study_uid), ("sop_instance_uid", sop_uid)):
            if value is not None and not isinstance(value, str):
                raise ApiError("bad-request", f"{name} must be a UID")
        try:
            aj.profile_config(self.config, profile)
        except aj.AnonymizeError as exc:
            raise ApiError("invalid", str(exc)) from None
        held_instances = None
        if study_uid:
            try:
                records = aj.study_records(self.archive, [str(study_uid).strip()])
            except aj.AnonymizeError:
                raise ApiError("not-found", f"the archive has no study {study_uid}") from None
            record = records[0]
            held_instances = self._held(records, str(profile))
        else:
            record = self.archive.instance(str(sop_uid).strip())
            if record is None:
                raise ApiError("not-found", f"the archive has no instance {sop_uid}")
        try:
            ds = dcmread(record.path)
        except Exception as exc:  # noqa: BLE001 - an unreadable file is the answer
            raise ApiError("invalid", f"cannot read {record.sop_instance_uid}: {exc}") from None
        try:
            answer = aj.preview_rows(self.config, self.data_dir, str(profile), ds)
        except aj.AnonymizeError as exc:
            raise ApiError("invalid", str(exc)) from None
        if held_instances is not None:
            answer["held_instances"] = held_instances
        return answer

    def _held(self, records: list[Any], profile: str) -> list[dict[str, str]]:
        """What the job would hold in the study (pixel guard, no rule, not confirmed)."""
        from appliance.anonymize_jobs import pixel_policy, profile_config

        policy = pixel_policy(self.config)
        clean = "clean_pixel_data" in set(profile_config(self.config, profile).options)
        held = []
        for record in records:
            try:
                # The pixel element is needed (present or not), its value is not.
                ds = dcmread(record.path, defer_size=256)
            except Exception:  # noqa: BLE001 - the job reports an unreadable file
                continue
            decision = policy.decide(ds, clean_pixel_data=clean)
            if decision.action == "hold":
                held.append(
                    {
                        "instance": record.sop_instance_uid,
                        "series_uid": record.series_uid,
                        "modality": str(ds.get("Modality", "") or ""),
                        "reason": decision.reason,
                    }
                )
        return held

    def submit(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        from appliance.anonymize_jobs import KIND, REQUEST_KEYS, TARGET
        from appliance.api import job_detail
        from appliance.jobs import JobError

        priority = args.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ApiError("bad-request", "priority must be an integer")
        params = {key: args[key] for key in REQUEST_KEYS if key in args and args[key] is not None}
        try:
            job = self.engine.submit(KIND, TARGET, params, priority=priority)
        except JobError as exc:
            raise ApiError("invalid", str(exc)) from None
        return job_detail(job)
