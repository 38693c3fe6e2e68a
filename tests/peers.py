"""Real DICOM peers for tests: DCMTK tools, Orthanc, and our own daemon, on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

# pynetdicom installs console scripts with DCMTK's names (storescu, echoscu...); always run
# DCMTK's own binaries by absolute path.
DCMTK_BIN = Path("/usr/bin")
ORTHANC_BIN = Path("/usr/sbin/Orthanc")
LOOPBACK = "127.0.0.1"


def dcmtk(tool: str) -> str:
    path = DCMTK_BIN / tool
    if not path.exists():
        raise RuntimeError(f"DCMTK tool {tool} is missing: install the dcmtk package")
    return str(path)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port} after {timeout} s")


def run(cmd: Sequence[str], timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,  # type: ignore[arg-type]
    )


def appliance_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "appliance.cli", *args]


class Daemon:
    """`dicom-appliance serve` as a child process with its own data folder and port."""

    def __init__(self, data_dir: Path, ae_title: str = "APPLIANCE") -> None:
        self.data_dir = data_dir
        self.ae_title = ae_title
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-daemon.log"

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return run(appliance_cmd(*args, "--data-dir", str(self.data_dir)), timeout=timeout)

    def configure(self, **settings: object) -> None:
        for key, value in settings.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            result = self.cli("config", "set", key, str(value))
            assert result.returncode == 0, result.stderr

    def start(self, port: int | None = None) -> Daemon:
        self.port = port or free_port()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            appliance_cmd(
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(self.port),
                "--ae-title",
                self.ae_title,
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for_port(self.port, proc=self.proc)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class StoreSCP:
    """DCMTK `storescp` writing into a folder."""

    def __init__(
        self,
        folder: Path,
        ae_title: str = "STORESCP",
        extra: Sequence[str] = (),
        port: int | None = None,
    ) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.port = port or free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [dcmtk("storescp"), "-aet", ae_title, "-od", str(folder), *extra, str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for_port(self.port, proc=self.proc)

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Orthanc:
    """An Orthanc server with its own storage, DICOM and HTTP ports on loopback."""

    def __init__(self, folder: Path, ae_title: str = "ORTHANC", **extra_config: object) -> None:
        if not ORTHANC_BIN.exists():
            raise RuntimeError("Orthanc is missing: install the orthanc package")
        self.folder = folder
        self.ae_title = ae_title
        self.dicom_port = free_port()
        self.http_port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "test-orthanc",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "DicomAet": ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "Plugins": [],
            "DicomModalities": {},
            **extra_config,
        }
        config_path = folder / "orthanc.json"
        config_path.write_text(json.dumps(config))
        self.log_file = open(folder / "orthanc.log", "ab")
        self.proc = subprocess.Popen(
            [str(ORTHANC_BIN), str(config_path)], stdout=self.log_file, stderr=subprocess.STDOUT
        )
        wait_for_port(self.dicom_port, timeout=60, proc=self.proc)
        wait_for_port(self.http_port, timeout=60, proc=self.proc)

    def rest(self, path: str, data: bytes | None = None, method: str | None = None) -> object:
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{self.http_port}{path}", data=data, method=method
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def instance_uids(self) -> set[str]:
        uids = set()
        for orthanc_id in self.rest("/instances"):  # type: ignore[union-attr]
            tags = self.rest(f"/instances/{orthanc_id}/simplified-tags")
            uids.add(tags["SOPInstanceUID"])  # type: ignore[index]
        return uids

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log_file.close()


def disk_free_mb(path: Path) -> int:
    return shutil.disk_usage(path).free // 2**20


def env_without_proxy() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
