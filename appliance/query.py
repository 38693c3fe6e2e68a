"""Query/Retrieve matching over the archive's SQLite index (PS3.4 Annex C).

Hierarchical queries only (no relational extended negotiation): the identifier names a level, the
unique keys of every level above it with one value each, and the keys of the level itself, which
are matched (PS3.4 C.2.2.2) and returned. Matching runs in two steps: SQL narrows the candidates
with the conditions an index can serve (UIDs, exact values, date ranges), then Python applies
the exact rules (wildcards, Person Name component groups and case, time ranges, combined
date-time). Values never enter the SQL text, only its parameters.

The C-FIND SCP (``appliance.qr_scp``) uses ``find``; the C-MOVE/C-GET SCPs use
``resolve_instances``.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

from appliance.archive import ARCHIVE_DIR, INDEX_FILE, Archive, InstanceRecord

STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_IDENTIFIER_MISMATCH = 0xA900
STATUS_UNABLE_TO_PROCESS = 0xC000

PATIENT_ROOT = "patient"
STUDY_ROOT = "study"
PATIENT_STUDY_ONLY = "patient_study_only"

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_STUDY_ONLY_FIND = "1.2.840.10008.5.1.4.1.2.3.1"
FIND_SOP_CLASSES = (PATIENT_ROOT_FIND, STUDY_ROOT_FIND, PATIENT_STUDY_ONLY_FIND)

# Every FIND/MOVE/GET SOP Class of the three models, mapped to its information model.
MODEL_BY_SOP_CLASS: dict[str, str] = {
    PATIENT_ROOT_FIND: PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.1.2": PATIENT_ROOT,  # MOVE
    "1.2.840.10008.5.1.4.1.2.1.3": PATIENT_ROOT,  # GET
    STUDY_ROOT_FIND: STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.2": STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.3": STUDY_ROOT,
    PATIENT_STUDY_ONLY_FIND: PATIENT_STUDY_ONLY,
    "1.2.840.10008.5.1.4.1.2.3.2": PATIENT_STUDY_ONLY,
    "1.2.840.10008.5.1.4.1.2.3.3": PATIENT_STUDY_ONLY,
}

LEVELS: dict[str, tuple[str, ...]] = {
    PATIENT_ROOT: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    STUDY_ROOT: ("STUDY", "SERIES", "IMAGE"),
    PATIENT_STUDY_ONLY: ("PATIENT", "STUDY"),
}

UTF8 = "ISO_IR 192"


class QueryError(Exception):
    """An identifier we cannot answer; ``status`` is the DIMSE status to send (A900, C000)."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


def _mismatch(comment: str) -> QueryError:
    return QueryError(STATUS_IDENTIFIER_MISMATCH, comment)


def _unprocessable(comment: str) -> QueryError:
    return QueryError(STATUS_UNABLE_TO_PROCESS, comment)


# --- the keys ---------------------------------------------------------------------------------

# How a key is matched. Counts are return keys only (PS3.4 C.6.1.1: no matching on them).
UID, TEXT, PN, DATE, TIME, NUMBER, SET, COUNT = (
    "uid",
    "text",
    "pn",
    "date",
    "time",
    "number",
    "set",
    "count",
)


@dataclass(frozen=True)
class Key:
    keyword: str
    entity: str  # the entity the attribute belongs to: PATIENT, STUDY, SERIES, IMAGE
    kind: str
    column: str | None = None  # SQL expression over the aliases p, s, se, i; None: computed


_KEYS: tuple[Key, ...] = (
    Key("PatientID", "PATIENT", TEXT, "p.patient_id"),
    Key("PatientName", "PATIENT", PN, "p.patient_name"),
    Key("PatientBirthDate", "PATIENT", DATE, "p.birth_date"),
    Key("PatientSex", "PATIENT", TEXT, "p.sex"),
    Key("NumberOfPatientRelatedStudies", "PATIENT", COUNT),
    Key("NumberOfPatientRelatedSeries", "PATIENT", COUNT),
    Key("NumberOfPatientRelatedInstances", "PATIENT", COUNT),
    Key("StudyInstanceUID", "STUDY", UID, "s.study_uid"),
    Key("StudyDate", "STUDY", DATE, "s.study_date"),
    Key("StudyTime", "STUDY", TIME, "s.study_time"),
    Key("AccessionNumber", "STUDY", TEXT, "s.accession_number"),
    Key("StudyID", "STUDY", TEXT, "s.study_id"),
    Key("ReferringPhysicianName", "STUDY", PN, "s.referring_physician"),
    Key("StudyDescription", "STUDY", TEXT, "s.study_description"),
    Key("ModalitiesInStudy", "STUDY", SET),
    Key("SOPClassesInStudy", "STUDY", SET),
    Key("NumberOfStudyRelatedSeries", "STUDY", COUNT),
    Key("NumberOfStudyRelatedInstances", "STUDY", COUNT),
    Key("SeriesInstanceUID", "SERIES", UID, "se.series_uid"),
    Key("Modality", "SERIES", TEXT, "se.modality"),
    Key("SeriesNumber", "SERIES", NUMBER, "se.series_number"),
    Key("SeriesDescription", "SERIES", TEXT, "se.series_description"),
    Key("BodyPartExamined", "SERIES", TEXT, "se.body_part"),
    Key("SeriesDate", "SERIES", DATE, "se.series_date"),
    Key("SeriesTime", "SERIES", TIME, "se.series_time"),
    Key("ProtocolName", "SERIES", TEXT, "se.protocol_name"),
    Key("NumberOfSeriesRelatedInstances", "SERIES", COUNT),
    Key("SOPInstanceUID", "IMAGE", UID, "i.sop_instance_uid"),
    Key("SOPClassUID", "IMAGE", UID, "i.sop_class_uid"),
    Key("InstanceNumber", "IMAGE", NUMBER, "i.instance_number"),
    Key("ImageID", "IMAGE", TEXT, "i.image_id"),
    Key("AvailableTransferSyntaxUID", "IMAGE", UID, "i.transfer_syntax"),
)
KEYS: dict[str, Key] = {key.keyword: key for key in _KEYS}

