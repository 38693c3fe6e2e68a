"""Modality Worklist SCU (C-FIND) and Modality Performed Procedure Step SCU (N-CREATE, N-SET).

The appliance stands in for the modality next to it: it asks the RIS for the scheduled
procedure steps, tells it when a step starts (N-CREATE, IN PROGRESS) and when it ends (N-SET,
COMPLETED or DISCONTINUED, with the series and instances produced). The steps we created are
kept in ``mpps.json`` in the data folder, so that a later command can finish what an earlier
one started.
"""

from __future__ import annotations

import fcntl
import threading
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.charset import convert_encodings, encode_string, python_encoding
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.status import GENERAL_STATUS, MODALITY_WORKLIST_SERVICE_CLASS_STATUS
from tinydb import Query, TinyDB

from appliance.config import AtomicJSONStorage, ConfigError, Node, Settings
from appliance.dicom_classes import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from appliance.scu import associate, collect_files, describe_failed_association, requestor_ae

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"

IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"
PPS_STATUSES = (IN_PROGRESS, COMPLETED, DISCONTINUED)
FINAL_STATUSES = (COMPLETED, DISCONTINUED)

MPPS_FILE = "mpps.json"

# PS3.16 CID 9300 "Procedure Discontinuation Reasons", the ones an operator at a scanner meets.
DISCONTINUATION_REASONS: dict[str, tuple[str, str]] = {
    "unspecified": ("110513", "Discontinued for unspecified reason"),
    "wrong-worklist-entry": ("110514", "Incorrect worklist entry selected"),
    "equipment-failure": ("110501", "Equipment failure"),
    "patient-refused": ("110505", "Patient refused to continue procedure"),
    "patient-condition": ("110515", "Patient condition prevented continuing"),
    "doctor-cancelled": ("110500", "Doctor canceled procedure"),
    "duplicate-order": ("110510", "Duplicate order"),
}

_PENDING = (0xFF00, 0xFF01)
_CANCEL = 0xFE00
_TRANSFER_SYNTAXES = [EXPLICIT_VR_LE, IMPLICIT_VR_LE]


