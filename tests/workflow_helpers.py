"""Peers for the worklist and MPPS tests: DCMTK `wlmscpfs` over a folder of worklist files,
and small pynetdicom SCPs (no DCMTK tool is an MPPS SCP)."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from tests.peers import LOOPBACK, appliance_cmd, dcmtk, free_port, run, wait_for_port

MWL_FIND = "1.2.840.10008.5.1.4.31"
MPPS = "1.2.840.10008.3.1.2.3.3"


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return run(appliance_cmd(*args, "--data-dir", str(data_dir)))


def add_node(data_dir: Path, name: str, ae_title: str, port: int) -> None:
    result = cli(
        data_dir, "node", "add", name, "--ae-title", ae_title, "--host", LOOPBACK,
        "--port", str(port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def worklist_item(
    *,
    patient_name: str = "DOE^JOHN",
    patient_id: str = "PAT001",
    accession: str = "ACC001",
    date: str = "20240115",
    time: str = "101500",
    modality: str = "CT",
    station_ae: str = "CT01",
    charset: str | list[str] | None = None,
    performing_physician: str = "PERF^DOC",
    description: str = "CT CHEST W/O CONTRAST",
    sps_id: str | None = None,
    study_uid: str | None = None,
) -> Dataset:
    """A worklist entry as a RIS holds it: one requested procedure with one scheduled step."""
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = "REF^DOC"
    ds.RequestedProcedureID = f"RP{accession}"
    ds.RequestedProcedureDescription = "CT CHEST"
    code = Dataset()
    code.CodeValue = "CTCHEST"
    code.CodingSchemeDesignator = "LOCAL"
    code.CodeMeaning = "CT Chest"
    ds.RequestedProcedureCodeSequence = [code]
    ds.RequestedProcedurePriority = "ROUTINE"
    ds.StudyInstanceUID = study_uid or generate_uid()
    step = Dataset()
    step.ScheduledStationAETitle = station_ae
    step.ScheduledStationName = "CT ROOM 1"
    step.ScheduledProcedureStepLocation = "RADIOLOGY"
    step.ScheduledProcedureStepStartDate = date
    step.ScheduledProcedureStepStartTime = time
    step.Modality = modality
    step.ScheduledPerformingPhysicianName = performing_physician
    step.ScheduledProcedureStepDescription = description
    step.ScheduledProcedureStepID = sps_id or f"SPS{accession}"
    protocol = Dataset()
    protocol.CodeValue = "P-CHEST"
    protocol.CodingSchemeDesignator = "LOCAL"
    protocol.CodeMeaning = "Chest routine"
    step.ScheduledProtocolCodeSequence = [protocol]
    ds.ScheduledProcedureStepSequence = [step]
    return ds


class WorklistSCP:
    """DCMTK `wlmscpfs` serving ``*.wl`` files from ``folder/<AE title>/``."""

    def __init__(
        self, folder: Path, ae_title: str = "WLMSCP", extra: Sequence[str] = ("-csk",)
    ) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.items_dir = folder / ae_title
        self.items_dir.mkdir(parents=True, exist_ok=True)
        # wlmscpfs takes a read lock on this file and refuses every query without it.
        (self.items_dir / "lockfile").touch()
        self.port = free_port()
        self.log = open(folder / "wlmscpfs.log", "ab")
        self.proc = subprocess.Popen(
            [dcmtk("wlmscpfs"), *extra, "-dfp", str(folder), str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, proc=self.proc)

    def add(self, name: str, ds: Dataset) -> Path:
        """Write ``ds`` as a worklist file (Part 10, as DCMTK's own worklist files are)."""
        ds = ds.copy()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MWL_FIND
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = self.items_dir / f"{name}.wl"
        ds.save_as(path, enforce_file_format=True)
        return path

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class StubWorklistSCP:
    """A pynetdicom worklist SCP answering every query with fixed answers and final status."""

    def __init__(self, answers: Sequence[Dataset], final_status: int = 0x0000) -> None:
        self.answers = list(answers)
        self.final_status = final_status
        self.queries: list[Dataset] = []
        self.ae = AE(ae_title="STUBMWL")
        self.ae.add_supported_context(MWL_FIND)
        self.port = free_port()
        self.server = self.ae.start_server(
            (LOOPBACK, self.port), block=False, evt_handlers=[(evt.EVT_C_FIND, self._find)]
        )

    def _find(self, event: evt.Event):  # yields (status, identifier)
        self.queries.append(event.identifier)
        for answer in self.answers:
            yield 0xFF00, answer
        status = Dataset()
        status.Status = self.final_status
        if self.final_status:
            status.ErrorComment = "worklist database unavailable"
        yield status, None

    def stop(self) -> None:
        if self.server is not None:  # a test may stop it early
            self.server.shutdown()
            self.server = None


@dataclass
class StubMPPS:
    """A pynetdicom MPPS SCP that keeps what it was sent and answers as told.

    It enforces the state machine of PS3.4 F.7.2: N-SET only on a step it created, and never
    after COMPLETED or DISCONTINUED.
    """

    create_status: int = 0x0000
    set_status: int = 0x0000
    error_comment: str = ""
    creates: list[tuple[str, Dataset]] = field(default_factory=list)
    sets: list[tuple[str, Dataset]] = field(default_factory=list)
    steps: dict[str, Dataset] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.ae = AE(ae_title="MPPSSCP")
        self.ae.add_supported_context(MPPS)
        self.port = free_port()
        self.server = self.ae.start_server(
            (LOOPBACK, self.port),
            block=False,
            evt_handlers=[(evt.EVT_N_CREATE, self._create), (evt.EVT_N_SET, self._set)],
        )

    def _status(self, code: int) -> Dataset:
        status = Dataset()
        status.Status = code
        if code and self.error_comment:
            status.ErrorComment = self.error_comment
        return status

    def _create(self, event: evt.Event) -> tuple[Dataset, Dataset | None]:
        uid = str(event.request.AffectedSOPInstanceUID)
        attributes = event.attribute_list
        with self.lock:
            self.creates.append((uid, attributes))
            if self.create_status not in (0x0000, 0x0107):
                return self._status(self.create_status), None
            if uid in self.steps:
                return self._status(0x0111), None
            self.steps[uid] = attributes
        return self._status(self.create_status), attributes

    def _set(self, event: evt.Event) -> tuple[Dataset, Dataset | None]:
        uid = str(event.request.RequestedSOPInstanceUID)
        changes = event.modification_list
        with self.lock:
            self.sets.append((uid, changes))
            if self.set_status not in (0x0000, 0x0107):
                return self._status(self.set_status), None
            step = self.steps.get(uid)
            if step is None:
                return self._status(0x0112), None
            if step.PerformedProcedureStepStatus != "IN PROGRESS":
                return self._status(0x0110), None
            step.update(changes)
        return self._status(self.set_status), step

    def stop(self) -> None:
        if self.server is not None:  # a test may stop it early
            self.server.shutdown()
            self.server = None
