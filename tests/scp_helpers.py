"""Helpers for the Storage/Verification SCP tests: DCMTK runs, the index, raw PDUs."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import struct
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE

from tests.peers import LOOPBACK, Daemon, dcmtk, run

INDEX = "index.sqlite"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
ARCHIVE = "archive"

_SENDING = re.compile(r"^I: Sending file: (.+)$")
_STORE_RSP = re.compile(r"^I: Received Store Response(?: \((.+)\))?\s*$")
_ACCEPTED_CX = re.compile(r"^D:\s+Context ID:\s+(\d+) \(Accepted\)")
_ACCEPTED_TS = re.compile(r"^D:\s+Accepted Transfer Syntax: =?(.+?)\s*$")
_RSP_CX = re.compile(r"^D: Presentation Context ID\s+:\s+(\d+)")
_RSP_STATUS = re.compile(r"^D: DIMSE Status\s+:\s+0x([0-9A-Fa-f]{4}):?\s*(.*)$")


# --- DCMTK ---------------------------------------------------------------------------------


def echoscu(
    daemon: Daemon, calling: str = "ECHOSCU", called: str | None = None
) -> subprocess.CompletedProcess:
    return run(
        [
            dcmtk("echoscu"),
            "-aet",
            calling,
            "-aec",
            called or daemon.ae_title,
            LOOPBACK,
            str(daemon.port),
        ],
        timeout=60,
    )


def storescu_cmd(
    daemon: Daemon,
    files: Iterable[Path],
    *options: str,
    calling: str = "STORESCU",
    verbosity: str = "-v",
) -> list[str]:
    return [
        dcmtk("storescu"),
        verbosity,
        *options,
        "-aet",
        calling,
        "-aec",
        daemon.ae_title,
        LOOPBACK,
        str(daemon.port),
        *map(str, files),
    ]


def storescu(
    daemon: Daemon,
    files: Iterable[Path],
    *options: str,
    calling: str = "STORESCU",
    verbosity: str = "-v",
    timeout: float = 180,
) -> subprocess.CompletedProcess:
    return run(
        storescu_cmd(daemon, files, *options, calling=calling, verbosity=verbosity),
        timeout=timeout,
    )


def store_results(output: str) -> list[tuple[str, str]]:
    """(file, response) for every Store Response in storescu ``-v``/``-d`` output, in order.

    The response is DCMTK's wording ("Success", "Out of Resources" ...); with ``-d`` it is
    taken from the "DIMSE Status" line that follows ("0x0000: Success" gives "Success").
    """
    results: list[tuple[str, str]] = []
    current: str | None = None
    awaiting_status = False
    for line in output.splitlines():
        sending = _SENDING.match(line)
        if sending:
            current = sending.group(1).strip()
            awaiting_status = False
            continue
        response = _STORE_RSP.match(line)
        if response and current is not None:
            if response.group(1):
                results.append((current, response.group(1)))
                current = None
            else:
                awaiting_status = True
            continue
        status = _RSP_STATUS.match(line)
        if status and awaiting_status and current is not None:
            results.append((current, status.group(2).strip()))
            current = None
            awaiting_status = False
    return results


def succeeded_files(output: str) -> list[str]:
    return [name for name, response in store_results(output) if response == "Success"]


def negotiated_transfer_syntaxes(debug_output: str) -> list[str]:
    """DCMTK's names of the transfer syntaxes of the contexts storescu ``-d`` stored on."""
    accepted: dict[int, str] = {}
    context: int | None = None
    used: list[str] = []
    for line in debug_output.splitlines():
        match = _ACCEPTED_CX.match(line)
        if match:
            context = int(match.group(1))
            continue
        match = _ACCEPTED_TS.match(line)
        if match and context is not None:
            accepted[context] = match.group(1)
            context = None
            continue
        match = _RSP_CX.match(line)
        if match:
            used.append(accepted[int(match.group(1))])
    return used


def dcmdump_transfer_syntax(path: Path) -> str:
    """DCMTK's name of a file's transfer syntax, as dcmdump prints it."""
    result = run([dcmtk("dcmdump"), "-M", "+P", "0002,0010", str(path)], timeout=60)
    assert result.returncode == 0, result.stderr
    match = re.search(r"UI \[?=?([^\]\s#]+)", result.stdout)
    assert match, result.stdout
    return match.group(1)


def storescu_config(folder: Path, sop_class: str, transfer_syntax: str) -> tuple[str, str]:
    """A storescu ``-xf`` configuration proposing exactly one context; returns (file, profile)."""
    path = folder / "storescu.cfg"
    path.write_text(
        "[[TransferSyntaxes]]\n"
        "[Only]\n"
        f"TransferSyntax1 = {transfer_syntax}\n"
        "[[PresentationContexts]]\n"
        "[OnlyContexts]\n"
        f"PresentationContext1 = {sop_class}\\Only\n"
        "[[Profiles]]\n"
        "[OnlyProfile]\n"
        "PresentationContexts = OnlyContexts\n"
    )
    return str(path), "OnlyProfile"


