"""De-identifying studies: the ``anonymize`` job, its validator, and the same work on plain files.

An ``anonymize`` job writes a de-identified copy of archived studies back into the archive
(its target is always ``archive``). Its parameters (``job.params``):

- ``study_uids``: one or more studies of the archive;
- ``profile``: ``basic`` (the Basic Application Level Confidentiality Profile, no options) or
  a site profile of the configuration (``anonymize-profile add``);
- ``send``: a configured node; a ``send`` job for the anonymized studies is queued once every
  instance is done (held ones aside);
- ``burn``: a drive (``/dev/sr0`` or ``stdio:/path/disc.iso``); a ``burn`` job likewise;
- ``confirm_pixels``: SOP Instance UIDs (of the originals) that the technologist has looked
  at and confirmed free of burned-in identifying text.

One instance result per source instance, keyed by the original SOP Instance UID. The copy is
made by ``appliance.anonymize.Anonymizer`` with the profile's project key, so the same source
always gives the same UIDs and pseudonym: a second attempt after a crash overwrites what the
first may have stored with identical objects, and no instance appears twice. An instance whose
pixels may carry burned-in text (``appliance.pixel_guard``) with no cleaning rule for it and
not confirmed is *held*: failed, not retryable, with the reason; the rest of the study goes
on and the job ends partially failed. Send and burn follow when nothing but held instances
is left undone.

The link between an original study and its anonymized copy re-identifies the patient: it is
kept in ``DATA/anonymization/links.sqlite`` (folder 0700, file 0600) beside the pseudonyms,
and in the job summary (``anonymized``), which only operators of this appliance can read.
An audit message (DICOM Instances Accessed, action Create) names the original study and its
patient (inside the protected audit trail only), the profile, the new study, the operator who
asked for it and where the copy goes next.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from appliance import audit
from appliance.config import ConfigError, ConfigStore
from appliance.job_engine import AttemptFailed, RunContext
from appliance.jobs import FAILED, SUCCESS, InstanceResult, JobError

if TYPE_CHECKING:
    from appliance.archive import Archive, InstanceRecord
    from appliance.job_engine import JobEngine

LOG = logging.getLogger("appliance.anonymize")

KIND = "anonymize"
TARGET = "archive"
BUILTIN_PROFILE = "basic"
#: What a request may carry; the others are the runner's own records.
REQUEST_KEYS = ("study_uids", "profile", "send", "burn", "confirm_pixels")
RUNNER_KEYS = ("requested_by", "follow_ups")
HELD_PREFIX = "held: "
ANON_DIR = "anonymization"
LINKS_FILE = "links.sqlite"
#: Calling AE title recorded for the copies in the archive index (they were made here).
SOURCE_AE = "ANONYMIZE"


class AnonymizeError(ValueError):
    """The request cannot be carried out as asked (no such study, profile, node, drive)."""


# --- the engine, pseudonyms and pixel rules (appliance.anonymize, pseudonyms, pixel_guard) ------


def profile_names(config: ConfigStore) -> list[str]:
    """The profiles a request may name: the built-in one first, then the site's."""
    return [BUILTIN_PROFILE, *(p.name for p in config.anon_profiles())]


def profile_config(config: ConfigStore, name: object) -> Any:
    """The stored profile (``config.AnonProfileConfig``; ``basic`` is built in)."""
    if not isinstance(name, str) or not name.strip():
        raise AnonymizeError("profile is required: basic, or a site profile (anonymize-profile)")
    try:
        return config.anon_profile(name.strip())
    except ConfigError:
        known = ", ".join(profile_names(config))
        raise AnonymizeError(
            f"no anonymization profile named {name.strip()!r}: one of {known}"
        ) from None


def load_profile(config: ConfigStore, name: object) -> Any:
    """The engine's ``appliance.anonymize.Profile`` called ``name``; AnonymizeError when the
    configuration has none."""
    from appliance import anonymize

    stored = profile_config(config, name)
    try:
        return anonymize.Profile(
            name=stored.name,
            options=frozenset(stored.options),
            overrides=dict(stored.overrides),
            patient_id_pattern=stored.patient_id_pattern,
            patient_name_pattern=stored.patient_name_pattern,
            project=stored.project,
        )
    except anonymize.ProfileError as exc:
        raise AnonymizeError(f"profile {stored.name}: {exc}") from None


