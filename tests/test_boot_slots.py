"""A/B boot slots: the GRUB environment block (grub-editenv as the peer), GRUB's choice of slot,
and `dicom-appliance boot-slot`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from appliance import boot_slots
from appliance.boot_slots import (
    ENVBLK_SIZE,
    SIGNATURE,
    BootSlotError,
    EnvBlock,
    EnvBlockError,
    booted_slot,
    create_env,
    mark_bad,
    mark_good,
    next_boot_slot,
    read_env,
    set_extra_cmdline,
    status,
    switch_to,
    update_env,
)
from tests.peers import appliance_cmd, run

needs_grub_editenv = pytest.mark.skipif(
    shutil.which("grub-editenv") is None, reason="grub-editenv (grub-common) not installed"
)


def grub_editenv(path: Path, *args: str) -> str:
    result = run(["grub-editenv", str(path), *args], timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def cmdline(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cmdline"
    path.write_text(text + "\n")
    return path


def boot_slot_cli(env: Path, *args: str, **kwargs: object):
    return run(appliance_cmd("boot-slot", *args, "--env", str(env)), timeout=60, **kwargs)


def leftovers(folder: Path, keep: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p != keep and p.name != "cmdline")


# --- grub-editenv as the peer ---------------------------------------------------------------------

ODD_VALUES = {
    "backslash": "C:\\boot\\x",
    "newline": "first line\nsecond line",
    "trailing_backslash": "ends in \\",
    "equals_and_hash": "a=b # not a comment",
    "utf8": "Größe ✓",
    "empty": "",
}


@needs_grub_editenv
def test_reads_a_block_grub_editenv_wrote(tmp_path):
    env = tmp_path / "grubenv"
    grub_editenv(env, "create")
    grub_editenv(env, "set", *(f"{k}={v}" for k, v in ODD_VALUES.items()))
    assert read_env(env) == ODD_VALUES
    block = EnvBlock.parse(env.read_bytes())
    assert block.listing() == grub_editenv(env, "list")
    # The escapes are on disk as GRUB writes them.
    assert b"backslash=C:\\\\boot\\\\x\n" in env.read_bytes()
    assert b"newline=first line\\\nsecond line\n" in env.read_bytes()


@needs_grub_editenv
def test_a_block_we_write_is_the_block_grub_editenv_writes(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    create_env(ours, {"ORDER": "A B", "A_OK": "1"})
    update_env(ours, ODD_VALUES)
    update_env(ours, {"A_OK": "0", "A_TRY": "1"})
    grub_editenv(theirs, "create")
    grub_editenv(theirs, "set", "ORDER=A B", "A_OK=1")
    grub_editenv(theirs, "set", *(f"{k}={v}" for k, v in ODD_VALUES.items()))
    grub_editenv(theirs, "set", "A_OK=0", "A_TRY=1")
    assert ours.read_bytes() == theirs.read_bytes()
    assert len(ours.read_bytes()) == ENVBLK_SIZE
    assert grub_editenv(ours, "list") == grub_editenv(theirs, "list")
    assert grub_editenv(ours, "list") == EnvBlock.parse(ours.read_bytes()).listing()


@needs_grub_editenv
def test_what_grub_editenv_sets_after_us_is_read_and_what_we_leave_alone_survives(tmp_path):
    env = tmp_path / "grubenv"
    grub_editenv(env, "create")
    grub_editenv(env, "set", "saved_entry=slot-a", "field_note=a\\b")
    switch_to("B", env)
    # GRUB's save_env at the next boot (grub-editenv edits the block the way GRUB does).
    grub_editenv(env, "set", "B_TRY=1", "boot_count=3")
    assert read_env(env) == {
        "saved_entry": "slot-a",
        "field_note": "a\\b",
        "ORDER": "B A",
        "B_OK": "1",
        "B_TRY": "1",
        "boot_count": "3",
    }
    mark_good("B", env)
    set_extra_cmdline("systemd.log_level=debug", env)
    listed = grub_editenv(env, "list").splitlines()
    assert listed == [
        "saved_entry=slot-a",
        "field_note=a\\b",
        "ORDER=B A",
        "B_OK=1",
        "B_TRY=0",
        "boot_count=3",
        "extra_cmdline=systemd.log_level=debug",
    ]
    # grub-editenv's warning comment under the signature is kept too.
    assert env.read_bytes().startswith(SIGNATURE + boot_slots.CREATE_COMMENT)


@needs_grub_editenv
def test_a_block_filled_to_the_last_byte_is_read_and_written_like_grub_editenv(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    grub_editenv(theirs, "create")
    # Exactly what is left for "extra_cmdline=...\n" after the comment and A_OK=1.
    room = ENVBLK_SIZE - len(SIGNATURE + boot_slots.CREATE_COMMENT) - len("A_OK=1\n")
    text = "x" * (room - len("extra_cmdline=\n"))
    grub_editenv(theirs, "set", "A_OK=1", f"extra_cmdline={text}")
    assert not theirs.read_bytes().endswith(b"#")  # no padding left
    assert read_env(theirs) == {"A_OK": "1", "extra_cmdline": text}
    create_env(ours, {"A_OK": "1"})
    set_extra_cmdline(text, ours)
    assert ours.read_bytes() == theirs.read_bytes()
    # One byte more fits neither.
    refused = run(["grub-editenv", str(theirs), "set", f"extra_cmdline={text}y"])
    assert refused.returncode != 0
    before = ours.read_bytes()
    with pytest.raises(EnvBlockError, match="holds 1024"):
        set_extra_cmdline(text + "y", ours)
    assert ours.read_bytes() == before


@needs_grub_editenv
def test_a_variable_grub_editenv_lists_twice_gets_the_value_we_set(tmp_path):
    # GRUB changes only the first of two lines of one name while load_env takes the last: we
    # keep the first line and drop the other, so both read what was set.
    env = tmp_path / "grubenv"
    data = SIGNATURE + b"A_TRY=0\nB_OK=1\nA_TRY=1\n"
    env.write_bytes(data + b"#" * (ENVBLK_SIZE - len(data)))
    assert read_env(env)["A_TRY"] == "1"
    mark_good("A", env)
    assert grub_editenv(env, "list").splitlines() == ["A_TRY=0", "B_OK=1", "A_OK=1"]


# --- GRUB's choice of slot ------------------------------------------------------------------------


def grub_booted(env: Path, slot: str) -> None:
    """What grub.cfg's save_env does when it boots ``slot``: its boot is on trial."""
    update_env(env, {f"{slot}_TRY": "1"})


