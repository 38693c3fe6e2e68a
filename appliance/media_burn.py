"""Burning patient discs: the ``burn`` job, its validator and the ``media.burn`` request.

A ``burn`` job writes one patient's studies onto optical media. Its target is the drive
device: ``/dev/sr0``, or ``stdio:/path/disc.iso`` for a file-backed drive (an ISO image
file, written by the same xorriso layer as a real disc). Its parameters (``job.params``):

- ``study_uids``: one or more studies of the archive, all of one patient (a disc for a
  patient must not carry another patient's images);
- ``profile``: ``STD-GEN-CD`` (every object Explicit VR Little Endian), ``STD-GEN-DVD-JPEG``
  or ``STD-GEN-DVD-J2K``; by default STD-GEN-CD, or STD-GEN-DVD-JPEG on a DVD when the
  setting ``media_dvd_jpeg`` is on;
- ``capacity_bytes``: how much one medium holds (default: the blank medium's free space,
  else a CD's 700 MB);
- ``label`` (default true): a LABEL.TXT with the patient, the study dates, the institution
  (setting ``media_institution``) and "disc n of N";
- ``viewer`` (default true): copy the folder of the setting ``media_viewer_folder``, if set.

The first attempt plans the discs (``appliance.fileset.plan_discs``: split by study, then by
series) and keeps the plan in ``params["planned"]``, so later attempts and a restart burn
exactly those discs. Each disc is one job instance, ``disc-<n>``: built (a complete file-set
with its own DICOMDIR), written, read back and compared file by file, ejected. A disc burned
and verified is never burned again. On a file-backed drive disc 1 goes to the given path and
disc n to ``<stem>-<n><suffix>``; on a real drive the job ejects after each disc and waits
(a retryable attempt failure, "insert a blank disc for disc n of N") for the next blank one.

A non-blank medium, a write error or a verify mismatch fails the job at once with xorriso's
reason (another attempt on the same medium would fail the same way); the queue goes on.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.config import ConfigStore, Settings
from appliance.job_engine import AttemptFailed, RunContext
from appliance.jobs import FAILED, PENDING, SUCCESS, InstanceResult, JobError

if TYPE_CHECKING:
    from appliance.archive import Archive
    from appliance.drives import DriveWatcher
    from appliance.job_engine import JobEngine

LOG = logging.getLogger("appliance.burn")

KIND = "burn"
PROFILES = ("STD-GEN-CD", "STD-GEN-DVD-JPEG", "STD-GEN-DVD-J2K")
CD_PROFILE = "STD-GEN-CD"
DVD_JPEG_PROFILE = "STD-GEN-DVD-JPEG"
FILE_PREFIX = "stdio:"
#: The smallest medium a request may name (the file-set keeps room for the DICOMDIR and the
#: PDI pages on each disc: ``appliance.fileset.DEFAULT_RESERVE_BYTES``).
MIN_CAPACITY_BYTES = 5 * 1000**2
#: The largest: a dual-layer Blu-ray; anything larger is a typo.
MAX_CAPACITY_BYTES = 100 * 1000**3
#: The request keys; ``planned`` and ``writing`` are the runner's own records.
REQUEST_KEYS = ("study_uids", "profile", "capacity_bytes", "label", "viewer")
_DEVICE = re.compile(r"^/dev/[A-Za-z0-9_./-]+$")
_VOLUME_CHARS = re.compile(r"[^A-Z0-9_]")


class BurnError(ValueError):
    """The request cannot be burned as asked (no such study, several patients, a bad option)."""


# --- targets -----------------------------------------------------------------------------------


def is_file_target(device: str) -> bool:
    return device.startswith(FILE_PREFIX)


def check_device(device: object) -> str:
    """A drive device as a job target: ``/dev/...`` or ``stdio:/absolute/path``."""
    if not isinstance(device, str) or not device.strip():
        raise BurnError("drive is required: a device such as /dev/sr0, or stdio:/path/disc.iso")
    device = device.strip()
    if is_file_target(device):
        path = device[len(FILE_PREFIX) :]
        if not path.startswith("/") or "\x00" in path:
            raise BurnError(f"{device}: a file-backed drive needs an absolute path (stdio:/...)")
        if path.endswith("/"):
            raise BurnError(f"{device}: names a folder, not an image file")
        return device
    if not _DEVICE.match(device):
        raise BurnError(f"{device!r} is not a drive: give /dev/... or stdio:/path/disc.iso")
    return device


def disc_target(device: str, number: int) -> str:
    """Where disc ``number`` is written: the drive itself, or for a file-backed drive disc 1
    at the given path and disc n next to it as ``<stem>-<n><suffix>``."""
    if number == 1 or not is_file_target(device):
        return device
    path = Path(device[len(FILE_PREFIX) :])
    return f"{FILE_PREFIX}{path.with_name(f'{path.stem}-{number}{path.suffix}')}"


def target_path(target: str) -> Path | None:
    """The image file of a file-backed target (None for a real drive)."""
    return Path(target[len(FILE_PREFIX) :]) if is_file_target(target) else None


def volume_id(patient_id: str, number: int, total: int) -> str:
    """An ISO 9660 volume identifier (d-characters, at most 32): the patient ID and the
    disc's place, e.g. ``PAT001_1OF2``."""
    stem = _VOLUME_CHARS.sub("_", (patient_id or "").upper()).strip("_")[:20] or "DICOM"
    return f"{stem}_{number}OF{total}"[:32]


