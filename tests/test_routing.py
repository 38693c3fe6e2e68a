"""Auto-routing: rules in the configuration, batching per study, restart with open batches."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

from appliance import routing_cli
from appliance.archive import Archive
from appliance.config import ConfigError, ConfigStore, Node, RoutingRule
from appliance.jobs import Job
from appliance.network import DicomServer
from appliance.routing import ROUTING_FILE, Router
from tests.factories import ct_dataset, write_ct_series
from tests.peers import LOOPBACK, free_port, wait_for_port
from tests.scp_helpers import (
    encode_dataset,
    sop_instance_uid_of,
    storescu,
    succeeded_files,
)

QUIET = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """Stands in for the job engine's submit: records what would be queued."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def __call__(
        self,
        kind: str,
        target: str,
        params: dict[str, Any],
        *,
        priority: int = 0,
        summary: dict[str, Any] | None = None,
    ) -> Job:
        job = Job(kind, target, params, id=len(self.jobs) + 1, priority=priority)
        job.summary = summary or {}
        self.jobs.append(job)
        return job

    def by_target(self) -> dict[str, list[Job]]:
        out: dict[str, list[Job]] = {}
        for job in self.jobs:
            out.setdefault(job.target, []).append(job)
        return out


@pytest.fixture
def config(data_dir: Path) -> Iterator[ConfigStore]:
    store = ConfigStore(data_dir)
    store.set("routing_quiet_seconds", QUIET)
    for name, ae in (("PACS", "PACS_AE"), ("BACKUP", "BACKUP_AE"), ("VIEWER", "VIEWER_AE")):
        store.add_node(Node(name=name, ae_title=ae, host="127.0.0.1", port=11112))
    yield store
    store.close()


@pytest.fixture
def archive(data_dir: Path) -> Iterator[Archive]:
    archive = Archive(data_dir)
    yield archive
    archive.close()


def receive(
    archive: Archive,
    *,
    study_uid: str,
    calling_ae: str = "CT_SCANNER",
    modality: str = "CT",
    sop_class: str = CTImageStorage,
    number: int = 1,
    sop_instance_uid: str | None = None,
) -> dict[str, Any]:
    """Store an instance in the archive as the DICOM server does; returns the listener info."""
    ds: Dataset = ct_dataset(
        study_uid=study_uid,
        sop_instance_uid=sop_instance_uid,
        instance_number=number,
        rows=8,
        columns=8,
    )
    ds.Modality = modality
    ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    outcome = archive.store_encoded(
        encode_dataset(ds),
        sop_class_uid=sop_class,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax="1.2.840.10008.1.2.1",
        source_ae=calling_ae,
    )
    return {
        "sop_instance_uid": ds.SOPInstanceUID,
        "sop_class_uid": sop_class,
        "study_instance_uid": study_uid,
        "series_instance_uid": ds.SeriesInstanceUID,
        "modality": modality,
        "patient_id": ds.PatientID,
        "calling_ae": calling_ae,
        "path": str(outcome.path),
    }


def make_router(
    config: ConfigStore, archive: Archive, data_dir: Path
) -> tuple[Router, Recorder, Clock]:
    recorder, clock = Recorder(), Clock()
    return Router(config, recorder, archive, data_dir, clock=clock), recorder, clock