def test_a_fresh_block_boots_slot_a(tmp_path):
    env = tmp_path / "grubenv"
    create_env(env)
    assert read_env(env) == {}
    state = status(env, cmdline(tmp_path, "quiet"))
    assert state.next_boot == "A" and state.booted is None and state.booted_confirmed is None
    assert [(s.slot, s.ok, s.tried, s.eligible) for s in state.slots] == [
        ("A", "1", "0", True),
        ("B", "0", "0", False),
    ]


def test_switch_boots_the_slot_on_trial_and_an_unconfirmed_boot_rolls_back(tmp_path):
    env = tmp_path / "grubenv"
    create_env(env)
    grub_booted(env, "A")
    mark_good("A", env)
    assert next_boot_slot(read_env(env)) == "A"

    switch_to("B", env)
    assert read_env(env)["ORDER"] == "B A"
    assert next_boot_slot(read_env(env)) == "B"
    grub_booted(env, "B")
    on_b = status(env, cmdline(tmp_path, "root=/dev/sda5 rauc.slot=B ro"))
    assert on_b.booted == "B" and on_b.booted_confirmed is False
    assert on_b.slots[1].describe() == "on trial"
    # B never got confirmed (the daemon did not come up): the next boot is A again.
    assert next_boot_slot(read_env(env)) == "A"
    grub_booted(env, "A")
    mark_good("A", env)
    assert next_boot_slot(read_env(env)) == "A"  # and it stays on A
    on_a = status(env, cmdline(tmp_path, "rauc.slot=A"))
    assert on_a.slots[1].describe() == "not confirmed"


def test_a_confirmed_switch_stays_on_the_new_slot(tmp_path):
    env = tmp_path / "grubenv"
    create_env(env)
    switch_to("B", env)
    for _ in range(3):
        grub_booted(env, "B")
        mark_good("B", env)
        assert next_boot_slot(read_env(env)) == "B"
    state = status(env, cmdline(tmp_path, "rauc.slot=B"))
    assert state.booted_confirmed is True and state.next_boot == "B"


