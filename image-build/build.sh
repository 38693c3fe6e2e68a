#!/usr/bin/env bash
# Build the appliance disk image on a Debian machine, as root, without containers.
#
#   image-build/build.sh [--out DIR] [--update-lock]
#
# Output in DIR (default image-build/out): appliance.img (GPT: bios-boot, esp, root-a, data;
# GRUB for BIOS and UEFI), appliance-update.raucb (a signed RAUC bundle of the same root file
# system; signing key from DICOM_APPLIANCE_UPDATE_KEY/_CERT, else a development key kept in
# DIR/keys), vmlinuz, initrd.img and cmdline beside it (for a direct-kernel boot),
# rootfs/ (the root tree, kept for `systemd-analyze verify --root=`), packages.txt (the Debian
# package list). The root file system is mounted read-only; /etc, /var, /home and /root are
# overlays whose changes live on the data partition (files/initramfs). On its first boot on a
# larger disk, systemd-repart (files/repart.d) adds root-b (partition 5), as large as root-a, for
# A/B updates, and grows the data partition to the end of the disk; the image itself stays
# small. The disk must be at least the image plus one root partition.
#
# Locks (image-build/lock/): debian.lock pins every Debian package of the root file system
# ("name version"), python.lock pins every wheel of the virtual environment with its sha256
# (pip's requirements format, installed with --require-hashes). A build with locks present
# installs exactly those versions and fails if the package set differs; --update-lock resolves
# afresh and rewrites both files.
#
# Needs on the host: mmdebstrap, e2fsprogs (mkfs.ext4 -d), fdisk (sfdisk), dosfstools and mtools
# (the EFI system partition), grub-common, grub-pc-bin and grub-efi-amd64-bin (grub-mkimage,
# grub-editenv and GRUB's modules), rauc, squashfs-tools and openssl (the update bundle), python3
# with pip.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
suite="bookworm"
chroot_path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
venv="/opt/dicom-appliance/venv"

# Debian packages the appliance needs at run time, on top of --variant=minbase.
packages=(
    systemd systemd-sysv systemd-timesyncd udev dbus
    linux-image-amd64 initramfs-tools
    openssh-server
    python3 python3-venv
    ca-certificates xorriso
    rauc rauc-service
)

# In the chroot: a clean environment, so nothing of the host's (PIP_*, proxies, locale) leaks in.
in_chroot() {
    local root="$1"
    shift
    env -i PATH="$chroot_path" HOME=/root LANG=C.UTF-8 chroot "$root" "$@"
}

# --- wheelhouse (on the host) -----------------------------------------------------------------

pip_host() {
    # the host's own find-links (host-only wheels) must not feed the image
    env -u PIP_FIND_LINKS -u PIP_INDEX_URL_EXTRA python3 -m pip "$@"
}

target_platform=(
    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 --abi abi3
    --abi none
    --platform manylinux_2_36_x86_64 --platform manylinux_2_35_x86_64
    --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64 --platform manylinux2010_x86_64
    --platform manylinux1_x86_64 --platform linux_x86_64 --platform any
)

build_wheelhouse() {
    local wheels="$1" lock="$here/lock/python.lock"
    rm -rf "$wheels"
    mkdir -p "$wheels/project" "$wheels/deps"
    pip_host wheel --quiet --no-deps --no-build-isolation -w "$wheels/project" "$repo" ||
        pip_host wheel --quiet --no-deps -w "$wheels/project" "$repo"
    local project_wheel
    project_wheel="$(ls "$wheels"/project/dicom_appliance-*.whl)"
    if [ "$update_lock" = 1 ] || [ ! -s "$lock" ]; then
        echo "== resolving Python dependencies for the image (cp311, manylinux)"
        pip_host download --quiet "${target_platform[@]}" -d "$wheels/deps" "$project_wheel"
        rm -f "$wheels"/deps/dicom_appliance-*.whl
        write_python_lock "$wheels/deps" >"$lock.new"
        mv "$lock.new" "$lock"
    else
        echo "== downloading the locked wheels"
        pip_host download --quiet --no-deps --require-hashes "${target_platform[@]}" \
            -d "$wheels/deps" -r "$lock"
    fi
    cp "$lock" "$wheels/python.lock"
}