def persisted_batches(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / ROUTING_FILE
    if not path.exists():
        return []
    return list(json.loads(path.read_text()).get("batches", {}).values())


# --- matching -------------------------------------------------------------------------------


def test_rules_match_by_calling_ae_modality_and_sop_class(config, archive, data_dir) -> None:
    config.add_routing_rule(
        RoutingRule(name="from-ct", calling_aes=["CT_SCANNER"], destinations=["PACS"])
    )
    config.add_routing_rule(RoutingRule(name="mr", modalities=["mr"], destinations=["BACKUP"]))
    config.add_routing_rule(
        RoutingRule(name="mr-class", sop_classes=[MRImageStorage], destinations=["VIEWER"])
    )
    router, recorder, clock = make_router(config, archive, data_dir)
    study = generate_uid()
    ct_from_scanner = receive(archive, study_uid=study, calling_ae=" CT_SCANNER ", number=1)
    ct_from_other = receive(archive, study_uid=study, calling_ae="CT_SCANNER2", number=2)
    mr_as_ct_class = receive(archive, study_uid=study, calling_ae="OTHER", modality="MR", number=3)
    mr_class = receive(
        archive, study_uid=study, calling_ae="OTHER", modality="OT", sop_class=MRImageStorage
    )
    for info in (ct_from_scanner, ct_from_other, mr_as_ct_class, mr_class):
        router.on_stored(info)
    clock.advance(QUIET)
    router.submit_due()

    jobs = recorder.by_target()
    assert sorted(jobs) == ["BACKUP", "PACS", "VIEWER"]
    assert all(len(j) == 1 and j[0].kind == "forward" for j in jobs.values())
    uids = {target: j[0].params["sop_instance_uids"] for target, j in jobs.items()}
    # Calling AE exactly (spaces stripped): CT_SCANNER2 is another AE title.
    assert uids["PACS"] == [ct_from_scanner["sop_instance_uid"]]
    # Modality regardless of case, whatever the SOP class.
    assert uids["BACKUP"] == [mr_as_ct_class["sop_instance_uid"]]
    assert uids["VIEWER"] == [mr_class["sop_instance_uid"]]
    assert jobs["PACS"][0].params["rule"] == "from-ct"
    assert jobs["PACS"][0].params["study_uid"] == study


def test_rule_with_every_criterion_needs_all_of_them(config, archive, data_dir) -> None:
    config.add_routing_rule(
        RoutingRule(
            name="all",
            calling_aes=["CT_SCANNER"],
            modalities=["CT"],
            sop_classes=[CTImageStorage],
            destinations=["PACS"],
        )
    )
    router, recorder, clock = make_router(config, archive, data_dir)
    study = generate_uid()
    match = receive(archive, study_uid=study)
    router.on_stored(match)
    router.on_stored(receive(archive, study_uid=study, calling_ae="OTHER"))
    router.on_stored(receive(archive, study_uid=study, modality="MR"))
    router.on_stored(receive(archive, study_uid=study, sop_class=MRImageStorage))
    clock.advance(QUIET)
    router.submit_due()
    assert [j.params["sop_instance_uids"] for j in recorder.jobs] == [[match["sop_instance_uid"]]]


def test_no_matching_rule_and_disabled_rule_do_nothing(config, archive, data_dir) -> None:
    config.add_routing_rule(RoutingRule(name="mr", modalities=["MR"], destinations=["PACS"]))
    config.add_routing_rule(RoutingRule(name="off", destinations=["BACKUP"], enabled=False))
    router, recorder, clock = make_router(config, archive, data_dir)
    for number in range(3):
        router.on_stored(receive(archive, study_uid=generate_uid(), number=number))
    assert router.pending() == []
    assert persisted_batches(data_dir) == []
    clock.advance(QUIET * 2)
    assert router.submit_due() == []
    assert recorder.jobs == []


# --- batching -------------------------------------------------------------------------------


def test_a_study_becomes_one_job_per_destination_after_the_quiet_time(
    config, archive, data_dir
) -> None:
    config.add_routing_rule(RoutingRule(name="all", destinations=["PACS", "BACKUP"]))
    router, recorder, clock = make_router(config, archive, data_dir)
    study_a, study_b = generate_uid(), generate_uid()
    a = [receive(archive, study_uid=study_a, number=n) for n in range(1, 5)]
    b = [receive(archive, study_uid=study_b, number=n) for n in range(1, 3)]
    for info in a[:2] + b + a[2:]:
        router.on_stored(info)
        clock.advance(1)
    # One entry per (rule, study), written when the batch opened.
    assert len(persisted_batches(data_dir)) == 2

    clock.advance(QUIET - 1.5)  # the last instance of study A arrived QUIET - 0.5 s ago
    jobs = router.submit_due()
    # Study B has been quiet for long enough, study A not yet.
    assert sorted(j.target for j in jobs) == ["BACKUP", "PACS"]
    assert all(j.params["study_uid"] == study_b for j in jobs)
    assert all(j.params["sop_instance_uids"] == [i["sop_instance_uid"] for i in b] for j in jobs)

    clock.advance(1)
    jobs = router.submit_due()
    assert sorted(j.target for j in jobs) == ["BACKUP", "PACS"]
    for job in jobs:
        assert job.params["study_uid"] == study_a
        assert job.params["sop_instance_uids"] == [i["sop_instance_uid"] for i in a]
        assert job.summary["patient_name"] == "DOE^JOHN"
        assert job.summary["patient_id"] == "PAT001"
        assert job.summary["study_description"] == "CT CHEST"
        assert job.summary["study_date"] == "20240115"
        assert job.summary["instances"] == 4
    assert len(recorder.jobs) == 4
    assert persisted_batches(data_dir) == []
    assert router.submit_due() == []


def test_instances_after_a_submitted_batch_start_a_new_batch(config, archive, data_dir) -> None:
    config.add_routing_rule(RoutingRule(name="all", destinations=["PACS"]))
    router, recorder, clock = make_router(config, archive, data_dir)
    study = generate_uid()
    first = receive(archive, study_uid=study, number=1)
    router.on_stored(first)
    clock.advance(QUIET)
    assert len(router.submit_due()) == 1
    late = receive(archive, study_uid=study, number=2)
    router.on_stored(late)
    again = receive(archive, study_uid=study, sop_instance_uid=first["sop_instance_uid"])
    router.on_stored(again)
    clock.advance(QUIET - 1)
    assert router.submit_due() == []
    clock.advance(1)
    (job,) = router.submit_due()
    assert job.params["sop_instance_uids"] == [late["sop_instance_uid"], again["sop_instance_uid"]]
    assert [j.params["sop_instance_uids"] for j in recorder.jobs[:1]] == [
        [first["sop_instance_uid"]]
    ]


def test_background_thread_submits_when_the_study_is_quiet(config, archive, data_dir) -> None:
    config.set("routing_quiet_seconds", 0.3)
    config.add_routing_rule(RoutingRule(name="all", destinations=["PACS"]))
    recorder = Recorder()
    router = Router(config, recorder, archive, data_dir)
    router.start()
    try:
        study = generate_uid()
        infos = [receive(archive, study_uid=study, number=n) for n in range(3)]
        for info in infos:
            router.on_stored(info)
        assert recorder.jobs == []
        deadline = time.monotonic() + 10
        while not recorder.jobs and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        router.stop()
    assert [j.params["sop_instance_uids"] for j in recorder.jobs] == [
        [i["sop_instance_uid"] for i in infos]
    ]


def test_a_rule_added_while_running_applies_to_the_next_instance(config, archive, data_dir):
    router, recorder, clock = make_router(config, archive, data_dir)
    study = generate_uid()
    router.on_stored(receive(archive, study_uid=study, number=1))
    other = ConfigStore(data_dir)  # as `dicom-appliance route add` does, from another process
    other.add_routing_rule(RoutingRule(name="all", destinations=["VIEWER"]))
    other.close()
    second = receive(archive, study_uid=study, number=2)
    router.on_stored(second)
    clock.advance(QUIET)
    (job,) = router.submit_due()
    assert (job.target, job.params["sop_instance_uids"]) == ("VIEWER", [second["sop_instance_uid"]])


def test_a_rule_disabled_before_its_batch_is_due_forwards_nothing(config, archive, data_dir):
    config.add_routing_rule(RoutingRule(name="all", destinations=["PACS"]))
    router, recorder, clock = make_router(config, archive, data_dir)
    router.on_stored(receive(archive, study_uid=generate_uid()))
    config.add_routing_rule(
        RoutingRule(name="all", destinations=["PACS"], enabled=False), replace=True
    )
    clock.advance(QUIET)
    assert router.submit_due() == []
    assert persisted_batches(data_dir) == []


# --- restart --------------------------------------------------------------------------------


def test_open_batch_is_resumed_after_a_restart(config, archive, data_dir) -> None:
    config.add_routing_rule(RoutingRule(name="ct", modalities=["CT"], destinations=["PACS"]))
    config.add_routing_rule(RoutingRule(name="two", destinations=["BACKUP", "VIEWER"]))
    router, recorder, clock = make_router(config, archive, data_dir)
    study, done_study = generate_uid(), generate_uid()
    router.on_stored(receive(archive, study_uid=done_study))
    clock.advance(QUIET)
    assert len(router.submit_due()) == 3
    # An earlier batch of the same study, already submitted, must not come back.
    earlier = receive(archive, study_uid=study, number=9)
    router.on_stored(earlier)
    clock.advance(QUIET)
    assert len(router.submit_due()) == 3
    recorder.jobs.clear()

    infos = [receive(archive, study_uid=study, number=n) for n in range(1, 4)]
    mr = receive(archive, study_uid=study, modality="MR", number=4)
    for info in [*infos, mr]:
        router.on_stored(info)
    # Only the opening of each batch was written; later instances are in the index alone.
    assert len(persisted_batches(data_dir)) == 2
    del router  # killed: never stopped, nothing flushed

    restarted, recorder2, clock2 = make_router(config, archive, data_dir)
    assert sorted((p["rule"], p["instances"]) for p in restarted.pending()) == [
        ("ct", 3),
        ("two", 4),
    ]
    clock2.advance(QUIET - 1)  # the quiet time starts again at the restart
    assert restarted.submit_due() == []
    clock2.advance(1)
    jobs = {j.target: j for j in restarted.submit_due()}
    assert sorted(jobs) == ["BACKUP", "PACS", "VIEWER"]
    ct_uids = [i["sop_instance_uid"] for i in infos]
    assert jobs["PACS"].params["sop_instance_uids"] == ct_uids
    assert jobs["BACKUP"].params["sop_instance_uids"] == [*ct_uids, mr["sop_instance_uid"]]
    assert jobs["VIEWER"].params["sop_instance_uids"] == [*ct_uids, mr["sop_instance_uid"]]
    assert persisted_batches(data_dir) == []
    assert recorder.jobs == []


def test_a_failed_submission_is_tried_again_for_the_remaining_destinations(
    config, archive, data_dir
) -> None:
    config.add_routing_rule(RoutingRule(name="two", destinations=["BACKUP", "PACS"]))
    recorder, clock = Recorder(), Clock()
    failures = {"PACS": 1}

    def flaky(kind: str, target: str, params: dict[str, Any], **kwargs: Any) -> Job:
        if failures.get(target):
            failures[target] -= 1
            raise OSError("job store disk full")
        return recorder(kind, target, params, **kwargs)

    router = Router(config, flaky, archive, data_dir, clock=clock)
    router.on_stored(receive(archive, study_uid=generate_uid()))
    clock.advance(QUIET)
    assert [j.target for j in router.submit_due()] == ["BACKUP"]
    assert [b["done"] for b in persisted_batches(data_dir)] == [["BACKUP"]]
    # A restart now would not queue BACKUP again.
    restarted = Router(config, recorder, archive, data_dir, clock=Clock())
    assert len(restarted.pending()) == 1
    clock.advance(QUIET)
    assert [j.target for j in router.submit_due()] == ["PACS"]
    assert [j.target for j in recorder.jobs] == ["BACKUP", "PACS"]
    assert persisted_batches(data_dir) == []


def test_an_unreadable_routing_file_is_moved_aside(config, archive, data_dir, caplog) -> None:
    config.add_routing_rule(RoutingRule(name="all", destinations=["PACS"]))
    (data_dir / ROUTING_FILE).write_text('{"batches": {"1": ')
    router, recorder, clock = make_router(config, archive, data_dir)
    assert "routing.json unreadable, moved aside" in caplog.text
    assert [
        p.name.startswith("routing.json.corrupt-") for p in data_dir.glob("routing.json.*")
    ] == [True]
    router.on_stored(receive(archive, study_uid=generate_uid()))
    assert len(persisted_batches(data_dir)) == 1
    clock.advance(QUIET)
    assert len(router.submit_due()) == 1


# --- rules in the configuration ---------------------------------------------------------------


def test_rule_validation(config) -> None:
    with pytest.raises(ConfigError, match="'NOPE' is not a configured node"):
        config.add_routing_rule(RoutingRule(name="r", destinations=["PACS", "NOPE"]))
    with pytest.raises(ConfigError, match="route.destinations: needs at least one node"):
        RoutingRule(name="r", destinations=[])
    with pytest.raises(ConfigError, match="route.destinations: needs at least one node"):
        RoutingRule(name="r", destinations=" , ")
    with pytest.raises(ConfigError, match="route.modalities: 'C-T' is not a modality"):
        RoutingRule(name="r", modalities=["C-T"], destinations=["PACS"])
    with pytest.raises(ConfigError, match="route.modalities"):
        RoutingRule(name="r", modalities=["X" * 17], destinations=["PACS"])
    with pytest.raises(ConfigError, match="route.sop_classes: '1.2.x' is not a SOP Class UID"):
        RoutingRule(name="r", sop_classes=["1.2.x"], destinations=["PACS"])
    with pytest.raises(ConfigError, match="route.calling_aes"):
        RoutingRule(name="r", calling_aes=["A" * 17], destinations=["PACS"])
    with pytest.raises(ConfigError, match="route.name"):
        RoutingRule(name="bad name", destinations=["PACS"])
    config.add_routing_rule(RoutingRule(name="r", modalities="ct, MR,CT", destinations="PACS"))
    with pytest.raises(ConfigError, match="already exists|exists"):
        config.add_routing_rule(RoutingRule(name="r", destinations=["BACKUP"]))
    (rule,) = config.routing_rules()
    assert (rule.modalities, rule.destinations, rule.enabled) == (["CT", "MR"], ["PACS"], True)
    # A node a rule forwards to cannot disappear under it.
    with pytest.raises(ConfigError, match="destination of routing rule r"):
        config.remove_node("PACS")
    config.remove_routing_rule("r")
    config.remove_node("PACS")
    with pytest.raises(ConfigError, match="no routing rule named 'r'"):
        config.remove_routing_rule("r")


def test_a_bad_rule_in_the_file_is_refused_on_load(config, data_dir) -> None:
    config.add_routing_rule(RoutingRule(name="r", destinations=["PACS"]))
    config.close()
    path = data_dir / "config.json"
    data = json.loads(path.read_text())
    (doc,) = data["routing_rules"].values()
    doc["destinations"] = ["GONE"]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="'GONE' is not a configured node"):
        ConfigStore(data_dir)
    doc["destinations"] = ["PACS"]
    doc["modalities"] = ["not a modality!"]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="route.modalities"):
        ConfigStore(data_dir)


