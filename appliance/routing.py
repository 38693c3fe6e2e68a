"""Auto-routing: forward received instances that match a rule, one job per study and node.

``Router.on_stored(info)`` is called by the DICOM server after each instance it stored, before
the C-STORE is acknowledged. Every enabled rule (``ConfigStore.routing_rules()``) the instance
matches adds it to that rule's open batch for its study. A background thread submits a batch
once its study has been quiet (no new matching instance) for ``routing_quiet_seconds``: one
``forward`` job per destination of the rule, with the batch's SOP Instance UIDs. An instance
arriving after its batch was submitted opens a new batch. The rule as configured when a batch
is due decides: a rule removed or disabled meanwhile drops its batches (with a log line).

Nothing acknowledged is lost on a crash
---------------------------------------
Open batches are kept in ``routing.json`` (tinydb, written atomically: temporary file, fsync,
rename), but cheaply: a batch is written once, when it opens (rule, study, wall-clock time
and its first SOP Instance UID), and removed once its jobs are submitted (the job store has
them from then on). Later instances of the batch are not written here at all: the archive
index already records, for every instance, its study, SOP class, modality (series), the
calling AE title (``source_ae``) and the time it was indexed (``received_at``), and that row
is committed before the C-STORE is acknowledged. So on start-up each persisted batch is
rebuilt from the index: every instance of its study received since its first instance, that
still matches the rule. The C-STORE path thus costs one small file write per new (rule, study)
and nothing per further instance. Resumed batches restart their quiet timer.

A crash between submitting a batch's jobs and removing it from ``routing.json`` submits the
remaining destinations again after the restart: the design errs on forwarding twice (C-STORE of
the same instance is harmless for a PACS) rather than never. Destinations already submitted are
written to the batch's entry after each one, so only the job being submitted at the crash can
be duplicated.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tinydb import Query, TinyDB

from appliance.archive import Archive
from appliance.config import AtomicJSONStorage, ConfigError, ConfigStore, RoutingRule
from appliance.jobs import Job, JobError

LOG = logging.getLogger("appliance.routing")

ROUTING_FILE = "routing.json"
FORWARD = "forward"


class Submit(Protocol):
    """The job engine's ``submit``."""

    def __call__(
        self,
        kind: str,
        target: str,
        params: dict[str, Any],
        *,
        priority: int = 0,
        summary: dict[str, Any] | None = None,
    ) -> Job: ...


@dataclass
class Batch:
    """Instances of one study that one rule collects until the study is quiet."""

    id: str
    rule: str
    study_uid: str
    opened: float  # wall clock, when its first instance was stored
    first_uid: str
    last_activity: float  # the router's clock
    instances: dict[str, None] = field(default_factory=dict)  # ordered set of SOP Instance UIDs
    # Destinations whose job was submitted already (a submission that failed halfway).
    done: list[str] = field(default_factory=list)
    # No longer takes instances: due, being submitted, or waiting to try submitting again.
    closed: bool = False
    # Written to routing.json; tried again with each instance until it is.
    persisted: bool = False

    def doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule": self.rule,
            "study_uid": self.study_uid,
            "opened": self.opened,
            "first_uid": self.first_uid,
            "done": list(self.done),
        }