class WorkflowError(Exception):
    """A worklist query or MPPS request that did not succeed; the message says why.

    ``status`` is the peer's DIMSE status, or None when there was no usable answer at all.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _target(node: Node) -> str:
    return f"{node.name} ({node.ae_title}@{node.host}:{node.port})"


def _status_text(status: int, table: Mapping[int, tuple[str, str]] = GENERAL_STATUS) -> str:
    known = table.get(status)
    if known:
        return f"0x{status:04X} {known[1] or known[0]}"
    return f"0x{status:04X}"


def _describe_status(status: Dataset, table: Mapping[int, tuple[str, str]]) -> str:
    code = int(status.Status)
    text = _status_text(code, table)
    comment = status.get("ErrorComment")
    if comment:
        text += f": {comment}"
    # Which attributes a strict SCP did not like (0105, 0106, 0107, 0116, 0120, 0121).
    for keyword in ("AttributeIdentifierList", "OffendingElement"):
        tags = status.get(keyword)
        if tags:
            tags = tags if isinstance(tags, MultiValue | list) else [tags]
            text += f" ({keyword}: {', '.join(str(t) for t in tags)})"
    return text


# --- character sets --------------------------------------------------------------------------


def _charset_terms(charset: str | Sequence[str] | None) -> list[str]:
    if charset is None:
        return []
    if isinstance(charset, str):
        return charset.split("\\")
    return [str(term) for term in charset]


def _charset_value(terms: list[str]) -> str | list[str]:
    return terms[0] if len(terms) == 1 else terms


def can_encode(charset: str | Sequence[str] | None, values: Iterable[str]) -> bool:
    """Whether every value can be written in ``charset`` (None: the default repertoire)."""
    texts = [v for v in values if v]
    if not charset:
        return all(text.isascii() for text in texts)
    encodings = convert_encodings(_charset_terms(charset))
    with warnings.catch_warnings():
        # pydicom warns and writes "?" for what it cannot encode; here that means "no".
        warnings.simplefilter("error")
        try:
            for text in texts:
                encode_string(text, encodings)
        except (UserWarning, UnicodeError, LookupError, ValueError):
            return False
    return True


def choose_charset(
    values: Iterable[str], preferred: str | Sequence[str] | None = None
) -> str | list[str] | None:
    """The Specific Character Set to declare for ``values``: none for plain ASCII, else the
    preferred one when it can hold them, else Latin-1, else UTF-8."""
    texts = [v for v in values if v]
    if all(text.isascii() for text in texts):
        return None
    for candidate in (preferred, "ISO_IR 100", "ISO_IR 192"):
        if candidate and can_encode(candidate, texts):
            return _charset_value(_charset_terms(candidate))
    return "ISO_IR 192"


def validate_charset(charset: str) -> str:
    terms = _charset_terms(charset)
    # pydicom guesses past unknown or misspelt terms with a warning; refuse them instead.
    if not all(term in python_encoding or (term == "" and n == 0) for n, term in enumerate(terms)):
        raise ConfigError(
            "--charset",
            f"{charset!r} is not a Specific Character Set term (e.g. ISO_IR 100, ISO_IR 192, "
            "\\ISO 2022 IR 87)",
        )
    return charset


def _strings(ds: Dataset) -> Iterator[str]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _strings(item)
        elif elem.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC") and elem.value:
            values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
            yield from (str(v) for v in values)


# --- dates -----------------------------------------------------------------------------------

_DATE_WORDS = {"today": 0, "yesterday": -1, "tomorrow": 1}


def _one_date(text: str, today: date) -> str:
    word = text.strip().lower()
    if word in _DATE_WORDS:
        return (today + timedelta(days=_DATE_WORDS[word])).strftime("%Y%m%d")
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        raise ConfigError(
            "--date",
            f"{text!r} is not a date: use YYYYMMDD, today, yesterday, tomorrow, or a range "
            "FROM-TO (either end may be left open)",
        ) from None
    return text


def date_matching_value(text: str, today: date | None = None) -> str:
    """The DICOM date matching value for ``--date``: a single date or a range (PS3.4 C.2.2.2.5)."""
    today = today or date.today()
    text = text.strip()
    if "-" not in text:
        return _one_date(text, today)
    start, _, end = text.partition("-")
    if not start and not end:
        raise ConfigError("--date", "a range needs at least one end (FROM-, -TO or FROM-TO)")
    first = _one_date(start, today) if start else ""
    last = _one_date(end, today) if end else ""
    if first and last and first > last:
        raise ConfigError("--date", f"the range {text!r} ends before it starts")
    return f"{first}-{last}"


# --- worklist query --------------------------------------------------------------------------


@dataclass
class WorklistQuery:
    """What to ask for; every field left None matches everything."""

    date: str | None = None  # matching value: YYYYMMDD or a range, see date_matching_value()
    modality: str | None = None
    station_ae: str | None = None
    patient_name: str | None = None
    patient_id: str | None = None
    accession_number: str | None = None
    requested_procedure_id: str | None = None
    sps_id: str | None = None
    study_instance_uid: str | None = None
    # The node's character set: used for query values that are not plain ASCII, and assumed
    # for answers that declare none (wlmscpfs, by default, declares none).
    charset: str | None = None


def _code_item() -> Dataset:
    code = Dataset()
    code.CodeValue = ""
    code.CodingSchemeDesignator = ""
    code.CodingSchemeVersion = ""
    code.CodeMeaning = ""
    return code


def build_identifier(query: WorklistQuery) -> Dataset:
    """The C-FIND identifier: the query's matching keys and the return keys a modality uses
    (IHE Scheduled Workflow, PS3.4 K.6.1.2)."""
    ds = Dataset()
    ds.PatientName = query.patient_name or ""
    ds.PatientID = query.patient_id or ""
    ds.IssuerOfPatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.OtherPatientIDs = ""
    ds.PatientWeight = None
    ds.PatientSize = None
    ds.MedicalAlerts = ""
    ds.Allergies = ""
    ds.PregnancyStatus = None
    ds.AdditionalPatientHistory = ""
    ds.AdmissionID = ""
    ds.AccessionNumber = query.accession_number or ""
    ds.ReferringPhysicianName = ""
    ds.RequestingPhysician = ""
    ds.StudyInstanceUID = query.study_instance_uid or ""
    ds.ReferencedStudySequence = []
    ds.RequestedProcedureID = query.requested_procedure_id or ""
    ds.RequestedProcedureDescription = ""
    ds.RequestedProcedureCodeSequence = [_code_item()]
    ds.RequestedProcedurePriority = ""

    step = Dataset()
    step.ScheduledStationAETitle = query.station_ae or ""
    step.ScheduledStationName = ""
    step.ScheduledProcedureStepLocation = ""
    step.ScheduledProcedureStepStartDate = query.date or ""
    step.ScheduledProcedureStepStartTime = ""
    step.Modality = query.modality or ""
    step.ScheduledPerformingPhysicianName = ""
    step.ScheduledProcedureStepDescription = ""
    step.ScheduledProtocolCodeSequence = [_code_item()]
    step.ScheduledProcedureStepID = query.sps_id or ""
    step.ScheduledProcedureStepStatus = ""
    step.CommentsOnTheScheduledProcedureStep = ""
    ds.ScheduledProcedureStepSequence = [step]

    charset = choose_charset(_strings(ds), query.charset)
    if charset:
        ds.SpecificCharacterSet = charset
    return ds


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    return str(value)


def _codes(ds: Dataset, keyword: str) -> list[dict[str, str]]:
    return [
        {
            "code_value": _text(item, "CodeValue"),
            "coding_scheme": _text(item, "CodingSchemeDesignator"),
            "meaning": _text(item, "CodeMeaning"),
        }
        for item in ds.get(keyword) or []
        if _text(item, "CodeValue") or _text(item, "CodeMeaning")
    ]


@dataclass
class WorklistItem:
    """One scheduled procedure step with its requested procedure, patient and visit.

    ``dataset`` is the answer as received (decoded), with its Scheduled Procedure Step
    Sequence cut down to this one step.
    """

    dataset: Dataset

    @property
    def step(self) -> Dataset:
        steps = self.dataset.get("ScheduledProcedureStepSequence") or []
        return steps[0] if steps else Dataset()

    def as_dict(self) -> dict[str, Any]:
        ds, step = self.dataset, self.step
        return {
            "patient_name": _text(ds, "PatientName"),
            "patient_id": _text(ds, "PatientID"),
            "issuer_of_patient_id": _text(ds, "IssuerOfPatientID"),
            "patient_birth_date": _text(ds, "PatientBirthDate"),
            "patient_sex": _text(ds, "PatientSex"),
            "accession_number": _text(ds, "AccessionNumber"),
            "referring_physician_name": _text(ds, "ReferringPhysicianName"),
            "study_instance_uid": _text(ds, "StudyInstanceUID"),
            "requested_procedure_id": _text(ds, "RequestedProcedureID"),
            "requested_procedure_description": _text(ds, "RequestedProcedureDescription"),
            "requested_procedure_codes": _codes(ds, "RequestedProcedureCodeSequence"),
            "requested_procedure_priority": _text(ds, "RequestedProcedurePriority"),
            "scheduled_station_ae_title": _text(step, "ScheduledStationAETitle"),
            "scheduled_station_name": _text(step, "ScheduledStationName"),
            "scheduled_procedure_step_location": _text(step, "ScheduledProcedureStepLocation"),
            "scheduled_procedure_step_start_date": _text(step, "ScheduledProcedureStepStartDate"),
            "scheduled_procedure_step_start_time": _text(step, "ScheduledProcedureStepStartTime"),
            "modality": _text(step, "Modality"),
            "scheduled_performing_physician_name": _text(step, "ScheduledPerformingPhysicianName"),
            "scheduled_procedure_step_description": _text(
                step, "ScheduledProcedureStepDescription"
            ),
            "scheduled_procedure_step_id": _text(step, "ScheduledProcedureStepID"),
            "scheduled_procedure_step_status": _text(step, "ScheduledProcedureStepStatus"),
            "scheduled_protocol_codes": _codes(step, "ScheduledProtocolCodeSequence"),
            "specific_character_set": _charset_terms(ds.get("SpecificCharacterSet")),
        }


def _split_steps(identifier: Dataset) -> list[WorklistItem]:
    """One item per scheduled procedure step: an SCP may put several in one answer."""
    steps = list(identifier.get("ScheduledProcedureStepSequence") or [])
    if len(steps) <= 1:
        return [WorklistItem(identifier)]
    items = []
    for step in steps:
        copy = Dataset()
        for elem in identifier:
            if elem.keyword != "ScheduledProcedureStepSequence":
                copy.add(elem)
        copy.ScheduledProcedureStepSequence = [step]
        items.append(WorklistItem(copy))
    return items


@dataclass
class WorklistResult:
    node: Node
    items: list[WorklistItem] = field(default_factory=list)
    error: str | None = None
    status: int | None = None  # the final status, when one came
    optional_keys_unsupported: bool = False  # some answer was FF01

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node.name,
            "ae_title": self.node.ae_title,
            "host": self.node.host,
            "port": self.node.port,
            "ok": self.ok,
            "status": None if self.status is None else f"0x{self.status:04X}",
            "error": self.error,
            "optional_keys_unsupported": self.optional_keys_unsupported,
            "matches": len(self.items),
            "items": [item.as_dict() for item in self.items],
        }


def _decode(identifier: Dataset, assumed_charset: str | None) -> Dataset:
    if "SpecificCharacterSet" not in identifier and assumed_charset:
        identifier.SpecificCharacterSet = _charset_value(_charset_terms(assumed_charset))
    # Decode every text value now, sequences included, with the answer's own character set:
    # the items are taken apart and copied later, away from the set that says how to read them.
    identifier.decode()
    return identifier


def find_worklist(settings: Settings, node: Node, query: WorklistQuery) -> WorklistResult:
    """Query ``node``'s modality worklist; never raises for network or DIMSE failures."""
    result = WorklistResult(node)
    identifier = build_identifier(query)
    ae = requestor_ae(settings)
    context = build_context(MODALITY_WORKLIST_FIND, _TRANSFER_SYNTAXES)
    assoc, connected = associate(ae, settings, node, [context])
    if not assoc.is_established:
        reason = describe_failed_association(assoc, connected=connected)
        result.error = f"worklist query to {_target(node)}: {reason}"
        return result
    aborted = False
    try:
        for status, answer in assoc.send_c_find(identifier, MODALITY_WORKLIST_FIND):
            if "Status" not in status:
                aborted = True
                result.error = (
                    f"worklist query to {_target(node)}: no answer (DIMSE timeout, or the peer "
                    "aborted the association)"
                )
                break
            code = int(status.Status)
            if code in _PENDING:
                result.optional_keys_unsupported |= code == 0xFF01
                if answer is not None:
                    result.items.extend(_split_steps(_decode(answer, query.charset)))
                continue
            result.status = code
            if code != 0x0000:
                what = "cancelled" if code == _CANCEL else "failed"
                result.error = (
                    f"worklist query to {_target(node)} {what}: "
                    f"{_describe_status(status, MODALITY_WORKLIST_SERVICE_CLASS_STATUS)}"
                )
            break
    finally:
        _close(assoc, aborted)
    result.items.sort(
        key=lambda item: (
            _text(item.step, "ScheduledProcedureStepStartDate"),
            _text(item.step, "ScheduledProcedureStepStartTime"),
        )
    )
    return result