# --- parameters --------------------------------------------------------------------------------


def _flag(params: dict[str, Any], key: str, default: bool) -> bool:
    value = params.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BurnError(f"{key} must be true or false")
    return value


def normalise_params(params: dict[str, Any]) -> dict[str, Any]:
    """The request cleaned: UID list, profile, capacity, flags. Raises BurnError."""
    unknown = sorted(set(params) - set(REQUEST_KEYS))
    if unknown:
        raise BurnError(f"unknown burn option {unknown[0]!r}: one of {', '.join(REQUEST_KEYS)}")
    uids = params.get("study_uids")
    if isinstance(uids, str):
        uids = [uids]
    if not isinstance(uids, list) or not all(isinstance(u, str) and u.strip() for u in uids):
        raise BurnError("study_uids must be a list of Study Instance UIDs")
    if not uids:
        raise BurnError("nothing to burn: give at least one study")
    clean: dict[str, Any] = {"study_uids": list(dict.fromkeys(u.strip() for u in uids))}
    profile = params.get("profile")
    if profile not in (None, ""):
        if not isinstance(profile, str) or profile.strip().upper() not in PROFILES:
            raise BurnError(f"unknown profile {profile!r}: one of {', '.join(PROFILES)}")
        clean["profile"] = profile.strip().upper()
    capacity = params.get("capacity_bytes")
    if capacity is not None:
        if isinstance(capacity, bool) or not isinstance(capacity, int | float):
            raise BurnError("capacity_bytes must be a number of bytes")
        if not MIN_CAPACITY_BYTES <= capacity <= MAX_CAPACITY_BYTES:
            raise BurnError(
                f"capacity {int(capacity)} bytes is out of range: "
                f"{MIN_CAPACITY_BYTES}..{MAX_CAPACITY_BYTES}"
            )
        clean["capacity_bytes"] = int(capacity)
    clean["label"] = _flag(params, "label", True)
    clean["viewer"] = _flag(params, "viewer", True)
    return clean


@dataclass
class Patient:
    """Whose studies a burn carries (for the summary, the label and the volume name)."""

    patient_id: str = ""
    patient_name: str = ""
    studies: list[dict[str, Any]] = field(default_factory=list)


