"""`dicom-appliance retry-policy list|set|clear` and what the job engine then uses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.config import ConfigStore, Node
from appliance.jobs import RetryPolicy


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ConfigStore]:
    config = ConfigStore(tmp_path / "data")
    config.add_node(Node(name="PACS", ae_title="PACS", host="127.0.0.1", port=104))
    yield config
    config.close()


def run(store: ConfigStore, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """The real `dicom-appliance` entry point, on the store's data folder."""
    try:
        code = main([*argv, "--data-dir", str(store.data_dir)])
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_defaults_are_dcm4chee_like_and_listed(store, capsys):
    code, out = run(store, capsys, "retry-policy", "list")
    assert code == 0
    assert "defaults (settings retry_*): 10 attempts, first delay 30 s, x2, at most 600 s" in out
    assert "no job kind or node has a policy of its own" in out
    assert store.retry_policy("send", "PACS") == RetryPolicy(10, 30.0, 2.0, 600.0)


def test_set_kind_and_node_policies_merge_and_apply_in_order(store, capsys):
    code, out = run(store, capsys, "retry-policy", "set", "--kind", "send", "--max-attempts", "5")
    assert code == 0, out
    assert "kind:send: --max-attempts=5" in out
    code, out = run(
        store, capsys, "retry-policy", "set", "--node", "PACS", "--first-delay", "5",
        "--max-delay", "60",
    )  # fmt: skip
    assert code == 0, out
    run(store, capsys, "retry-policy", "set", "--node", "PACS", "--multiplier", "3")

    # Defaults, then the kind's, then the node's.
    assert store.retry_policy("send", "PACS") == RetryPolicy(5, 5.0, 3.0, 60.0)
    assert store.retry_policy("retrieve", "PACS") == RetryPolicy(10, 5.0, 3.0, 60.0)
    assert store.retry_policy("send", "OTHER") == RetryPolicy(5, 30.0, 2.0, 600.0)

    code, out = run(store, capsys, "retry-policy", "list", "--json")
    listing = json.loads(out)
    assert listing["defaults"]["max_attempts"] == 10
    by_scope = {p["scope"]: p for p in listing["policies"]}
    assert by_scope["kind:send"]["values"] == {"max_attempts": 5}
    assert by_scope["node:PACS"]["values"] == {
        "first_delay": 5.0,
        "max_delay": 60.0,
        "multiplier": 3.0,
    }
    assert by_scope["node:PACS"]["effective"]["max_attempts"] == 10
    code, text = run(store, capsys, "retry-policy", "list")
    assert "kind:send  --max-attempts=5" in text
    assert "= 5 attempts, first delay 30 s, x2, at most 600 s" in text

    code, out = run(store, capsys, "retry-policy", "clear", "--node", "PACS")
    assert code == 0 and "node:PACS: cleared" in out
    assert store.retry_policy("retrieve", "PACS") == RetryPolicy(10, 30.0, 2.0, 600.0)


def test_bad_values_and_scopes_are_refused(store, capsys):
    for argv, expected in (
        (("set", "--kind", "send", "--max-attempts", "0"), "max_attempts"),
        (("set", "--kind", "send", "--multiplier", "50"), "multiplier"),
        (("set", "--node", "NOWHERE", "--max-attempts", "3"), "no node named"),
        (("clear", "--kind", "retrieve"), "no retry policy"),
        (("set", "--kind", "send"), "give at least one of"),
        (("set", "--kind", "teleport", "--max-attempts", "3"), "teleport"),
    ):
        code, out = run(store, capsys, "retry-policy", *argv)
        assert code == 2, (argv, out)
        assert expected in out, (argv, out)
    assert store.retry_policies() == {}
