"""Persistent pseudonyms for anonymization: per-project keys, patient pseudonyms, date shifts.

One SQLite file, ``DATA/anonymization/pseudonyms.sqlite`` (folder 0700, file 0600): it
re-identifies every anonymized patient, so only the appliance's user can read it. It holds

* ``projects``: a random 32-byte key per project (created once, never changed) from which the
  anonymizer derives new UIDs (HMAC-SHA256) and the per-patient date shifts, and the next
  sequence number of the project's pseudonyms;
* ``patients``: for each project and patient (Patient ID; Patient's Name and Birth Date when
  the ID is empty), the sequence number given on first sight, the pseudonyms last produced and
  the original identity, which ``export`` writes out for the study coordinator.

The same patient therefore gets the same pseudonym in a project across sessions and restarts,
and two processes (the daemon and a CLI run on plain files) share numbers safely: numbers are
allocated in an ``IMMEDIATE`` transaction, which SQLite serialises between processes.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import os
import re
import secrets
import sqlite3
import string
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.fileio import atomic_write_bytes, fsync_dir

STORE_DIR = "anonymization"
STORE_FILE = "pseudonyms.sqlite"
KEY_BYTES = 32
DEFAULT_PROJECT = "default"
DEFAULT_ID_PATTERN = "ANON{n:06d}"
DEFAULT_NAME_PATTERN = "ANONYMOUS^{n:06d}"
PATTERN_FIELDS = ("n", "hash8")
# Patient ID is LO and each Person Name component group is 64 characters at most.
MAX_ID_LENGTH = 64
MAX_NAME_LENGTH = 64
MAX_SHIFT_DAYS = 365
EXPORT_COLUMNS = (
    "project",
    "pseudonym_id",
    "pseudonym_name",
    "patient_id",
    "patient_name",
    "birth_date",
    "date_shift_days",
    "first_seen",
    "last_seen",
)
_PROJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_BUSY_TIMEOUT = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    project TEXT PRIMARY KEY,
    key BLOB NOT NULL,
    next_n INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS patients (
    project TEXT NOT NULL REFERENCES projects(project),
    lookup TEXT NOT NULL,
    n INTEGER NOT NULL,
    pseudonym_id TEXT NOT NULL,
    pseudonym_name TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    patient_name TEXT NOT NULL,
    birth_date TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (project, lookup),
    UNIQUE (project, n)
);
"""


class PseudonymError(ValueError):
    """A bad project name or pseudonym pattern; the message names the field."""


def validate_project(value: object, field_name: str = "project") -> str:
    if not isinstance(value, str) or not _PROJECT.match(value):
        raise PseudonymError(
            f"{field_name}: {value!r} is not a project name (1 to 64 of A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit)"
        )
    return value


def validate_pattern(value: object, field_name: str, *, max_length: int) -> str:
    """A pseudonym pattern: text with ``{n}`` (the patient's number in the project, with an
    optional format such as ``{n:06d}``) and/or ``{hash8}`` (8 hexadecimal digits derived from
    the patient and the project key). The result must be valid for its attribute."""
    if not isinstance(value, str) or not value:
        raise PseudonymError(f"{field_name}: must be non-empty text")
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise PseudonymError(f"{field_name}: {value!r} is not a pattern ({exc})") from None
    for _, name, _, conversion in parsed:
        if name is None:
            continue
        if name not in PATTERN_FIELDS or conversion:
            raise PseudonymError(
                f"{field_name}: {{{name}}} is not allowed; use {{n}} (e.g. {{n:06d}}) or {{hash8}}"
            )
    try:
        sample = render_pattern(value, 999999, "FFFFFFFF")
    except (ValueError, TypeError) as exc:
        raise PseudonymError(f"{field_name}: {value!r} cannot be filled in ({exc})") from None
    if len(sample) > max_length:
        raise PseudonymError(
            f"{field_name}: {value!r} gives {len(sample)} characters, more than {max_length}"
        )
    # Backslash separates values and control characters are not allowed in LO or PN.
    if re.search(r"[\\\x00-\x1f\x7f]", sample):
        raise PseudonymError(f"{field_name}: {value!r} holds a backslash or control character")
    if field_name.endswith("name_pattern") and sample.count("^") > 4:
        raise PseudonymError(f"{field_name}: a person name has at most 5 components (4 ^)")
    return value


def render_pattern(pattern: str, n: int, hash8: str) -> str:
    return pattern.format(n=n, hash8=hash8)


def _normalise_name(name: str) -> str:
    return name.strip().rstrip("^ ").upper()


