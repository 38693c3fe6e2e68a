"""The xorriso layer against real xorriso with file-backed drives (``stdio:`` targets)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from appliance import optical
from appliance.optical import OpticalError


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A small file-set shaped folder: upper-case names without extension, two levels."""
    root = tmp_path / "fileset"
    (root / "DICOM" / "P0000001").mkdir(parents=True)
    (root / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"directory" * 50)
    (root / "README.TXT").write_text("Patient disc\r\n")
    for n in range(3):
        (root / "DICOM" / "P0000001" / f"I{n:07d}").write_bytes(os.urandom(20_000 + n))
    return root


def test_write_read_back_and_verify(folder: Path, tmp_path: Path) -> None:
    target = f"stdio:{tmp_path / 'disc.iso'}"
    seen: list[float] = []
    optical.write_image(folder, target, volume_id="patient disc 1", progress=seen.append)
    assert seen and seen[-1] == 100.0
    assert all(0.0 <= p <= 100.0 for p in seen) and seen == sorted(seen)
    # xorriso itself reads the image: ISO 9660 with the cleaned-up volume ID.
    info = subprocess.run(
        [optical.XORRISO, "-indev", target, "-pvd_info"], capture_output=True, text=True
    )
    assert "Volume Id    : PATIENT_DISC_1" in info.stdout
    into = tmp_path / "back"
    optical.read_back(target, into)
    assert (into / "DICOM" / "P0000001" / "I0000002").read_bytes() == (
        folder / "DICOM" / "P0000001" / "I0000002"
    ).read_bytes()
    assert optical.verify(folder, target, tmp_path / "scratch") == []
    assert not (tmp_path / "scratch").exists()
    assert optical.media_status(target).startswith("is written")


def test_verify_finds_a_corrupted_image(folder: Path, tmp_path: Path) -> None:
    iso = tmp_path / "disc.iso"
    optical.make_iso(folder, iso, "DISC")
    payload = (folder / "DICOM" / "P0000001" / "I0000001").read_bytes()
    image = bytearray(iso.read_bytes())
    at = image.find(payload[:64])
    assert at > 0
    image[at + 100] ^= 0xFF  # one flipped byte inside one file's data
    iso.write_bytes(bytes(image))
    (folder / "NEWFILE").write_text("not on the disc")
    problems = optical.verify(folder, f"stdio:{iso}", tmp_path / "scratch")
    assert problems == ["differs: DICOM/P0000001/I0000001", "missing: NEWFILE"]


def test_non_blank_target_is_refused(folder: Path, tmp_path: Path) -> None:
    iso = tmp_path / "disc.iso"
    optical.make_iso(folder, iso, "FIRST")
    before = iso.read_bytes()
    with pytest.raises(OpticalError) as caught:
        optical.write_image(folder, f"stdio:{iso}", volume_id="SECOND")
    assert str(caught.value).startswith("disc is not blank")
    assert caught.value.retryable is False
    assert iso.read_bytes() == before


def test_target_in_missing_folder(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(OpticalError) as caught:
        optical.write_image(folder, f"stdio:{tmp_path / 'nope' / 'disc.iso'}", volume_id="X")
    assert "write error" in str(caught.value) and "does not exist" in str(caught.value)
    assert caught.value.retryable


def test_target_in_an_unwritable_folder(folder: Path) -> None:
    """/proc refuses new files even to root (the tests run as root, who writes anywhere else)."""
    with pytest.raises(OpticalError) as caught:
        optical.write_image(folder, "stdio:/proc/disc.iso", volume_id="X")
    assert str(caught.value).startswith("write error: ")
    assert not Path("/proc/disc.iso").exists()


def test_write_error_from_the_medium_carries_xorrisos_reason(folder: Path) -> None:
    """/dev/full takes the write and fails it, as a disc failing mid-burn does."""
    with pytest.raises(OpticalError) as caught:
        optical.write_image(folder, "stdio:/dev/full", volume_id="X")
    assert str(caught.value).startswith("write error: ")
    assert "No space left on device" in str(caught.value)
    assert caught.value.retryable


def test_missing_drive(folder: Path) -> None:
    with pytest.raises(OpticalError) as caught:
        optical.write_image(folder, "/dev/sr97", volume_id="X")
    assert str(caught.value) == "no drive at /dev/sr97 (unplugged?)"
    assert caught.value.retryable


def test_stop_requested(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(OpticalError) as caught:
        optical.write_image(
            folder, f"stdio:{tmp_path / 'disc.iso'}", volume_id="X", should_stop=lambda: True
        )
    assert "stopped" in str(caught.value)


def test_read_back_errors(tmp_path: Path) -> None:
    with pytest.raises(OpticalError, match="no disc image"):
        optical.read_back(f"stdio:{tmp_path / 'none.iso'}", tmp_path / "into")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(64 * 1024))
    with pytest.raises(OpticalError) as caught:
        optical.read_back(f"stdio:{junk}", tmp_path / "into2")
    assert "no ISO 9660" in str(caught.value) or "read error" in str(caught.value)


def test_eject_file_target_is_a_no_op(tmp_path: Path) -> None:
    optical.eject(f"stdio:{tmp_path / 'disc.iso'}")
    with pytest.raises(OpticalError, match="cannot eject"):
        optical.eject("/dev/sr97")


def test_make_iso_replaces_and_leaves_no_partial(folder: Path, tmp_path: Path) -> None:
    iso = tmp_path / "out" / "disc.iso"
    iso.parent.mkdir()
    optical.make_iso(folder, iso, "ONE")
    optical.make_iso(folder, iso, "TWO")  # an existing image is replaced, not refused
    assert [p.name for p in iso.parent.iterdir()] == ["disc.iso"]
    info = subprocess.run(
        [optical.XORRISO, "-indev", f"stdio:{iso}", "-pvd_info"], capture_output=True, text=True
    )
    assert "Volume Id    : TWO" in info.stdout
