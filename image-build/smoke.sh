#!/usr/bin/env bash
# Boot the built image under qemu (software emulation) and check it from outside, like a scanner
# and a technologist would: DCMTK echoscu and storescu on the DICOM port, an SSH login that lands
# in the console, no failed unit, the boot finished ("running"); then a clean power-off and a
# second boot that still holds the stored study and the queued (paused) send job.
#
#   image-build/smoke.sh [--out DIR] [--kvm] [--no-reboot]
#
# DIR is the build's output (default image-build/out). The built image is not modified: the test
# boots a sparse copy, 3 GiB larger, like a box's disk: the first boot adds root-b and grows the
# data partition into it (systemd-repart), past the daemon's 1 GB disk reserve. Ports 104 and 22 are forwarded to free loopback ports; the guest's report
# comes on its second serial port (dicom-appliance-smoke.service, started only by the kernel
# command line of a test boot). Needs qemu-system-x86_64, dcmtk (echoscu, storescu), ssh,
# python3 with pydicom (to write the test study).
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
for tool in qemu-system-x86_64 /usr/bin/echoscu /usr/bin/storescu ssh ssh-keygen; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
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

boot() {
    local n="$1"
    : >"$work/smoke$n.log"
    local append
    append="$(cat "$out/cmdline") systemd.mask=serial-getty@ttyS0.service"
    append+=" systemd.wants=dicom-appliance-smoke.service dicom_smoke.key=$key_b64"
    qemu-system-x86_64 -accel "$accel" -cpu max -m 1024 -smp 2 -display none -no-reboot \
        -monitor "unix:$work/monitor,server,nowait" \
        -kernel "$out/vmlinuz" -initrd "$out/initrd.img" -append "$append" \
        -drive "file=$work/disk.img,if=virtio,format=raw" \
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

wait_report() {
    local n="$1" limit="$2"
    while [ $((SECONDS - boot_start)) -lt "$limit" ]; do
        grep -q '^SMOKE-DONE' "$work/smoke$n.log" 2>/dev/null && return 0
        sleep 1
    done
    return 1
}

report() { sed -n "s/^SMOKE $2=//p" "$work/smoke$1.log" | tr -d '\r' | head -n1; }

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

echo "== boot 1 ($accel, image $(($(stat -c %s "$out/appliance.img") / 1048576)) MiB)"
boot 1
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
[ "$(report 1 jobs)" -ge 1 ] 2>/dev/null && ok "a send job queued and paused (job $(report 1 job))" ||
    fail "no job queued on the first boot (job '$(report 1 job)', $(report 1 jobs) active)"
ssh_console xterm-256color
ssh_console linux
power_off

if [ "$reboot" = 1 ]; then
    echo "== boot 2"
    boot 2
    if wait_echo 180; then ok "echoscu after the reboot ($((SECONDS - boot_start)) s)"; else fail "echoscu after the reboot"; fi
    check_report 2
    instances="$(report 2 instances)"
    [ "${instances:-0}" -ge 2 ] && ok "the stored study survived the reboot ($instances instance files)" ||
        fail "after the reboot the archive holds ${instances:-0} instance files"
    jobs="$(report 2 jobs)"
    [ "${jobs:-0}" -ge 1 ] && ok "the queued job survived the reboot ($jobs active, job $(report 2 job))" ||
        fail "after the reboot the queue holds ${jobs:-0} active jobs (job $(report 2 job))"
    power_off
fi

echo "== smoke: $failures failure(s); boot-to-echo ${echo_time:-none} s; total $SECONDS s"
[ "$failures" -eq 0 ]
