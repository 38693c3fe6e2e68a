#!/usr/bin/env bash
# Boot the built image under qemu (software emulation) through its own boot loader and check it
# from outside, like a scanner and a technologist would: DCMTK echoscu and storescu on the DICOM
# port, an SSH login that lands in the console, no failed unit, the boot finished ("running"), the
# root file system read-only; then `rauc install` of the build's update bundle (a second disk)
# writes slot B. The second boot (UEFI firmware) runs slot B, still holds the stored study and the
# queued (paused) send job, and confirms the slot; a third boot of slot B whose DICOM services
# never come up is not confirmed, and the fourth boot rolls back to slot A. A fifth boot runs the
# image file as built, on a disk no larger than itself (no room for slot B).
#
#   image-build/smoke.sh [--out DIR] [--kvm] [--no-reboot]
#
# DIR is the build's output (default image-build/out). The built image is not modified: the test
# boots a sparse copy, 3 GiB larger, like a box's disk: the first boot adds root-b and grows the
# data partition into it (systemd-repart), past the daemon's 1 GB disk reserve. Ports 104 and 22
# are forwarded to free loopback ports; the guest's report comes on its second serial port
# (dicom-appliance-smoke.service, started only by the test's additions to the kernel command line,
# which the host writes into GRUB's environment block). BIOS boots use qemu's SeaBIOS, the UEFI
# boot OVMF. Needs qemu-system-x86_64, ovmf, dcmtk (echoscu, storescu), ssh, mtools,
# grub-editenv, sfdisk, python3 with pydicom (to write the test study).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/out"
accel="tcg"
reboot=1
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --kvm) accel="kvm"; shift ;;
        --no-reboot) reboot=0; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd
ovmf_vars=/usr/share/OVMF/OVMF_VARS_4M.fd
for tool in qemu-system-x86_64 /usr/bin/echoscu /usr/bin/storescu ssh ssh-keygen mcopy \
    grub-editenv sfdisk "$ovmf_code" "$ovmf_vars"; do
    [ -e "$tool" ] || command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done

work="$(mktemp -d /tmp/appliance-smoke.XXXXXX)"
qemu_pid=""
cleanup() {
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then kill "$qemu_pid"; fi
    echo "logs kept in $work"
}
trap cleanup EXIT

failures=0
ok() { echo "ok   $*"; }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }

cp --sparse=always "$out/appliance.img" "$work/disk.img"
truncate -s +3G "$work/disk.img"
ssh-keygen -q -t ed25519 -N "" -f "$work/key"
key_b64="$(base64 -w0 "$work/key.pub")"
read -r p104 p22 < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')
python3 - "$work/study" <<'PY'
import sys
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

folder = Path(sys.argv[1])
folder.mkdir()
study = generate_uid()
series = generate_uid()
for n in range(1, 3):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID = "SMOKE^TEST", "SMOKE1"
    ds.Modality, ds.InstanceNumber = "CT", n
    ds.StudyDate, ds.StudyTime = "20260101", "120000"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(16 * 16 * 2)
    ds.save_as(folder / f"ct{n}.dcm", enforce_file_format=True)
PY

# --- the disk, from the host's side (between boots) ------------------------------------------

partition_start() {
    # byte offset of the partition named $1 in the test disk
    sfdisk --json "$work/disk.img" 2>/dev/null | python3 -c '
import json, sys
table = json.load(sys.stdin)["partitiontable"]
print(*[p["start"] * table.get("sectorsize", 512) for p in table["partitions"] if p.get("name") == sys.argv[1]])
' "$1"
}

grubenv() {
    # grub-editenv on the block in the disk's EFI system partition: grubenv set A=1 ... | list
    local esp
    esp="$work/disk.img@@$(partition_start esp)"
    mcopy -n -i "$esp" ::/grub/grubenv "$work/grubenv"
    grub-editenv "$work/grubenv" "$@"
    if [ "$1" != list ]; then mcopy -o -i "$esp" "$work/grubenv" ::/grub/grubenv; fi
}

grubvar() { grubenv list | sed -n "s/^$1=//p"; }