UNIQUE_KEYS: dict[str, str] = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}

# Keys of no level: the SCP fills them in (or, for Instance Availability, always knows them).
# Anything else outside _KEYS is an optional key we do not support: returned empty, FF01.
_SPECIAL = frozenset(
    {"SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle", "InstanceAvailability"}
)

# The tables each query level reads, and where the unique keys of the entities above it are.
_FROM: dict[str, str] = {
    "PATIENT": "patients p",
    "STUDY": "studies s LEFT JOIN patients p ON p.patient_id = s.patient_id",
    "SERIES": "series se JOIN studies s ON s.study_uid = se.study_uid"
    " LEFT JOIN patients p ON p.patient_id = s.patient_id",
    "IMAGE": "instances i LEFT JOIN series se ON se.series_uid = i.series_uid"
    " LEFT JOIN studies s ON s.study_uid = i.study_uid"
    " LEFT JOIN patients p ON p.patient_id = s.patient_id",
}
# An entity is there only while an instance under it is: rows left behind by recovery or by an
# instance re-sent under another study never show up in a query.
_EXISTS: dict[str, str] = {
    "PATIENT": "EXISTS (SELECT 1 FROM studies s2 JOIN instances i2 ON i2.study_uid = s2.study_uid"
    " WHERE s2.patient_id = p.patient_id)",
    "STUDY": "EXISTS (SELECT 1 FROM instances i2 WHERE i2.study_uid = s.study_uid)",
    "SERIES": "EXISTS (SELECT 1 FROM instances i2 WHERE i2.series_uid = se.series_uid)",
    "IMAGE": "1",
}
_ENTITY_ID: dict[str, str] = {
    "PATIENT": "p.patient_id",
    "STUDY": "s.study_uid",
    "SERIES": "se.series_uid",
    "IMAGE": "i.sop_instance_uid",
}
_CHARSET: dict[str, str] = {
    "PATIENT": "p.charset",
    "STUDY": "s.charset",
    "SERIES": "s.charset",
    "IMAGE": "i.charset",
}
# The stored row of the level itself carries the unique keys above it (and a study its patient's
# ID): use those columns, so a missing patients row cannot hide a study, and the index serves.
_COLUMN_AT_LEVEL: dict[tuple[str, str], str] = {
    ("SERIES", "StudyInstanceUID"): "se.study_uid",
    ("STUDY", "PatientID"): "s.patient_id",
    ("SERIES", "PatientID"): "s.patient_id",
    ("IMAGE", "PatientID"): "s.patient_id",
    ("IMAGE", "StudyInstanceUID"): "i.study_uid",
    ("IMAGE", "SeriesInstanceUID"): "i.series_uid",
}
# Series and instances in their numbers' order; patients and studies as the index has them
# (sorting every study would cost more than the rest of a study-level query).
_ORDER: dict[str, str] = {
    "PATIENT": "",
    "STUDY": "",
    "SERIES": " ORDER BY CAST(se.series_number AS INTEGER), se.rowid",
    "IMAGE": " ORDER BY CAST(i.instance_number AS INTEGER), i.rowid",
}


def model_of(model: str) -> str:
    """The information model named by a SOP Class UID or by one of the model constants."""
    if model in (PATIENT_ROOT, STUDY_ROOT, PATIENT_STUDY_ONLY):
        return model
    try:
        return MODEL_BY_SOP_CLASS[str(model)]
    except KeyError:
        raise _mismatch(f"{model} is not a Query/Retrieve SOP Class") from None


def _entity_level(key: Key, model: str) -> str:
    """The query level a key belongs to in a model: Study Root keeps patients in the study."""
    if model == STUDY_ROOT and key.entity == "PATIENT":
        return "STUDY"
    return key.entity


# --- matching values ------------------------------------------------------------------------

_WILDCARD = re.compile(r"[*?]")
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")


def _is_wildcard(value: str) -> bool:
    return bool(_WILDCARD.search(value))


def _wildcard_regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile("".join(parts), flags)


def _text_matcher(value: str, ignore_case: bool = False) -> Callable[[str], bool]:
    """Single value or wildcard matching of one query value against one stored value."""
    if _is_wildcard(value):
        regex = _wildcard_regex(value, ignore_case)
        return lambda stored: regex.fullmatch(stored) is not None
    if ignore_case:
        folded = value.casefold()
        return lambda stored: stored.casefold() == folded
    return lambda stored: stored == value