def _close(assoc: Association, aborted: bool) -> None:
    if aborted:
        assoc.abort()
    elif assoc.is_established:
        assoc.release()


# --- table output ----------------------------------------------------------------------------


def _width(text: str) -> int:
    # Kanji and kana take two terminal columns; without this the table's columns drift.
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


WORKLIST_COLUMNS = (
    ("DATE", "scheduled_procedure_step_start_date"),
    ("TIME", "scheduled_procedure_step_start_time"),
    ("MOD", "modality"),
    ("STATION AE", "scheduled_station_ae_title"),
    ("PATIENT NAME", "patient_name"),
    ("PATIENT ID", "patient_id"),
    ("BIRTH DATE", "patient_birth_date"),
    ("SEX", "patient_sex"),
    ("ACCESSION", "accession_number"),
    ("REQ PROC ID", "requested_procedure_id"),
    ("SPS ID", "scheduled_procedure_step_id"),
    ("SPS DESCRIPTION", "scheduled_procedure_step_description"),
)


def worklist_table(result: WorklistResult) -> list[str]:
    rows = [item.as_dict() for item in result.items]
    widths = [
        max([_width(title)] + [_width(row[key]) for row in rows]) for title, key in WORKLIST_COLUMNS
    ]
    lines = [f"worklist of {_target(result.node)}: {len(rows)} scheduled procedure step(s)"]
    if rows:
        lines.append(
            "  ".join(_pad(t, w) for (t, _), w in zip(WORKLIST_COLUMNS, widths, strict=True))
        )
        for row in rows:
            cells = [
                _pad(row[key], w) for (_, key), w in zip(WORKLIST_COLUMNS, widths, strict=True)
            ]
            lines.append("  ".join(cells).rstrip())
    return lines


