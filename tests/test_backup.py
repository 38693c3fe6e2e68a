"""`dicom-appliance backup` and `restore`: a round trip through a running daemon into a fresh data
folder whose daemon runs the restored queued job, file modes, and the archives a restore refuses
(damaged, newer, escaping paths) without writing anything, and while a daemon runs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import time
from pathlib import Path

import pytest

from appliance.backup import FORMAT, FORMAT_VERSION, STAGING_DIR
from appliance.control import control_socket_path
from appliance.control_client import ApiError, ControlClient
from appliance.pseudonyms import PseudonymStore
from tests.factories import write_ct_series
from tests.peers import LOOPBACK, Daemon, StoreSCP, free_port
from tests.test_jobs_daemon import FAST_RETRY, add_node, queue_send, wait_job


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cli(data_dir: Path, *args: str):
    return Daemon(data_dir).cli(*args)


def tree(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(folder.rglob("*"))
    }


def audit_text(data_dir: Path) -> str:
    return "".join(p.read_text() for p in sorted((data_dir / "audit").glob("audit-*.log")))


def test_round_trip_through_a_running_daemon_and_the_restored_daemon_runs_the_queued_job(
    daemon_factory, tmp_path
):
    daemon = daemon_factory(**FAST_RETRY)
    source = daemon.data_dir
    with PseudonymStore(source) as pseudonyms:
        mapped = pseudonyms.patient("study1", "PID-1", "DOE^JANE", "19700101")
    for args in (
        ("tls", "generate"),
        ("printer", "add", "film", "--ae-title", "PRINTER", "--host", LOOPBACK, "--port", "1"),
    ):
        result = daemon.cli(*args)
        assert result.returncode == 0, result.stderr
    daemon.start()
    port = free_port()  # nothing listens there yet: the send waits for a retry
    add_node(daemon, "pacs", "STORESCP", port)
    files = write_ct_series(tmp_path / "series", 2)
    job_id = queue_send(daemon, "pacs", *files)
    wait_job(daemon, job_id, {"waiting-retry"})

    backup = tmp_path / "out" / "appliance.tar.gz"
    backup.parent.mkdir()
    result = daemon.cli("backup", str(backup))
    assert result.returncode == 0, result.stderr
    assert "made by the running daemon" in result.stdout
    assert mode(backup) == 0o600
    assert list((source / STAGING_DIR).iterdir()) == []  # the staged file was moved out
    with tarfile.open(backup) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
    assert names[0] == "manifest.json"
    assert manifest["format"] == FORMAT and manifest["version"] == FORMAT_VERSION
    paths = {f["path"] for f in manifest["files"]}
    assert {
        "config.json",
        "jobs/active.json",
        "tls/key.pem",
        "tls/cert.pem",
        "anonymization/pseudonyms.sqlite",
    } <= paths
    assert not any(p.startswith("archive") or p == "index.sqlite" for p in paths)
    assert "archive" in manifest["left_out"] and "index.sqlite" in manifest["left_out"]
    assert any(p.startswith("audit/audit-") for p in paths)
    before = {
        what: daemon.cli(*what.split(), "--json").stdout
        for what in ("config show", "node list", "printer list")
    }
    daemon.kill()
    # The daemon recorded the backup as an Export naming where the file went.
    assert f"appliance state backup to {backup}" in audit_text(source)

    target = tmp_path / "fresh" / "data"
    result = cli(target, "restore", str(backup))
    assert result.returncode == 0, result.stderr
    assert f"appliance state restored from {backup}" in audit_text(target)
    for what, text in before.items():
        after = cli(target, *what.split(), "--json")
        assert after.returncode == 0, after.stderr
        if what == "printer list":  # live status differs: compare the configuration
            keep = ("name", "ae_title", "host", "port")
            text, after_text = (
                [{k: p[k] for k in keep} for p in json.loads(t)] for t in (text, after.stdout)
            )
            assert after_text == text
        else:
            assert json.loads(after.stdout) == json.loads(text), what
    assert (target / "tls" / "key.pem").read_bytes() == (source / "tls" / "key.pem").read_bytes()
    assert mode(target / "tls" / "key.pem") == 0o600
    assert mode(target / "tls") == 0o700
    assert mode(target / "anonymization" / "pseudonyms.sqlite") == 0o600
    assert mode(target / "anonymization") == 0o700
    with PseudonymStore(target) as pseudonyms:
        assert pseudonyms.patient("study1", "PID-1", "DOE^JANE", "19700101") == mapped
        assert pseudonyms.count("study1") == 1

    restored = Daemon(target)
    try:
        restored.start()
        assert wait_job(restored, job_id, {"waiting-retry", "queued", "running"})
        scp = StoreSCP(tmp_path / "storescp", port=port)
        try:
            done = wait_job(restored, job_id, {"succeeded", "failed", "partially-failed"}, 60)
            assert done["state"] == "succeeded", done
            assert len(scp.files()) == 2
        finally:
            scp.stop()
        # A backup with the daemon of the restored folder refused to technologists.
        with ControlClient(control_socket_path(target), role="technologist") as client:
            with pytest.raises(ApiError) as refused:
                client.call("backup.create")
        assert refused.value.code == "forbidden"
        # Restore into a folder whose daemon runs: refused, nothing changed.
        before_restore = tree(target / "jobs")
        result = restored.cli("restore", str(backup), "--force")
        assert result.returncode == 1
        assert "a daemon is running" in result.stderr and "stop it first" in result.stderr
        assert tree(target / "jobs") == before_restore
        assert not list(target.glob("pre-restore-*"))
    finally:
        restored.kill()


def test_backup_without_a_daemon_and_restore_over_existing_state_needs_force(tmp_path):
    source, target = tmp_path / "a", tmp_path / "b"
    assert cli(source, "node", "add", "pacs", "--ae-title", "PACS", "--host", LOOPBACK,
               "--port", "104").returncode == 0  # fmt: skip
    assert cli(source, "tls", "generate").returncode == 0
    backup = tmp_path / "b.tar.gz"
    backup.write_bytes(b"old backup")
    os.chmod(backup, 0o644)
    result = cli(source, "backup", str(backup))
    assert result.returncode == 0, result.stderr
    assert "no daemon running" in result.stdout
    assert "appliance state backup to" in audit_text(source)
    missing = cli(tmp_path / "none", "backup", str(tmp_path / "x.tar.gz"))
    assert missing.returncode == 1 and "no data folder" in missing.stderr
    assert not (tmp_path / "none").exists()
    assert mode(backup) == 0o600  # replaced by a new 0600 file
    check = cli(target, "restore", "--check", str(backup))
    assert check.returncode == 0 and "a good backup" in check.stdout
    assert not target.exists()

    # A re-imaged box: first boot made a configuration and a key of its own.
    assert cli(target, "config", "set", "ae_title", "NEWBOX").returncode == 0
    assert cli(target, "tls", "generate").returncode == 0
    own_key = (target / "tls" / "key.pem").read_bytes()
    before = tree(target)
    refused = cli(target, "restore", str(backup))
    assert refused.returncode == 1
    assert "--force" in refused.stderr and "config.json" in refused.stderr
    assert tree(target) == before

    result = cli(target, "restore", "--force", str(backup))
    assert result.returncode == 0, result.stderr
    aside = next(target.glob("pre-restore-*"))
    assert mode(aside) == 0o700
    assert (aside / "tls" / "key.pem").read_bytes() == own_key
    assert (target / "tls" / "key.pem").read_bytes() == (source / "tls" / "key.pem").read_bytes()
    assert "pacs" in cli(target, "node", "list").stdout
    shown = json.loads(cli(target, "config", "show", "--json").stdout)
    assert shown["ae_title"] != "NEWBOX"


# --- archives a restore refuses --------------------------------------------------------------


def make_archive(path: Path, files: dict[str, bytes], **manifest_changes: object) -> Path:
    """A backup built by hand: ``manifest_changes`` overrides manifest keys; a value of a
    ``files`` entry may be tampered after its hash is taken by passing ``(listed, actual)``."""
    listed = []
    members = []
    for name, data in files.items():
        given, actual = data if isinstance(data, tuple) else (data, data)
        listed.append(
            {
                "path": name,
                "size": len(given),
                "mode": "0600",
                "sha256": hashlib.sha256(given).hexdigest(),
            }
        )
        members.append((f"data/{name}", actual))
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created": "2025-01-01T00:00:00+00:00",
        "host": "box",
        "appliance_version": "0",
        "files": listed,
        "left_out": [],
        **manifest_changes,
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [("manifest.json", json.dumps(manifest).encode()), *members]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return path


CONFIG = b'{"nodes": {}}'


def with_link(path: Path) -> Path:
    make_archive(path, {"config.json": CONFIG})
    with tarfile.open(path, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
        link = tarfile.TarInfo("data/tls/key.pem")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/shadow"
        tar.addfile(link)
    return path


def garbage(path: Path) -> Path:
    path.write_bytes(b"not a backup at all")
    return path


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda p: make_archive(p, {"config.json": (CONFIG, b'{"nodes": {"x": 1}}')}),
            "does not match its SHA-256",
        ),
        (lambda p: make_archive(p, {"config.json": CONFIG}, version=FORMAT_VERSION + 1), "newer"),
        (lambda p: make_archive(p, {"../outside.json": CONFIG}), "leaves its folder"),
        (lambda p: make_archive(p, {"tls/../../escape": CONFIG}), "leaves its folder"),
        (lambda p: make_archive(p, {"archive/x.dcm": CONFIG}), "not part of the appliance"),
        (lambda p: make_archive(p, {"config.json": CONFIG}, format="zip"), "not a dicom-appliance"),
        (with_link, "link"),
        (garbage, "not a readable backup"),
    ],
    ids=["hash", "newer", "dotdot", "nested-dotdot", "archive", "format", "symlink", "garbage"],
)
def test_restore_refuses_bad_archives_and_writes_nothing(tmp_path, build, message):
    archive = build(tmp_path / "bad.tar.gz")
    target = tmp_path / "data"
    result = cli(target, "restore", str(archive))
    assert result.returncode == 1, result.stdout
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not target.exists()
    assert not (tmp_path / "outside.json").exists() and not (tmp_path / "escape").exists()


def test_restore_refuses_a_truncated_archive_and_keeps_existing_state(tmp_path):
    source, target = tmp_path / "a", tmp_path / "b"
    assert cli(source, "tls", "generate").returncode == 0
    backup = tmp_path / "b.tar.gz"
    assert cli(source, "backup", str(backup)).returncode == 0
    backup.write_bytes(backup.read_bytes()[:-40])
    assert cli(target, "config", "set", "ae_title", "KEEP").returncode == 0
    before = tree(target)
    result = cli(target, "restore", "--force", str(backup))
    assert result.returncode == 1
    assert "damaged" in result.stderr, result.stderr
    assert tree(target) == before


def test_an_absolute_member_name_is_refused(tmp_path):
    path = tmp_path / "abs.tar.gz"
    make_archive(path, {"config.json": CONFIG})
    with tarfile.open(path, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
        evil = tarfile.TarInfo(str(tmp_path / "evil"))
        evil.size = 1
        tar.addfile(evil, io.BytesIO(b"x"))
    result = cli(tmp_path / "data", "restore", str(path))
    assert result.returncode == 1
    assert "absolute" in result.stderr or "unexpected member" in result.stderr
    assert not (tmp_path / "evil").exists() and not (tmp_path / "data").exists()