def check_studies(archive: Archive, study_uids: Sequence[str]) -> Patient:
    """The one patient the studies belong to; BurnError for an unknown study or studies of
    different patients (matched by Patient ID, by name when a study has no ID)."""
    rows = []
    for uid in study_uids:
        row = archive.study(uid)
        if row is None:
            raise BurnError(f"the archive has no study {uid}")
        rows.append(row)
    seen: dict[tuple[str, str], str] = {}
    for row in rows:
        patient_id = str(row.get("patient_id") or "").strip()
        name = str(row.get("patient_name") or "").strip()
        key = (patient_id, "" if patient_id else name)
        seen.setdefault(key, f"{name or '(no name)'} ({patient_id or 'no ID'})")
    if len(seen) > 1:
        raise BurnError(
            "the studies belong to different patients: "
            + ", ".join(seen.values())
            + "; a disc carries one patient's studies"
        )
    first = rows[0]
    return Patient(
        patient_id=str(first.get("patient_id") or ""),
        patient_name=str(first.get("patient_name") or ""),
        studies=rows,
    )


# --- the medium --------------------------------------------------------------------------------


@dataclass
class Medium:
    """What the drive holds, as far as the choice of capacity and profile goes."""

    capacity_bytes: int
    dvd: bool


DriveLookup = Callable[[str], Any]  # device -> drives.DriveInfo | None


def probe_medium(
    device: str, capacity_bytes: int | None, drive_info: DriveLookup | None = None
) -> Medium:
    """The medium's capacity and kind: the request's capacity if given, else the blank
    medium's free space (``drive_info``: the drive watcher's view of a real drive), else a
    CD's. A file-backed drive larger than a CD counts as a DVD."""
    from appliance.fileset import CD_BYTES

    info = None
    try:
        if is_file_target(device):
            from appliance.drives import file_drive

            info = file_drive(device, capacity_bytes or CD_BYTES)
        elif drive_info is not None:
            info = drive_info(device)
    except Exception as exc:  # noqa: BLE001 - the medium is looked at again when written
        LOG.warning("burn: cannot look at the medium in %s: %s", device, exc)
    capacity = capacity_bytes or getattr(info, "capacity_bytes", None) or CD_BYTES
    media = str(getattr(info, "media", "") or "").upper()
    dvd = "DVD" in media or "BD" in media or capacity > CD_BYTES
    return Medium(capacity_bytes=int(capacity), dvd=dvd)


def choose_profile(params: dict[str, Any], medium: Medium, settings: Settings) -> str:
    if params.get("profile"):
        return str(params["profile"])
    if medium.dvd and getattr(settings, "media_dvd_jpeg", False):
        return DVD_JPEG_PROFILE
    return CD_PROFILE


def viewer_folder(params: dict[str, Any], settings: Settings) -> Path | None:
    """The viewer to copy onto each disc (None: none asked, none configured)."""
    if not params.get("viewer", True):
        return None
    folder = str(getattr(settings, "media_viewer_folder", "") or "")
    if not folder:
        return None
    path = Path(folder)
    if not path.is_dir():
        raise BurnError(f"the viewer folder {folder} (setting media_viewer_folder) is missing")
    return path


# --- planning ----------------------------------------------------------------------------------


def disc_uid(number: int) -> str:
    return f"disc-{number}"


def plan(
    archive: Archive,
    params: dict[str, Any],
    settings: Settings,
    device: str,
    drive_info: DriveLookup | None = None,
) -> dict[str, Any]:
    """Plan the discs: what goes on each, with which profile. The plan is JSON, kept with
    the job (``params["planned"]``) so that every attempt burns the same discs."""
    from appliance.fileset import FileSetError, plan_discs

    patient = check_studies(archive, params["study_uids"])
    medium = probe_medium(device, params.get("capacity_bytes"), drive_info)
    profile = choose_profile(params, medium, settings)
    try:
        discs = plan_discs(
            archive,
            list(params["study_uids"]),
            medium.capacity_bytes,
            profile=profile,
            viewer_folder=viewer_folder(params, settings),
        )
    except FileSetError as exc:
        raise BurnError(str(exc)) from None
    if not discs or not any(disc.instances for disc in discs):
        raise BurnError("the studies have no instances to burn")
    return {
        "profile": profile,
        "capacity_bytes": medium.capacity_bytes,
        "patient_id": patient.patient_id,
        "discs": [
            {
                "number": disc.number,
                "total": disc.total,
                "study_uids": list(disc.study_uids),
                "instances": [record.sop_instance_uid for record in disc.instances],
                "bytes": disc.bytes,
                # Numbers given to objects without them, the same on every disc of the set.
                "series_position": dict(disc.series_position),
                "instance_position": dict(disc.instance_position),
            }
            for disc in discs
        ],
    }