# --- MPPS ------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now()


def _as_dataset(source: WorklistItem | Dataset | Mapping[str, Any]) -> Dataset:
    if isinstance(source, WorklistItem):
        return source.dataset
    if isinstance(source, Dataset):
        return source
    ds = Dataset()
    for keyword, value in source.items():
        setattr(ds, keyword, value)
    return ds


def _copy_sequence(ds: Dataset, keyword: str) -> list[Dataset]:
    items = []
    for item in ds.get(keyword) or []:
        copy = Dataset()
        for elem in item:
            copy.add(elem)
        items.append(copy)
    return items


def build_n_create(
    source: WorklistItem | Dataset | Mapping[str, Any],
    *,
    station_ae: str,
    pps_id: str | None = None,
    modality: str | None = None,
    started: datetime | None = None,
) -> Dataset:
    """The N-CREATE attribute list (PS3.4 F.7.2.1, IHE Scheduled Workflow) for a step that
    starts now, from a worklist item, or for an unscheduled step from any data set with
    patient and study attributes (an image of the procedure, or keyword/value pairs)."""
    ds = _as_dataset(source)
    steps = ds.get("ScheduledProcedureStepSequence") or []
    step = steps[0] if steps else Dataset()
    scheduled = bool(steps)
    started = started or _now()

    out = Dataset()
    if "SpecificCharacterSet" in ds:
        out.SpecificCharacterSet = ds.SpecificCharacterSet

    # Performed Procedure Step Relationship
    attrs = Dataset()
    attrs.StudyInstanceUID = _text(ds, "StudyInstanceUID") or generate_uid()
    attrs.ReferencedStudySequence = _copy_sequence(ds, "ReferencedStudySequence")
    attrs.AccessionNumber = _text(ds, "AccessionNumber")
    attrs.RequestedProcedureID = _text(ds, "RequestedProcedureID")
    attrs.RequestedProcedureDescription = _text(ds, "RequestedProcedureDescription")
    attrs.ScheduledProcedureStepID = _text(step, "ScheduledProcedureStepID")
    attrs.ScheduledProcedureStepDescription = _text(step, "ScheduledProcedureStepDescription")
    attrs.ScheduledProtocolCodeSequence = _copy_sequence(step, "ScheduledProtocolCodeSequence")
    out.ScheduledStepAttributesSequence = [attrs]
    out.PatientName = ds.get("PatientName") or ""
    out.PatientID = _text(ds, "PatientID")
    if _text(ds, "IssuerOfPatientID"):
        out.IssuerOfPatientID = _text(ds, "IssuerOfPatientID")
    out.PatientBirthDate = _text(ds, "PatientBirthDate")
    out.PatientSex = _text(ds, "PatientSex")
    out.ReferencedPatientSequence = _copy_sequence(ds, "ReferencedPatientSequence")
    out.AdmissionID = _text(ds, "AdmissionID")

    # Performed Procedure Step Information
    out.PerformedProcedureStepID = pps_id or started.strftime("%Y%m%d%H%M%S")
    out.PerformedStationAETitle = station_ae
    out.PerformedStationName = _text(step, "ScheduledStationName") or _text(ds, "StationName")
    out.PerformedLocation = _text(step, "ScheduledProcedureStepLocation")
    out.PerformedProcedureStepStartDate = started.strftime("%Y%m%d")
    out.PerformedProcedureStepStartTime = started.strftime("%H%M%S")
    out.PerformedProcedureStepStatus = IN_PROGRESS
    out.PerformedProcedureStepDescription = (
        _text(step, "ScheduledProcedureStepDescription")
        if scheduled
        else _text(ds, "StudyDescription")
    )
    out.PerformedProcedureTypeDescription = _text(ds, "RequestedProcedureDescription")
    out.ProcedureCodeSequence = _copy_sequence(ds, "RequestedProcedureCodeSequence")
    out.PerformedProcedureStepEndDate = ""
    out.PerformedProcedureStepEndTime = ""

    # Image Acquisition Results
    out.Modality = modality or _text(step, "Modality") or _text(ds, "Modality")
    if not out.Modality:
        raise ValueError("no modality: the worklist item has none, give one")
    # IHE: Study ID is the Requested Procedure ID when there is one.
    out.StudyID = _text(ds, "RequestedProcedureID") or _text(ds, "StudyID")
    out.PerformedProtocolCodeSequence = _copy_sequence(step, "ScheduledProtocolCodeSequence")
    out.PerformedSeriesSequence = []

    charset = out.get("SpecificCharacterSet")
    if not can_encode(charset, _strings(out)):
        # Keyword/value input carries no character set; pick one that holds its text.
        chosen = choose_charset(_strings(out), charset)
        if chosen:
            out.SpecificCharacterSet = chosen
    return out


