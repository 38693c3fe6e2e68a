"""De-identification engine: PS3.15 Basic Application Level Confidentiality Profile and options.

``Anonymizer(profile, pseudonyms).anonymize(ds)`` returns a new dataset (the input is left
untouched; ``in_place=True`` edits the input instead, for callers that read it only for this)
with every attribute of Table E.1-1 (``appliance.deid_table``) handled as the profile's
options say, at every sequence depth, plus the list of changes for the preview table and, when a
pixel policy is given, why the pixels hold the object back. ``preview`` is the same without
touching the pseudonym store (a dry run).

Choices where the standard leaves room (written into the conformance statement too):

* Combined actions. X/Z and X/Z/D give Z and X/D gives X when the attribute is present; D is
  used instead for the few attributes that are Type 1 in the object's IOD family (``_TYPE1``:
  Content Date/Time in SR and enhanced objects, Device Serial Number and Acquisition DateTime in
  enhanced objects), so the output stays as valid as the input. Z/D is Z unless Type 1.
  X/Z/U* keeps the sequence and replaces the UIDs inside it (references stay valid).
  In RT objects, RT Plan Date/Time, Structure Set Time and Treatment Machine Name (Type 2 there,
  X or X/D in the table) are emptied rather than removed.
* D on a sequence keeps the items and walks them with every free-text value replaced by a dummy
  (codes are kept); C on a sequence keeps the items and cleans free text. K on a sequence keeps
  it but still walks it (the standard's "cleaned for sequences").
* C (clean) on a text value removes every identifying string of the object (patient's name
  components, IDs, accession number, birth date, institution and staff names) from the value;
  on a date it shifts by the patient's offset (Modified Dates option).
* Dates and times not listed in the table (any DA, DT, TM attribute) follow the same rule as the
  listed ones (E.3.6): dummy value under the Basic Profile, kept with Full Dates, shifted with
  Modified Dates; instance UIDs not listed (UI values that are not registered DICOM UIDs) are
  replaced like U attributes.
* Private attributes are removed; Retain Safe Private keeps none (no safe private list is
  configured), so it is not claimed in the method code sequence.
* Overlays (60xx) are removed as whole groups and curves (50xx) too: the engine has no way to
  clean burned-in graphics text, so Clean Graphics keeps only the Graphic Annotation Sequence
  (cleaned); Clean Graphics is still claimed when chosen since nothing uncleaned remains.
* Patient's Name and Patient ID (Z) get the project's pseudonyms (the patterns of the profile).
* Attributes kept unchanged are not decoded: they are written back byte for byte as received.
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom import Dataset
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID
from pydicom.valuerep import PersonName

from appliance import deid_table
from appliance.deid_table import METHOD_CODES, OPTIONS, TABLE_SOURCE

__all__ = [
    "BASIC",
    "AnonymizeResult",
    "Anonymizer",
    "Change",
    "Profile",
    "ProfileError",
    "parse_override",
    "preview",
]

DEFAULT_ID_PATTERN = "ANON{n:06d}"
DEFAULT_NAME_PATTERN = "ANONYMOUS^{n:06d}"
DUMMY_TEXT = "ANONYMIZED"
DUMMY_DATE = "19000101"
DUMMY_TIME = "000000"
DUMMY_DATETIME = "19000101000000"

_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN"})
_DATE_VRS = frozenset({"DA", "DT", "TM"})
_TEXT_OR_DATE_VRS = _TEXT_VRS | _DATE_VRS
# VRs an attribute the table does not list can be changed for (``Anonymizer._unlisted``): any
# other is kept as it is, so its value is not even converted. Text counts only in items walked
# in dummy or scrub mode.
_UNLISTED_VRS = frozenset({"SQ", "UI", "PN"}) | _DATE_VRS
_UNLISTED_VRS_TEXT = _UNLISTED_VRS | _TEXT_VRS
# A raw (undecoded) element whose VR is one of these is known not to change once its VR is
# known; any other (None from an implicit VR file, UN, "OB or OW"...) is decoded first, since
# decoding settles its VR.
_KEPT_RAW = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF",
     "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UR",
     "US", "UT", "UV"}
)  # fmt: skip
# Code Sequence Macro attributes: codes carry no identity and must survive dummying/cleaning.
_CODE_TAGS = frozenset({0x00080100, 0x00080102, 0x00080103, 0x00080104, 0x00080119, 0x00080120})
# File Meta attributes that name the sending/receiving systems.
_META_REMOVE = frozenset({0x00020016, 0x00020017, 0x00020018, 0x00020026, 0x00020027,
                          0x00020028, 0x00020100, 0x00020102})  # fmt: skip
_TYPE1 = frozenset({0x00080023, 0x00080033, 0x00181000, 0x0008002A})
_ENHANCED_WORDS = ("Enhanced", "Legacy Converted", "SR", "Segmentation", "Parametric Map",
                   "Key Object", "Surface", "Tractography", "Spectroscopy", "Waveform")  # fmt: skip
# Type 2 in the RT IODs although the table removes them (X, X/D): emptied there instead, which
# keeps the object valid and carries no value (RT Plan Date/Time, Structure Set Time,
# Treatment Machine Name).
_TYPE2_RT = frozenset({0x300A0006, 0x300A0007, 0x30060009, 0x300A00B2})
_PATIENT_ID = 0x00100020
_PATIENT_NAME = 0x00100010
_SOP_INSTANCE_UID = 0x00080018
_STUDY_UID = 0x0020000D
_SERIES_UID = 0x0020000E


class ProfileError(ValueError):
    pass


class PseudonymSource(Protocol):
    """What the engine needs from ``appliance.pseudonyms.PseudonymStore``."""

    def project_key(self, project: str) -> bytes: ...

    def patient(
        self,
        project: str,
        patient_id: str,
        patient_name: str,
        birth_date: str,
        *,
        id_pattern: str = ...,
        name_pattern: str = ...,
        dry_run: bool = ...,
    ) -> tuple[str, str]: ...

    def date_shift_days(
        self, project: str, patient_id: str, patient_name: str = ..., birth_date: str = ...
    ) -> int: ...


def parse_override(value: str) -> tuple[str, str | None]:
    """``keep`` | ``remove`` | ``replace:<value>`` -> (kind, value)."""
    if value in ("keep", "remove"):
        return value, None
    if value.startswith("replace:"):
        return "replace", value[len("replace:") :]
    raise ProfileError(f"override {value!r}: expected keep, remove or replace:<value>")


def _tag_of(key: str) -> int:
    text = key.strip()
    m = re.fullmatch(r"\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?", text)
    if m:
        return int(m.group(1) + m.group(2), 16)
    tag = tag_for_keyword(text)
    if tag is None:
        raise ProfileError(f"override {key!r}: not a DICOM keyword or (gggg,eeee) tag")
    return int(tag)


@dataclass(frozen=True)
class Profile:
    """A de-identification profile: the Basic Profile plus options and per-attribute overrides."""

    name: str = "basic"
    options: frozenset[str] = frozenset()
    overrides: Mapping[str, str] = field(default_factory=dict)
    patient_id_pattern: str = DEFAULT_ID_PATTERN
    patient_name_pattern: str = DEFAULT_NAME_PATTERN
    project: str = "default"

    def __post_init__(self) -> None:
        options = frozenset(self.options)
        object.__setattr__(self, "options", options)
        unknown = sorted(options - set(OPTIONS))
        if unknown:
            raise ProfileError(f"unknown option(s): {', '.join(unknown)}")
        if {"retain_long_full_dates", "retain_long_modified_dates"} <= options:
            raise ProfileError(
                "retain_long_full_dates and retain_long_modified_dates exclude each other"
            )
        for key, value in self.overrides.items():
            _tag_of(key)
            parse_override(value)

    def override_map(self) -> dict[int, tuple[str, str | None]]:
        return {_tag_of(k): parse_override(v) for k, v in self.overrides.items()}


BASIC = Profile()


@dataclass(frozen=True)
class Change:
    """One row of the preview table."""

    tag: str  # "(0010,0010)"
    keyword: str
    action: str  # remove | empty | dummy | keep | clean | uid | shift | pseudonym | replace | add
    original: str
    result: str
    path: str = ""  # where in nested sequences, e.g. "(0008,1140)[0]."

    def as_row(self) -> dict[str, str]:
        return {
            "tag": self.path + self.tag,
            "keyword": self.keyword,
            "original": self.original,
            "action": self.action,
            "result": self.result,
        }


@dataclass
class AnonymizeResult:
    dataset: Dataset
    changes: list[Change]
    held: str | None = None  # why the pixels keep it from release; None: releasable
    original_study_uid: str = ""
    original_sop_instance_uid: str = ""

    @property
    def released(self) -> bool:
        return self.held is None

    @property
    def study_uid(self) -> str:
        return str(self.dataset.get("StudyInstanceUID", ""))

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.get("SOPInstanceUID", ""))


def _text_of(ds: Dataset, tag: int) -> str:
    """The value of ``tag`` as text ("" when absent or empty)."""
    if tag not in ds._dict:
        return ""
    return str(ds[tag].value or "")


def _fmt_tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _show(elem: DataElement) -> str:
    if elem.VR == "SQ":
        return f"<{len(elem.value or [])} item(s)>"
    value = elem.value
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


@functools.lru_cache(maxsize=4096)
def _is_registered_uid(value: str) -> bool:
    # Registered DICOM UIDs (SOP classes, transfer syntaxes, coding schemes...) carry no identity.
    uid = UID(value)
    return value.startswith("1.2.840.10008.") or uid.name != value


@functools.lru_cache(maxsize=8192)
def _new_uid(key: bytes, uid: str) -> str:
    # The same study and series UIDs come with every image of a series: computed once.
    digest = hmac.new(key, b"uid\x00" + uid.encode(), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


@functools.lru_cache(maxsize=256)
def _sop_class_family(sop_class: str) -> tuple[bool, bool]:
    """(enhanced, RT) for a SOP Class UID, from its name."""
    name = UID(sop_class).name if sop_class else ""
    return any(word in name for word in _ENHANCED_WORDS), name.startswith("RT ")


def _copy_value(value: Any) -> Any:
    # Values the engine replaces but never changes inside (PersonName included) are shared.
    if value is None or isinstance(value, str | bytes | int | float | tuple | PersonName):
        return value
    if isinstance(value, Sequence | MultiValue):
        new = copy.copy(value)
        items = value._list
        new._list = (
            [_copy_dataset(i) for i in items] if isinstance(value, Sequence) else list(items)
        )
        return new
    return copy.deepcopy(value)


def _copy_dataset(ds: Dataset) -> Dataset:
    """A copy of ``ds`` the engine may edit without touching ``ds``: a new dictionary of
    elements, raw (still undecoded, immutable) elements shared, decoded ones copied, sequence
    items copied at every depth, the file meta copied. Much cheaper than ``copy.deepcopy``
    of the whole object, which copies every element and value."""
    new = ds.__class__.__new__(ds.__class__)
    state = new.__dict__
    for key, value in ds.__dict__.items():
        if key == "_dict":
            value = {tag: _copy_element(elem) for tag, elem in value.items()}
        elif key == "_private_blocks":
            value = {}  # a cache whose blocks point at their dataset
        elif isinstance(value, Dataset):
            value = _copy_dataset(value)
        elif isinstance(value, dict | list):
            value = copy.copy(value)
        elif key == "_pixel_array" and value is not None:
            value = value.copy()
        state[key] = value
    return new


def _copy_element(elem: DataElement | RawDataElement) -> DataElement | RawDataElement:
    if isinstance(elem, RawDataElement):
        return elem
    new = elem.__class__.__new__(elem.__class__)
    new.__dict__.update(elem.__dict__)
    new._value = _copy_value(elem._value)
    return new


def _shift_date(value: str, days: int) -> str:
    text = value.strip()
    if len(text) < 8 or not text[:8].isdigit():
        return ""
    try:
        day = _dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return ""
    return (day + _dt.timedelta(days=days)).strftime("%Y%m%d") + text[8:]


def _risk_reason(risk: Any) -> str | None:
    """The pixel policy's verdict as a reason, or None when the pixels are safe (duck-typed over
    ``PixelRisk`` so the engine does not depend on its exact shape)."""
    if risk is None or risk is False:
        return None
    if isinstance(risk, str):
        return risk or None
    risky = getattr(risk, "risky", None)
    if risky is None:
        level = getattr(risk, "level", getattr(risk, "status", None))
        risky = level not in (None, "safe", "ok", "clean", "none")
    if not risky:
        return None
    return str(getattr(risk, "reason", "") or "burned-in annotation possible")


class _Run:
    """State of one anonymization: the dataset's identifiers, UID map, change list."""

    def __init__(self, engine: Anonymizer, source: Dataset, *, dry_run: bool) -> None:
        self.engine = engine
        self.profile = engine.profile
        self.options = engine.profile.options
        self.overrides = engine.overrides
        self.store = engine.pseudonyms
        self.dry_run = dry_run
        self.changes: list[Change] = []
        self.key = self.store.project_key(self.profile.project)
        self.patient_id = _text_of(source, _PATIENT_ID)
        self.patient_name = _text_of(source, _PATIENT_NAME)
        self.birth_date = _text_of(source, 0x00100030)
        self.enhanced, self.rt = _sop_class_family(_text_of(source, 0x00080016))
        self._shift: int | None = None
        self._pseudonyms: dict[tuple[str, str], tuple[str, str]] = {}
        self.tokens = self._identifying_strings(source)
        self.shifted = False
        self.patient_done: set[int] = set()

    # --- values ------------------------------------------------------------------------------

    def new_uid(self, uid: str) -> str:
        return _new_uid(self.key, uid.strip())

    def shift_days(self) -> int:
        if self._shift is None:
            self._shift = self.store.date_shift_days(
                self.profile.project, self.patient_id, self.patient_name, self.birth_date
            )
        return self._shift

    def pseudonym(self, patient_id: str, patient_name: str) -> tuple[str, str]:
        key = (patient_id, patient_name)
        if key not in self._pseudonyms:
            self._pseudonyms[key] = self.store.patient(
                self.profile.project,
                patient_id,
                patient_name,
                self.birth_date if (patient_id, patient_name) == (
                    self.patient_id, self.patient_name) else "",
                id_pattern=self.profile.patient_id_pattern,
                name_pattern=self.profile.patient_name_pattern,
                dry_run=self.dry_run,
            )  # fmt: skip
        return self._pseudonyms[key]

    def _identifying_strings(self, ds: Dataset) -> list[str]:
        found: set[str] = set()

        def add(value: object) -> None:
            if value is None:
                return
            values = value if isinstance(value, list | tuple) else [value]
            if type(value).__name__ == "MultiValue":
                values = list(value)  # type: ignore[call-overload]
            for v in values:
                text = str(v)
                for part in re.split(r"[\^=\\]", text) + [text.replace("^", " ").strip()]:
                    part = part.strip()
                    if len(part) >= 3:
                        found.add(part)

        def walk(d: Dataset) -> None:
            # Straight over the stored elements: values are converted only where they are read
            # (a raw element's VR is final when it is in _KEPT_RAW).
            elements = d._dict
            for tag in sorted(elements):
                vr = elements[tag].VR
                if vr not in _KEPT_RAW:
                    vr = d[tag].VR
                if vr == "SQ":
                    for item in d[tag].value or []:
                        walk(item)
                elif vr == "PN" or (tag in _IDENTIFYING and vr in _TEXT_OR_DATE_VRS):
                    add(d[tag].value)

        walk(ds)
        # Longest first so a full name goes before its parts.
        return sorted(found, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for token in self.tokens:
            if token.lower() in text.lower():
                text = re.sub(re.escape(token), "", text, flags=re.IGNORECASE)
        return text.strip()

    # --- recording ---------------------------------------------------------------------------

    def note(self, elem: DataElement, action: str, original: str, result: str, path: str) -> None:
        tag = int(elem.tag)
        self.changes.append(
            Change(_fmt_tag(tag), elem.keyword or keyword_for_tag(tag) or "", action,
                   original, result, path)
        )  # fmt: skip


# Values the Clean action removes from free text wherever they appear.
_IDENTIFYING = frozenset(
    int(tag_for_keyword(k) or 0)
    for k in (
        "PatientID", "OtherPatientIDs", "AccessionNumber", "PatientBirthDate", "InstitutionName",
        "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "PatientAddress",
        "StudyID", "MedicalRecordLocator", "AdmissionID", "IssuerOfPatientID",
        "PatientTelephoneNumbers", "DeviceSerialNumber", "RequestedProcedureID",
        "PerformedProcedureStepID", "ScheduledProcedureStepID", "ServiceEpisodeID",
        "PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest",
    )
)  # fmt: skip


class Anonymizer:
    """Applies a ``Profile`` to datasets; one instance may serve many datasets and threads."""

    def __init__(
        self,
        profile: Profile,
        pseudonyms: PseudonymSource,
        *,
        pixel_policy: Any | None = None,
    ) -> None:
        self.profile = profile
        self.pseudonyms = pseudonyms
        self.pixel_policy = pixel_policy
        self.options = profile.options
        self.overrides = profile.override_map()
        # Row action per tag for this profile, computed once.
        self._actions = {tag: row.action(profile.options) for tag, row in deid_table.BY_TAG.items()}
        self._private_action = deid_table.PRIVATE_ROW.action(profile.options)
        self._marks = self._mark_elements()

    # --- public ------------------------------------------------------------------------------

    def anonymize(
        self, ds: Dataset, *, pixels_confirmed: bool = False, in_place: bool = False
    ) -> AnonymizeResult:
        """The anonymized object. ``in_place``: ``ds`` itself is edited and returned (for a
        caller that read it only to anonymize it); otherwise ``ds`` is left as it was."""
        return self._run(ds, dry_run=False, pixels_confirmed=pixels_confirmed, in_place=in_place)

    def preview(self, ds: Dataset) -> AnonymizeResult:
        return self._run(ds, dry_run=True, pixels_confirmed=False, in_place=False)

    def method_codes(self) -> list[tuple[str, str]]:
        """CID 7050 (code value, meaning) for what this profile applies."""
        applied = ["basic"] + [
            o for o in OPTIONS if o in self.profile.options and o != "retain_safe_private"
        ]
        return [METHOD_CODES[o] for o in applied]

    # --- engine ------------------------------------------------------------------------------

    def _run(
        self, source: Dataset, *, dry_run: bool, pixels_confirmed: bool, in_place: bool
    ) -> AnonymizeResult:
        ds = source if in_place else _copy_dataset(source)
        original_study_uid = str(ds.get("StudyInstanceUID", ""))
        original_sop_instance_uid = str(ds.get("SOPInstanceUID", ""))
        run = _Run(self, ds, dry_run=dry_run)
        held = self._pixels(ds, run, pixels_confirmed)
        if held is None and "clean_pixel_data" in self.profile.options and self.pixel_policy:
            try:
                ds = self._clean_pixels(ds, run)
            except ValueError as exc:
                # Pixels that cannot be decoded or blanked are never passed through.
                held = f"pixels cannot be cleaned: {exc}"
        self._walk(ds, run, path="", mode="normal")
        self._file_meta(ds, run)
        self._mark(ds, run)
        return AnonymizeResult(
            dataset=ds,
            changes=run.changes,
            held=held,
            original_study_uid=original_study_uid,
            original_sop_instance_uid=original_sop_instance_uid,
        )

    def _pixels(self, ds: Dataset, run: _Run, confirmed: bool) -> str | None:
        # No Pixel Data is not enough: an encapsulated document (PDF, CDA) carries its own text.
        if self.pixel_policy is None:
            return None
        reason = _risk_reason(self.pixel_policy.assess(ds))
        if reason is None or confirmed:
            return None
        if "clean_pixel_data" in self.profile.options:
            regions = self.pixel_policy.regions_for(ds)
            if regions:
                return None
            return f"{reason}; no pixel region rule for this modality, manufacturer and size"
        return reason

    def _clean_pixels(self, ds: Dataset, run: _Run) -> Dataset:
        regions = self.pixel_policy.regions_for(ds)  # type: ignore[union-attr]
        if not regions:
            return ds
        cleaned = self.pixel_policy.clean(ds, regions)  # type: ignore[union-attr]
        run.changes.append(
            Change("(7FE0,0010)", "PixelData", "clean", "", f"{len(regions)} region(s) blanked")
        )
        return cleaned

    def _action_for(self, tag: int) -> str | None:
        action = self._actions.get(tag)
        if action is not None:
            return action
        group = tag >> 16
        if group & 1:
            return self._private_action
        if 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
            # Overlay and curve groups go as a whole (see the module notes).
            return "X"
        return None

    def _walk(self, ds: Dataset, run: _Run, *, path: str, mode: str) -> None:
        elements = ds._dict
        changeable = _UNLISTED_VRS if mode == "normal" else _UNLISTED_VRS_TEXT
        for tag in sorted(elements):
            if tag >> 16 == 0x0002:
                continue
            stored = elements.get(tag)
            if stored is None:
                continue  # removed with Patient ID / Name by an override
            override = self.overrides.get(tag)
            if override is not None:
                self._apply_override(ds, ds[tag], override, run, path)
                continue
            action = self._action_for(tag)
            if action is None:
                if stored.VR in _KEPT_RAW and stored.VR not in changeable:
                    continue  # kept as it is: not decoded, written back unchanged
                self._unlisted(ds, ds[tag], run, path, mode)
                continue
            self._apply(ds, ds[tag], action, run, path, mode)

    def _apply_override(
        self,
        ds: Dataset,
        elem: DataElement,
        override: tuple[str, str | None],
        run: _Run,
        path: str,
    ) -> None:
        kind, value = override
        original = _show(elem)
        if kind == "keep":
            run.note(elem, "keep", original, original, path)
        elif kind == "remove":
            del ds[elem.tag]
            run.note(elem, "remove", original, "", path)
        else:
            elem.value = value
            run.note(elem, "replace", original, _show(elem), path)

    @staticmethod
    def _resolve(action: str, tag: int, enhanced: bool) -> str:
        if "/" not in action:
            return action
        type1 = tag in _TYPE1 and enhanced
        if action == "X/Z/U*":
            return "U*"
        if action == "Z/D":
            return "D" if type1 else "Z"
        if action == "X/Z":
            return "Z"
        if action == "X/D":
            return "D" if type1 else "X"
        if action == "X/Z/D":
            return "D" if type1 else "Z"
        return action.split("/")[0]

    def _apply(
        self, ds: Dataset, elem: DataElement, action: str, run: _Run, path: str, mode: str
    ) -> None:
        tag = int(elem.tag)
        action = self._resolve(action, tag, run.enhanced)
        if action == "X" and run.rt and tag in _TYPE2_RT:
            action = "Z"
        original = _show(elem)
        if tag == _PATIENT_ID or tag == _PATIENT_NAME:
            if action in ("Z", "D", "X"):
                self._pseudonymize(ds, run, path)
                return
        if action == "X":
            del ds[elem.tag]
            run.note(elem, "remove", original, "", path)
        elif action == "Z":
            elem.value = (
                Sequence() if elem.VR == "SQ" else ("" if elem.VR not in _NUMERIC else None)
            )
            run.note(elem, "empty", original, "", path)
        elif action == "D":
            if elem.VR == "SQ":
                self._walk_items(elem, run, path, "dummy")
            elif elem.VR in _DATE_VRS and "retain_long_modified_dates" in self.options:
                self._date(elem, run, path)
                return
            else:
                elem.value = self._dummy(elem, run)
            run.note(elem, "dummy", original, _show(elem), path)
        elif action == "U":
            self._uid(elem, run, path)
        elif action == "U*":
            self._walk_items(elem, run, path, mode)
            run.note(elem, "uid", original, _show(elem), path)
        elif action == "K":
            if elem.VR == "SQ":
                self._walk_items(elem, run, path, mode)
            run.note(elem, "keep", original, _show(elem), path)
        elif action == "C":
            self._clean(ds, elem, run, path, mode)

    def _clean(self, ds: Dataset, elem: DataElement, run: _Run, path: str, mode: str) -> None:
        tag = int(elem.tag)
        original = _show(elem)
        if tag >> 16 & 1:
            # Clean private = keep the safe ones; no safe list is configured, so none survive.
            del ds[elem.tag]
            run.note(elem, "remove", original, "", path)
            return
        if elem.VR == "SQ":
            self._walk_items(elem, run, path, "scrub")
            run.note(elem, "clean", original, _show(elem), path)
        elif elem.VR in _DATE_VRS:
            self._date(elem, run, path)
        elif elem.VR in _TEXT_VRS:
            elem.value = self._scrub_value(elem, run)
            run.note(elem, "clean", original, _show(elem), path)
        elif elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            del ds[elem.tag]
            run.note(elem, "remove", original, "", path)
        else:
            run.note(elem, "keep", original, original, path)

    def _scrub_value(self, elem: DataElement, run: _Run) -> Any:
        value = elem.value
        if value is None:
            return value
        if type(value).__name__ == "MultiValue" or isinstance(value, list):
            return [run.scrub(str(v)) for v in value]
        return run.scrub(str(value))

    def _walk_items(self, elem: DataElement, run: _Run, path: str, mode: str) -> None:
        for i, item in enumerate(elem.value or []):
            self._walk(item, run, path=f"{path}{_fmt_tag(int(elem.tag))}[{i}].", mode=mode)

    def _unlisted(self, ds: Dataset, elem: DataElement, run: _Run, path: str, mode: str) -> None:
        tag = int(elem.tag)
        vr = elem.VR
        if vr == "SQ":
            self._walk_items(elem, run, path, mode)
            return
        if vr in _DATE_VRS:
            if elem.value not in (None, ""):
                self._date(elem, run, path)
            return
        if vr == "UI":
            keyword = elem.keyword or ""
            if (
                elem.value
                and "retain_uids" not in self.options
                and not keyword.endswith(_UID_KEEP_SUFFIXES)
                and not _is_registered_uid(str(elem.value))
            ):
                self._uid(elem, run, path)
            return
        if vr == "PN" and elem.value not in (None, ""):
            # A person's name the table does not list (newer attributes): never kept.
            original = _show(elem)
            elem.value = DUMMY_TEXT
            run.note(elem, "dummy", original, DUMMY_TEXT, path)
            return
        if tag in _CODE_TAGS or vr not in _TEXT_VRS or elem.value in (None, ""):
            return
        original = _show(elem)
        if mode == "dummy":
            elem.value = DUMMY_TEXT
            run.note(elem, "dummy", original, DUMMY_TEXT, path)
        elif mode == "scrub":
            new = self._scrub_value(elem, run)
            if new != elem.value:
                elem.value = new
                run.note(elem, "clean", original, _show(elem), path)

    def _date(self, elem: DataElement, run: _Run, path: str) -> None:
        """A date/time attribute the table lets the date options keep or shift (its C), or one
        the table does not list: kept with Full Dates, shifted with Modified Dates (times kept:
        the shift is whole days), otherwise a dummy value."""
        original = _show(elem)
        if "retain_long_full_dates" in self.options:
            run.note(elem, "keep", original, original, path)
            return
        if "retain_long_modified_dates" in self.options:
            if elem.VR == "TM" or elem.value in (None, ""):
                run.note(elem, "keep", original, original, path)
                return
            days = run.shift_days()
            values = elem.value if isinstance(elem.value, list) else None
            if type(elem.value).__name__ == "MultiValue":
                values = list(elem.value)
            if values is not None:
                elem.value = [self._shift_range(str(v), days) for v in values]
            else:
                elem.value = self._shift_range(str(elem.value), days)
            run.shifted = True
            run.note(elem, "shift", original, _show(elem), path)
            return
        elem.value = self._dummy(elem, run)
        run.note(elem, "dummy", original, _show(elem), path)

    @staticmethod
    def _shift_range(value: str, days: int) -> str:
        return "-".join(_shift_date(part, days) if part else "" for part in value.split("-"))

    def _dummy(self, elem: DataElement, run: _Run) -> Any:
        vr = elem.VR
        if vr == "DA":
            return DUMMY_DATE
        if vr == "TM":
            return DUMMY_TIME
        if vr == "DT":
            return DUMMY_DATETIME
        if vr == "UI":
            return run.new_uid(str(elem.value or ""))
        if vr in ("IS", "DS"):
            return "0"
        if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
            return 0
        if vr in ("FL", "FD"):
            return 0.0
        if vr in ("OB", "OW", "UN"):
            return b"\x00\x00"
        if vr == "AS":
            return "000D"
        if vr in ("AE", "CS"):
            return "ANON"
        if vr == "UR":
            return ""
        return DUMMY_TEXT

    def _uid(self, elem: DataElement, run: _Run, path: str) -> None:
        original = _show(elem)
        if elem.value in (None, ""):
            return
        if type(elem.value).__name__ == "MultiValue" or isinstance(elem.value, list):
            elem.value = [run.new_uid(str(v)) for v in elem.value]
        else:
            elem.value = run.new_uid(str(elem.value))
        run.note(elem, "uid", original, _show(elem), path)

    def _pseudonymize(self, ds: Dataset, run: _Run, path: str) -> None:
        # Both attributes at once, from the original pair, so the pair stays consistent.
        if id(ds) in run.patient_done:
            return
        run.patient_done.add(id(ds))
        pid_elem = ds.get((0x0010, 0x0020))
        name_elem = ds.get((0x0010, 0x0010))
        pid = str(pid_elem.value or "") if pid_elem is not None else ""
        name = str(name_elem.value or "") if name_elem is not None else ""
        new_id, new_name = run.pseudonym(pid, name)
        for elem, new in ((pid_elem, new_id), (name_elem, new_name)):
            if elem is None:
                continue
            if int(elem.tag) in self.overrides:
                self._apply_override(ds, elem, self.overrides[int(elem.tag)], run, path)
                continue
            original = _show(elem)
            elem.value = new
            run.note(elem, "pseudonym", original, new, path)

    def _file_meta(self, ds: Dataset, run: _Run) -> None:
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            return
        for tag in list(meta.keys()):
            if int(tag) in _META_REMOVE:
                elem = meta[tag]
                run.note(elem, "remove", _show(elem), "", "")
                del meta[tag]
        # Media Storage SOP Instance UID follows the (new) SOP Instance UID.
        if 0x00020003 in meta._dict and _SOP_INSTANCE_UID in ds._dict:
            meta[0x00020003].value = ds[_SOP_INSTANCE_UID].value

    def _mark(self, ds: Dataset, run: _Run) -> None:
        """Patient Identity Removed, De-identification Method and its code sequence, and the
        Longitudinal Temporal Information Modified attribute: what was applied, exactly."""
        for template, shown in self._marks:
            tag = template.tag
            if tag in ds._dict:  # already marked (a copy anonymized again)
                elem = ds[tag]
                elem.value = _copy_value(template.value)
                shown = _show(elem)
            else:
                elem = _copy_element(template)
                ds[tag] = elem
            run.note(elem, "add", "", shown, "")

    def _mark_elements(self) -> list[tuple[DataElement, str]]:
        """What ``_mark`` adds, built once per profile (copied into each object), with the
        text the change list shows for each."""
        codes = self.method_codes()
        method = [meaning for _, meaning in codes]
        if self.profile.overrides:
            method.append(f"Site profile {self.profile.name}: {len(self.profile.overrides)} "
                          "attribute override(s)"[:64])  # fmt: skip
        items = []
        for value, meaning in codes:
            item = Dataset()
            item[0x00080100] = DataElement(0x00080100, "SH", value)  # Code Value
            item[0x00080102] = DataElement(0x00080102, "SH", "DCM")  # Coding Scheme Designator
            item[0x00080104] = DataElement(0x00080104, "LO", meaning)  # Code Meaning
            items.append(item)
        if "retain_long_full_dates" in self.options:
            longitudinal = "UNMODIFIED"
        elif "retain_long_modified_dates" in self.options:
            longitudinal = "MODIFIED"
        else:
            longitudinal = "REMOVED"
        elements = [
            DataElement(0x00120062, "CS", "YES"),  # Patient Identity Removed
            DataElement(0x00120063, "LO", method),  # De-identification Method
            DataElement(0x00120064, "SQ", Sequence(items)),  # ... Method Code Sequence
            DataElement(0x00280303, "CS", longitudinal),  # Longitudinal Temporal Inf. Modified
        ]
        return [(elem, _show(elem)) for elem in elements]


# UIDs that name classes and schemes, not instances: never replaced.
_UID_KEEP_SUFFIXES = ("ClassUID", "TransferSyntaxUID", "SchemeUID", "CreatorUID")
_NUMERIC = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"})


def preview(ds: Dataset, profile: Profile, pseudonyms: PseudonymSource) -> list[Change]:
    """The changes ``profile`` would make to ``ds``; stores no pseudonym (the project key is
    created if the project is new, so the UIDs shown are the ones a real run gives)."""
    return Anonymizer(profile, pseudonyms).preview(ds).changes


def table_source() -> str:
    return TABLE_SOURCE


def rows_for_options(options: Iterable[str]) -> dict[str, str]:
    """Tag -> action for every table row under ``options`` (for documentation and tests)."""
    enabled = frozenset(options)
    return {row.tag: row.action(enabled) for row in deid_table.ROWS}
