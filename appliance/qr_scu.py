"""Query/Retrieve SCU: we ask a remote node (a PACS) with C-FIND, and fetch with C-MOVE or C-GET.

C-MOVE asks the node to send the instances to our own AE title, so the daemon (which owns the
archive and listens for C-STOREs) must be running and the node must know our AE title, host and
port as a move destination. C-GET needs neither: the node sends the instances back on our own
association, and this process stores them into the archive itself. The daemon is meant to be the
archive's only writer; until the console's control API can ask it to do a C-GET, this process
opens the archive next to it. That is safe: files are written under a temporary name and
renamed, and the SQLite index is in WAL mode, which serialises writers across processes.

Before a retrieve we list the instances it should bring with a hierarchical C-FIND (series, then
images). That list is what lets us report every instance (received, failed, or missing) rather
than trusting the node's counters, and, for C-GET, tells us which storage SOP classes to propose.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from pydicom.valuerep import PersonName
from pynetdicom import build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import (
    GENERAL_STATUS,
    QR_FIND_SERVICE_CLASS_STATUS,
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
)

from appliance.archive import STATUS_OUT_OF_RESOURCES, Archive, StoreRefused
from appliance.config import RETRIEVE_METHODS, Node, Settings
from appliance.dicom_classes import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from appliance.network import error_status
from appliance.scu import (
    FAILURE,
    MAX_CONTEXTS_PER_ASSOCIATION,
    SUCCESS,
    WARNING,
    associate,
    describe_failed_association,
    requestor_ae,
)

LEVELS = ("patient", "study", "series", "image")
MODELS = ("patient", "study")
METHODS = RETRIEVE_METHODS

_MODEL_UIDS: dict[str, dict[str, str]] = {
    "patient": {
        "find": PatientRootQueryRetrieveInformationModelFind,
        "move": PatientRootQueryRetrieveInformationModelMove,
        "get": PatientRootQueryRetrieveInformationModelGet,
    },
    "study": {
        "find": StudyRootQueryRetrieveInformationModelFind,
        "move": StudyRootQueryRetrieveInformationModelMove,
        "get": StudyRootQueryRetrieveInformationModelGet,
    },
}

# The unique key of each level (PS3.4 C.6.1.1 and C.6.2.1).
UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
_LEVEL_ORDER = ("PATIENT", "STUDY", "SERIES", "IMAGE")

# Return keys a bare query asks for, so its table has useful columns. All are Required or
# Optional keys of PS3.4 C.6; an SCP that does not support an optional one leaves it empty.
DEFAULT_KEYS: dict[str, tuple[str, ...]] = {
    "patient": (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
    ),
    "study": (
        "StudyDate",
        "StudyTime",
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "ModalitiesInStudy",
        "StudyDescription",
        "NumberOfStudyRelatedInstances",
        "StudyInstanceUID",
    ),
    "series": (
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
        "SeriesInstanceUID",
    ),
    "image": ("InstanceNumber", "SOPClassUID", "SOPInstanceUID"),
}

# Never columns of the table: the query level is the command's own, the character set is how
# the answer is encoded.
_NOT_COLUMNS = {Tag("QueryRetrieveLevel"), Tag("SpecificCharacterSet")}

# Unicode in UTF-8 (PS3.3 C.12.1.1.2): any Person Name or text can be sent in it.
UTF8_CHARSET = "ISO_IR 192"

# The identifier of a Q/R request: uncompressed only (PS3.4 C.6: the SCP chooses).
_QUERY_SYNTAXES = [EXPLICIT_VR_LE, IMPLICIT_VR_LE]

# PS3.7 C.4.1.1.4 / C.4.2.1.4 / C.4.3.1.4
STATUS_PENDING = (0xFF00, 0xFF01)
STATUS_CANCEL = 0xFE00

# Storage classes proposed for a C-GET when the node would not list what it holds: the common
# non-retired image, structured report, presentation state and RT classes, most used first.
COMMON_GET_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    "1.2.840.10008.5.1.4.1.1.20",  # NM
    "1.2.840.10008.5.1.4.1.1.12.1",  # XA
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX, For Presentation
    "1.2.840.10008.5.1.4.1.1.1.2",  # MG, For Presentation
    "1.2.840.10008.5.1.4.1.1.6.1",  # US
    "1.2.840.10008.5.1.4.1.1.3.1",  # US Multi-frame
    "1.2.840.10008.5.1.4.1.1.12.2",  # RF
    "1.2.840.10008.5.1.4.1.1.13.1.1",  # 3D XA
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
    "1.2.840.10008.5.1.4.1.1.11.1",  # GSPS
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
    "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.66.5",  # Surface Segmentation
    "1.2.840.10008.5.1.4.1.1.481.1",  # RT Image
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan
)


class QueryError(ValueError):
    """The query or retrieve request cannot be built (a usage error, not the node's answer)."""


# --- keys and identifiers --------------------------------------------------------------------

_TAG_TEXT = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")
_INT_VRS = {"US", "SS", "UL", "SL", "UV", "SV"}
_FLOAT_VRS = {"FL", "FD"}
_UNSUPPORTED_VRS = {"SQ", "AT", "OB", "OD", "OF", "OL", "OV", "OW", "UN"}


@dataclass(frozen=True)
class QueryKey:
    """One ``--key``: a matching key when it has a value, else a return key."""

    tag: BaseTag
    value: str | None = None

    @property
    def label(self) -> str:
        return column_label(self.tag)


def column_label(tag: BaseTag) -> str:
    return keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"


def resolve_tag(name: str) -> BaseTag:
    """A keyword (``PatientName``) or a tag (``0010,0010``, ``(0010,0010)``, ``00100010``)."""
    text = name.strip()
    match = _TAG_TEXT.match(text)
    if match:
        tag = Tag(int(match.group(1), 16), int(match.group(2), 16))
    else:
        number = tag_for_keyword(text)
        if number is None:
            raise QueryError(f"{text!r} is neither a DICOM keyword nor a tag like 0010,0010")
        tag = Tag(number)
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise QueryError(f"{column_label(tag)} is not in the DICOM data dictionary") from None
    if tag.group in (0x0000, 0x0002):
        raise QueryError(f"{column_label(tag)} is a command or file meta element, not a key")
    if vr in _UNSUPPORTED_VRS or " or " in vr:
        raise QueryError(f"{column_label(tag)} (VR {vr}) cannot be used as a query key")
    if tag == Tag("QueryRetrieveLevel"):
        raise QueryError("QueryRetrieveLevel is set by --level")
    return tag


def parse_key(text: str) -> QueryKey:
    """``KEY=VALUE`` (matching key) or ``KEY`` (return key); KEY is a keyword or a tag."""
    name, has_value, value = text.partition("=")
    if not name.strip():
        raise QueryError(f"{text!r}: no keyword or tag before '='")
    tag = resolve_tag(name)
    return QueryKey(tag, value if has_value and value != "" else None)


def _element_value(tag: BaseTag, text: str | None) -> object:
    if text is None:
        return None
    vr = dictionary_VR(tag)
    try:
        if vr in _INT_VRS:
            return [int(v) for v in text.split("\\")] if "\\" in text else int(text)
        if vr in _FLOAT_VRS:
            return [float(v) for v in text.split("\\")] if "\\" in text else float(text)
    except ValueError:
        raise QueryError(f"{column_label(tag)}={text!r}: VR {vr} needs a number") from None
    return text


def check_level(level: str, model: str) -> str:
    """The Query/Retrieve Level value for ``level`` in ``model``; refuses impossible pairs."""
    if model not in MODELS:
        raise QueryError(f"unknown information model {model!r}: one of {', '.join(MODELS)}")
    if level not in LEVELS:
        raise QueryError(f"unknown level {level!r}: one of {', '.join(LEVELS)}")
    if model == "study" and level == "patient":
        raise QueryError("the study root model has no patient level: use --model patient")
    return level.upper()


def build_identifier(
    level: str, model: str, keys: Sequence[QueryKey], *, default_keys: bool = True
) -> tuple[Dataset, list[BaseTag]]:
    """The C-FIND identifier, and the columns to show (the requested keys, in order)."""
    level_value = check_level(level, model)
    columns: list[BaseTag] = []
    if default_keys:
        columns.extend(Tag(keyword) for keyword in DEFAULT_KEYS[level])
    for key in keys:
        if key.tag not in columns and key.tag not in _NOT_COLUMNS:
            columns.append(key.tag)
    if not columns:
        raise QueryError("no keys to ask for: give --key, or leave the default keys on")
    ds = Dataset()
    for tag in columns:
        ds.add(DataElement(tag, dictionary_VR(tag), None))
    non_ascii = False
    for key in keys:
        if key.value is None:
            if key.tag not in ds:
                ds.add(DataElement(key.tag, dictionary_VR(key.tag), None))
            continue
        non_ascii = non_ascii or not key.value.isascii()
        ds.add(DataElement(key.tag, dictionary_VR(key.tag), _element_value(key.tag, key.value)))
    if non_ascii and "SpecificCharacterSet" not in ds:
        # Without it the SCP must read the bytes as ISO 646 (PS3.5 6.1.2.5.1).
        ds.SpecificCharacterSet = UTF8_CHARSET
    ds.QueryRetrieveLevel = level_value
    return ds, columns


# --- statuses --------------------------------------------------------------------------------


def status_text(status: int, service: str) -> str:
    table = {
        "find": QR_FIND_SERVICE_CLASS_STATUS,
        "move": QR_MOVE_SERVICE_CLASS_STATUS,
        "get": QR_GET_SERVICE_CLASS_STATUS,
    }[service]
    known = table.get(status) or GENERAL_STATUS.get(status)
    if known:
        return str(known[1] or known[0])
    if 0xA000 <= status <= 0xAFFF or 0xC000 <= status <= 0xCFFF:
        return "Failure"
    if 0xB000 <= status <= 0xBFFF:
        return "Warning"
    return "Unknown status"


def describe_status(status: Dataset, service: str) -> str:
    code = int(status.Status)
    text = f"0x{code:04X} {status_text(code, service)}"
    comment = status.get("ErrorComment")
    if comment:
        text += f": {comment}"
    offending = status.get("OffendingElement")
    if offending:
        tags = offending if isinstance(offending, list | MultiValue) else [offending]
        text += f" (offending element {', '.join(column_label(Tag(t)) for t in tags)})"
    return text


def _final_outcome(code: int) -> str:
    if code == 0x0000:
        return SUCCESS
    if 0xB000 <= code <= 0xBFFF or code == 0x0001:
        return WARNING
    return FAILURE


def _no_response(assoc: Association, since: float) -> str:
    """Why a request got no (further) answer: pynetdicom reports a DIMSE timeout and an abort
    alike, the time waited tells them apart."""
    timeout = assoc.dimse_timeout
    if timeout is not None and time.monotonic() - since >= timeout - 0.5:
        return f"no response within the DIMSE timeout ({timeout:g} s)"
    return (
        "the node aborted the association or closed the connection instead of answering "
        "(some nodes do so for a calling AE title they do not know)"
    )


# pydicom re-encodes every decoded Person Name to keep its original bytes and warns when a
# multi-byte name (ISO 2022 IR 87, for one) does not round-trip; the decoded text is right.
_PN_REENCODE_WARNING = "Failed to encode value with encodings"


# --- C-FIND ----------------------------------------------------------------------------------


@dataclass
class FindOutcome:
    matches: list[Dataset] = field(default_factory=list)
    status: int | None = None
    message: str = ""
    cancelled: bool = False  # we sent C-CANCEL after the limit
    optional_keys_unsupported: bool = False  # a pending FF01 came

    @property
    def outcome(self) -> str:
        if self.status is None:
            return FAILURE
        if self.status == STATUS_CANCEL:
            return SUCCESS if self.cancelled else FAILURE
        return _final_outcome(self.status)


def _run_find(
    assoc: Association,
    model_uid: str,
    identifier: Dataset,
    *,
    limit: int | None = None,
    msg_id: int = 1,
) -> FindOutcome:
    result = FindOutcome()
    try:
        responses = assoc.send_c_find(identifier, model_uid, msg_id=msg_id)
    except (ValueError, RuntimeError) as exc:
        result.message = f"C-FIND not sent: {exc}"
        return result
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PN_REENCODE_WARNING)
        _collect_find_responses(assoc, responses, result, model_uid, limit, msg_id)
    return result