test_cmdline="systemd.mask=serial-getty@ttyS0.service systemd.wants=dicom-appliance-smoke.service dicom_smoke.key=$key_b64"

boot() {
    # boot N bios|uefi [bundle]: with "bundle", the update bundle as a second disk
    local n="$1" firmware="$2" extra=()
    : >"$work/smoke$n.log"
    if [ "${3:-}" = bundle ]; then
        extra+=(-drive "file=$work/bundle.img,if=none,id=bundle,format=raw,readonly=on"
            -device "virtio-blk-pci,drive=bundle,serial=rauc-bundle")
    fi
    if [ "$firmware" = uefi ]; then
        cp "$ovmf_vars" "$work/ovmf-vars.fd"
        extra+=(-drive "if=pflash,format=raw,readonly=on,file=$ovmf_code"
            -drive "if=pflash,format=raw,file=$work/ovmf-vars.fd")
    fi
    qemu-system-x86_64 -accel "$accel" -cpu max -m 1024 -smp 2 -display none -no-reboot \
        -monitor "unix:$work/monitor,server,nowait" \
        -drive "file=$work/disk.img,if=none,id=disk,format=raw" \
        -device "virtio-blk-pci,drive=disk,bootindex=1" "${extra[@]}" \
        -nic "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:$p104-:104,hostfwd=tcp:127.0.0.1:$p22-:22" \
        -serial "file:$work/console$n.log" -serial "file:$work/smoke$n.log" &
    qemu_pid=$!
    boot_start=$SECONDS
}

wait_echo() {
    local limit="$1"
    while [ $((SECONDS - boot_start)) -lt "$limit" ]; do
        kill -0 "$qemu_pid" 2>/dev/null || return 1
        if /usr/bin/echoscu -to 5 -ta 5 -td 5 -aec APPLIANCE 127.0.0.1 "$p104" >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    return 1
}

wait_for_line() {
    local n="$1" pattern="$2" limit="$3"
    while [ $((SECONDS - boot_start)) -lt "$limit" ]; do
        grep -aq "$pattern" "$work/smoke$n.log" 2>/dev/null && return 0
        kill -0 "$qemu_pid" 2>/dev/null || return 1
        sleep 1
    done
    return 1
}

wait_report() { wait_for_line "$1" '^SMOKE-DONE' "$2"; }

# (the UEFI firmware writes to both serial ports: a report line can follow its output)
report() { sed -n "s/^.*SMOKE $2=//p" "$work/smoke$1.log" | tr -d '\r' | head -n1; }

check_report() {
    local n="$1"
    if ! wait_report "$n" 240; then
        fail "boot $n: no report from the guest on ttyS1"
        return
    fi
    [ "$(report "$n" daemon)" = active ] && ok "boot $n: dicom-appliance.service active" ||
        fail "boot $n: dicom-appliance.service $(report "$n" daemon)"
    local failed system
    failed="$(report "$n" failed | xargs)"
    system="$(report "$n" system)"
    [ -z "$failed" ] && ok "boot $n: no failed unit" || fail "boot $n: failed units: $failed"
    [ "$system" = running ] && ok "boot $n: system running" || fail "boot $n: system $system"
    echo "     boot $n: $(report "$n" errors) error lines in the journal, data on" \
        "$(report "$n" data-mount) ($(report "$n" data-size)); partitions $(report "$n" partitions)"
    echo "     boot $n: $(report "$n" boot-time)"
    [ "$(report "$n" root-ro)" = yes ] && ok "boot $n: root file system read-only ($(report "$n" root))" ||
        fail "boot $n: root file system not read-only: $(report "$n" root) ($(report "$n" root-ro))"
    grep '^SMOKE \(err\|unit\):' "$work/smoke$n.log" | sed 's/^/     /' || true
}

monitor() {
    # one command to qemu's human monitor; waits for the next prompt, so that the command is
    # taken before the connection closes
    python3 - "$work/monitor" "$1" <<'PY' || true
import socket
import sys

s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
seen = b""


def until_prompt():
    global seen
    while not seen.endswith(b"(qemu) "):
        data = s.recv(4096)
        if not data:
            return
        seen += data


until_prompt()
seen = b""
s.sendall(sys.argv[2].encode() + b"\n")
until_prompt()
s.close()
PY
}

