"""`dicom-appliance send`: C-STORE from files and folders to real peers on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_context, evt
from pynetdicom.dimse_primitives import C_STORE

from appliance import scu
from appliance.config import Node, Settings
from appliance.dicom_classes import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
)
from tests.factories import ct_dataset, write_ct_series
from tests.peers import LOOPBACK, Orthanc, StoreSCP, appliance_cmd, dcmtk, free_port, run

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_WARNINGS = 0, 1, 2, 3

# --- helpers ---------------------------------------------------------------------------------


def cli(data_dir: Path, *args: str):
    return run(appliance_cmd(*args, "--data-dir", str(data_dir)))


def add_node(data_dir: Path, name: str, ae_title: str, port: int) -> None:
    result = cli(
        data_dir, "node", "add", name, "--ae-title", ae_title, "--host", LOOPBACK,
        "--port", str(port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def send(data_dir: Path, node: str, *paths: Path, as_json: bool = False):
    extra = ["--json"] if as_json else []
    return cli(data_dir, "send", node, *map(str, paths), *extra)


def received(folder: Path) -> dict[str, pydicom.Dataset]:
    """Every file a peer wrote into ``folder``, by SOP Instance UID."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path)
            found[str(ds.SOPInstanceUID)] = ds
    return found


def transcode(tool: str, source: Path, target: Path, *options: str) -> Path:
    result = run([dcmtk(tool), *options, str(source), str(target)])
    assert result.returncode == 0, result.stderr
    return target


def write_instance(path: Path, sop_class: str, **kwargs: object) -> pydicom.Dataset:
    ds = ct_dataset(**kwargs)  # type: ignore[arg-type]
    ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def result_lines(stdout: str, outcome: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(outcome)]