write_python_lock() {
    python3 - "$1" <<'PY'
import hashlib
import pathlib
import re
import sys

print("# Python wheels of the image's virtual environment (cp311, manylinux x86_64).")
print("# Written by image-build/build.sh --update-lock; installed with --require-hashes.")
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl"), key=lambda p: p.name.lower()):
    name, version = wheel.name.split("-")[:2]
    name = re.sub(r"[-_.]+", "-", name).lower()
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    print(f"{name}=={version} --hash=sha256:{digest}")
PY
}

# --- root file system -------------------------------------------------------------------------

debian_pins() {
    # apt preferences that hold every package at its locked version
    local lock="$here/lock/debian.lock" name version
    while read -r name version; do
        case "$name" in "" | "#"*) continue ;; esac
        printf 'Package: %s\nPin: version %s\nPin-Priority: 1001\n\n' "$name" "$version"
    done <"$lock"
}

build_rootfs() {
    local root="$1" wheels="$2" prefs="$3"
    local include
    include="$(IFS=,; echo "${packages[*]}")"
    local setup=(--setup-hook='mkdir -p "$1/etc/apt/preferences.d"')
    if [ -s "$prefs" ]; then
        setup+=(--setup-hook="cp '$prefs' \"\$1/etc/apt/preferences.d/image-lock.pref\"")
    fi
    rm -rf "$root"
    SOURCE_DATE_EPOCH="$epoch" mmdebstrap --mode=root --variant=minbase --quiet \
        --include="$include" \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        "${setup[@]}" \
        --customize-hook="'$here/build.sh' --customize \"\$1\" '$wheels'" \
        "$suite" "$root"
}