def test_the_selection_rule_at_its_edges():
    # Missing variables take grub.cfg's defaults.
    assert next_boot_slot({}) == "A"
    assert next_boot_slot({"ORDER": "B A"}) == "A"  # B_OK defaults to 0
    assert next_boot_slot({"ORDER": "B A", "B_OK": "1"}) == "B"
    # Every slot tried and none confirmed: slot A rather than no boot at all.
    assert next_boot_slot({"A_TRY": "1", "B_OK": "1", "B_TRY": "1"}) == "A"
    assert next_boot_slot({"A_OK": "0", "B_OK": "0"}) == "A"
    # GRUB compares strings: "true" or " 1" is not 1.
    assert next_boot_slot({"ORDER": "B A", "B_OK": "true"}) == "A"
    assert next_boot_slot({"ORDER": "B A", "A_OK": "0", "B_OK": "1", "B_TRY": "00"}) == "A"
    # Words in ORDER that are not slots are passed over; an empty ORDER falls back to A.
    assert next_boot_slot({"ORDER": "C  b B", "B_OK": "1"}) == "B"
    assert next_boot_slot({"ORDER": "", "B_OK": "1"}) == "A"
    assert next_boot_slot({"ORDER": "B\tA", "B_OK": "1"}) == "B"


def test_mark_bad_keeps_grub_off_the_slot(tmp_path):
    env = tmp_path / "grubenv"
    create_env(env)
    switch_to("B", env)
    mark_bad("B", env)
    assert read_env(env)["B_OK"] == "0"
    assert next_boot_slot(read_env(env)) == "A"
    with pytest.raises(BootSlotError, match="not a slot"):
        mark_bad("C", env)


def test_an_unchanged_block_is_not_rewritten(tmp_path):
    env = tmp_path / "grubenv"
    create_env(env)
    mark_good("A", env)
    stamp = env.stat().st_ino
    mark_good("A", env)  # already confirmed: nothing to write
    assert env.stat().st_ino == stamp


# --- the kernel command line ----------------------------------------------------------------------


def test_booted_slot_from_the_kernel_command_line(tmp_path):
    assert booted_slot(cmdline(tmp_path, "BOOT_IMAGE=/vmlinuz rauc.slot=B ro quiet")) == "B"
    assert booted_slot(cmdline(tmp_path, 'rauc.slot="A" console=ttyS0')) == "A"
    assert booted_slot(cmdline(tmp_path, "ro quiet")) is None
    assert booted_slot(cmdline(tmp_path, "rauc.slotx=A myrauc.slot=B")) is None
    # Inside a quoted value it is not a parameter of its own.
    assert booted_slot(cmdline(tmp_path, 'note="x rauc.slot=B" ro')) is None
    assert booted_slot(cmdline(tmp_path, "rauc.slot=B rauc.slot=B")) == "B"
    with pytest.raises(BootSlotError, match="two slots"):
        booted_slot(cmdline(tmp_path, "rauc.slot=A rauc.slot=B"))
    with pytest.raises(BootSlotError, match="not a slot"):
        booted_slot(cmdline(tmp_path, "rauc.slot=system0"))
    with pytest.raises(BootSlotError, match="cannot read"):
        booted_slot(tmp_path / "missing")


# --- blocks that are not blocks -------------------------------------------------------------------


def padded(body: bytes, size: int = ENVBLK_SIZE) -> bytes:
    return body + b"#" * (size - len(body))


BROKEN_BLOCKS = {
    "empty": (b"", "0 bytes, not 1024"),
    "short": (padded(SIGNATURE + b"A_OK=1\n", 1023), "1023 bytes, not 1024"),
    "long": (padded(SIGNATURE + b"A_OK=1\n", 1025), "1025 bytes, not 1024"),
    "no signature": (padded(b"# GRUB Environment\nA_OK=1\n"), "does not start with"),
    "zeros": (b"\0" * ENVBLK_SIZE, "does not start with"),
    "unterminated value": (
        (SIGNATURE + b"A_OK=1\nB_OK=").ljust(ENVBLK_SIZE, b"1"),
        "has no line end",
    ),
    "not a variable": (padded(SIGNATURE + b"A_OK=1\ngarbage\nB_OK=1\n"), "no NAME=value"),
    "no equals": (padded(SIGNATURE + b"A_OK=1\ngarbage"), "neither a variable"),
    "junk in padding": (padded(SIGNATURE + b"A_OK=1\n")[:-3] + b"x##", "not in '#' padding"),
}


