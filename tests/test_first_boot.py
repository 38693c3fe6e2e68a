"""`dicom-appliance first-boot`: the AE title from the host name, a TLS identity, idempotent."""

from __future__ import annotations

import grp
import json
import os
import subprocess
from pathlib import Path

import pytest

from appliance.config import ConfigStore
from appliance.first_boot import STAMP_FILE, ae_title_from_hostname, console_lines
from appliance.first_boot import first_boot as first_boot_setup
from tests.peers import appliance_cmd, free_port, run, wait_for_port


@pytest.mark.parametrize(
    ("hostname", "title"),
    [
        ("dicom-appliance", "DICOM_APPLIANCE"),
        ("ct-scanner-2.radiology.example.org", "CT_SCANNER_2"),
        ("a-very-long-host-name-indeed", "A_VERY_LONG_HOST"),
        ("x" * 15 + "-y", "X" * 15),  # cut to 16, no trailing underscore
        ("Röntgen", "R_NTGEN"),
        ("localhost", None),
        ("localhost.localdomain", None),
        ("", None),
        ("---", None),
    ],
)
def test_ae_title_from_hostname(hostname, title):
    assert ae_title_from_hostname(hostname) == title


def first_boot(data: Path, *args: str) -> dict:
    result = run(appliance_cmd("first-boot", "--data-dir", str(data), "--json", *args), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_first_boot_sets_up_once_and_changes_nothing_the_second_time(tmp_path):
    data = tmp_path / "data"
    group = grp.getgrgid(os.getgid()).gr_name  # a group that exists here
    first = first_boot(
        data, "--hostname", "ct-box.example.org", "--port", "104", "--control-group", group
    )
    assert first["ae_title"] == "CT_BOX" and first["port"] == 104
    assert first["steps"]["ae_title"].startswith("set to CT_BOX")
    assert first["steps"]["control_group"] == f"set to {group}"
    assert first["steps"]["tls"].startswith("new ") and "CN=CT_BOX" in first["steps"]["tls"]
    key, cert = data / "tls" / "key.pem", data / "tls" / "cert.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    stamp = json.loads((data / STAMP_FILE).read_text())
    assert stamp["ae_title"] == "CT_BOX" and stamp["done"]
    store = ConfigStore(data)
    try:
        settings = store.settings()
        assert (settings.ae_title, settings.port, settings.control_group) == ("CT_BOX", 104, group)
    finally:
        store.close()

    config_before = (data / "config.json").read_bytes()
    key_before, cert_before = key.read_bytes(), cert.read_bytes()
    # Again, even with another host name and port: everything is kept.
    second = first_boot(
        data, "--hostname", "other-name", "--port", "11113", "--control-group", group
    )
    # the reserve depends on the size of this machine's disk; it is kept either way
    assert second["steps"].pop("disk_reserve_mb").startswith("kept ")
    assert second["steps"] == {
        "ae_title": "kept CT_BOX",
        "port": "kept 104",
        "control_group": f"kept {group}",
        "tls": f"kept the key in {data / 'tls'}",
    }
    assert (data / "config.json").read_bytes() == config_before
    assert (key.read_bytes(), cert.read_bytes()) == (key_before, cert_before)


def test_first_boot_keeps_what_an_operator_set_and_a_key_awaiting_its_certificate(tmp_path):
    data = tmp_path / "data"
    for args in (("config", "set", "ae_title", "MY_AE"), ("config", "set", "port", "4242")):
        assert run(appliance_cmd(*args, "--data-dir", str(data))).returncode == 0
    # A key made for a CSR, the CA's certificate not yet imported: never replaced.
    csr = ["tls", "csr", "--output", str(tmp_path / "csr.pem"), "--data-dir", str(data)]
    assert run(appliance_cmd(*csr)).returncode == 0
    key_before = (data / "tls" / "key.pem").read_bytes()
    done = first_boot(data, "--hostname", "ct-box", "--port", "104")
    assert done["steps"]["ae_title"] == "kept MY_AE"
    assert done["steps"]["port"] == "kept 4242"
    assert done["steps"]["tls"].startswith("kept the key")
    assert (data / "tls" / "key.pem").read_bytes() == key_before


def test_first_boot_without_a_useful_host_name_or_the_group(tmp_path):
    data = tmp_path / "data"
    done = first_boot(data, "--hostname", "localhost", "--control-group", "no-such-group-here")
    assert done["ae_title"] == "APPLIANCE"
    assert "says nothing" in done["steps"]["ae_title"]
    assert done["steps"]["control_group"] == "not set: no group no-such-group-here on this system"
    assert (data / "tls" / "cert.pem").is_file()


def test_first_boot_prints_the_consoles_address(tmp_path):
    data = tmp_path / "data"
    result = run(
        appliance_cmd(
            "first-boot", "--data-dir", str(data), "--hostname", "ct-box", "--port", "104"
        )
    )
    assert result.returncode == 0, result.stderr
    assert "DICOM appliance CT_BOX" in result.stdout
    lines = console_lines(
        {"ae_title": "CT_BOX", "hostname": "ct-box", "port": 104, "addresses": ["192.0.2.7"]}
    )
    assert "  console over SSH:  ssh USER@192.0.2.7  (USER in group dicom-console)" in lines
    assert "  DICOM:             CT_BOX at 192.0.2.7:104" in lines
    offline = console_lines({"ae_title": "A", "hostname": "h", "port": 104, "addresses": []})
    assert any("no network address yet" in line for line in offline)


def test_the_daemon_starts_its_tls_listener_after_first_boot(tmp_path):
    data = tmp_path / "data"
    tls_port = free_port()
    result = run(appliance_cmd("config", "set", "tls_port", str(tls_port), "--data-dir", str(data)))
    assert result.returncode == 0, result.stderr
    first_boot(data, "--hostname", "ct-box")
    proc = subprocess.Popen(
        appliance_cmd("serve", "--data-dir", str(data), "--port", str(free_port())),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Without a key and certificate the daemon leaves the TLS port closed.
        wait_for_port(tls_port, timeout=30, proc=proc)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_first_boot_keeps_the_disk_reserve_within_a_small_data_disk(tmp_path):
    # An image booted on a disk no larger than itself has a data partition of a hundred MB or
    # so: the default reserve of 1024 MB would refuse every study.
    small = ConfigStore(tmp_path / "small")
    done = first_boot_setup(small, hostname="ct1", disk_mb=120)
    assert small.settings().disk_reserve_mb == 16
    assert "a tenth of the 120 MB data disk" in done["steps"]["disk_reserve_mb"]
    medium = ConfigStore(tmp_path / "medium")
    first_boot_setup(medium, hostname="ct1", disk_mb=2400)
    assert medium.settings().disk_reserve_mb == 240
    # a large disk keeps the default; an operator's value is never changed
    large = ConfigStore(tmp_path / "large")
    first_boot_setup(large, hostname="ct1", disk_mb=500_000)
    assert large.settings().disk_reserve_mb == 1024
    operator = ConfigStore(tmp_path / "operator")
    operator.set("disk_reserve_mb", 2048)
    done = first_boot_setup(operator, hostname="ct1", disk_mb=120)
    assert operator.settings().disk_reserve_mb == 2048
    assert done["steps"]["disk_reserve_mb"] == "kept 2048 MB"