def summary_for(archive: Archive, params: dict[str, Any], planned: dict[str, Any]) -> dict:
    patient = check_studies(archive, params["study_uids"])
    first = patient.studies[0]
    return {
        "patient_name": patient.patient_name,
        "patient_id": patient.patient_id,
        "study_description": first.get("study_description") or "",
        "study_date": first.get("study_date") or "",
        "studies": len(patient.studies),
        "discs": len(planned["discs"]),
        "profile": planned["profile"],
        "images": sum(len(d["instances"]) for d in planned["discs"]),
    }


def disc_content(archive: Archive, doc: dict[str, Any]) -> Any:
    """The planned disc with its instances as the archive has them now (BurnError when one
    is gone)."""
    from appliance.fileset import DiscContent

    records = []
    for uid in doc["instances"]:
        record = archive.instance(uid)
        if record is None:
            raise BurnError(f"instance {uid} is no longer in the archive")
        records.append(record)
    return DiscContent(
        number=int(doc["number"]),
        total=int(doc["total"]),
        study_uids=list(doc["study_uids"]),
        instances=records,
        bytes=int(doc.get("bytes") or 0),
        series_position=dict(doc.get("series_position") or {}),
        instance_position=dict(doc.get("instance_position") or {}),
    )


# --- one disc ----------------------------------------------------------------------------------


class DiscFailed(Exception):
    """A disc could not be burned; ``retryable`` when another attempt (another medium, the
    drive back) may succeed."""

    def __init__(self, message: str, *, retryable: bool, phase: str = "build") -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.phase = phase  # build, write or verify


def burn_disc(
    archive: Archive,
    settings: Settings,
    params: dict[str, Any],
    planned: dict[str, Any],
    doc: dict[str, Any],
    device: str,
    spool: Path,
    *,
    stage: Callable[[str], None],
    progress: Callable[[float], None] | None = None,
    building: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    before_write: Callable[[str], None] | None = None,
) -> str:
    """Build, write, verify and eject one planned disc; returns where it went. DiscFailed
    says why not."""
    from appliance import optical
    from appliance.fileset import FileSetError, build_fileset

    number, total = int(doc["number"]), int(doc["total"])
    target = disc_target(device, number)
    folder = spool / f"disc-{number}"
    scratch = spool / f"verify-{number}"
    of = f"disc {number} of {total}"
    try:
        stage(f"building {of}")
        try:
            disc = disc_content(archive, doc)
            build_fileset(
                disc,
                archive,
                folder,
                profile=planned["profile"],
                viewer_folder=viewer_folder(params, settings),
                label=bool(params.get("label", True)),
                institution=str(getattr(settings, "media_institution", "") or ""),
                progress=building,
                should_stop=should_stop,
            )
        except (BurnError, FileSetError) as exc:
            raise DiscFailed(f"cannot build {of}: {exc}", retryable=False) from None
        except Exception as exc:  # noqa: BLE001 - an unreadable object fails this disc only
            LOG.exception("burn: building %s failed", of)
            raise DiscFailed(f"cannot build {of}: {exc}", retryable=False) from None
        if before_write is not None:
            before_write(target)  # saved before the stage is shown: whoever sees it, sees both
        stage(f"writing {of}")
        try:
            optical.write_image(
                folder,
                target,
                volume_id=volume_id(planned.get("patient_id", ""), number, total),
                progress=progress,
                # Interrupting a real disc's write ruins the disc: only an image file stops.
                should_stop=should_stop if is_file_target(target) else None,
            )
        except optical.OpticalError as exc:
            raise DiscFailed(
                f"writing {of} to {target}: {exc}", retryable=exc.retryable, phase="write"
            ) from None
        stage(f"verifying {of}")
        try:
            problems = optical.verify(folder, target, scratch)
        except optical.OpticalError as exc:
            raise DiscFailed(
                f"reading back {of}: {exc}", retryable=exc.retryable, phase="verify"
            ) from None
        if problems:
            more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
            raise DiscFailed(
                f"{of} does not verify: {'; '.join(problems[:3])}{more}",
                retryable=False,
                phase="verify",
            )
        stage("ejecting")
        try:
            optical.eject(target)
        except optical.OpticalError as exc:
            LOG.warning("burn: %s burned, but the drive did not eject: %s", of, exc)
        return target
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


