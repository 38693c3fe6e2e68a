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


def atomic_write_bytes(path: Path, *chunks: bytes) -> None:
    """Write ``chunks`` to ``path`` so that ``path`` is either the old file or the whole new one.

    The data is fsynced under a temporary name in the same directory, renamed over ``path`` and
    the directory is fsynced, so the rename itself survives a power cut. On any error the
    temporary file is removed and the error propagates.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(chunks):x}{PARTIAL_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        try:
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