@dataclass
class PerformedSeries:
    """One item of the Performed Series Sequence (PS3.4 F.7.2.1)."""

    series_instance_uid: str
    protocol_name: str = ""
    series_description: str = ""
    performing_physician_name: str = ""
    operators_name: str = ""
    retrieve_ae_title: str = ""
    images: list[tuple[str, str]] = field(default_factory=list)  # (SOP class, SOP instance)
    non_images: list[tuple[str, str]] = field(default_factory=list)

    @property
    def instances(self) -> int:
        return len(self.images) + len(self.non_images)

    def to_dataset(self) -> Dataset:
        item = Dataset()
        item.PerformingPhysicianName = self.performing_physician_name
        # Protocol Name is Type 1 here, and often empty in images.
        item.ProtocolName = self.protocol_name or self.series_description or "UNSPECIFIED"
        item.OperatorsName = self.operators_name
        item.SeriesInstanceUID = self.series_instance_uid
        item.SeriesDescription = self.series_description
        item.RetrieveAETitle = self.retrieve_ae_title
        item.ReferencedImageSequence = [_reference(*ref) for ref in self.images]
        item.ReferencedNonImageCompositeSOPInstanceSequence = [
            _reference(*ref) for ref in self.non_images
        ]
        return item


def _reference(sop_class: str, sop_instance: str) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = sop_class
    ref.ReferencedSOPInstanceUID = sop_instance
    return ref


