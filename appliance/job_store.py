"""The job store: every job, active and finished, in tinydb files under ``data_dir/jobs``.

Layout of ``data_dir/jobs``:

* ``active.json``: every job that is not final (queued, running, waiting-retry, paused) in
  table ``jobs`` (document id = job id), and the id counter in table ``meta``. Rewritten on every
  ``add`` and every change of an active job; it stays small because finished jobs leave it.
* ``history-NNNNNN.json``: finished jobs, in shards filled in the order the jobs finish. The
  shard being filled (the last one) is *open*; once it holds ``SHARD_MAX_JOBS`` jobs or
  ``SHARD_MAX_BYTES`` bytes it is *sealed* and the next one is started, so finishing a job
  rewrites one shard of bounded size, however long the history.
* ``history-NNNNNN.index.json``: for each sealed shard, one row per job (id, revision, state,
  kind, target, created, ended) and the identity (inode, size, mtime) of the shard file it was
  made from. Opening the store reads these small files instead of the shards; a missing, torn or
  stale one is rebuilt from its shard, so they are replaced by rename without fsync.

Every job file is written whole and atomically (temporary name, fsync, rename, directory
fsync), behind one lock. Every stored job carries a revision (``_rev``), one more on each
save. A job that moves between files is written to its new file first and removed from the
old one second: a crash in between leaves it in both, and opening the store keeps the copy
with the higher revision (for a job that has just finished: the one in the history) and
removes the other. A file that is not valid JSON is renamed aside (``NAME.corrupt-DATE-TIME``)
with an error in the log, and the store opens with the rest.

The store is for one process (the daemon); every ``Job`` it returns is a copy of its own.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import json
import logging
import os
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Document, Table

from appliance.fileio import PARTIAL_SUFFIX, atomic_write_bytes, fsync_dir, remove_stale_partials
from appliance.jobs import FINAL_STATES, InstanceResult, Job, JobState

LOG = logging.getLogger("appliance.jobs")

JOBS_DIR = "jobs"
ACTIVE_FILE = "active.json"
# A shard is sealed at whichever comes first. Chosen with bench/jobs: finishing a job rewrites
# the open shard, about 1.4 ms per MB on the reference disk.
SHARD_MAX_JOBS = 500
SHARD_MAX_BYTES = 512 * 1024
# Sealed shards kept parsed in memory for get() and list().
SHARD_CACHE = 4

_SHARD_NAME = re.compile(r"^history-(\d+)\.json$")
_INDEX_NAME = re.compile(r"^history-(\d+)\.index\.json$")
_REV_KEY = "_rev"
_JOB_FIELDS = tuple(f.name for f in fields(Job))
_JOB_KEYS = frozenset(_JOB_FIELDS)
_INSTANCE_FIELDS = frozenset(f.name for f in fields(InstanceResult))
_INDEX_VERSION = 1


# What the in-memory index knows of a finished job without reading its shard: a plain tuple
# (shard, revision, state, kind, target, created, ended), "ended" being finished, else updated,
# what retention goes by. Plain tuples of atomic values are not tracked by the garbage
# collector, which keeps full collections short with 100,000 rows.
_Row = tuple[int, int, str, str, str, float, float]
SHARD, REV, STATE, KIND, TARGET, CREATED, ENDED = range(7)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _clone(doc: Any) -> Any:
    """A deep copy of JSON data (the C codec both ways is faster than copy.deepcopy)."""
    return json.loads(_dumps(doc))


def _move_aside(path: Path, reason: object) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for n in itertools.count(1):
        if not target.exists():
            break
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, target)
    fsync_dir(path.parent)
    LOG.error(
        "job store: %s is not a valid job file (%s); moved aside to %s, going on without it",
        path,
        reason,
        target,
    )
    return target


def _highest_id_in(path: Path) -> int:
    """Best effort: the highest job id mentioned in a damaged file, so no id is used twice."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return 0
    found = [int(m) for m in re.findall(r'"id":\s*(\d+)', text)]
    found += [int(m) for m in re.findall(r'"(\d+)":\s*\{', text)]
    found += [int(m) - 1 for m in re.findall(r'"next_id":\s*(\d+)', text)]
    return max(found, default=0)