class StatusSCP:
    """A pynetdicom Storage SCP answering each C-STORE with a status chosen by the test.

    DCMTK and Orthanc only ever answer 0000 or an error; warnings need a scripted peer.
    """

    def __init__(self, statuses: dict[str, int], abort_on: str | None = None) -> None:
        self.statuses = statuses
        self.abort_on = abort_on
        self.stored: list[str] = []
        self.port = free_port()
        self.ae = AE(ae_title="STATUSSCP")
        for sop_class in (CTImageStorage, MRImageStorage):
            self.ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self.server = self.ae.start_server(
            (LOOPBACK, self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )

    def _on_store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid == self.abort_on:
            # Abort from another thread: the handler runs in the association's own thread.
            threading.Thread(target=event.assoc.abort).start()
            threading.Event().wait(0.5)
            return 0x0000
        self.stored.append(uid)
        return self.statuses.get(uid, 0x0000)

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def storescp_factory(tmp_path: Path) -> Iterator:
    made: list[StoreSCP] = []

    def make(name: str, *extra: str) -> StoreSCP:
        scp = StoreSCP(tmp_path / name, extra=extra)
        made.append(scp)
        return scp

    yield make
    for scp in made:
        scp.stop()


@pytest.fixture
def compressed(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """Transfer syntax -> (compressed file, its uncompressed original), made by DCMTK."""
    originals = write_ct_series(tmp_path / "originals", 3)
    folder = tmp_path / "compressed"
    folder.mkdir()
    return {
        JPEG_LOSSLESS_SV1: (transcode("dcmcjpeg", originals[0], folder / "jpeg.dcm"), originals[0]),
        RLE_LOSSLESS: (transcode("dcmcrle", originals[1], folder / "rle.dcm"), originals[1]),
        JPEG_LS_LOSSLESS: (transcode("dcmcjpls", originals[2], folder / "jls.dcm"), originals[2]),
    }


# --- end to end: DCMTK storescp --------------------------------------------------------------


def test_series_arrives_at_storescp_with_identical_pixels(data_dir, storescp, tmp_path):
    paths = write_ct_series(tmp_path / "in", 4)
    add_node(data_dir, "pacs", storescp.ae_title, storescp.port)

    result = send(data_dir, "pacs", *paths)

    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert "sent 4: 4 success, 0 warning, 0 failed" in result.stdout
    assert len(result_lines(result.stdout, "success")) == 4
    arrived = received(storescp.folder)
    for path in paths:
        original = pydicom.dcmread(path)
        copy = arrived[str(original.SOPInstanceUID)]
        assert copy.PixelData == original.PixelData
        assert copy.PatientName == original.PatientName
        assert copy.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_folder_recursion_skips_non_dicom_files_with_an_error_line(data_dir, storescp, tmp_path):
    folder = tmp_path / "in"
    paths = write_ct_series(folder / "series1", 2) + write_ct_series(folder / "a" / "b", 1)
    (folder / "README.txt").write_text("not DICOM")
    (folder / "a" / "empty.dcm").write_bytes(b"")
    (folder / "a" / "truncated.dcm").write_bytes(paths[0].read_bytes()[:200])
    (folder / "dangling.dcm").symlink_to(tmp_path / "nowhere.dcm")
    add_node(data_dir, "pacs", storescp.ae_title, storescp.port)

    result = send(data_dir, "pacs", folder, tmp_path / "missing.dcm")

    assert result.returncode == EXIT_FAILED, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    failures = result_lines(result.stdout, "FAILURE")
    assert len(failures) == 5, result.stdout
    assert any("README.txt: not a DICOM file" in line for line in failures)
    assert any("dangling.dcm: not a regular file" in line for line in failures)
    assert any("empty.dcm" in line for line in failures)
    assert any("truncated.dcm" in line for line in failures)
    assert any("missing.dcm: no such file or folder" in line for line in failures)
    assert "sent 8: 3 success, 0 warning, 5 failed" in result.stdout
    assert result.stdout.splitlines()[0] == f"to pacs (STORESCP@{LOOPBACK}:{storescp.port})"
    assert set(received(storescp.folder)) == {str(pydicom.dcmread(p).SOPInstanceUID) for p in paths}


def test_compressed_files_are_decompressed_for_an_uncompressed_only_peer(
    data_dir, storescp, compressed
):
    # DCMTK storescp accepts only uncompressed syntaxes unless told otherwise.
    add_node(data_dir, "pacs", storescp.ae_title, storescp.port)

    result = send(data_dir, "pacs", *(c for c, _ in compressed.values()), as_json=True)

    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["summary"] == {
        "sent": 3,
        "success": 3,
        "warning": 0,
        "failed": 0,
        "skipped": 0,
    }
    for item in report["instances"]:
        assert item["transfer_syntax"] == ExplicitVRLittleEndian
        assert "decompressed from" in item["message"]
    arrived = received(storescp.folder)
    for _, original_path in compressed.values():
        original = pydicom.dcmread(original_path)
        copy = arrived[str(original.SOPInstanceUID)]
        assert copy.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert copy.PixelData == original.PixelData


def test_compressed_files_go_as_they_are_to_a_peer_accepting_them(
    data_dir, storescp_factory, compressed
):
    scp = storescp_factory("accept-all", "+xa")
    add_node(data_dir, "pacs", scp.ae_title, scp.port)

    result = send(data_dir, "pacs", *(c for c, _ in compressed.values()))

    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert "decompressed" not in result.stdout
    arrived = received(scp.folder)
    for syntax, (compressed_path, _) in compressed.items():
        source = pydicom.dcmread(compressed_path)
        copy = arrived[str(source.SOPInstanceUID)]
        assert copy.file_meta.TransferSyntaxUID == syntax
        assert copy.PixelData == source.PixelData


def test_implicit_only_peer_gets_explicit_and_compressed_files_re_encoded(
    data_dir, storescp_factory, compressed, tmp_path
):
    scp = storescp_factory("implicit", "+xi")
    explicit = write_ct_series(tmp_path / "explicit", 1)[0]
    jpeg, jpeg_original = compressed[JPEG_LOSSLESS_SV1]
    add_node(data_dir, "pacs", scp.ae_title, scp.port)

    result = send(data_dir, "pacs", explicit, jpeg)

    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert result.stdout.count("sent as Implicit VR Little Endian") == 2
    arrived = received(scp.folder)
    for original_path in (explicit, jpeg_original):
        original = pydicom.dcmread(original_path)
        copy = arrived[str(original.SOPInstanceUID)]
        assert copy.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert copy.PixelData == original.PixelData


def test_implicit_and_deflated_inputs_reach_an_explicit_peer(data_dir, storescp, tmp_path):
    originals = write_ct_series(tmp_path / "in", 2)
    implicit = transcode("dcmconv", originals[0], tmp_path / "implicit.dcm", "+ti")
    deflated = transcode("dcmconv", originals[1], tmp_path / "deflated.dcm", "+td")
    assert pydicom.dcmread(deflated).file_meta.TransferSyntaxUID == DEFLATED_EXPLICIT_VR_LE
    add_node(data_dir, "pacs", storescp.ae_title, storescp.port)

    result = send(data_dir, "pacs", implicit, deflated)

    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    arrived = received(storescp.folder)
    for original_path in originals:
        original = pydicom.dcmread(original_path)
        assert arrived[str(original.SOPInstanceUID)].PixelData == original.PixelData


def test_class_the_peer_does_not_accept_fails_per_instance(data_dir, storescp, tmp_path):
    ct = write_ct_series(tmp_path / "in", 1)[0]
    private = tmp_path / "in" / "private.dcm"
    write_instance(private, "1.2.826.0.1.3680043.8.498.4242.1")
    add_node(data_dir, "pacs", storescp.ae_title, storescp.port)

    mixed = send(data_dir, "pacs", ct, private)
    only_private = send(data_dir, "pacs", private)

    assert mixed.returncode == EXIT_FAILED
    (failure,) = result_lines(mixed.stdout, "FAILURE")
    assert "private.dcm: the peer accepted no presentation context" in failure
    assert "sent 2: 1 success, 0 warning, 1 failed" in mixed.stdout
    assert only_private.returncode == EXIT_FAILED
    assert "peer accepted none of the 1 proposed presentation contexts" in only_private.stdout


# --- end to end: Orthanc ---------------------------------------------------------------------


def test_folder_with_mixed_classes_arrives_in_orthanc(data_dir, orthanc, tmp_path):
    folder = tmp_path / "study"
    study = generate_uid()
    expected = {
        str(pydicom.dcmread(p).SOPInstanceUID)
        for p in write_ct_series(folder / "ct", 3, study_uid=study)
    }
    for number, sop_class in enumerate((MRImageStorage, SecondaryCaptureImageStorage), 1):
        ds = write_instance(folder / f"other{number}.dcm", sop_class, study_uid=study)
        expected.add(str(ds.SOPInstanceUID))
    add_node(data_dir, "orthanc", orthanc.ae_title, orthanc.dicom_port)

    result = send(data_dir, "orthanc", folder)

    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert "sent 5: 5 success, 0 warning, 0 failed" in result.stdout
    assert orthanc.instance_uids() == expected


def test_more_than_128_contexts_are_split_over_associations(data_dir, tmp_path, monkeypatch):
    # DCMTK-based peers (Orthanc included) leave Nagle's algorithm on unless told; each
    # response would then wait for our delayed ACK and 130 instances take seconds.
    monkeypatch.setenv("TCP_NODELAY", "1")
    server = Orthanc(tmp_path / "orthanc-any", UnknownSopClassAccepted=True)
    try:
        expected = set()
        for number in range(130):
            sop_class = f"1.2.826.0.1.3680043.8.498.777.{number + 1}"
            ds = write_instance(
                tmp_path / "many" / f"{number:03d}.dcm", sop_class, rows=8, columns=8
            )
            expected.add(str(ds.SOPInstanceUID))
        add_node(data_dir, "orthanc", server.ae_title, server.dicom_port)

        result = send(data_dir, "orthanc", tmp_path / "many", as_json=True)

        assert result.returncode == EXIT_OK, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["associations"] == 2
        assert report["summary"]["success"] == 130
        assert server.instance_uids() == expected
    finally:
        server.stop()


# --- statuses and failures -------------------------------------------------------------------


def test_warning_statuses_are_reported_as_warnings_and_exit_3(data_dir, tmp_path):
    paths = write_ct_series(tmp_path / "in", 4)
    uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in paths]
    peer = StatusSCP({uids[0]: 0xB000, uids[1]: 0xB007, uids[2]: 0x0001})
    try:
        add_node(data_dir, "warn", "STATUSSCP", peer.port)
        result = send(data_dir, "warn", *paths)
        as_json = json.loads(send(data_dir, "warn", *paths, as_json=True).stdout)
    finally:
        peer.stop()

    assert result.returncode == EXIT_WARNINGS, result.stdout + result.stderr
    warnings = result_lines(result.stdout, "WARNING")
    assert len(warnings) == 3
    assert any("0xB000" in line and "Coercion of Data Elements" in line for line in warnings)
    assert any("0xB007" in line and uids[1] in line for line in warnings)
    assert "sent 4: 1 success, 3 warning, 0 failed" in result.stdout
    by_uid = {item["sop_instance_uid"]: item for item in as_json["instances"]}
    assert by_uid[uids[0]]["status"] == "0xB000"
    assert by_uid[uids[0]]["outcome"] == "warning"
    assert by_uid[uids[3]]["outcome"] == "success"


def test_error_status_is_a_failure(data_dir, tmp_path):
    paths = write_ct_series(tmp_path / "in", 2)
    uid = str(pydicom.dcmread(paths[0]).SOPInstanceUID)
    peer = StatusSCP({uid: 0xA700})
    try:
        add_node(data_dir, "full", "STATUSSCP", peer.port)
        result = send(data_dir, "full", *paths)
    finally:
        peer.stop()

    assert result.returncode == EXIT_FAILED
    (failure,) = result_lines(result.stdout, "FAILURE")
    assert "0xA700" in failure and "Out of Resources" in failure and uid in failure


def test_abort_mid_association_fails_the_rest(data_dir, tmp_path):
    paths = write_ct_series(tmp_path / "in", 3)
    uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in paths]
    peer = StatusSCP({}, abort_on=uids[1])
    try:
        add_node(data_dir, "flaky", "STATUSSCP", peer.port)
        result = send(data_dir, "flaky", *paths)
    finally:
        peer.stop()

    assert result.returncode == EXIT_FAILED, result.stdout + result.stderr
    assert "sent 3: 1 success, 0 warning, 2 failed" in result.stdout
    failures = result_lines(result.stdout, "FAILURE")
    assert uids[1] in failures[0] and "no response" in failures[0]
    assert uids[2] in failures[1] and "aborted before this instance" in failures[1]