def describe_profile(stored: Any) -> dict[str, Any]:
    """A stored profile as the API and the CLI show it."""
    return {
        "name": stored.name,
        "builtin": stored.name == BUILTIN_PROFILE or bool(getattr(stored, "builtin", False)),
        "options": list(stored.options),
        "overrides": dict(stored.overrides),
        "patient_id_pattern": stored.patient_id_pattern,
        "patient_name_pattern": stored.patient_name_pattern,
        "project": stored.project,
        "description": getattr(stored, "description", "") or "",
    }


def pixel_policy(config: ConfigStore) -> Any:
    """The pixel rules (burned-in text risk, regions to blank) from the configuration."""
    from appliance import pixel_guard

    return pixel_guard.PixelPolicy.from_config(config)


def open_pseudonyms(data_dir: Path) -> Any:
    from appliance.pseudonyms import PseudonymStore

    return PseudonymStore(Path(data_dir))


def _close(thing: Any) -> None:
    close = getattr(thing, "close", None)
    if close is not None:
        close()


@dataclass
class Outcome:
    """What became of one source object."""

    source_uid: str
    new_uid: str = ""
    study_uid: str = ""  # the original study
    new_study_uid: str = ""
    sop_class_uid: str = ""
    held: str = ""  # why it was not released
    error: str = ""
    retryable: bool = False
    path: str = ""  # where the copy went (a file of --output)
    dataset: Dataset | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.held and not self.error


class Worker:
    """One profile's anonymizer over one pseudonym store, for a job attempt or a CLI run.

    Objects the technologist confirmed skip the pixel guard: its question (may these pixels
    carry text?) has been answered by a person who looked at the image.
    """

    def __init__(
        self, config: ConfigStore, data_dir: Path, profile_name: str, confirmed: Sequence[str] = ()
    ) -> None:
        from appliance.anonymize import Anonymizer

        self.profile = load_profile(config, profile_name)
        self.confirmed = set(confirmed)
        self.pseudonyms = open_pseudonyms(data_dir)
        try:
            policy = pixel_policy(config)
            self.anonymizer = Anonymizer(self.profile, self.pseudonyms, pixel_policy=policy)
        except Exception:
            _close(self.pseudonyms)
            raise
        # The pseudonym store is SQLite: one object at a time through it.
        self.lock = threading.Lock()

    def close(self) -> None:
        _close(self.pseudonyms)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def anonymize(self, ds: Dataset, *, in_place: bool = False) -> Outcome:
        """``in_place``: ``ds`` was read only for this and may be edited into the copy (no
        copy of the object is made)."""
        source = _attr_text(ds, _SOP_INSTANCE_UID)
        outcome = Outcome(
            source_uid=source,
            study_uid=_attr_text(ds, _STUDY_UID),
            sop_class_uid=_attr_text(ds, _SOP_CLASS_UID),
        )
        with self.lock:
            result = self.anonymizer.anonymize(
                ds, pixels_confirmed=source in self.confirmed, in_place=in_place
            )
        if result.held:
            outcome.held = held_reason(result.held)
            return outcome
        new = result.dataset
        outcome.dataset = new
        outcome.new_uid = _attr_text(new, _SOP_INSTANCE_UID)
        outcome.new_study_uid = _attr_text(new, _STUDY_UID)
        outcome.sop_class_uid = _attr_text(new, _SOP_CLASS_UID) or outcome.sop_class_uid
        return outcome


_SOP_CLASS_UID, _SOP_INSTANCE_UID, _STUDY_UID = 0x00080016, 0x00080018, 0x0020000D


def _attr_text(ds: Dataset, tag: int) -> str:
    """An attribute's value as text, "" when absent or empty (``str(ds.get(kw, "") or "")``
    without the keyword lookup)."""
    if tag not in ds._dict:
        return ""
    return str(ds[tag].value or "")


def held_reason(why: str) -> str:
    """The instance result's error for a held object: "held: <why>; <what to do>"."""
    text = why.strip()
    if "confirm" not in text:
        text += "; clean pixel regions or confirm"
    return f"{HELD_PREFIX}{text}"


def transfer_syntax_of(ds: Dataset, fallback: str = ExplicitVRLittleEndian) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    if not ts:
        return fallback
    if ts == DeflatedExplicitVRLittleEndian:
        # A deflated source is written inflated: every peer reads that.
        return ExplicitVRLittleEndian
    return ts


