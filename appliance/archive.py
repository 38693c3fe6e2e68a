"""The archive: stored instance files plus a SQLite index of their attributes.

Files are the truth, the index is derived from them. A file is written under a temporary name,
fsynced, renamed and its directory fsynced before its index row is written, so an index row never
points at a missing or partial file. ``recover()`` (run when the daemon starts) removes
temporary leftovers and indexes any file whose row a crash lost.

File names are a hash of the SOP Instance UID, never received text, so nothing a peer sends
can choose where a file lands.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from appliance import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from appliance.dicom_classes import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE
from appliance.fileio import PARTIAL_SUFFIX, atomic_write_bytes

LOG = logging.getLogger(__name__)

ARCHIVE_DIR = "archive"
INDEX_FILE = "index.sqlite"

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000

_VALID_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_INSTANCE_LOCK_STRIPES = 64
_PREAMBLE = b"\x00" * 128 + b"DICM"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
    patient_id TEXT PRIMARY KEY,
    patient_name TEXT,
    birth_date TEXT,
    sex TEXT,
    charset TEXT,
    updated_at REAL
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    patient_id TEXT,
    study_date TEXT,
    study_time TEXT,
    accession_number TEXT,
    study_id TEXT,
    study_description TEXT,
    referring_physician TEXT,
    charset TEXT,
    updated_at REAL
);
CREATE INDEX IF NOT EXISTS studies_patient ON studies(patient_id);
-- C-FIND narrows by these (appliance.query); names are matched in Python (wildcards, case).
CREATE INDEX IF NOT EXISTS studies_date ON studies(study_date);
CREATE INDEX IF NOT EXISTS studies_accession ON studies(accession_number);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT,
    modality TEXT,
    series_number TEXT,
    series_description TEXT,
    body_part TEXT,
    series_date TEXT,
    series_time TEXT,
    updated_at REAL,
    protocol_name TEXT
);
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    series_uid TEXT,
    study_uid TEXT,
    instance_number TEXT,
    transfer_syntax TEXT NOT NULL,
    charset TEXT,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    source_ae TEXT,
    received_at REAL,
    content_hash TEXT,
    image_id TEXT
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
"""


class StoreRefused(Exception):
    """An instance was not stored; ``status`` is the C-STORE status to answer with."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


@dataclass(frozen=True)
class StoreOutcome:
    sop_instance_uid: str
    path: Path
    duplicate: bool
    kept_existing: bool
    # The received data set as parsed, without its pixel data: what listeners report.
    dataset: Dataset | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class InstanceRecord:
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    transfer_syntax: str
    path: Path
    size: int


def content_hash(*chunks: bytes) -> str:
    """A checksum of a file's bytes, recorded when it is stored and checked before it is
    committed (storage commitment).

    CRC-32, not a cryptographic hash: it guards against corruption (bit rot, a truncated or
    overwritten file), not against someone who can write to the archive, who could rewrite the
    index as well. It costs about 0.1 ms per 0.5 MB image on the C-STORE path, a third of
    SHA-256 and a fifth of BLAKE2b there.
    """
    crc = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    return f"crc32:{crc:08x}"


def relative_path_for(sop_instance_uid: str) -> str:
    digest = hashlib.sha256(sop_instance_uid.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{digest[:2]}/{digest[2:4]}/{digest}.dcm"


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element of group 0002."""
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    value = text.encode("ascii")
    return value + pad if len(value) % 2 else value