def test_closed_port_fails_every_instance(data_dir, tmp_path):
    paths = write_ct_series(tmp_path / "in", 2)
    add_node(data_dir, "gone", "NOBODY", free_port())

    result = send(data_dir, "gone", *paths)

    assert result.returncode == EXIT_FAILED
    failures = result_lines(result.stdout, "FAILURE")
    assert len(failures) == 2
    assert all("cannot connect" in line for line in failures)


def test_rejected_association_is_reported_per_instance(data_dir, daemon_factory, tmp_path):
    peer = daemon_factory("peer", ae_title="ARCHIVE", check_called_ae=True).start()
    paths = write_ct_series(tmp_path / "in", 2)
    add_node(data_dir, "wrong", "NOT-ARCHIVE", peer.port)
    add_node(data_dir, "right", "ARCHIVE", peer.port)

    rejected = send(data_dir, "wrong", *paths)
    accepted = send(data_dir, "right", *paths)

    assert rejected.returncode == EXIT_FAILED
    failures = result_lines(rejected.stdout, "FAILURE")
    assert len(failures) == 2
    assert all("association rejected" in line for line in failures)
    assert accepted.returncode == EXIT_OK, accepted.stdout + accepted.stderr


def test_unknown_node_is_a_usage_error(data_dir, tmp_path):
    path = write_ct_series(tmp_path / "in", 1)[0]

    result = send(data_dir, "nowhere", path)

    assert result.returncode == EXIT_USAGE
    assert "no node named 'nowhere'" in result.stderr


