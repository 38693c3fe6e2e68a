"""Browsing the local archive for the console: studies by patient, date, modality, accession, and
the series of a study, from the archive's SQLite index.

Each call reads on a connection of its own (WAL: it never waits for C-STOREs being indexed).
Patient names match as C-FIND matches them with case-insensitive names (``*`` and ``?``
wildcards, any one Person Name component group); patient ID and accession number match exactly,
or with ``*`` and ``?`` wildcards. Only studies with at least one indexed instance are listed.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from appliance.query import _pn_matcher, _pn_prefilter, connect

DEFAULT_LIMIT = 200
MAX_LIMIT = 5000

_DATE = re.compile(r"^\d{8}$")
_MODALITY = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_WILDCARD = re.compile(r"[*?]")


class BrowseError(ValueError):
    """A filter value is not acceptable; the message names the filter and what is allowed."""


def check_date(name: str, value: str) -> str:
    if not _DATE.match(value):
        raise BrowseError(f"{name} must be a date as YYYYMMDD, not {value!r}")
    try:
        date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise BrowseError(f"{name} {value!r} is not a calendar date") from None
    return value


def check_modality(value: str) -> str:
    modality = value.strip().upper()
    if not _MODALITY.match(modality):
        raise BrowseError(f"modality {value!r} is not a modality (1 to 16 of A-Z 0-9 _, e.g. CT)")
    return modality


def check_uid(name: str, value: str) -> str:
    if not _UID.match(value) or len(value) > 64:
        raise BrowseError(f"{name} {value!r} is not a UID")
    return value


@dataclass(frozen=True)
class StudyFilter:
    """What ``studies`` looks for; every field left None matches anything."""

    patient_name: str | None = None
    patient_id: str | None = None
    date_from: str | None = None
    date_to: str | None = None
    modality: str | None = None
    accession: str | None = None
    limit: int = DEFAULT_LIMIT

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise BrowseError(f"limit must be in 1..{MAX_LIMIT}, not {self.limit}")
        if self.date_from is not None:
            check_date("date_from", self.date_from)
        if self.date_to is not None:
            check_date("date_to", self.date_to)
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise BrowseError(f"date_from {self.date_from} is after date_to {self.date_to}")
        if self.modality is not None:
            object.__setattr__(self, "modality", check_modality(self.modality))


def _text_condition(column: str, value: str) -> tuple[str, str]:
    """Exact, or with ``*``/``?`` wildcards by GLOB (``[`` taken literally)."""
    if _WILDCARD.search(value):
        return f"{column} GLOB ?", value.replace("[", "[[]")
    return f"{column} = ?", value


def _study_rows(db: sqlite3.Connection, flt: StudyFilter) -> Iterator[dict[str, Any]]:
    where = ["EXISTS (SELECT 1 FROM instances i WHERE i.study_uid = s.study_uid)"]
    params: list[object] = []
    if flt.patient_id:
        sql, param = _text_condition("s.patient_id", flt.patient_id)
        where.append(sql)
        params.append(param)
    if flt.accession:
        sql, param = _text_condition("s.accession_number", flt.accession)
        where.append(sql)
        params.append(param)
    if flt.date_from:
        where.append("s.study_date >= ?")
        params.append(flt.date_from)
    if flt.date_to:
        where.append("s.study_date <= ? AND s.study_date != ''")
        params.append(flt.date_to)
    if flt.modality:
        where.append(
            "EXISTS (SELECT 1 FROM series se WHERE se.study_uid = s.study_uid"
            " AND UPPER(TRIM(se.modality)) = ?)"
        )
        params.append(flt.modality)
    if flt.patient_name:
        sql_list, name_params = _pn_prefilter("p.patient_name", flt.patient_name)
        where.extend(sql_list)
        params.extend(name_params)
    cursor = db.execute(
        "SELECT s.study_uid, COALESCE(p.patient_name, ''), COALESCE(s.patient_id, ''),"
        " COALESCE(p.birth_date, ''), COALESCE(s.study_date, ''), COALESCE(s.study_time, ''),"
        " COALESCE(s.study_description, ''), COALESCE(s.accession_number, ''),"
        " (SELECT GROUP_CONCAT(m, '\\') FROM (SELECT DISTINCT se.modality AS m FROM series se"
        "   WHERE se.study_uid = s.study_uid AND se.modality != ''"
        "   AND EXISTS (SELECT 1 FROM instances i WHERE i.series_uid = se.series_uid)"
        "   ORDER BY se.modality)),"
        " (SELECT COUNT(DISTINCT i.series_uid) FROM instances i WHERE i.study_uid = s.study_uid),"
        " (SELECT COUNT(*) FROM instances i WHERE i.study_uid = s.study_uid)"
        " FROM studies s LEFT JOIN patients p ON p.patient_id = s.patient_id"
        f" WHERE {' AND '.join(where)}"
        " ORDER BY s.study_date DESC, s.study_time DESC, s.updated_at DESC, s.study_uid",
        params,
    )
    for row in cursor:
        yield {
            "study_uid": row[0],
            "patient_name": row[1],
            "patient_id": row[2],
            "patient_birth_date": row[3],
            "study_date": row[4],
            "study_time": row[5],
            "study_description": row[6],
            "accession_number": row[7],
            "modalities": row[8].split("\\") if row[8] else [],
            "series_count": row[9],
            "instance_count": row[10],
        }


def studies(index: Path, flt: StudyFilter) -> list[dict[str, Any]]:
    """The studies matching ``flt``, newest first (study date and time), at most its limit."""
    match = _pn_matcher(flt.patient_name, True) if flt.patient_name else None
    found: list[dict[str, Any]] = []
    with closing(connect(index)) as db:
        for study in _study_rows(db, flt):
            if match is not None and not match(study["patient_name"]):
                continue
            found.append(study)
            if len(found) >= flt.limit:
                break
        # Signature states recorded on receipt (signature_verify_on_receipt): valid, invalid,
        # untrustworthy, none or mixed; studies never checked get no "signatures" key.
        from appliance.signatures import study_states

        states = study_states(db, [study["study_uid"] for study in found])
    for study in found:
        if study["study_uid"] in states:
            study["signatures"] = states[study["study_uid"]]
    return found


def _series_number(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def series(index: Path, study_uid: str) -> list[dict[str, Any]] | None:
    """The series of a study with their instance counts, by series number; None when the
    archive has no instance of the study."""
    check_uid("study_uid", study_uid)
    with closing(connect(index)) as db:
        rows = db.execute(
            "SELECT i.series_uid, COALESCE(se.modality, ''), COALESCE(se.series_number, ''),"
            " COALESCE(se.series_description, ''), COUNT(*) FROM instances i"
            " LEFT JOIN series se ON se.series_uid = i.series_uid"
            " WHERE i.study_uid = ? GROUP BY i.series_uid",
            (study_uid,),
        ).fetchall()
    if not rows:
        return None
    found = [
        {
            "series_uid": row[0],
            "modality": row[1],
            "series_number": _series_number(row[2]),
            "series_description": row[3],
            "instance_count": row[4],
        }
        for row in rows
    ]
    found.sort(key=lambda s: (s["series_number"] is None, s["series_number"] or 0, s["series_uid"]))
    return found