# --- CLI --------------------------------------------------------------------------------------


def route(config: ConfigStore, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    routing_cli.add_parsers(commands, argparse.ArgumentParser(add_help=False))
    args = parser.parse_args(list(argv))
    assert args.command in routing_cli.COMMANDS
    assert routing_cli.run(args, config) == 0
    return capsys.readouterr().out


def test_route_commands(config, capsys) -> None:
    out = route(
        config,
        capsys,
        *("route", "add", "ct", "--to", "PACS,BACKUP", "--calling-ae", "CT1,CT2"),
        *("--modality", "ct", "--sop-class", CTImageStorage),
    )
    assert "added ct" in out and "PACS, BACKUP" in out
    route(config, capsys, "route", "add", "off", "--to", "VIEWER", "--disabled")
    listed = json.loads(route(config, capsys, "route", "list", "--json"))
    assert listed == [
        {
            "name": "ct",
            "calling_aes": ["CT1", "CT2"],
            "modalities": ["CT"],
            "sop_classes": [CTImageStorage],
            "destinations": ["PACS", "BACKUP"],
            "enabled": True,
        },
        {
            "name": "off",
            "calling_aes": [],
            "modalities": [],
            "sop_classes": [],
            "destinations": ["VIEWER"],
            "enabled": False,
        },
    ]
    table = route(config, capsys, "route", "list").splitlines()
    assert table[0].startswith("NAME")
    assert table[2].split() == ["off", "no", "any", "any", "any", "VIEWER"]
    with pytest.raises(ConfigError, match="'NOPE' is not a configured node"):
        route(config, capsys, "route", "add", "x", "--to", "NOPE")
    assert "removed ct" in route(config, capsys, "route", "remove", "ct")
    assert [r.name for r in config.routing_rules()] == ["off"]


# --- with the DICOM server: DCMTK storescu sends, the server calls the router ---------------------


@dataclass
class Listener:
    """What tests.scp_helpers.storescu needs to know of a listener."""

    port: int
    ae_title: str = "APPLIANCE"


def serving(config: ConfigStore, archive: Archive, router: Router) -> tuple[DicomServer, Listener]:
    settings = config.settings()
    settings.port = free_port()
    settings.bind_address = LOOPBACK
    server = DicomServer(settings, config, archive)
    server.add_storage_listener(router.on_stored)
    server.start()
    return server, Listener(server.port, settings.ae_title)


def sent_uids(files: list[Path]) -> list[str]:
    return [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


def test_storescu_studies_are_forwarded_per_study(config, archive, data_dir, tmp_path) -> None:
    config.set("disk_reserve_mb", 0)
    config.set("routing_quiet_seconds", 0.5)
    config.add_routing_rule(
        RoutingRule(name="scanner", calling_aes=["CT_SCANNER"], destinations=["PACS", "BACKUP"])
    )
    recorder = Recorder()
    router = Router(config, recorder, archive, data_dir)
    router.start()
    server, listener = serving(config, archive, router)
    try:
        study_a = write_ct_series(tmp_path / "a", 3, rows=8, columns=8)
        study_b = write_ct_series(tmp_path / "b", 2, rows=8, columns=8)
        other = write_ct_series(tmp_path / "c", 2, rows=8, columns=8)
        for files, calling in ((study_a, "CT_SCANNER"), (study_b, "CT_SCANNER"), (other, "WS")):
            result = storescu(listener, files, calling=calling)  # type: ignore[arg-type]
            assert succeeded_files(result.stdout + result.stderr) == [str(f) for f in files]
        deadline = time.monotonic() + 15
        while len(recorder.jobs) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # nothing more comes: the third study is not from the scanner
    finally:
        router.stop()
        server.shutdown(1)
    forwarded = sorted(
        (job.target, tuple(job.params["sop_instance_uids"])) for job in recorder.jobs
    )
    assert forwarded == sorted(
        (target, tuple(sent_uids(files)))
        for target in ("PACS", "BACKUP")
        for files in (study_a, study_b)
    )


KILLED_SERVER = """
import sys, time
from pathlib import Path
from appliance.archive import Archive
from appliance.config import ConfigStore
from appliance.network import DicomServer
from appliance.routing import Router

data_dir, port = Path(sys.argv[1]), int(sys.argv[2])
config = ConfigStore(data_dir)
settings = config.settings()
settings.port, settings.bind_address = port, "127.0.0.1"
archive = Archive(data_dir)

def submit(*args, **kwargs):
    raise AssertionError("the quiet time never ends in this process")

router = Router(config, submit, archive, data_dir)
router.start()
server = DicomServer(settings, config, archive)
server.add_storage_listener(router.on_stored)
server.start()
time.sleep(3600)
"""


def test_acknowledged_instances_are_forwarded_after_a_sigkill(config, data_dir, tmp_path) -> None:
    config.set("disk_reserve_mb", 0)
    config.set("routing_quiet_seconds", 3600)
    config.add_routing_rule(RoutingRule(name="all", destinations=["PACS"]))
    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_SERVER, str(data_dir), str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        wait_for_port(port, proc=child)
        files = write_ct_series(tmp_path / "study", 4, rows=8, columns=8)
        result = storescu(Listener(port), files)  # type: ignore[arg-type]
        assert succeeded_files(result.stdout + result.stderr) == [str(f) for f in files]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    archive = Archive(data_dir)
    try:
        archive.recover()
        recorder, clock = Recorder(), Clock()
        router = Router(config, recorder, archive, data_dir, clock=clock)
        assert [p["instances"] for p in router.pending()] == [4]
        clock.advance(3599)
        assert router.submit_due() == []
        clock.advance(1)
        (job,) = router.submit_due()
    finally:
        archive.close()
    assert (job.kind, job.target) == ("forward", "PACS")
    assert job.params["sop_instance_uids"] == sent_uids(files)


# --- with the job engine: forward jobs delivered to a DCMTK storescp -----------------------------


def test_forward_jobs_deliver_only_the_matching_instances(
    config, archive, data_dir, tmp_path, storescp
) -> None:
    from appliance.events import EventBus
    from appliance.job_engine import JobEngine
    from appliance.job_store import JobStore
    from appliance.jobs import JobState

    config.set("disk_reserve_mb", 0)
    config.set("routing_quiet_seconds", 0.5)
    config.add_node(Node(name="SCP", ae_title=storescp.ae_title, host=LOOPBACK, port=storescp.port))
    config.add_routing_rule(RoutingRule(name="ct", modalities=["CT"], destinations=["SCP"]))
    jobs = JobStore(data_dir)
    engine = JobEngine(jobs, config, archive, EventBus(), data_dir)
    engine.start()
    router = Router(config, engine.submit, archive, data_dir)
    router.start()
    server, listener = serving(config, archive, router)
    try:
        study = generate_uid()
        ct = write_ct_series(tmp_path / "ct", 3, rows=8, columns=8, study_uid=study)
        mr_ds = ct_dataset(study_uid=study, rows=8, columns=8)
        mr_ds.Modality = "MR"
        mr = tmp_path / "mr.dcm"
        mr_ds.save_as(mr, enforce_file_format=True)
        result = storescu(listener, [*ct, mr], calling="CT_SCANNER")  # type: ignore[arg-type]
        assert len(succeeded_files(result.stdout + result.stderr)) == 4
        deadline = time.monotonic() + 30
        forwarded: list[Job] = []
        while time.monotonic() < deadline:
            forwarded = engine.list(kinds=["forward"])
            if forwarded and all(j.is_final for j in forwarded):
                break
            time.sleep(0.1)
    finally:
        router.stop()
        server.shutdown(1)
        engine.stop(5)
        jobs.close()
    (job,) = forwarded
    assert (job.target, job.state) == ("SCP", JobState.SUCCEEDED)
    assert job.summary["patient_name"] == "DOE^JOHN"
    assert sorted(i.sop_instance_uid for i in job.instances) == sorted(sent_uids(ct))
    received = sorted(sop_instance_uid_of(f) for f in storescp.files())
    assert received == sorted(sent_uids(ct))


def test_daemon_killed_before_the_quiet_time_forwards_after_its_restart(
    daemon_factory, storescp, tmp_path
) -> None:
    daemon = daemon_factory(routing_quiet_seconds=3600)
    for argv in (
        ("node", "add", "SCP", "--ae-title", storescp.ae_title, "--host", LOOPBACK),
        ("route", "add", "scanner", "--to", "SCP", "--calling-ae", "CT_SCANNER"),
    ):
        extra = ("--port", str(storescp.port)) if argv[0] == "node" else ()
        result = daemon.cli(*argv, *extra)
        assert result.returncode == 0, result.stderr
    bad = daemon.cli("route", "add", "x", "--to", "NOPE")
    assert bad.returncode == 2 and "'NOPE' is not a configured node" in bad.stderr
    daemon.start()
    files = write_ct_series(tmp_path / "study", 3, rows=8, columns=8)
    result = storescu(daemon, files, calling="CT_SCANNER")
    assert len(succeeded_files(result.stdout + result.stderr)) == 3
    daemon.kill()
    assert storescp.files() == []

    daemon.configure(routing_quiet_seconds=0.5)
    daemon.start()
    deadline = time.monotonic() + 30
    while len(storescp.files()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(sop_instance_uid_of(f) for f in storescp.files()) == sorted(sent_uids(files))
    listed = json.loads(daemon.cli("route", "list", "--json").stdout)
    assert [(r["name"], r["destinations"]) for r in listed] == [("scanner", ["SCP"])]