@pytest.mark.parametrize("name", list(BROKEN_BLOCKS))
def test_a_file_that_is_not_a_block_is_an_error_and_is_left_alone(tmp_path, name):
    data, message = BROKEN_BLOCKS[name]
    env = tmp_path / "grubenv"
    env.write_bytes(data)
    with pytest.raises(EnvBlockError, match=message) as raised:
        read_env(env)
    assert str(env) in str(raised.value)
    for change in (
        lambda: mark_good("A", env),
        lambda: switch_to("B", env),
        lambda: set_extra_cmdline("quiet", env),
    ):
        with pytest.raises(EnvBlockError):
            change()
    assert env.read_bytes() == data
    assert leftovers(tmp_path, env) == []


@needs_grub_editenv
def test_blocks_grub_editenv_rejects_are_rejected_here_too(tmp_path):
    env = tmp_path / "grubenv"
    for name in ("no signature", "zeros", "unterminated value"):
        data, _ = BROKEN_BLOCKS[name]
        env.write_bytes(data)
        assert run(["grub-editenv", str(env), "set", "A_OK=1"]).returncode != 0, name
        with pytest.raises(EnvBlockError):
            update_env(env, {"A_OK": "1"})


def test_a_missing_block_is_an_error_not_a_new_file(tmp_path):
    env = tmp_path / "grubenv"
    with pytest.raises(BootSlotError, match="no GRUB environment block"):
        mark_good("A", env)
    assert not env.exists()
    create_env(env)
    with pytest.raises(BootSlotError, match="exists already"):
        create_env(env, {"A_OK": "0"})


def test_an_extra_cmdline_that_does_not_fit_is_refused_and_the_block_unchanged(tmp_path):
    env = tmp_path / "grubenv"
    create_env(env, {"ORDER": "A B", "A_OK": "1", "A_TRY": "0"})
    set_extra_cmdline("console=ttyS0,115200", env)
    before = env.read_bytes()
    with pytest.raises(EnvBlockError, match=r"need \d+ bytes; a GRUB environment block holds"):
        set_extra_cmdline("x" * 1000, env)
    # Backslashes take two bytes each in the block.
    with pytest.raises(EnvBlockError):
        set_extra_cmdline("\\" * 450, env)
    assert env.read_bytes() == before
    assert leftovers(tmp_path, env) == []
    assert read_env(env)["extra_cmdline"] == "console=ttyS0,115200"


def test_an_extra_cmdline_must_be_one_line_and_must_not_name_the_slot(tmp_path):
    env = tmp_path / "grubenv"
    create_env(env)
    before = env.read_bytes()
    with pytest.raises(BootSlotError, match="one line"):
        set_extra_cmdline("quiet\ninit=/bin/sh", env)
    with pytest.raises(BootSlotError, match="GRUB's to set"):
        set_extra_cmdline("quiet rauc.slot=B", env)
    assert env.read_bytes() == before
    set_extra_cmdline("", env)
    assert read_env(env) == {"extra_cmdline": ""}


# --- the command ----------------------------------------------------------------------------------


def test_cli_mark_good_confirms_the_booted_slot(tmp_path):
    env = tmp_path / "grubenv"
    create_env(env)
    assert boot_slot_cli(env, "switch", "b").returncode == 0
    grub_booted(env, "B")
    line = cmdline(tmp_path, "BOOT_IMAGE=/vmlinuz root=/dev/disk/by-partlabel/root-b rauc.slot=B")
    result = boot_slot_cli(env, "mark-good", "--cmdline", str(line))
    assert result.returncode == 0, result.stderr
    assert "slot B confirmed" in result.stdout and "next boot: B" in result.stdout
    result = boot_slot_cli(env, "status", "--cmdline", str(line))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "A          confirmed      (OK=1 TRY=0)",
        "B  booted  confirmed      (OK=1 TRY=0)",
        "order: B A",
        "next boot: B",
    ]
    answer = json.loads(boot_slot_cli(env, "status", "--json", "--cmdline", str(line)).stdout)
    assert answer["booted"] == "B" and answer["booted_confirmed"] is True
    assert answer["next_boot"] == "B" and answer["order"] == ["B", "A"]
    assert answer["variables"] == {"ORDER": "B A", "B_OK": "1", "B_TRY": "0"}