power_off() {
    # the ACPI power button, pressed again every 30 s if the guest missed it
    local i=0
    while kill -0 "$qemu_pid" 2>/dev/null && [ $i -lt 150 ]; do
        if [ $((i % 30)) -eq 0 ]; then monitor system_powerdown; fi
        sleep 1
        i=$((i + 1))
    done
    if kill -0 "$qemu_pid" 2>/dev/null; then
        fail "the guest did not power off within 150 s"
        kill "$qemu_pid"
    else
        ok "clean power-off in ${i} s"
    fi
    wait "$qemu_pid" 2>/dev/null || true
    qemu_pid=""
}

ssh_console() {
    local term="$1" log="$work/ssh-$1.log"
    # A login shell would print the prompt; the console draws a full-screen UI (alternate screen).
    (sleep 12) | TERM="$term" timeout 25 ssh -tt -i "$work/key" -p "$p22" \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
        -o ConnectTimeout=10 tech@127.0.0.1 >"$log" 2>&1 || true
    if grep -q $'\e\[?1049h' "$log"; then
        ok "SSH login (TERM=$term) lands in the console"
    else
        fail "SSH login (TERM=$term) did not show the console; first bytes: $(head -c 200 "$log" | tr -cd '[:print:]')"
    fi
}

expect_slot() {
    local n="$1" want="$2" got
    got="$(report "$n" slot)"
    [ "$got" = "$want" ] && ok "boot $n: slot $want booted" || fail "boot $n: slot '$got' booted, not $want"
}

# the update bundle as a disk (a whole number of sectors); the guest reads back its real size
cp "$out/appliance-update.raucb" "$work/bundle.img"
bundle_size="$(stat -c %s "$work/bundle.img")"
truncate -s $(((bundle_size + 511) / 512 * 512)) "$work/bundle.img"
grubenv set extra_cmdline="$test_cmdline dicom_smoke.bundle=$bundle_size"
echo "== boot 1 ($accel, BIOS, image $(($(stat -c %s "$out/appliance.img") / 1048576)) MiB)"
boot 1 bios bundle
if wait_echo 180; then
    echo_time=$((SECONDS - boot_start))
    ok "echoscu answered ${echo_time} s after qemu started"
else
    fail "echoscu: no answer within 180 s"