def _pn_groups(value: str) -> list[str]:
    """A Person Name's component groups, each without trailing empty components."""
    return [group.strip().rstrip("^").strip() for group in value.split("=")]


def _pn_matcher(value: str, ignore_case: bool) -> Callable[[str], bool]:
    """PS3.4 C.2.2.2.1/C.2.2.2.4 for PN: a query with one component group matches the whole name
    or any one of its groups (a Japanese query may give only the ideographic name); a query
    with several groups matches group by group, an empty query group matching anything."""
    groups = _pn_groups(value)
    if len(groups) == 1:
        match = _text_matcher(groups[0], ignore_case)

        def single(stored: str) -> bool:
            stored_groups = _pn_groups(stored)
            return match("=".join(stored_groups).rstrip("=")) or any(
                match(group) for group in stored_groups if group
            )

        return single
    matchers = [_text_matcher(group, ignore_case) if group else None for group in groups]

    def grouped(stored: str) -> bool:
        stored_groups = _pn_groups(stored)
        stored_groups += [""] * (len(matchers) - len(stored_groups))
        return all(m is None or m(g) for m, g in zip(matchers, stored_groups, strict=False))

    return grouped


def _normal_date(value: str, keyword: str) -> str:
    date = value.replace(".", "")  # the ACR-NEMA form YYYY.MM.DD still turns up
    if not _DATE.match(date):
        raise _unprocessable(f"{keyword} value {value!r} is not a date")
    return date


def _normal_time(value: str, keyword: str, upper: bool = False) -> str:
    """A time as HHMMSS.FFFFFF; missing parts are the start of the time span, or its end."""
    match = _TIME.match(value.replace(":", ""))
    if not match:
        raise _unprocessable(f"{keyword} value {value!r} is not a time")
    hours, minutes, seconds, fraction = match.groups()
    fill = "59" if upper else "00"
    return (
        f"{hours}{minutes or fill}{seconds or fill}."
        f"{(fraction or '').ljust(6, '9' if upper else '0')}"
    )


def _stored_time(value: str) -> str | None:
    try:
        return _normal_time(value.strip(), "")
    except QueryError:
        return None


def _range(value: str) -> tuple[str, str] | None:
    if value.count("-") != 1:
        return None
    low, high = (part.strip() for part in value.split("-"))
    return low, high


def _date_matcher(value: str, keyword: str) -> tuple[Callable[[str], bool], list[str], list]:
    """Matcher for a DA key plus an SQL condition (as ``{col}`` template) and its parameters."""
    bounds = _range(value)
    if bounds is None:
        if _is_wildcard(value):
            return _text_matcher(value), [], []
        date = _normal_date(value, keyword)
        return (
            (lambda stored: stored.replace(".", "") == date),
            ["{col} IN (?, ?)"],
            [
                date,
                f"{date[:4]}.{date[4:6]}.{date[6:]}",
            ],
        )
    low = _normal_date(bounds[0], keyword) if bounds[0] else ""
    high = _normal_date(bounds[1], keyword) if bounds[1] else ""
    if not low and not high:
        raise _unprocessable(f"{keyword} range {value!r} has no bounds")

    def in_range(stored: str) -> bool:
        date = stored.replace(".", "")
        return bool(_DATE.match(date)) and (not low or date >= low) and (not high or date <= high)

    # Dates in the index are YYYYMMDD text, so a text range is a date range and uses an index.
    sql, params = ["{col} <> ''"], []
    if low:
        sql.append("{col} >= ?")
        params.append(low)
    if high:
        sql.append("{col} <= ?")
        params.append(high)
    return in_range, sql, params


def _time_matcher(value: str, keyword: str) -> Callable[[str], bool]:
    bounds = _range(value)
    if bounds is None:
        if _is_wildcard(value):
            return _text_matcher(value)
        # A single time covers its whole span: 1015 matches 10:15:00 up to 10:15:59.999999.
        bounds = (value, value)
    low = _normal_time(bounds[0], keyword) if bounds[0] else ""
    high = _normal_time(bounds[1], keyword, upper=True) if bounds[1] else ""
    if not low and not high:
        raise _unprocessable(f"{keyword} range {value!r} has no bounds")

    def in_range(stored: str) -> bool:
        time = _stored_time(stored)
        return time is not None and (not low or time >= low) and (not high or time <= high)

    return in_range


def _datetime_matcher(
    date_value: str, time_value: str, date_keyword: str, time_keyword: str
) -> Callable[[str, str], bool]:
    """PS3.4 C.2.2.2.5: a date range and a time range together are one date-time range.

    ``StudyDate=20240101-20240103`` with ``StudyTime=1800-0800`` is 2024-01-01 18:00 to
    2024-01-03 08:00. A side whose date is open is open; a stored entity without a time is
    matched on its date alone.
    """
    date_low, date_high = _range(date_value) or ("", "")
    time_low, time_high = _range(time_value) or ("", "")
    low = _normal_date(date_low, date_keyword) if date_low else ""
    high = _normal_date(date_high, date_keyword) if date_high else ""
    if not low and not high:
        raise _unprocessable(f"{date_keyword} range {date_value!r} has no bounds")
    tlow = _normal_time(time_low, time_keyword) if time_low else "000000.000000"
    thigh = _normal_time(time_high, time_keyword, upper=True) if time_high else "235959.999999"

    def in_range(stored_date: str, stored_time: str) -> bool:
        date = stored_date.replace(".", "")
        if not _DATE.match(date):
            return False
        time = _stored_time(stored_time) if stored_time.strip() else None
        if time is None:
            return (not low or date >= low) and (not high or date <= high)
        moment = date + time
        return (not low or moment >= low + tlow) and (not high or moment <= high + thigh)

    return in_range


