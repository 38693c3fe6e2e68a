"""Send, forward, retrieve and commitment jobs against real peers: DCMTK storescp (not running
yet, refusing a SOP class, slow), scripted pynetdicom SCPs for the statuses DCMTK never
answers, our own daemon as a C-GET source."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import StorageCommitmentPushModel

from appliance.config import Node
from appliance.jobs import FAILED, PENDING, SUCCESS, WARNING, Job
from tests.factories import ct_dataset, write_ct_series
from tests.job_helpers import Env, make_env, wait_for
from tests.peers import LOOPBACK, StoreSCP, free_port


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from make_env(tmp_path)


COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"

# storescp accepting CT only (and Verification): every other storage class is refused at
# association negotiation.
CT_ONLY_CONFIG = """\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit

[[PresentationContexts]]
[CTOnly]
PresentationContext1 = VerificationSOPClass\\Uncompressed
PresentationContext2 = CTImageStorage\\Uncompressed

[[Profiles]]
[CTOnly]
PresentationContexts = CTOnly
"""


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def received(folder: Path) -> list[str]:
    return sorted(
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in folder.rglob("*")
        if p.is_file()
    )


def write_mr(path: Path, **kwargs: object) -> str:
    ds = ct_dataset(**kwargs)  # type: ignore[arg-type]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.Modality = "MR"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def log_texts(job: Job) -> list[str]:
    return [text for _, text in job.log]


class ScriptedSCP:
    """A pynetdicom Storage SCP answering each instance with the next status of its script
    (then 0000), or aborting the association the first time it sees ``abort_once``. DCMTK's
    storescp answers only 0000 or its own errors."""

    def __init__(
        self,
        script: dict[str, list[int]] | None = None,
        *,
        abort_once: str | None = None,
        commit_refuse: set[str] | None = None,
    ) -> None:
        self.script = {uid: list(statuses) for uid, statuses in (script or {}).items()}
        self.abort_once = abort_once
        self.commit_refuse = commit_refuse or set()
        self.calls: list[str] = []
        self.commit_requests: list[list[str]] = []
        self.lock = threading.Lock()
        self.port = free_port()
        self.ae = AE(ae_title="SCRIPTED")
        for sop_class in (CTImageStorage, MRImageStorage):
            self.ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(StorageCommitmentPushModel)
        self.server = self.ae.start_server(
            (LOOPBACK, self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_N_ACTION, self._on_action)],
        )

    def _on_store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self.lock:
            if uid == self.abort_once:
                self.abort_once = None
                threading.Thread(target=event.assoc.abort).start()
                threading.Event().wait(0.5)
                return 0x0000
            self.calls.append(uid)
            statuses = self.script.get(uid)
            return statuses.pop(0) if statuses else 0x0000

    def _on_action(self, event: evt.Event) -> tuple[int, None]:
        info = event.action_information
        uids = [str(item.ReferencedSOPInstanceUID) for item in info.ReferencedSOPSequence]
        self.commit_requests.append(uids)
        threading.Thread(target=self._report, args=(event.assoc, info), daemon=True).start()
        return 0x0000, None

    def _report(self, assoc: object, info: Dataset) -> None:
        time.sleep(0.3)  # after our N-ACTION response has gone out
        report = Dataset()
        report.TransactionUID = info.TransactionUID
        committed, failed = [], []
        for item in info.ReferencedSOPSequence:
            if str(item.ReferencedSOPInstanceUID) in self.commit_refuse:
                failure = Dataset()
                failure.ReferencedSOPClassUID = item.ReferencedSOPClassUID
                failure.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
                failure.FailureReason = 0x0112
                failed.append(failure)
            else:
                committed.append(item)
        report.ReferencedSOPSequence = committed
        if failed:
            report.FailedSOPSequence = failed
        if assoc.is_established:  # type: ignore[attr-defined]
            assoc.send_n_event_report(  # type: ignore[attr-defined]
                report, 2 if failed else 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE
            )

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def scripted() -> Iterator[list[ScriptedSCP]]:
    made: list[ScriptedSCP] = []
    yield made
    for scp in made:
        scp.stop()


@pytest.fixture
def storescps(tmp_path: Path) -> Iterator[list[StoreSCP]]:
    made: list[StoreSCP] = []
    yield made
    for scp in made:
        scp.stop()


def start_storescp(made: list[StoreSCP], folder: Path, *extra: str, port: int | None = None):
    scp = StoreSCP(folder, extra=extra, port=port)
    made.append(scp)
    return scp


# --- a node that is not there yet ------------------------------------------------------------


def test_a_node_not_running_yet_is_retried_with_backoff_then_gets_everything(
    env: Env, tmp_path: Path, storescps
):
    env.config.set("retry_first_delay", 0.3)
    env.config.set("retry_max_delay", 10)
    env.config.set("retry_max_attempts", 10)
    port = free_port()
    env.add_node("pacs", port)
    paths = write_ct_series(tmp_path / "in", 3)
    subscription = env.events.subscribe({"job"})
    engine = env.engine()
    job = engine.submit("send", "pacs", {"paths": [str(tmp_path / "in")]})

    waiting = wait_for(
        lambda: (
            (j := env.store.get(job.id)) and j.attempts >= 3 and j.state == "waiting-retry" and j
        ),
        what="three failed attempts",
    )
    assert all(i.status == PENDING and i.retryable for i in waiting.instances)
    assert all("cannot connect" in i.error for i in waiting.instances)
    assert "cannot connect" in waiting.error
    scp = start_storescp(storescps, tmp_path / "scp", port=port)
    done = env.wait_state(job.id, "succeeded", timeout=30)

    assert received(scp.folder) == sorted(uid_of(p) for p in paths)
    assert all(i.status == SUCCESS and i.status_code == "0x0000" for i in done.instances)
    # Each failure logs when the next attempt comes; next_retry is that time exactly, with
    # the delay doubling from the first one.
    failures = [(t, text) for t, text in done.log if "failed: not sent: cannot connect" in text]
    starts = {
        int(text.split()[1]): t
        for t, text in done.log
        if text.startswith("attempt ") and "started" in text
    }
    retries: dict[int, float] = {}
    while (event := subscription.get(timeout=0.1)) is not None:
        data = event.data
        if data["id"] == job.id and data["state"] == "waiting-retry":
            retries[data["attempts"]] = data["next_retry"]
    subscription.close()
    assert len(failures) >= 3
    for number, (failed_at, text) in enumerate(failures, start=1):
        delay = min(0.3 * 2 ** (number - 1), 10)
        assert f"attempt {number} failed" in text and f"(in {delay:g} s)" in text
        assert retries[number] == pytest.approx(failed_at + delay, abs=1e-6)
        assert starts[number + 1] >= retries[number]
        assert starts[number + 1] - retries[number] < 1.0
    assert done.attempts == len(failures) + 1
    assert [i.attempts for i in done.instances] == [done.attempts] * 3


def test_attempts_exhausted_fail_the_job_with_the_reason(env: Env, tmp_path: Path):
    env.add_node("gone", free_port())
    env.config.set_retry_policy("node:gone", {"max_attempts": 2, "first_delay": 0.1})
    write_ct_series(tmp_path / "in", 2)
    engine = env.engine()
    alerts = env.events.subscribe({"alert"})
    job = engine.submit("send", "gone", {"paths": [str(tmp_path / "in")]})
    failed = env.wait_state(job.id, "failed")
    assert failed.attempts == 2
    assert all(i.status == FAILED and "cannot connect" in i.error for i in failed.instances)
    assert "no attempts left (2 made)" in failed.log[-1][1]
    # The console is told twice: the node stopped answering, then the job failed.
    first, second = alerts.get(timeout=5), alerts.get(timeout=5)
    assert first is not None and second is not None
    assert (first.data["source"], first.data["level"]) == ("node", "warning")
    assert "cannot connect" in first.data["text"] and first.data["target"] == "gone"
    assert (second.data["source"], second.data["level"]) == ("job", "error")
    assert second.data["job_id"] == job.id and "failed" in second.data["text"]
    assert alerts.get(timeout=0.2) is None


# --- per-instance statuses -------------------------------------------------------------------


def test_a_refused_sop_class_fails_that_instance_and_retry_failed_sends_only_it(
    env: Env, tmp_path: Path, storescps
):
    config = tmp_path / "ct-only.cfg"
    config.write_text(CT_ONLY_CONFIG)
    ct_only = start_storescp(storescps, tmp_path / "ct-only", "-xf", str(config), "CTOnly")
    env.add_node("pacs", ct_only.port)
    cts = write_ct_series(tmp_path / "in", 2)
    mr = write_mr(tmp_path / "in" / "mr.dcm")
    engine = env.engine()
    job = engine.submit("send", "pacs", {"paths": [str(tmp_path / "in")]})

    partial = env.wait_state(job.id, "partially-failed")

    assert partial.attempts == 1  # nothing retryable: no second attempt
    by_uid = {i.sop_instance_uid: i for i in partial.instances}
    assert by_uid[mr].status == FAILED and not by_uid[mr].retryable
    assert "accepted no presentation context" in by_uid[mr].error
    assert all(by_uid[uid_of(p)].status == SUCCESS for p in cts)
    assert received(ct_only.folder) == sorted(uid_of(p) for p in cts)
    assert "1 of 3 instance(s) failed" in partial.error

    # The operator reconfigures the node (a storescp accepting every class on its port).
    ct_only.stop()
    everything = start_storescp(storescps, tmp_path / "all", port=ct_only.port)
    engine.act(job.id, "retry-failed")
    done = env.wait_state(job.id, "succeeded")

    assert received(everything.folder) == [mr]
    assert {i.status for i in done.instances} == {SUCCESS}
    assert {i.sop_instance_uid: i.attempts for i in done.instances}[mr] == 2


def test_a700_is_retried_a900_c000_and_warnings_are_not(env: Env, tmp_path: Path, scripted):
    paths = write_ct_series(tmp_path / "in", 5)
    full, mismatch, garbage, coerced, fine = (uid_of(p) for p in paths)
    peer = ScriptedSCP({full: [0xA700], mismatch: [0xA900], garbage: [0xC000], coerced: [0xB007]})
    scripted.append(peer)
    env.add_node("peer", peer.port, "SCRIPTED")
    engine = env.engine()
    job = engine.submit("send", "peer", {"paths": [str(tmp_path / "in")]})

    done = env.wait_state(job.id, "partially-failed")

    by_uid = {i.sop_instance_uid: i for i in done.instances}
    assert (by_uid[full].status, by_uid[full].status_code, by_uid[full].attempts) == (
        SUCCESS, "0x0000", 2,
    )  # fmt: skip
    assert (by_uid[mismatch].status, by_uid[mismatch].status_code) == (FAILED, "0xA900")
    assert (by_uid[garbage].status, by_uid[garbage].status_code) == (FAILED, "0xC000")
    assert not by_uid[mismatch].retryable and not by_uid[garbage].retryable
    assert (by_uid[coerced].status, by_uid[coerced].status_code) == (WARNING, "0xB007")
    assert by_uid[fine].status == SUCCESS
    # Only the A700 instance went twice.
    assert sorted(peer.calls) == sorted([full, full, mismatch, garbage, coerced, fine])
    assert done.attempts == 2
    assert any("0xA700" in text and "next attempt at" in text for text in log_texts(done))


def test_only_non_retryable_failures_fail_the_job_at_once(env: Env, tmp_path: Path, scripted):
    path = write_ct_series(tmp_path / "in", 1)[0]
    peer = ScriptedSCP({uid_of(path): [0xA900]})
    scripted.append(peer)
    env.add_node("peer", peer.port, "SCRIPTED")
    engine = env.engine()
    job = engine.submit("send", "peer", {"paths": [str(path)]})
    failed = env.wait_state(job.id, "failed")
    assert failed.attempts == 1 and peer.calls == [uid_of(path)]
    assert "0xA900" in failed.error


def test_an_abort_mid_send_keeps_the_rest_pending_for_the_next_attempt(
    env: Env, tmp_path: Path, scripted
):
    paths = write_ct_series(tmp_path / "in", 3)
    uids = [uid_of(p) for p in paths]
    peer = ScriptedSCP(abort_once=uids[1])
    scripted.append(peer)
    env.add_node("peer", peer.port, "SCRIPTED")
    engine = env.engine()
    job = engine.submit("send", "peer", {"paths": [str(tmp_path / "in")]})

    done = env.wait_state(job.id, "succeeded")

    assert peer.calls == [uids[0], uids[1], uids[2]]  # the first one was not sent again
    texts = log_texts(done)
    assert any("attempt 1 failed: no response" in t for t in texts)
    assert [i.attempts for i in done.instances] == [1, 2, 2]


def test_unreadable_files_fail_for_good_and_the_rest_is_sent(env: Env, tmp_path: Path, storescps):
    scp = start_storescp(storescps, tmp_path / "scp")
    env.add_node("pacs", scp.port)
    good = write_ct_series(tmp_path / "in", 1)[0]
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    engine = env.engine()
    job = engine.submit("send", "pacs", {"paths": [str(tmp_path / "in"), str(tmp_path / "gone")]})
    done = env.wait_state(job.id, "partially-failed")
    assert done.attempts == 1
    failed = sorted((Path(i.path).name, i.error) for i in done.instances if i.status == FAILED)
    assert failed[0][0] == "gone" and "no such file" in failed[0][1]
    assert failed[1][0] == "notes.txt" and "not a DICOM file" in failed[1][1]
    assert received(scp.folder) == [uid_of(good)]
    assert done.summary["patient_name"] == "DOE^JOHN"


# --- operator actions on a running send ------------------------------------------------------


def test_pause_and_reroute_of_a_running_send(env: Env, tmp_path: Path, storescps):
    slow = start_storescp(storescps, tmp_path / "slow", "--sleep-after", "1")
    other = start_storescp(storescps, tmp_path / "other")
    env.add_node("slow", slow.port)
    env.add_node("other", other.port)
    paths = write_ct_series(tmp_path / "in", 8)
    engine = env.engine()
    job = engine.submit("send", "slow", {"paths": [str(tmp_path / "in")]})
    wait_for(lambda: engine.get(job.id).counts()["success"] >= 1, what="the first instance")

    engine.act(job.id, "pause")
    paused = env.wait_state(job.id, "paused")
    sent = paused.counts()["success"]
    assert 1 <= sent <= 3 and paused.counts()["pending"] == 8 - sent
    time.sleep(0.5)
    assert len(received(slow.folder)) == sent  # nothing in flight was lost or half-sent

    engine.act(job.id, "resume")
    wait_for(lambda: engine.get(job.id).counts()["success"] > sent, what="more instances")
    engine.act(job.id, "reroute", target="other")
    done = env.wait_state(job.id, "succeeded", timeout=30)

    assert done.target == "other"
    assert received(other.folder) == sorted(uid_of(p) for p in paths)
    assert any("rerouted from slow to other" in t for t in log_texts(done))


def test_a_slow_node_does_not_hold_up_a_send_to_another(env: Env, tmp_path: Path, storescps):
    slow = start_storescp(storescps, tmp_path / "slow", "--sleep-after", "1")
    fast = start_storescp(storescps, tmp_path / "fast")
    env.add_node("slow", slow.port)
    env.add_node("fast", fast.port)
    write_ct_series(tmp_path / "a", 3)
    write_ct_series(tmp_path / "b", 3)
    write_ct_series(tmp_path / "c", 2)
    engine = env.engine()
    slow1 = engine.submit("send", "slow", {"paths": [str(tmp_path / "a")]})
    slow2 = engine.submit("send", "slow", {"paths": [str(tmp_path / "b")]})
    quick = engine.submit("send", "fast", {"paths": [str(tmp_path / "c")]})

    env.wait_state(quick.id, "succeeded", timeout=5)
    assert env.state(slow1.id) == "running"
    assert env.state(slow2.id) == "queued"  # one association per node
    env.wait_state(slow1.id, "succeeded", timeout=30)
    env.wait_state(slow2.id, "succeeded", timeout=30)


# --- from the archive ------------------------------------------------------------------------


def archive_study(env: Env, count: int) -> tuple[str, list[str]]:
    study = pydicom.uid.generate_uid()
    uids = []
    for number in range(1, count + 1):
        ds = ct_dataset(study_uid=study, instance_number=number, patient_name="ROE^JANE")
        env.archive.store_encoded(
            encode(ds, False, True),
            sop_class_uid=CTImageStorage,
            sop_instance_uid=str(ds.SOPInstanceUID),
            transfer_syntax=pydicom.uid.ExplicitVRLittleEndian,
            source_ae="MODALITY",
        )
        uids.append(str(ds.SOPInstanceUID))
    return study, uids


def test_forward_and_send_of_archive_instances(env: Env, tmp_path: Path, storescps):
    scp = start_storescp(storescps, tmp_path / "scp")
    env.add_node("pacs", scp.port)
    study, uids = archive_study(env, 3)
    engine = env.engine()
    forward = engine.submit("forward", "pacs", {"sop_instance_uids": [uids[0], "1.2.3.999"]})
    done = env.wait_state(forward.id, "partially-failed")
    assert {i.sop_instance_uid: i.status for i in done.instances} == {
        uids[0]: SUCCESS,
        "1.2.3.999": FAILED,
    }
    assert received(scp.folder) == [uids[0]]

    whole = engine.submit("send", "pacs", {"study_uids": [study]})
    sent = env.wait_state(whole.id, "succeeded")
    assert sorted(i.sop_instance_uid for i in sent.instances) == sorted(uids)
    assert sent.summary["patient_name"] == "ROE^JANE" and sent.summary["studies"] == 1
    assert received(scp.folder) == sorted(uids)


# --- storage commitment ----------------------------------------------------------------------


def test_send_with_commit_marks_uncommitted_instances_failed(env: Env, tmp_path: Path, scripted):
    paths = write_ct_series(tmp_path / "in", 3)
    uids = [uid_of(p) for p in paths]
    peer = ScriptedSCP(commit_refuse={uids[2]})
    scripted.append(peer)
    env.add_node("peer", peer.port, "SCRIPTED")
    env.config.set("commitment_timeout", 10)
    engine = env.engine()
    job = engine.submit("send", "peer", {"paths": [str(tmp_path / "in")], "commit": True})

    done = env.wait_state(job.id, "partially-failed", timeout=30)

    by_uid = {i.sop_instance_uid: i for i in done.instances}
    assert by_uid[uids[0]].committed is True and by_uid[uids[0]].status == SUCCESS
    assert by_uid[uids[2]].committed is False and by_uid[uids[2]].status == FAILED
    assert "stored (0x0000) but not committed: no such object instance (0x0112)" in (
        by_uid[uids[2]].error
    )
    assert sorted(peer.commit_requests[0]) == sorted(uids)

    # The node fixes it: retry-failed stores and commits that one again, only that one.
    peer.commit_refuse.clear()
    engine.act(job.id, "retry-failed")
    again = env.wait_state(job.id, "succeeded", timeout=30)
    assert peer.commit_requests[1:] == [[uids[2]]]
    assert peer.calls.count(uids[2]) == 2 and peer.calls.count(uids[0]) == 1
    assert all(i.committed for i in again.instances)


def test_send_with_commit_to_a_node_without_commitment_fails_after_storing(
    env: Env, tmp_path: Path, storescps
):
    scp = start_storescp(storescps, tmp_path / "scp")  # storage only
    env.add_node("pacs", scp.port)
    paths = write_ct_series(tmp_path / "in", 2)
    engine = env.engine()
    job = engine.submit("send", "pacs", {"paths": [str(tmp_path / "in")], "commit": True})
    failed = env.wait_state(job.id, "failed")
    assert failed.attempts == 1
    assert received(scp.folder) == sorted(uid_of(p) for p in paths)
    for instance in failed.instances:
        assert instance.committed is False and instance.status_code == "0x0000"
        assert "stored but not committed: peer accepted none of" in instance.error
    assert failed.error.startswith("storage commitment: peer accepted none of")


def test_commitment_job(env: Env, scripted):
    peer = ScriptedSCP(commit_refuse={"1.2.3.2"})
    scripted.append(peer)
    env.add_node("peer", peer.port, "SCRIPTED")
    engine = env.engine()
    job = engine.submit(
        "commitment",
        "peer",
        {
            "instances": [
                {"sop_class_uid": CTImageStorage, "sop_instance_uid": "1.2.3.1"},
                {"sop_class_uid": CTImageStorage, "sop_instance_uid": "1.2.3.2"},
            ]
        },
    )
    done = env.wait_state(job.id, "partially-failed", timeout=30)
    by_uid = {i.sop_instance_uid: i for i in done.instances}
    assert by_uid["1.2.3.1"].status == SUCCESS and by_uid["1.2.3.1"].committed
    assert by_uid["1.2.3.2"].status_code == "0x0112" and not by_uid["1.2.3.2"].retryable
    assert done.attempts == 1


# --- retrieve --------------------------------------------------------------------------------


def test_retrieve_by_c_get_from_another_appliance(env: Env, daemon_factory):
    peer = daemon_factory("peer", ae_title="PEERARCH").start()
    study = pydicom.uid.generate_uid()
    datasets = [ct_dataset(study_uid=study, instance_number=n) for n in (1, 2)]
    ae = AE("MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(LOOPBACK, peer.port, ae_title=peer.ae_title)
    assert assoc.is_established
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    env.config.add_node(
        Node(
            name="peer",
            ae_title=peer.ae_title,
            host=LOOPBACK,
            port=peer.port,
            retrieve_method="get",
        )
    )
    engine = env.engine()
    job = engine.submit("retrieve", "peer", {"study_uids": [study]})

    done = env.wait_state(job.id, "succeeded", timeout=30)

    assert sorted(i.sop_instance_uid for i in done.instances) == sorted(
        str(ds.SOPInstanceUID) for ds in datasets
    )
    for ds in datasets:
        assert env.archive.instance(str(ds.SOPInstanceUID)) is not None

    unknown = engine.submit("retrieve", "peer", {"study_uids": ["1.2.3.4.5.6"]})
    nothing = env.wait_state(unknown.id, "failed", timeout=30)
    assert nothing.attempts == 1 and "no instances" in nothing.error