# --- the archive and its index -------------------------------------------------------------


def index_rows(data_dir: Path, sql: str, params: Sequence[object] = ()) -> list[tuple]:
    db = sqlite3.connect(data_dir / INDEX, timeout=30)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def indexed_uids(data_dir: Path) -> set[str]:
    if not (data_dir / INDEX).exists():
        return set()
    return {row[0] for row in index_rows(data_dir, "SELECT sop_instance_uid FROM instances")}


def instance_count(data_dir: Path) -> int:
    return int(index_rows(data_dir, "SELECT COUNT(*) FROM instances")[0][0])


def stored_path(data_dir: Path, sop_instance_uid: str) -> Path:
    rows = index_rows(
        data_dir, "SELECT path FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,)
    )
    assert rows, f"{sop_instance_uid} is not indexed"
    return data_dir / ARCHIVE / rows[0][0]


def read_stored(data_dir: Path, sop_instance_uid: str) -> Dataset:
    return dcmread(stored_path(data_dir, sop_instance_uid))


def files_under(folder: Path) -> set[Path]:
    found: set[Path] = set()
    for directory, _dirs, names in os.walk(folder):
        found.update(Path(directory) / name for name in names)
    return found


def sop_instance_uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# --- pynetdicom and raw-socket peers -------------------------------------------------------


def client_ae(ae_title: str = "PYCLIENT") -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = 20
    ae.dimse_timeout = 30
    ae.network_timeout = 30
    return ae


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def associate_rq_pdu(
    called: str,
    calling: str,
    contexts: Sequence[tuple[str, Sequence[str]]] = ((VERIFICATION, (IMPLICIT_LE,)),),
) -> bytes:
    """A well-formed A-ASSOCIATE-RQ PDU (PS3.8 9.3.2), built by hand for raw-socket tests."""
    body = struct.pack(">HH", 1, 0)
    body += called.encode().ljust(16) + calling.encode().ljust(16) + b"\x00" * 32
    body += _item(0x10, b"1.2.840.10008.3.1.1.1")
    for number, (abstract, transfer_syntaxes) in enumerate(contexts):
        payload = bytes([2 * number + 1, 0, 0, 0]) + _item(0x30, abstract.encode())
        for transfer_syntax in transfer_syntaxes:
            payload += _item(0x40, transfer_syntax.encode())
        body += _item(0x20, payload)
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.9.7433.1")
    body += _item(0x50, user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def raw_connection(port: int, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    return sock


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """Read one PDU; returns (type, body). Raises ConnectionError when the peer closes."""
    header = _read_exactly(sock, 6)
    pdu_type, _reserved, length = struct.unpack(">BBI", header)
    return pdu_type, _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        data += chunk
    return data


def store_statuses(debug_output: str) -> list[tuple[str, int]]:
    """(file, DIMSE status) for every Store Response in storescu ``-d`` output, in order."""
    results: list[tuple[str, int]] = []
    current: str | None = None
    for line in debug_output.splitlines():
        sending = _SENDING.match(line)
        if sending:
            current = sending.group(1).strip()
            continue
        status = _RSP_STATUS.match(line)
        if status and current is not None:
            results.append((current, int(status.group(1), 16)))
            current = None
    return results


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 2, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


def part10_bytes(sop_class: str, sop_instance: str, transfer_syntax: str, body: bytes) -> bytes:
    """A Part 10 file around ``body``, with File Meta written by hand so that any UID text
    (invalid ones included) can be put into it."""
    meta = b"".join(
        [
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", sop_class.encode()),
            _meta_element(0x0003, b"UI", sop_instance.encode()),
            _meta_element(0x0010, b"UI", transfer_syntax.encode()),
            _meta_element(0x0012, b"UI", b"1.2.826.0.1.3680043.9.7433.1"),
        ]
    )
    group_length = struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(meta))
    return b"\x00" * 128 + b"DICM" + group_length + meta + body


def encode_dataset(ds: Dataset, transfer_syntax: str = "1.2.840.10008.1.2.1") -> bytes:
    """``ds`` encoded without File Meta, in an uncompressed transfer syntax."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import UID

    uid = UID(transfer_syntax)
    buffer = DicomBytesIO()
    buffer.is_little_endian = uid.is_little_endian
    buffer.is_implicit_VR = uid.is_implicit_VR
    plain = Dataset()
    plain.update(ds)
    write_dataset(buffer, plain)
    return buffer.getvalue()


def ac_context_results(body: bytes) -> dict[int, int]:
    """{presentation context ID: result} from the body of an A-ASSOCIATE-AC PDU."""
    results: dict[int, int] = {}
    position = 68  # protocol version, reserved, called and calling AE, 32 reserved bytes
    while position + 4 <= len(body):
        item_type, _reserved, length = struct.unpack_from(">BBH", body, position)
        if item_type == 0x21:
            results[body[position + 4]] = body[position + 6]
        position += 4 + length
    return results