def _number_matcher(value: str) -> Callable[[str], bool]:
    if _is_wildcard(value):
        return _text_matcher(value)
    try:
        number = int(value)
    except ValueError:
        return lambda stored: stored == value

    def equal(stored: str) -> bool:
        try:
            return int(stored) == number
        except ValueError:
            return False

    return equal


def _query_values(element: DataElement) -> list[str]:
    """The values of a query key as text; empty when the key asks for universal matching."""
    value = element.value
    if value is None or value == "":
        return []
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    values = [str(item).strip() for item in items]
    if values == ["*"]:  # PS3.4 C.2.2.2.4: a lone "*" is universal matching
        return []
    return values


# --- the query --------------------------------------------------------------------------------


@dataclass
class _Condition:
    """One matching key: SQL pre-filter (on the candidates) and the exact Python test."""

    columns: tuple[str, ...]  # result columns the test reads, in order
    test: Callable[..., bool]
    sql: list[str] = field(default_factory=list)
    params: list[object] = field(default_factory=list)


@dataclass
class Query:
    """A validated C-FIND (or retrieve) identifier, ready to run."""

    model: str
    level: str
    requested: list[DataElement]  # the identifier's elements, in order, to answer
    conditions: list[_Condition]
    computed_conditions: dict[str, Callable[[list[str]], bool]]  # SET keys matched on values
    unsupported: list[str]


def _level_of(identifier: Dataset, model: str) -> str:
    levels = LEVELS[model]
    try:
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    except Exception as exc:
        raise _mismatch(f"Query/Retrieve Level cannot be read: {exc}") from exc
    if level not in levels:
        raise _mismatch(
            f"Query/Retrieve Level {level or '(missing)'} is not one of {'/'.join(levels)}"
        )
    return level


def parse_query(identifier: Dataset, model: str, *, case_insensitive_names: bool = True) -> Query:
    """Check ``identifier`` against the hierarchical model and turn its keys into conditions.

    A900: a level the model lacks, a unique key above the level missing or not one plain value,
    any other key of a level above or below the query level. C000: a value that cannot be
    decoded, a malformed date/time range, a wildcard in a UID.
    """
    model = model_of(model)
    level = _level_of(identifier, model)
    levels = LEVELS[model]
    depth = levels.index(level)
    requested: list[DataElement] = []
    conditions: list[_Condition] = []
    computed: dict[str, Callable[[list[str]], bool]] = {}
    unsupported: list[str] = []
    seen_upper: set[str] = set()
    values_by_keyword: dict[str, list[str]] = {}

    try:
        elements = [identifier[tag] for tag in identifier.keys()]
    except Exception as exc:
        raise _unprocessable(f"identifier cannot be decoded: {exc}") from exc
    for element in elements:
        tag = Tag(element.tag)
        if tag.element == 0 or tag.group in (0x0000, 0x0002):
            continue  # group lengths and command/meta elements carry no key
        keyword = element.keyword or keyword_for_tag(tag)
        if keyword in _SPECIAL:
            if keyword != "SpecificCharacterSet" and keyword != "QueryRetrieveLevel":
                requested.append(element)
            continue
        key = KEYS.get(keyword)
        if key is None:
            unsupported.append(keyword or str(tag))
            requested.append(element)
            continue
        try:
            values = _query_values(element)
        except Exception as exc:
            raise _unprocessable(f"{keyword} cannot be decoded: {exc}") from exc
        key_level = _entity_level(key, model)
        if key_level not in levels:
            raise _mismatch(f"{keyword} is not a key of this information model")
        key_depth = levels.index(key_level)
        if key_depth > depth:
            raise _mismatch(f"{keyword} is a {key_level} key, below the level {level}")
        requested.append(element)
        if key_depth < depth:
            if UNIQUE_KEYS[key_level] != keyword:
                raise _mismatch(f"{keyword} is a {key_level} key, above the level {level}")
            if len(values) != 1 or _is_wildcard(values[0]):
                raise _mismatch(f"{keyword} above the level {level} must be one value")
            seen_upper.add(keyword)
            column = _COLUMN_AT_LEVEL.get((level, keyword), key.column)
            assert column is not None
            conditions.append(
                _Condition(
                    (column,),
                    lambda stored, v=values[0]: stored == v,
                    [f"{column} = ?"],
                    [values[0]],
                )
            )
            continue
        values_by_keyword[keyword] = values
        if values:
            column = _COLUMN_AT_LEVEL.get((level, keyword), key.column)
            condition = _key_condition(key, column, values, case_insensitive_names, computed)
            if condition is not None:
                conditions.append(condition)

    for upper in levels[:depth]:
        if UNIQUE_KEYS[upper] not in seen_upper:
            raise _mismatch(f"{UNIQUE_KEYS[upper]} (unique key of {upper}) is missing")

    # PS3.4 C.2.2.2.5: a date range with a time range of the same entity is one range.
    for date_keyword, time_keyword in (("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime")):
        date_values = values_by_keyword.get(date_keyword) or []
        time_values = values_by_keyword.get(time_keyword) or []
        if (
            len(date_values) == 1
            and len(time_values) == 1
            and _range(date_values[0])
            and _range(time_values[0])
        ):
            date_column, time_column = KEYS[date_keyword].column, KEYS[time_keyword].column
            assert date_column and time_column
            conditions = [
                c for c in conditions if c.columns not in ((date_column,), (time_column,))
            ]
            test = _datetime_matcher(date_values[0], time_values[0], date_keyword, time_keyword)
            _, sql, params = _date_matcher(date_values[0], date_keyword)
            conditions.append(
                _Condition(
                    (date_column, time_column),
                    test,
                    [part.format(col=date_column) for part in sql],
                    params,
                )
            )
    return Query(model, level, requested, conditions, computed, unsupported)


