"""File-set Creator (FSC) for patient media: which instances go on which disc, and the folder
that is imaged onto each disc.

:func:`plan_discs` splits the chosen studies over as many discs as they need: whole studies
while they fit, a study larger than a disc by series, a series larger than a disc by instance.
DICOM has no multi-volume file-set (PS3.11 D.2), so every disc is a complete file-set of its
own, labelled "disc n of N".

:func:`build_fileset` writes one disc's folder::

    DICOMDIR                  Basic Directory, Explicit VR Little Endian (pydicom's FileSet)
    DICOM/PAT00001/STU00001/SER00001/IMG00001 ...
    README.TXT  INDEX.HTM     IHE PDI: who made the disc, what is on it, disc n of N
    LABEL.TXT                 text for the disc label (optional)
    VIEWER/...                a copy of the configured viewer folder (optional)

File IDs follow PS3.10 8.2 / PS3.12 F.1.2.1 (ISO 9660 level 1): components of 1 to 8
characters from A-Z, 0-9 and ``_``, no extension, at most 8 levels (the root counting as the
first). Profiles (PS3.11 Annex D and H): STD-GEN-CD holds Explicit VR Little Endian only, so
compressed or implicit VR objects are decoded into Explicit VR Little Endian copies;
STD-GEN-DVD-JPEG keeps JPEG baseline, extended and lossless SV1, STD-GEN-DVD-J2K keeps JPEG
2000, and anything else is decoded.

Keys the DICOMDIR records need (PS3.3 F.5, PS3.11 D.3.3) and an object lacks are filled in
the copy on the disc, never in the archive: Patient ID, Study Date, Study Time, Study ID,
Series Number, Instance Number, Modality. Each filled value is listed in
``BuiltFileSet.filled``.

No autorun.inf is written or copied: IHE PDI recommends that readers never start software on
the media automatically.
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import config, dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.fileset import DIRECTORY_RECORDERS, FileSet, RecordNode
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
)

from appliance import __version__
from appliance.archive import InstanceRecord
from appliance.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from appliance.archive import Archive

LOG = logging.getLogger("appliance.fileset")

CD_BYTES = 700 * 1000**2
DVD_BYTES = 4_700_000_000

STD_GEN_CD = "STD-GEN-CD"
STD_GEN_DVD_JPEG = "STD-GEN-DVD-JPEG"
STD_GEN_DVD_J2K = "STD-GEN-DVD-J2K"
# Transfer syntaxes each profile allows for images (PS3.11 D.3.2, H.3.2).
PROFILES: dict[str, frozenset[str]] = {
    STD_GEN_CD: frozenset({ExplicitVRLittleEndian}),
    STD_GEN_DVD_JPEG: frozenset(
        {ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1}
    ),
    STD_GEN_DVD_J2K: frozenset({ExplicitVRLittleEndian, JPEG2000Lossless, JPEG2000}),
}

DICOM_FOLDER = "DICOM"
VIEWER_FOLDER = "VIEWER"
# ISO 9660 stores every file in whole 2 KiB sectors; a directory entry (ISO 9660, Joliet and
# Rock Ridge) and a DICOMDIR record cost a few hundred bytes more per file.
SECTOR = 2048
PER_FILE_OVERHEAD = 1024
# Volume descriptors, path tables, the DICOMDIR header, README.TXT, INDEX.HTM, LABEL.TXT.
DEFAULT_RESERVE_BYTES = 4 * 1000**2

_COMPONENT = re.compile(r"^[A-Z0-9_]{1,8}$")
_MAX_LEVELS = 8
# Placeholders for study date and time when the object has no date at all (the values
# dcm4chee's media creator uses): a reader sees at once that the date is unknown.
_NO_DATE = "19000101"
_NO_TIME = "000000"

ProgressCallback = Callable[[float], None]


class FileSetError(Exception):
    """The file-set cannot be planned or built; the message says why."""


@dataclass
class DiscContent:
    """What goes on one disc: the archive's instances, in study, series, instance order."""

    number: int
    total: int
    study_uids: list[str]
    instances: list[InstanceRecord]
    bytes: int = 0  # estimated size on the disc, overheads included
    # Series/Instance Numbers for objects without one, chosen over the whole selection (after
    # the highest number in use), so a series split over two discs is numbered alike on both.
    series_position: dict[str, int] = field(default_factory=dict, repr=False)
    instance_position: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def title(self) -> str:
        return f"disc {self.number} of {self.total}"


@dataclass
class BuiltFileSet:
    folder: Path
    files: list[Path]  # every file written, relative to ``folder``
    bytes: int
    filled: list[str]
    disc: DiscContent
    profile: str = STD_GEN_CD
    fileset_id: str = ""


# --- planning ------------------------------------------------------------------------------


