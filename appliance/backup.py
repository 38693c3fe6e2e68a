"""Backup and restore of the appliance's state (not of its archive).

A backup is a gzip-compressed tar file: ``manifest.json`` first, then each file under
``data/<path in the data folder>``. The manifest names the format and its version, when and on
which host it was made, the appliance version, every file with its size, mode and SHA-256, and
the top-level entries of the data folder that were left out.

What a backup holds (``SECTIONS``): the configuration (``config.json``: settings, nodes,
printers, routing rules, retry policies, anonymization profiles, the service password hash),
the job store (``jobs/``: active jobs and the history), the TLS key, certificates, trusted CAs
and CRLs (``tls/``), the pseudonym mapping and the original-to-copy links
(``anonymization/``), the audit logs (``audit/``), and the storage commitment, routing and
MPPS state (``commitments.json``, ``routing.json``, ``mpps.json``). What it leaves out: the
archive's instances and its index (``archive/``, ``index.sqlite``, with the recorded signature
states), which are too big for a backup file and are kept on the data partition or sent to a
PACS; spool, previews, locks and the control socket, which are transient.

Consistency. Every store writes whole files by rename, so a file read once is a consistent
version of itself. Files with a cross-process lock are read under it; SQLite files are copied
with SQLite's online backup. The job store is for the daemon alone and moves a finishing job
from ``active.json`` to a history shard (new file first): ``active.json`` is read first, so a
job moving meanwhile is in the history read after it. A running daemon makes the backup itself
(control op ``backup.create``) and holds its job store's lock while reading the jobs.

Restore needs the daemon stopped (it is refused while the control socket answers). It checks
the whole archive before writing anything: format and version, every member a regular file
under ``data/`` in a known section (no absolute path, no ``..``, no link or device), every
file listed in the manifest with the right size and SHA-256, and the configuration valid. It
then writes into a private folder inside the data folder and renames each top-level file or
section folder into place. What it replaces (only with ``force``) is moved to
``pre-restore-<date>/`` in the data folder, not deleted.

A backup is audited as an Export (110106) naming the file, a restore as an Import (110107) in
the restored trail.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import socket
import sqlite3
import stat
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from appliance import __version__
from appliance.fileio import PARTIAL_SUFFIX, fsync_dir

FORMAT = "dicom-appliance-backup"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DATA_PREFIX = "data"
MANIFEST_MAX_BYTES = 16 * 2**20
# A member is read whole into memory: the largest one a restore accepts.
MEMBER_MAX_BYTES = 2**32
BACKUP_MODE = 0o600
FOLDER_MODE = 0o700
# Staging folder of backups the daemon makes (``backup.create``), inside the data folder.
STAGING_DIR = "backups"
STAGING_MAX_AGE = 3600.0

# Top-level files and folders of the data folder that a backup holds.
STATE_FILES = ("config.json", "commitments.json", "routing.json", "mpps.json")
STATE_FOLDERS = ("jobs", "tls", "anonymization", "audit")
SECTIONS = STATE_FILES + STATE_FOLDERS
# Folders whose files hold secrets or re-identifying data: restored 0600 in a 0700 folder.
PRIVATE_FOLDERS = ("tls", "anonymization", "audit")
LEFT_OUT_NOTE = (
    "the archive's instances and index (archive/, index.sqlite) are not in a backup; "
    "spool, previews, locks and the control socket are transient"
)


class BackupError(Exception):
    """A refused or failed backup or restore; the text says why and what to do."""


@dataclass
class FileEntry:
    path: str  # relative to the data folder, POSIX
    size: int
    mode: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "mode": f"{self.mode:04o}",
            "sha256": self.sha256,
        }


@dataclass
class Manifest:
    created: str
    host: str
    appliance_version: str
    files: list[FileEntry] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    version: int = FORMAT_VERSION

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "created": self.created,
            "host": self.host,
            "appliance_version": self.appliance_version,
            "files": [f.as_dict() for f in self.files],
            "left_out": self.left_out,
            "note": LEFT_OUT_NOTE,
        }

    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def summary(self) -> str:
        sections = sorted({f.path.split("/", 1)[0] for f in self.files})
        return (
            f"{len(self.files)} files, {self.total_bytes()} bytes "
            f"({', '.join(sections) or 'nothing'}); made {self.created} on {self.host} "
            f"by dicom-appliance {self.appliance_version}"
        )


# --- is the daemon running? ------------------------------------------------------------------


def daemon_running(data_dir: Path) -> bool:
    """Whether a daemon answers on the data folder's control socket.

    Raises BackupError when that cannot be told (no permission to connect).
    """
    from appliance.control import control_socket_path, unix_address

    path = control_socket_path(data_dir)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(info.st_mode):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        with unix_address(path) as address:
            probe.connect(address)
    except (ConnectionRefusedError, FileNotFoundError):
        return False  # left by a daemon that was killed
    except PermissionError as exc:
        raise BackupError(
            f"cannot tell whether the daemon runs: no permission to use {path} ({exc}); "
            "run as root or as the daemon's user"
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise BackupError(f"cannot check the control socket {path}: {exc}") from None
    finally:
        probe.close()
    return True


# --- making a backup -------------------------------------------------------------------------


@contextlib.contextmanager
def _flocked(lock_path: Path) -> Iterator[None]:
    """An advisory lock file of a store, held while its file is read (skipped when absent)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _sqlite_bytes(path: Path) -> bytes:
    """A consistent copy of an SQLite file, through SQLite's online backup."""
    source = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(":memory:")
    try:
        source.backup(target)
        return target.serialize()
    finally:
        target.close()
        source.close()