def test_cli_mark_good_without_rauc_slot_fails_clearly_and_changes_nothing(tmp_path):
    env = tmp_path / "grubenv"
    create_env(env)
    grub_booted(env, "A")
    before = env.read_bytes()
    result = boot_slot_cli(env, "mark-good", "--cmdline", str(cmdline(tmp_path, "ro quiet")))
    assert result.returncode == 1
    assert result.stderr.startswith("error: no rauc.slot= on the kernel command line")
    assert "Traceback" not in result.stderr
    assert env.read_bytes() == before
    # A slot named on the command line needs no rauc.slot=.
    result = boot_slot_cli(env, "mark-good", "A", "--cmdline", str(tmp_path / "cmdline"))
    assert result.returncode == 0, result.stderr
    assert read_env(env)["A_TRY"] == "0"


def test_cli_errors_are_one_line_without_a_traceback(tmp_path):
    env = tmp_path / "grubenv"
    env.write_bytes(padded(b"# not GRUB\n"))
    before = env.read_bytes()
    for args in (("status",), ("mark-good", "A"), ("switch", "B"), ("extra-cmdline", "quiet")):
        result = boot_slot_cli(env, *args)
        assert result.returncode == 1, args
        assert result.stderr.startswith(f"error: {env} is not a GRUB environment block"), args
        assert "Traceback" not in result.stderr
    assert env.read_bytes() == before
    missing = boot_slot_cli(tmp_path / "nothing", "status")
    assert missing.returncode == 1 and "no GRUB environment block" in missing.stderr
    usage = boot_slot_cli(env, "switch", "C")
    assert usage.returncode == 2 and "not a slot" in usage.stderr


def test_cli_takes_the_block_from_the_environment(tmp_path):
    env = tmp_path / "grubenv"
    create_env(env)
    result = run(
        appliance_cmd("boot-slot", "extra-cmdline", "systemd.unit=rescue.target"),
        env={**os.environ, boot_slots.ENV_PATH_VARIABLE: str(env)},
    )
    assert result.returncode == 0, result.stderr
    assert read_env(env) == {"extra_cmdline": "systemd.unit=rescue.target"}
    # --env before the action works as well as after it.
    result = run(appliance_cmd("boot-slot", "--env", str(env), "mark-bad", "B"))
    assert result.returncode == 0, result.stderr
    assert read_env(env)["B_OK"] == "0"


def test_rauc_custom_backend_operations(tmp_path):
    # RAUC calls its custom backend with these operations during `rauc install` and
    # `rauc status mark-good|mark-bad`; it reads the answers from stdout.
    env = tmp_path / "grubenv"
    boot_slots.create_env(
        env, {"ORDER": "A B", "A_OK": "1", "A_TRY": "0", "B_OK": "0", "B_TRY": "0"}
    )

    def backend(*args: str):
        return run(appliance_cmd("boot-slot", "--env", str(env), "rauc-backend", *args), timeout=60)

    assert backend("get-primary").stdout.strip() == "A"
    assert backend("get-state", "B").stdout.strip() == "bad"
    # an install: the target is marked bad while it is written, then made primary
    assert backend("set-state", "B", "bad").returncode == 0
    assert backend("set-primary", "B").returncode == 0
    assert backend("get-primary").stdout.strip() == "B"
    assert backend("get-state", "B").stdout.strip() == "good"
    assert boot_slots.read_env(env)["ORDER"] == "B A"
    # GRUB puts B on trial; RAUC's mark-good ends the trial
    boot_slots.update_env(env, {"B_TRY": "1"})
    assert backend("get-primary").stdout.strip() == "A", "an unconfirmed B is passed over"
    assert backend("set-state", "b", "good").returncode == 0
    assert boot_slots.read_env(env)["B_TRY"] == "0"
    assert backend("get-primary").stdout.strip() == "B"
    for wrong in (("set-state", "B", "maybe"), ("get-state", "C"), ("set-primary",)):
        result = backend(*wrong)
        assert result.returncode != 0 and "error:" in result.stderr, wrong
    assert boot_slots.read_env(env)["ORDER"] == "B A", "refusals change nothing"