# --- the job -----------------------------------------------------------------------------------


def _spool(data_dir: Path, name: str) -> Path:
    folder = Path(data_dir) / "spool" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _remove_partial(ctx: RunContext, number: int) -> None:
    """Remove the image file an interrupted write of this disc left (only a file this job
    created: one that was missing or empty when its write began)."""
    writing = ctx.job.params.get("writing") or {}
    if writing.get("disc") != number or not writing.get("fresh"):
        return
    path = Path(str(writing.get("path") or ""))
    if path.is_file():
        path.unlink()
        ctx.log(f"removed {path}, the unfinished image of disc {number} of an interrupted write")
    with ctx.lock:
        ctx.job.params.pop("writing", None)


def make_runner(watcher: DriveWatcher | None = None) -> Callable[[RunContext], None]:
    drive_info = watcher.drive if watcher is not None else None

    def run_burn(ctx: RunContext) -> None:
        if watcher is None or is_file_target(ctx.job.target):
            _burn(ctx, drive_info)
            return
        # The drive shows as busy while the job holds it (the console, `media drives`).
        watcher.set_busy(ctx.job.target, True)
        try:
            _burn(ctx, drive_info)
        finally:
            watcher.set_busy(ctx.job.target, False)

    return run_burn


def _burn(ctx: RunContext, drive_info: DriveLookup | None) -> None:
    job = ctx.job
    device = job.target
    try:
        check_device(device)  # a rerouted job's new target has not been through the validator
    except BurnError as exc:
        raise AttemptFailed(str(exc), retryable=False) from None
    planned = job.params.get("planned")
    if not job.instances or not planned:
        ctx.set_stage("planning")
        try:
            planned = plan(ctx.archive, job.params, ctx.settings, device, drive_info)
            summary = summary_for(ctx.archive, job.params, planned)
        except BurnError as exc:
            raise AttemptFailed(str(exc), retryable=False) from None
        with ctx.lock:
            # Kept with the job: later attempts and a restart burn exactly these discs.
            job.params["planned"] = planned
            job.summary = summary
        total = len(planned["discs"])
        ctx.add_instances([InstanceResult(disc_uid(n)) for n in range(1, total + 1)])
        ctx.log(
            f"{total} disc(s) planned ({planned['profile']}, "
            f"{planned['capacity_bytes']} bytes per medium)"
        )
    total = len(planned["discs"])
    spool = _spool(ctx.data_dir, f"burn-{job.id}")
    burned_now = 0
    try:
        for doc in planned["discs"]:
            number = int(doc["number"])
            uid = disc_uid(number)
            before = ctx.instance(uid) or InstanceResult(uid)
            if before.done or (before.status == FAILED and not before.retryable):
                continue
            if ctx.should_stop():
                return
            if burned_now and not is_file_target(device):
                # One drive, one medium at a time: the next disc waits for a blank one.
                text = f"insert a blank disc for disc {number} of {total}"
                ctx.set_stage(text)
                ctx.record(replace(before, status=PENDING, error=text), attempted=False)
                raise AttemptFailed(text)
            _remove_partial(ctx, number)
            if _run_disc(ctx, planned, doc, device, spool, before, total) is None:
                return
            burned_now += 1
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def _run_disc(
    ctx: RunContext,
    planned: dict[str, Any],
    doc: dict[str, Any],
    device: str,
    spool: Path,
    before: InstanceResult,
    total: int,
) -> str | None:
    """One disc within the job, its result recorded: where it went, None when the operator
    or the daemon stopped the job; AttemptFailed when the disc failed (for good or not)."""
    job = ctx.job
    number = int(doc["number"])
    last = [-1]

    def stage(text: str) -> None:
        last[0] = -1
        ctx.set_stage(text)
        ctx.set_progress(disc=number, discs=total, percent=_overall(number, total, text, 0.0))

    def stepper(name: str) -> Callable[[float], None]:
        def progress(percent: float) -> None:
            step = int(percent) // 5 * 5
            if step != last[0]:
                last[0] = step
                ctx.set_stage(f"{name} disc {number} of {total}: {step}%")
                ctx.set_progress(
                    disc=number, discs=total, percent=_overall(number, total, name, percent)
                )

        return progress

    build_step = stepper("building")

    def before_write(target: str) -> None:
        path = target_path(target)
        fresh = path is not None and (not path.exists() or path.stat().st_size == 0)
        with ctx.lock:
            job.params["writing"] = {"disc": number, "path": str(path or target), "fresh": fresh}
        ctx.flush()  # known before xorriso starts: a crash mid-write leaves a file we may remove

    try:
        target = burn_disc(
            ctx.archive,
            ctx.settings,
            job.params,
            planned,
            doc,
            device,
            spool,
            stage=stage,
            progress=stepper("writing"),
            # build_fileset reports a fraction, xorriso a percent.
            building=lambda fraction: build_step(fraction * 100.0),
            should_stop=ctx.should_stop,
            before_write=before_write,
        )
    except DiscFailed as exc:
        if exc.phase == "write":
            # A half-written image of ours is no disc: gone now, not only at the next attempt.
            _remove_partial(ctx, number)
        if ctx.should_stop():
            ctx.record(replace(before, status=PENDING, error=""), attempted=False)
            return None
        earlier_done = any(
            (ctx.instance(disc_uid(n)) or InstanceResult("")).done for n in range(1, number)
        )
        if exc.phase == "write" and earlier_done and not is_file_target(device):
            # Disc n+1 of a set in the drive that burned disc n: most likely the burned disc
            # is still in, or none yet. Wait for a blank one rather than fail the set.
            text = f"insert a blank disc for disc {number} of {total}"
            ctx.record(replace(before, status=PENDING, error=exc.message, retryable=True))
            ctx.set_stage(text)
            raise AttemptFailed(f"{text} ({exc.message})") from None
        if exc.retryable:
            ctx.record(replace(before, status=PENDING, error=exc.message, retryable=True))
            ctx.set_stage(f"held: {exc.message}")
            raise AttemptFailed(exc.message) from None
        ctx.record(replace(before, status=FAILED, error=exc.message, retryable=False))
        # The discs after it are not burned: a set with a hole is no use to the patient.
        for later in range(number + 1, total + 1):
            other = ctx.instance(disc_uid(later))
            if other is not None and not other.done:
                ctx.record(
                    replace(
                        other,
                        status=FAILED,
                        error=f"not burned: disc {number} failed",
                        retryable=False,
                    ),
                    attempted=False,
                )
        ctx.log(f"disc {number} of {total} failed: {exc.message}")
        raise AttemptFailed(exc.message, retryable=False) from None
    with ctx.lock:
        job.params.pop("writing", None)
    ctx.record(replace(before, status=SUCCESS, error="", retryable=False, path=target))
    ctx.log(f"disc {number} of {total} burned and verified: {target}")
    # Saved at once: a disc burned must not be burned again after a crash.
    ctx.flush()
    return target


