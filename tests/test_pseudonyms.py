"""Pseudonym store: stable pseudonyms and date shifts across restarts and processes, per-project
keys, file modes, the CSV export; profile configuration and the anonymization CLI commands."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from appliance import anon_profile_cli, audit, cli
from appliance.config import AnonProfileConfig, ConfigError, ConfigStore
from appliance.pseudonyms import (
    EXPORT_COLUMNS,
    STORE_DIR,
    STORE_FILE,
    PseudonymError,
    PseudonymStore,
    validate_pattern,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_same_patient_same_pseudonym_across_restarts(tmp_path):
    with PseudonymStore(tmp_path) as store:
        first = store.patient("trial", "P1", "DOE^JOHN", "19700101")
        second = store.patient("trial", "P2", "ROE^RICHARD", "19800101")
        key = store.project_key("trial")
        shift = store.date_shift_days("trial", "P1")
    assert first == ("ANON000001", "ANONYMOUS^000001")
    assert second == ("ANON000002", "ANONYMOUS^000002")
    assert len(key) == 32
    with PseudonymStore(tmp_path) as store:
        assert store.patient("trial", "P2", "ROE^RICHARD", "19800101") == second
        assert store.patient("trial", "P1", "Doe^John", "") == first  # the ID decides
        assert store.project_key("trial") == key
        assert store.date_shift_days("trial", "P1") == shift
        assert store.patient("trial", "P3", "X", "") == ("ANON000003", "ANONYMOUS^000003")


def test_projects_are_separate(tmp_path):
    with PseudonymStore(tmp_path) as store:
        a = store.lookup("a", "P1", "", "", id_pattern="A{hash8}")
        b = store.lookup("b", "P1", "", "", id_pattern="A{hash8}")
        assert (a.n, b.n) == (1, 1)
        assert a.patient_id != b.patient_id  # hash8 comes from each project's own key
        assert store.project_key("a") != store.project_key("b")
        assert sorted(store.projects()) == ["a", "b"]
        shifts_a = [store.date_shift_days("a", f"P{i}") for i in range(400)]
        shifts_b = [store.date_shift_days("b", f"P{i}") for i in range(400)]
    assert all(-365 <= s <= -1 for s in shifts_a + shifts_b)
    assert len(set(shifts_a)) > 200  # spread over the year, not one offset for everyone
    assert shifts_a != shifts_b


def test_empty_patient_id_goes_by_name_and_birth_date(tmp_path):
    with PseudonymStore(tmp_path) as store:
        one = store.patient("p", "", "Doe^Jane^^", "19700101")
        assert store.patient("p", " ", "DOE^JANE", "19700101") == one
        assert store.patient("p", "", "DOE^JANE", "19700102") != one
        assert store.date_shift_days("p", "", "doe^jane", "19700101") == store.date_shift_days(
            "p", "", "DOE^JANE", "19700101"
        )


def test_patterns(tmp_path):
    with PseudonymStore(tmp_path) as store:
        found = store.lookup(
            "p", "X", "", "", id_pattern="STUDY-{n:03d}-{hash8}", name_pattern="SUBJECT^{n}"
        )
        assert found.patient_id.startswith("STUDY-001-") and len(found.patient_id) == 18
        assert found.patient_name == "SUBJECT^1"
        # Another profile of the same project: same number, its own pattern.
        assert store.patient("p", "X", "", "", id_pattern="R{n:04d}") == (
            "R0001",
            "ANONYMOUS^000001",
        )
    for bad, message in [
        ("{name}", "not allowed"),
        ("{n!r}", "not allowed"),
        ("{n:s}", "cannot be filled"),
        ("{", "not a pattern"),
        ("", "non-empty"),
        ("A\\B{n}", "backslash"),
        ("X" * 60 + "{n:06d}", "more than 64"),
    ]:
        with pytest.raises(PseudonymError, match=message):
            validate_pattern(bad, "id_pattern", max_length=64)
    with pytest.raises(PseudonymError, match="at most 5 components"):
        validate_pattern("A^B^C^D^E^{n}", "name_pattern", max_length=64)
    with PseudonymStore(tmp_path) as store, pytest.raises(PseudonymError, match="project"):
        store.patient("no spaces", "X", "", "")


def test_dry_run_stores_nothing(tmp_path):
    with PseudonymStore(tmp_path) as store:
        store.patient("p", "P1", "", "")
        preview = store.lookup("p", "P2", "", "", dry_run=True)
        assert preview.new and preview.n == 2
        assert store.count("p") == 1
        assert store.lookup("p", "P1", "", "", dry_run=True).n == 1
        assert store.patient("p", "P2", "", "") == ("ANON000002", "ANONYMOUS^000002")
        assert store.lookup("p", "P3", "", "", dry_run=True).n == 3


def test_folder_and_file_modes_even_with_an_open_umask(tmp_path):
    old = os.umask(0)
    try:
        (tmp_path / STORE_DIR).mkdir(mode=0o777)
        with PseudonymStore(tmp_path) as store:
            store.patient("p", "P1", "", "")
    finally:
        os.umask(old)
    assert mode(tmp_path / STORE_DIR) == 0o700
    assert mode(tmp_path / STORE_DIR / STORE_FILE) == 0o600


def _allocate(data_dir: str, ids: list[str], out: multiprocessing.Queue) -> None:
    with PseudonymStore(Path(data_dir)) as store:
        out.put({pid: store.lookup("p", pid, "", "").n for pid in ids})


def test_two_processes_share_numbers_without_duplicates(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    ids = [f"P{i}" for i in range(40)]
    procs = [
        ctx.Process(target=_allocate, args=(str(tmp_path), ids, queue)),
        ctx.Process(target=_allocate, args=(str(tmp_path), list(reversed(ids)), queue)),
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60), queue.get(timeout=60)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert results[0] == results[1]
    assert sorted(results[0].values()) == list(range(1, 41))


def test_export_content_mode_and_filter(tmp_path):
    target = tmp_path / "out" / "map.csv"
    target.parent.mkdir()
    target.write_text("old")
    target.chmod(0o644)
    with PseudonymStore(tmp_path) as store:
        store.patient("trial", "P1", "DOE^JOHN", "19700101")
        store.patient("trial", "P2", "=HYPERLINK(1)", "")
        store.patient("other", "Q1", "ROE^R", "")
        assert store.export(None, target) == 3
        assert mode(target) == 0o600
        with target.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == list(EXPORT_COLUMNS)
        assert [(r["project"], r["pseudonym_id"], r["patient_id"]) for r in rows] == [
            ("other", "ANON000001", "Q1"),
            ("trial", "ANON000001", "P1"),
            ("trial", "ANON000002", "P2"),
        ]
        john = rows[1]
        assert john["patient_name"] == "DOE^JOHN" and john["birth_date"] == "19700101"
        assert int(john["date_shift_days"]) == store.date_shift_days("trial", "P1")
        assert rows[2]["patient_name"] == "'=HYPERLINK(1)"  # no formula for a spreadsheet
        assert store.export("trial", target) == 2
        with pytest.raises(PseudonymError, match="no project named 'nope'"):
            store.export("nope", target)
    assert not list(target.parent.glob(".*"))  # no temporary file left behind


# --- profiles in the configuration -----------------------------------------------------------


def test_profile_config_validation_and_store(tmp_path):
    store = ConfigStore(tmp_path)
    profile = AnonProfileConfig(
        name="research",
        options=["clean_pixel_data", "retain_uids", "clean_pixel_data"],
        overrides={
            "StudyDescription": "keep",
            "0008,0080": "replace:HOSP",
            "(0010,0040)": "remove",
        },
        patient_id_pattern="R{n:04d}",
        project="trial1",
    )
    assert profile.options == ["retain_uids", "clean_pixel_data"]  # the table's order
    assert profile.overrides == {
        "StudyDescription": "keep",
        "(0008,0080)": "replace:HOSP",
        "(0010,0040)": "remove",
    }
    store.add_anon_profile(profile)
    with pytest.raises(ConfigError, match="already exists"):
        store.add_anon_profile(profile)
    store.close()
    store = ConfigStore(tmp_path)
    assert store.anon_profile("research") == profile
    assert store.anon_profile("basic").builtin and store.anon_profile("basic").options == []
    assert [p.name for p in store.anon_profiles()] == ["research"]
    with pytest.raises(ConfigError, match="built in"):
        store.add_anon_profile(AnonProfileConfig(name="basic"))
    with pytest.raises(ConfigError, match="built in"):
        store.remove_anon_profile("basic")
    store.remove_anon_profile("research")
    with pytest.raises(ConfigError, match="no anonymization profile"):
        store.anon_profile("research")
    store.close()


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"options": ["nope"]}, "options", "not an option"),
        (
            {"options": ["retain_long_full_dates", "retain_long_modified_dates"]},
            "options",
            "exclude each other",
        ),
        ({"overrides": {"NotAKeyword": "keep"}}, "overrides", "not an attribute"),
        ({"overrides": {"PatientName": "blank"}}, "overrides[PatientName]", "keep, remove"),
        ({"overrides": {"PatientName": "replace:a\nb"}}, "overrides[PatientName]", "one line"),
        (
            {"overrides": {"(0010,0010)": "keep", "0010,0010": "remove"}},
            "overrides",
            "twice",
        ),
        ({"patient_id_pattern": "{who}"}, "patient_id_pattern", "not allowed"),
        ({"patient_name_pattern": ""}, "patient_name_pattern", "non-empty"),
        ({"project": "a b"}, "project", "not a project name"),
        ({"name": "bad name"}, "name", "not a valid name"),
        ({"colour": "red"}, "colour", "unknown"),
    ],
)
def test_bad_profiles_are_refused(data, field, message):
    with pytest.raises(ConfigError, match=message) as info:
        AnonProfileConfig.from_mapping({"name": "p", **data})
    assert info.value.args[0] == f"anon_profile.{field}" or field in str(info.value)


def test_hand_edited_bad_profile_stops_the_config_from_loading(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"anon_profiles": {"1": {"name": "x", "options": ["retain_everything"]}}})
    )
    with pytest.raises(ConfigError, match="not an option"):
        ConfigStore(tmp_path)


# --- the CLI ---------------------------------------------------------------------------------


def run_cli(tmp_path: Path, *args: str) -> int:
    return cli.main(["--data-dir", str(tmp_path), *args])


def test_cli_profiles(tmp_path, capsys):
    assert (
        run_cli(
            tmp_path,
            "anonymize-profile",
            "add",
            "teaching",
            "--option",
            "clean-descriptors",
            "--option",
            "retain_patient_characteristics",
            "--keep",
            "StudyDescription",
            "--remove",
            "0008,1030x",
        )  # fmt: skip
        == 2
    )
    assert "not an attribute" in capsys.readouterr().err
    assert (
        run_cli(
            tmp_path,
            "anonymize-profile",
            "add",
            "teaching",
            "--option",
            "clean-descriptors",
            "--keep",
            "SeriesDescription",
            "--replace",
            "InstitutionName=TEACHING",
            "--remove",
            "PatientSex",
            "--id-pattern",
            "T{n:03d}",
            "--name-pattern",
            "TEACHING^{n}",
            "--project",
            "teach",
        )  # fmt: skip
        == 0
    )
    capsys.readouterr()
    assert run_cli(tmp_path, "anonymize-profile", "add", "teaching") == 2
    assert "already exists" in capsys.readouterr().err
    assert run_cli(tmp_path, "anonymize-profile", "list", "--json") == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["basic"]["builtin"] and listed["basic"]["options"] == []
    teaching = listed["teaching"]
    assert teaching["options"] == ["clean_descriptors"]
    assert teaching["overrides"] == {
        "SeriesDescription": "keep",
        "InstitutionName": "replace:TEACHING",
        "PatientSex": "remove",
    }
    assert (teaching["patient_id_pattern"], teaching["project"]) == ("T{n:03d}", "teach")
    assert run_cli(tmp_path, "anonymize-profile", "add", "teaching", "--replace-existing") == 0
    assert run_cli(tmp_path, "anonymize-profile", "list") == 0
    out = capsys.readouterr().out
    assert "basic" in out and "teaching" in out and "built in" in out
    assert run_cli(tmp_path, "anonymize-profile", "remove", "teaching") == 0
    assert run_cli(tmp_path, "anonymize-profile", "remove", "basic") == 2


def test_cli_pixel_regions(tmp_path, capsys):
    args = ["pixel-region", "add", "--modality", "us", "--manufacturer", "ACME"]
    assert run_cli(tmp_path, *args, "--size", "640x480", "--region", "0,0,640,40",
                   "--region", "600,440,40,40") == 0  # fmt: skip
    assert run_cli(tmp_path, *args, "--size", "640x480", "--region", "0,0,641,40") == 2
    assert "does not fit a 640x480 image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(tmp_path, *args, "--size", "640", "--region", "0,0,1,1")
    with pytest.raises(SystemExit):
        run_cli(tmp_path, *args, "--size", "640x480", "--region", "0,0,1")
    assert run_cli(tmp_path, "pixel-region", "list", "--json") == 0
    rules = json.loads(capsys.readouterr().out)
    assert rules == [
        {
            "modality": "US",
            "columns": 640,
            "rows": 480,
            "regions": [[0, 0, 640, 40], [600, 440, 40, 40]],
            "manufacturer": "ACME",
            "model": "",
        }
    ]
    remove = ["pixel-region", "remove", "--modality", "US", "--size", "640x480"]
    assert run_cli(tmp_path, *remove) == 2  # the any-manufacturer rule does not exist
    assert run_cli(tmp_path, *remove, "--manufacturer", "acme") == 0
    assert "rule removed: US ACME 640x480" in capsys.readouterr().out
    assert run_cli(tmp_path, "pixel-region", "list") == 0
    assert "US ACME" not in capsys.readouterr().out


def test_cli_pseudonym_export_is_audited(tmp_path, capsys):
    assert run_cli(tmp_path, "pseudonyms", "export", str(tmp_path / "x.csv")) == 1
    assert "no pseudonyms yet" in capsys.readouterr().err
    with PseudonymStore(tmp_path) as store:
        store.patient("trial", "P1", "DOE^JOHN", "19700101")
    target = tmp_path / "map.csv"
    assert run_cli(tmp_path, "pseudonyms", "export", str(target), "--project", "trial") == 0
    assert "1 patients written" in capsys.readouterr().out
    assert mode(target) == 0o600
    assert run_cli(tmp_path, "pseudonyms", "export", str(target), "--project", "nope") == 2
    entries = [e.summary() for e in audit.read(tmp_path)]
    exports = [e for e in entries if e["event"] == "export"]
    assert len(exports) == 1
    assert "pseudonym mapping exported (1 patients, project trial)" in exports[0]["description"]
    assert any(p["user_id"] == target.as_uri() for p in exports[0]["participants"])


def test_cli_pseudonym_export_needs_the_service_role_when_a_daemon_runs(
    tmp_path, capsys, monkeypatch
):
    class Client:
        def __init__(self, role: str) -> None:
            self.role = role

        def __enter__(self) -> Client:
            return self

        def __exit__(self, *_: object) -> None:
            pass

        def call(self, op: str) -> dict[str, str]:
            assert op == "hello"
            return {"role": self.role}

    with PseudonymStore(tmp_path) as store:
        store.patient("trial", "P1", "DOE^JOHN", "19700101")
    target = tmp_path / "map.csv"
    monkeypatch.setattr("appliance.jobs_cli.client_for", lambda _d: Client("technologist"))
    assert run_cli(tmp_path, "pseudonyms", "export", str(target)) == 1
    assert "needs the service role" in capsys.readouterr().err
    assert not target.exists()
    monkeypatch.setattr("appliance.jobs_cli.client_for", lambda _d: Client("service"))
    assert run_cli(tmp_path, "pseudonyms", "export", str(target)) == 0
    assert anon_profile_cli.COMMANDS == ("anonymize-profile", "pixel-region", "pseudonyms")
