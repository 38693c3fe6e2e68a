"""Fast checks of the image build: script syntax, lock files, and the built root when present.

The full build and the qemu boot (image-build/build.sh, image-build/smoke.sh) are not run here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

IMAGE_BUILD = Path(__file__).resolve().parent.parent / "image-build"
LOCK = IMAGE_BUILD / "lock"
ROOTFS = IMAGE_BUILD / "out" / "rootfs"
SCRIPTS = ["build.sh", "smoke.sh", "files/dicom-appliance-smoke"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_syntax(script):
    path = IMAGE_BUILD / script
    shell = "sh" if script.startswith("files/") else "bash"
    subprocess.run([shell, "-n", str(path)], check=True)
    assert path.stat().st_mode & 0o111, f"{script} is not executable"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck():
    paths = [str(IMAGE_BUILD / s) for s in SCRIPTS]
    result = subprocess.run(["shellcheck", "-S", "warning", *paths], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def _entries(path: Path) -> list[str]:
    return [
        line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]


def test_python_lock_pins_every_wheel_with_a_hash():
    entries = _entries(LOCK / "python.lock")
    assert entries
    pattern = re.compile(r"^([a-z0-9][a-z0-9-]*)==([^ ]+) --hash=sha256:[0-9a-f]{64}$")
    names = []
    for line in entries:
        match = pattern.match(line)
        assert match, f"not 'name==version --hash=sha256:<64 hex>': {line!r}"
        names.append(match.group(1))
    assert len(names) == len(set(names)), "a wheel is pinned twice"
    # the project's direct dependencies are all there
    for dep in ("pydicom", "pynetdicom", "tinydb", "textual", "cryptography", "pyudev"):
        assert dep in names, dep
    assert "dicom-appliance" not in names, "the project's own wheel is built, not locked"


def test_debian_lock_lists_each_package_once_with_a_version():
    entries = _entries(LOCK / "debian.lock")
    pattern = re.compile(r"^[a-z0-9][a-z0-9+.-]+ [0-9][A-Za-z0-9.+~:-]*$")
    names = []
    for line in entries:
        assert pattern.match(line), f"not 'name version': {line!r}"
        names.append(line.split()[0])
    assert names == sorted(names), "the lock is sorted (dpkg-query | sort)"
    assert len(names) == len(set(names))
    for needed in ("systemd", "udev", "dbus", "openssh-server", "python3", "xorriso"):
        assert needed in names, needed


needs_rootfs = pytest.mark.skipif(
    not (ROOTFS / "usr/lib/systemd/system/dicom-appliance.service").is_file(),
    reason="no built root file system (image-build/build.sh)",
)


@needs_rootfs
def test_built_rootfs_matches_the_debian_lock():
    out = subprocess.run(
        ["dpkg-query", f"--admindir={ROOTFS}/var/lib/dpkg", "-W", "-f", "${Package} ${Version}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert sorted(out.splitlines()) == _entries(LOCK / "debian.lock")


@needs_rootfs
def test_units_verify_in_the_built_root():
    units = sorted(
        p.name
        for p in (ROOTFS / "usr/lib/systemd/system").glob("dicom-appliance*.service")
        if not p.name.endswith("@.service")
    )
    assert "dicom-appliance.service" in units
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={ROOTFS}", "--man=no", *units],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    # the daemon's venv entry point is in the image
    assert (ROOTFS / "opt/dicom-appliance/venv/bin/dicom-appliance").exists()