install_units() {
    local root="$1" f base enable=()
    local sysd="$root/usr/lib/systemd/system"
    for f in "$repo"/systemd/*; do
        [ -f "$f" ] || continue
        base="$(basename "$f")"
        case "$base" in
            *.sysusers.conf) install -D -m 0644 "$f" "$root/usr/lib/sysusers.d/${base%.sysusers.conf}.conf" ;;
            *.tmpfiles.conf) install -D -m 0644 "$f" "$root/usr/lib/tmpfiles.d/${base%.tmpfiles.conf}.conf" ;;
            *.rules) install -D -m 0644 "$f" "$root/usr/lib/udev/rules.d/$base" ;;
            *sshd*.conf) install -D -m 0644 "$f" "$root/etc/ssh/sshd_config.d/${base#sshd-}" ;;
            *journald*.conf) install -D -m 0644 "$f" "$root/usr/lib/systemd/journald.conf.d/$base" ;;
            *timesyncd*.conf) install -D -m 0644 "$f" "$root/usr/lib/systemd/timesyncd.conf.d/$base" ;;
            *.service | *.socket | *.timer | *.target | *.path)
                install -D -m 0644 "$f" "$sysd/$base"
                if grep -q '^WantedBy=\|^RequiredBy=' "$f"; then
                    case "$base" in
                        *@.service)
                            if grep -q '^DefaultInstance=' "$f"; then enable+=("$base")
                            elif [[ $base == *console* ]]; then enable+=("${base%@.service}@tty1.service")
                            fi ;;
                        *) enable+=("$base") ;;
                    esac
                fi ;;
            *.conf) echo "   (not installed: systemd/$base — unknown kind)" ;;
            *) echo "   (not installed: systemd/$base)" ;;
        esac
    done
    # The appliance listens on the DICOM port 104 unless the unit already says otherwise.
    if ! grep -q -- '--port' "$sysd/dicom-appliance.service"; then
        install -D -m 0644 /dev/stdin "$sysd/dicom-appliance.service.d/10-port.conf" <<EOF
[Service]
ExecStart=
ExecStart=$venv/bin/dicom-appliance serve --port 104
EOF
    fi
    install -D -m 0644 "$here/files/80-dhcp.network" "$root/etc/systemd/network/80-dhcp.network"
    install -D -m 0644 "$here/files/fstab" "$root/etc/fstab"
    # root-b and the data partition's growth on the first boot, before any local file system
    # (the data partition's check and mount) is started
    # A disk too small for root-b (the image booted as it is) is reported, not a failed boot:
    # the box runs from slot A with the data partition it has.
    install -D -m 0644 /dev/stdin "$sysd/systemd-repart.service.d/10-appliance.conf" <<'EOF'
[Unit]
Before=local-fs-pre.target
Wants=local-fs-pre.target

[Service]
ExecStart=
ExecStart=/bin/sh -c 'systemd-repart --dry-run=no || echo "systemd-repart: the disk has no room for root-b (needs the image plus one root partition): no A/B updates, data partition not grown" >&2'
EOF
    # the initramfs mounts the data partition before repart grows it: grow its file system only
    # after that
    install -D -m 0644 /dev/stdin "$sysd/systemd-growfs@data.service.d/10-appliance.conf" <<'EOF'
[Unit]
After=systemd-repart.service
EOF
    # DICOM needs no routable address to listen: one configured interface is enough, and a box
    # without a cable starts its services after 20 s instead of two minutes
    install -D -m 0644 /dev/stdin "$sysd/systemd-networkd-wait-online.service.d/10-appliance.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=20
EOF
    install -D -m 0644 "$here/files/dicom-appliance-smoke.service" "$sysd/dicom-appliance-smoke.service"
    install -D -m 0755 "$here/files/dicom-appliance-smoke" "$root/usr/libexec/dicom-appliance-smoke"
    install -d -m 0755 "$root/data" "$root/var/lib/dicom-appliance"
    echo "dicom-appliance" >"$root/etc/hostname"
    in_chroot "$root" systemd-sysusers
    in_chroot "$root" systemctl enable systemd-networkd.service systemd-timesyncd.service \
        ssh.service "${enable[@]}"
    echo "   enabled: ${enable[*]}"
}

# The generic kernel, not the cloud one: a box next to a scanner boots from SATA (AHCI) or NVMe,
# has a physical network card and a USB keyboard and drive, and the cloud kernel has no drivers for
# most of those. What a headless DICOM box never uses (graphics beyond the firmware's frame
# buffer, sound, cameras and TV cards, wireless, Bluetooth, InfiniBand, staging drivers, ...)
# is removed, which halves the kernel's size.
unused_module_trees=(
    drivers/gpu drivers/media sound drivers/net/wireless net/wireless net/mac80211
    drivers/bluetooth net/bluetooth drivers/infiniband drivers/staging drivers/isdn drivers/iio
    drivers/net/can net/can drivers/comedi drivers/input/touchscreen drivers/input/joystick
    drivers/mtd drivers/net/ethernet/mellanox drivers/net/ethernet/chelsio drivers/scsi/lpfc
    drivers/scsi/qla2xxx drivers/scsi/bfa drivers/scsi/be2iscsi drivers/net/ieee802154
    net/ieee802154 drivers/nfc net/nfc drivers/hwmon drivers/w1 drivers/platform/chrome
    drivers/platform/surface drivers/thunderbolt drivers/fpga drivers/accessibility
    fs/btrfs fs/xfs fs/ocfs2 fs/gfs2 fs/nilfs2 fs/f2fs fs/jfs fs/reiserfs fs/ceph
    fs/nfsd fs/afs
)

prune_kernel_modules() {
    local root="$1" dir version
    for dir in "$root"/lib/modules/*/; do
        version="$(basename "$dir")"
        for tree in "${unused_module_trees[@]}"; do
            rm -rf "${dir}kernel/$tree"
        done
        in_chroot "$root" depmod -a "$version"
    done
}

