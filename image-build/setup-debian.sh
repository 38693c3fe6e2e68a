#!/usr/bin/env bash
# Set up the appliance from this checkout on a fresh Debian machine, then run it or test it.
#   image-build/setup-debian.sh run    install, start the daemon on a local data folder, open the console
#   image-build/setup-debian.sh test   install, run the whole test suite, then build the appliance
#                                      image and boot it under qemu (what CI runs)
set -euo pipefail

mode="${1:-run}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

install_system_packages() {
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update
    # dcmtk, orthanc and dicom3tools are the real DICOM peers the tests talk to; qpdf and
    # poppler-utils are the independent readers that check the film preview PDFs; ssh-keygen and
    # the libraries of the unpacked sshd (below) check the console's SSH drop-in.
    $sudo apt-get install -y --no-install-recommends \
        python3 python3-venv python3-pip python3-dev gcc \
        dcmtk orthanc dicom3tools xorriso tmux sqlite3 ca-certificates procps iproute2 systemd \
        qpdf poppler-utils openssh-client libwrap0
    # The orthanc package enables a system-wide server; tests start their own instances.
    if [ -d /run/systemd/system ]; then
        $sudo systemctl disable --now orthanc.service >/dev/null 2>&1 || true
    fi
}

install_python_packages() {
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e "$repo[test]"
}

# The tests check the console's sshd drop-in with `sshd -T`. The server package is unpacked, not
# installed, so testing never starts an SSH server on this machine.
unpack_sshd_for_tests() {
    local into="$venv/openssh-server"
    if [ ! -x "$into/usr/sbin/sshd" ]; then
        local download
        download="$(mktemp -d)"
        (cd "$download" && apt-get download openssh-server >/dev/null)
        dpkg -x "$download"/openssh-server_*.deb "$into"
        rm -rf "$download"
    fi
    export SSHD="$into/usr/sbin/sshd"
}

run_tests() {
    cd "$repo"
    unpack_sshd_for_tests
    "$venv/bin/ruff" check "$repo"
    # pytest exits 5 when it collects nothing; set -e turns that into a failure too.
    "$venv/bin/python" -m pytest -n 2 --durations=15 "$@"
}

run_appliance() {
    local data="${DICOM_APPLIANCE_DATA:-${XDG_DATA_HOME:-$HOME/.local/share}/dicom-appliance}"
    mkdir -p "$data"
    local pidfile="$data/daemon.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "appliance already running (pid $(cat "$pidfile")), data folder $data"
    else
        nohup "$venv/bin/dicom-appliance" serve --data-dir "$data" >>"$data/daemon.log" 2>&1 &
        echo $! >"$pidfile"
        sleep 2
        if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            echo "the appliance did not start; last log lines:" >&2
            tail -n 20 "$data/daemon.log" >&2
            exit 1
        fi
        echo "appliance started (pid $(cat "$pidfile")), data folder $data, log $data/daemon.log"
        echo "stop it with: kill \$(cat $pidfile)"
    fi
    exec "$venv/bin/dicom-console" --data-dir "$data"
}

# The appliance image: built from Debian's packages before the suite (whose checks read the built
# root: package set, `systemd-analyze verify --root=`), then booted under qemu and checked from
# outside (image-build/smoke.sh). Part of the test run; needs root.
build_image() {
    # GRUB's -bin packages hold its modules only (the host's own boot loader is not touched);
    # ovmf is the UEFI firmware for the smoke test's UEFI boot
    $sudo apt-get install -y --no-install-recommends \
        mmdebstrap qemu-system-x86 fdisk e2fsprogs openssh-client shellcheck \
        grub-common grub-pc-bin grub-efi-amd64-bin dosfstools mtools ovmf \
        rauc squashfs-tools openssl
    $sudo "$repo/image-build/build.sh"
}

run_image_smoke_test() {
    $sudo "$repo/image-build/smoke.sh"
}

case "$mode" in
    run)
        install_system_packages
        install_python_packages
        run_appliance
        ;;
    test)
        shift || true
        install_system_packages
        install_python_packages
        build_image
        run_tests "$@"
        run_image_smoke_test
        ;;
    *)
        echo "usage: $0 run|test" >&2
        exit 2
        ;;
esac