def _audit_bytes(path: Path) -> bytes:
    """An audit log up to its last whole line (a line being appended is left for next time)."""
    data = path.read_bytes()
    end = data.rfind(b"\n")
    return data[: end + 1] if end >= 0 else b""


def _skipped(name: str) -> bool:
    return (
        name.startswith(".")
        or name.endswith(PARTIAL_SUFFIX)
        or name.endswith(".lock")
        or name.endswith("-journal")
        or name.endswith("-wal")
        or name.endswith("-shm")
    )


def _folder_files(data_dir: Path, folder: str) -> list[Path]:
    root = data_dir / folder
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if _skipped(name) or not path.is_file() or path.is_symlink():
                continue
            if folder == "jobs" and name.endswith(".index.json"):
                continue  # rebuilt from the shards when the store opens
            found.append(path)
    return found


def _read_state(data_dir: Path, jobs_lock: AbstractContextManager[Any]) -> Iterator[Path]:
    """Each state file, in the order it must be read (see the module text)."""
    for name in STATE_FILES:
        path = data_dir / name
        if path.is_file() and not path.is_symlink():
            yield path
    with jobs_lock:
        active = data_dir / "jobs" / "active.json"
        if active.is_file():
            yield active
        for path in _folder_files(data_dir, "jobs"):
            if path != active:
                yield path
    for folder in ("tls", "anonymization", "audit"):
        yield from _folder_files(data_dir, folder)


def _content(data_dir: Path, path: Path) -> bytes:
    rel = path.relative_to(data_dir).as_posix()
    if path.suffix == ".sqlite":
        return _sqlite_bytes(path)
    if rel.startswith("audit/"):
        return _audit_bytes(path)
    if rel.startswith("tls/"):
        with _flocked(data_dir / "tls" / ".lock"):
            return path.read_bytes()
    if rel in STATE_FILES:
        with _flocked(data_dir / f"{rel}.lock"):
            return path.read_bytes()
    return path.read_bytes()