fi
if /usr/bin/storescu -v -to 30 -ta 30 -td 60 -aec APPLIANCE 127.0.0.1 "$p104" "$work"/study/*.dcm >"$work/storescu.log" 2>&1; then
    ok "storescu stored a study (2 instances)"
else
    fail "storescu (exit $?): $(tail -n 5 "$work/storescu.log")"
fi
check_report 1
expect_slot 1 A
[ "$(report 1 confirmed)" = yes ] && ok "boot 1: slot A confirmed once the daemon was ready" ||
    fail "boot 1: slot A not confirmed: $(report 1 slots)"
[ "$(report 1 jobs)" -ge 1 ] 2>/dev/null && ok "a send job queued and paused (job $(report 1 job))" ||
    fail "no job queued on the first boot (job '$(report 1 job)', $(report 1 jobs) active)"
ssh_console xterm-256color
ssh_console linux
# the update: `rauc install` of the build's bundle writes root-b and makes slot B next, on trial
if wait_for_line 1 '^SMOKE-UPDATED' 400; then
    [ "$(report 1 update)" = ok ] && ok "rauc install of the update bundle ($(du -m "$out/appliance-update.raucb" | cut -f1) MiB) into slot B" ||
        fail "rauc install: $(report 1 update); $(sed -n 's/^.*SMOKE update-log: //p' "$work/smoke1.log" | tr '\n' ' ')"
    [ "$(report 1 update-next)" = B ] && ok "after the update GRUB boots slot B next" ||
        fail "after the update the next boot is '$(report 1 update-next)', not B"
else
    fail "rauc install did not finish within 400 s"
fi
power_off

if [ "$reboot" = 1 ]; then
    grubenv set extra_cmdline="$test_cmdline"
    echo "== boot 2 (UEFI): slot B"
    boot 2 uefi
    if wait_echo 240; then ok "echoscu after the reboot ($((SECONDS - boot_start)) s, UEFI)"; else fail "echoscu after the reboot (UEFI)"; fi
    check_report 2
    expect_slot 2 B
    instances="$(report 2 instances)"
    [ "${instances:-0}" -ge 2 ] && ok "the stored study survived the reboot ($instances instance files)" ||
        fail "after the reboot the archive holds ${instances:-0} instance files"
    jobs="$(report 2 jobs)"
    [ "${jobs:-0}" -ge 1 ] && ok "the queued job survived the reboot ($jobs active, job $(report 2 job))" ||
        fail "after the reboot the queue holds ${jobs:-0} active jobs (job $(report 2 job))"
    [ "$(report 2 confirmed)" = yes ] && ok "boot 2: slot B confirmed" ||
        fail "boot 2: slot B not confirmed: $(report 2 slots)"
    [ "$(report 2 rauc-booted)" = B ] && ok "boot 2: RAUC sees slot B booted" ||
        fail "boot 2: RAUC says booted '$(report 2 rauc-booted)'"
    power_off
    [ "$(grubvar B_TRY)" = 0 ] && [ "$(grubvar B_OK)" = 1 ] && ok "the environment block holds slot B as good" ||
        fail "after boot 2 the environment block says B_OK=$(grubvar B_OK) B_TRY=$(grubvar B_TRY)"

    # Slot B again, but its DICOM services do not come up (as after a bad update): not confirmed
    echo "== boot 3 (BIOS): slot B without its daemon"
    grubenv set extra_cmdline="$test_cmdline systemd.mask=dicom-appliance.service"
    boot 3 bios
    if wait_report 3 240; then
        expect_slot 3 B
        [ "$(report 3 daemon)" != active ] && [ "$(report 3 confirmed)" = no ] &&
            ok "boot 3: no daemon, slot B left unconfirmed (failed: $(report 3 failed | xargs))" ||
            fail "boot 3: daemon $(report 3 daemon), confirmed $(report 3 confirmed)"
    else
        fail "boot 3: no report from the guest on ttyS1"
    fi
    power_off

    echo "== boot 4 (BIOS): rollback to slot A"
    grubenv set extra_cmdline="$test_cmdline"
    boot 4 bios
    if wait_echo 180; then ok "echoscu after the rollback ($((SECONDS - boot_start)) s)"; else fail "echoscu after the rollback"; fi
    check_report 4
    expect_slot 4 A
    [ "$(report 4 instances)" -ge 2 ] 2>/dev/null && ok "the study is still there after the rollback" ||
        fail "after the rollback the archive holds $(report 4 instances) instance files"
    power_off

    # The image file booted as it is, on a disk no larger than itself: no room for root-b, and
    # a data partition of 128 MiB. It must still boot cleanly and take studies.
    echo "== boot 5 (BIOS): the image file as built, on a disk no larger than itself"
    cp --sparse=always "$out/appliance.img" "$work/disk.img"
    grubenv set extra_cmdline="$test_cmdline"
    boot 5 bios
    if wait_echo 180; then ok "echoscu answered ($((SECONDS - boot_start)) s)"; else fail "echoscu on the unenlarged image"; fi
    if /usr/bin/storescu -to 30 -ta 30 -td 60 -aec APPLIANCE 127.0.0.1 "$p104" "$work"/study/*.dcm >"$work/storescu5.log" 2>&1; then
        ok "storescu stored the study on the small data partition"
    else
        fail "storescu on the unenlarged image: $(tail -n 3 "$work/storescu5.log")"
    fi
    check_report 5
    power_off
fi

echo "== smoke: $failures failure(s); boot-to-echo ${echo_time:-none} s (first boot); total $SECONDS s"
[ "$failures" -eq 0 ]
