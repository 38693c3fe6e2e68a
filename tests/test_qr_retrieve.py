"""C-MOVE and C-GET SCP: DCMTK movescu/getscu and pynetdicom clients against the daemon, with
DCMTK storescp (or a small pynetdicom Storage SCP) as the move destination."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association

from appliance.scu import _keep_responses_for_the_caller
from tests.factories import ct_dataset
from tests.peers import LOOPBACK, Daemon, StoreSCP, dcmtk, free_port, run
from tests.scp_helpers import client_ae, storescu

STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"

_DIMSE_STATUS = re.compile(r"^D: DIMSE Status\s+:\s+0x([0-9A-Fa-f]{4})", re.MULTILINE)
_FAILED_UID = re.compile(r"^D: \(0008,0058\) UI \[([^\]]*)\]", re.MULTILINE)
_COUNT = re.compile(r"^D: (Remaining|Completed|Failed|Warning) Suboperations\s+:\s+(\S+)", re.M)


# --- the archive and the peers --------------------------------------------------------------


@dataclass
class Study:
    """A study archived in the daemon: series A (CT, 3 images) and series B (CT, 2 images),
    plus MR images when asked for."""

    patient_id: str
    study_uid: str
    series_a: str
    series_b: str
    files: dict[str, Path]  # SOP Instance UID -> the file sent to the daemon
    mr_uids: list[str]

    def uids(self) -> set[str]:
        return set(self.files)

    def series_a_uids(self) -> list[str]:
        return [uid for uid, path in self.files.items() if _series(path) == self.series_a]


def _series(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def archive_study(
    daemon: Daemon,
    folder: Path,
    *,
    series_a: int = 3,
    series_b: int = 2,
    mr: int = 0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    rows: int = 64,
) -> Study:
    folder.mkdir(parents=True, exist_ok=True)
    patient_id = "PAT-" + generate_uid()[-8:]
    study_uid, uid_a, uid_b, uid_mr = (generate_uid() for _ in range(4))
    files: dict[str, Path] = {}
    mr_uids: list[str] = []
    plan = [(uid_a, series_a, CTImageStorage), (uid_b, series_b, CTImageStorage)]
    plan.append((uid_mr, mr, MRImageStorage))
    for series_uid, count, sop_class in plan:
        for number in range(1, count + 1):
            ds = ct_dataset(
                patient_id=patient_id,
                study_uid=study_uid,
                series_uid=series_uid,
                instance_number=number,
                rows=rows,
                columns=rows,
            )
            if transfer_syntax == RLELossless:
                ds.compress(RLELossless, generate_instance_uid=False)
            if sop_class == MRImageStorage:
                ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
                ds.Modality = "MR"
                mr_uids.append(str(ds.SOPInstanceUID))
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files[str(ds.SOPInstanceUID)] = path
    # -xr: propose RLE, so compressed files are archived as such.
    options = ["-xr"] if transfer_syntax == RLELossless else []
    sent = storescu(daemon, list(files.values()), *options)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    return Study(patient_id, study_uid, uid_a, uid_b, files, mr_uids)


def add_node(
    daemon: Daemon,
    name: str,
    ae_title: str,
    port: int,
    *,
    services: str | None = None,
    move_destination: bool = True,
) -> None:
    args = ["node", "add", name, "--ae-title", ae_title, "--host", LOOPBACK, "--port", str(port)]
    if services is not None:
        args += ["--services", services]
    if not move_destination:
        args.append("--no-move-destination")
    result = daemon.cli(*args)
    assert result.returncode == 0, result.stderr


CT_ONLY_CONFIG = """\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[[PresentationContexts]]
[CTOnly]
PresentationContext1 = CTImageStorage\\Uncompressed
[[Profiles]]
[CTOnly]
PresentationContexts = CTOnly
"""


@pytest.fixture
def destination(tmp_path: Path) -> Iterator:
    """Make DCMTK storescp move destinations; all are stopped at teardown."""
    made: list[StoreSCP] = []

    def make(ae_title: str = "DEST", extra: Sequence[str] = ()) -> StoreSCP:
        scp = StoreSCP(tmp_path / f"dest-{ae_title}-{len(made)}", ae_title, extra)
        made.append(scp)
        return scp

    yield make
    for scp in made:
        scp.stop()


def received_uids(scp: StoreSCP) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.files()}


def assert_same_pixels(received: Sequence[Path], study: Study) -> None:
    assert received
    for path in received:
        ds = dcmread(path)
        original = dcmread(study.files[str(ds.SOPInstanceUID)])
        if original.file_meta.TransferSyntaxUID.is_compressed:
            original.decompress(generate_instance_uid=False)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)
        assert ds.PixelData == original.PixelData, path
        assert ds.PatientID == original.PatientID


# --- DCMTK clients ------------------------------------------------------------------------


def movescu(
    daemon: Daemon,
    destination_ae: str,
    keys: dict[str, str],
    *,
    root: str = "-S",
    calling: str = "MOVESCU",
) -> subprocess.CompletedProcess:
    args = [dcmtk("movescu"), "-d", root, "-aet", calling, "-aec", daemon.ae_title]
    args += ["-aem", destination_ae, LOOPBACK, str(daemon.port)]
    for key, value in keys.items():
        args += ["-k", f"{key}={value}"]
    return run(args, timeout=180)


def final_status(output: str) -> int:
    statuses = _DIMSE_STATUS.findall(output)
    assert statuses, output
    return int(statuses[-1], 16)


def final_counts(output: str) -> dict[str, str]:
    """The sub-operation counts of the last response in DCMTK ``-d`` output."""
    counts: dict[str, str] = {}
    for name, value in _COUNT.findall(output):
        counts[name] = value  # later responses overwrite earlier ones
    return counts


# --- pynetdicom clients -------------------------------------------------------------------


def identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for key, value in keys.items():
        setattr(ds, key, value)
    return ds


def _context_id(assoc: Association, abstract_syntax: str) -> int:
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax == abstract_syntax:
            return int(cx.context_id)
    raise AssertionError(f"{abstract_syntax} not accepted")


def pynetdicom_move(
    daemon: Daemon,
    destination_ae: str,
    query: Dataset,
    *,
    model: str = STUDY_ROOT_MOVE,
    calling: str = "PYMOVER",
    cancel_after_pending: int | None = None,
) -> list[tuple[Dataset, Dataset | None]]:
    """Every C-MOVE response as (status, identifier); optionally C-CANCEL after N pendings."""
    ae = client_ae(calling)
    ae.add_requested_context(model)
    assoc = ae.associate(LOOPBACK, daemon.port, ae_title=daemon.ae_title)
    assert assoc.is_established
    # pynetdicom 3's requestor reactor can swallow a response (see appliance.scu).
    _keep_responses_for_the_caller(assoc)
    responses: list[tuple[Dataset, Dataset | None]] = []
    try:
        for status, ident in assoc.send_c_move(query, destination_ae, model, msg_id=7):
            assert "Status" in status, "no response from the daemon"
            responses.append((status, ident))
            pendings = sum(1 for s, _ in responses if s.Status == 0xFF00)
            if status.Status == 0xFF00 and pendings == cancel_after_pending:
                assoc.send_c_cancel(7, _context_id(assoc, model))
    finally:
        assoc.release()
    return responses


class GetClient:
    """A pynetdicom C-GET SCU that offers the SCP role for the given storage classes."""

    def __init__(
        self,
        daemon: Daemon,
        storage: Sequence[str] = (CTImageStorage,),
        transfer_syntaxes: Sequence[str] = (ExplicitVRLittleEndian,),
        calling: str = "PYGETTER",
        delay: float = 0.0,
    ) -> None:
        self.daemon = daemon
        self.received: dict[str, Dataset] = {}
        self.delay = delay
        self.ae = client_ae(calling)
        self.ae.add_requested_context(STUDY_ROOT_GET)
        for sop_class in storage:
            self.ae.add_requested_context(sop_class, list(transfer_syntaxes))
        self.roles = [build_role(sop_class, scp_role=True) for sop_class in storage]

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received[str(ds.SOPInstanceUID)] = ds
        time.sleep(self.delay)
        return 0x0000

    def get(
        self, query: Dataset, cancel_after_pending: int | None = None
    ) -> list[tuple[Dataset, Dataset | None]]:
        assoc = self.ae.associate(
            LOOPBACK,
            self.daemon.port,
            ae_title=self.daemon.ae_title,
            ext_neg=self.roles,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        assert assoc.is_established
        _keep_responses_for_the_caller(assoc)
        responses: list[tuple[Dataset, Dataset | None]] = []
        try:
            for status, ident in assoc.send_c_get(query, STUDY_ROOT_GET, msg_id=3):
                assert "Status" in status, "no response from the daemon"
                responses.append((status, ident))
                pendings = sum(1 for s, _ in responses if s.Status == 0xFF00)
                if status.Status == 0xFF00 and pendings == cancel_after_pending:
                    assoc.send_c_cancel(3, _context_id(assoc, STUDY_ROOT_GET))
        finally:
            assoc.release()
        return responses


def final(responses: list[tuple[Dataset, Dataset | None]]) -> tuple[Dataset, Dataset | None]:
    assert responses
    status, ident = responses[-1]
    assert status.Status != 0xFF00, "no final response"
    return status, ident


def failed_list(ident: Dataset | None) -> set[str]:
    assert ident is not None and "FailedSOPInstanceUIDList" in ident
    value = ident.FailedSOPInstanceUIDList
    values = [value] if isinstance(value, str) else list(value)
    return {str(v) for v in values if v}


# --- C-MOVE with DCMTK movescu ------------------------------------------------------------


@pytest.mark.parametrize(
    ("root", "level", "expected"),
    [
        ("-S", "STUDY", "all"),
        ("-S", "SERIES", "series_a"),
        ("-S", "IMAGE", "one"),
        ("-P", "PATIENT", "all"),
        ("-P", "STUDY", "all"),
        ("-P", "SERIES", "series_a"),
        ("-P", "IMAGE", "one"),
    ],
)
def test_movescu_moves_at_each_level_of_both_roots(
    daemon_factory, destination, tmp_path, root, level, expected
):
    scp = destination("DEST")
    daemon = daemon_factory()
    add_node(daemon, "dest", "DEST", scp.port)
    daemon.start()
    study = archive_study(daemon, tmp_path / "in")
    one = study.series_a_uids()[1]
    keys = {"QueryRetrieveLevel": level}
    if root == "-P":
        keys["PatientID"] = study.patient_id
    if level in ("STUDY", "SERIES", "IMAGE"):
        keys["StudyInstanceUID"] = study.study_uid
    if level in ("SERIES", "IMAGE"):
        keys["SeriesInstanceUID"] = study.series_a
    if level == "IMAGE":
        keys["SOPInstanceUID"] = one
    result = movescu(daemon, "DEST", keys, root=root)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert final_status(output) == 0x0000
    wanted = {"all": study.uids(), "series_a": set(study.series_a_uids()), "one": {one}}[expected]
    assert received_uids(scp) == wanted
    counts = final_counts(output)
    assert counts["Completed"] == str(len(wanted))
    assert counts["Failed"] == "0"
    assert_same_pixels(scp.files(), study)
    # Pending responses counted down one sub-operation at a time.
    remaining = re.findall(r"^D: Remaining Suboperations\s+:\s+(\d+)", output, re.MULTILINE)
    assert remaining == [str(n) for n in range(len(wanted) - 1, -1, -1)]
    log = daemon.log()
    assert "C-MOVE from MOVESCU" in log
    assert f"{len(wanted)} matched, {len(wanted)} completed, 0 failed" in log


def test_move_to_an_unknown_destination_is_refused_with_a801(daemon, tmp_path):
    study = archive_study(daemon, tmp_path / "in", series_b=0)
    result = movescu(
        daemon, "NOSUCH", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study.study_uid}
    )
    assert final_status(result.stdout + result.stderr) == 0xA801
    assert "NOSUCH" in daemon.log()


def test_a_node_that_is_not_a_move_destination_is_refused_with_a801(
    daemon_factory, destination, tmp_path
):
    scp = destination("DEST")
    daemon = daemon_factory()
    add_node(daemon, "dest", "DEST", scp.port, move_destination=False)
    daemon.start()
    study = archive_study(daemon, tmp_path / "in", series_b=0)
    result = movescu(
        daemon, "DEST", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study.study_uid}
    )
    assert final_status(result.stdout + result.stderr) == 0xA801
    assert scp.files() == []


@pytest.mark.parametrize("how", ["down", "refuses"])
def test_move_to_a_destination_that_is_down_or_refuses_gives_a702(
    daemon_factory, destination, tmp_path, how
):
    daemon = daemon_factory()
    if how == "down":
        add_node(daemon, "dest", "DEST", free_port())
    else:
        scp = destination("DEST", ["--refuse"])
        add_node(daemon, "dest", "DEST", scp.port)
    daemon.start()
    study = archive_study(daemon, tmp_path / "in")
    responses = pynetdicom_move(
        daemon, "DEST", identifier("STUDY", StudyInstanceUID=study.study_uid)
    )
    status, ident = final(responses)
    # Refused: Out of Resources - Unable to perform sub-operations, every one failed.
    assert status.Status == 0xA702
    assert status.NumberOfFailedSuboperations == len(study.files)
    assert status.NumberOfCompletedSuboperations == 0
    assert failed_list(ident) == study.uids()
    assert "status 0xA702" in daemon.log()


def test_partial_failure_gives_b000_with_the_failed_uids(daemon_factory, destination, tmp_path):
    config = tmp_path / "ct-only.cfg"
    config.write_text(CT_ONLY_CONFIG)
    scp = destination("CTONLY", ["-xf", str(config), "CTOnly"])
    daemon = daemon_factory()
    add_node(daemon, "ctonly", "CTONLY", scp.port)
    daemon.start()
    study = archive_study(daemon, tmp_path / "in", series_b=0, mr=2)
    result = movescu(
        daemon, "CTONLY", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study.study_uid}
    )
    output = result.stdout + result.stderr
    assert final_status(output) == 0xB000
    assert set(_FAILED_UID.findall(output)[-1].split("\\")) == set(study.mr_uids)
    counts = final_counts(output)
    assert (counts["Completed"], counts["Failed"]) == ("3", "2")
    assert received_uids(scp) == study.uids() - set(study.mr_uids)


def test_a_compressed_instance_is_decompressed_for_a_destination_without_its_syntax(
    daemon_factory, destination, tmp_path
):
    scp = destination("DEST")  # storescp accepts uncompressed syntaxes only by default
    daemon = daemon_factory()
    add_node(daemon, "dest", "DEST", scp.port)
    daemon.start()
    study = archive_study(daemon, tmp_path / "in", series_b=0, transfer_syntax=RLELossless)
    result = movescu(
        daemon, "DEST", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study.study_uid}
    )
    assert final_status(result.stdout + result.stderr) == 0x0000
    assert received_uids(scp) == study.uids()
    for path in scp.files():
        assert not dcmread(path).file_meta.TransferSyntaxUID.is_compressed
    assert_same_pixels(scp.files(), study)


def test_cancel_stops_the_sub_operations_with_fe00(daemon_factory, destination, tmp_path):
    # storescp pauses a second after each instance, so the move is still running when the
    # C-CANCEL arrives.
    scp = destination("SLOW", ["--sleep-after", "1"])
    daemon = daemon_factory()
    add_node(daemon, "slow", "SLOW", scp.port)
    daemon.start()
    study = archive_study(daemon, tmp_path / "in", series_a=6, series_b=0)
    responses = pynetdicom_move(
        daemon,
        "SLOW",
        identifier("STUDY", StudyInstanceUID=study.study_uid),
        cancel_after_pending=1,
    )
    status, ident = final(responses)
    assert status.Status == 0xFE00
    assert status.NumberOfRemainingSuboperations > 0
    completed = int(status.NumberOfCompletedSuboperations)
    assert completed + status.NumberOfRemainingSuboperations == 6
    assert failed_list(ident) == set()
    deadline = time.monotonic() + 10
    while len(scp.files()) < completed and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(scp.files()) == completed < 6
    assert "(cancelled)" in daemon.log()


class BarrierStoreSCP:
    """A pynetdicom Storage SCP whose first C-STORE on each association waits until the first
    C-STORE of ``parties`` associations has arrived: moves that ran one after another would
    time out here instead of completing."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=30)
        self.received: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self.ae = AE(ae_title="BARRIER")
        self.ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
        self.port = free_port()
        self.server = self.ae.start_server(
            (LOOPBACK, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def _on_store(self, event: evt.Event) -> int:
        called = event.assoc.requestor.primitive.called_ae_title.strip()
        with self._lock:
            first = called not in self.received
            self.received.setdefault(called, set())
        if first:
            self.barrier.wait()
        with self._lock:
            self.received[called].add(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def test_two_moves_run_at_the_same_time(daemon_factory, tmp_path):
    peer = BarrierStoreSCP(parties=2)
    try:
        daemon = daemon_factory()
        add_node(daemon, "one", "DEST1", peer.port)
        add_node(daemon, "two", "DEST2", peer.port)
        daemon.start()
        first = archive_study(daemon, tmp_path / "one", series_a=4, series_b=0)
        second = archive_study(daemon, tmp_path / "two", series_a=4, series_b=0)
        moves = [
            subprocess.Popen(
                [
                    dcmtk("movescu"),
                    "-d",
                    "-S",
                    "-aet",
                    f"MOVER{n}",
                    "-aec",
                    daemon.ae_title,
                    "-aem",
                    dest,
                    LOOPBACK,
                    str(daemon.port),
                    "-k",
                    "QueryRetrieveLevel=STUDY",
                    "-k",
                    f"StudyInstanceUID={study.study_uid}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
            for n, (dest, study) in enumerate([("DEST1", first), ("DEST2", second)])
        ]
        outputs = [move.communicate(timeout=120)[0] for move in moves]
        for output in outputs:
            assert final_status(output) == 0x0000, output
        assert peer.received == {"DEST1": first.uids(), "DEST2": second.uids()}
    finally:
        peer.stop()


# --- C-GET ---------------------------------------------------------------------------------


def test_getscu_retrieves_a_study_into_a_folder(daemon, tmp_path):
    study = archive_study(daemon, tmp_path / "in")
    folder = tmp_path / "got"
    folder.mkdir()
    result = run(
        [
            dcmtk("getscu"), "-d", "-S", "-aet", "GETSCU", "-aec", daemon.ae_title,
            "-od", str(folder), LOOPBACK, str(daemon.port),
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_uid}",
        ],
        timeout=180,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert final_status(output) == 0x0000
    files = sorted(folder.iterdir())
    assert {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files} == (
        study.uids()
    )
    assert_same_pixels(files, study)
    assert "C-GET from GETSCU" in daemon.log()


def test_c_get_sends_only_on_negotiated_roles_and_converts_when_it_can(daemon, tmp_path):
    # CT stored RLE-compressed, the client offers CT in Explicit VR Little Endian only: the
    # instances are decompressed. MR is not offered with the SCP role: those fail.
    study = archive_study(daemon, tmp_path / "in", series_b=0, mr=1, transfer_syntax=RLELossless)
    client = GetClient(daemon, storage=[CTImageStorage])
    status, ident = final(client.get(identifier("STUDY", StudyInstanceUID=study.study_uid)))
    assert status.Status == 0xB000
    assert failed_list(ident) == set(study.mr_uids)
    assert (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations) == (3, 1)
    assert set(client.received) == study.uids() - set(study.mr_uids)
    for uid, ds in client.received.items():
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        original = dcmread(study.files[uid])
        original.decompress(generate_instance_uid=False)
        assert ds.PixelData == original.PixelData


def test_c_get_cancel_gives_fe00_and_fewer_instances(daemon, tmp_path):
    study = archive_study(daemon, tmp_path / "in", series_a=8, series_b=0)
    client = GetClient(daemon, delay=0.3)
    responses = client.get(
        identifier("STUDY", StudyInstanceUID=study.study_uid), cancel_after_pending=1
    )
    status, _ident = final(responses)
    assert status.Status == 0xFE00
    assert status.NumberOfRemainingSuboperations > 0
    assert len(client.received) == status.NumberOfCompletedSuboperations < 8


def test_c_get_without_any_role_selection_fails_every_sub_operation(daemon, tmp_path):
    study = archive_study(daemon, tmp_path / "in", series_b=0)
    client = GetClient(daemon)
    client.roles = []  # storage contexts proposed, but no SCP role offered
    status, ident = final(client.get(identifier("STUDY", StudyInstanceUID=study.study_uid)))
    assert status.Status == 0xA702
    assert failed_list(ident) == study.uids()
    assert client.received == {}


# --- permissions and identifiers -----------------------------------------------------------


def test_a_node_without_move_or_get_permission_gets_0124(daemon_factory, destination, tmp_path):
    scp = destination("DEST")
    daemon = daemon_factory()
    add_node(daemon, "dest", "DEST", scp.port)
    add_node(daemon, "viewer", "VIEWER", 104, services="echo,store,find")
    daemon.start()
    study = archive_study(daemon, tmp_path / "in", series_b=0)
    keys = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study.study_uid}
    result = movescu(daemon, "DEST", keys, calling="VIEWER")
    assert final_status(result.stdout + result.stderr) == 0x0124
    client = GetClient(daemon, calling="VIEWER")
    status, _ident = final(client.get(identifier("STUDY", StudyInstanceUID=study.study_uid)))
    assert status.Status == 0x0124
    assert scp.files() == [] and client.received == {}
    log = daemon.log()
    assert "not allowed to use move" in log and "not allowed to use get" in log
    # A node with the permissions may.
    add_node(daemon, "mover", "MOVER", 104, services="move,get")
    result = movescu(daemon, "DEST", keys, calling="MOVER")
    assert final_status(result.stdout + result.stderr) == 0x0000


def _without_level() -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    return ds


@pytest.mark.parametrize(
    ("model", "query"),
    [
        (STUDY_ROOT_MOVE, identifier("PATIENT", PatientID="X")),  # no patient level
        (STUDY_ROOT_MOVE, identifier("STUDY", StudyInstanceUID="")),  # empty unique key
        (STUDY_ROOT_MOVE, identifier("WARD", StudyInstanceUID="1.2.3")),
        (PATIENT_ROOT_MOVE, identifier("IMAGE")),
        (STUDY_ROOT_MOVE, _without_level()),
    ],
)
def test_an_identifier_that_does_not_fit_the_model_gets_a900(daemon_factory, model, query):
    daemon = daemon_factory()
    add_node(daemon, "dest", "DEST", 104)
    daemon.start()
    status, _ident = final(pynetdicom_move(daemon, "DEST", query, model=model))
    assert status.Status == 0xA900


def test_nothing_matched_is_success_with_zero_sub_operations(daemon_factory):
    daemon = daemon_factory()
    add_node(daemon, "dest", "DEST", 104)
    daemon.start()
    status, _ident = final(
        pynetdicom_move(daemon, "DEST", identifier("STUDY", StudyInstanceUID="1.2.3.4"))
    )
    assert status.Status == 0x0000
    assert status.NumberOfCompletedSuboperations == 0