def encode_dataset(ds: Dataset) -> tuple[bytes, str]:
    """The data set's bytes (no File Meta) in its transfer syntax, and that syntax. (What
    pynetdicom's ``encode`` does, without importing pynetdicom: a CLI run need not load it.)"""
    from pydicom.filebase import DicomBytesIO

    ts = transfer_syntax_of(ds)
    buffer = DicomBytesIO()
    _write_encoded(buffer, ds, ts)
    return buffer.parent.getvalue(), ts


def _write_encoded(fp: Any, ds: Dataset, ts: str) -> None:
    """``ds`` (no File Meta) encoded in ``ts`` onto ``fp``, a pydicom DicomFileLike."""
    from pydicom.filewriter import write_dataset

    fp.is_implicit_VR = ts == ImplicitVRLittleEndian
    fp.is_little_endian = ts != ExplicitVRBigEndian
    try:
        write_dataset(fp, ds)
    except OSError:
        raise
    except Exception as exc:
        raise ValueError("the anonymized data set cannot be encoded") from exc


def store_copy(archive: Archive, outcome: Outcome) -> None:
    """Store the anonymized object in the archive; sets ``error``/``retryable`` on failure."""
    from appliance.archive import StoreRefused

    assert outcome.dataset is not None
    try:
        encoded, ts = encode_dataset(outcome.dataset)
        archive.store_encoded(
            encoded,
            sop_class_uid=outcome.sop_class_uid,
            sop_instance_uid=outcome.new_uid,
            transfer_syntax=ts,
            source_ae=SOURCE_AE,
        )
    except StoreRefused as exc:
        outcome.error = f"the archive refused the copy: {exc.comment}"
        # Out of resources (a full disk) clears when space is freed; the rest does not.
        outcome.retryable = 0xA700 <= exc.status <= 0xA7FF
    except Exception as exc:  # noqa: BLE001 - one bad object fails alone
        outcome.error = f"cannot encode the copy: {exc}"
    finally:
        outcome.dataset = None


def anonymize_record(worker: Worker, archive: Archive, record: InstanceRecord) -> Outcome:
    """Read one archived instance, anonymize it and store the copy."""
    try:
        ds = dcmread(record.path)
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        return Outcome(record.sop_instance_uid, error=f"cannot read {record.path.name}: {exc}")
    try:
        outcome = worker.anonymize(ds, in_place=True)  # read for this alone
    except Exception as exc:  # noqa: BLE001 - a malformed object fails alone, logged
        LOG.exception("anonymize: %s failed", record.sop_instance_uid)
        return Outcome(record.sop_instance_uid, study_uid=record.study_uid, error=str(exc))
    outcome.source_uid = record.sop_instance_uid
    outcome.study_uid = outcome.study_uid or record.study_uid
    if outcome.ok:
        store_copy(archive, outcome)
    return outcome


# --- the link between originals and copies ---------------------------------------------------


def links_path(data_dir: Path) -> Path:
    return Path(data_dir) / ANON_DIR / LINKS_FILE


class Links:
    """Original study -> anonymized study, per profile (re-identifying: kept 0600)."""

    def __init__(self, data_dir: Path) -> None:
        path = links_path(data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        fresh = not path.exists()
        if fresh:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS links (original_study TEXT NOT NULL, profile TEXT NOT"
            " NULL, anonymized_study TEXT NOT NULL, job_id INTEGER, created REAL,"
            " PRIMARY KEY (original_study, profile, anonymized_study))"
        )
        self._db.commit()

    def add(self, original: str, profile: str, anonymized: str, job_id: int | None) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO links VALUES (?,?,?,?,?)",
                (original, profile, anonymized, job_id, time.time()),
            )

    def for_original(self, original: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT original_study, profile, anonymized_study, job_id, created FROM links"
            " WHERE original_study=? ORDER BY created",
            (original,),
        ).fetchall()
        names = ("original_study", "profile", "anonymized_study", "job_id", "created")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def close(self) -> None:
        self._db.close()


def record_links(data_dir: Path, mapping: dict[str, str], profile: str, job_id: int | None) -> None:
    links = Links(data_dir)
    try:
        for original, anonymized in mapping.items():
            links.add(original, profile, anonymized, job_id)
    finally:
        links.close()