# Runs as mmdebstrap's customize hook: $1 is the root, /proc /sys /dev are mounted there.
customize() {
    local root="$1" wheels="$2"
    echo "== appliance into $venv"
    rm -rf "$root/tmp/wheels"
    cp -a "$wheels" "$root/tmp/wheels"
    in_chroot "$root" python3 -m venv "$venv"
    in_chroot "$root" "$venv/bin/pip" install --quiet --no-index --no-deps --require-hashes \
        --no-compile -r /tmp/wheels/python.lock --find-links /tmp/wheels/deps
    in_chroot "$root" sh -c "$venv/bin/pip install --quiet --no-index --no-deps /tmp/wheels/project/*.whl"
    in_chroot "$root" "$venv/bin/python" -m compileall -q -j 0 "$venv/lib" >/dev/null || true
    # pip itself is not needed at run time
    in_chroot "$root" "$venv/bin/python" -m pip uninstall --quiet --yes pip setuptools >/dev/null 2>&1 || true
    ln -sf "$venv/bin/dicom-appliance" "$root/usr/local/bin/dicom-appliance"
    ln -sf "$venv/bin/dicom-console" "$root/usr/local/bin/dicom-console"
    grep -qx /usr/local/bin/dicom-console "$root/etc/shells" || echo /usr/local/bin/dicom-console >>"$root/etc/shells"
    rm -rf "$root/tmp/wheels"
    echo "== units and system files"
    install_units "$root"
    # machine identity is made on first boot; ssh host keys too: Ed25519 and ECDSA only (an RSA
    # key takes a quarter of a minute of a slow box's first boot, and no client needs it)
    rm -f "$root"/etc/ssh/ssh_host_*
    install -D -m 0644 /dev/stdin "$root/etc/ssh/sshd_config.d/05-host-keys.conf" <<'EOF'
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
EOF
    install -D -m 0644 /dev/stdin "$root/etc/systemd/system/ssh.service.d/10-hostkeys.conf" <<'EOF'
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'for t in ed25519 ecdsa; do k=/etc/ssh/ssh_host_$${t}_key; [ -s "$$k" ] || /usr/bin/ssh-keygen -q -t "$$t" -N "" -f "$$k" || exit 1; done'
ExecStartPre=/usr/sbin/sshd -t
EOF
    echo "== updates: RAUC with the build's update signing certificate as its keyring"
    install -D -m 0644 "$here/files/rauc/system.conf" "$root/etc/rauc/system.conf"
    install -D -m 0644 "$wheels/update.cert.pem" "$root/etc/rauc/keyring.pem"
    install -D -m 0755 "$here/files/rauc/backend" "$root/usr/libexec/dicom-appliance-rauc-backend"
    echo "== read-only root: overlays on the data partition from the initramfs"
    install -D -m 0755 "$here/files/initramfs/hooks/dicom-appliance" \
        "$root/etc/initramfs-tools/hooks/dicom-appliance"
    install -D -m 0755 "$here/files/initramfs/scripts/local-bottom/dicom-appliance" \
        "$root/etc/initramfs-tools/scripts/local-bottom/dicom-appliance"
    install -D -m 0644 "$here/files/initramfs/conf.d/dicom-appliance.conf" \
        "$root/etc/initramfs-tools/conf.d/dicom-appliance.conf"
    prune_kernel_modules "$root"
    in_chroot "$root" update-initramfs -u -k all >/dev/null
    install -d -m 0755 "$root/efi"
    : >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    rm -f "$root/etc/apt/preferences.d/image-lock.pref"
}

# --- update signing -------------------------------------------------------------------------

update_signing_key() {
    # The key and certificate that sign update bundles; the certificate is the image's RAUC
    # keyring. A vendor's own come from DICOM_APPLIANCE_UPDATE_KEY and _CERT; without them a
    # development pair is made once in DIR/keys and kept for later builds (bundles of one build
    # machine install on each other's images).
    local keys="$1"
    if [ -n "${DICOM_APPLIANCE_UPDATE_KEY:-}" ] && [ -n "${DICOM_APPLIANCE_UPDATE_CERT:-}" ]; then
        signing_key="$DICOM_APPLIANCE_UPDATE_KEY"
        signing_cert="$DICOM_APPLIANCE_UPDATE_CERT"
        return
    fi
    signing_key="$keys/update.key.pem"
    signing_cert="$keys/update.cert.pem"
    if [ ! -s "$signing_key" ] || [ ! -s "$signing_cert" ]; then
        install -d -m 0700 "$keys"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
            -subj "/O=DICOM appliance/CN=update signing (development key of $(hostname))" \
            -keyout "$signing_key" -out "$signing_cert" 2>/dev/null
        chmod 0600 "$signing_key"
        echo "   new development update signing key in $keys"
    fi
}

make_bundle() {
    # A RAUC bundle (verity format) with this build's root file system, for `rauc install`
    local rootfs="$1" out="$2" stage="$3" version
    version="$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)"
    rm -rf "$stage" && mkdir -p "$stage"
    mv "$rootfs" "$stage/rootfs.ext4"
    cat >"$stage/manifest.raucm" <<EOF
[update]
compatible=dicom-appliance-x86_64
version=$version
description=DICOM appliance root file system

[bundle]
format=verity

[image.rootfs]
filename=rootfs.ext4
EOF
    rm -f "$out/appliance-update.raucb"
    rauc bundle --cert="$signing_cert" --key="$signing_key" "$stage" \
        "$out/appliance-update.raucb" >"$stage.log" 2>&1 || { cat "$stage.log" >&2; exit 1; }
    rauc info --keyring="$signing_cert" "$out/appliance-update.raucb" >/dev/null 2>&1 ||
        { echo "the new bundle does not verify against $signing_cert" >&2; exit 1; }
}