@dataclass
class _Row:
    record: InstanceRecord
    series_number: int | None
    instance_number: int | None
    received_at: float
    cost: int = 0


def _as_int(text: object) -> int | None:
    try:
        return int(float(str(text).strip()))
    except (TypeError, ValueError):
        return None


def study_instances(archive: Archive, study_uids: Sequence[str]) -> list[InstanceRecord]:
    """The instances of ``study_uids`` in the order they go on the media: the studies in the
    order given, series by Series Number, instances by Instance Number."""
    return [row.record for row in _study_rows(archive, study_uids)]


def _study_rows(archive: Archive, study_uids: Sequence[str]) -> list[_Row]:
    from appliance.query import connect, index_path

    wanted = list(dict.fromkeys(study_uids))
    if not wanted:
        raise FileSetError("no study given")
    db = connect(index_path(archive))
    try:
        rows: list[tuple] = []
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            rows.extend(
                db.execute(
                    "SELECT i.sop_instance_uid, i.sop_class_uid, i.series_uid, i.study_uid,"
                    " i.transfer_syntax, i.path, i.size, COALESCE(s.series_number, ''),"
                    " COALESCE(i.instance_number, ''), COALESCE(i.received_at, 0)"
                    " FROM instances i LEFT JOIN series s ON s.series_uid = i.series_uid"
                    f" WHERE i.study_uid IN ({','.join('?' * len(part))})",
                    part,
                ).fetchall()
            )
    finally:
        db.close()
    present = {row[3] for row in rows}
    missing = [uid for uid in wanted if uid not in present]
    if missing:
        raise FileSetError(f"the archive has no instances of study {missing[0]}")
    order = {uid: n for n, uid in enumerate(wanted)}
    big = 1 << 40
    found = [
        _Row(
            InstanceRecord(r[0], r[1], r[2], r[3], r[4], archive.root / r[5], int(r[6] or 0)),
            _as_int(r[7]),
            _as_int(r[8]),
            float(r[9]),
        )
        for r in rows
    ]

    def key(row: _Row) -> tuple:
        return (
            order[row.record.study_uid],
            big if row.series_number is None else row.series_number,
            row.record.series_uid,
            big if row.instance_number is None else row.instance_number,
            row.received_at,
            row.record.sop_instance_uid,
        )

    return sorted(found, key=key)