# --- the request ---------------------------------------------------------------------------------


def _uids(value: object, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(u, str) and u.strip() for u in value):
        raise AnonymizeError(f"{key} must be a list of UIDs")
    return list(dict.fromkeys(u.strip() for u in value))


def normalise_params(params: dict[str, Any], config: ConfigStore) -> dict[str, Any]:
    """The request checked and cleaned (profile, node and drive exist); AnonymizeError."""
    unknown = sorted(set(params) - set(REQUEST_KEYS))
    if unknown:
        raise AnonymizeError(
            f"unknown anonymize option {unknown[0]!r}: one of {', '.join(REQUEST_KEYS)}"
        )
    studies = _uids(params.get("study_uids"), "study_uids")
    if not studies:
        raise AnonymizeError("nothing to anonymize: give at least one study")
    stored = profile_config(config, params.get("profile"))
    if "retain_uids" in stored.options:
        # The copy would carry the original's SOP Instance UIDs: stored in the archive it would
        # replace the original (or be dropped as a duplicate and the original sent instead).
        raise AnonymizeError(
            f"profile {stored.name} retains UIDs: its copies cannot go into the archive beside "
            "the originals; use it on files (anonymize --input DIR --output DIR)"
        )
    profile = stored.name
    clean: dict[str, Any] = {"study_uids": studies, "profile": profile}
    send = params.get("send")
    if send not in (None, ""):
        if not isinstance(send, str):
            raise AnonymizeError("send must be the name of a configured node")
        try:
            clean["send"] = config.node(send.strip()).name
        except ConfigError:
            raise AnonymizeError(f"send: no node named {send.strip()!r}") from None
    burn = params.get("burn")
    if burn not in (None, ""):
        from appliance.media_burn import BurnError, check_device

        try:
            clean["burn"] = check_device(burn)
        except BurnError as exc:
            raise AnonymizeError(f"burn: {exc}") from None
    confirmed = _uids(params.get("confirm_pixels"), "confirm_pixels")
    if confirmed:
        clean["confirm_pixels"] = confirmed
    return clean