# --- disk image -------------------------------------------------------------------------------

mib() { echo $(($1 * 1024 * 1024)); }

# GRUB's modules, built into its images (nothing is loaded from the disk at boot)
grub_modules=(part_gpt part_msdos fat ext2 normal linux search search_fs_uuid regexp configfile
    loadenv test echo serial terminal gzio halt reboot sleep)

make_esp() {
    # The EFI system partition, written without mounting it: GRUB for UEFI on the removable-media
    # path (no NVRAM entry needed), GRUB's core for BIOS (installed apart), the menu and the slot
    # environment block.
    local esp="$1" esp_mib="$2" uuid="$3" stage="$4"
    mkdir -p "$stage"
    printf 'search --no-floppy --fs-uuid --set=root %s\nset prefix=($root)/grub\n' "$uuid" >"$stage/early.cfg"
    grub-mkimage -O x86_64-efi -o "$stage/BOOTX64.EFI" -p /grub -c "$stage/early.cfg" \
        "${grub_modules[@]}" efi_gop efi_uga all_video
    grub-mkimage -O i386-pc -o "$stage/core.img" -p /grub -c "$stage/early.cfg" \
        "${grub_modules[@]}" biosdisk
    grub-script-check "$here/files/grub.cfg"
    grub-editenv "$stage/grubenv" create
    grub-editenv "$stage/grubenv" set ORDER="A B" A_OK=1 A_TRY=0 B_OK=0 B_TRY=0
    rm -f "$esp"
    mkfs.vfat -C -F 16 -n ESP -i "${uuid/-/}" "$esp" $((esp_mib * 1024)) >/dev/null
    mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/grub
    mcopy -i "$esp" "$stage/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
    mcopy -i "$esp" "$here/files/grub.cfg" "$stage/grubenv" ::/grub/
}