def _collect_find_responses(
    assoc: Association,
    responses: Iterator[tuple[Dataset, Dataset | None]],
    result: FindOutcome,
    model_uid: str,
    limit: int | None,
    msg_id: int,
) -> None:
    since = time.monotonic()
    for status, answer in responses:
        if "Status" not in status:
            result.message = _no_response(assoc, since)
            return
        since = time.monotonic()
        code = int(status.Status)
        if code in STATUS_PENDING:
            if code == 0xFF01:
                result.optional_keys_unsupported = True
            if result.cancelled:
                continue  # answers already on their way when the C-CANCEL arrived
            if answer is not None:
                for _element in answer:
                    pass  # decode every value now, in its own character set
                result.matches.append(answer)
            if limit is not None and len(result.matches) >= limit:
                # PS3.7 9.3.2.3: the SCP then ends with FE00 (or 0000 if it had finished).
                assoc.send_c_cancel(msg_id, query_model=model_uid)
                result.cancelled = True
            continue
        result.status = code
        if code == STATUS_CANCEL and result.cancelled:
            result.message = f"cancelled after {len(result.matches)} matches, as asked"
        else:
            result.message = describe_status(status, "find")
    if result.status is None and not result.message:
        result.message = _no_response(assoc, since)


@dataclass
class QueryResult:
    node: Node
    level: str
    model: str
    columns: list[BaseTag]
    matches: list[Dataset] = field(default_factory=list)
    status: int | None = None
    message: str = ""
    cancelled: bool = False
    notes: list[str] = field(default_factory=list)
    outcome: str = FAILURE

    @property
    def ok(self) -> bool:
        return self.outcome != FAILURE

    def rows(self) -> list[dict[str, object]]:
        """The matches for JSON: one object per match, keyed by keyword, requested keys only."""
        return [
            {column_label(tag): json_value(match, tag) for tag in self.columns}
            for match in self.matches
        ]

    def table(self) -> str:
        headers = [column_label(tag) for tag in self.columns]
        cells = [[display_value(match, tag) for tag in self.columns] for match in self.matches]
        widths = [
            max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)
        ]
        lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
        for row in cells:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        return "\n".join(lines)

    def summary(self) -> str:
        target = f"{self.node.name} ({self.node.ae_title}@{self.node.host}:{self.node.port})"
        count = len(self.matches)
        noun = "match" if count == 1 else "matches"
        if self.outcome == FAILURE:
            return f"query {target}: FAILED after {count} {noun}: {self.message}"
        return f"query {target}: {count} {noun} ({self.message})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node.name,
            "level": self.level,
            "model": self.model,
            "status": None if self.status is None else f"0x{self.status:04X}",
            "outcome": self.outcome,
            "message": self.message,
            "cancelled": self.cancelled,
            "matches": self.rows(),
        }


