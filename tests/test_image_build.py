"""Fast checks of the image build: script syntax, lock files, and the built root when present.

The full build and the qemu boot (image-build/build.sh, image-build/smoke.sh) are not run here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

IMAGE_BUILD = Path(__file__).resolve().parent.parent / "image-build"
LOCK = IMAGE_BUILD / "lock"
ROOTFS = IMAGE_BUILD / "out" / "rootfs"
SCRIPTS = [
    "build.sh",
    "smoke.sh",
    "files/dicom-appliance-smoke",
    "files/initramfs/hooks/dicom-appliance",
    "files/initramfs/scripts/local-bottom/dicom-appliance",
    "files/rauc/backend",
]


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
    "esp": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",  # EFI system partition
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
        for name, size in (("bios-boot", 1), ("esp", 16), ("root-a", root_mib), ("data", data_mib))
    )
    with image.open("wb") as f:
        f.truncate((2 + 16 + root_mib + data_mib + 2) * 2**20)
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
    number = {p["name"]: int(p["node"].removeprefix(str(image))) for p in table["partitions"]}
    # grub.cfg boots slot A from partition 3 and slot B from partition 5
    assert number == {"bios-boot": 1, "esp": 2, "root-a": 3, "data": 4, "root-b": 5}
    assert mib["bios-boot"] == 1
    assert mib["esp"] == 16
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


# --- boot loader ------------------------------------------------------------------------------

GRUB_CFG = IMAGE_BUILD / "files/grub.cfg"
BOOT_IMG = Path("/usr/lib/grub/i386-pc/boot.img")


@pytest.mark.skipif(shutil.which("grub-script-check") is None, reason="grub-common not installed")
def test_grub_menu_is_valid_grub_script():
    result = subprocess.run(["grub-script-check", str(GRUB_CFG)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grub_menu_boots_each_slot_from_its_partition():
    text = GRUB_CFG.read_text()
    entries = dict(re.findall(r'menuentry "[^"]*" --id (slot-[ab]) \{(.*?)\n\}', text, re.S))
    assert set(entries) == {"slot-a", "slot-b"}
    for slot, part, label in (("a", 3, "root-a"), ("b", 5, "root-b")):
        body = entries[f"slot-{slot}"]
        assert f"linux ($disk,gpt{part})/vmlinuz root=/dev/disk/by-partlabel/{label} " in body
        assert f"rauc.slot={slot.upper()} " in body
        assert f"initrd ($disk,gpt{part})/initrd.img" in body
    # only the slot variables and the extra command line come from the (writable) block
    assert (
        'load_env --file "$prefix/grubenv" --skip-sig ORDER A_OK A_TRY B_OK B_TRY extra_cmdline'
        in text
    )
    assert 'save_env --file "$prefix/grubenv" A_TRY B_TRY' in text
    # the root file system is mounted read-only
    assert "ro" in text.split("set base_cmdline=")[1].splitlines()[0].strip('"').split()


def _gpt_image(path: Path) -> None:
    with path.open("wb") as f:
        f.truncate(8 * 2**20)
    subprocess.run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)],
        input=f"label: gpt\nstart=2048, size=2048, type={DPS_TYPES['bios-boot']}, name=bios-boot\n",
        text=True,
        check=True,
        capture_output=True,
    )


@pytest.mark.skipif(
    shutil.which("grub-mkimage") is None or not BOOT_IMG.exists() or shutil.which("sfdisk") is None,
    reason="needs grub-pc-bin (grub-mkimage, i386-pc modules) and sfdisk",
)
def test_bios_boot_code_goes_into_the_mbr_and_the_bios_boot_partition(tmp_path):
    import struct

    core = tmp_path / "core.img"
    subprocess.run(
        ["grub-mkimage", "-O", "i386-pc", "-o", str(core), "-p", "/grub", "biosdisk", "part_gpt"],
        check=True,
    )
    image = tmp_path / "disk.img"
    _gpt_image(image)
    before = image.read_bytes()[:512]
    subprocess.run(
        [
            sys.executable,
            str(IMAGE_BUILD / "install-bios-boot.py"),
            str(image),
            str(BOOT_IMG),
            str(core),
            "2048",
        ],
        check=True,
    )
    disk = image.read_bytes()
    mbr, boot = disk[:512], BOOT_IMG.read_bytes()
    assert mbr[0x1B8:0x200] == before[0x1B8:0x200], "the protective MBR's table is kept"
    assert mbr[:3] == boot[:3] and mbr[0x5A:0x5C] == boot[0x5A:0x5C]
    assert struct.unpack_from("<Q", mbr, 0x5C)[0] == 2048, "boot.img points at core.img"
    assert mbr[0x66:0x68] == b"\x90\x90"
    core_bytes = core.read_bytes()
    placed = disk[2048 * 512 : 2048 * 512 + len(core_bytes)]
    start, count, _segment = struct.unpack_from("<QHH", placed, 500)
    assert start == 2049, "diskboot loads the rest of core.img from the next sector"
    assert count == -(-len(core_bytes) // 512) - 1
    assert placed[512:] == core_bytes[512:], "core.img after its first sector is as built"
    # the GPT itself is untouched: sfdisk still reads it
    listing = subprocess.run(
        ["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True
    )
    assert json.loads(listing.stdout)["partitiontable"]["partitions"][0]["name"] == "bios-boot"


def test_bios_boot_code_refuses_a_disk_without_a_partition_table(tmp_path):
    image = tmp_path / "blank.img"
    image.write_bytes(bytes(4 * 2**20))
    core = tmp_path / "core.img"
    core.write_bytes(bytes(1024))
    boot = tmp_path / "boot.img"
    boot.write_bytes(bytes(512))
    result = subprocess.run(
        [
            sys.executable,
            str(IMAGE_BUILD / "install-bios-boot.py"),
            str(image),
            str(boot),
            str(core),
            "2048",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "no protective MBR" in result.stderr
    assert image.read_bytes() == bytes(4 * 2**20), "nothing written"


needs_image = pytest.mark.skipif(
    not (IMAGE_BUILD / "out/appliance.img").is_file() or shutil.which("mdir") is None,
    reason="no built image (image-build/build.sh) or no mtools",
)


@needs_image
def test_built_image_boots_under_bios_and_uefi():
    image = IMAGE_BUILD / "out/appliance.img"
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True
        ).stdout
    )["partitiontable"]
    parts = {p["name"]: p for p in table["partitions"]}
    assert [p["name"] for p in table["partitions"]] == ["bios-boot", "esp", "root-a", "data"]
    with image.open("rb") as f:
        mbr = f.read(512)
    assert mbr[0x1FE:] == b"\x55\xaa" and mbr[:2] != b"\0\0", "boot code in the MBR"
    esp = f"{image}@@{parts['esp']['start'] * 512}"
    listing = subprocess.run(
        ["mdir", "-i", esp, "-/", "-b", "::/"], capture_output=True, text=True, check=True
    ).stdout
    assert "::/EFI/BOOT/BOOTX64.EFI" in listing
    assert "::/grub/grub.cfg" in listing and "::/grub/grubenv" in listing
    cfg = subprocess.run(
        ["mtype", "-i", esp, "::/grub/grub.cfg"], capture_output=True, text=True, check=True
    ).stdout
    assert cfg.replace("\r\n", "\n") == GRUB_CFG.read_text()


# --- updates (RAUC) ---------------------------------------------------------------------------

RAUC_CONF = IMAGE_BUILD / "files/rauc/system.conf"


def _ini(text: str) -> dict[str, dict[str, str]]:
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return {name: dict(parser[name]) for name in parser.sections()}


def test_rauc_slots_match_the_image_layout_and_the_boot_menu():
    conf = _ini(RAUC_CONF.read_text())
    assert conf["slot.rootfs.0"] == {
        "device": "/dev/disk/by-partlabel/root-a",
        "type": "ext4",
        "bootname": "A",
    }
    assert conf["slot.rootfs.1"] == {
        "device": "/dev/disk/by-partlabel/root-b",
        "type": "ext4",
        "bootname": "B",
    }
    # the read-only root holds neither RAUC's mounts nor its status
    assert conf["system"]["mountprefix"].startswith("/run/")
    assert conf["system"]["data-directory"].startswith("/data/")
    assert conf["system"]["bootloader"] == "custom"
    backend = conf["handlers"]["bootloader-custom-backend"]
    build = (IMAGE_BUILD / "build.sh").read_text()
    assert f'"$here/files/rauc/backend" "$root{backend}"' in build
    assert f"compatible={conf['system']['compatible']}\n" in build, "bundles are compatible"
    assert (
        "boot-slot --env /efi/grub/grubenv rauc-backend"
        in (IMAGE_BUILD / "files/rauc/backend").read_text()
    )


@pytest.mark.skipif(
    shutil.which("rauc") is None
    or shutil.which("mksquashfs") is None
    or shutil.which("openssl") is None,
    reason="needs rauc, squashfs-tools and openssl",
)
def test_a_bundle_signed_by_the_keyring_verifies_and_another_signer_is_refused(tmp_path):
    """The bundle recipe of build.sh with a small root file system: RAUC on the host accepts it
    with the signing certificate as keyring and refuses it with another."""
    for name in ("good", "other"):
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "30",
                "-subj",
                f"/CN={name}",
                "-keyout",
                str(tmp_path / f"{name}.key"),
                "-out",
                str(tmp_path / f"{name}.pem"),
            ],
            check=True,
            capture_output=True,
        )
    content = tmp_path / "bundle"
    content.mkdir()
    rootfs = content / "rootfs.ext4"
    with rootfs.open("wb") as f:
        f.truncate(8 * 2**20)
    tree = tmp_path / "tree"
    tree.mkdir()
    # some content that does not compress away: RAUC refuses a bundle of one squashfs block
    (tree / "content").write_bytes(os.urandom(256 * 1024))
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(rootfs)], check=True)
    conf = _ini(RAUC_CONF.read_text())
    (content / "manifest.raucm").write_text(
        f"[update]\ncompatible={conf['system']['compatible']}\nversion=test\n\n"
        "[bundle]\nformat=verity\n\n[image.rootfs]\nfilename=rootfs.ext4\n"
    )
    bundle = tmp_path / "update.raucb"
    subprocess.run(
        [
            "rauc",
            "bundle",
            f"--cert={tmp_path / 'good.pem'}",
            f"--key={tmp_path / 'good.key'}",
            str(content),
            str(bundle),
        ],
        check=True,
        capture_output=True,
    )
    good = subprocess.run(
        ["rauc", "info", f"--keyring={tmp_path / 'good.pem'}", "--output-format=json", str(bundle)],
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0, good.stderr
    info = json.loads(good.stdout)
    assert info["compatible"] == conf["system"]["compatible"]
    assert info["images"][0]["rootfs"]["filename"] == "rootfs.ext4"
    assert info["images"][0]["rootfs"]["size"] == 8 * 2**20
    other = subprocess.run(
        ["rauc", "info", f"--keyring={tmp_path / 'other.pem'}", str(bundle)],
        capture_output=True,
        text=True,
    )
    assert other.returncode != 0
    assert "signature" in other.stderr.lower() or "verif" in other.stderr.lower(), other.stderr
