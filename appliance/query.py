"""Query/Retrieve matching over the archive's SQLite index (PS3.4 Annex C).

The C-FIND SCP and the C-MOVE/C-GET SCPs share this module: ``resolve_instances`` turns a
retrieve identifier into the instances it names.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pydicom.dataset import Dataset

from appliance.archive import ARCHIVE_DIR, INDEX_FILE, Archive, InstanceRecord

STATUS_IDENTIFIER_MISMATCH = 0xA900
STATUS_UNABLE_TO_PROCESS = 0xC000

PATIENT_ROOT = "patient"
STUDY_ROOT = "study"
PATIENT_STUDY_ONLY = "patient_study_only"

# Every FIND/MOVE/GET SOP Class of the three models, mapped to its information model.
MODEL_BY_SOP_CLASS: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.2.1.1": PATIENT_ROOT,  # FIND
    "1.2.840.10008.5.1.4.1.2.1.2": PATIENT_ROOT,  # MOVE
    "1.2.840.10008.5.1.4.1.2.1.3": PATIENT_ROOT,  # GET
    "1.2.840.10008.5.1.4.1.2.2.1": STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.2": STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.3": STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.3.1": PATIENT_STUDY_ONLY,
    "1.2.840.10008.5.1.4.1.2.3.2": PATIENT_STUDY_ONLY,
    "1.2.840.10008.5.1.4.1.2.3.3": PATIENT_STUDY_ONLY,
}


class QueryError(Exception):
    """An identifier we cannot answer; ``status`` is the DIMSE status to send (A900, C000)."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


def model_of(model: str) -> str:
    """The information model named by a SOP Class UID or by one of the model constants."""
    if model in (PATIENT_ROOT, STUDY_ROOT, PATIENT_STUDY_ONLY):
        return model
    try:
        return MODEL_BY_SOP_CLASS[str(model)]
    except KeyError:
        raise QueryError(
            STATUS_IDENTIFIER_MISMATCH, f"{model} is not a Query/Retrieve SOP Class"
        ) from None


def _index_path(archive_or_db: Archive | sqlite3.Connection | Path | str) -> Path:
    if isinstance(archive_or_db, Archive):
        return archive_or_db.root.parent / INDEX_FILE
    if isinstance(archive_or_db, sqlite3.Connection):
        row = archive_or_db.execute("PRAGMA database_list").fetchone()
        return Path(row[2])
    path = Path(archive_or_db)
    return path / INDEX_FILE if path.is_dir() else path


def _unique_values(identifier: Dataset, keyword: str) -> list[str]:
    element = identifier.get(keyword)
    if element is None:
        return []
    values = [element] if isinstance(element, str) else list(element)
    return [str(v).strip() for v in values if str(v).strip()]


def resolve_instances(
    archive_or_db: Archive | sqlite3.Connection | Path | str, identifier: Dataset, model: str
) -> list[InstanceRecord]:
    """Every instance under the entities a C-MOVE/C-GET identifier selects.

    ``archive_or_db`` is the ``Archive``, a connection to its index, the index file or the data
    folder. ``model`` is the MOVE/GET (or FIND) SOP Class UID of the request, or one of
    ``PATIENT_ROOT``, ``STUDY_ROOT``, ``PATIENT_STUDY_ONLY``. The identifier's Query/Retrieve
    Level says which entities it selects; the unique keys of the levels above must be single
    values and the key of the level itself may be a list of UIDs (PS3.4 C.4.2.2.1).

    Raises ``QueryError`` with status A900 (identifier does not fit the model: bad level, a UID
    list above the level, a missing unique key) or C000 (cannot be processed). Returns the
    instances in a stable order (study, series, instance number); empty when nothing matches.
    """
    model = model_of(model)
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    levels = _LEVELS[model]
    if level not in levels:
        raise QueryError(
            STATUS_IDENTIFIER_MISMATCH,
            f"Query/Retrieve Level {level or '(missing)'} is not one of {', '.join(levels)}",
        )
    conditions: list[str] = []
    params: list[str] = []
    for upper in levels[: levels.index(level) + 1]:
        keyword, column = _UNIQUE_KEYS[upper]
        values = _unique_values(identifier, keyword)
        if upper != level and len(values) != 1:
            raise QueryError(
                STATUS_IDENTIFIER_MISMATCH, f"{keyword} must be one value above level {level}"
            )
        if upper == level and not values:
            raise QueryError(STATUS_IDENTIFIER_MISMATCH, f"{keyword} is missing")
        conditions.append(f"{column} IN ({','.join('?' * len(values))})")
        params.extend(values)
    path = _index_path(archive_or_db)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute(
            "SELECT i.sop_instance_uid, i.sop_class_uid, i.series_uid, i.study_uid,"
            " i.transfer_syntax, i.path, i.size FROM instances i"
            " LEFT JOIN studies s ON s.study_uid = i.study_uid"
            f" WHERE {' AND '.join(conditions)}"
            " ORDER BY i.study_uid, i.series_uid, CAST(i.instance_number AS INTEGER)",
            params,
        ).fetchall()
    finally:
        db.close()
    root = path.parent / ARCHIVE_DIR
    return [
        InstanceRecord(
            sop_instance_uid=row[0],
            sop_class_uid=row[1],
            series_uid=row[2],
            study_uid=row[3],
            transfer_syntax=row[4],
            path=root / row[5],
            size=row[6],
        )
        for row in rows
    ]


_LEVELS: dict[str, tuple[str, ...]] = {
    PATIENT_ROOT: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    STUDY_ROOT: ("STUDY", "SERIES", "IMAGE"),
    PATIENT_STUDY_ONLY: ("PATIENT", "STUDY"),
}
_UNIQUE_KEYS: dict[str, tuple[str, str]] = {
    "PATIENT": ("PatientID", "s.patient_id"),
    "STUDY": ("StudyInstanceUID", "i.study_uid"),
    "SERIES": ("SeriesInstanceUID", "i.series_uid"),
    "IMAGE": ("SOPInstanceUID", "i.sop_instance_uid"),
}