def _value_of(match: Dataset, tag: BaseTag) -> object:
    if tag not in match:
        return None
    try:
        # Reading the value decodes it with the answer's own Specific Character Set.
        return match[tag].value
    except Exception:  # an undecodable value must not lose the other columns
        return None


def display_value(match: Dataset, tag: BaseTag) -> str:
    value = _value_of(match, tag)
    if value is None or value == "":
        return ""
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _json_scalar(value: object) -> object:
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)  # IS values are an int subclass
    if isinstance(value, float):
        return float(value)  # DS values are a float subclass
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def json_value(match: Dataset, tag: BaseTag) -> object:
    value = _value_of(match, tag)
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list):
        return [_json_scalar(v) for v in value]
    return _json_scalar(value)


def query(
    settings: Settings,
    node: Node,
    *,
    level: str = "study",
    keys: Sequence[QueryKey] = (),
    model: str = "study",
    limit: int | None = None,
    default_keys: bool = True,
) -> QueryResult:
    """C-FIND on a new association; raises QueryError for a request that cannot be built."""
    if limit is not None and limit < 1:
        raise QueryError("--limit must be at least 1")
    identifier, columns = build_identifier(level, model, keys, default_keys=default_keys)
    result = QueryResult(node, level, model, columns)
    model_uid = _MODEL_UIDS[model]["find"]
    ae = requestor_ae(settings)
    assoc, connected = associate(
        ae, settings, node, [build_context(model_uid, list(_QUERY_SYNTAXES))]
    )
    if not assoc.is_established:
        result.message = describe_failed_association(assoc, connected=connected)
        return result
    try:
        found = _run_find(assoc, model_uid, identifier, limit=limit)
    finally:
        _close(assoc)
    result.matches = found.matches
    result.status = found.status
    result.message = found.message
    result.cancelled = found.cancelled
    result.outcome = found.outcome
    if found.cancelled and found.status is not None:
        final = f"0x{found.status:04X}"
        noun = "match" if limit == 1 else "matches"
        result.message = f"stopped after {limit} {noun}: C-CANCEL sent, final status {final}"
    if found.optional_keys_unsupported:
        result.notes.append("the node does not support some of the optional keys (0xFF01)")
    missing = missing_parent_keys(level, model, keys)
    if result.outcome == FAILURE and found.status is not None and missing:
        result.notes.append(
            f"a {level}-level query to a node without relational queries needs a single "
            f"value for {', '.join(missing)} (PS3.4 C.4.1.2.2.1), e.g. "
            f"--key {missing[0]}=..."
        )
    return result