_STAGE_SHARE = (("building", 0.0, 0.2), ("writing", 0.2, 0.8), ("verifying", 0.8, 0.98))


def _overall(number: int, total: int, stage: str, percent: float) -> int:
    """The job's percent done, from the disc and its stage (building is quick next to
    writing and reading back)."""
    within = 0.99
    for name, start, end in _STAGE_SHARE:
        if stage.startswith(name):
            within = start + (end - start) * percent / 100.0
            break
    return int(round(100 * ((number - 1) + within) / max(1, total)))


def make_validator(archive: Archive | None) -> Callable[..., None]:
    def validate_burn(
        target: str,
        params: dict[str, Any],
        config: ConfigStore,
        instances: Sequence[InstanceResult] = (),
    ) -> None:
        # The runner's own records, never a request's.
        params.pop("planned", None)
        params.pop("writing", None)
        try:
            check_device(target)
            clean = normalise_params(params)
            if archive is not None:
                check_studies(archive, clean["study_uids"])
            viewer_folder(clean, config.settings())
        except BurnError as exc:
            raise JobError(str(exc)) from None
        params.clear()
        params.update(clean)

    return validate_burn


def register_burn(engine: JobEngine, archive: Archive, watcher: DriveWatcher | None = None) -> None:
    engine.register(KIND, make_runner(watcher), validate=make_validator(archive))


