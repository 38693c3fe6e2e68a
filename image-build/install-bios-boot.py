#!/usr/bin/env python3
"""Install GRUB's BIOS boot code into a disk image file, as grub-bios-setup does for a GPT disk.

    install-bios-boot.py IMAGE BOOT_IMG CORE_IMG SECTOR

BOOT_IMG (GRUB's boot.img) goes into the first 440 bytes of the image, keeping the protective
MBR's partition table; CORE_IMG (from grub-mkimage -O i386-pc) into the BIOS boot partition that
starts at SECTOR. boot.img learns where core.img starts, and core.img's first sector (diskboot)
where the rest of it lies. grub-bios-setup would do the same but only on a block device it can
probe (a loop device), which the image build does without.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

SECTOR_SIZE = 512
# Offsets in boot.img (grub-core/boot/i386/pc/boot.S, include/grub/i386/pc/boot.h)
BPB_START, BPB_END = 0x03, 0x5A
KERNEL_SECTOR = 0x5C
DRIVE_CHECK = 0x66
WINDOWS_NT_MAGIC = 0x1B8  # from here to the signature: disk id and partition table, kept
# diskboot.img's first block list entry, at the end of core.img's first sector:
# start (u64), sector count (u16), load segment (u16)
BLOCKLIST = SECTOR_SIZE - 12
BOOT_PARTITION_SECTORS = 2048


def install(image: Path, boot_img: Path, core_img: Path, first_sector: int) -> None:
    boot = bytearray(boot_img.read_bytes())
    core = bytearray(core_img.read_bytes())
    if len(boot) != SECTOR_SIZE:
        raise SystemExit(f"{boot_img}: {len(boot)} bytes, not one sector")
    sectors = -(-len(core) // SECTOR_SIZE)
    if sectors > BOOT_PARTITION_SECTORS:
        raise SystemExit(f"{core_img}: {sectors} sectors do not fit the BIOS boot partition")
    core.extend(bytes(sectors * SECTOR_SIZE - len(core)))
    with image.open("r+b") as disk:
        mbr = bytearray(disk.read(SECTOR_SIZE))
        if mbr[0x1FE:0x200] != b"\x55\xaa" or mbr[0x1C2] != 0xEE:
            raise SystemExit(f"{image}: no protective MBR (write the GPT first)")
        boot[BPB_START:BPB_END] = mbr[BPB_START:BPB_END]
        boot[WINDOWS_NT_MAGIC:0x1FE] = mbr[WINDOWS_NT_MAGIC:0x1FE]
        # a hard disk: trust the boot drive the BIOS passes (the jump would test for floppies)
        boot[DRIVE_CHECK : DRIVE_CHECK + 2] = b"\x90\x90"
        struct.pack_into("<Q", boot, KERNEL_SECTOR, first_sector)
        start, count, segment = struct.unpack_from("<QHH", core, BLOCKLIST)
        if count != sectors - 1:
            raise SystemExit(
                f"{core_img}: block list says {count} sectors, the file has {sectors - 1}"
            )
        struct.pack_into("<QHH", core, BLOCKLIST, first_sector + 1, count, segment)
        disk.seek(0)
        disk.write(boot)
        disk.seek(first_sector * SECTOR_SIZE)
        disk.write(core)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    install(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