def encode_file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str
) -> bytes:
    """Preamble, DICM prefix and File Meta Information (PS3.10 7.1) for a received instance.

    Encoded by hand: pydicom's writer costs a quarter of a millisecond per instance here, and
    the group is fixed. The output is byte for byte what pydicom's ``write_file_meta_info``
    writes (tests compare them).
    """
    elements = [
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
        _meta_element(0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
        _meta_element(0x0010, b"UI", _padded(transfer_syntax, b"\x00")),
        _meta_element(0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\x00")),
        _meta_element(0x0013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME, b" ")),
    ]
    if source_ae:
        elements.append(_meta_element(0x0016, b"AE", _padded(source_ae, b" ")))
    body = b"".join(elements)
    return _PREAMBLE + struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body


# Explicit VRs with a 4-byte length field (PS3.5 7.1.2)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)


def _element_complete(blob: bytes, offset: int, transfer_syntax: str) -> bool:
    """Whether the data element starting at ``offset`` (if any) ends within ``blob``.

    For encapsulated (undefined length) pixel data the fragments are walked to the Sequence
    Delimitation Item; only their headers are read.
    """
    if offset + 8 > len(blob):
        return offset == len(blob)
    endian = ">" if transfer_syntax == EXPLICIT_VR_BE else "<"
    if transfer_syntax == IMPLICIT_VR_LE:
        header, (length,) = 8, struct.unpack_from(endian + "I", blob, offset + 4)
    elif blob[offset + 4 : offset + 6] in _LONG_VRS:
        if offset + 12 > len(blob):
            return False
        header, (length,) = 12, struct.unpack_from(endian + "I", blob, offset + 8)
    else:
        header, (length,) = 8, struct.unpack_from(endian + "H", blob, offset + 6)
    position = offset + header
    if length != 0xFFFFFFFF:
        return position + length <= len(blob)
    while position + 8 <= len(blob):
        group, element, item_length = struct.unpack_from(endian + "HHI", blob, position)
        if (group, element) == _SEQUENCE_DELIMITER:
            return True
        if (group, element) != _ITEM or item_length == 0xFFFFFFFF:
            return False
        position += 8 + item_length
    return False


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        # As DICOM writes them (A\B), not as pydicom prints a list; C-FIND returns them.
        return "\\".join(str(item).strip() for item in value)
    return str(value).strip()


def _charset(ds: Dataset) -> str:
    value = ds.get("SpecificCharacterSet")
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return "\\".join(str(v) for v in value)


class Archive:
    """Stores received instances durably and keeps the index in step with the files."""

    def __init__(
        self,
        data_dir: Path,
        *,
        duplicate_policy: str = "overwrite",
        disk_reserve_bytes: int = 0,
    ) -> None:
        self.root = Path(data_dir) / ARCHIVE_DIR
        self.root.mkdir(parents=True, exist_ok=True)
        self.duplicate_policy = duplicate_policy
        self.disk_reserve_bytes = disk_reserve_bytes
        self._lock = threading.Lock()
        self._instance_locks = [threading.Lock() for _ in range(_INSTANCE_LOCK_STRIPES)]
        self._db = sqlite3.connect(
            Path(data_dir) / INDEX_FILE, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is safe against a process crash; a power cut may lose the newest rows, and
        # recover() re-indexes them from the files.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._add_column("instances", "content_hash", "TEXT")
        # Query keys (appliance.query): Protocol Name at SERIES, Image ID at IMAGE level.
        self._add_column("series", "protocol_name", "TEXT")
        self._add_column("instances", "image_id", "TEXT")

    def _add_column(self, table: str, column: str, declaration: str) -> None:
        """Bring an index made by an older version up to the schema."""
        columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
        if column in columns:
            return
        try:
            self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        except sqlite3.OperationalError:
            # Another process (the CLI next to the daemon) added it first.
            if column not in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}:
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- storing -------------------------------------------------------------------------

    def store_encoded(
        self,
        encoded_dataset: bytes,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        source_ae: str = "",
    ) -> StoreOutcome:
        """Store a dataset exactly as received (no File Meta), in ``transfer_syntax``.

        ``sop_class_uid``/``sop_instance_uid`` are the C-STORE command's values; the dataset must
        carry the same ones. Raises ``StoreRefused`` with the status to answer.
        """
        if not _VALID_UID.match(sop_instance_uid or "") or len(sop_instance_uid) > 64:
            raise StoreRefused(
                STATUS_CANNOT_UNDERSTAND,
                f"Affected SOP Instance UID {sop_instance_uid!r} is not a valid UID",
            )
        head = encode_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax, source_ae)
        dataset = self._parse(head, encoded_dataset, transfer_syntax)
        ds_class = _text(dataset, "SOPClassUID")
        ds_instance = _text(dataset, "SOPInstanceUID")
        if not ds_class and not ds_instance:
            # pydicom reads almost any bytes as some data set; one without either UID is
            # garbage, not an instance of another SOP Class.
            raise StoreRefused(
                STATUS_CANNOT_UNDERSTAND, "data set has no SOP Class UID and no SOP Instance UID"
            )
        if ds_class != sop_class_uid or ds_instance != sop_instance_uid:
            raise StoreRefused(
                STATUS_DATASET_MISMATCH,
                f"data set SOP Class/Instance ({ds_class or 'missing'}, "
                f"{ds_instance or 'missing'}) differs from the command's "
                f"({sop_class_uid}, {sop_instance_uid})",
            )
        relative = relative_path_for(sop_instance_uid)
        # Two associations storing the same instance at once must not interleave the
        # exists-check, the write and the index row (keep-first would keep the last).
        with self._instance_lock(relative):
            path = self.root / relative
            exists = path.exists()
            if exists and self.duplicate_policy == "keep-first":
                return StoreOutcome(
                    sop_instance_uid, path, duplicate=True, kept_existing=True, dataset=dataset
                )

            size = len(head) + len(encoded_dataset)
            self._check_reserve(size)
            # For storage commitment: the file is checked against it before it is committed.
            digest = content_hash(head, encoded_dataset)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                atomic_write_bytes(path, head, encoded_dataset)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise StoreRefused(STATUS_OUT_OF_RESOURCES, "archive disk is full") from exc
                raise StoreRefused(
                    STATUS_OUT_OF_RESOURCES, f"cannot write to the archive: {exc.strerror}"
                ) from exc
            self._index(dataset, relative, size, transfer_syntax, source_ae, digest)
            return StoreOutcome(
                sop_instance_uid, path, duplicate=exists, kept_existing=False, dataset=dataset
            )

    def _instance_lock(self, relative: str) -> threading.Lock:
        # The file name is a SHA-256 hex digest: its first bytes pick a stripe evenly.
        return self._instance_locks[int(relative[:2], 16) % _INSTANCE_LOCK_STRIPES]

    def _parse(self, head: bytes, encoded_dataset: bytes, transfer_syntax: str) -> Dataset:
        blob = head + encoded_dataset
        buffer = BytesIO(blob)
        try:
            dataset = dcmread(buffer, stop_before_pixels=True)
            # Touch the elements we index, so a corrupt value fails here, not later.
            for keyword in ("SOPClassUID", "SOPInstanceUID", "PatientName", "StudyInstanceUID"):
                dataset.get(keyword)
        except (InvalidDicomError, ValueError, EOFError, OSError, KeyError, TypeError) as exc:
            raise StoreRefused(
                STATUS_CANNOT_UNDERSTAND, f"data set cannot be parsed: {exc}"
            ) from exc
        except Exception as exc:  # pydicom raises assorted errors on garbage
            raise StoreRefused(
                STATUS_CANNOT_UNDERSTAND, f"data set cannot be parsed: {exc!r}"
            ) from exc
        # pydicom stopped before the pixel data without reading it, and it would read a short
        # value without complaint: check that the pixel data the header announces is there.
        if transfer_syntax != DEFLATED_EXPLICIT_VR_LE and not _element_complete(
            blob, buffer.tell(), transfer_syntax
        ):
            raise StoreRefused(STATUS_CANNOT_UNDERSTAND, "data set is truncated in its pixel data")
        return dataset

    def _check_reserve(self, incoming_bytes: int) -> None:
        stat = os.statvfs(self.root)
        free = stat.f_bavail * stat.f_frsize
        if free - incoming_bytes < self.disk_reserve_bytes:
            raise StoreRefused(
                STATUS_OUT_OF_RESOURCES,
                f"storing would cross the disk reserve ({free // 2**20} MB free, "
                f"{self.disk_reserve_bytes // 2**20} MB reserved)",
            )

    def _index(
        self,
        ds: Dataset,
        relative: str,
        size: int,
        transfer_syntax: str,
        source_ae: str,
        digest: str | None = None,
    ) -> None:
        now = time.time()
        charset = _charset(ds)
        patient_id = _text(ds, "PatientID")
        study_uid = _text(ds, "StudyInstanceUID")
        series_uid = _text(ds, "SeriesInstanceUID")
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT INTO patients VALUES (?,?,?,?,?,?) ON CONFLICT(patient_id) DO UPDATE"
                    " SET patient_name=excluded.patient_name, birth_date=excluded.birth_date,"
                    " sex=excluded.sex, charset=excluded.charset, updated_at=excluded.updated_at",
                    (
                        patient_id,
                        _text(ds, "PatientName"),
                        _text(ds, "PatientBirthDate"),
                        _text(ds, "PatientSex"),
                        charset,
                        now,
                    ),
                )
                self._db.execute(
                    "INSERT INTO studies VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(study_uid)"
                    " DO UPDATE SET patient_id=excluded.patient_id,"
                    " study_date=excluded.study_date, study_time=excluded.study_time,"
                    " accession_number=excluded.accession_number, study_id=excluded.study_id,"
                    " study_description=excluded.study_description,"
                    " referring_physician=excluded.referring_physician,"
                    " charset=excluded.charset, updated_at=excluded.updated_at",
                    (
                        study_uid,
                        patient_id,
                        _text(ds, "StudyDate"),
                        _text(ds, "StudyTime"),
                        _text(ds, "AccessionNumber"),
                        _text(ds, "StudyID"),
                        _text(ds, "StudyDescription"),
                        _text(ds, "ReferringPhysicianName"),
                        charset,
                        now,
                    ),
                )
                self._db.execute(
                    # Named columns: an index migrated by _add_column has them in another order.
                    "INSERT INTO series (series_uid, study_uid, modality, series_number,"
                    " series_description, body_part, series_date, series_time, updated_at,"
                    " protocol_name) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(series_uid)"
                    " DO UPDATE SET study_uid=excluded.study_uid, modality=excluded.modality,"
                    " series_number=excluded.series_number,"
                    " series_description=excluded.series_description,"
                    " body_part=excluded.body_part, series_date=excluded.series_date,"
                    " series_time=excluded.series_time, updated_at=excluded.updated_at,"
                    " protocol_name=excluded.protocol_name",
                    (
                        series_uid,
                        study_uid,
                        _text(ds, "Modality"),
                        _text(ds, "SeriesNumber"),
                        _text(ds, "SeriesDescription"),
                        _text(ds, "BodyPartExamined"),
                        _text(ds, "SeriesDate"),
                        _text(ds, "SeriesTime"),
                        now,
                        _text(ds, "ProtocolName"),
                    ),
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO instances (sop_instance_uid, sop_class_uid,"
                    " series_uid, study_uid, instance_number, transfer_syntax, charset, path,"
                    " size, source_ae, received_at, content_hash, image_id)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        _text(ds, "SOPInstanceUID"),
                        _text(ds, "SOPClassUID"),
                        series_uid,
                        study_uid,
                        _text(ds, "InstanceNumber"),
                        transfer_syntax,
                        charset,
                        relative,
                        size,
                        source_ae,
                        now,
                        digest,
                        _text(ds, "ImageID"),
                    ),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # --- reading -------------------------------------------------------------------------

    def instance(self, sop_instance_uid: str) -> InstanceRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT sop_instance_uid, sop_class_uid, series_uid, study_uid, transfer_syntax,"
                " path, size FROM instances WHERE sop_instance_uid=?",
                (sop_instance_uid,),
            ).fetchone()
        return self._record(row) if row else None

    def instances(self) -> Iterator[InstanceRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT sop_instance_uid, sop_class_uid, series_uid, study_uid, transfer_syntax,"
                " path, size FROM instances ORDER BY received_at"
            ).fetchall()
        return (self._record(row) for row in rows)

    def stored_content_hash(self, sop_instance_uid: str) -> str | None:
        """The ``content_hash()`` of the instance's file as stored; None for files indexed by
        ``recover()``, whose bytes were never seen whole on the way in."""
        with self._lock:
            row = self._db.execute(
                "SELECT content_hash FROM instances WHERE sop_instance_uid=?",
                (sop_instance_uid,),
            ).fetchone()
        return row[0] if row else None

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])

    def patient(self, patient_id: str) -> dict[str, str] | None:
        with self._lock:
            cursor = self._db.execute("SELECT * FROM patients WHERE patient_id=?", (patient_id,))
            row = cursor.fetchone()
            names = [d[0] for d in cursor.description]
        return dict(zip(names, row, strict=True)) if row else None

    def study(self, study_uid: str) -> dict[str, str] | None:
        """The study's index row with its patient's name (``patient_name``)."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT s.*, p.patient_name FROM studies s"
                " LEFT JOIN patients p ON p.patient_id = s.patient_id WHERE s.study_uid=?",
                (study_uid,),
            )
            row = cursor.fetchone()
            names = [d[0] for d in cursor.description]
        return dict(zip(names, row, strict=True)) if row else None

    def received_in_study(self, study_uid: str, since: float) -> list[dict[str, Any]]:
        """Instances of a study received (indexed) at ``since`` or later, oldest first: SOP
        Instance and Class UID, calling AE title (``source_ae``), ``received_at``, ``modality``.
        Auto-routing rebuilds a batch a crash interrupted from this."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT i.sop_instance_uid, i.sop_class_uid, i.source_ae, i.received_at,"
                " COALESCE(se.modality, '') AS modality FROM instances i"
                " LEFT JOIN series se ON se.series_uid = i.series_uid"
                " WHERE i.study_uid=? AND i.received_at >= ? ORDER BY i.received_at",
                (study_uid, since),
            )
            rows = cursor.fetchall()
            names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in rows]

    def _record(self, row: tuple) -> InstanceRecord:
        return InstanceRecord(
            sop_instance_uid=row[0],
            sop_class_uid=row[1],
            series_uid=row[2],
            study_uid=row[3],
            transfer_syntax=row[4],
            path=self.root / row[5],
            size=row[6],
        )

    # --- crash recovery ------------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Bring index and files back in step after a crash.

        Removes temporary files, indexes files that have no row, drops rows without a file.
        """
        removed_partial = indexed = dropped = 0
        with self._lock:
            rows = self._db.execute("SELECT sop_instance_uid, path FROM instances").fetchall()
        indexed_paths = {path: uid for uid, path in rows}
        on_disk: set[str] = set()
        for directory, _subdirs, files in os.walk(self.root):
            for name in files:
                full = Path(directory) / name
                if name.endswith(PARTIAL_SUFFIX):
                    full.unlink(missing_ok=True)
                    removed_partial += 1
                    continue
                relative = full.relative_to(self.root).as_posix()
                on_disk.add(relative)
                if relative not in indexed_paths and self._reindex_file(full, relative):
                    indexed += 1
        missing = [uid for path, uid in indexed_paths.items() if path not in on_disk]
        if missing:
            with self._lock:
                self._db.executemany(
                    "DELETE FROM instances WHERE sop_instance_uid=?", [(uid,) for uid in missing]
                )
            dropped = len(missing)
        summary = {"removed_partial": removed_partial, "indexed": indexed, "dropped": dropped}
        if any(summary.values()):
            LOG.warning("archive recovery: %s", summary)
        return summary

    def _reindex_file(self, full: Path, relative: str) -> bool:
        try:
            dataset = dcmread(full, stop_before_pixels=True)
            meta = dataset.file_meta
            transfer_syntax = str(meta.TransferSyntaxUID)
            source_ae = str(meta.get("SourceApplicationEntityTitle", "")).strip()
        except Exception as exc:  # a file we cannot read is set aside, never indexed
            LOG.error("archive recovery: unreadable file %s set aside: %s", full, exc)
            full.rename(full.with_suffix(".unreadable"))
            return False
        if relative_path_for(_text(dataset, "SOPInstanceUID")) != relative:
            LOG.error("archive recovery: %s does not match its SOP Instance UID", full)
            return False
        self._index(dataset, relative, full.stat().st_size, transfer_syntax, source_ae)
        return True