# --- without a daemon --------------------------------------------------------------------------


@dataclass
class DirectResult:
    number: int
    total: int
    ok: bool
    target: str = ""
    error: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "disc": self.number,
            "total": self.total,
            "ok": self.ok,
            "target": self.target,
            "error": self.error,
            "seconds": round(self.seconds, 2),
        }


def burn_directly(
    archive: Archive,
    settings: Settings,
    device: str,
    params: dict[str, Any],
    data_dir: Path,
    *,
    say: Callable[[str], None] | None = None,
    drive_info: DriveLookup | None = None,
    wait_seconds: float = 10.0,
    waits: int = 60,
) -> list[DirectResult]:
    """Burn every disc once, in order, stopping at the first failure (no job, no retries).
    Raises BurnError for a request that cannot be burned. On a real drive each disc after
    the first is asked for on ``say`` and awaited (a blank medium in the drive) ``waits``
    times ``wait_seconds`` at most."""
    check_device(device)
    clean = normalise_params(params)
    planned = plan(archive, clean, settings, device, drive_info)
    spool = _spool(data_dir, f"burn-direct-{time.time_ns()}")
    results: list[DirectResult] = []
    total = len(planned["discs"])
    fresh: list[Path] = []

    def tell(text: str) -> None:
        if say is not None:
            say(text)

    def before_write(target: str) -> None:
        fresh.clear()
        path = target_path(target)
        if path is not None and (not path.exists() or path.stat().st_size == 0):
            fresh.append(path)

    try:
        for doc in planned["discs"]:
            number = int(doc["number"])
            started = time.monotonic()
            left = waits if number > 1 and not is_file_target(device) else 0
            while True:
                try:
                    target = burn_disc(
                        archive, settings, clean, planned, doc, device, spool,
                        stage=tell, before_write=before_write,
                    )  # fmt: skip
                except DiscFailed as exc:
                    if exc.phase == "write":
                        for path in fresh:  # our own half-written image: no disc
                            path.unlink(missing_ok=True)
                    if exc.phase == "write" and left > 0:
                        left -= 1
                        tell(f"insert a blank disc for disc {number} of {total} ({exc.message})")
                        time.sleep(wait_seconds)
                        continue
                    failed = disc_target(device, number)
                    elapsed = time.monotonic() - started
                    results.append(DirectResult(number, total, False, failed, exc.message, elapsed))
                    return results
                elapsed = time.monotonic() - started
                results.append(DirectResult(number, total, True, target, "", elapsed))
                break
            if number < total and not is_file_target(device):
                tell(f"insert a blank disc for disc {number + 1} of {total}")
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    return results
