"""Fast checks of the image build: script syntax, lock files, and the built root when present.

The full build and the qemu boot (image-build/build.sh, image-build/smoke.sh) are not run here.
"""

from __future__ import annotations

import json
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


# GPT partition types of the Discoverable Partitions Specification, which systemd-repart matches
DPS_TYPES = {
    "bios-boot": "21686148-6449-6E6F-744E-656564454649",
    "root-a": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",  # root, x86-64
    "data": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",  # Linux file system data
}


def _image_partitions() -> dict[str, str]:
    text = (IMAGE_BUILD / "build.sh").read_text()
    return {
        name: guid.upper()
        for guid, name in re.findall(r"type=([0-9A-Fa-f-]{36}), name=([a-z-]+)", text)
    }


def test_image_partitions_have_the_discoverable_types():
    assert _image_partitions() == DPS_TYPES


@pytest.mark.skipif(
    shutil.which("systemd-repart") is None or shutil.which("sfdisk") is None,
    reason="needs systemd-repart and sfdisk",
)
def test_first_boot_repart_adds_root_b_and_grows_data(tmp_path):
    """The image's layout, scaled down, on a larger disk: repart.d as build.sh installs it."""
    root_mib, data_mib = 64, 32
    definitions = tmp_path / "repart.d"
    definitions.mkdir()
    for conf in sorted((IMAGE_BUILD / "files/repart.d").glob("*.conf")):
        text = conf.read_text().replace("@ROOT_MIB@", str(root_mib))
        (definitions / conf.name).write_text(text)
    image = tmp_path / "disk.img"
    types = _image_partitions()
    layout = "label: gpt\n" + "".join(
        f"size={size}MiB, type={types[name]}, name={name}\n"
        for name, size in (("bios-boot", 1), ("root-a", root_mib), ("data", data_mib))
    )
    with image.open("wb") as f:
        f.truncate((2 + root_mib + data_mib + 2) * 2**20)
    subprocess.run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(image)],
        input=layout,
        text=True,
        check=True,
        capture_output=True,
    )
    with image.open("r+b") as f:
        f.truncate(f.seek(0, 2) + 512 * 2**20)
    result = subprocess.run(
        [
            "systemd-repart",
            "--dry-run=no",
            f"--definitions={definitions}",
            "--no-pager",
            str(image),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True
        ).stdout
    )["partitiontable"]
    mib = {p["name"]: p["size"] * 512 // 2**20 for p in table["partitions"]}
    assert mib["bios-boot"] == 1
    assert mib["root-a"] == root_mib, "root-a is left as it is"
    assert mib["root-b"] == root_mib, "root-b is as large as root-a"
    assert mib["data"] > data_mib + 400, "the data partition takes the rest of the disk"


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
