"""Configuration: every setting validated on set and on load, the CLI, the daemon's refusal."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from appliance import cli
from appliance.config import CONFIG_FILE, ConfigError, ConfigStore, Settings
from appliance.paths import DATA_DIR_ENV
from tests.peers import appliance_cmd, free_port, run

# (setting, bad value, text the error must contain besides the setting's name)
BAD_VALUES = [
    ("ae_title", "", "1 to 16"),
    ("ae_title", "A" * 17, "1 to 16"),
    ("ae_title", "BACK\\SLASH", "backslash"),
    ("ae_title", "    ", "not all spaces"),
    ("port", 0, "1..65535"),
    ("port", 65536, "1..65535"),
    ("port", "http", "1..65535"),
    ("bind_address", "no spaces allowed", "host name or IP address"),
    ("max_pdu", 4095, "4096..131072"),
    ("max_pdu", 131073, "4096..131072"),
    ("max_pdu", -1, "4096..131072"),
    ("max_associations", 0, "1..256"),
    ("max_associations", 257, "1..256"),
    ("association_timeout", 0, "1..3600"),
    ("association_timeout", 3601, "1..3600"),
    ("dimse_timeout", 0, "1..3600"),
    ("dimse_timeout", 99999, "1..3600"),
    ("network_timeout", 0, "1..3600"),
    ("network_timeout", "1.5", "1..3600"),
    ("transfer_syntaxes", "1.2.3.4", "not supported"),
    ("transfer_syntaxes", "", "at least one"),
    ("transfer_syntaxes", "1.2.840.10008.1.2,1.2.840.10008.1.2", "twice"),
    ("accept_unknown_calling_ae", "maybe", "true or false"),
    ("check_called_ae", "2", "true or false"),
    ("accept_any_storage_class", "yes please", "true or false"),
    ("disk_reserve_mb", -1, "0..10000000"),
    ("disk_reserve_mb", 10_000_001, "0..10000000"),
    ("duplicate_policy", "newest", "overwrite, keep-first"),
    ("shutdown_timeout", -1, "0..3600"),
    ("shutdown_timeout", 3601, "0..3600"),
    ("commitment_timeout", 0, "1..86400"),
    ("query_case_insensitive_names", "perhaps", "true or false"),
    ("max_query_matches", -1, "0..1000000"),
    ("max_query_matches", 1_000_001, "0..1000000"),
    ("job_workers", 0, "1..64"),
    ("node_concurrency", 17, "1..16"),
    ("retry_max_attempts", 0, "1..1000"),
    ("retry_first_delay", -1, "0..86400"),
    ("retry_multiplier", 0.5, "1..10"),
    ("retry_max_delay", "soon", "0..86400"),
    ("job_retention_days", -1, "0..3650"),
    ("job_retention_count", -5, "0..10000000"),
    ("routing_quiet_seconds", 86401, "0..86400"),
    ("control_group", "Bad Group", "not a group name"),
    ("service_idle_minutes", 0, "1..1440"),
    ("service_idle_minutes", 1441, "1..1440"),
    ("print_port", 70000, "1..65535 or 0"),
    ("print_ae_title", "", "not a valid AE title"),
    ("print_default_printer", "bad name!", "not a valid name"),
    ("print_presentation_lut", "maybe", "not a boolean"),
    ("media_viewer_folder", "viewer", "absolute folder path"),
    ("media_dvd_jpeg", "maybe", "not a boolean"),
    ("media_institution", "X" * 65, "label text"),
    ("media_debounce_seconds", 11, "0..10"),
    ("audit_syslog_host", "not a host!", "not a host name"),
    ("audit_syslog_port", 0, "1..65535"),
    ("audit_syslog_tls", "maybe", "not a boolean"),
    ("tls_port", 70000, "1..65535 or 0"),
    ("tls_profile", "tls10", "one of bcp195, legacy"),
    ("tls_peer_auth", "sometimes", "one of require, verify, ignore"),
    ("tls_expiry_warning_days", -1, "0..3650"),
    ("signature_verify_on_receipt", "maybe", "not a boolean"),
]

GOOD_VALUES = [
    ("ae_title", "SCANNER_01", "SCANNER_01"),
    ("port", "104", 104),
    ("bind_address", "127.0.0.1", "127.0.0.1"),
    ("max_pdu", "0", 0),
    ("max_pdu", "4096", 4096),
    ("max_associations", "256", 256),
    ("association_timeout", "1", 1),
    ("dimse_timeout", "3600", 3600),
    ("network_timeout", "30", 30),
    (
        "transfer_syntaxes",
        "1.2.840.10008.1.2, 1.2.840.10008.1.2.1",
        ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"],
    ),
    ("accept_unknown_calling_ae", "false", False),
    ("check_called_ae", "true", True),
    ("accept_any_storage_class", "on", True),
    ("disk_reserve_mb", "0", 0),
    ("duplicate_policy", "keep-first", "keep-first"),
    ("shutdown_timeout", "0", 0),
    ("commitment_timeout", "600", 600),
    ("query_case_insensitive_names", "off", False),
    ("max_query_matches", "500", 500),
    ("job_workers", "8", 8),
    ("node_concurrency", "2", 2),
    ("retry_max_attempts", "5", 5),
    ("retry_first_delay", "0.5", 0.5),
    ("retry_multiplier", "1.5", 1.5),
    ("retry_max_delay", "120", 120.0),
    ("job_retention_days", "7", 7.0),
    ("job_retention_count", "100000", 100000),
    ("routing_quiet_seconds", "5", 5.0),
    ("control_group", "dicom-console", "dicom-console"),
    ("service_idle_minutes", "30", 30),
    ("print_port", "0", 0),
    ("print_ae_title", "FILM_SPOOL", "FILM_SPOOL"),
    ("print_default_printer", "film", "film"),
    ("print_presentation_lut", "true", True),
    ("media_viewer_folder", "/opt/viewer", "/opt/viewer"),
    ("media_dvd_jpeg", "yes", True),
    ("media_institution", "General Hospital", "General Hospital"),
    ("media_debounce_seconds", "0.5", 0.5),
    ("audit_syslog_host", "syslog.example.org", "syslog.example.org"),
    ("audit_syslog_host", "", ""),
    ("audit_syslog_port", "514", 514),
    ("audit_syslog_tls", "false", False),
    ("tls_port", "0", 0),
    ("tls_port", "2762", 2762),
    ("tls_profile", "legacy", "legacy"),
    ("tls_peer_auth", "verify", "verify"),
    ("tls_expiry_warning_days", "60", 60),
    ("signature_verify_on_receipt", "on", True),
]


def _ids(cases):
    return [f"{key}={value!r}" for key, value, _ in cases]


def test_the_tables_cover_every_setting():
    assert {key for key, _, _ in BAD_VALUES} == set(Settings.keys())
    assert {key for key, _, _ in GOOD_VALUES} == set(Settings.keys())


def _write_config(data_dir: Path, settings: dict | None = None, nodes: list | None = None):
    data_dir.mkdir(parents=True, exist_ok=True)
    document: dict = {}
    if settings is not None:
        document["settings"] = {"1": settings}
    if nodes is not None:
        document["nodes"] = {str(n + 1): node for n, node in enumerate(nodes)}
    (data_dir / CONFIG_FILE).write_text(json.dumps(document))


# --- validation on set and on load ----------------------------------------------------------


@pytest.mark.parametrize(("key", "bad", "expected"), BAD_VALUES, ids=_ids(BAD_VALUES))
def test_bad_value_is_refused_on_set(tmp_path, key, bad, expected):
    store = ConfigStore(tmp_path)
    with pytest.raises(ConfigError) as error:
        store.set(key, bad)
    assert error.value.field == key
    assert key in str(error.value)
    assert expected in str(error.value)
    # Nothing was written.
    assert store.settings() == Settings()
    store.close()


@pytest.mark.parametrize(("key", "bad", "expected"), BAD_VALUES, ids=_ids(BAD_VALUES))
def test_bad_value_is_refused_on_load(tmp_path, key, bad, expected):
    _write_config(tmp_path, {key: bad})
    with pytest.raises(ConfigError) as error:
        ConfigStore(tmp_path)
    assert error.value.field == key
    assert expected in str(error.value)


@pytest.mark.parametrize(("key", "good", "stored"), GOOD_VALUES, ids=_ids(GOOD_VALUES))
def test_good_value_is_normalised_stored_and_reloaded(tmp_path, key, good, stored):
    store = ConfigStore(tmp_path)
    assert store.set(key, good) == stored
    store.close()
    reloaded = ConfigStore(tmp_path)
    assert getattr(reloaded.settings(), key) == stored
    reloaded.close()


def test_unknown_setting_in_the_file_is_refused(tmp_path):
    _write_config(tmp_path, {"max_pdu_size": 16384})
    with pytest.raises(ConfigError) as error:
        ConfigStore(tmp_path)
    assert error.value.field == "max_pdu_size"


def test_file_that_is_not_json_is_refused(tmp_path):
    (tmp_path / CONFIG_FILE).write_text('{"settings": {"1": {"port": 104')
    with pytest.raises(ConfigError) as error:
        ConfigStore(tmp_path)
    assert "not valid JSON" in str(error.value)


# --- the CLI --------------------------------------------------------------------------------


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("key", "bad", "expected"), BAD_VALUES, ids=_ids(BAD_VALUES))
def test_config_set_reports_field_and_range(tmp_path, capsys, key, bad, expected):
    code, _out, err = _cli(capsys, "config", "set", key, str(bad), "--data-dir", str(tmp_path))
    assert code == cli.EXIT_USAGE
    assert key in err
    assert expected in err


def test_config_set_max_pdu_4095_from_a_shell(tmp_path):
    result = run(appliance_cmd("config", "set", "max_pdu", "4095", "--data-dir", str(tmp_path)))
    assert result.returncode != 0
    assert "max_pdu" in result.stderr
    assert "4096..131072" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_set_unknown_key_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["config", "set", "no_such_setting", "1", "--data-dir", str(tmp_path)])
    assert exited.value.code == 2
    assert "no_such_setting" in capsys.readouterr().err


def test_config_show_lists_every_setting_with_its_value_and_meaning(tmp_path, capsys):
    assert _cli(capsys, "config", "set", "max_pdu", "65536", "--data-dir", str(tmp_path))[0] == 0
    code, out, _ = _cli(capsys, "config", "show", "--data-dir", str(tmp_path))
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == len(Settings.keys())
    for key, line in zip(Settings.keys(), lines, strict=True):
        assert line.split()[0] == key
        assert line.endswith("# " + Settings.describe(key))
    [max_pdu] = [line for line in lines if line.startswith("max_pdu ")]
    assert max_pdu.split()[1] == "65536"


def test_config_show_json_is_the_effective_settings(tmp_path, capsys):
    _cli(capsys, "config", "set", "check_called_ae", "true", "--data-dir", str(tmp_path))
    _cli(capsys, "config", "set", "ae_title", "ARCHIVE1", "--data-dir", str(tmp_path))
    code, out, _ = _cli(capsys, "config", "show", "--json", "--data-dir", str(tmp_path))
    assert code == 0
    shown = json.loads(out)
    expected = asdict(Settings())
    expected.update(check_called_ae=True, ae_title="ARCHIVE1")
    assert shown == expected


def test_node_add_list_remove(tmp_path, capsys):
    data = ["--data-dir", str(tmp_path)]
    code, out, _ = _cli(
        capsys, "node", "add", "ct1", "--ae-title", "CT_SCANNER", "--host", "10.0.0.5",
        "--port", "104", "--services", "echo,store", *data,
    )  # fmt: skip
    assert code == 0 and "CT_SCANNER@10.0.0.5:104" in out
    code, _, _ = _cli(
        capsys, "node", "add", "pacs", "--ae-title", "PACS", "--host", "pacs.example",
        "--port", "11112", "--no-move-destination", *data,
    )  # fmt: skip
    assert code == 0

    code, out, _ = _cli(capsys, "node", "list", "--json", *data)
    assert code == 0
    nodes = json.loads(out)
    assert [n["name"] for n in nodes] == ["ct1", "pacs"]
    assert nodes[0] == {
        "name": "ct1",
        "ae_title": "CT_SCANNER",
        "host": "10.0.0.5",
        "port": 104,
        "services": ["echo", "store"],
        "move_destination": True,
        "retrieve_method": "move",
        "tls": False,
        "tls_peer_auth": None,
        "tls_profile": None,
    }
    assert nodes[1]["move_destination"] is False

    code, out, _ = _cli(capsys, "node", "list", *data)
    assert code == 0
    rows = out.splitlines()
    assert rows[0].split()[:2] == ["NAME", "AE"]
    assert rows[1].split()[:4] == ["ct1", "CT_SCANNER", "10.0.0.5", "104"]
    assert rows[2].split()[:4] == ["pacs", "PACS", "pacs.example", "11112"]

    code, _, _ = _cli(capsys, "node", "remove", "ct1", *data)
    assert code == 0
    code, out, _ = _cli(capsys, "node", "list", "--json", *data)
    assert [n["name"] for n in json.loads(out)] == ["pacs"]


def test_node_add_with_tls(tmp_path, capsys):
    data = ["--data-dir", str(tmp_path)]
    add = ["node", "add", "pacs", "--ae-title", "PACS", "--host", "10.0.0.9", "--port", "2762"]
    code, out, _ = _cli(capsys, *add, "--tls", "--tls-peer-auth", "verify", *data)
    assert code == 0 and "over TLS" in out
    code, out, _ = _cli(capsys, "node", "list", "--json", *data)
    node = json.loads(out)[0]
    assert (node["tls"], node["tls_peer_auth"], node["tls_profile"]) == (True, "verify", None)
    code, out, _ = _cli(capsys, "node", "list", *data)
    assert out.splitlines()[1].endswith("TLS")
    # Peer auth without TLS means nothing: refused rather than silently ignored.
    code, _, err = _cli(capsys, *add, "--tls-peer-auth", "ignore", "--replace", *data)
    assert code != 0 and "need --tls" in err
    with pytest.raises(SystemExit):
        _cli(capsys, *add, "--tls", "--tls-profile", "ssl3", "--replace", *data)


def test_node_with_a_duplicate_name_is_refused(tmp_path, capsys):
    data = ["--data-dir", str(tmp_path)]
    add = ["node", "add", "ct1", "--host", "10.0.0.5", "--port", "104"]
    assert _cli(capsys, *add, "--ae-title", "FIRST", *data)[0] == 0
    code, _, err = _cli(capsys, *add, "--ae-title", "SECOND", *data)
    assert code == cli.EXIT_USAGE
    assert "ct1" in err and "already exists" in err
    # --replace is the way to change it.
    assert _cli(capsys, *add, "--ae-title", "SECOND", "--replace", *data)[0] == 0
    code, out, _ = _cli(capsys, "node", "list", "--json", *data)
    assert [(n["name"], n["ae_title"]) for n in json.loads(out)] == [("ct1", "SECOND")]


@pytest.mark.parametrize("port", ["0", "65536", "-104"])
def test_node_with_a_bad_port_is_refused(tmp_path, capsys, port):
    code, _, err = _cli(
        capsys, "node", "add", "ct1", "--ae-title", "CT", "--host", "10.0.0.5",
        "--port", port, "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert code == cli.EXIT_USAGE
    assert "port" in err and "1..65535" in err
    assert _cli(capsys, "node", "list", "--json", "--data-dir", str(tmp_path))[1].strip() == "[]"


def test_node_port_that_is_not_a_number_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["node", "add", "ct1", "--ae-title", "CT", "--host", "h", "--port", "x"])
    assert exited.value.code == 2
    assert "--port" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "extra"),
    [("ae_title", {"ae_title": "A" * 17}), ("services", {"services": ["echo", "print"]})],
)
def test_node_with_bad_fields_is_refused(tmp_path, capsys, field, extra):
    args = {"ae_title": "CT", "services": ["echo"]} | extra
    code, _, err = _cli(
        capsys, "node", "add", "ct1", "--ae-title", args["ae_title"], "--host", "h",
        "--port", "104", "--services", ",".join(args["services"]), "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert code == cli.EXIT_USAGE
    assert field in err


def test_removing_an_unknown_node_is_an_error(tmp_path, capsys):
    code, _, err = _cli(capsys, "node", "remove", "ghost", "--data-dir", str(tmp_path))
    assert code == cli.EXIT_USAGE
    assert "ghost" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--data-dir", "{d}", "config", "set", "port", "2104"],
        ["config", "--data-dir", "{d}", "set", "port", "2104"],
        ["config", "set", "--data-dir", "{d}", "port", "2104"],
        ["config", "set", "port", "2104", "--data-dir", "{d}"],
    ],
    ids=["before the command", "after the command", "after the subcommand", "at the end"],
)
def test_data_dir_works_before_and_after_the_subcommand(tmp_path, capsys, monkeypatch, argv):
    default = tmp_path / "default"
    chosen = tmp_path / "chosen"
    monkeypatch.setenv(DATA_DIR_ENV, str(default))
    code, _, err = _cli(capsys, *[arg.format(d=chosen) for arg in argv])
    assert code == 0, err
    assert ConfigStore(chosen).settings().port == 2104
    assert not (default / CONFIG_FILE).exists()


def test_data_dir_defaults_to_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "from-env"))
    assert _cli(capsys, "config", "set", "port", "2104")[0] == 0
    assert ConfigStore(tmp_path / "from-env").settings().port == 2104


# --- the daemon refuses a bad configuration -------------------------------------------------


def _serve(data_dir: Path):
    return run(
        appliance_cmd("serve", "--data-dir", str(data_dir), "--port", str(free_port())),
        timeout=60,
    )


@pytest.mark.parametrize(
    ("settings", "field", "expected"),
    [
        ({"max_pdu": 4095}, "max_pdu", "4096..131072"),
        ({"max_associations": "ten"}, "max_associations", "1..256"),
        ({"duplicate_policy": "newest"}, "duplicate_policy", "keep-first"),
        ({"transfer_syntaxes": ["1.2.840.10008.1.2.4.100"]}, "transfer_syntaxes", "not supported"),
        ({"max_pdu_size": 16384}, "max_pdu_size", "unknown setting"),
    ],
)
def test_daemon_refuses_to_start_with_a_hand_edited_bad_value(tmp_path, settings, field, expected):
    _write_config(tmp_path / "data", settings)
    result = _serve(tmp_path / "data")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert field in output and expected in output
    assert "refusing to start" in output
    assert "Traceback" not in output


def test_daemon_refuses_to_start_with_a_bad_node(tmp_path):
    node = {"name": "ct1", "ae_title": "CT", "host": "10.0.0.5", "port": 70000}
    _write_config(tmp_path / "data", {}, [node])
    result = _serve(tmp_path / "data")
    assert result.returncode != 0
    assert "port" in result.stderr and "1..65535" in result.stderr


@pytest.mark.parametrize(
    ("table", "doc", "expected"),
    [
        ("pixel_regions", {"modality": "US", "columns": 64, "rows": 48,
                           "regions": [[0, 0, 65, 1]]}, "does not fit a 64x48 image"),
        ("anon_profiles", {"name": "basic"}, "is built in"),
    ],
)  # fmt: skip
def test_daemon_refuses_to_start_with_a_bad_anonymization_table(tmp_path, table, doc, expected):
    _write_config(tmp_path / "data", {})
    path = tmp_path / "data" / CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), table: {"1": doc}}))
    result = _serve(tmp_path / "data")
    assert result.returncode != 0
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_daemon_refuses_to_start_with_a_file_that_is_not_json(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / CONFIG_FILE).write_text("{ this is not json")
    result = _serve(tmp_path / "data")
    assert result.returncode != 0
    assert "not valid JSON" in result.stderr


@pytest.mark.parametrize(
    ("option", "value", "field", "expected"),
    [("--port", "70000", "port", "1..65535"), ("--ae-title", "A" * 17, "ae_title", "1 to 16")],
)
def test_daemon_refuses_a_bad_command_line_override(tmp_path, option, value, field, expected):
    result = run(
        appliance_cmd("serve", "--data-dir", str(tmp_path / "data"), option, value), timeout=60
    )
    assert result.returncode != 0
    assert field in result.stderr and expected in result.stderr