def test_node_echo(data_dir, storescp):
    add_node(data_dir, "pacs", storescp.ae_title, storescp.port)
    add_node(data_dir, "gone", "NOBODY", free_port())

    ok = cli(data_dir, "node", "echo", "pacs")
    failed = cli(data_dir, "node", "echo", "gone")

    assert ok.returncode == EXIT_OK, ok.stdout + ok.stderr
    assert "success" in ok.stdout
    assert failed.returncode == EXIT_FAILED
    assert "FAILED" in failed.stdout and "cannot connect" in failed.stdout


# --- units -----------------------------------------------------------------------------------


def candidate(sop_class: str, syntax: str = ExplicitVRLittleEndian) -> scu.Candidate:
    return scu.Candidate(Path(f"{sop_class}-{syntax}"), sop_class, generate_uid(), syntax)


def test_contexts_propose_own_syntax_then_uncompressed_fallbacks():
    assert scu.proposed_transfer_syntaxes(JPEG_LOSSLESS_SV1) == (
        JPEG_LOSSLESS_SV1,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )
    assert scu.proposed_transfer_syntaxes(ImplicitVRLittleEndian) == (
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
    )


def test_batches_never_exceed_128_contexts_and_keep_file_order():
    many = [candidate(f"1.2.3.{n}") for n in range(200)]
    # Same class, three syntax sets: three contexts, one of them shared with an earlier file.
    mixed = [
        candidate(CTImageStorage),
        candidate(CTImageStorage, RLE_LOSSLESS),
        candidate(CTImageStorage),
        candidate(CTImageStorage, ImplicitVRLittleEndian),
    ]

    batches = scu.plan_batches(many + mixed)

    assert [len(b.contexts) for b in batches] == [128, 75]
    assert [c for b in batches for c in b.candidates] == many + mixed
    assert batches[1].candidates[-4:] == mixed
    assert scu.plan_batches([]) == []
    assert [len(b.candidates) for b in scu.plan_batches(many, max_contexts=100)] == [100, 100]