def _any_of(matchers: Sequence[Callable[[str], bool]]) -> Callable[[str], bool]:
    if len(matchers) == 1:
        return matchers[0]
    return lambda stored: any(m(stored) for m in matchers)


def _key_condition(
    key: Key,
    column: str | None,
    values: list[str],
    case_insensitive_names: bool,
    computed: dict[str, Callable[[list[str]], bool]],
) -> _Condition | None:
    keyword = key.keyword
    if key.kind == COUNT:
        return None  # return keys only; a value given for them is not a condition
    if key.kind == SET:
        plain = all(not _is_wildcard(v) for v in values)
        matchers = [_text_matcher(v) for v in values]
        computed[keyword] = lambda stored: any(m(s) for m in matchers for s in stored)
        if keyword == "ModalitiesInStudy" and plain:
            marks = ",".join("?" * len(values))
            return _Condition(
                (),
                lambda: True,
                [
                    "EXISTS (SELECT 1 FROM series se3 WHERE se3.study_uid = s.study_uid"
                    f" AND se3.modality IN ({marks}))"
                ],
                list(values),
            )
        return None
    assert column is not None
    if key.kind == UID:
        if any(_is_wildcard(v) for v in values):
            raise _unprocessable(f"{keyword} is a UID: no wildcards")
        wanted = frozenset(values)
        marks = ",".join("?" * len(values))
        return _Condition(
            (column,), lambda stored: stored in wanted, [f"{column} IN ({marks})"], list(values)
        )
    if key.kind == DATE:
        if len(values) != 1:
            matchers = [_date_matcher(v, keyword)[0] for v in values]
            return _Condition((column,), _any_of(matchers))
        test, sql, params = _date_matcher(values[0], keyword)
        return _Condition((column,), test, [part.format(col=column) for part in sql], params)
    if key.kind == TIME:
        return _Condition((column,), _any_of([_time_matcher(v, keyword) for v in values]))
    if key.kind == NUMBER:
        return _Condition((column,), _any_of([_number_matcher(v) for v in values]))
    if key.kind == PN:
        matchers = [_pn_matcher(v, case_insensitive_names) for v in values]
        sql, params = _pn_prefilter(column, values[0]) if len(values) == 1 else ([], [])
        return _Condition((column,), _any_of(matchers), sql, params)
    # Text: exact values narrow by index; a wildcard by GLOB, which has the same * and ?.
    matchers = [_text_matcher(v) for v in values]
    sql = []
    params = []
    if not any(_is_wildcard(v) for v in values):
        sql = [f"{column} IN ({','.join('?' * len(values))})"]
        params = list(values)
    elif len(values) == 1:
        sql = [f"{column} GLOB ?"]
        params = [values[0].replace("[", "[[]")]
    return _Condition((column,), _any_of(matchers), sql, params)


def _pn_prefilter(column: str, value: str) -> tuple[list[str], list[object]]:
    """An SQL condition every name matching ``value`` meets, so Python tests few rows.

    A one-group query matches the whole name or one of its groups: the name starts with the
    query's literal prefix, or it has several groups (then Python decides). LIKE ignores the
    case of ASCII letters only, so a prefix with other letters is not used for it (a superset
    is fine, a subset is not).
    """
    if "=" in value:
        return [], []
    prefix = re.split(r"[*?]", value, maxsplit=1)[0]
    if not prefix or not prefix.isascii():
        return [], []
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return [f"({column} LIKE ? ESCAPE '\\' OR {column} LIKE '%=%')"], [escaped + "%"]


# --- running it -------------------------------------------------------------------------------


def index_path(archive_or_db: Archive | sqlite3.Connection | Path | str) -> Path:
    """The index file of an ``Archive``, an open index connection, a data folder or a path."""
    if isinstance(archive_or_db, Archive):
        return archive_or_db.root.parent / INDEX_FILE
    if isinstance(archive_or_db, sqlite3.Connection):
        row = archive_or_db.execute("PRAGMA database_list").fetchone()
        return Path(row[2])
    path = Path(archive_or_db)
    return path / INDEX_FILE if path.is_dir() else path


def connect(path: Path) -> sqlite3.Connection:
    """A connection of its own for one query: WAL lets it read while C-STOREs write."""
    db = sqlite3.connect(path, timeout=30, check_same_thread=False)
    db.execute("PRAGMA query_only=1")
    return db