def _replace_unsynced(path: Path, payload: bytes) -> None:
    """Replace ``path`` by rename, without fsync: for index files only. An index file names the
    inode, size and mtime of the shard it describes, so one that a power cut left empty, torn
    or old is noticed at the next start and rebuilt from its shard; it needs no durability,
    and skipping the two fsyncs keeps sealing a shard cheap."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident():x}{PARTIAL_SUFFIX}")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _FileStorage(Storage):
    """tinydb storage: one JSON file, kept parsed in memory, written whole and atomically.

    Writes are compact JSON. Each document's text is remembered with the document object it was
    made from, so a write serialises only the documents that are new objects since the last
    write; the store never changes a stored document in place (it replaces it), which keeps that
    correct. ``batch()`` turns several tinydb operations into one file write.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.size = 0  # bytes of the file as last read or written
        self.moved_aside: Path | None = None
        self._data: dict[str, Any] | None = None
        self._loaded = False
        self._batch = 0
        # See JobStore.save: a change that the history already made durable is kept in memory
        # and written with the next write of this file (or at close), not on its own.
        self.deferred = False
        self._dirty = False
        self._pieces: dict[tuple[str, str], tuple[object, str]] = {}

    def read(self) -> dict[str, Any] | None:
        if not self._loaded:
            self._data = self._load()
            self._loaded = True
        return self._data

    def _load(self) -> dict[str, Any] | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self.size = 0
            return None
        self.size = len(raw)
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or not all(isinstance(t, dict) for t in data.values()):
                raise ValueError("not an object of tables")
            for table in data.values():
                if not all(isinstance(doc, dict) for doc in table.values()):
                    raise ValueError("a document is not an object")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError included
            self.moved_aside = _move_aside(self.path, exc)
            self.size = 0
            return None
        return data

    def write(self, data: dict[str, Any]) -> None:
        self._data = data
        self._loaded = True
        if self._batch or self.deferred:
            self._dirty = True
        else:
            self._flush()

    def _flush(self) -> None:
        self._dirty = False
        try:
            payload = self._serialise(self._data or {})
            atomic_write_bytes(self.path, payload)
        except BaseException:
            self.forget()
            raise
        self.size = len(payload)

    def _serialise(self, data: dict[str, Any]) -> bytes:
        pieces: dict[tuple[str, str], tuple[object, str]] = {}
        tables = []
        for name, table in data.items():
            entries = []
            for key, doc in table.items():
                known = self._pieces.get((name, key))
                if known is not None and known[0] is doc:
                    entry = known[1]
                else:
                    entry = f"{_dumps(str(key))}:{_dumps(doc)}"
                pieces[(name, key)] = (doc, entry)
                entries.append(entry)
            tables.append(f"{_dumps(name)}:{{{','.join(entries)}}}")
        self._pieces = pieces
        return ("{" + ",".join(tables) + "}").encode("utf-8")

    def forget(self) -> None:
        """Drop what is held in memory: the next read reads the file again."""
        self._data = None
        self._loaded = False
        self._dirty = False
        self._pieces = {}

    @contextmanager
    def batch(self) -> Iterator[None]:
        self._batch += 1
        try:
            yield
        except BaseException:
            self._batch -= 1
            self.forget()
            raise
        self._batch -= 1
        if not self._batch and self._dirty:
            self._flush()

    def close(self) -> None:
        if self._dirty and not self._batch:
            self._flush()
        self.forget()


def _open_db(path: Path) -> TinyDB:
    return TinyDB(str(path), storage=_FileStorage)


def _storage(db: TinyDB) -> _FileStorage:
    storage = db.storage
    assert isinstance(storage, _FileStorage)
    return storage


def _put(db: TinyDB, table: Table, job_id: int, doc: dict[str, Any]) -> None:
    """Store ``doc`` as document ``job_id`` in one write: a new object, never a change in place
    (tinydb's update() would change the stored dict in place)."""
    with _storage(db).batch():
        table.remove(doc_ids=[job_id])
        table.insert(Document(doc, doc_id=job_id))


def _number(value: Any, default: float = 0.0) -> float:
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