def missing_parent_keys(level: str, model: str, keys: Sequence[QueryKey]) -> list[str]:
    """Unique keys of the levels above ``level`` that a hierarchical query needs but lacks."""
    needed = []
    if model == "patient" and level != "patient":
        needed.append("PatientID")
    if level in ("series", "image"):
        needed.append("StudyInstanceUID")
    if level == "image":
        needed.append("SeriesInstanceUID")
    given = {key.tag for key in keys if key.value}
    return [keyword for keyword in needed if Tag(keyword) not in given]


def _close(assoc: Association) -> None:
    if assoc.is_established:
        assoc.release()
    if not assoc.is_released and not assoc.is_aborted:
        assoc.abort()


# --- retrieve --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrieveRequest:
    """What to fetch: one or more UIDs (IDs) at ``level``, below fixed higher-level keys."""

    model: str
    level: str  # PATIENT, STUDY, SERIES or IMAGE
    values: tuple[str, ...]
    parents: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return UNIQUE_KEYS[self.level]

    def identifier(self, value: str) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = self.level
        for keyword, parent in self.parents:
            setattr(ds, keyword, parent)
        setattr(ds, self.key, value)
        return ds

    def describe(self, value: str) -> str:
        return f"{self.level.lower()} {value}"


def _single(option: str, values: Sequence[str], needed_for: str) -> str:
    if len(values) != 1:
        raise QueryError(f"{needed_for} needs exactly one {option} (the one it belongs to)")
    return values[0]


