"""Importing patient media (File-set Reader): folders, ISO images and optical discs.

A source is read in two steps:

1. :func:`scan_source` finds the DICOM files and what they hold, without storing anything. A
   disc image or a drive is first extracted with xorriso into a scratch folder. The DICOMDIR
   is read with pydicom's ``FileSet`` (any application profile: STD-GEN-CD, STD-CTMR-*,
   STD-XABC-CD, STD-XA1K-*, STD-US-ID-*; the reader needs nothing profile specific beyond the
   transfer syntaxes the archive stores). When the DICOMDIR is missing, cannot be read, has
   broken record links, refers outside the source or to files that are not there, every file
   is scanned instead. Viewer folders are skipped. Each file's own header is the truth: the
   patients and studies shown are those of the files, not of the directory records.
2. The ``import`` job (target ``media``) stores each file into the archive, changing the
   patient's values first when the technologist chose so (:func:`reconcile_dataset`):
   ``keep`` stores the object as it is; ``map`` takes a local patient's ID, name, birth date
   and sex; ``new`` takes the values entered. Changed values are recorded in the Original
   Attributes Sequence (0400,0561) and a replaced Patient ID in the Other Patient IDs
   Sequence (0010,1002).

Media are untrusted input: nothing is read outside the source (DICOMDIR paths with ``..`` or
absolute paths, symbolic links leading out are refused), folders deeper than ``MAX_DEPTH``
are not entered, non-DICOM and truncated files are reported, and every problem is a line in
``MediaScan.problems`` rather than an exception. Files are only ever written into the scratch
folder and, through ``Archive.store_encoded``, into the archive.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import stat
import struct
import subprocess
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence as DicomSequence

from appliance import IMPLEMENTATION_VERSION_NAME
from appliance.archive import StoreRefused
from appliance.config import ConfigStore
from appliance.dicom_classes import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    IMPLICIT_VR_LE,
    STORAGE_SOP_CLASSES,
    SUPPORTED_TRANSFER_SYNTAXES,
)
from appliance.job_engine import AttemptFailed, RunContext
from appliance.jobs import FAILED, SUCCESS, WARNING, InstanceResult, JobError

if TYPE_CHECKING:
    from appliance.archive import Archive
    from appliance.job_engine import JobEngine

LOG = logging.getLogger("appliance.media")

#: The target of every import job: imports run one at a time (node_concurrency per target).
IMPORT_TARGET = "media"
#: Folders nested deeper than this are not entered (a disc of 10,000 nested folders).
MAX_DEPTH = 32
#: Problems listed one by one; past this, only counted.
MAX_PROBLEMS = 200
#: A DICOMDIR larger than this is not read (a real one for 5,000 images is about 3 MB).
DICOMDIR_MAX_BYTES = 64 * 2**20
#: DICOMDIR record nesting deeper than this is a broken (or hostile) directory.
MAX_RECORD_DEPTH = 16
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
XORRISO = "/usr/bin/xorriso"

#: Folders of viewers and PDI extras found on patient discs: never DICOM, often thousands of
#: files (a Java runtime); compared in upper case.
VIEWER_FOLDERS = frozenset(
    {
        "VIEWER",
        "VIEWERS",
        "CDVIEWER",
        "DICOMVIEWER",
        "JRE",
        "JAVA",
        "PLUGINS",
        "HELP",
        "XTR_CONT",
        "IHE_PDI",
        "WEASIS",
        "AUTORUN",
        "__MACOSX",
        "OSIRIX.APP",
        "HOROS.APP",
        "WIN32",
        "MACOS",
        "LINUX",
        "BIN",
        "LIB",
        "$RECYCLE.BIN",
        "SYSTEM VOLUME INFORMATION",
    }
)
#: Files that are expected on discs and are not DICOM: ignored, not reported one by one.
NON_DICOM_SUFFIXES = frozenset(
    ".txt .htm .html .xml .xsl .css .js .json .inf .ini .cfg .exe .dll .jar .bat .sh .cmd"
    " .ico .png .jpg .jpeg .gif .bmp .pdf .doc .rtf .app .dylib .so .zip .md5 .sha1".split()
)
IGNORED_NAMES = frozenset({"DICOMDIR", "README", "AUTORUN.INF", "DESKTOP.INI", ".DS_STORE"})

_UNSAFE_COMPONENT = re.compile(r"[/\\\x00]")


class MediaError(Exception):
    """The source cannot be read at all (no such folder, an image xorriso cannot open)."""


# --- scan results ------------------------------------------------------------------------------


@dataclass
class ScannedStudy:
    uid: str
    date: str = ""
    description: str = ""
    modalities: list[str] = field(default_factory=list)
    count: int = 0


@dataclass
class ScannedPatient:
    patient_id: str
    name: str = ""
    birth_date: str = ""
    sex: str = ""
    studies: list[ScannedStudy] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(study.count for study in self.studies)


@dataclass
class ScannedFile:
    """One DICOM file of the source; ``path`` is relative to the source's root (posix)."""

    path: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    patient_id: str
    study_uid: str
    size: int
    #: Why this file cannot be imported (truncated, transfer syntax not stored); "" if it can.
    error: str = ""


