"""The xorriso layer: image a folder onto a disc (or a file), read it back, verify, eject.

Real drives (``/dev/sr0``) and file-backed ones (``stdio:/path/disc.iso``) take the same path
through xorriso, so the tests exercise the same commands the burner runs.

xorriso tells the medium's state in ``Media status :`` lines (``is blank``, ``is written , is
appendable``, ``is written , is closed``, ``is not present``), progress in ``UPDATE`` lines
(with ``-pacifier mkisofs``: ``xorriso : UPDATE :  21.86% done``) and problems in ``SORRY`` and
``FAILURE`` lines, which carry the reason an operator needs (e.g. ``libburn : SORRY : ... No
space left on device``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

XORRISO = "/usr/bin/xorriso"
# Write the image with the mkisofs pacifier: its "NN.NN% done" lines are the easiest to read.
_PERCENT = re.compile(r"UPDATE\s*:\s*([0-9]+(?:\.[0-9]+)?)% done")
_WRITING = re.compile(r"UPDATE\s*:\s*Writing:.*?\s([0-9]+(?:\.[0-9]+)?)%")
_STATUS = re.compile(r"^Media status\s*:\s*(.*)$", re.MULTILINE)
_PROBLEM = re.compile(
    r"^(?:xorriso|libburn|libisoburn|libisofs)\s*:\s*(SORRY|FAILURE|FATAL)\s*:\s*(.*)$"
)
# How long a call may take at most: a CD at the slowest speed takes well under this.
WRITE_TIMEOUT = 3 * 3600
READ_TIMEOUT = 3600
PROBE_TIMEOUT = 120
_HASH_CHUNK = 1 << 20


class OpticalError(Exception):
    """A disc operation failed; ``retryable`` says whether trying again may help.

    Not retryable: the medium itself is wrong (not blank, verify mismatch). Retryable: no disc,
    a pulled disc, a drive or write error that another disc or another try may not have.
    """

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


def is_file_target(target: str) -> bool:
    return target.startswith("stdio:")


def _target_path(target: str) -> Path:
    return Path(target[len("stdio:") :])


def _env() -> dict[str, str]:
    # xorriso's messages are matched as text: keep them in English.
    return {**os.environ, "LC_ALL": "C", "LANG": "C"}


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [XORRISO, "-abort_on", "FAILURE", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_env(),
        )
    except FileNotFoundError:
        raise OpticalError(f"{XORRISO} is not installed", retryable=False) from None
    except subprocess.TimeoutExpired:
        raise OpticalError(
            f"xorriso gave no answer within {timeout:.0f} s", retryable=True
        ) from None


def _problems(text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        match = _PROBLEM.match(line.strip())
        if match:
            found.append(match.group(2).strip())
    return found


def _reason(text: str, default: str) -> str:
    """xorriso's own words for what went wrong: the first specific SORRY/FAILURE line."""
    problems = [p for p in _problems(text) if not p.startswith("-abort_on")]
    # libburn's SORRY line says why ("No space left on device"); the FAILURE after it is
    # generic ("libburn indicates failure with writing").
    specific = [p for p in problems if "indicates failure" not in p and "aborting" not in p]
    chosen = specific or problems
    return "; ".join(dict.fromkeys(chosen)) if chosen else default


def media_status(target: str) -> str:
    """What xorriso says about the medium: "is blank", "is written , is closed", ...

    "is not present" when there is no disc; for a file target whose folder is missing the
    failure is raised.
    """
    if not is_file_target(target) and not Path(target).exists():
        raise OpticalError(f"no drive at {target} (unplugged?)", retryable=True)
    done = _run(["-outdev", target], PROBE_TIMEOUT)
    text = done.stdout + done.stderr
    match = _STATUS.search(text)
    if match:
        return match.group(1).strip()
    raise OpticalError(
        _reason(text, f"cannot use {target} (xorriso exit {done.returncode})"),
        retryable=not is_file_target(target),
    )


def _classify_status(status: str, target: str) -> None:
    """Refuse anything but a blank medium, with the reason said plainly."""
    if status.startswith("is blank"):
        if "but" in status:  # "is blank , but next track is damaged"
            raise OpticalError(f"disc cannot be written: {status}", retryable=False)
        return
    if status.startswith("is not present"):
        raise OpticalError(f"no disc in {target}", retryable=True)
    if status.startswith("is written"):
        said = status.replace(" , ", ", ").replace("is ", "")
        raise OpticalError(f"disc is not blank ({said})", retryable=False)
    raise OpticalError(f"disc is not usable: {status}", retryable=False)