class Router:
    """Collects matching instances per (rule, study) and submits forward jobs when quiet.

    Construct it after ``archive.recover()``: persisted batches are rebuilt from the archive
    index here. Then ``start()`` the thread; ``stop()`` leaves open batches persisted for the
    next start.
    """

    def __init__(
        self,
        config: ConfigStore,
        submit: Submit | Callable[..., Job],
        archive: Archive,
        data_dir: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.archive = archive
        self._submit = submit
        self._clock = clock
        self._lock = threading.Lock()
        self._batches: dict[str, Batch] = {}
        self._open: dict[tuple[str, str], str] = {}  # (rule, study) -> id of its open batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._submitting = threading.Lock()  # one pass of submit_due at a time
        # Rules and quiet time as last read; re-read when config.json changes.
        self._config_stamp: tuple[int, int, int] | None = None
        self._config_read = False
        self._rules: dict[str, RoutingRule] = {}
        self._quiet = 30.0
        self._refresh_config()
        path = Path(data_dir) / ROUTING_FILE
        self._db = TinyDB(str(path), storage=AtomicJSONStorage)
        self._table = self._db.table("batches")
        self._resume(path)

    # --- configuration -----------------------------------------------------------------------

    def _refresh_config(self) -> None:
        """Re-read rules and quiet time when config.json changed (a stat, on every call)."""
        try:
            st = os.stat(self.config.path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if self._config_read and stamp == self._config_stamp:
            return
        try:
            rules = {rule.name: rule for rule in self.config.routing_rules()}
            quiet = self.config.settings().routing_quiet_seconds
        except Exception as exc:  # ConfigError, or a hand edit in progress
            # Logged once per change of the file, not for every instance.
            LOG.error("configuration unreadable, routing with the rules read before: %s", exc)
            self._config_stamp, self._config_read = stamp, True
            return
        self._rules, self._quiet, self._config_stamp = rules, quiet, stamp
        self._config_read = True

    def rules(self) -> list[RoutingRule]:
        self._refresh_config()
        return list(self._rules.values())

    # --- receiving -----------------------------------------------------------------------------

    def on_stored(self, info: dict[str, Any]) -> None:
        """Called after an instance was stored and indexed, before it is acknowledged.

        A batch that cannot be written to routing.json (a full disk) is kept in memory and
        written with the next instance; the error is logged, the C-STORE is not failed.
        """
        self._refresh_config()
        matched = [
            rule
            for rule in self._rules.values()
            if rule.enabled
            and rule.matches(
                calling_ae=str(info.get("calling_ae") or ""),
                modality=str(info.get("modality") or ""),
                sop_class_uid=str(info.get("sop_class_uid") or ""),
            )
        ]
        if not matched:
            return
        study_uid = str(info.get("study_instance_uid") or "")
        sop_instance_uid = str(info.get("sop_instance_uid") or "")
        if not study_uid or not sop_instance_uid:
            LOG.error(
                "instance %r without a study UID not routed by %s",
                sop_instance_uid,
                ", ".join(rule.name for rule in matched),
            )
            return
        with self._lock:
            now = self._clock()
            for rule in matched:
                batch_id = self._open.get((rule.name, study_uid))
                batch = self._batches.get(batch_id) if batch_id else None
                if batch is None:
                    batch = Batch(
                        id=uuid.uuid4().hex,
                        rule=rule.name,
                        study_uid=study_uid,
                        opened=time.time(),
                        first_uid=sop_instance_uid,
                        last_activity=now,
                    )
                    self._batches[batch.id] = batch
                    self._open[(rule.name, study_uid)] = batch.id
                    LOG.info(
                        "routing %s: study %s collecting for %s",
                        rule.name,
                        study_uid,
                        ", ".join(rule.destinations),
                    )
                batch.instances[sop_instance_uid] = None
                batch.last_activity = now
                if not batch.persisted:
                    # Before the instance is acknowledged: see the module docstring.
                    self._persist(batch)

    def _persist(self, batch: Batch) -> None:
        try:
            self._table.insert(batch.doc())
        except Exception as exc:
            LOG.error(
                "routing %s: cannot record the batch of study %s in %s (%s); it is forwarded "
                "unless the daemon stops before",
                batch.rule,
                batch.study_uid,
                ROUTING_FILE,
                exc,
            )
            return
        batch.persisted = True

    # --- submitting ----------------------------------------------------------------------------

    def submit_due(self) -> list[Job]:
        """Submit the forward jobs of every batch whose study has been quiet long enough."""
        with self._submitting:
            self._refresh_config()
            now = self._clock()
            with self._lock:
                due = [b for b in self._batches.values() if now - b.last_activity >= self._quiet]
                for batch in due:
                    batch.closed = True
                    if self._open.get((batch.rule, batch.study_uid)) == batch.id:
                        del self._open[(batch.rule, batch.study_uid)]
            jobs: list[Job] = []
            for batch in due:
                jobs.extend(self._submit_batch(batch))
            return jobs

    def _submit_batch(self, batch: Batch) -> list[Job]:
        rule = self._rules.get(batch.rule)
        if rule is None or not rule.enabled:
            LOG.warning(
                "routing %s: rule %s, %d instance(s) of study %s not forwarded",
                batch.rule,
                "removed" if rule is None else "disabled",
                len(batch.instances),
                batch.study_uid,
            )
            self._forget(batch)
            return []
        uids = list(batch.instances)
        if not uids:
            LOG.warning(
                "routing %s: none of study %s's instances are in the archive any more",
                rule.name,
                batch.study_uid,
            )
            self._forget(batch)
            return []
        # The study goes under "study_uid", not "study_uids": a send runner given study_uids
        # sends every instance of the study, and a batch is only those the rule matched.
        params = {"sop_instance_uids": uids, "study_uid": batch.study_uid, "rule": rule.name}
        summary = self._summary(batch.study_uid, len(uids))
        jobs = []
        for destination in rule.destinations:
            if destination in batch.done:
                continue
            try:
                job = self._submit(
                    FORWARD,
                    destination,
                    dict(params, sop_instance_uids=list(uids)),
                    summary=dict(summary),
                )
            except (ConfigError, JobError) as exc:
                # Will not change by trying again (the node was removed, say).
                LOG.error(
                    "routing %s: study %s not forwarded to %s: %s",
                    rule.name,
                    batch.study_uid,
                    destination,
                    exc,
                )
            except Exception:
                LOG.exception(
                    "routing %s: cannot queue the forward of study %s to %s; trying again in %g s",
                    rule.name,
                    batch.study_uid,
                    destination,
                    self._quiet,
                )
                with self._lock:
                    batch.last_activity = self._clock()
                    self._record_done(batch)
                return jobs
            else:
                jobs.append(job)
                LOG.info(
                    "routing %s: study %s, %d instance(s) to %s as job %s",
                    rule.name,
                    batch.study_uid,
                    len(uids),
                    destination,
                    job.id,
                )
            batch.done.append(destination)
            if len(batch.done) < len(rule.destinations):
                with self._lock:
                    self._record_done(batch)
        self._forget(batch)
        return jobs

    def _record_done(self, batch: Batch) -> None:
        try:
            self._table.update({"done": list(batch.done)}, Query().id == batch.id)
        except Exception as exc:
            LOG.error("routing %s: cannot update %s: %s", batch.rule, ROUTING_FILE, exc)

    def _forget(self, batch: Batch) -> None:
        with self._lock:
            self._batches.pop(batch.id, None)
            if self._open.get((batch.rule, batch.study_uid)) == batch.id:
                del self._open[(batch.rule, batch.study_uid)]
            try:
                self._table.remove(Query().id == batch.id)
            except Exception as exc:
                # Left in the file: the next start forwards the study once more.
                LOG.error("routing %s: cannot update %s: %s", batch.rule, ROUTING_FILE, exc)

    def _summary(self, study_uid: str, count: int) -> dict[str, Any]:
        study = self.archive.study(study_uid) or {}
        return {
            "patient_name": study.get("patient_name") or "",
            "patient_id": study.get("patient_id") or "",
            "study_description": study.get("study_description") or "",
            "study_date": study.get("study_date") or "",
            "studies": 1,
            "instances": count,
        }

    # --- start-up --------------------------------------------------------------------------

    def _resume(self, path: Path) -> None:
        """Rebuild the batches a previous run left open from the archive index."""
        try:
            docs = [dict(doc) for doc in self._table.all()]
        except ConfigError as exc:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            os.replace(path, aside)
            LOG.error(
                "%s unreadable, moved aside to %s; batches open at the last stop are not "
                "resumed: %s",
                path,
                aside.name,
                exc,
            )
            self._db.clear_cache()
            self._table.clear_cache()
            return
        now = self._clock()
        for doc in docs:
            rule = self._rules.get(str(doc.get("rule")))
            study_uid = str(doc.get("study_uid") or "")
            batch = Batch(
                id=str(doc.get("id")),
                rule=str(doc.get("rule")),
                study_uid=study_uid,
                opened=float(doc.get("opened") or 0.0),
                first_uid=str(doc.get("first_uid") or ""),
                last_activity=now,
                done=[str(d) for d in doc.get("done") or []],
                persisted=True,
            )
            rows = self.archive.received_in_study(study_uid, 0.0)
            # The first instance was indexed just before the batch opened; a copy of it sent
            # again later would move its time, so the earlier of the two counts.
            since = batch.opened
            for row in rows:
                if row["sop_instance_uid"] == batch.first_uid:
                    since = min(since, float(row["received_at"]))
            for row in rows:
                if float(row["received_at"]) < since and row["sop_instance_uid"] != batch.first_uid:
                    continue
                if rule is None or rule.matches(
                    calling_ae=str(row["source_ae"] or ""),
                    modality=str(row["modality"] or ""),
                    sop_class_uid=str(row["sop_class_uid"] or ""),
                ):
                    batch.instances[str(row["sop_instance_uid"])] = None
            self._batches[batch.id] = batch
            key = (batch.rule, batch.study_uid)
            # Of two batches of one study (one was being submitted), the newer takes instances.
            previous = self._batches.get(self._open.get(key, ""))
            if previous is not None:
                previous.closed = True
            self._open[key] = batch.id
            LOG.info(
                "routing %s: resumed study %s with %d instance(s) after a restart",
                batch.rule,
                study_uid,
                len(batch.instances),
            )

    # --- thread --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="Router", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(max(0.05, min(1.0, self._quiet / 5))):
            try:
                self.submit_due()
            except Exception:
                LOG.exception("auto-routing pass failed; trying again")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; open batches stay persisted and resume at the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        self.stop()
        with self._lock:
            self._db.close()

    def pending(self) -> list[dict[str, Any]]:
        """Batches not yet submitted, for status displays."""
        now = self._clock()
        with self._lock:
            return [
                {
                    "rule": b.rule,
                    "study_uid": b.study_uid,
                    "instances": len(b.instances),
                    "quiet_seconds": round(now - b.last_activity, 1),
                    "open": not b.closed,
                }
                for b in self._batches.values()
            ]