@dataclass
class Match:
    entity_id: str
    charset: str
    patient_id: str  # for the patient's counts, which Study Root asks for at STUDY level
    values: dict[str, str]
    computed: dict[str, list[str] | int] = field(default_factory=dict)


def _needed_columns(query: Query) -> dict[str, str]:
    """Result column per keyword the answers need, plus those the conditions test."""
    columns: dict[str, str] = {}
    for element in query.requested:
        key = KEYS.get(element.keyword)
        if key is not None and key.column is not None:
            columns[key.keyword] = _COLUMN_AT_LEVEL.get((query.level, key.keyword), key.column)
    return columns


def run_query(db: sqlite3.Connection, query: Query, limit: int = 0) -> tuple[list[Match], bool]:
    """The entities matching ``query``, at most ``limit`` of them (0: all); and whether the
    limit cut the list short."""
    level = query.level
    returned = _needed_columns(query)
    select: list[str] = [
        _ENTITY_ID[level],
        f"COALESCE({_CHARSET[level]}, '')",
        "p.patient_id" if level == "PATIENT" else "s.patient_id",
    ]
    positions: dict[str, int] = {}
    for column in list(returned.values()) + [c for cond in query.conditions for c in cond.columns]:
        if column not in positions:
            positions[column] = len(select)
            select.append(f"COALESCE({column}, '')")
    where: list[str] = []
    params: list[object] = []
    patient_where: list[str] = []
    patient_params: list[object] = []
    for condition in query.conditions:
        if level != "PATIENT" and any("p." in part for part in condition.sql):
            patient_where.extend(condition.sql)
            patient_params.extend(condition.params)
        else:
            where.extend(condition.sql)
            params.extend(condition.params)
    if patient_where:
        # Study Root's patient keys: find the patients first, then their studies by index,
        # instead of testing the name of every study's patient.
        where.insert(
            0,
            "s.patient_id IN (SELECT p.patient_id FROM patients p"
            f" WHERE {' AND '.join(patient_where)})",
        )
        params[:0] = patient_params
    where.append(_EXISTS[level])
    sql = (
        f"SELECT {', '.join(select)} FROM {_FROM[level]} WHERE {' AND '.join(where)}{_ORDER[level]}"
    )
    tests = [
        (condition.test, [positions[c] for c in condition.columns])
        for condition in query.conditions
        if condition.columns
    ]
    matches: list[Match] = []
    truncated = False
    wanted = limit + 1 if limit else 0
    pending: list[Match] = []
    cursor = db.execute(sql, params)
    while True:
        rows = cursor.fetchmany(500)
        if not rows:
            break
        for row in rows:
            if all(test(*(row[p] for p in cols)) for test, cols in tests):
                pending.append(
                    Match(
                        row[0],
                        row[1],
                        row[2] or "",
                        {keyword: row[positions[column]] for keyword, column in returned.items()},
                    )
                )
        if query.computed_conditions and pending:
            _compute(db, level, pending, set(query.computed_conditions))
            pending = [
                m
                for m in pending
                if all(
                    test(m.computed.get(keyword, []))  # type: ignore[arg-type]
                    for keyword, test in query.computed_conditions.items()
                )
            ]
        matches.extend(pending)
        pending = []
        if wanted and len(matches) >= wanted:
            break
    cursor.close()
    if wanted and len(matches) >= wanted:
        matches = matches[:limit]
        truncated = True
    needed = {
        element.keyword
        for element in query.requested
        if element.keyword in KEYS and KEYS[element.keyword].column is None
    }
    if needed and matches:
        _compute(db, level, matches, needed)
    return matches, truncated


def _chunks(items: list[Match], size: int = 500) -> Iterator[list[Match]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _compute(db: sqlite3.Connection, level: str, matches: list[Match], keywords: set[str]) -> None:
    """Counts, Modalities in Study and SOP Classes in Study, by aggregates over the matches."""
    for chunk in _chunks(matches):
        by_id = {m.entity_id: m for m in chunk}
        ids = list(by_id)
        marks = ",".join("?" * len(ids))
        if keywords & {
            "NumberOfPatientRelatedStudies",
            "NumberOfPatientRelatedSeries",
            "NumberOfPatientRelatedInstances",
        }:
            patients = sorted({m.patient_id for m in chunk})
            counts: dict[str, dict[str, int]] = {}
            for patient_id, studies, series, instances in db.execute(
                "SELECT s.patient_id, COUNT(DISTINCT i.study_uid), COUNT(DISTINCT i.series_uid),"
                " COUNT(*) FROM studies s JOIN instances i ON i.study_uid = s.study_uid"
                f" WHERE s.patient_id IN ({','.join('?' * len(patients))}) GROUP BY s.patient_id",
                patients,
            ):
                counts[patient_id] = {
                    "NumberOfPatientRelatedStudies": studies,
                    "NumberOfPatientRelatedSeries": series,
                    "NumberOfPatientRelatedInstances": instances,
                }
            for match in chunk:
                match.computed.update(counts.get(match.patient_id, {}))
        if level == "STUDY" and keywords & {
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
        }:
            for study_uid, series, instances in db.execute(
                "SELECT study_uid, COUNT(DISTINCT series_uid), COUNT(*) FROM instances"
                f" WHERE study_uid IN ({marks}) GROUP BY study_uid",
                ids,
            ):
                by_id[study_uid].computed.update(
                    NumberOfStudyRelatedSeries=series, NumberOfStudyRelatedInstances=instances
                )
        if level == "STUDY" and "ModalitiesInStudy" in keywords:
            for match in chunk:
                match.computed["ModalitiesInStudy"] = []
            for study_uid, modality in db.execute(
                "SELECT DISTINCT se.study_uid, se.modality FROM series se"
                f" WHERE se.study_uid IN ({marks}) AND se.modality <> '' AND EXISTS"
                " (SELECT 1 FROM instances i2 WHERE i2.series_uid = se.series_uid)"
                " ORDER BY se.modality",
                ids,
            ):
                by_id[study_uid].computed["ModalitiesInStudy"].append(modality)  # type: ignore[union-attr]
        if level == "STUDY" and "SOPClassesInStudy" in keywords:
            for match in chunk:
                match.computed["SOPClassesInStudy"] = []
            for study_uid, sop_class in db.execute(
                "SELECT DISTINCT study_uid, sop_class_uid FROM instances"
                f" WHERE study_uid IN ({marks}) ORDER BY sop_class_uid",
                ids,
            ):
                by_id[study_uid].computed["SOPClassesInStudy"].append(sop_class)  # type: ignore[union-attr]
        if level == "SERIES" and "NumberOfSeriesRelatedInstances" in keywords:
            for series_uid, instances in db.execute(
                "SELECT series_uid, COUNT(*) FROM instances"
                f" WHERE series_uid IN ({marks}) GROUP BY series_uid",
                ids,
            ):
                by_id[series_uid].computed["NumberOfSeriesRelatedInstances"] = instances


# --- answers ----------------------------------------------------------------------------------

_TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})