def plan_retrieve(
    *,
    model: str = "study",
    patients: Sequence[str] = (),
    studies: Sequence[str] = (),
    series: Sequence[str] = (),
    images: Sequence[str] = (),
) -> RetrieveRequest:
    """The retrieve level is the deepest one given; the levels above give one value each, as the
    hierarchical model requires (PS3.4 C.4.2.2.1: unique keys of every level above)."""
    if model not in MODELS:
        raise QueryError(f"unknown information model {model!r}: one of {', '.join(MODELS)}")
    if patients and model != "patient":
        raise QueryError("--patient needs --model patient")
    parents: list[tuple[str, str]] = []
    if images:
        level, values = "IMAGE", images
        deeper = "--image"
    elif series:
        level, values = "SERIES", series
        deeper = "--series"
    elif studies:
        level, values = "STUDY", studies
        deeper = "--study"
    elif patients:
        level, values = "PATIENT", patients
        deeper = "--patient"
    else:
        raise QueryError("say what to retrieve: --study UID (or --series / --image with it)")
    if model == "patient" and level != "PATIENT":
        parents.append(("PatientID", _single("--patient ID", patients, f"{deeper} (patient root)")))
    if level in ("SERIES", "IMAGE"):
        parents.append(("StudyInstanceUID", _single("--study UID", studies, deeper)))
    if level == "IMAGE":
        parents.append(("SeriesInstanceUID", _single("--series UID", series, deeper)))
    for value in values:
        if not value.strip():
            raise QueryError(f"{deeper} needs a value")
    return RetrieveRequest(model, level, tuple(dict.fromkeys(values)), tuple(parents))


@dataclass(frozen=True)
class ExpectedInstance:
    sop_class_uid: str
    sop_instance_uid: str


class _ListingFailed(Exception):
    """The hierarchical C-FIND before a retrieve did not work; the message says why."""


def _list_instances(
    assoc: Association, request: RetrieveRequest, model_uid: str
) -> list[ExpectedInstance]:
    """Every instance the retrieve covers, by C-FIND level by level down to IMAGE."""
    found: dict[str, ExpectedInstance] = {}
    msg_id = 0

    def find(level: str, fixed: dict[str, str], extra: dict[str, str]) -> list[Dataset]:
        nonlocal msg_id
        msg_id = msg_id % 0xFFFF + 1
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        for keyword, value in {**fixed, **extra}.items():
            setattr(ds, keyword, value)
        outcome = _run_find(assoc, model_uid, ds, msg_id=msg_id)
        if outcome.outcome == FAILURE:
            raise _ListingFailed(f"{level.lower()}-level C-FIND: {outcome.message}")
        return outcome.matches

    def walk(level: str, fixed: dict[str, str]) -> None:
        if level == "IMAGE":
            answers = find("IMAGE", fixed, {"SOPClassUID": ""})
        else:
            child = _LEVEL_ORDER[_LEVEL_ORDER.index(level) + 1]
            key = UNIQUE_KEYS[child]
            extra = {key: ""}
            if child == "IMAGE":
                extra["SOPClassUID"] = ""
            answers = find(child, fixed, extra)
            if child != "IMAGE":
                for answer in answers:
                    uid = str(answer.get(key, "") or "")
                    if uid:
                        walk(child, {**fixed, key: uid})
                return
        for answer in answers:
            instance = str(answer.get("SOPInstanceUID", "") or "")
            sop_class = str(answer.get("SOPClassUID", "") or "")
            if instance:
                found.setdefault(instance, ExpectedInstance(sop_class, instance))

    for value in request.values:
        walk(request.level, {**dict(request.parents), request.key: value})
    return list(found.values())


# Per-instance outcomes of a retrieve.
RECEIVED = "received"
FAILED = "failed"
MISSING = "missing"


@dataclass
class RetrievedInstance:
    sop_instance_uid: str
    sop_class_uid: str
    outcome: str  # received, failed, missing
    message: str = ""
    status: int | None = None  # our C-STORE answer (C-GET only)

    def line(self) -> str:
        label = {RECEIVED: "received", FAILED: "FAILED", MISSING: "MISSING"}[self.outcome]
        status = "-" if self.status is None else f"0x{self.status:04X}"
        text = f"{label:<8}  {status:<6}  {self.sop_instance_uid}"
        return f"{text}: {self.message}" if self.message else text

    def as_dict(self) -> dict[str, Any]:
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "sop_class_uid": self.sop_class_uid or None,
            "outcome": self.outcome,
            "status": None if self.status is None else f"0x{self.status:04X}",
            "message": self.message,
        }