def _disc_cost(row: _Row, allowed: frozenset[str]) -> int:
    """Bytes the instance takes on the disc: its file (decoded when the profile needs it),
    rounded up to whole sectors, plus its directory entries and DICOMDIR record."""
    size = row.record.size
    if row.record.transfer_syntax not in allowed:
        size += _decoded_pixel_bytes(row.record.path)
    return -(-size // SECTOR) * SECTOR + PER_FILE_OVERHEAD


def _decoded_pixel_bytes(path: Path) -> int:
    # An upper bound is enough: header plus compressed plus decoded pixels.
    try:
        ds = dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=["Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "NumberOfFrames"],
        )
    except Exception as exc:  # pydicom raises assorted errors on a damaged file
        raise FileSetError(f"{path}: cannot be read: {exc}") from None
    frames = _as_int(ds.get("NumberOfFrames")) or 1
    bits = _as_int(ds.get("BitsAllocated")) or 16
    samples = _as_int(ds.get("SamplesPerPixel")) or 1
    rows = _as_int(ds.get("Rows")) or 0
    columns = _as_int(ds.get("Columns")) or 0
    return rows * columns * samples * frames * ((bits + 7) // 8)


def folder_bytes(folder: Path) -> int:
    """What a folder copied onto a disc takes there (whole sectors per file)."""
    total = 0
    for directory, _subdirs, files in os.walk(folder):
        for name in files:
            try:
                size = (Path(directory) / name).stat().st_size
            except OSError:
                continue
            total += -(-size // SECTOR) * SECTOR + PER_FILE_OVERHEAD
    return total


def plan_discs(
    archive: Archive,
    study_uids: Sequence[str],
    capacity_bytes: int,
    *,
    profile: str = STD_GEN_CD,
    reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    viewer_folder: Path | None = None,
) -> list[DiscContent]:
    """Split the studies over discs of ``capacity_bytes``: whole studies first; a study that
    does not fit an empty disc is split by series, a series that does not fit one by instance.

    ``reserve_bytes`` is kept free on every disc for the DICOMDIR and the PDI files; a viewer
    folder (copied onto every disc) is added to it. Raises FileSetError when nothing fits.
    """
    allowed = _profile_syntaxes(profile)
    reserve = reserve_bytes + (folder_bytes(viewer_folder) if viewer_folder else 0)
    room = capacity_bytes - reserve
    if room <= 0:
        raise FileSetError(
            f"a disc of {capacity_bytes} bytes has no room left after {reserve} bytes for the"
            " DICOMDIR, the PDI files and the viewer"
        )
    rows = _study_rows(archive, study_uids)
    for row in rows:
        row.cost = _disc_cost(row, allowed)
        if row.cost > room:
            raise FileSetError(
                f"instance {row.record.sop_instance_uid} ({row.record.size} bytes) is larger"
                " than a disc"
            )

    discs: list[list[_Row]] = [[]]
    used = [0]

    def put(group: list[_Row], cost: int) -> None:
        discs[-1].extend(group)
        used[-1] += cost

    def new_disc() -> None:
        if discs[-1]:
            discs.append([])
            used.append(0)

    def place(group: list[_Row], level: int) -> None:
        """Level 0: a study, 1: a series, 2: one instance."""
        cost = sum(r.cost for r in group)
        if used[-1] + cost <= room:
            put(group, cost)
        elif cost <= room:
            # Keep the group whole on a disc of its own rather than split it.
            new_disc()
            put(group, cost)
        else:
            parts = _by_series(group) if level == 0 else [[row] for row in group]
            for part in parts:
                place(part, level + 1)

    for study in _groups(rows, lambda r: r.record.study_uid):
        place(study, 0)

    # Numbers for objects that have none: after the highest one in use, in selection order,
    # so they neither collide with real ones nor differ between the discs of a set.
    series_position: dict[str, int] = {}
    instance_position: dict[str, int] = {}
    for study in _groups(rows, lambda r: r.record.study_uid):
        series_groups = _groups(study, lambda r: r.record.series_uid)
        used_series = [g[0].series_number for g in series_groups if g[0].series_number is not None]
        next_series = max(used_series, default=0)
        for series in series_groups:
            if series[0].series_number is None:
                next_series += 1
                series_position[series[0].record.series_uid] = next_series
            next_instance = max(
                (r.instance_number for r in series if r.instance_number is not None), default=0
            )
            for row in series:
                if row.instance_number is None:
                    next_instance += 1
                    instance_position[row.record.sop_instance_uid] = next_instance

    total = len(discs)
    planned = []
    for number, (content, size) in enumerate(zip(discs, used, strict=True), 1):
        studies = list(dict.fromkeys(r.record.study_uid for r in content))
        planned.append(
            DiscContent(
                number=number,
                total=total,
                study_uids=studies,
                instances=[r.record for r in content],
                bytes=size + reserve,
                series_position={
                    r.record.series_uid: series_position[r.record.series_uid]
                    for r in content
                    if r.record.series_uid in series_position
                },
                instance_position={
                    r.record.sop_instance_uid: instance_position[r.record.sop_instance_uid]
                    for r in content
                    if r.record.sop_instance_uid in instance_position
                },
            )
        )
    return planned


def _groups(rows: list[_Row], key: Callable[[_Row], str]) -> list[list[_Row]]:
    """Consecutive runs of rows with the same key (rows are sorted)."""
    groups: list[list[_Row]] = []
    last: str | None = None
    for row in rows:
        value = key(row)
        if not groups or value != last:
            groups.append([])
            last = value
        groups[-1].append(row)
    return groups


def _by_series(rows: list[_Row]) -> list[list[_Row]]:
    return _groups(rows, lambda r: r.record.series_uid)


def _profile_syntaxes(profile: str) -> frozenset[str]:
    try:
        return PROFILES[profile]
    except KeyError:
        raise FileSetError(
            f"unknown media profile {profile!r}: one of {', '.join(PROFILES)}"
        ) from None


# --- building ------------------------------------------------------------------------------


class _Tree:
    """The DICOMDIR's record tree (PATIENT, STUDY, SERIES, leaf), built in one pass.

    pydicom's ``FileSet.add``/``add_custom`` scan every instance already added (quadratic: 11 s
    for 1,000 images) and stage a copy of each object; we build the same ``RecordNode`` tree
    with dictionaries, set the Referenced File IDs to our names, and let the FileSet encode it
    (offsets, item lengths, File Meta) with ``_write_dicomdir``.
    """

    def __init__(self, fs: FileSet) -> None:
        self.fs = fs
        self.patients: dict[str, RecordNode] = {}
        self.studies: dict[str, RecordNode] = {}
        self.series: dict[str, RecordNode] = {}
        self.names: dict[int, str] = {}  # id(node) -> its folder name
        self.counts: dict[int, int] = {}  # id(node) -> children so far

    def _child(
        self,
        index: dict[str, RecordNode],
        key: str,
        ds: Dataset,
        record_type: str,
        parent: RecordNode,
        prefix: str,
    ) -> RecordNode:
        node = index.get(key)
        if node is None:
            node = index[key] = RecordNode(_record(ds, record_type))
            self._attach(node, parent, prefix)
        return node

    def _attach(self, node: RecordNode, parent: RecordNode, prefix: str) -> str:
        number = self.counts.get(id(parent), 0) + 1
        self.counts[id(parent)] = number
        name = self.names[id(node)] = _name(prefix, number)
        # Appended directly: the ``parent`` setter would search the children list first.
        node._parent = parent
        parent.children.append(node)
        return name

    def add(self, ds: Dataset) -> list[str]:
        """Add the object's records; returns its File ID components."""
        root = self.fs._tree
        patient = self._child(self.patients, str(ds.PatientID), ds, "PATIENT", root, "PAT")
        study_uid = str(ds.StudyInstanceUID)
        study = self._child(self.studies, study_uid, ds, "STUDY", patient, "STU")
        series_uid = str(ds.SeriesInstanceUID)
        series = self._child(self.series, series_uid, ds, "SERIES", study, "SER")
        leaf = _leaf_record(ds)
        node = RecordNode(leaf)
        name = self._attach(node, series, _LEAF_PREFIX.get(leaf.DirectoryRecordType, "OBJ"))
        components = [DICOM_FOLDER] + [self.names[id(n)] for n in (patient, study, series)]
        components.append(name)
        leaf.ReferencedFileID = components
        return components

    def encode(self) -> bytes:
        buffer = BytesIO()
        # The records' values were checked when the objects were read; checking them again
        # on every element written doubles the encoding time.
        with config.disable_value_validation():
            self.fs._write_dicomdir(DicomFileLike(buffer))
        return buffer.getvalue()


# File name prefixes by leaf record type: IMG00001 for images, SR00001 for reports, ...
_LEAF_PREFIX = {
    "IMAGE": "IMG",
    "SR DOCUMENT": "SR",
    "KEY OBJECT DOC": "KO",
    "PRESENTATION": "PR",
    "ENCAP DOC": "DOC",
    "WAVEFORM": "WV",
    "RT DOSE": "RD",
    "RT STRUCTURE SET": "RS",
    "RT PLAN": "RP",
    "RT TREAT RECORD": "RT",
    "SPECTROSCOPY": "SP",
    "RAW DATA": "RAW",
    "REGISTRATION": "REG",
    "FIDUCIAL": "FID",
}


def _name(prefix: str, number: int) -> str:
    name = f"{prefix}{number:05d}"
    if len(name) > 8:
        name = f"{prefix[0]}{number:07d}"
    if len(name) > 8:
        raise FileSetError(f"more than 9,999,999 entries in one folder ({prefix})")
    return name


def is_valid_file_id(components: Sequence[str]) -> bool:
    """PS3.10 8.2 / PS3.12 F.1.2.1: 1 to 8 characters from A-Z, 0-9 and _ per component, at
    most 8 components."""
    return 0 < len(components) <= _MAX_LEVELS and all(_COMPONENT.match(c) for c in components)


def _empty(ds: Dataset, keyword: str) -> bool:
    """No element or no value. Looks at the raw element: converting every value of every
    header costs more than copying the files."""
    tag = _TAGS.get(keyword) or _TAGS.setdefault(keyword, tag_for_keyword(keyword) or 0)
    if tag not in ds:
        return True
    value = ds.get_item(tag).value
    if value is None:
        return True
    if isinstance(value, bytes):
        return not value.strip(b" \x00")
    if isinstance(value, str):
        return not value.strip(" \x00")
    try:
        return len(value) == 0
    except TypeError:
        return False


_TAGS: dict[str, int] = {}


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


# Keys the DICOMDIR records need, by the entity whose record holds them.
_STUDY_KEYS = ("PatientID", "StudyDate", "StudyTime", "StudyID")
_SERIES_KEYS = ("Modality", "SeriesNumber")


class _Filler:
    """Values for keys the DICOMDIR needs and an object lacks (PS3.11 D.3.3, PS3.3 F.5).

    A value another object of the same study (series) carries is taken first, so every copy
    of a study agrees (DCMTK's dcmmkdir rejects a study whose objects disagree); only then is
    one generated, the same for every object of the study (series) and, being derived from
    UIDs and positions in the whole selection, the same on every disc of a set.
    """

    def __init__(self, disc: DiscContent, headers: Sequence[Dataset]) -> None:
        self.disc = disc
        self.headers = headers
        self.notes: dict[tuple[str, str], str] = {}
        self._known: dict[tuple[str, str], object] | None = None

    @property
    def known(self) -> dict[tuple[str, str], object]:
        # Collected on the first missing key only: most discs need no filling at all.
        if self._known is None:
            self._known = {}
            for ds in self.headers:
                study = str(ds.get("StudyInstanceUID", ""))
                series = str(ds.get("SeriesInstanceUID", ""))
                for keyword in _STUDY_KEYS:
                    if not _empty(ds, keyword):
                        self._known.setdefault((keyword, study), ds.get(keyword))
                for keyword in _SERIES_KEYS:
                    if not _empty(ds, keyword):
                        self._known.setdefault((keyword, series), ds.get(keyword))
        return self._known

    def _note(self, what: str, entity: str, keyword: str, value: object, taken: bool) -> None:
        key = (keyword, entity)
        if key not in self.notes:
            how = f"taken from another object of the {what}" if taken else "generated"
            self.notes[key] = f"{keyword} missing in {what} {entity}: {str(value)!r} ({how})"

    def fill(self, ds: Dataset) -> dict[str, object]:
        values: dict[str, object] = {}
        study = str(ds.get("StudyInstanceUID", ""))
        series = str(ds.get("SeriesInstanceUID", ""))
        sop = str(ds.get("SOPInstanceUID", ""))
        for keyword in _STUDY_KEYS + _SERIES_KEYS:
            if not _empty(ds, keyword):
                continue
            what, entity = ("study", study) if keyword in _STUDY_KEYS else ("series", series)
            value = self.known.get((keyword, entity))
            taken = value is not None
            if value is None:
                value = self._generate(ds, keyword, study, series)
                self.known[(keyword, entity)] = value
            values[keyword] = value
            self._note(what, entity, keyword, value, taken)
        if _empty(ds, "InstanceNumber"):
            number = self.disc.instance_position.get(sop, 1)
            values["InstanceNumber"] = number
            self._note("instance", sop, "InstanceNumber", number, False)
        return values

    def _generate(self, ds: Dataset, keyword: str, study: str, series: str) -> object:
        if keyword == "PatientID":
            name = str(ds.get("PatientName", "") or "")
            return "NOID" + _short_hash(name, str(ds.get("PatientBirthDate", "")))[:12].upper()
        if keyword == "StudyDate":
            fallbacks, default = ("SeriesDate", "AcquisitionDate", "ContentDate"), _NO_DATE
            return next((str(ds.get(k)) for k in fallbacks if not _empty(ds, k)), default)
        if keyword == "StudyTime":
            fallbacks, default = ("SeriesTime", "AcquisitionTime", "ContentTime"), _NO_TIME
            return next((str(ds.get(k)) for k in fallbacks if not _empty(ds, k)), default)
        if keyword == "StudyID":
            return "S" + _short_hash(study)[:8].upper()
        if keyword == "Modality":
            return "OT"
        return self.disc.series_position.get(series, 1)  # SeriesNumber


def _record(ds: Dataset, record_type: str) -> Dataset:
    """One directory record for the object, by pydicom's recorder for the type."""
    try:
        record = DIRECTORY_RECORDERS[record_type](ds)
    except ValueError as exc:
        raise FileSetError(
            f"{ds.get('SOPInstanceUID', '?')}: no {record_type} directory record: {exc}"
        ) from None
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = record_type
    if "SpecificCharacterSet" in ds:
        record.SpecificCharacterSet = ds.SpecificCharacterSet
    return record


def _leaf_record(ds: Dataset) -> Dataset:
    from pydicom.fileset import _four_level_record_type

    record_type = _four_level_record_type(ds)
    if record_type == "IMAGE" and not _empty(ds, "InstanceNumber"):
        # The common case, built element by element: pydicom's recorder plus keyword access
        # costs about a millisecond per image, as much as copying the image.
        leaf = Dataset()
        leaf.add_new(0x00041400, "UL", 0)
        leaf.add_new(0x00041410, "US", 0xFFFF)
        leaf.add_new(0x00041420, "UL", 0)
        leaf.add_new(0x00041430, "CS", "IMAGE")
        if 0x00080005 in ds:
            leaf[0x00080005] = ds[0x00080005]
        leaf[0x00200013] = ds[0x00200013]
    else:
        leaf = _record(ds, record_type)
    leaf.add_new(0x00041500, "CS", None)  # Referenced File ID, set when the name is known
    leaf.add_new(0x00041510, "UI", ds[0x00080016].value)
    leaf.add_new(0x00041511, "UI", ds[0x00080018].value)
    leaf.add_new(0x00041512, "UI", ds.file_meta[0x00020010].value)
    if record_type == "IMAGE" and 0x00080008 in ds:
        # PS3.11 D.3.3, Table D.3-2: Image Type is a key of the IMAGE record in STD-GEN.
        leaf[0x00080008] = ds[0x00080008]
    return leaf


def build_fileset(
    disc: DiscContent,
    archive: Archive | None,
    out: Path,
    *,
    profile: str = STD_GEN_CD,
    viewer_folder: Path | None = None,
    label: bool = True,
    institution: str = "",
    fileset_id: str | None = None,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BuiltFileSet:
    """Write the folder for one disc into ``out`` (emptied first: a build is redone whole,
    never resumed, so the folder is a scratch area until the DICOMDIR is written last).

    ``archive`` is not written to; it is accepted so callers can pass their context's.
    """
    del archive  # the records in ``disc`` carry the paths
    allowed = _profile_syntaxes(profile)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    fileset_id = _fileset_id(fileset_id, disc)
    fs = FileSet()
    fs.ID = fileset_id
    files: list[Path] = []
    summary = _Summary()
    count = len(disc.instances)
    headers: list[Dataset] = []
    for record in disc.instances:
        if should_stop is not None and should_stop():
            raise FileSetError("stopped")
        try:
            headers.append(dcmread(record.path, stop_before_pixels=True))
        except Exception as exc:  # pydicom raises assorted errors on a damaged file
            raise FileSetError(f"{record.path}: cannot be read: {exc}") from None
    if not headers:
        raise FileSetError("the disc has no instances")
    filler = _Filler(disc, headers)
    tree = _Tree(fs)
    folders: set[Path] = set()
    # Byte-for-byte copies run in threads (sendfile releases the GIL) while this thread reads
    # the next headers and builds records.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="fileset-copy") as pool:
        copies = []
        for n, (record, header) in enumerate(zip(disc.instances, headers, strict=True), 1):
            if should_stop is not None and should_stop():
                raise FileSetError("stopped")
            values = filler.fill(header)
            for keyword, value in values.items():
                setattr(header, keyword, value)
            source_ts = str(header.file_meta.get("TransferSyntaxUID", record.transfer_syntax))
            target_ts = source_ts if source_ts in allowed else ExplicitVRLittleEndian
            header.file_meta.TransferSyntaxUID = UID(target_ts)
            with config.disable_value_validation():  # values as read from the file
                components = tree.add(header)
            destination = out.joinpath(*components)
            if destination.parent not in folders:
                destination.parent.mkdir(parents=True, exist_ok=True)
                folders.add(destination.parent)
            if not values and source_ts == target_ts:
                # The archive's file is already what the disc needs.
                copies.append(pool.submit(shutil.copyfile, record.path, destination))
            else:
                _write_instance(record, destination, values, source_ts, target_ts)
            files.append(Path(*components))
            summary.add(header, record)
            if progress is not None:
                progress(n / count * 0.95)
        for copy in copies:
            copy.result()
    total_bytes = sum((out / path).stat().st_size for path in files)
    dicomdir = tree.encode()

    extras: list[tuple[str, bytes]] = [
        ("README.TXT", _readme(disc, summary, profile, institution, viewer_folder).encode()),
        ("INDEX.HTM", _index_html(disc, summary, profile, institution, viewer_folder).encode()),
    ]
    if label:
        extras.append(("LABEL.TXT", _label(disc, summary, institution).encode()))
    for name, data in extras:
        atomic_write_bytes(out / name, data)
        files.append(Path(name))
        total_bytes += len(data)
    if viewer_folder is not None:
        copied = _copy_viewer(Path(viewer_folder), out / VIEWER_FOLDER)
        files.extend(Path(VIEWER_FOLDER) / p for p in copied)
        total_bytes += sum((out / VIEWER_FOLDER / p).stat().st_size for p in copied)
    # Last: a folder with a DICOMDIR is a finished file-set.
    atomic_write_bytes(out / "DICOMDIR", dicomdir)
    files.insert(0, Path("DICOMDIR"))
    total_bytes += len(dicomdir)
    filled = list(filler.notes.values())
    for note in filled:
        LOG.info("%s: %s", disc.title, note)
    if progress is not None:
        progress(1.0)
    return BuiltFileSet(out, files, total_bytes, filled, disc, profile, fileset_id)


def _fileset_id(given: str | None, disc: DiscContent) -> str:
    """File-set ID (0004,1130): CS, up to 16 characters."""
    if given is None:
        given = f"{time.strftime('%Y%m%d')}_{disc.number}OF{disc.total}"
    value = re.sub(r"[^A-Z0-9_ ]", "_", given.upper())[:16]
    return value


def _write_instance(
    record: InstanceRecord,
    destination: Path,
    values: dict[str, object],
    source_ts: str,
    target_ts: str,
) -> None:
    """A copy of the archive's file with keys filled and/or in another transfer syntax."""
    try:
        ds = dcmread(record.path)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        if source_ts != target_ts:
            if UID(source_ts).is_compressed:
                lossy = UID(source_ts) in _LOSSY
                # The same instance in another transfer syntax (PS3.5 10): pydicom would
                # otherwise give the decoded copy a new SOP Instance UID.
                ds.decompress(generate_instance_uid=False)
                if lossy and _empty(ds, "LossyImageCompression"):
                    # Decoding does not undo a lossy compression: say so in the copy.
                    ds.LossyImageCompression = "01"
            ds.file_meta.TransferSyntaxUID = UID(target_ts)
        ds.save_as(destination, enforce_file_format=True)
    except FileSetError:
        raise
    except Exception as exc:  # decoders and pydicom raise assorted errors
        raise FileSetError(
            f"instance {record.sop_instance_uid} cannot be written as {target_ts}: {exc}"
        ) from None


_LOSSY = frozenset(
    {
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEG2000,
        UID("1.2.840.10008.1.2.4.81"),  # JPEG-LS near-lossless
        UID("1.2.840.10008.1.2.4.203"),  # HTJ2K
    }
)


def _copy_viewer(source: Path, target: Path) -> list[Path]:
    """Copy the viewer folder; never an autorun.inf (nothing on our discs starts by itself)."""
    if not source.is_dir():
        raise FileSetError(f"viewer folder {source} does not exist")
    copied: list[Path] = []
    for directory, subdirs, names in os.walk(source):
        subdirs.sort()
        relative = Path(directory).relative_to(source)
        (target / relative).mkdir(parents=True, exist_ok=True)
        for name in sorted(names):
            if name.lower() == "autorun.inf":
                LOG.info("viewer folder: %s left out (no autorun on patient media)", name)
                continue
            shutil.copyfile(Path(directory) / name, target / relative / name)
            copied.append(relative / name)
    return copied


# --- PDI text files ------------------------------------------------------------------------


@dataclass
class _Study:
    uid: str
    date: str = ""
    time: str = ""
    description: str = ""
    accession: str = ""
    modalities: list[str] = field(default_factory=list)
    series: set[str] = field(default_factory=set)
    images: int = 0


@dataclass
class _Patient:
    patient_id: str
    name: str = ""
    birth_date: str = ""
    sex: str = ""
    studies: dict[str, _Study] = field(default_factory=dict)


class _Summary:
    """Patients and studies on the disc, for README.TXT, INDEX.HTM and LABEL.TXT."""

    def __init__(self) -> None:
        self.patients: dict[str, _Patient] = {}
        self.institutions: list[str] = []

    def add(self, ds: Dataset, record: InstanceRecord) -> None:
        # Values are read once per patient, study and series: the rest only counts.
        patient_id = str(ds.PatientID)
        patient = self.patients.get(patient_id)
        if patient is None:
            patient = self.patients[patient_id] = _Patient(
                patient_id,
                str(ds.get("PatientName", "") or ""),
                str(ds.get("PatientBirthDate", "") or ""),
                str(ds.get("PatientSex", "") or ""),
            )
        study = patient.studies.get(record.study_uid)
        if study is None:
            study = patient.studies[record.study_uid] = _Study(
                record.study_uid,
                str(ds.get("StudyDate", "") or ""),
                str(ds.get("StudyTime", "") or ""),
                str(ds.get("StudyDescription", "") or ""),
                str(ds.get("AccessionNumber", "") or ""),
            )
        study.images += 1
        if record.series_uid in study.series:
            return
        study.series.add(record.series_uid)
        modality = str(ds.get("Modality", "") or "")
        if modality and modality not in study.modalities:
            study.modalities.append(modality)
        institution = str(ds.get("InstitutionName", "") or "")
        if institution and institution not in self.institutions:
            self.institutions.append(institution)


def person_name(value: str) -> str:
    """DICOM PN "DOE^JOHN^^DR" as "DOE, JOHN" (the alphabetic group only)."""
    parts = [p.strip() for p in value.split("=")[0].split("^")]
    family, given = (parts + ["", ""])[:2]
    rest = " ".join(p for p in parts[2:4] if p)
    name = f"{family}, {given}" if given else family
    return f"{name} {rest}".strip()


def _date(value: str) -> str:
    value = value.strip()
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or "unknown"


def _institution(given: str, summary: _Summary) -> str:
    return given or (summary.institutions[0] if summary.institutions else "")


def _study_lines(patient: _Patient) -> list[str]:
    lines = []
    for study in patient.studies.values():
        what = study.description or "(no description)"
        modalities = "/".join(study.modalities) or "?"
        lines.append(
            f"  {_date(study.date)}  {modalities:<8} {what}  "
            f"({len(study.series)} series, {study.images} images"
            + (f", accession {study.accession}" if study.accession else "")
            + ")"
        )
    return lines


def _readme(
    disc: DiscContent,
    summary: _Summary,
    profile: str,
    institution: str,
    viewer: Path | None,
) -> str:
    made_by = _institution(institution, summary)
    lines = [
        "PATIENT IMAGES ON DISC",
        "",
        f"This is {disc.title}."
        + (
            f" The studies below are spread over {disc.total} discs; each disc can be read"
            " on its own."
            if disc.total > 1
            else ""
        ),
        "",
    ]
    for patient in summary.patients.values():
        lines += [
            f"Patient:     {person_name(patient.name) or '(no name)'}",
            f"Patient ID:  {patient.patient_id}",
            f"Birth date:  {_date(patient.birth_date)}",
            "Studies on this disc:",
            *_study_lines(patient),
            "",
        ]
    lines += [
        "Contents",
        "  DICOMDIR     the DICOM directory of this disc (DICOM PS3.10, PS3.11)",
        f"  {DICOM_FOLDER}/       the images, DICOM Part 10 files, media profile {profile}",
        "  INDEX.HTM    this information as a web page",
        "  README.TXT   this file",
    ]
    if viewer is not None:
        lines.append(f"  {VIEWER_FOLDER}/      a DICOM viewer (start it yourself; nothing starts")
        lines.append("               automatically from this disc)")
    lines += [
        "",
        "How to read it: open the disc with any DICOM viewer and load its DICOMDIR. No program"
        " on this disc starts automatically.",
        "",
        f"Created by:  {made_by or 'the imaging department'}",
        f"Software:    dicom-appliance {__version__}",
        f"Created on:  {time.strftime('%Y-%m-%d')}",
        "",
        "This disc follows the IHE Portable Data for Imaging (PDI) profile.",
        "",
    ]
    return "\r\n".join(lines)


def _index_html(
    disc: DiscContent,
    summary: _Summary,
    profile: str,
    institution: str,
    viewer: Path | None,
) -> str:
    esc = html.escape
    made_by = _institution(institution, summary)
    body = [f"<h1>Patient images, {esc(disc.title)}</h1>"]
    for patient in summary.patients.values():
        body += [
            "<table>",
            f"<tr><th>Patient</th><td>{esc(person_name(patient.name) or '(no name)')}</td></tr>",
            f"<tr><th>Patient ID</th><td>{esc(patient.patient_id)}</td></tr>",
            f"<tr><th>Birth date</th><td>{esc(_date(patient.birth_date))}</td></tr>",
            "</table>",
            "<h2>Studies on this disc</h2>",
            "<table>",
            "<tr><th>Date</th><th>Modality</th><th>Description</th><th>Accession</th>"
            "<th>Series</th><th>Images</th></tr>",
        ]
        for study in patient.studies.values():
            body.append(
                f"<tr><td>{esc(_date(study.date))}</td>"
                f"<td>{esc('/'.join(study.modalities))}</td>"
                f"<td>{esc(study.description)}</td><td>{esc(study.accession)}</td>"
                f"<td>{len(study.series)}</td><td>{study.images}</td></tr>"
            )
        body.append("</table>")
    if disc.total > 1:
        body.append(
            f"<p>The studies are spread over {disc.total} discs; each disc can be read on"
            " its own.</p>"
        )
    body += [
        "<h2>What is on this disc</h2>",
        "<ul>",
        f"<li><code>DICOMDIR</code> and the <code>{DICOM_FOLDER}</code> folder: the images"
        f" (DICOM, media profile {esc(profile)}); load the DICOMDIR in a DICOM viewer.</li>",
        '<li><a href="README.TXT">README.TXT</a>: this information as plain text.</li>',
    ]
    if viewer is not None:
        body.append(
            f'<li><a href="{VIEWER_FOLDER}/">{VIEWER_FOLDER}</a>: a DICOM viewer. Nothing'
            " starts automatically from this disc; start the viewer yourself.</li>"
        )
    body += [
        "</ul>",
        f"<p>Created by {esc(made_by or 'the imaging department')} on"
        f" {time.strftime('%Y-%m-%d')} with dicom-appliance {esc(__version__)}"
        " (IHE Portable Data for Imaging).</p>",
    ]
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML Basic 1.1//EN"'
        ' "http://www.w3.org/TR/xhtml-basic/xhtml-basic11.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en">\n'
        '<head><meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />'
        f"<title>Patient images, {esc(disc.title)}</title></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _label(disc: DiscContent, summary: _Summary, institution: str) -> str:
    lines = []
    for patient in summary.patients.values():
        dates = sorted({_date(s.date) for s in patient.studies.values()})
        lines += [
            f"Patient:     {person_name(patient.name) or '(no name)'}",
            f"Birth date:  {_date(patient.birth_date)}",
            f"Study dates: {', '.join(dates)}",
        ]
    lines += [
        f"Institution: {_institution(institution, summary) or ''}".rstrip(),
        f"Created:     {time.strftime('%Y-%m-%d')}",
        "Content:     DICOM ONLY",
        f"Disc:        {disc.number} of {disc.total}",
        "",
    ]
    return "\r\n".join(lines)