def performed_series_from_files(
    paths: Iterable[Path], *, retrieve_ae_title: str = ""
) -> tuple[list[PerformedSeries], list[str], set[str]]:
    """Group the DICOM files under ``paths`` into performed series.

    Returns the series (in order of first appearance), one problem line per file that could
    not be used, and the Study Instance UIDs seen.
    """
    files, problems = collect_files(paths)
    messages = [f"{p.path}: {p.message}" for p in problems]
    series: dict[str, PerformedSeries] = {}
    studies: set[str] = set()
    seen: set[str] = set()
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # not DICOM, damaged, unreadable
            messages.append(f"{path}: not a readable DICOM file ({exc})")
            continue
        sop_class, sop_instance = _text(ds, "SOPClassUID"), _text(ds, "SOPInstanceUID")
        series_uid = _text(ds, "SeriesInstanceUID")
        if not sop_class or not sop_instance or not series_uid:
            messages.append(f"{path}: no SOP Class, SOP Instance or Series Instance UID")
            continue
        if sop_instance in seen:
            continue  # the same instance twice (a copy): reference it once
        seen.add(sop_instance)
        if _text(ds, "StudyInstanceUID"):
            studies.add(_text(ds, "StudyInstanceUID"))
        entry = series.get(series_uid)
        if entry is None:
            entry = series[series_uid] = PerformedSeries(
                series_instance_uid=series_uid,
                protocol_name=_text(ds, "ProtocolName"),
                series_description=_text(ds, "SeriesDescription"),
                performing_physician_name=_text(ds, "PerformingPhysicianName"),
                operators_name=_text(ds, "OperatorsName"),
                retrieve_ae_title=retrieve_ae_title,
            )
        # Images have rows and columns (read before the pixel data); SR, PDF, presentation
        # states, RT structure sets and key object selections do not.
        target = entry.images if "Rows" in ds and "Columns" in ds else entry.non_images
        target.append((sop_class, sop_instance))
    return list(series.values()), messages, studies