@dataclass
class SubOperations:
    remaining: int | None = None
    completed: int = 0
    failed: int = 0
    warning: int = 0

    @classmethod
    def from_status(cls, status: Dataset) -> SubOperations:
        def number(keyword: str) -> int:
            value = status.get(keyword)
            return int(value) if value is not None else 0

        remaining = status.get("NumberOfRemainingSuboperations")
        return cls(
            remaining=int(remaining) if remaining is not None else None,
            completed=number("NumberOfCompletedSuboperations"),
            failed=number("NumberOfFailedSuboperations"),
            warning=number("NumberOfWarningSuboperations"),
        )

    def describe(self) -> str:
        remaining = "?" if self.remaining is None else str(self.remaining)
        return (
            f"{remaining} remaining, {self.completed} completed, {self.failed} failed, "
            f"{self.warning} warning"
        )


@dataclass
class RequestResult:
    """The final answer to one C-MOVE or C-GET request (one UID at the retrieve level)."""

    target: str
    status: int | None = None
    message: str = ""
    counts: SubOperations = field(default_factory=SubOperations)
    failed_uids: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        if self.status is None:
            return FAILURE
        return _final_outcome(self.status)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "status": None if self.status is None else f"0x{self.status:04X}",
            "message": self.message,
            "completed": self.counts.completed,
            "failed": self.counts.failed,
            "warning": self.counts.warning,
            "failed_sop_instance_uids": self.failed_uids,
        }


@dataclass(frozen=True)
class Progress:
    target: str
    counts: SubOperations

    def line(self) -> str:
        return f"  {self.target}: {self.counts.describe()}"


@dataclass
class RetrieveReport:
    node: Node
    method: str
    request: RetrieveRequest
    destination: str = ""  # our AE title, for C-MOVE
    expected: list[ExpectedInstance] | None = None
    listing_problem: str = ""
    requests: list[RequestResult] = field(default_factory=list)
    instances: list[RetrievedInstance] = field(default_factory=list)
    error: str = ""  # the retrieve could not be done at all

    def _with(self, outcome: str) -> list[RetrievedInstance]:
        return [i for i in self.instances if i.outcome == outcome]

    @property
    def received(self) -> list[RetrievedInstance]:
        return self._with(RECEIVED)

    @property
    def failed(self) -> list[RetrievedInstance]:
        return self._with(FAILED)

    @property
    def missing(self) -> list[RetrievedInstance]:
        return self._with(MISSING)

    @property
    def counts(self) -> SubOperations:
        total = SubOperations(remaining=0)
        for result in self.requests:
            total.completed += result.counts.completed
            total.failed += result.counts.failed
            total.warning += result.counts.warning
        return total

    @property
    def outcome(self) -> str:
        if self.error or not self.requests:
            return FAILURE
        if any(r.outcome == FAILURE for r in self.requests):
            return FAILURE
        counts = self.counts
        if self.failed or self.missing or counts.failed:
            return FAILURE
        if not self.received and not counts.completed and not counts.warning:
            return FAILURE  # the node had nothing to send
        if counts.warning or any(r.outcome == WARNING for r in self.requests):
            return WARNING
        return SUCCESS

    def header(self) -> str:
        return retrieve_header(self.node, self.method, self.destination)

    def problem_lines(self) -> list[str]:
        return [i.line() for i in self.instances if i.outcome != RECEIVED]

    def summary(self) -> str:
        if self.error:
            return f"FAILED: {self.error}"
        counts = self.counts
        if self.expected is not None:
            head = (
                f"{len(self.received)} of {len(self.expected)} instances received, "
                f"{len(self.failed)} failed, {len(self.missing)} missing"
            )
        elif self.method == "get":
            head = f"{len(self.received)} instances received, {len(self.failed)} failed"
        else:
            head = "instances not checked in the archive (no listing)"
        node = (
            f"node: {counts.completed} completed, {counts.failed} failed, {counts.warning} warning"
        )
        if len(self.requests) == 1:
            only = self.requests[0]
            final = only.message if only.status is None else f"final status {only.message}"
        else:
            odd = [r for r in self.requests if r.outcome != SUCCESS]
            final = "; ".join(f"{r.target}: {r.message}" for r in odd)
            final = final or f"{len(self.requests)} requests, all 0x0000 Success"
        text = f"{head}; {node}; {final}"
        if self.outcome == FAILURE:
            text = "FAILED: " + text
            if not self.expected and not counts.completed and not counts.failed:
                if self.requests and all(r.status is not None for r in self.requests):
                    text += "; the node had no instances for this request"
        return text

    def notes(self) -> list[str]:
        notes = []
        if self.listing_problem:
            notes.append(
                f"could not list the instances first ({self.listing_problem}); "
                "results are the node's counters only"
            )
        if self.method == "move" and (self.missing or self.counts.failed):
            notes.append(
                f"instances sent to {self.destination} did not arrive: the daemon "
                "(`dicom-appliance serve`) must be running with this data folder, and "
                f"{self.node.name} must have {self.destination} as a move destination at our "
                "host and port"
            )
        return notes

    def as_dict(self) -> dict[str, Any]:
        counts = self.counts
        return {
            "node": self.node.name,
            "method": self.method,
            "destination": self.destination or None,
            "level": self.request.level,
            "uids": list(self.request.values),
            "outcome": self.outcome,
            "error": self.error or None,
            "summary": {
                "expected": None if self.expected is None else len(self.expected),
                "received": len(self.received),
                "failed": len(self.failed),
                "missing": len(self.missing),
                "node_completed": counts.completed,
                "node_failed": counts.failed,
                "node_warning": counts.warning,
            },
            "notes": self.notes(),
            "requests": [r.as_dict() for r in self.requests],
            "instances": [i.as_dict() for i in self.instances],
        }