def test_route_choice():
    route = scu.choose_route
    assert route(RLE_LOSSLESS, [RLE_LOSSLESS, ExplicitVRLittleEndian]).decompress is False
    assert route(RLE_LOSSLESS, [ImplicitVRLittleEndian]) == scu._Route(ImplicitVRLittleEndian, True)
    assert route(ExplicitVRLittleEndian, [ImplicitVRLittleEndian]).send_as == ImplicitVRLittleEndian
    assert route(DEFLATED_EXPLICIT_VR_LE, [ExplicitVRLittleEndian]).decompress is False
    assert "no conversion" in route(RLE_LOSSLESS, [JPEG_LS_LOSSLESS])
    assert "no conversion" in route(EXPLICIT_VR_BE, [ExplicitVRLittleEndian])
    assert "no presentation context" in route(ExplicitVRLittleEndian, [])


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0x0000, "success"),
        (0x0001, "warning"),
        (0xB000, "warning"),
        (0xB006, "warning"),
        (0xB007, "warning"),
        (0xB123, "warning"),
        (0xA700, "failure"),
        (0xA900, "failure"),
        (0xC000, "failure"),
        (0x0122, "failure"),
        (0xFE00, "failure"),
    ],
)
def test_status_outcome(status, outcome):
    assert scu.status_outcome(status) == outcome


def test_report_lines_and_dict(tmp_path):
    node = Node(name="pacs", ae_title="PACS", host=LOOPBACK, port=104)
    report = scu.SendReport(node)
    report.results += [
        scu.InstanceResult(tmp_path / "a", "1.2.3", 0x0000, "success", "Success"),
        scu.InstanceResult(tmp_path / "b", "1.2.4", 0xB000, "warning", "Coercion"),
        scu.InstanceResult(tmp_path / "c", None, None, "failure", "not a DICOM file"),
    ]

    lines = report.lines()

    assert lines[-1] == "sent 3: 1 success, 1 warning, 1 failed"
    assert lines[2].startswith("WARNING  0xB000  1.2.4")
    assert lines[3].startswith("FAILURE  -")
    data = report.as_dict()
    assert data["summary"]["warning"] == 1
    assert data["instances"][1]["status"] == "0xB000"
    assert json.dumps(data)


def test_send_in_process_reports_progress_and_dicomdir_is_skipped(storescp, tmp_path):
    paths = write_ct_series(tmp_path / "in", 2)
    dicomdir = tmp_path / "in" / "DICOMDIR"
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.FileSetID = "TEST"
    ds.save_as(dicomdir, enforce_file_format=True)
    node = Node(name="pacs", ae_title=storescp.ae_title, host=LOOPBACK, port=storescp.port)
    seen: list[scu.InstanceResult] = []

    report = scu.send(Settings(), node, [tmp_path / "in"], progress=seen.append)

    assert seen == report.results
    assert len(report.succeeded) == 2 and not report.failed and not report.warnings
    assert [r.path.name for r in report.skipped] == ["DICOMDIR"]
    assert report.summary() == "sent 2: 2 success, 0 warning, 0 failed, 1 skipped"
    assert len(received(storescp.folder)) == len(paths)


def test_a_response_taken_by_the_reactor_goes_back_to_the_caller():
    # pynetdicom's reactor can grab a C-STORE response in the instant send_c_store() thinks
    # it is paused; scu.associate() makes it hand such messages back instead of dropping them.
    peer = StatusSCP({})
    ae = scu.requestor_ae(Settings())
    node = Node(name="peer", ae_title="STATUSSCP", host=LOOPBACK, port=peer.port)
    try:
        assoc, connected = scu.associate(ae, Settings(), node, [build_context(CTImageStorage)])
        assert connected and assoc.is_established
        try:
            response = C_STORE()
            response.MessageIDBeingRespondedTo = 7
            assoc._serve_request(response, 1)
            assert assoc.dimse.get_msg(block=False) == (1, response)
        finally:
            assoc.release()
    finally:
        peer.stop()