def write_image(
    folder: Path,
    target: str,
    *,
    volume_id: str,
    progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Write ``folder`` as one closed ISO 9660 + Joliet + Rock Ridge session onto ``target``.

    ``progress`` gets percentages (0..100) as xorriso reports them; ``should_stop`` is asked
    between progress lines, and a stop kills xorriso (a half-written disc is not blank any
    more, so the caller treats it as failed).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise OpticalError(f"nothing to write: {folder} is not a folder", retryable=False)
    if is_file_target(target):
        parent = _target_path(target).parent
        if not parent.is_dir():
            what = "is not a folder" if parent.exists() else "does not exist"
            raise OpticalError(f"write error: folder {parent} {what}", retryable=True)
    _classify_status(media_status(target), target)
    args = [
        XORRISO,
        "-abort_on",
        "FAILURE",
        "-pacifier",
        "mkisofs",
        "-pacifier",
        "interval=0.5",
        "-outdev",
        target,
        "-volid",
        _volume_id(volume_id),
        "-joliet",
        "on",
        "-rockridge",
        "on",
        "-map",
        str(folder),
        "/",
        "-close",
        "on",
        "-commit",
    ]
    try:
        process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
    except FileNotFoundError:
        raise OpticalError(f"{XORRISO} is not installed", retryable=False) from None
    lines: list[str] = []
    stopped = threading.Event()
    timer = threading.Timer(WRITE_TIMEOUT, process.kill)
    timer.start()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            match = _PERCENT.search(line) or _WRITING.search(line)
            if match and progress is not None:
                progress(min(100.0, float(match.group(1))))
            if should_stop is not None and should_stop():
                stopped.set()
                process.kill()
                break
        returncode = process.wait()
    finally:
        timer.cancel()
        if process.stdout is not None:
            process.stdout.close()
    text = "\n".join(lines)
    if stopped.is_set():
        raise OpticalError("writing was stopped", retryable=True)
    if returncode != 0 or "completed successfully" not in text:
        reason = _reason(text, f"xorriso exit {returncode}")
        if "non-zero data" in reason:
            raise OpticalError("disc is not blank", retryable=False)
        raise OpticalError(f"write error: {reason}", retryable=True)
    if progress is not None:
        progress(100.0)


def _volume_id(text: str) -> str:
    """ISO 9660 volume identifiers: d-characters (A-Z 0-9 _), at most 32."""
    cleaned = re.sub(r"[^A-Z0-9_]", "_", text.upper())[:32]
    return cleaned or "DICOM"


def read_back(target: str, into: Path) -> None:
    """Extract the disc's files into ``into`` (which must not hold anything yet)."""
    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    if is_file_target(target) and not _target_path(target).is_file():
        raise OpticalError(f"no disc image at {_target_path(target)}", retryable=False)
    done = _run(
        ["-osirrox", "on", "-indev", target, "-extract", "/", str(into)],
        READ_TIMEOUT,
    )
    text = done.stdout + done.stderr
    if done.returncode != 0:
        status = _STATUS.search(text)
        if status and status.group(1).startswith("is not present"):
            raise OpticalError(f"no disc in {target}", retryable=True)
        raise OpticalError(
            f"read error: {_reason(text, f'xorriso exit {done.returncode}')}", retryable=True
        )
    if "No ISO 9660 image" in text:
        raise OpticalError(f"no ISO 9660 file system on {target}", retryable=False)
    # xorriso extracts read-only folders as they were on the disc; the caller must be able
    # to clean up its scratch space.
    for path in [into, *into.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def verify(folder: Path, target: str, scratch: Path) -> list[str]:
    """Read the disc back into ``scratch`` and compare every file with ``folder`` by SHA-256.

    Returns the problems ("missing: DICOM/..." / "differs: ..." / "extra: ..."); empty means
    verified. ``scratch`` is emptied first and removed afterwards.
    """
    folder, scratch = Path(folder), Path(scratch)
    if scratch.exists():
        shutil.rmtree(scratch)
    try:
        read_back(target, scratch)
        wanted, found = _files(folder), _files(scratch)
        problems = []
        for name, source in wanted.items():
            copy = found.get(name)
            if copy is None:
                problems.append(f"missing: {name}")
            elif copy.stat().st_size != source.stat().st_size or _sha256(copy) != _sha256(source):
                problems.append(f"differs: {name}")
        problems.extend(f"extra: {name}" for name in found if name not in wanted)
        return problems
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def eject(target: str) -> None:
    """Open the tray of a real drive; a file-backed drive has nothing to eject."""
    if is_file_target(target):
        return
    if not Path(target).exists():
        raise OpticalError(f"cannot eject: no drive at {target}", retryable=True)
    done = _run(["-outdev", target, "-eject", "all"], PROBE_TIMEOUT)
    if done.returncode != 0:
        text = done.stdout + done.stderr
        raise OpticalError(
            f"cannot eject: {_reason(text, f'xorriso exit {done.returncode}')}", retryable=True
        )


def make_iso(folder: Path, iso_path: Path, volume_id: str) -> None:
    """An ISO image of ``folder`` at ``iso_path`` (replaced when present), for benches and tests."""
    iso_path = Path(iso_path)
    partial = iso_path.with_name(iso_path.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        write_image(folder, f"stdio:{partial}", volume_id=volume_id)
        os.replace(partial, iso_path)
    finally:
        partial.unlink(missing_ok=True)