def retrieve_header(node: Node, method: str, our_ae_title: str) -> str:
    how = f"C-MOVE to {our_ae_title}" if method == "move" else "C-GET"
    return f"retrieve from {node.name} ({node.ae_title}@{node.host}:{node.port}) by {how}"


def get_contexts(
    model_uid: str, sop_classes: Sequence[str], transfer_syntaxes: Sequence[str]
) -> tuple[list[PresentationContext], list[str]]:
    """The C-GET association's contexts, and the storage classes we take the SCP role for.

    Each class gets one context with the uncompressed syntaxes; the rest of the 128 contexts go
    to one context per compressed syntax per class (a compressed instance is best received as
    it is stored), in the order of our transfer syntax preference.
    """
    contexts = [build_context(model_uid, list(_QUERY_SYNTAXES))]
    budget = MAX_CONTEXTS_PER_ASSOCIATION - len(contexts)
    classes = list(dict.fromkeys(sop_classes))[:budget]
    plain = [ts for ts in transfer_syntaxes if not UID(ts).is_compressed]
    compressed = [ts for ts in transfer_syntaxes if UID(ts).is_compressed]
    for sop_class in classes:
        contexts.append(build_context(sop_class, plain or list(_QUERY_SYNTAXES)))
    for ts in compressed:
        for sop_class in classes:
            if len(contexts) >= MAX_CONTEXTS_PER_ASSOCIATION:
                return contexts, classes
            contexts.append(build_context(sop_class, [ts]))
    return contexts, classes


def _iterate(
    assoc: Association,
    responses: Iterator[tuple[Dataset, Dataset | None]],
    target: str,
    service: str,
    progress: Callable[[Progress], None] | None,
) -> RequestResult:
    result = RequestResult(target)
    since = time.monotonic()
    for status, identifier in responses:
        if "Status" not in status:
            result.message = _no_response(assoc, since)
            return result
        since = time.monotonic()
        code = int(status.Status)
        if code in STATUS_PENDING:
            result.counts = SubOperations.from_status(status)
            if progress:
                progress(Progress(target, result.counts))
            continue
        final = SubOperations.from_status(status)
        # Some SCPs leave the counters out of the final response; keep the last pending ones.
        if any(
            k in status for k in ("NumberOfCompletedSuboperations", "NumberOfFailedSuboperations")
        ):
            result.counts = final
        result.status = code
        result.message = describe_status(status, service)
        if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
            value = identifier.FailedSOPInstanceUIDList
            uids = value if isinstance(value, MultiValue | list) else [value]
            result.failed_uids = [str(uid) for uid in uids if str(uid)]
    if result.status is None and not result.message:
        result.message = _no_response(assoc, since)
    return result


class _GetStore:
    """Stores the C-STOREs of our C-GET into the archive, remembering each answer."""

    def __init__(self, archive: Archive, source_ae: str) -> None:
        self.archive = archive
        self.source_ae = source_ae
        self.results: dict[str, RetrievedInstance] = {}

    def handle(self, event: evt.Event) -> int | Dataset:
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        sop_instance = str(request.AffectedSOPInstanceUID)
        try:
            self.archive.store_encoded(
                event.encoded_dataset(include_meta=False),
                sop_class_uid=sop_class,
                sop_instance_uid=sop_instance,
                transfer_syntax=str(event.context.transfer_syntax),
                source_ae=self.source_ae,
            )
        except StoreRefused as exc:
            self.results[sop_instance] = RetrievedInstance(
                sop_instance, sop_class, FAILED, f"not stored: {exc.comment}", exc.status
            )
            return error_status(exc.status, exc.comment)
        except Exception as exc:  # the answer must still go back, or the node waits
            comment = f"internal error: {exc}"
            self.results[sop_instance] = RetrievedInstance(
                sop_instance, sop_class, FAILED, comment, STATUS_OUT_OF_RESOURCES
            )
            return error_status(STATUS_OUT_OF_RESOURCES, comment)
        self.results[sop_instance] = RetrievedInstance(sop_instance, sop_class, RECEIVED, "", 0)
        return 0x0000


