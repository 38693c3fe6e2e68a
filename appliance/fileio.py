"""Crash-safe file writes: temporary name, fsync, rename, directory fsync."""

from __future__ import annotations

import os
from pathlib import Path

PARTIAL_SUFFIX = ".part"


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_partials(directory: Path) -> list[Path]:
    """Remove temporary files that a writer killed mid-write left in ``directory`` (not its
    subfolders). A file whose writer (the pid in its name) is still alive is left alone: a CLI
    may be writing the configuration right now."""
    removed = []
    for path in Path(directory).glob(f".*{PARTIAL_SUFFIX}"):
        if _writer_alive(path):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _writer_alive(partial: Path) -> bool:
    parts = partial.name.split(".")
    # ".{name}.{pid}.{token}.part": the pid is the third field from the end.
    try:
        pid = int(parts[-3])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_bytes(path: Path, *chunks: bytes, mode: int | None = None) -> None:
    """Write ``chunks`` to ``path`` so that ``path`` is either the old file or the whole new one.

    The data is fsynced under a temporary name in the same directory, renamed over ``path`` and
    the directory is fsynced, so the rename itself survives a power cut. On any error the
    temporary file is removed and the error propagates. ``mode``, when given, is set exactly on
    the temporary file before any byte is written (a private key is never readable by others,
    not even briefly); else the file is created 0640 less the umask.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(chunks):x}{PARTIAL_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640 if mode is None else mode)
    try:
        try:
            if mode is not None:
                # The umask may have taken bits away, and a stale temporary file of the same
                # name keeps its old mode: set it exactly.
                os.fchmod(fd, mode)
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