def check_studies(archive: Archive, study_uids: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for uid in study_uids:
        row = archive.study(uid)
        if row is None:
            raise AnonymizeError(f"the archive has no study {uid}")
        rows.append(row)
    return rows


def study_records(archive: Archive, study_uids: Sequence[str]) -> list[InstanceRecord]:
    from appliance.fileset import FileSetError, study_instances

    try:
        records = study_instances(archive, list(study_uids))
    except FileSetError as exc:
        raise AnonymizeError(str(exc)) from None
    if not records:
        raise AnonymizeError("the studies have no instances in the archive")
    return records


def summary_for(archive: Archive, params: dict[str, Any]) -> dict[str, Any]:
    rows = check_studies(archive, params["study_uids"])
    first = rows[0]
    summary: dict[str, Any] = {
        "patient_name": first.get("patient_name") or "",
        "patient_id": first.get("patient_id") or "",
        "study_description": first.get("study_description") or "",
        "study_date": first.get("study_date") or "",
        "studies": len(rows),
        "profile": params["profile"],
        "anonymized": {},
    }
    return summary


def make_validator(archive: Archive | None) -> Callable[..., None]:
    def validate_anonymize(
        target: str,
        params: dict[str, Any],
        config: ConfigStore,
        instances: Sequence[InstanceResult] = (),
    ) -> None:
        if target != TARGET:
            raise JobError(f"anonymize jobs write into the archive: their target is {TARGET!r}")
        for key in RUNNER_KEYS:
            params.pop(key, None)  # the runner's own records, never a request's
        try:
            clean = normalise_params(params, config)
            if archive is not None:
                check_studies(archive, clean["study_uids"])
        except AnonymizeError as exc:
            raise JobError(str(exc)) from None
        # Who asked: the audit message of the copy names them (the worker thread that makes
        # it runs later, outside the request).
        who = audit.actor()
        if who is not None:
            clean["requested_by"] = asdict(who)
        params.clear()
        params.update(clean)

    return validate_anonymize


# --- the job -------------------------------------------------------------------------------------


def _operator(params: dict[str, Any]) -> audit.Participant | None:
    doc = params.get("requested_by")
    if not isinstance(doc, dict):
        return None
    try:
        return audit.Participant(**doc)
    except TypeError:
        return None


def audit_copy(
    archive: Archive,
    *,
    original: str,
    anonymized: str,
    profile: str,
    destinations: Sequence[str],
    done: int,
    held: int,
    failed: int,
    operator: audit.Participant | None,
    job_id: int | None = None,
) -> None:
    """DICOM Instances Accessed (Create): a de-identified copy of ``original`` was made.

    The original study (with its patient) is named only inside the audit trail, which is
    protected like the archive; the description carries UIDs and counts, never PHI."""
    study = audit.studies_from_uids(archive, [], [original])[0] if archive is not None else None
    studies = [study] if study is not None else [audit.Study(original)]
    where = ", then ".join(destinations) if destinations else "the archive only"
    copy = audit.ParticipantObject(
        object_id=anonymized,
        id_type=audit.STUDY_UID_TYPE,
        name=f"de-identified copy ({profile})",
        details={"Profile": profile, "Destination": where},
    )
    outcome = 0 if not failed and not held else (4 if done else 8)
    job = f"job {job_id}: " if job_id is not None else ""
    description = (
        f"{job}de-identified with profile {profile} into study {anonymized}: {done} made, "
        f"{held} held, {failed} failed; destination: {where}"
    )
    participants = [operator] if operator is not None else []
    with audit.acting_as(operator):
        audit.emit(
            "instances-accessed",
            action="C",
            outcome=outcome,
            description=description,
            participants=participants,
            local_requestor=operator is None,
            studies=studies,
            objects=[copy],
        )


def _destinations(params: dict[str, Any]) -> list[str]:
    where = []
    if params.get("send"):
        where.append(f"send to {params['send']}")
    if params.get("burn"):
        where.append(f"burn to {params['burn']}")
    return where


def make_runner(engine: JobEngine) -> Callable[[RunContext], None]:
    def run_anonymize(ctx: RunContext) -> None:
        _run(ctx, engine)

    return run_anonymize


def _run(ctx: RunContext, engine: JobEngine) -> None:
    job = ctx.job
    if job.target != TARGET:
        raise AttemptFailed(
            f"anonymize jobs write into the archive, not {job.target}", retryable=False
        )
    params = job.params
    if not job.instances:
        ctx.set_stage("listing")
        try:
            records = study_records(ctx.archive, params["study_uids"])
            summary = summary_for(ctx.archive, params)
        except AnonymizeError as exc:
            raise AttemptFailed(str(exc), retryable=False) from None
        ctx.set_summary(summary)
        ctx.add_instances(
            [InstanceResult(r.sop_instance_uid, sop_class_uid=r.sop_class_uid) for r in records]
        )
        ctx.log(f"{len(records)} instance(s) to anonymize with profile {params['profile']}")
    try:
        worker = Worker(
            ctx.config, ctx.data_dir, params["profile"], params.get("confirm_pixels", ())
        )
    except AnonymizeError as exc:
        raise AttemptFailed(str(exc), retryable=False) from None
    total = len(job.instances)
    try:
        for before in list(job.outstanding()):
            if ctx.should_stop():
                return
            _one(ctx, worker, before, total)
    finally:
        worker.close()
    if job.outstanding():
        return  # retryable failures: the engine schedules another attempt
    _finish(ctx, engine)


def _one(ctx: RunContext, worker: Worker, before: InstanceResult, total: int) -> None:
    uid = before.sop_instance_uid
    record = ctx.archive.instance(uid)
    if record is None:
        ctx.record(
            replace(before, status=FAILED, error="no longer in the archive", retryable=False)
        )
        return
    ctx.set_stage(f"anonymizing {_done(ctx) + 1} of {total}")
    outcome = anonymize_record(worker, ctx.archive, record)
    if outcome.held:
        ctx.record(replace(before, status=FAILED, error=outcome.held, retryable=False))
        ctx.log(f"{uid} {outcome.held}")
        return
    if outcome.error:
        ctx.record(replace(before, status=FAILED, error=outcome.error, retryable=outcome.retryable))
        return
    with ctx.lock:
        anonymized = ctx.job.summary.setdefault("anonymized", {})
        if anonymized.get(outcome.study_uid) != outcome.new_study_uid:
            anonymized[outcome.study_uid] = outcome.new_study_uid
    ctx.record(replace(before, status=SUCCESS, error="", retryable=False))
    ctx.set_progress(done=_done(ctx), total=total)


def _done(ctx: RunContext) -> int:
    with ctx.lock:
        return sum(1 for i in ctx.job.instances if i.done)


def _finish(ctx: RunContext, engine: JobEngine) -> None:
    """Everything tried: link, audit, and queue what comes next (once)."""
    job = ctx.job
    params = job.params
    with ctx.lock:
        mapping = dict(job.summary.get("anonymized") or {})
        held = [i for i in job.instances if i.status == FAILED and i.error.startswith(HELD_PREFIX)]
        failed = [
            i for i in job.instances if i.status == FAILED and not i.error.startswith(HELD_PREFIX)
        ]
        done = [i for i in job.instances if i.done]
    if mapping:
        record_links(ctx.data_dir, mapping, params["profile"], job.id)
    if held:
        ctx.log(
            f"{len(held)} instance(s) held (burned-in annotation possible): confirm them "
            "after looking at them (--confirm-pixels) or add a pixel region rule"
        )
    follow = not failed and bool(done) and bool(mapping)
    if not (params.get("follow_ups") or {}).get("audited"):
        for original, anonymized in mapping.items():
            study_done = _count(ctx, original, done)
            audit_copy(
                ctx.archive,
                original=original,
                anonymized=anonymized,
                profile=params["profile"],
                destinations=_destinations(params) if follow else [],
                done=study_done,
                held=_count(ctx, original, held),
                failed=_count(ctx, original, failed),
                operator=_operator(params),
                job_id=job.id,
            )
        with ctx.lock:
            params.setdefault("follow_ups", {})["audited"] = True
    if (params.get("send") or params.get("burn")) and not follow:
        ctx.log("not sent or burned: some instances failed; retry them first")
        return
    new_studies = list(dict.fromkeys(mapping.values()))
    if params.get("send"):
        _follow_up(ctx, engine, "send", params["send"], {"study_uids": new_studies})
    if params.get("burn"):
        _follow_up(ctx, engine, "burn", params["burn"], {"study_uids": new_studies})


def _count(ctx: RunContext, original: str, results: list[InstanceResult]) -> int:
    count = 0
    for result in results:
        record = ctx.archive.instance(result.sop_instance_uid)
        if record is not None and record.study_uid == original:
            count += 1
    return count


def _follow_up(
    ctx: RunContext, engine: JobEngine, kind: str, target: str, params: dict[str, Any]
) -> None:
    """Queue the send or burn of the copies exactly once, across crashes: the intent is saved
    before the job is queued; an intent without a job id is resolved by looking for a job of
    that kind, target and studies made since this job began."""
    job = ctx.job
    follow = job.params.setdefault("follow_ups", {})
    known = follow.get(kind)
    if isinstance(known, int):
        return
    if known == "queuing":
        for other in engine.list(kinds=[kind], target=target, limit=200):
            if (
                other.created >= job.created
                and list(other.params.get("study_uids") or []) == params["study_uids"]
            ):
                with ctx.lock:
                    follow[kind] = other.id
                ctx.flush()
                return
    with ctx.lock:
        follow[kind] = "queuing"
    ctx.flush()
    try:
        queued = engine.submit(kind, target, params, summary=_copy_summary(ctx, params))
    except JobError as exc:
        with ctx.lock:
            follow[kind] = f"refused: {exc}"
        ctx.log(f"{kind} to {target} not queued: {exc}")
        return
    with ctx.lock:
        follow[kind] = queued.id
    ctx.log(f"{kind} job {queued.id} queued for the anonymized copy to {target}")
    ctx.flush()


def _copy_summary(ctx: RunContext, params: dict[str, Any]) -> dict[str, Any]:
    """What the follow-up job shows: the copy's pseudonym, never the original patient."""
    row = ctx.archive.study(params["study_uids"][0]) or {}
    return {
        "patient_name": row.get("patient_name") or "",
        "patient_id": row.get("patient_id") or "",
        "study_description": row.get("study_description") or "",
        "study_date": row.get("study_date") or "",
        "studies": len(params["study_uids"]),
    }


def register_anonymize(engine: JobEngine, archive: Archive) -> None:
    engine.register(KIND, make_runner(engine), validate=make_validator(archive))


# --- without a daemon: archived studies -------------------------------------------------------


@dataclass
class DirectReport:
    outcomes: list[Outcome] = field(default_factory=list)
    anonymized: dict[str, str] = field(default_factory=dict)  # original study -> copy
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    seconds: float = 0.0

    @property
    def held(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.held]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error]

    @property
    def done(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]

    def as_dict(self) -> dict[str, Any]:
        return {
            "done": len(self.done),
            "held": [{"instance": o.source_uid, "reason": o.held} for o in self.held],
            "failed": [{"instance": o.source_uid, "error": o.error} for o in self.failed],
            "skipped": [{"path": p, "reason": why} for p, why in self.skipped],
            "anonymized": dict(self.anonymized),
            "outputs": [o.path for o in self.done if o.path],
            "seconds": round(self.seconds, 2),
        }