def identity_of(patient_id: str, patient_name: str = "", birth_date: str = "") -> str:
    """What makes two instances the same patient: the Patient ID; when it is empty, the name
    (case and trailing empty components ignored) and the birth date."""
    pid = (patient_id or "").strip()
    if pid:
        return "id:" + pid
    return "name:" + _normalise_name(patient_name or "") + "|" + (birth_date or "").strip()


@dataclass(frozen=True)
class Pseudonym:
    patient_id: str
    patient_name: str
    n: int
    new: bool  # first seen now (or, for a dry run, would be)


class PseudonymStore:
    """The persistent mapping; safe to share between threads and processes."""

    def __init__(self, data_dir: Path) -> None:
        self.folder = Path(data_dir) / STORE_DIR
        self.path = self.folder / STORE_FILE
        self._lock = threading.RLock()
        self._keys: dict[str, bytes] = {}
        self._cache: dict[tuple[str, str, str, str], Pseudonym] = {}
        self._prepare_folder()
        created = not self.path.exists()
        if created:
            # Create the file 0600 before SQLite opens it: it never exists readable by others.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            fsync_dir(self.folder)
        self._db = sqlite3.connect(
            str(self.path),
            timeout=_BUSY_TIMEOUT,
            isolation_level=None,  # explicit BEGIN ... COMMIT below
            check_same_thread=False,
        )
        with self._lock:
            self._db.executescript(_SCHEMA)
        os.chmod(self.path, 0o600)

    def _prepare_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        # An existing folder keeps its mode through mkdir: set it every time.
        os.chmod(self.folder, 0o700)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> PseudonymStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- project keys ------------------------------------------------------------------------

    def project_key(self, project: str) -> bytes:
        """The project's secret key, created (random, 32 bytes) on first use and kept."""
        validate_project(project)
        key = self._keys.get(project)
        if key is not None:
            return key
        with self._lock:
            row = self._db.execute(
                "SELECT key FROM projects WHERE project = ?", (project,)
            ).fetchone()
            if row is None:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    # Another process may have created it between our read and the lock.
                    self._db.execute(
                        "INSERT OR IGNORE INTO projects (project, key, next_n, created) "
                        "VALUES (?, ?, 1, ?)",
                        (project, secrets.token_bytes(KEY_BYTES), time.time()),
                    )
                    row = self._db.execute(
                        "SELECT key FROM projects WHERE project = ?", (project,)
                    ).fetchone()
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            key = bytes(row[0])
            self._keys[project] = key
            return key

    def projects(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT project FROM projects ORDER BY project").fetchall()
        return [str(r[0]) for r in rows]

    def _digest(self, project: str, purpose: str, text: str) -> bytes:
        message = f"{purpose}\x00{text}".encode("utf-8", "surrogateescape")
        return hmac.new(self.project_key(project), message, hashlib.sha256).digest()

    # --- patients ----------------------------------------------------------------------------

    def patient(
        self,
        project: str,
        patient_id: str,
        patient_name: str,
        birth_date: str,
        *,
        id_pattern: str = DEFAULT_ID_PATTERN,
        name_pattern: str = DEFAULT_NAME_PATTERN,
        dry_run: bool = False,
    ) -> tuple[str, str]:
        """The patient's (pseudonym Patient ID, pseudonym Patient's Name) in ``project``.

        The first call for a patient gives it the project's next number; later calls (also
        after a restart) give the same. ``dry_run`` stores nothing: an unknown patient gets the
        number it would get now (a preview).
        """
        found = self.lookup(
            project,
            patient_id,
            patient_name,
            birth_date,
            id_pattern=id_pattern,
            name_pattern=name_pattern,
            dry_run=dry_run,
        )
        return found.patient_id, found.patient_name

    def lookup(
        self,
        project: str,
        patient_id: str,
        patient_name: str,
        birth_date: str,
        *,
        id_pattern: str = DEFAULT_ID_PATTERN,
        name_pattern: str = DEFAULT_NAME_PATTERN,
        dry_run: bool = False,
    ) -> Pseudonym:
        """Like ``patient`` with the patient's number and whether it is new."""
        validate_pattern(id_pattern, "id_pattern", max_length=MAX_ID_LENGTH)
        validate_pattern(name_pattern, "name_pattern", max_length=MAX_NAME_LENGTH)
        patient_id = str(patient_id or "")
        patient_name = str(patient_name or "")
        birth_date = str(birth_date or "")
        identity = identity_of(patient_id, patient_name, birth_date)
        # The row is found by a keyed hash, so the primary key does not itself name anyone.
        lookup = self._digest(project, "patient", identity).hex()
        hash8 = lookup[:8].upper()
        cache_key = (project, lookup, id_pattern, name_pattern)
        cached = self._cache.get(cache_key)
        if cached is not None:
            # Numbers never change once given, so a known patient needs no database trip.
            return cached
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN" if dry_run else "BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT n, pseudonym_id, pseudonym_name FROM patients "
                    "WHERE project = ? AND lookup = ?",
                    (project, lookup),
                ).fetchone()
                new = row is None
                if new:
                    (n,) = self._db.execute(
                        "SELECT next_n FROM projects WHERE project = ?", (project,)
                    ).fetchone()
                else:
                    n = int(row[0])
                pid = render_pattern(id_pattern, n, hash8)
                name = render_pattern(name_pattern, n, hash8)
                if dry_run:
                    pass
                elif new:
                    self._db.execute(
                        "INSERT INTO patients (project, lookup, n, pseudonym_id, pseudonym_name,"
                        " patient_id, patient_name, birth_date, first_seen, last_seen)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (project, lookup, n, pid, name, patient_id, patient_name, birth_date,
                         now, now),
                    )  # fmt: skip
                    self._db.execute(
                        "UPDATE projects SET next_n = ? WHERE project = ?", (n + 1, project)
                    )
                else:
                    # Remember what was produced last (a profile's pattern may have changed)
                    # and when, for the export; once per process and patient (the cache).
                    self._db.execute(
                        "UPDATE patients SET pseudonym_id = ?, pseudonym_name = ?, last_seen = ?"
                        " WHERE project = ? AND lookup = ?",
                        (pid, name, now, project, lookup),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if not dry_run:
                self._cache[cache_key] = Pseudonym(pid, name, n, False)
        return Pseudonym(pid, name, n, new)

    def date_shift_days(
        self, project: str, patient_id: str, patient_name: str = "", birth_date: str = ""
    ) -> int:
        """The patient's date shift in days, -365..-1 (never 0): derived from the project key
        and the patient, so it is the same every time without being stored."""
        identity = identity_of(patient_id, patient_name, birth_date)
        value = int.from_bytes(self._digest(project, "date-shift", identity)[:8], "big")
        return -(value % MAX_SHIFT_DAYS + 1)

    def count(self, project: str | None = None) -> int:
        with self._lock:
            if project is None:
                (n,) = self._db.execute("SELECT COUNT(*) FROM patients").fetchone()
            else:
                (n,) = self._db.execute(
                    "SELECT COUNT(*) FROM patients WHERE project = ?", (project,)
                ).fetchone()
        return int(n)

    # --- export ------------------------------------------------------------------------------

    def rows(self, project: str | None = None) -> list[dict[str, str | int]]:
        """Every mapping (of one project, or all), ordered by project and number."""
        query = (
            "SELECT project, pseudonym_id, pseudonym_name, patient_id, patient_name, birth_date,"
            " first_seen, last_seen FROM patients"
        )
        params: tuple[str, ...] = ()
        if project is not None:
            validate_project(project)
            query += " WHERE project = ?"
            params = (project,)
        with self._lock:
            found = self._db.execute(query + " ORDER BY project, n", params).fetchall()
        result: list[dict[str, str | int]] = []
        for proj, pid, name, orig_id, orig_name, birth, first, last in found:
            result.append(
                {
                    "project": proj,
                    "pseudonym_id": pid,
                    "pseudonym_name": name,
                    "patient_id": orig_id,
                    "patient_name": orig_name,
                    "birth_date": birth,
                    "date_shift_days": self.date_shift_days(proj, orig_id, orig_name, birth),
                    "first_seen": _iso(first),
                    "last_seen": _iso(last),
                }
            )
        return result

    def export(self, project: str | None, path: Path) -> int:
        """Write the mapping as CSV (UTF-8, header row) to ``path``, mode 0600, atomically;
        returns the number of patients written. The file re-identifies: handle it so."""
        if project is not None and project not in self.projects():
            raise PseudonymError(f"project: no project named {project!r}")
        rows = self.rows(project)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS, lineterminator="\r\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_safe(v) for k, v in row.items()})
        atomic_write_bytes(Path(path), buffer.getvalue().encode("utf-8"), mode=0o600)
        return len(rows)


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _csv_safe(value: str | int) -> str | int:
    """Keep a spreadsheet from running a received name as a formula (OWASP CSV injection):
    text that starts with = + - @ or a tab/CR gets a leading apostrophe."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