def build_n_set(
    status: str,
    performed_series: Sequence[PerformedSeries | Dataset] = (),
    *,
    ended: datetime | None = None,
    discontinuation_reason: str | None = None,
    charset: str | Sequence[str] | None = None,
) -> Dataset:
    """The N-SET modification list (PS3.4 F.7.2.2) that ends, or updates, a step."""
    if status not in PPS_STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(PPS_STATUSES)}")
    if status == COMPLETED and not performed_series:
        # PS3.4 F.7.2.2 (final state): a completed step has at least one performed series.
        raise ValueError("a COMPLETED step needs at least one performed series")
    if discontinuation_reason and status != DISCONTINUED:
        raise ValueError("a discontinuation reason goes only with DISCONTINUED")
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    if status in FINAL_STATUSES:
        ended = ended or _now()
        ds.PerformedProcedureStepEndDate = ended.strftime("%Y%m%d")
        ds.PerformedProcedureStepEndTime = ended.strftime("%H%M%S")
    ds.PerformedSeriesSequence = [
        s.to_dataset() if isinstance(s, PerformedSeries) else s for s in performed_series
    ]
    if discontinuation_reason:
        value, meaning = DISCONTINUATION_REASONS.get(
            discontinuation_reason, ("", discontinuation_reason)
        )
        code = Dataset()
        code.CodeValue = value
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = meaning
        if not value:
            raise ValueError(
                f"unknown discontinuation reason {discontinuation_reason!r}: one of "
                f"{', '.join(DISCONTINUATION_REASONS)}"
            )
        ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = [code]
    chosen = choose_charset(_strings(ds), charset)
    if chosen:
        ds.SpecificCharacterSet = chosen
    return ds


def _mpps_association(settings: Settings, node: Node, what: str) -> Association:
    ae = requestor_ae(settings)
    context = build_context(MPPS_SOP_CLASS, _TRANSFER_SYNTAXES)
    assoc, connected = associate(ae, settings, node, [context])
    if not assoc.is_established:
        reason = describe_failed_association(assoc, connected=connected)
        raise WorkflowError(f"MPPS {what} to {_target(node)}: {reason}")
    return assoc


def _check_response(
    status: Dataset, node: Node, what: str, on_warning: Callable[[str], None] | None
) -> int:
    if "Status" not in status:
        raise WorkflowError(
            f"MPPS {what} to {_target(node)}: no answer (DIMSE timeout, or the peer aborted "
            "the association)"
        )
    code = int(status.Status)
    text = _describe_status(status, GENERAL_STATUS)
    if code == 0x0000:
        return code
    if code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
        # Warnings: the SCP did what was asked but ignored or changed some attribute.
        if on_warning is not None:
            on_warning(f"MPPS {what} to {_target(node)}: warning {text}")
        return code
    raise WorkflowError(f"MPPS {what} refused by {_target(node)}: {text}", code)