def anonymize_studies(
    archive: Archive,
    config: ConfigStore,
    data_dir: Path,
    params: dict[str, Any],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> DirectReport:
    """The job's work once, without a job: every instance of the studies into the archive."""
    clean = normalise_params(params, config)
    check_studies(archive, clean["study_uids"])
    records = study_records(archive, clean["study_uids"])
    report = DirectReport()
    started = time.monotonic()
    with Worker(config, data_dir, clean["profile"], clean.get("confirm_pixels", ())) as worker:
        for number, record in enumerate(records, start=1):
            outcome = anonymize_record(worker, archive, record)
            report.outcomes.append(outcome)
            if outcome.ok:
                report.anonymized.setdefault(outcome.study_uid, outcome.new_study_uid)
            if progress is not None:
                progress(number, len(records))
    report.seconds = time.monotonic() - started
    if report.anonymized:
        record_links(data_dir, report.anonymized, clean["profile"], None)
    for original, anonymized in report.anonymized.items():
        mine = [o for o in report.outcomes if o.study_uid == original]
        audit_copy(
            archive,
            original=original,
            anonymized=anonymized,
            profile=clean["profile"],
            destinations=_destinations(clean) if not report.failed else [],
            done=sum(1 for o in mine if o.ok),
            held=sum(1 for o in mine if o.held),
            failed=sum(1 for o in mine if o.error),
            operator=audit.os_user(),
        )
    return report


# --- plain files ---------------------------------------------------------------------------------


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def output_name(outcome: Outcome, ds: Dataset) -> Path:
    """Where a copy goes under the output folder: by its new UIDs, so no original file or
    folder name (which often carries the patient's name) reaches the copy."""
    series = str(ds.get("SeriesInstanceUID", "") or "series")
    return Path(outcome.new_study_uid or "study") / series / f"{outcome.new_uid}.dcm"


def iter_files(folder: Path) -> Iterator[Path]:
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()
        for name in sorted(files):
            yield Path(directory) / name


def write_part10(path: Path, ds: Dataset) -> None:
    """``ds`` as a Part 10 file at ``path``, atomically: written under a temporary name in the
    same folder and renamed, so a reader never sees half a file. Not fsynced one by one (ten
    times the cost of the rest on ext4): ``sync_folder`` makes a whole run durable at its end.
    """
    from pydicom.filebase import DicomFileLike

    from appliance.archive import encode_file_meta
    from appliance.fileio import PARTIAL_SUFFIX

    ts = transfer_syntax_of(ds)
    head = encode_file_meta(_peek(ds, 0x00080016), _peek(ds, _SOP_INSTANCE_UID), ts, "")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(head)
            # Encoded straight into the file: no in-memory copy of the whole object first.
            _write_encoded(DicomFileLike(handle), ds, ts)
            handle.flush()
            if hasattr(os, "posix_fadvise"):
                # Start writing it out now (Linux starts writeback for DONTNEED), so the one
                # sync at the end finds little left to wait for; the copy is not read again.
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _peek(ds: Dataset, tag: int) -> str:
    """An attribute's value as text, read without decoding it in ``ds``: a still raw element
    is then written as it came, exactly as if it had not been looked at."""
    from pydicom.datadict import keyword_for_tag
    from pydicom.dataelem import RawDataElement, convert_raw_data_element

    elem = ds.get_item(tag)
    if elem is None:  # as ds.<keyword> says it
        raise AttributeError(
            f"'{type(ds).__name__}' object has no attribute '{keyword_for_tag(tag)}'"
        )
    if isinstance(elem, RawDataElement):
        elem = convert_raw_data_element(elem, encoding=ds._character_set, ds=ds)
    return str(elem.value)


def sync_folder(folder: Path) -> None:
    """Flush everything written under ``folder`` to disk at once (syncfs(2) on its file
    system; sync(2) where syncfs cannot be called)."""
    import ctypes
    import ctypes.util

    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


def anonymize_files(
    config: ConfigStore,
    data_dir: Path,
    profile: str,
    source: Path,
    output: Path,
    *,
    confirm_pixels: Sequence[str] = (),
    progress: Callable[[Outcome], None] | None = None,
) -> DirectReport:
    """Every DICOM file under ``source`` anonymized into ``output`` (created). Files that are
    not DICOM objects (and DICOMDIRs) are skipped and listed. AnonymizeError for a bad
    request."""
    source, output = Path(source).resolve(), Path(output).resolve()
    if not source.is_dir():
        raise AnonymizeError(f"{source}: no such folder")
    if output == source or _is_inside(output, source):
        raise AnonymizeError("the output folder must not be the input folder or inside it")
    if _is_inside(source, output):
        raise AnonymizeError("the input folder must not be inside the output folder")
    output.mkdir(parents=True, exist_ok=True)
    report = DirectReport()
    started = time.monotonic()
    with Worker(config, data_dir, profile, confirm_pixels) as worker:
        for path in iter_files(source):
            shown = str(path.relative_to(source))
            try:
                ds = dcmread(path)
            except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
                report.skipped.append((shown, f"not a DICOM file ({exc})"))
                continue
            if "SOPInstanceUID" not in ds or "DirectoryRecordSequence" in ds:
                report.skipped.append((shown, "not a composite object (a DICOMDIR?)"))
                continue
            source_uid = str(ds.get("SOPInstanceUID", ""))
            try:
                outcome = worker.anonymize(ds, in_place=True)  # read for this alone
            except Exception as exc:  # noqa: BLE001 - one bad file fails alone
                outcome = Outcome(source_uid, error=str(exc))
            outcome.path = shown
            if outcome.ok:
                assert outcome.dataset is not None
                target = output / output_name(outcome, outcome.dataset)
                try:
                    write_part10(target, outcome.dataset)
                    outcome.path = str(target.relative_to(output))
                    report.anonymized.setdefault(outcome.study_uid, outcome.new_study_uid)
                except Exception as exc:  # noqa: BLE001
                    outcome.error = f"cannot write {target}: {exc}"
                outcome.dataset = None
            report.outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
    sync_folder(output)
    report.seconds = time.monotonic() - started
    for original, anonymized in report.anonymized.items():
        mine = [o for o in report.outcomes if o.study_uid == original]
        audit_copy(
            None,  # type: ignore[arg-type]
            original=original,
            anonymized=anonymized,
            profile=profile,
            destinations=[f"files in {output}"],
            done=sum(1 for o in mine if o.ok),
            held=sum(1 for o in mine if o.held),
            failed=sum(1 for o in mine if o.error),
            operator=audit.os_user(),
        )
    return report


# --- preview -------------------------------------------------------------------------------------


def preview_rows(config: ConfigStore, data_dir: Path, profile_name: str, ds: Dataset) -> dict:
    """The side-by-side table for one object: {"instance", "profile", "rows", "held"}. A dry
    run: no pseudonym is stored by looking (``Anonymizer.preview``)."""
    from appliance.anonymize import Anonymizer

    profile = load_profile(config, profile_name)
    store = open_pseudonyms(data_dir)
    try:
        result = Anonymizer(profile, store, pixel_policy=pixel_policy(config)).preview(ds)
    finally:
        _close(store)
    return {
        "instance": str(ds.get("SOPInstanceUID", "") or ""),
        "profile": profile.name,
        "rows": [change_row(c) for c in result.changes],
        "held": held_reason(result.held)[len(HELD_PREFIX) :] if result.held else None,
    }


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(_text(v) for v in value)  # type: ignore[union-attr]
    if isinstance(value, Dataset):
        return "(item)"
    text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def change_row(change: Any) -> dict[str, str]:
    """A preview row: tag (with its place in nested sequences), keyword, original, action,
    result, as text."""
    row = change.as_row() if hasattr(change, "as_row") else {}
    return {
        key: _text(row.get(key, getattr(change, key, "")))
        for key in ("tag", "keyword", "original", "action", "result")
    }