@dataclass
class MediaScan:
    source: str
    kind: str  # "folder", "iso" or "device"
    root: str  # the folder the files are under (the scratch extraction for an image)
    dicomdir: str = "missing"  # "read", "missing" or "broken"
    fileset_id: str = ""
    patients: list[ScannedPatient] = field(default_factory=list)
    files: list[ScannedFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    ignored: int = 0  # non-DICOM files expected on discs (README, INDEX.HTM, ...)
    skipped_folders: list[str] = field(default_factory=list)

    def as_dict(self, *, with_files: bool = False) -> dict[str, Any]:
        doc = asdict(self)
        doc["files"] = [asdict(f) for f in self.files] if with_files else len(self.files)
        doc["importable"] = sum(1 for f in self.files if not f.error)
        for patient, scanned in zip(doc["patients"], self.patients, strict=True):
            patient["count"] = scanned.count
        return doc


class _Problems:
    """Problem lines, the first MAX_PROBLEMS of them word for word, the rest counted."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.dropped = 0

    def add(self, text: str) -> None:
        if len(self.lines) < MAX_PROBLEMS:
            self.lines.append(text)
        else:
            self.dropped += 1

    def result(self) -> list[str]:
        if self.dropped:
            return [*self.lines, f"... and {self.dropped} more problem(s)"]
        return list(self.lines)


# --- opening a source --------------------------------------------------------------------------


def source_kind(path: str) -> str:
    """``folder``, ``iso`` or ``device`` for an existing source; MediaError otherwise."""
    if not path or not os.path.isabs(path):
        raise MediaError(f"{path!r}: give an absolute path (a folder, an ISO file or a device)")
    try:
        info = os.stat(path)
    except OSError as exc:
        raise MediaError(f"{path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        return "folder"
    if stat.S_ISBLK(info.st_mode) or path.startswith("/dev/"):
        return "device"
    if stat.S_ISREG(info.st_mode):
        return "iso"
    raise MediaError(f"{path}: not a folder, a disc image or a drive")


def extract(target: str, into: Path) -> list[str]:
    """Copy a disc image's or a drive's files into ``into`` with xorriso; returns problem
    lines (a damaged disc extracts in part). MediaError when nothing could be read."""
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    try:
        from appliance.optical import read_back  # the drive layer, when present
    except ImportError:
        read_back = None
    if read_back is not None:
        try:
            read_back(target, into)
            return []
        except Exception as exc:  # noqa: BLE001 - OpticalError and friends: said below
            if not any(into.iterdir()):
                raise MediaError(f"{target}: cannot read the disc: {exc}") from None
            return [f"{target}: the disc was read in part: {exc}"]
    result = subprocess.run(
        [XORRISO, "-osirrox", "on", "-indev", target, "-extract", "/", str(into)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if result.returncode == 0:
        return []
    reason = _xorriso_reason(result.stderr)
    if not any(into.iterdir()):
        raise MediaError(f"{target}: cannot read the disc: {reason}")
    return [f"{target}: the disc was read in part: {reason}"]


def _xorriso_reason(stderr: str) -> str:
    lines = [
        line.split(":", 2)[-1].strip()
        for line in stderr.splitlines()
        if ": FAILURE :" in line or ": SORRY :" in line or ": FATAL :" in line
    ]
    return "; ".join(lines[:3]) or (stderr.strip().splitlines() or ["xorriso failed"])[-1]


def open_source(path: str, scratch: Path) -> tuple[Path, str, list[str]]:
    """The folder to read for ``path``, its kind and the extraction's problems. An image or
    a drive is extracted into ``scratch/disc`` once; a finished extraction is marked so a
    restarted job reads it again without a second copy."""
    kind = source_kind(path)
    if kind == "folder":
        return Path(os.path.realpath(path)), kind, []
    disc = scratch / "disc"
    marker = scratch / "extracted"
    if marker.exists() and disc.is_dir():
        return Path(os.path.realpath(disc)), kind, []
    marker.unlink(missing_ok=True)
    problems = extract(path, disc)
    marker.write_text("\n".join(problems))
    return Path(os.path.realpath(disc)), kind, problems


# --- DICOMDIR ----------------------------------------------------------------------------------


def _inside(root: Path, candidate: str) -> bool:
    return candidate == str(root) or candidate.startswith(str(root) + os.sep)


def _file_id(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(part) for part in value]  # type: ignore[attr-defined]


def safe_reference(root: Path, components: list[str]) -> tuple[Path | None, str]:
    """The file a DICOMDIR Referenced File ID names, inside ``root``; (None, why) when it is
    unsafe (``..``, an absolute path, a separator in a component, a link leading out) or
    missing. Names are matched without regard to case when the exact name is not there
    (discs read without Rock Ridge show lower-case names)."""
    if not components:
        return None, "empty Referenced File ID"
    for part in components:
        if part in ("", ".", "..") or _UNSAFE_COMPONENT.search(part) or part.startswith("~"):
            return None, "refers outside the file-set"
    current = root
    for part in components:
        exact = current / part
        if os.path.lexists(exact):
            current = exact
            continue
        try:
            names = {name.upper(): name for name in os.listdir(current)}
        except OSError:
            return None, "is not on the medium"
        if part.upper() not in names:
            return None, "is not on the medium"
        current = current / names[part.upper()]
    real = os.path.realpath(current)
    if not _inside(root, real):
        return None, "leads outside the file-set (a symbolic link)"
    if not os.path.isfile(real):
        return None, "is not a file"
    return Path(real), ""


def _walk_records(ds: Dataset) -> str:
    """Check the DICOMDIR's record links before pydicom follows them: every offset names a
    record, no record is reached twice (a loop would never end), nesting is bounded. Returns
    why the links are broken, or ""."""
    records = {int(r.seq_item_tell): r for r in ds.DirectoryRecordSequence}
    first = ds.get("OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity")
    if not records:
        return "it lists no records"
    if not first:
        return "it has no first record"
    seen: set[int] = set()
    pending: list[tuple[int, int]] = [(int(first), 0)]
    while pending:
        offset, depth = pending.pop()
        while offset:
            if offset not in records:
                return f"a record link points to offset {offset}, where no record is"
            if offset in seen:
                return f"the record at offset {offset} is linked twice (a loop)"
            if depth > MAX_RECORD_DEPTH:
                return f"records are nested deeper than {MAX_RECORD_DEPTH} levels"
            seen.add(offset)
            record = records[offset]
            lower = int(record.get("OffsetOfReferencedLowerLevelDirectoryEntity", 0) or 0)
            if lower:
                pending.append((lower, depth + 1))
            offset = int(record.get("OffsetOfTheNextDirectoryRecord", 0) or 0)
    return ""


def read_dicomdir(
    root: Path, path: Path, problems: _Problems
) -> tuple[list[tuple[Path, str]] | None, str]:
    """The files the DICOMDIR references, with the SOP Instance UID its record names, and
    the File-set ID; None when the DICOMDIR cannot be trusted (the reason is in problems)."""
    from pydicom.fileset import FileSet

    name = path.relative_to(root).as_posix()
    if path.stat().st_size > DICOMDIR_MAX_BYTES:
        problems.add(f"{name}: larger than {DICOMDIR_MAX_BYTES // 2**20} MB; not read")
        return None, ""
    try:
        ds = dcmread(path)
        sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
        if sop_class != MEDIA_STORAGE_DIRECTORY:
            problems.add(f"{name}: not a Media Storage Directory (SOP class {sop_class})")
            return None, ""
        broken = _walk_records(ds) if "DirectoryRecordSequence" in ds else "it lists no records"
    except Exception as exc:  # noqa: BLE001 - a hostile DICOMDIR raises anything
        problems.add(f"{name}: cannot be read: {exc}")
        return None, ""
    if broken:
        problems.add(f"{name} is broken: {broken}")
        return None, ""
    fileset_id = str(ds.get("FileSetID", "") or "").strip()
    trusted = True
    resolved: dict[int, tuple[Path, str]] = {}
    for record in ds.DirectoryRecordSequence:
        if "ReferencedFileID" not in record:
            continue
        components = _file_id(record.ReferencedFileID)
        target, why = safe_reference(root, components)
        if target is None:
            shown = "\\".join(components)[:200]
            problems.add(f"{name}: the record for {shown!r} {why}; not followed")
            trusted = False
            # pydicom must not follow it either: without a file ID the leaf record is dropped.
            del record.ReferencedFileID
            continue
        relative = target.relative_to(root).parts
        record.ReferencedFileID = list(relative) if len(relative) > 1 else relative[0]
        uid = str(record.get("ReferencedSOPInstanceUIDInFile", "") or "")
        resolved[int(record.seq_item_tell)] = (target, uid)
    try:
        fileset = FileSet()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fileset.load(ds)
        found = [
            (Path(instance.path), str(getattr(instance, "ReferencedSOPInstanceUIDInFile", "")))
            for instance in fileset
        ]
    except Exception as exc:  # noqa: BLE001 - pydicom's own checks of the directory
        problems.add(f"{name}: pydicom cannot load it as a file-set: {exc}")
        return None, fileset_id
    if not found:
        problems.add(f"{name}: references no file that can be read")
        return None, fileset_id
    if not trusted:
        return None, fileset_id
    files: list[tuple[Path, str]] = []
    for target, uid in found:
        real = Path(os.path.realpath(target))
        if not _inside(root, str(real)):  # checked above; pydicom re-joins the path
            return None, fileset_id
        files.append((real, uid))
    return files, fileset_id


def find_dicomdir(root: Path) -> Path | None:
    """The DICOMDIR at the root of the source, or in a folder just below (some discs keep
    the file-set in ``DICOM/`` or ``Storage/``); never a link."""
    candidates = [root]
    try:
        candidates += sorted(
            p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and _not_viewer(p.name)
        )
    except OSError:
        return None
    for folder in candidates:
        try:
            for entry in os.scandir(folder):
                if entry.name.upper() == "DICOMDIR" and entry.is_file(follow_symlinks=False):
                    return Path(entry.path)
        except OSError:
            continue
    return None


def _not_viewer(name: str) -> bool:
    return name.upper() not in VIEWER_FOLDERS


# --- scanning every file -----------------------------------------------------------------------


def walk_files(root: Path, problems: _Problems, skipped: list[str]) -> tuple[list[Path], int]:
    """Every candidate DICOM file below ``root`` (real paths inside it), without following
    links out, entering viewer folders or going deeper than MAX_DEPTH; and the number of
    non-DICOM files ignored."""
    found: list[Path] = []
    seen: set[str] = set()
    ignored = 0
    too_deep = False
    stack: list[tuple[str, int]] = [(str(root), 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            problems.add(f"{_rel(root, folder)}: cannot be listed: {exc.strerror or exc}")
            continue
        subfolders: list[str] = []
        for entry in entries:
            relative = _rel(root, entry.path)
            try:
                if entry.is_symlink():
                    real = os.path.realpath(entry.path)
                    if not _inside(root, real):
                        problems.add(f"{relative}: a link to {real}, outside the source; skipped")
                    elif os.path.isfile(real) and real not in seen:
                        seen.add(real)
                        found.append(Path(real))
                    continue  # a link to a folder inside is read where it really is
                if entry.is_dir(follow_symlinks=False):
                    if not _not_viewer(entry.name):
                        skipped.append(relative)
                    elif depth + 1 > MAX_DEPTH:
                        if not too_deep:
                            problems.add(
                                f"{relative}: folders nested deeper than {MAX_DEPTH} levels;"
                                " not read below"
                            )
                        too_deep = True
                    else:
                        subfolders.append(entry.path)
                    continue
                if not entry.is_file(follow_symlinks=False):
                    problems.add(f"{relative}: not a regular file; skipped")
                    continue
            except OSError as exc:
                problems.add(f"{relative}: {exc.strerror or exc}")
                continue
            name = entry.name.upper()
            if name in IGNORED_NAMES or os.path.splitext(name)[1].lower() in NON_DICOM_SUFFIXES:
                ignored += 1
                continue
            if entry.path not in seen:
                seen.add(entry.path)
                found.append(Path(entry.path))
        stack.extend((path, depth + 1) for path in reversed(subfolders))
    return found, ignored


def _rel(root: Path, path: str) -> str:
    try:
        return Path(path).relative_to(root).as_posix() or "."
    except ValueError:
        return path


_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())


#: Nesting of sequences deeper than this is not walked (a hostile file).
MAX_NESTING = 64


def structure_complete(fp: Any, start: int, size: int, transfer_syntax: str) -> bool:
    """Whether the data set from ``start`` to the end of the file is whole: every element,
    sequence item and pixel data fragment ends within the file, and the last one ends where
    the file does. Only headers are read. A file cut anywhere (in its header or its pixels)
    fails; pydicom alone reads a value cut short without complaint."""
    endian = ">" if transfer_syntax == EXPLICIT_VR_BE else "<"
    implicit = transfer_syntax == IMPLICIT_VR_LE
    try:
        end = _walk_elements(fp, start, size, implicit, endian, 0, in_item=False)
    except (struct.error, OSError):
        return False
    return end == size


def _walk_elements(
    fp: Any, position: int, end: int, implicit: bool, endian: str, depth: int, *, in_item: bool
) -> int | None:
    """Walk the elements from ``position``; the position after them (after the Item
    Delimitation Item when ``in_item``), None when the structure is broken."""
    while position < end:
        if position + 8 > end:
            return None
        fp.seek(position)
        head = fp.read(12)
        group, element = struct.unpack_from(endian + "HH", head)
        if group == 0xFFFE:
            if in_item and element == 0xE00D:
                return position + 8
            return None
        sequence_implicit = implicit
        if implicit:
            header, (length,) = 8, struct.unpack_from(endian + "I", head, 4)
        elif head[4:6] in _LONG_VRS:
            if len(head) < 12:
                return None
            header, (length,) = 12, struct.unpack_from(endian + "I", head, 8)
            # An undefined-length UN holds implicit VR little endian items (PS3.5 6.2.2).
            sequence_implicit = head[4:6] == b"UN"
        else:
            header, (length,) = 8, struct.unpack_from(endian + "H", head, 6)
        position += header
        if length == 0xFFFFFFFF:
            found = _walk_items(fp, position, end, sequence_implicit, endian, depth + 1)
            if found is None:
                return None
            position = found
        else:
            position += length
            if position > end:
                return None
    return None if in_item else position


def _walk_items(
    fp: Any, position: int, end: int, implicit: bool, endian: str, depth: int
) -> int | None:
    """Walk the items of an undefined-length sequence (or encapsulated pixel data) to its
    Sequence Delimitation Item."""
    if depth > MAX_NESTING:
        return None
    while position + 8 <= end:
        fp.seek(position)
        group, element, length = struct.unpack(endian + "HHI", fp.read(8))
        position += 8
        if (group, element) == (0xFFFE, 0xE0DD):
            return position
        if (group, element) != (0xFFFE, 0xE000):
            return None
        if length == 0xFFFFFFFF:
            found = _walk_elements(fp, position, end, implicit, endian, depth + 1, in_item=True)
            if found is None:
                return None
            position = found
        else:
            position += length
            if position > end:
                return None
    return None


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed value reads as empty
        return ""
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def read_file(root: Path, path: Path, problems: _Problems) -> tuple[ScannedFile | None, Any]:
    """The header of one candidate file; None when it is not DICOM or cannot be read (said
    in problems). Also returns the header's patient/study values."""
    relative = _rel(root, str(path))
    try:
        size = path.stat().st_size
        with open(path, "rb") as fp:
            head = fp.read(132)
            if len(head) < 132 or head[128:132] != b"DICM":
                problems.add(f"{relative}: not a DICOM file; skipped")
                return None, None
            fp.seek(0)
            ds = dcmread(fp, stop_before_pixels=True)
            meta = ds.file_meta
            transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "")
            fp.seek(0)
            start = _dataset_offset(fp.read(min(size, 1 << 16)))
            # A deflated data set is checked when it is inflated on import.
            complete = transfer_syntax == DEFLATED_EXPLICIT_VR_LE or structure_complete(
                fp, start, size, transfer_syntax
            )
    except Exception as exc:  # noqa: BLE001 - truncated or garbled headers raise anything
        problems.add(f"{relative}: cannot be read as DICOM ({_short(exc)}); skipped")
        return None, None
    sop_class = _text(ds, "SOPClassUID") or str(meta.get("MediaStorageSOPClassUID", "") or "")
    sop_instance = _text(ds, "SOPInstanceUID") or str(
        meta.get("MediaStorageSOPInstanceUID", "") or ""
    )
    if sop_class == MEDIA_STORAGE_DIRECTORY:
        return None, None  # a DICOMDIR of a nested file-set
    if not sop_instance or not sop_class:
        problems.add(f"{relative}: no SOP Class or Instance UID; skipped")
        return None, None
    if sop_class not in STORAGE_SOP_CLASSES:
        problems.add(
            f"{relative}: {_class_name(sop_class)} objects are not stored by this appliance;"
            " left out"
        )
        return None, None
    error = ""
    if not complete:
        error = "the file is truncated (a data element ends past the end of the file)"
    elif transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        error = f"transfer syntax {_class_name(transfer_syntax)} is not stored by this appliance"
    if error:
        problems.add(f"{relative}: {error}")
    scanned = ScannedFile(
        path=relative,
        sop_instance_uid=sop_instance,
        sop_class_uid=sop_class,
        transfer_syntax=transfer_syntax,
        patient_id=_text(ds, "PatientID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        size=size,
        error=error,
    )
    return scanned, ds


def _short(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _class_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def scan_folder(root: Path, *, source: str, kind: str, problems: Iterable[str] = ()) -> MediaScan:
    """Scan the files under ``root`` (already a real path)."""
    found = _Problems()
    for line in problems:
        found.add(line)
    scan = MediaScan(source=source, kind=kind, root=str(root))
    dicomdir = find_dicomdir(root)
    referenced: list[tuple[Path, str]] | None = None
    if dicomdir is not None:
        referenced, scan.fileset_id = read_dicomdir(root, dicomdir, found)
        scan.dicomdir = "read" if referenced is not None else "broken"
        if referenced is None:
            found.add("the DICOMDIR cannot be trusted: every file is read instead")
    if referenced is None:
        paths, scan.ignored = walk_files(root, found, scan.skipped_folders)
        referenced = [(path, "") for path in paths]
    patients: dict[str, ScannedPatient] = {}
    studies: dict[tuple[str, str], ScannedStudy] = {}
    by_uid: dict[str, int] = {}
    for path, expected in referenced:
        scanned, ds = read_file(root, path, found)
        if scanned is None:
            continue
        if scanned.sop_instance_uid in by_uid:
            position = by_uid[scanned.sop_instance_uid]
            first = scan.files[position]
            if first.error and not scanned.error:
                # A whole copy of an instance whose first copy is damaged: import this one.
                scan.files[position] = scanned
                found.add(f"{first.path}: a whole copy is {scanned.path}; that one is used")
            else:
                found.add(f"{scanned.path}: the same instance as {first.path}; left out")
            continue
        if expected and expected != scanned.sop_instance_uid:
            found.add(f"{scanned.path}: the DICOMDIR names another instance; the file's is used")
        by_uid[scanned.sop_instance_uid] = len(scan.files)
        scan.files.append(scanned)
        patient = patients.get(scanned.patient_id)
        if patient is None:
            patient = patients[scanned.patient_id] = ScannedPatient(
                patient_id=scanned.patient_id,
                name=_text(ds, "PatientName"),
                birth_date=_text(ds, "PatientBirthDate"),
                sex=_text(ds, "PatientSex"),
            )
        elif _text(ds, "PatientName") and _text(ds, "PatientName") != patient.name:
            found.add(
                f"{scanned.path}: patient ID {scanned.patient_id!r} with another name "
                f"({_text(ds, 'PatientName')!r}, first seen {patient.name!r})"
            )
        key = (scanned.patient_id, scanned.study_uid)
        study = studies.get(key)
        if study is None:
            study = studies[key] = ScannedStudy(
                uid=scanned.study_uid,
                date=_text(ds, "StudyDate"),
                description=_text(ds, "StudyDescription"),
            )
            patient.studies.append(study)
        modality = _text(ds, "Modality")
        if modality and modality not in study.modalities:
            study.modalities.append(modality)
        study.count += 1
    scan.patients = list(patients.values())
    scan.problems = found.result()
    return scan


def scan_source(path: str, scratch: Path) -> MediaScan:
    """Scan a folder, an ISO file or a drive (extracted into ``scratch``)."""
    root, kind, problems = open_source(path, scratch)
    return scan_folder(root, source=path, kind=kind, problems=problems)


# --- local patients ----------------------------------------------------------------------------


def _name_key(name: str) -> str:
    """A person name compared without case, spacing or empty trailing components."""
    parts = [" ".join(part.split()).upper() for part in name.split("=")[0].split("^")]
    while parts and not parts[-1]:
        parts.pop()
    return "^".join(parts)


def local_matches(archive: Archive, patient: ScannedPatient) -> list[dict[str, Any]]:
    """Local patients that may be the disc's patient: the same Patient ID first, then the
    same name and birth date (under another ID)."""
    from appliance.query import connect, index_path

    db = connect(index_path(archive))
    try:
        rows: list[tuple[str, ...]] = []
        if patient.patient_id:
            rows += [
                (*row, "id")
                for row in db.execute(
                    "SELECT patient_id, patient_name, birth_date, sex FROM patients"
                    " WHERE patient_id=?",
                    (patient.patient_id,),
                )
            ]
        if patient.name and patient.birth_date:
            key = _name_key(patient.name)
            for row in db.execute(
                "SELECT patient_id, patient_name, birth_date, sex FROM patients"
                " WHERE birth_date=? AND patient_id<>?",
                (patient.birth_date, patient.patient_id),
            ):
                if _name_key(row[1] or "") == key:
                    rows.append((*row, "name+birth date"))
        matches = []
        for patient_id, name, birth_date, sex, how in rows:
            count = db.execute(
                "SELECT COUNT(*) FROM studies WHERE patient_id=?", (patient_id,)
            ).fetchone()[0]
            matches.append(
                {
                    "patient_id": patient_id,
                    "patient_name": name or "",
                    "birth_date": birth_date or "",
                    "sex": sex or "",
                    "match": how,
                    "studies": int(count),
                }
            )
        return matches
    finally:
        db.close()


def scan_summary(scan: MediaScan, archive: Archive | None) -> dict[str, Any]:
    """The scan for the console and the CLI: patients with their local matches."""
    doc = scan.as_dict()
    for patient, scanned in zip(doc["patients"], scan.patients, strict=True):
        patient["local_matches"] = local_matches(archive, scanned) if archive is not None else []
    return doc


# --- reconciliation ----------------------------------------------------------------------------

RECONCILE_ACTIONS = ("keep", "map", "new")
#: The patient attributes a reconciliation may change, with their keyword in a choice.
PATIENT_FIELDS = (
    ("PatientID", "patient_id"),
    ("PatientName", "patient_name"),
    ("PatientBirthDate", "birth_date"),
    ("PatientSex", "sex"),
)


def normalise_choice(
    choice: object, archive: Archive | None, *, where: str = "reconcile"
) -> dict[str, Any]:
    """A checked reconciliation choice; JobError says what is wrong."""
    if choice is None:
        return {"action": "keep"}
    if isinstance(choice, str):
        choice = {"action": choice}
    if not isinstance(choice, dict):
        raise JobError(f"{where}: a choice is an object with an action (keep, map, new)")
    action = choice.get("action")
    if action not in RECONCILE_ACTIONS:
        raise JobError(f"{where}: action must be keep, map or new, not {action!r}")
    if action == "keep":
        return {"action": "keep"}
    patient_id = choice.get("patient_id")
    if not isinstance(patient_id, str) or not patient_id.strip():
        raise JobError(f"{where}: {action} needs a patient_id")
    patient_id = patient_id.strip()
    if len(patient_id) > 64 or "\\" in patient_id:
        raise JobError(f"{where}: patient_id must be at most 64 characters, without '\\'")
    if action == "map":
        local = archive.patient(patient_id) if archive is not None else None
        if archive is not None and local is None:
            raise JobError(f"{where}: the archive has no patient {patient_id!r} to map to")
        values = {"action": "map", "patient_id": patient_id}
        if local is not None:
            values.update(
                patient_name=local.get("patient_name") or "",
                birth_date=local.get("birth_date") or "",
                sex=local.get("sex") or "",
            )
        return values
    clean: dict[str, Any] = {"action": "new", "patient_id": patient_id}
    name = choice.get("patient_name")
    if not isinstance(name, str) or not name.strip():
        raise JobError(f"{where}: new needs a patient_name (FAMILY^GIVEN)")
    if len(name) > 64 or "\\" in name:
        raise JobError(f"{where}: patient_name must be at most 64 characters, without '\\'")
    clean["patient_name"] = name.strip()
    birth = choice.get("birth_date")
    if birth not in (None, ""):
        if not isinstance(birth, str) or not re.fullmatch(r"\d{8}", birth.strip()):
            raise JobError(f"{where}: birth_date must be YYYYMMDD")
        clean["birth_date"] = birth.strip()
    sex = choice.get("sex")
    if sex not in (None, ""):
        if not isinstance(sex, str) or sex.strip().upper() not in ("M", "F", "O"):
            raise JobError(f"{where}: sex must be M, F or O")
        clean["sex"] = sex.strip().upper()
    return clean


def reconcile_dataset(
    ds: Dataset, choice: dict[str, Any], *, source: str = "", now: float | None = None
) -> list[str]:
    """Change the patient's values of ``ds`` as ``choice`` says (a normalised choice);
    returns the keywords changed. The values replaced go into a new item of the Original
    Attributes Sequence; a replaced Patient ID also into the Other Patient IDs Sequence."""
    if choice.get("action", "keep") == "keep":
        return []
    modified = Dataset()
    changed: list[str] = []
    for keyword, key in PATIENT_FIELDS:
        if key not in choice:
            continue
        new = str(choice[key])
        old = _text(ds, keyword)
        if old == new:
            continue
        if keyword in ds:
            modified[keyword] = copy.deepcopy(ds[keyword])
        else:
            setattr(modified, keyword, None)  # it had no value: recorded as empty
        setattr(ds, keyword, new)
        changed.append(keyword)
    if not changed:
        return []
    if "PatientID" in changed:
        # The old issuer names the old ID's domain, not the new one's.
        for keyword in ("IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence"):
            if keyword in ds:
                modified[keyword] = copy.deepcopy(ds[keyword])
                del ds[keyword]
                changed.append(keyword)
        old_id = Dataset()
        old_id.PatientID = str(modified.get("PatientID") or "")
        if "IssuerOfPatientID" in modified:
            old_id.IssuerOfPatientID = modified.IssuerOfPatientID
        old_id.TypeOfPatientID = "TEXT"
        others = ds.get("OtherPatientIDsSequence")
        if others is None:
            ds.OtherPatientIDsSequence = DicomSequence([old_id])
        elif not any(str(item.get("PatientID", "")) == old_id.PatientID for item in others):
            others.append(old_id)
    item = Dataset()
    item.ModifiedAttributesSequence = DicomSequence([modified])
    item.AttributeModificationDateTime = time.strftime(
        "%Y%m%d%H%M%S", time.localtime(now if now is not None else time.time())
    )
    item.ModifyingSystem = IMPLEMENTATION_VERSION_NAME
    item.SourceOfPreviousValues = source[-64:]  # LO: the end of a path names the disc
    item.ReasonForTheAttributeModification = "COERCE"
    original = ds.get("OriginalAttributesSequence")
    if original is None:
        ds.OriginalAttributesSequence = DicomSequence([item])
    else:
        original.append(item)
    return changed


# --- storing -----------------------------------------------------------------------------------


def _dataset_offset(blob: bytes) -> int:
    """The offset where the data set starts after preamble and File Meta Information."""
    group_length = struct.unpack_from("<HH2sHI", blob, 132)
    if group_length[:2] != (0x0002, 0x0000):
        # No group length: walk the meta elements (explicit VR little endian).
        position = 132
        while position + 8 <= len(blob):
            group, _element = struct.unpack_from("<HH", blob, position)
            if group != 0x0002:
                return position
            vr = blob[position + 4 : position + 6]
            if vr in _LONG_VRS:
                (length,) = struct.unpack_from("<I", blob, position + 8)
                position += 12 + length
            else:
                (length,) = struct.unpack_from("<H", blob, position + 6)
                position += 8 + length
        return position
    return 132 + 12 + group_length[4]


def import_file(
    archive: Archive,
    path: Path,
    scanned: ScannedFile,
    choice: dict[str, Any],
    *,
    source: str,
) -> tuple[str, str]:
    """Store one file of the medium; returns (outcome, note): ``success`` or ``warning``
    (already in the archive and kept). Raises StoreRefused or OSError / ValueError."""
    blob = path.read_bytes()
    transfer_syntax = scanned.transfer_syntax
    if choice.get("action", "keep") == "keep":
        encoded = blob[_dataset_offset(blob) :]
        changed: list[str] = []
    else:
        ds = dcmread(BytesIO(blob))
        changed = reconcile_dataset(ds, choice, source=source)
        if changed:
            out = BytesIO()
            dcmwrite(out, ds, enforce_file_format=True)
            written = out.getvalue()
            encoded = written[_dataset_offset(written) :]
            transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
        else:
            encoded = blob[_dataset_offset(blob) :]
    outcome = archive.store_encoded(
        encoded,
        sop_class_uid=scanned.sop_class_uid,
        sop_instance_uid=scanned.sop_instance_uid,
        transfer_syntax=transfer_syntax,
    )
    if outcome.kept_existing:
        return WARNING, "already in the archive; the stored copy was kept"
    note = f"changed {', '.join(changed)}" if changed else ""
    return SUCCESS, note


def _scan_doc(scan: MediaScan) -> dict[str, Any]:
    return {
        "root": scan.root,
        "kind": scan.kind,
        "dicomdir": scan.dicomdir,
        "fileset_id": scan.fileset_id,
        "files": {f.sop_instance_uid: asdict(f) for f in scan.files},
    }


def choice_for(reconcile: dict[str, Any], patient_id: str) -> dict[str, Any]:
    return reconcile.get(patient_id) or reconcile.get("*") or {"action": "keep"}


def import_summary(scan: MediaScan) -> dict[str, Any]:
    first = scan.patients[0] if scan.patients else None
    summary: dict[str, Any] = {"source": scan.source, "files": len(scan.files)}
    if first is not None:
        study = first.studies[0] if first.studies else None
        summary.update(
            patient_name=first.name,
            patient_id=first.patient_id,
            patients=len(scan.patients),
            studies=sum(len(p.studies) for p in scan.patients),
            study_description=study.description if study else "",
            study_date=study.date if study else "",
        )
    if scan.problems:
        summary["problems"] = len(scan.problems)
    return summary


# --- the import job ----------------------------------------------------------------------------


def scratch_for(data_dir: Path, job_id: int | str) -> Path:
    return Path(data_dir) / "spool" / f"import-{job_id}"


def make_validator(archive: Archive | None) -> Any:
    def validate_import(
        target: str,
        params: dict[str, Any],
        config: ConfigStore,
        instances: Any = (),
    ) -> None:
        if target != IMPORT_TARGET:
            raise JobError(f"import jobs have the target {IMPORT_TARGET!r}, not {target!r}")
        source = params.get("source")
        if not isinstance(source, str):
            raise JobError("source is required: a folder, an ISO file or a device")
        try:
            source_kind(source)
        except MediaError as exc:
            raise JobError(str(exc)) from None
        reconcile = params.get("reconcile") or {}
        if not isinstance(reconcile, dict):
            raise JobError("reconcile must be an object: disc patient ID -> choice")
        clean = {
            str(key): normalise_choice(value, archive, where=f"reconcile[{key!r}]")
            for key, value in reconcile.items()
        }
        params.clear()
        params.update(source=source, reconcile=clean)

    return validate_import


def run_import(ctx: RunContext) -> None:
    job = ctx.job
    source = str(job.params.get("source", ""))
    scratch = scratch_for(ctx.data_dir, job.id)
    scratch.mkdir(parents=True, exist_ok=True)
    plan = job.params.get("scan")
    ctx.set_stage("reading the medium")
    try:
        root, kind, extraction = open_source(source, scratch)
    except MediaError as exc:
        # A drive without its disc, an image gone: the operator may put it back.
        raise AttemptFailed(str(exc), retryable=source_kind_or_none(source) == "device") from None
    if not plan:
        ctx.set_stage("scanning")
        scan = scan_folder(root, source=source, kind=kind, problems=extraction)
        with ctx.lock:
            # Kept with the job: a later attempt or a restart imports exactly these files.
            job.params["scan"] = _scan_doc(scan)
            job.summary = import_summary(scan)
        for line in scan.problems:
            ctx.log(f"problem: {line}")
        ctx.add_instances(
            [
                InstanceResult(
                    f.sop_instance_uid,
                    path=f.path,
                    sop_class_uid=f.sop_class_uid,
                )
                for f in scan.files
            ]
        )
        ctx.log(
            f"{len(scan.files)} DICOM file(s) on the medium, {len(scan.patients)} patient(s); "
            f"DICOMDIR {scan.dicomdir}"
        )
        plan = job.params["scan"]
    files = {uid: ScannedFile(**doc) for uid, doc in plan["files"].items()}
    reconcile = job.params.get("reconcile") or {}
    total = len(files)
    for number, (uid, scanned) in enumerate(files.items(), start=1):
        before = ctx.instance(uid) or InstanceResult(uid, path=scanned.path)
        if before.done or (before.status == FAILED and not before.retryable):
            continue
        if ctx.should_stop():
            return
        ctx.set_stage(f"importing {number} of {total}")
        if scanned.error:
            ctx.record(replace(before, status=FAILED, error=scanned.error, retryable=False))
            continue
        path, why = safe_reference(root, scanned.path.split("/"))
        if path is None:
            ctx.record(
                replace(before, status=FAILED, error=f"{scanned.path} {why}", retryable=False)
            )
            continue
        choice = choice_for(reconcile, scanned.patient_id)
        try:
            outcome, note = import_file(ctx.archive, path, scanned, choice, source=source)
        except StoreRefused as exc:
            retryable = exc.status == 0xA700  # out of resources: room may be made
            ctx.record(
                replace(
                    before,
                    status=FAILED,
                    error=exc.comment,
                    retryable=retryable,
                    status_code=f"0x{exc.status:04X}",
                )
            )
            if retryable:
                raise AttemptFailed(f"the archive refused {scanned.path}: {exc.comment}") from None
            continue
        except Exception as exc:  # noqa: BLE001 - a file that cannot be parsed or re-encoded
            ctx.record(replace(before, status=FAILED, error=_short(exc), retryable=False))
            continue
        ctx.record(replace(before, status=outcome, error=note, retryable=False))
    if not job.outstanding():
        shutil.rmtree(scratch, ignore_errors=True)
        counts = job.counts()
        ctx.log(f"{counts.get('success', 0) + counts.get('warning', 0)} of {total} imported")


def source_kind_or_none(path: str) -> str | None:
    try:
        return source_kind(path)
    except MediaError:
        return "device" if path.startswith("/dev/") else None


def register_import(engine: JobEngine, archive: Archive) -> None:
    engine.register("import", run_import, validate=make_validator(archive))


# --- without a daemon --------------------------------------------------------------------------


def import_directly(
    archive: Archive,
    scan: MediaScan,
    reconcile: dict[str, Any],
    *,
    on_result: Callable[[ScannedFile, str, str], None] | None = None,
) -> list[dict[str, Any]]:
    """Import a scanned source once, in order (the CLI without a daemon); returns one result
    per file."""
    root = Path(scan.root)
    results = []
    for scanned in scan.files:
        outcome, note = FAILED, scanned.error
        if not scanned.error:
            path, why = safe_reference(root, scanned.path.split("/"))
            if path is None:
                note = f"{scanned.path} {why}"
            else:
                choice = choice_for(reconcile, scanned.patient_id)
                try:
                    outcome, note = import_file(archive, path, scanned, choice, source=scan.source)
                except StoreRefused as exc:
                    note = exc.comment
                except Exception as exc:  # noqa: BLE001 - reported per file
                    note = _short(exc)
        results.append(
            {
                "path": scanned.path,
                "sop_instance_uid": scanned.sop_instance_uid,
                "status": outcome,
                "error": note,
            }
        )
        if on_result is not None:
            on_result(scanned, outcome, note)
    return results


# --- control API (media.scan, media.import; MediaOperations delegates here) --------------------


def api_scan(data_dir: Path, archive: Archive, args: dict[str, Any]) -> dict[str, Any]:
    from appliance.control import ApiError

    source = args.get("source")
    if not isinstance(source, str) or not source:
        raise ApiError("bad-request", "source is required (a folder, an ISO file or a device)")
    scratch = Path(data_dir) / "spool" / f"scan-{os.getpid()}-{time.time_ns()}"
    try:
        scan = scan_source(source, scratch)
        return scan_summary(scan, archive)
    except MediaError as exc:
        raise ApiError("invalid", str(exc)) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def api_import(engine: JobEngine, args: dict[str, Any]) -> dict[str, Any]:
    from appliance.api import job_detail
    from appliance.control import ApiError

    params = {"source": args.get("source"), "reconcile": args.get("reconcile") or {}}
    priority = args.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ApiError("bad-request", "priority must be an integer")
    try:
        job = engine.submit("import", IMPORT_TARGET, params, priority=priority)
    except JobError as exc:
        raise ApiError("invalid", str(exc)) from None
    return job_detail(job)