def _element(tag: int, vr: str, value: object) -> DataElement:
    # Values come from received instances and were checked then; validating them again for
    # every answer would cost more than the whole match.
    try:
        return DataElement(tag, vr, value, validation_mode=config.IGNORE)
    except (TypeError, ValueError, OverflowError):
        # A stored value that is not valid for its VR (an IS of "1.0") is still an answer;
        # returned as it was stored it could fail the encoding, so it goes back empty.
        return DataElement(tag, vr, None, validation_mode=config.IGNORE)


_QUERY_RETRIEVE_LEVEL = 0x00080052
_RETRIEVE_AE_TITLE = 0x00080054
_SPECIFIC_CHARACTER_SET = 0x00080005
_INSTANCE_AVAILABILITY = 0x00080056


def response_values(query: Query, match: Match, ae_title: str) -> list[tuple[int, str, object]]:
    """(tag, VR, value) of every element of a pending response but Specific Character Set, in
    the order of the request: the requested keys (``None``: empty), Query/Retrieve Level and
    Retrieve AE Title. A value is text, a list of texts, or an empty sequence."""
    values: list[tuple[int, str, object]] = []
    for element in query.requested:
        keyword = element.keyword
        tag = element.tag
        if tag == _RETRIEVE_AE_TITLE:
            continue
        if tag == _INSTANCE_AVAILABILITY:
            values.append((tag, "CS", "ONLINE"))
            continue
        key = KEYS.get(keyword)
        if key is None:
            vr = element.VR
            values.append((tag, vr, DicomSequence() if vr == "SQ" else None))
            continue
        vr = _vr(tag)
        if key.column is None:
            value: object = match.computed.get(keyword)
            if isinstance(value, list):
                value = value or None
            elif value is not None:
                value = str(value)
        else:
            value = match.values.get(keyword) or None
            if isinstance(value, str) and "\\" in value:
                value = value.split("\\")
        values.append((tag, vr, value))
    values.append((_QUERY_RETRIEVE_LEVEL, "CS", query.level))
    values.append((_RETRIEVE_AE_TITLE, "AE", ae_title))
    return values


def build_response(query: Query, match: Match, ae_title: str) -> Dataset:
    """The identifier of one pending C-FIND response: the requested keys with their values,
    plus Specific Character Set, Query/Retrieve Level and Retrieve AE Title."""
    ds = Dataset()
    texts: list[str] = []
    for tag, vr, value in response_values(query, match, ae_title):
        if value is not None and vr in _TEXT_VRS:
            texts.append(str(value))
        ds.add(_element(tag, vr, value))
    ds.add(_element(_SPECIFIC_CHARACTER_SET, "CS", _response_charset(ds, texts, match.charset)))
    return ds