def _private_file(path: Path) -> tuple[int, Path]:
    """A new file opened 0600 under a temporary name beside ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.time_ns()}{PARTIAL_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, BACKUP_MODE)
    return fd, tmp


def create_backup(
    data_dir: Path,
    destination: Path,
    *,
    jobs_lock: AbstractContextManager[Any] | None = None,
    now: datetime | None = None,
) -> Manifest:
    """Write a backup of ``data_dir``'s state to ``destination`` (0600, replaced atomically)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise BackupError(f"there is no data folder at {data_dir}")
    destination = Path(destination)
    if destination.is_dir():
        raise BackupError(f"{destination} is a folder; name the backup file to write")
    if not destination.parent.is_dir():
        raise BackupError(f"the folder {destination.parent} does not exist")
    created = (now or datetime.now(UTC)).astimezone(UTC)
    manifest = Manifest(
        created=created.isoformat(timespec="seconds"),
        host=socket.gethostname(),
        appliance_version=__version__,
        left_out=sorted(
            entry.name
            for entry in data_dir.iterdir()
            if entry.name not in SECTIONS and not _skipped(entry.name)
        ),
    )
    contents: list[tuple[FileEntry, bytes]] = []
    for path in _read_state(data_dir, jobs_lock or nullcontext()):
        try:
            data = _content(data_dir, path)
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue  # removed between listing and reading (a job history shard dropped)
        except (OSError, sqlite3.Error) as exc:
            raise BackupError(f"cannot read {path}: {exc}") from None
        entry = FileEntry(
            path=path.relative_to(data_dir).as_posix(),
            size=len(data),
            mode=mode,
            sha256=hashlib.sha256(data).hexdigest(),
        )
        manifest.files.append(entry)
        contents.append((entry, data))

    stamp = created.timestamp()
    fd, tmp = _private_file(destination)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            _add(
                tar, MANIFEST_NAME, json.dumps(manifest.as_dict(), indent=2).encode(), 0o600, stamp
            )
            for entry, data in contents:
                _add(tar, f"{DATA_PREFIX}/{entry.path}", data, entry.mode, stamp)
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, BACKUP_MODE)
        os.replace(tmp, destination)
        fsync_dir(destination.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return manifest


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode & 0o777
    info.mtime = int(mtime)
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def staged_backup(
    data_dir: Path, jobs_lock: AbstractContextManager[Any] | None = None
) -> tuple[Path, Manifest]:
    """The daemon's side of ``backup.create``: a backup in ``DATA/backups/`` (0700 folder).

    Staged backups older than ``STAGING_MAX_AGE`` (a command that died before taking its
    file) are removed first.
    """
    folder = Path(data_dir) / STAGING_DIR
    folder.mkdir(mode=FOLDER_MODE, exist_ok=True)
    os.chmod(folder, FOLDER_MODE)
    cutoff = time.time() - STAGING_MAX_AGE
    for old in folder.iterdir():
        with contextlib.suppress(OSError):
            if old.is_file() and old.stat().st_mtime < cutoff:
                old.unlink()
    now = datetime.now(UTC)
    target = folder / f"backup-{now:%Y%m%d-%H%M%S}-{os.getpid()}-{time.time_ns() % 10**6}.tar.gz"
    manifest = create_backup(data_dir, target, jobs_lock=jobs_lock, now=now)
    return target, manifest


def take_staged(staged: Path, destination: Path) -> None:
    """Move a backup the daemon staged to ``destination`` (0600), removing the staged file."""
    destination = Path(destination)
    try:
        os.replace(staged, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise BackupError(
                f"cannot move the backup the daemon wrote ({staged}) to {destination}: {exc}"
            ) from None
        fd, tmp = _private_file(destination)
        try:
            with os.fdopen(fd, "wb") as out, open(staged, "rb") as source:
                shutil.copyfileobj(source, out, 2**20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, destination)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        staged.unlink(missing_ok=True)
    os.chmod(destination, BACKUP_MODE)
    fsync_dir(destination.parent)


# --- checking a backup -----------------------------------------------------------------------


def _checked_rel(name: str) -> str:
    """The data-folder path of an archive member ``data/...``; BackupError if it may escape."""
    pure = PurePosixPath(name)
    parts = pure.parts
    if pure.is_absolute() or "\\" in name or "\x00" in name:
        raise BackupError(f"refused: the archive holds an absolute or odd path {name!r}")
    if any(part in ("", ".", "..") for part in parts) or name != pure.as_posix():
        raise BackupError(f"refused: the archive holds a path that leaves its folder: {name!r}")
    if len(parts) < 2 or parts[0] != DATA_PREFIX:
        raise BackupError(f"refused: unexpected member {name!r} (not under {DATA_PREFIX}/)")
    rel = parts[1:]
    if rel[0] not in SECTIONS or (rel[0] in STATE_FILES) != (len(rel) == 1):
        raise BackupError(f"refused: {name!r} is not part of the appliance's state")
    if any(_skipped(part) for part in rel):
        raise BackupError(f"refused: {name!r} is a hidden or temporary file")
    return "/".join(rel)


def _parse_manifest(raw: bytes) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BackupError(f"refused: the manifest is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BackupError("refused: this is not a dicom-appliance backup (no manifest of ours)")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BackupError(f"refused: the manifest's version {version!r} is not valid")
    if version > FORMAT_VERSION:
        raise BackupError(
            f"refused: the backup has format version {version}, newer than this appliance "
            f"reads ({FORMAT_VERSION}); it was made by dicom-appliance "
            f"{doc.get('appliance_version', '?')}, this is {__version__}. "
            "Update the appliance, then restore."
        )
    files = doc.get("files")
    if not isinstance(files, list):
        raise BackupError("refused: the manifest lists no files")
    listed: dict[str, dict[str, Any]] = {}
    for item in files:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise BackupError("refused: the manifest has a malformed file entry")
        rel = _checked_rel(f"{DATA_PREFIX}/{item['path']}")
        size, digest, mode = item.get("size"), item.get("sha256"), item.get("mode")
        if not isinstance(size, int) or size < 0 or not isinstance(digest, str):
            raise BackupError(f"refused: the manifest entry of {rel} has no size or SHA-256")
        try:
            item["mode_bits"] = int(mode, 8) & 0o777 if isinstance(mode, str) else 0o600
        except ValueError:
            raise BackupError(f"refused: the manifest entry of {rel} has a bad mode") from None
        if rel in listed:
            raise BackupError(f"refused: the manifest lists {rel} twice")
        listed[rel] = item
    return doc, listed


def _members(tar: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, str | None]]:
    for member in tar:
        if member.name == MANIFEST_NAME:
            yield member, None
            continue
        if not member.isreg():
            kind = "link" if member.issym() or member.islnk() else "non-file"
            raise BackupError(f"refused: the archive holds a {kind} member {member.name!r}")
        yield member, _checked_rel(member.name)


def _open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:gz")
    except FileNotFoundError:
        raise BackupError(f"there is no file {path}") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"refused: {path} is not a readable backup (damaged?): {exc}") from None


def _walk_archive(
    path: Path, sink: Callable[[str, bytes, dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Read the whole archive and check it; ``sink(rel, data, entry)`` gets each checked file.

    The manifest must come first. Raises BackupError on the first problem.
    """
    tar = _open(path)
    try:
        doc: dict[str, Any] | None = None
        listed: dict[str, dict[str, Any]] = {}
        seen: set[str] = set()
        for member, rel in _members(tar):
            if member.size > (MANIFEST_MAX_BYTES if rel is None else MEMBER_MAX_BYTES):
                raise BackupError(f"refused: member {member.name!r} is too large")
            handle = tar.extractfile(member)
            data = handle.read() if handle is not None else b""
            if rel is None:
                if doc is not None:
                    raise BackupError("refused: the archive holds two manifests")
                doc, listed = _parse_manifest(data)
                continue
            if doc is None:
                raise BackupError("refused: the archive does not start with its manifest")
            entry = listed.get(rel)
            if entry is None:
                raise BackupError(f"refused: {rel} is in the archive but not in its manifest")
            if rel in seen:
                raise BackupError(f"refused: the archive holds {rel} twice")
            seen.add(rel)
            if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise BackupError(
                    f"refused: {rel} does not match its SHA-256 in the manifest "
                    "(the backup is damaged); nothing was restored"
                )
            if sink is not None:
                sink(rel, data, entry)
        if doc is None:
            raise BackupError(f"refused: {path} has no manifest; it is not a backup of ours")
        missing = sorted(set(listed) - seen)
        if missing:
            raise BackupError(
                f"refused: the archive lacks {len(missing)} file(s) its manifest lists "
                f"({', '.join(missing[:5])}); the backup is damaged or truncated"
            )
        return doc
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BackupError(f"refused: {path} is damaged: {exc}") from None
    finally:
        tar.close()


def verify_backup(path: Path) -> dict[str, Any]:
    """Check a backup without writing anything; its manifest."""
    return _walk_archive(Path(path))


# --- restoring -------------------------------------------------------------------------------


@dataclass
class RestoreResult:
    manifest: dict[str, Any]
    restored: list[str]
    moved_aside: Path | None


def _fmode(rel: str, recorded: int) -> int:
    """The mode a restored file gets: secrets and re-identifying data 0600, the rest as
    recorded but never writable or executable by others."""
    section, _, name = rel.partition("/")
    if section in ("anonymization", "audit") or name in ("key.pem", "passphrase"):
        return 0o600
    return (recorded & 0o644) | 0o600


def restore_backup(data_dir: Path, source: Path, *, force: bool = False) -> RestoreResult:
    """Restore a backup into ``data_dir`` (daemon stopped). See the module text."""
    data_dir = Path(data_dir)
    source = Path(source)
    if daemon_running(data_dir):
        raise BackupError(
            f"refused: a daemon is running on {data_dir}; stop it first "
            "(systemctl stop dicom-appliance), restore, then start it again"
        )
    doc = verify_backup(source)
    restored = sorted({f["path"].split("/", 1)[0] for f in doc["files"]})
    present = [name for name in SECTIONS if (data_dir / name).exists()]
    if present and not force:
        raise BackupError(
            f"refused: {data_dir} already holds appliance state ({', '.join(present)}); "
            "restore with --force to replace it (what is replaced is kept in "
            "pre-restore-<date>/ in the data folder)"
        )

    created_dir = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=data_dir))
    try:
        for name in STATE_FOLDERS:
            if name in restored:
                (staging / name).mkdir(mode=FOLDER_MODE)

        def write(rel: str, data: bytes, entry: dict[str, Any]) -> None:
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(target, _fmode(rel, entry["mode_bits"]))

        # Second read: the archive file may have changed since the check; the same checks run.
        _walk_archive(source, write)
        for name in PRIVATE_FOLDERS:
            for folder in [staging / name, *(staging / name).rglob("*")]:
                if folder.is_dir():
                    os.chmod(folder, FOLDER_MODE)
        for dirpath, _dirs, _files in os.walk(staging):
            fsync_dir(Path(dirpath))
        if "config.json" in restored:
            _check_config(staging)
        aside = _install(data_dir, staging, restored)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_dir:
            with contextlib.suppress(OSError):
                data_dir.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return RestoreResult(manifest=doc, restored=restored, moved_aside=aside)


def _check_config(staging: Path) -> None:
    from appliance.config import ConfigError, ConfigStore

    try:
        ConfigStore(staging).close()
    except ConfigError as exc:
        raise BackupError(f"refused: the backup's configuration is not valid here: {exc}") from None


def _install(data_dir: Path, staging: Path, restored: list[str]) -> Path | None:
    """Rename each restored top-level file or folder into place; what was there goes aside."""
    aside: Path | None = None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in SECTIONS:
        current = data_dir / name
        if current.exists() or current.is_symlink():
            if aside is None:
                aside = data_dir / f"pre-restore-{stamp}"
                n = 1
                while aside.exists():
                    aside = data_dir / f"pre-restore-{stamp}-{n}"
                    n += 1
                aside.mkdir(mode=FOLDER_MODE)
            os.replace(current, aside / name)
        if name in restored:
            os.replace(staging / name, current)
    # The stores' lock files (empty, beside their files) stay: they lock by name.
    fsync_dir(data_dir)
    if aside is not None:
        fsync_dir(aside)
    return aside


# --- audit -----------------------------------------------------------------------------------


def audit_backup(
    data_dir: Path, destination: Path | str, manifest: Manifest | None, error: str = ""
) -> None:
    """Export (110106): the state (with the TLS key and the pseudonym mapping) left in a file."""
    from appliance import audit

    if manifest is not None:
        outcome, description = (
            "success",
            f"appliance state backup to {destination}: {manifest.summary()}",
        )
    else:
        outcome, description = "serious", f"appliance state backup to {destination} failed: {error}"
    audit.emit(
        "export",
        outcome=outcome,
        description=description,
        participants=[
            audit.actor() or audit.os_user(),
            audit.Participant(
                user_id=Path(destination).absolute().as_uri(),
                role="destination-media",
                media_type="uri",
            ),
        ],
        local_role="source",
        objects=[_state_object(data_dir)],
    )


def audit_restore(data_dir: Path, source: Path, result: RestoreResult) -> None:
    """Import (110107), recorded in the restored trail: the state came from a backup file."""
    from appliance import audit

    doc = result.manifest
    description = (
        f"appliance state restored from {source} (made {doc.get('created')} on "
        f"{doc.get('host')}): {len(doc['files'])} files, {', '.join(result.restored)}"
    )
    if result.moved_aside is not None:
        description += f"; the state before is in {result.moved_aside}"
    audit.emit(
        "import",
        description=description,
        participants=[
            audit.actor() or audit.os_user(),
            audit.Participant(
                user_id=Path(source).absolute().as_uri(), role="source-media", media_type="uri"
            ),
        ],
        local_role="destination",
        objects=[_state_object(data_dir)],
    )


def _state_object(data_dir: Path) -> Any:
    from appliance import audit

    return audit.ParticipantObject(
        object_id=Path(data_dir).absolute().as_uri(),
        id_type=audit.URI_TYPE,
        role=audit.ROLE_SECURITY_RESOURCE,
        name="Appliance state (configuration, keys, pseudonym mapping)",
    )