assemble_image() {
    local root="$1" out="$2"
    local used root_mib data_mib=128 esp_mib=16
    used="$(du -sm --apparent-size "$root" | cut -f1)"
    root_mib=$(((used * 130 / 100 + 63) / 64 * 64))
    echo "== disk image: root file system ${used} MiB used, root partitions ${root_mib} MiB each"
    local f
    for f in "$here"/files/repart.d/*.conf; do
        sed "s/@ROOT_MIB@/$root_mib/g" "$f" | install -D -m 0644 /dev/stdin "$root/usr/lib/repart.d/$(basename "$f")"
    done
    local stage="$out/stage"
    rm -rf "$stage" && mkdir -p "$stage/data/dicom-appliance" "$stage/data/system"
    mkfs.ext4 -q -F -L root-a -E root_owner=0:0 -d "$root" "$stage/root-a.ext4" "${root_mib}M"
    mkfs.ext4 -q -F -L data -d "$stage/data" "$stage/data.ext4" "${data_mib}M"
    # the ESP's volume id, which GRUB finds it by: fixed per commit, for reproducible images
    local uuid
    uuid="$(printf '%08X' $((epoch & 0xFFFFFFFF)))"
    uuid="${uuid:0:4}-${uuid:4:4}"
    make_esp "$stage/esp.fat" "$esp_mib" "$uuid" "$stage/grub"
    # GPT types: BIOS boot, EFI system, root (x86-64) and Linux data of the Discoverable
    # Partitions Specification, which systemd-repart matches its repart.d definitions against.
    # Partition numbers matter: grub.cfg boots slot A from 3 and slot B from 5 (repart's next).
    local img="$out/appliance.img" s_boot=2048 s_esp s_root_a s_data total
    s_esp=$((s_boot + 2048))
    s_root_a=$((s_esp + esp_mib * 2048))
    s_data=$((s_root_a + root_mib * 2048))
    total=$(((s_data + data_mib * 2048 + 2048) * 512))
    rm -f "$img"
    truncate -s "$total" "$img"
    sfdisk --quiet --no-reread --no-tell-kernel "$img" <<EOF
label: gpt
start=$s_boot, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=bios-boot
start=$s_esp, size=$((esp_mib * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
start=$s_root_a, size=$((root_mib * 2048)), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root-a
start=$s_data, size=$((data_mib * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=data
EOF
    dd if="$stage/esp.fat" of="$img" bs=1M seek=$((s_esp / 2048)) conv=notrunc,sparse status=none
    dd if="$stage/root-a.ext4" of="$img" bs=1M seek=$((s_root_a / 2048)) conv=notrunc,sparse status=none
    dd if="$stage/data.ext4" of="$img" bs=1M seek=$((s_data / 2048)) conv=notrunc,sparse status=none
    python3 "$here/install-bios-boot.py" "$img" /usr/lib/grub/i386-pc/boot.img \
        "$stage/grub/core.img" "$s_boot"
    make_bundle "$stage/root-a.ext4" "$out" "$stage/bundle"
    rm -rf "$stage"
    cp "$(ls "$root"/boot/vmlinuz-* | tail -n1)" "$out/vmlinuz"
    cp "$(ls "$root"/boot/initrd.img-* | tail -n1)" "$out/initrd.img"
    echo "root=/dev/disk/by-partlabel/root-a rauc.slot=A ro console=tty1 console=ttyS0 panic=10 quiet" >"$out/cmdline"
}

check_debian_lock() {
    local root="$1" out="$2" lock="$here/lock/debian.lock"
    in_chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' | sort >"$out/packages.txt"
    if [ "$update_lock" = 1 ] || [ ! -s "$lock" ]; then
        {
            echo "# Debian packages of the image's root file system ($suite, amd64): name version."
            echo "# Written by image-build/build.sh --update-lock; a build installs exactly these."
            cat "$out/packages.txt"
        } >"$lock"
        echo "== wrote $lock ($(wc -l <"$out/packages.txt") packages)"
    elif ! diff -u <(grep -v '^#' "$lock") "$out/packages.txt" >"$out/lock.diff"; then
        echo "the Debian package set differs from image-build/lock/debian.lock:" >&2
        cat "$out/lock.diff" >&2
        echo "(a locked version is gone from the mirror, or the package list changed;" \
            "rerun with --update-lock to accept)" >&2
        exit 1
    fi
}

main() {
    out="$here/out"
    update_lock=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --out) out="$2"; shift 2 ;;
            --update-lock) update_lock=1; shift ;;
            --customize) customize "$2" "$3"; return ;;
            -h | --help) sed -n '2,26p' "${BASH_SOURCE[0]}"; return ;;
            *) echo "unknown argument: $1" >&2; exit 2 ;;
        esac
    done
    if [ "$(id -u)" -ne 0 ]; then
        echo "build.sh runs as root (mmdebstrap --mode=root, chroot)" >&2
        exit 1
    fi
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"
    # the commit's time: file times in the root and the ESP's volume id, the same for one commit
    epoch="$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)"
    local start=$SECONDS
    build_wheelhouse "$out/wheels"
    update_signing_key "$out/keys"
    cp "$signing_cert" "$out/wheels/update.cert.pem"
    local prefs="$out/debian-lock.pref"
    : >"$prefs"
    if [ "$update_lock" = 0 ] && [ -s "$here/lock/debian.lock" ]; then debian_pins >"$prefs"; fi
    echo "== root file system ($suite, mmdebstrap minbase)"
    build_rootfs "$out/rootfs" "$out/wheels" "$prefs"
    check_debian_lock "$out/rootfs" "$out"
    assemble_image "$out/rootfs" "$out"
    local img="$out/appliance.img"
    echo "== built $img and $out/appliance-update.raucb in $((SECONDS - start)) s"
    echo "   image size $(($(stat -c %s "$img") / 1024 / 1024)) MiB" \
        "(allocated $(($(du -k "$img" | cut -f1) / 1024)) MiB)," \
        "root file system $(du -sm "$out/rootfs" | cut -f1) MiB," \
        "kernel+initrd $(($(stat -c %s "$out/vmlinuz") / 1024 / 1024 + $(stat -c %s "$out/initrd.img") / 1024 / 1024)) MiB," \
        "update bundle $(($(stat -c %s "$out/appliance-update.raucb") / 1024 / 1024)) MiB"
}

main "$@"