# Explicit VRs with a 4-byte length field (PS3.5 7.1.2)
_LONG_VRS = frozenset("OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())


def encode_response(
    query: Query, match: Match, ae_title: str, *, implicit_vr: bool
) -> bytes | None:
    """A pending response identifier encoded little endian, without pydicom.

    pydicom's writer costs more per answer than the matching, and a long result list is
    thousands of answers. Returns None when the answer needs a character set other than the
    default repertoire (text that is not ASCII) or is otherwise unusual; ``build_response``
    and pydicom's writer handle those. The bytes equal pydicom's for the same data set (tests
    compare them).
    """
    elements = response_values(query, match, ae_title)
    elements.append((_SPECIFIC_CHARACTER_SET, "CS", None))
    elements.sort(key=lambda item: item[0])
    out: list[bytes] = []
    for tag, vr, value in elements:
        if value is None or isinstance(value, DicomSequence):
            text = ""
        elif isinstance(value, list):
            text = "\\".join(str(item) for item in value)
        elif isinstance(value, str):
            text = value
        else:
            return None
        if not text.isascii():
            return None
        data = text.encode("ascii")
        if len(data) % 2:
            data += b"\0" if vr == "UI" else b" "
        group, number = tag >> 16, tag & 0xFFFF
        if implicit_vr:
            out.append(struct.pack("<HHI", group, number, len(data)))
        elif vr in _LONG_VRS:
            out.append(struct.pack("<HH2s2xI", group, number, vr.encode("ascii"), len(data)))
        elif len(data) <= 0xFFFF:
            out.append(struct.pack("<HH2sH", group, number, vr.encode("ascii"), len(data)))
        else:
            return None
        out.append(data)
    return b"".join(out)


@functools.cache
def _vr(tag: int) -> str:
    return str(dictionary_VR(tag))


def _response_charset(ds: Dataset, texts: list[str], stored: str) -> str | list[str]:
    """The character set the answer is encoded in.

    ASCII: the default repertoire (empty value). Otherwise the set the instance was stored in, as
    long as it can carry every returned value (a Latin-1 or ISO 2022 Japanese archive answers in
    its own set, as the peers that sent it expect); else UTF-8.
    """
    if all(text.isascii() for text in texts):
        return ""
    if stored and stored.upper() != UTF8:
        charset: str | list[str] = stored.split("\\") if "\\" in stored else stored
        if _round_trips(ds, charset):
            return charset
    return UTF8


def _round_trips(ds: Dataset, charset: str | list[str]) -> bool:
    probe = Dataset()
    probe.SpecificCharacterSet = charset
    for element in ds:
        if element.VR in _TEXT_VRS and element.value is not None:
            probe.add(DataElement(element.tag, element.VR, element.value))
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write_dataset(buffer, probe)
            back = read_dataset(BytesIO(buffer.getvalue()), False, True)
            return all(
                str(back[element.tag].value) == str(element.value)
                for element in probe
                if element.VR in _TEXT_VRS
            )
    except Exception:
        return False


@dataclass
class FindResult:
    query: Query
    matches: list[Match]
    truncated: bool
    ae_title: str

    def responses(self) -> Iterator[Dataset]:
        for match in self.matches:
            yield build_response(self.query, match, self.ae_title)


def find(
    archive_or_db: Archive | sqlite3.Connection | Path | str,
    identifier: Dataset,
    model: str,
    *,
    ae_title: str,
    case_insensitive_names: bool = True,
    max_matches: int = 0,
) -> FindResult:
    """Run a C-FIND identifier. Raises ``QueryError`` (A900, C000) for one we cannot answer."""
    query = parse_query(identifier, model, case_insensitive_names=case_insensitive_names)
    db = connect(index_path(archive_or_db))
    try:
        matches, truncated = run_query(db, query, max_matches)
    finally:
        db.close()
    return FindResult(query, matches, truncated, ae_title)


# --- retrieve ---------------------------------------------------------------------------------


def resolve_instances(
    archive_or_db: Archive | sqlite3.Connection | Path | str, identifier: Dataset, model: str
) -> list[InstanceRecord]:
    """Every instance under the entities a C-MOVE/C-GET identifier selects.

    ``archive_or_db`` is the ``Archive``, a connection to its index, the index file or the data
    folder. ``model`` is the MOVE/GET (or FIND) SOP Class UID of the request, or one of
    ``PATIENT_ROOT``, ``STUDY_ROOT``, ``PATIENT_STUDY_ONLY``. The identifier's Query/Retrieve
    Level says which entities it selects; the unique keys of the levels above must be single
    values and the key of the level itself may be a list of UIDs (PS3.4 C.4.2.2.1). Other keys
    of the level, if any, are matched as in C-FIND.

    Raises ``QueryError`` with status A900 (identifier does not fit the model: bad level, a UID
    list above the level, a missing unique key) or C000 (cannot be processed). Returns the
    instances in a stable order (study, series, instance number); empty when nothing matches.
    """
    query = parse_query(identifier, model)
    if UNIQUE_KEYS[query.level] not in {e.keyword for e in query.requested} or not _query_values(
        identifier[UNIQUE_KEYS[query.level]]
    ):
        raise _mismatch(f"{UNIQUE_KEYS[query.level]} is missing")
    path = index_path(archive_or_db)
    db = connect(path)
    try:
        matches, _ = run_query(db, query)
        ids = [m.entity_id for m in matches]
        column = {
            "PATIENT": "s.patient_id",
            "STUDY": "i.study_uid",
            "SERIES": "i.series_uid",
            "IMAGE": "i.sop_instance_uid",
        }[query.level]
        rows: list[tuple] = []
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            rows.extend(
                db.execute(
                    "SELECT i.sop_instance_uid, i.sop_class_uid, i.series_uid, i.study_uid,"
                    " i.transfer_syntax, i.path, i.size FROM instances i"
                    " LEFT JOIN studies s ON s.study_uid = i.study_uid"
                    f" WHERE {column} IN ({','.join('?' * len(part))})"
                    " ORDER BY i.study_uid, i.series_uid, CAST(i.instance_number AS INTEGER),"
                    " i.sop_instance_uid",
                    part,
                ).fetchall()
            )
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