def mpps_create(
    settings: Settings,
    node: Node,
    source: WorklistItem | Dataset | Mapping[str, Any],
    *,
    station_ae: str | None = None,
    pps_id: str | None = None,
    modality: str | None = None,
    started: datetime | None = None,
    store: MppsStore | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> str:
    """N-CREATE an IN PROGRESS step on ``node``; returns its SOP Instance UID.

    ``source`` is a worklist item (scheduled), or a data set / keyword mapping with patient
    and study attributes (unscheduled). With ``store`` the step is recorded there once the
    SCP has accepted it. Raises WorkflowError when it was not created.
    """
    attributes = build_n_create(
        source,
        station_ae=station_ae or settings.ae_title,
        pps_id=pps_id,
        modality=modality,
        started=started,
    )
    # We choose the SOP Instance UID (IHE requires it of the modality), so a lost response
    # can be told apart from a step that was never created.
    uid = generate_uid()
    assoc = _mpps_association(settings, node, "N-CREATE")
    aborted = True
    try:
        status, _ = assoc.send_n_create(attributes, MPPS_SOP_CLASS, uid)
        aborted = "Status" not in status
        _check_response(status, node, "N-CREATE", on_warning)
    finally:
        _close(assoc, aborted)
    if store is not None:
        store.add(MppsRecord.created(uid, node.name, attributes))
    return uid


def mpps_set(
    settings: Settings,
    node: Node,
    uid: str,
    status: str,
    performed_series: Sequence[PerformedSeries | Dataset] = (),
    *,
    ended: datetime | None = None,
    discontinuation_reason: str | None = None,
    charset: str | Sequence[str] | None = None,
    store: MppsStore | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> None:
    """N-SET the step ``uid`` on ``node`` to ``status`` with its performed series.

    ``charset`` is the preferred Specific Character Set (the one of the N-CREATE); another is
    declared only when the values need it. Raises WorkflowError when the SCP refused.
    """
    if charset is None and store is not None:
        record = store.get(uid)
        charset = record.specific_character_set if record else None
    modification = build_n_set(
        status,
        performed_series,
        ended=ended,
        discontinuation_reason=discontinuation_reason,
        charset=charset or None,
    )
    assoc = _mpps_association(settings, node, "N-SET")
    aborted = True
    try:
        response, _ = assoc.send_n_set(modification, MPPS_SOP_CLASS, uid)
        aborted = "Status" not in response
        _check_response(response, node, "N-SET", on_warning)
    finally:
        _close(assoc, aborted)
    if store is not None:
        series = [s for s in performed_series if isinstance(s, PerformedSeries)]
        store.update(
            uid,
            status=status,
            updated=_now().isoformat(timespec="seconds"),
            series=len(performed_series),
            instances=sum(s.instances for s in series),
        )


# --- MPPS state ------------------------------------------------------------------------------


@dataclass
class MppsRecord:
    """A step this appliance created, as last acknowledged by the SCP."""

    uid: str
    node: str
    status: str
    pps_id: str
    patient_name: str
    patient_id: str
    accession_number: str
    study_instance_uid: str
    scheduled_procedure_step_id: str
    modality: str
    started: str
    updated: str
    series: int = 0
    instances: int = 0
    specific_character_set: list[str] = field(default_factory=list)

    @classmethod
    def created(cls, uid: str, node: str, attributes: Dataset) -> MppsRecord:
        attrs = (attributes.get("ScheduledStepAttributesSequence") or [Dataset()])[0]
        started = datetime.strptime(
            attributes.PerformedProcedureStepStartDate + attributes.PerformedProcedureStepStartTime,
            "%Y%m%d%H%M%S",
        )
        return cls(
            uid=uid,
            node=node,
            status=IN_PROGRESS,
            pps_id=_text(attributes, "PerformedProcedureStepID"),
            patient_name=_text(attributes, "PatientName"),
            patient_id=_text(attributes, "PatientID"),
            accession_number=_text(attrs, "AccessionNumber"),
            study_instance_uid=_text(attrs, "StudyInstanceUID"),
            scheduled_procedure_step_id=_text(attrs, "ScheduledProcedureStepID"),
            modality=_text(attributes, "Modality"),
            started=started.isoformat(timespec="seconds"),
            updated=_now().isoformat(timespec="seconds"),
            specific_character_set=_charset_terms(attributes.get("SpecificCharacterSet")),
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> MppsRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class MppsStore:
    """The steps we created, in ``mpps.json`` in the data folder (tinydb, atomic writes)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / MPPS_FILE
        self._lock = threading.RLock()
        self._db = TinyDB(str(self.path), storage=AtomicJSONStorage)
        self._table = self._db.table("procedure_steps")

    def __enter__(self) -> MppsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _writer(self) -> Iterator[None]:
        # Two commands may finish two steps at once; never let one write undo the other.
        lock_path = self.data_dir / (MPPS_FILE + ".lock")
        with self._lock, open(lock_path, "a+") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                self._db.clear_cache()
                self._table.clear_cache()
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def add(self, record: MppsRecord) -> None:
        with self._writer():
            self._table.remove(Query().uid == record.uid)
            self._table.insert(asdict(record))

    def update(self, uid: str, **changes: object) -> None:
        with self._writer():
            self._table.update(changes, Query().uid == uid)

    def get(self, uid: str) -> MppsRecord | None:
        with self._lock:
            self._table.clear_cache()
            docs = self._table.search(Query().uid == uid)
        return MppsRecord.from_mapping(docs[0]) if docs else None

    def all(self) -> list[MppsRecord]:
        with self._lock:
            self._table.clear_cache()
            records = [MppsRecord.from_mapping(doc) for doc in self._table.all()]
        return sorted(records, key=lambda r: (r.started, r.uid))