def retrieve(
    settings: Settings,
    node: Node,
    request: RetrieveRequest,
    data_dir: Path,
    *,
    method: str | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> RetrieveReport:
    """C-MOVE to our own AE title, or C-GET into the archive in ``data_dir``."""
    method = method or node.retrieve_method
    if method not in METHODS:
        raise QueryError(f"unknown retrieve method {method!r}: one of {', '.join(METHODS)}")
    report = RetrieveReport(node, method, request)
    if method == "move":
        report.destination = settings.ae_title
    models = _MODEL_UIDS[request.model]
    ae = requestor_ae(settings)

    # 1. List what should come, on its own association (a C-GET association's contexts depend
    # on it). A node that refuses the connection is not tried twice.
    assoc, connected = associate(
        ae, settings, node, [build_context(models["find"], list(_QUERY_SYNTAXES))]
    )
    if not assoc.is_established:
        reason = describe_failed_association(assoc, connected=connected)
        if not connected:
            report.error = reason
            return report
        report.listing_problem = reason
    else:
        try:
            report.expected = _list_instances(assoc, request, models["find"])
        except _ListingFailed as exc:
            report.listing_problem = str(exc)
        finally:
            _close(assoc)

    # 2. The retrieve itself, one request per UID, one after another on one association.
    archive = Archive(
        data_dir,
        duplicate_policy=settings.duplicate_policy,
        disk_reserve_bytes=settings.disk_reserve_mb * 2**20,
    )
    try:
        store = _GetStore(archive, node.ae_title)
        if method == "get":
            classes = [e.sop_class_uid for e in report.expected or [] if e.sop_class_uid]
            contexts, roles = get_contexts(
                models["get"], classes or COMMON_GET_CLASSES, settings.transfer_syntaxes
            )
            assoc, connected = associate(
                ae,
                settings,
                node,
                contexts,
                ext_neg=[build_role(sop_class, scp_role=True) for sop_class in roles],
                evt_handlers=[(evt.EVT_C_STORE, store.handle)],
            )
        else:
            assoc, connected = associate(
                ae, settings, node, [build_context(models["move"], list(_QUERY_SYNTAXES))]
            )
        if not assoc.is_established:
            report.error = describe_failed_association(assoc, connected=connected)
            return report
        try:
            _send_requests(assoc, report, models[method], settings, progress)
        finally:
            _close(assoc)
        report.instances = _instance_outcomes(report, archive, store)
    finally:
        archive.close()
    return report


def _send_requests(
    assoc: Association,
    report: RetrieveReport,
    model_uid: str,
    settings: Settings,
    progress: Callable[[Progress], None] | None,
) -> None:
    request = report.request
    for number, value in enumerate(request.values):
        target = request.describe(value)
        if not assoc.is_established:
            report.requests.append(
                RequestResult(target, message="not sent: the association was aborted before")
            )
            continue
        identifier = request.identifier(value)
        msg_id = number % 0xFFFF + 1
        try:
            if report.method == "move":
                responses = assoc.send_c_move(
                    identifier, settings.ae_title, model_uid, msg_id=msg_id
                )
            else:
                responses = assoc.send_c_get(identifier, model_uid, msg_id=msg_id)
        except (ValueError, RuntimeError) as exc:
            report.requests.append(RequestResult(target, message=f"not sent: {exc}"))
            continue
        report.requests.append(_iterate(assoc, responses, target, report.method, progress))


def _instance_outcomes(
    report: RetrieveReport, archive: Archive, store: _GetStore
) -> list[RetrievedInstance]:
    """One line per instance: what we stored (C-GET) or find in the archive (C-MOVE, where the
    daemon stored them before answering the node), against what the listing expected."""
    failed_by_node = {uid for r in report.requests for uid in r.failed_uids}
    outcomes: dict[str, RetrievedInstance] = {}
    expected = report.expected or []
    if report.method == "get":
        outcomes.update(store.results)
    for item in expected:
        uid = item.sop_instance_uid
        if uid in outcomes:
            continue
        if uid in failed_by_node:
            outcomes[uid] = RetrievedInstance(
                uid, item.sop_class_uid, FAILED, "the node reports this sub-operation failed"
            )
        elif report.method == "move" and archive.instance(uid) is not None:
            outcomes[uid] = RetrievedInstance(uid, item.sop_class_uid, RECEIVED)
        else:
            where = "not received" if report.method == "get" else "not in the archive"
            outcomes[uid] = RetrievedInstance(uid, item.sop_class_uid, MISSING, where)
    for uid in failed_by_node:
        if uid not in outcomes:
            outcomes[uid] = RetrievedInstance(
                uid, "", FAILED, "the node reports this sub-operation failed"
            )
    return list(outcomes.values())