class JobStore:
    """Every job, active and finished; see the module docstring for the files and crash rules.

    ``add`` and ``save`` return only once the change is on disk. Every ``Job`` returned is a
    copy: change it and ``save`` it to change the stored job. Thread-safe (one lock).
    """

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir) / JOBS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._closed = False
        with self._lock:
            self._load()

    # --- public interface ----------------------------------------------------------------------

    def add(self, job: Job) -> Job:
        """Store a new job: sets ``job.id`` (increasing, never used before) and returns ``job``."""
        if job.id:
            raise ValueError(f"job {job.id} already has an id: add() is for new jobs, save() else")
        doc = self._doc(job)
        with self._lock:
            self._check()
            job_id = self._next_id
            doc["id"] = job_id
            doc[_REV_KEY] = 1
            final = job.state in FINAL_STATES
            try:
                # The counter and the job in one write; a final job goes to the history after
                # the counter is safe, so a crash in between costs an unused id, never a reuse.
                with _storage(self._db).batch():
                    _put(self._db, self._meta, 1, {"next_id": job_id + 1})
                    if not final:
                        self._jobs.insert(Document(doc, doc_id=job_id))
                self._next_id = job_id + 1
                if final:
                    self._history_insert(job_id, doc)
            except BaseException:
                self._stale = True
                raise
            job.id = job_id
        return job

    def save(self, job: Job) -> None:
        """Store the changed ``job``. A job that became final moves to the history (written there
        first, then removed from the active file); a finished job made active again (retry,
        reroute) moves back. KeyError when the store does not hold the job (pruned)."""
        if job.id <= 0:
            raise ValueError("job has no id: add() it first")
        doc = self._doc(job)
        with self._lock:
            self._check()
            stored = self._jobs.get(doc_id=job.id)
            row = self._index.get(job.id)
            if stored is None and row is None:
                raise KeyError(f"job {job.id} is not in the job store (pruned?)")
            if stored is not None:
                rev = int(_number(stored.get(_REV_KEY)))
            else:
                assert row is not None
                rev = row[REV]
            doc[_REV_KEY] = rev + 1
            final = job.state in FINAL_STATES
            try:
                if stored is not None and not final:
                    _put(self._db, self._jobs, job.id, doc)
                elif stored is not None:
                    # The history write makes the change durable. The active file's copy is
                    # dropped in memory and written out with the next change of the active file
                    # (or at close): until then the file still holds the job at its older
                    # revision, and opening keeps the history's newer copy. One fsynced write
                    # per finished job instead of two.
                    self._history_insert(job.id, doc)
                    storage = _storage(self._db)
                    storage.deferred = True
                    try:
                        self._jobs.remove(doc_ids=[job.id])
                    finally:
                        storage.deferred = False
                elif final:
                    assert row is not None
                    self._history_replace(job.id, doc, row)
                else:
                    self._jobs.insert(Document(doc, doc_id=job.id))
                    self._history_remove([job.id])
            except BaseException:
                self._stale = True
                raise

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            self._check()
            doc = self._jobs.get(doc_id=job_id)
            if doc is None:
                doc = self._history_doc(job_id)
            return self._job(doc) if doc is not None else None

    def active(self) -> list[Job]:
        """Every job that is not final, oldest first."""
        with self._lock:
            self._check()
            docs = sorted(self._jobs, key=lambda d: d.doc_id)
            return [job for job in map(self._job, docs) if job is not None]

    def list(
        self,
        *,
        limit: int = 50,
        states: Iterable[str] | None = None,
        kinds: Iterable[str] | None = None,
        target: str | None = None,
        before_id: int | None = None,
    ) -> list[Job]:
        """Jobs newest first (by id), active and finished; ``before_id`` pages back."""
        wanted_states = {str(JobState(s)) for s in states} if states is not None else None
        wanted_kinds = set(kinds) if kinds is not None else None
        with self._lock:
            self._check()
            for _ in range(2):  # once more if a shard turned out damaged while reading it
                ids = self._select(limit, wanted_states, wanted_kinds, target, before_id)
                jobs = []
                missing = False
                for job_id in ids:
                    doc = self._jobs.get(doc_id=job_id) or self._history_doc(job_id)
                    if doc is None:
                        missing = True
                    elif (job := self._job(doc)) is not None:
                        jobs.append(job)
                if not missing:
                    break
            return jobs

    def counts(self) -> dict[str, int]:
        """Jobs per state, history included (from memory: no file is read)."""
        with self._lock:
            self._check()
            counts = {str(state): 0 for state in JobState}
            for doc in self._jobs:
                state = str(doc.get("state", ""))
                counts[state] = counts.get(state, 0) + 1
            for state, n in self._history_counts.items():
                counts[state] = counts.get(state, 0) + n
            return counts

    def prune(
        self, *, max_age_days: float | None, max_count: int | None, now: float | None = None
    ) -> int:
        """Drop finished jobs that ended more than ``max_age_days`` ago, and all but the
        ``max_count`` that ended last (None: no limit of that kind). Only the shards holding
        dropped jobs are rewritten (or deleted when emptied). Returns how many were dropped."""
        now = time.time() if now is None else now
        cutoff = now - max_age_days * 86400 if max_age_days is not None else None
        with self._lock:
            self._check()
            newest_first = sorted(
                self._index.items(), key=lambda item: (item[1][ENDED], item[0]), reverse=True
            )
            drop = [
                job_id
                for rank, (job_id, row) in enumerate(newest_first)
                if (max_count is not None and rank >= max_count)
                or (cutoff is not None and row[ENDED] < cutoff)
            ]
            if drop:
                try:
                    self._history_remove(drop)
                except BaseException:
                    self._stale = True
                    raise
                LOG.info("job store: pruned %d finished job(s)", len(drop))
            return len(drop)

    def add_history(self, jobs: Iterable[Job]) -> list[int]:
        """Store many finished jobs at once, in new sealed shards (imports, benchmarks). Sets
        each job's id as ``add`` does; far faster than ``add`` one by one."""
        batch = list(jobs)
        docs = []
        for job in batch:
            if job.id:
                raise ValueError(f"job {job.id} already has an id")
            if job.state not in FINAL_STATES:
                raise ValueError(f"add_history() takes finished jobs only, not {job.state}")
            docs.append(self._doc(job))
        with self._lock:
            self._check()
            first = self._next_id
            try:
                _put(self._db, self._meta, 1, {"next_id": first + len(docs)})
                self._next_id = first + len(docs)
                if self._shard_ids.get(self._current):
                    self._seal(self._current)
                chunk: list[Document] = []
                size = 0
                for job_id, doc in enumerate(docs, start=first):
                    doc["id"] = job_id
                    doc[_REV_KEY] = 1
                    chunk.append(Document(doc, doc_id=job_id))
                    size += len(_dumps(doc))
                    if len(chunk) >= SHARD_MAX_JOBS or size >= SHARD_MAX_BYTES:
                        self._bulk_shard(chunk)
                        chunk, size = [], 0
                if chunk:
                    self._bulk_shard(chunk)
            except BaseException:
                self._stale = True
                raise
            self._history_ids.sort()
        for job_id, job in enumerate(batch, start=first):
            job.id = job_id
        return [job.id for job in batch]

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close_files()

    # --- documents -----------------------------------------------------------------------------

    @staticmethod
    def _doc(job: Job) -> dict[str, Any]:
        """The stored form of ``job``, ``job.to_doc()`` as plain JSON data of its own (TypeError
        if it cannot be one). Made from the attributes and copied by the JSON codec: a quarter
        of the time of ``dataclasses.asdict``, which matters for jobs of many instances."""
        doc = {name: getattr(job, name) for name in _JOB_FIELDS}
        doc["state"] = str(job.state)
        doc["instances"] = [vars(instance) for instance in job.instances]
        return _clone(doc)

    @staticmethod
    def _job(doc: dict[str, Any]) -> Job | None:
        """``Job.from_doc(doc)`` on a copy, three times as fast: instance results hold only
        scalars, so they are built straight from the stored dicts; the rest is copied."""
        try:
            values = _clone({k: v for k, v in doc.items() if k != "instances" and k in _JOB_KEYS})
            values["instances"] = [
                InstanceResult(**i) if _INSTANCE_FIELDS >= i.keys() else InstanceResult.from_doc(i)
                for i in doc.get("instances") or ()
            ]
            return Job(**values)
        except (TypeError, ValueError) as exc:
            LOG.error("job store: job %s cannot be read (%s)", doc.get("id"), exc)
            return None

    def _row(self, shard: int, doc: dict[str, Any]) -> _Row:
        intern = self._strings.setdefault
        state, kind, target = (str(doc.get(k) or "") for k in ("state", "kind", "target"))
        created = _number(doc.get("created"))
        ended = _number(doc.get("finished"), _number(doc.get("updated"), created))
        return (
            shard,
            int(_number(doc.get(_REV_KEY))),
            intern(state, state),
            intern(kind, kind),
            intern(target, target),
            created,
            ended,
        )

    # --- selection -----------------------------------------------------------------------------

    def _select(
        self,
        limit: int,
        states: set[str] | None,
        kinds: set[str] | None,
        target: str | None,
        before_id: int | None,
    ) -> list[int]:
        def matches(state: str, kind: str, job_target: str) -> bool:
            return (
                (states is None or state in states)
                and (kinds is None or kind in kinds)
                and (target is None or job_target == target)
            )

        active = sorted(
            (
                doc.doc_id
                for doc in self._jobs
                if (before_id is None or doc.doc_id < before_id)
                and matches(str(doc.get("state")), str(doc.get("kind")), str(doc.get("target")))
            ),
            reverse=True,
        )

        def history() -> Iterator[int]:
            ids = self._history_ids
            end = len(ids) if before_id is None else bisect.bisect_left(ids, before_id)
            for i in range(end - 1, -1, -1):
                row = self._index[ids[i]]
                if matches(row[STATE], row[KIND], row[TARGET]):
                    yield ids[i]

        merged = heapq.merge(active, history(), reverse=True)
        return list(itertools.islice(merged, max(0, limit)))

    # --- history shards ------------------------------------------------------------------------

    def _shard_path(self, shard: int) -> Path:
        return self.dir / f"history-{shard:06d}.json"

    def _index_path(self, shard: int) -> Path:
        return self.dir / f"history-{shard:06d}.index.json"

    def _shard_db(self, shard: int) -> TinyDB:
        if shard == self._current:
            if self._open is None:
                self._open = self._parse_shard(shard)
            return self._open
        db = self._cache.get(shard)
        if db is not None:
            self._cache.move_to_end(shard)
            return db
        db = self._parse_shard(shard)
        self._cache[shard] = db
        while len(self._cache) > SHARD_CACHE:
            self._cache.popitem(last=False)[1].close()
        return db

    def _parse_shard(self, shard: int) -> TinyDB:
        db = _open_db(self._shard_path(shard))
        storage = _storage(db)
        storage.read()
        if storage.moved_aside is not None:
            lost = [i for i, row in self._index.items() if row[SHARD] == shard]
            for job_id in lost:
                self._index_del(job_id)
            self._shard_ids.pop(shard, None)
            self._sealed.discard(shard)
            self._index_path(shard).unlink(missing_ok=True)
            if lost:
                LOG.error("job store: %d finished job(s) lost with %s", len(lost), storage.path)
        return db

    def _history_doc(self, job_id: int) -> dict[str, Any] | None:
        row = self._index.get(job_id)
        if row is None:
            return None
        return self._shard_db(row[SHARD]).table("jobs").get(doc_id=job_id)

    def _history_insert(self, job_id: int, doc: dict[str, Any]) -> None:
        """Put a job that is not in the history yet into the open shard."""
        shard = self._current
        db = self._shard_db(shard)
        table = db.table("jobs")
        table.insert(Document(doc, doc_id=job_id))
        self._index_set(job_id, self._row(shard, doc))
        if len(table) >= SHARD_MAX_JOBS or _storage(db).size >= SHARD_MAX_BYTES:
            self._seal(shard)

    def _history_replace(self, job_id: int, doc: dict[str, Any], row: _Row) -> None:
        db = self._shard_db(row[SHARD])
        _put(db, db.table("jobs"), job_id, doc)
        self._index_set(job_id, self._row(row[SHARD], doc))
        if row[SHARD] in self._sealed:
            self._write_index(row[SHARD])

    def _history_remove(self, job_ids: Iterable[int]) -> None:
        by_shard: dict[int, list[int]] = {}
        for job_id in job_ids:
            by_shard.setdefault(self._index[job_id][SHARD], []).append(job_id)
        for shard, ids in sorted(by_shard.items()):
            for job_id in ids:
                self._index_del(job_id)
            self._shard_drop(shard, ids)

    def _shard_drop(self, shard: int, job_ids: Collection[int]) -> None:
        """Remove documents from a shard's file (their index rows are gone already); delete the
        shard when the index has nothing left in it, without reading it."""
        self._shard_ids.setdefault(shard, set()).difference_update(job_ids)
        if self._shard_ids[shard]:
            db = self._shard_db(shard)
            db.table("jobs").remove(doc_ids=job_ids)
            if shard in self._sealed:
                self._write_index(shard)
            return
        # The shard file goes first, its index second (an orphan index is removed at start).
        self._shard_path(shard).unlink(missing_ok=True)
        self._index_path(shard).unlink(missing_ok=True)
        fsync_dir(self.dir)
        self._shard_ids.pop(shard, None)
        self._sealed.discard(shard)
        db = self._open if shard == self._current else self._cache.pop(shard, None)
        if db is not None:
            db.close()
        if shard == self._current:
            self._open = None

    def _seal(self, shard: int) -> None:
        self._sealed.add(shard)
        try:
            self._write_index(shard)
        except OSError as exc:  # rebuilt from the shard at the next start
            LOG.warning("job store: cannot write the index of history shard %d (%s)", shard, exc)
        if shard == self._current:
            if self._open is not None:
                self._cache[shard] = self._open
                while len(self._cache) > SHARD_CACHE:
                    self._cache.popitem(last=False)[1].close()
            self._open = None
            self._current = shard + 1

    def _bulk_shard(self, chunk: list[Document]) -> None:
        shard = self._current
        db = self._shard_db(shard)
        db.table("jobs").insert_multiple(chunk)
        for doc in chunk:
            self._index_set(doc.doc_id, self._row(shard, doc), keep_sorted=False)
        self._seal(shard)

    def _write_index(self, shard: int) -> None:
        st = os.stat(self._shard_path(shard))
        rows = []
        for job_id in sorted(self._shard_ids.get(shard, ())):
            rows.append([job_id, *self._index[job_id][REV:]])
        text = _dumps(
            {"v": _INDEX_VERSION, "file": [st.st_ino, st.st_size, st.st_mtime_ns], "rows": rows}
        )
        _replace_unsynced(self._index_path(shard), text.encode("utf-8"))

    def _read_index(self, shard: int) -> list[tuple[int, _Row]] | None:
        """The rows of a sealed shard from its index file; None when missing, bad or stale."""
        path = self._index_path(shard)
        try:
            data = json.loads(path.read_bytes())
            st = os.stat(self._shard_path(shard))
            if data["v"] != _INDEX_VERSION or data["file"] != [
                st.st_ino,
                st.st_size,
                st.st_mtime_ns,
            ]:
                return None
            intern = self._strings.setdefault
            return [
                (
                    int(job_id),
                    (
                        shard,
                        int(rev),
                        intern(state, state),
                        intern(kind, kind),
                        intern(target, target),
                        float(created),
                        float(ended),
                    ),
                )
                for job_id, rev, state, kind, target, created, ended in data["rows"]
            ]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            LOG.warning("job store: %s is unreadable (%s); rebuilding it", path, exc)
            return None

    def _index_set(self, job_id: int, row: _Row, *, keep_sorted: bool = True) -> None:
        old = self._index.get(job_id)
        if old is not None:
            self._history_counts[old[STATE]] -= 1
            if old[SHARD] != row[SHARD]:
                self._shard_ids.get(old[SHARD], set()).discard(job_id)
        elif keep_sorted:
            bisect.insort(self._history_ids, job_id)
        else:
            self._history_ids.append(job_id)
        self._index[job_id] = row
        self._history_counts[row[STATE]] += 1
        self._shard_ids.setdefault(row[SHARD], set()).add(job_id)

    def _index_del(self, job_id: int) -> None:
        row = self._index.pop(job_id)
        self._history_counts[row[STATE]] -= 1
        self._shard_ids.get(row[SHARD], set()).discard(job_id)
        i = bisect.bisect_left(self._history_ids, job_id)
        if i < len(self._history_ids) and self._history_ids[i] == job_id:
            del self._history_ids[i]

    # --- opening -------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("the job store is closed")
        if self._stale:
            LOG.warning("job store: a write failed; reading the job files again")
            self._close_files()
            self._load()

    def _close_files(self) -> None:
        for db in [self._db, self._open, *self._cache.values()]:
            if db is not None:
                db.close()
        self._cache.clear()
        self._open = None

    def _load(self) -> None:
        remove_stale_partials(self.dir)
        self._stale = False
        self._index: dict[int, _Row] = {}
        self._history_ids: list[int] = []
        self._history_counts: Counter[str] = Counter()
        self._shard_ids: dict[int, set[int]] = {}
        self._sealed: set[int] = set()
        self._cache: OrderedDict[int, TinyDB] = OrderedDict()
        self._open: TinyDB | None = None
        self._strings: dict[str, str] = {}

        self._db = _open_db(self.dir / ACTIVE_FILE)
        self._jobs = self._db.table("jobs")
        self._meta = self._db.table("meta")
        storage = _storage(self._db)
        storage.read()
        next_id = 1
        if storage.moved_aside is not None:
            next_id = _highest_id_in(storage.moved_aside) + 1
        meta = self._meta.get(doc_id=1)
        if meta is not None:
            next_id = max(next_id, int(_number(meta.get("next_id"), 1)))
        self._reject_unreadable()

        shards = sorted(int(m[1]) for p in self.dir.iterdir() if (m := _SHARD_NAME.match(p.name)))
        indexed = {int(m[1]) for p in self.dir.iterdir() if (m := _INDEX_NAME.match(p.name))}
        for orphan in indexed.difference(shards):
            self._index_path(orphan).unlink(missing_ok=True)
        last = shards[-1] if shards else 0
        self._current = last if last and last not in indexed else last + 1
        losers: list[tuple[int, int]] = []  # (shard, job id) of older duplicate copies
        for shard in shards:
            rows = self._read_index(shard) if shard in indexed else None
            index_ok = rows is not None
            if rows is None:
                db = self._shard_db(shard)
                if _storage(db).moved_aside is not None:
                    self._cache.pop(shard, None)
                    continue
                rows = [(d.doc_id, self._row(shard, d)) for d in db.table("jobs")]
            for job_id, row in rows:
                old = self._index.get(job_id)
                if old is not None and old[REV] >= row[REV]:
                    losers.append((shard, job_id))
                    continue
                if old is not None:
                    losers.append((old[SHARD], job_id))
                self._index_set(job_id, row, keep_sorted=False)
            if shard != self._current:
                self._sealed.add(shard)
                if not index_ok:
                    self._write_index(shard)
        self._history_ids = sorted(self._index)
        for shard, job_id in losers:
            LOG.warning("job store: job %d was in two history shards; kept the newer", job_id)
            self._shard_drop(shard, [job_id])
        if self._open is not None and self._shard_ids.get(self._current):
            table = self._open.table("jobs")
            if len(table) >= SHARD_MAX_JOBS or _storage(self._open).size >= SHARD_MAX_BYTES:
                self._seal(self._current)
        self._resolve_active()

        highest = max([*self._index, *(d.doc_id for d in self._jobs)], default=0)
        self._next_id = max(next_id, highest + 1)
        stored = int(_number(meta.get("next_id"), 0)) if meta is not None else 0
        if self._next_id != stored:
            _put(self._db, self._meta, 1, {"next_id": self._next_id})

    def _resolve_active(self) -> None:
        """Jobs in both the active file and the history (a crash between the two writes of a
        move) keep the copy with the higher revision; a final job in the active file moves."""
        drop_active: list[int] = []
        drop_history: list[int] = []
        for doc in list(self._jobs):
            job_id = doc.doc_id
            row = self._index.get(job_id)
            if row is None:
                if doc.get("state") in FINAL_STATES:
                    self._history_insert(job_id, _clone(dict(doc)))
                    drop_active.append(job_id)
                continue
            keep_active = int(_number(doc.get(_REV_KEY))) > row[REV]
            (drop_history if keep_active else drop_active).append(job_id)
            LOG.warning(
                "job store: job %d was both active and in the history (interrupted write); "
                "kept the %s copy",
                job_id,
                "active" if keep_active else "history",
            )
        if drop_history:
            self._history_remove(drop_history)
        if drop_active:
            self._jobs.remove(doc_ids=drop_active)

    def _reject_unreadable(self) -> None:
        """Move active documents that are not jobs to a file aside, so they are never lost."""
        bad: dict[str, Any] = {}
        for doc in self._jobs:
            try:
                Job.from_doc(_clone(doc))
            except (TypeError, ValueError) as exc:
                bad[str(doc.doc_id)] = dict(doc)
                LOG.error("job store: active job %s cannot be read (%s)", doc.doc_id, exc)
        if bad:
            path = self.dir / f"{ACTIVE_FILE}.rejected-{time.strftime('%Y%m%d-%H%M%S')}"
            atomic_write_bytes(path, _dumps({"jobs": bad}).encode("utf-8"))
            self._jobs.remove(doc_ids=[int(k) for k in bad])
            LOG.error("job store: %d unreadable active job(s) moved to %s", len(bad), path)
