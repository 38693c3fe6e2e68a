"""Printer configuration: every field validated on creation and on load, stored by name."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from appliance.config import CONFIG_FILE, ConfigError, ConfigStore, Printer

BASE: dict[str, Any] = {"name": "imager-1", "ae_title": "DRYVIEW", "host": "10.0.0.5", "port": 104}

# (field, bad value, text the error must contain besides "printer.<field>")
BAD_VALUES: list[tuple[str, object, str]] = [
    ("name", "has space", "not a valid name"),
    ("name", "", "not a valid name"),
    ("ae_title", "A" * 17, "1 to 16"),
    ("ae_title", "BACK\\SLASH", "backslash"),
    ("host", "no spaces", "host name"),
    ("port", 0, "1..65535"),
    ("port", "lpr", "1..65535"),
    ("color", "sometimes", "true or false"),
    ("grayscale", 2, "true or false"),
    ("film_sizes", ["14inx17in", "14INX17IN"], "twice"),
    ("film_sizes", ["14 X 17 INCHES FILM"], "code string"),
    ("medium_types", ["CLEAR-FILM"], "code string"),
    ("film_destinations", "MAGAZINE,MAGAZINE", "twice"),
    ("magnification_types", ["SINC"], "REPLICATE, BILINEAR, CUBIC, NONE"),
    ("display_formats", [], "at least one"),
    ("display_formats", ["STANDARD\\0,2"], "image display format"),
    ("display_formats", ["STANDARD\\2"], "image display format"),
    ("display_formats", ["STANDARD\\100,1"], "image display format"),
    ("display_formats", ["SLIDE"], "image display format"),
    ("display_formats", ["ROW\\"], "image display format"),
    ("display_formats", ["ROW\\2,,1"], "image display format"),
    ("display_formats", ["COL\\2,0"], "image display format"),
    ("display_formats", [3], "image display format"),
    ("display_formats", ["STANDARD\\1,1", "standard\\1,1"], "twice"),
    ("min_density", -1, "0..1000"),
    ("max_density", 1001, "0..1000"),
    ("max_density", "dark", "0..1000"),
    ("border_density", "GREY", "BLACK, WHITE or a density"),
    ("border_density", 1500, "0..1000"),
    ("empty_image_density", "-5", "BLACK, WHITE or a density"),
    ("trim", "cut", "true or false"),
    ("bits", 10, "8 or 12"),
    ("bits", 16, "8..12"),
    ("bits", True, "8..12"),
    ("presentation_lut", "lin od", "true or false"),
    ("annotation", "text", "true or false"),
    ("send_only_set_attributes", "always", "true or false"),
]

# (field, given value, normalised value)
GOOD_VALUES: list[tuple[str, object, object]] = [
    ("ae_title", " DRYVIEW ", "DRYVIEW"),
    ("port", "11112", 11112),
    ("color", "yes", True),
    ("film_sizes", "14INX17IN, 8inx10in", ["14INX17IN", "8INX10IN"]),
    ("medium_types", ["BLUE FILM", "paper"], ["BLUE FILM", "PAPER"]),
    ("film_destinations", "BIN_1", ["BIN_1"]),
    ("magnification_types", ["cubic", "NONE"], ["CUBIC", "NONE"]),
    (
        "display_formats",
        "STANDARD\\1,1; standard\\2,3 ROW\\2,1 COL\\1,2,3",
        ["STANDARD\\1,1", "STANDARD\\2,3", "ROW\\2,1", "COL\\1,2,3"],
    ),
    ("display_formats", ["STANDARD\\ 4,5"], ["STANDARD\\4,5"]),
    ("min_density", "20", 20),
    ("max_density", 320, 320),
    ("border_density", "black", "BLACK"),
    ("border_density", 150, "150"),
    ("empty_image_density", "WHITE", "WHITE"),
    ("empty_image_density", "", None),
    ("trim", "no", False),
    ("trim", None, None),
    ("bits", "12", 12),
    ("presentation_lut", True, True),
    ("annotation", "on", True),
    ("send_only_set_attributes", "false", False),
]


def test_defaults_send_nothing_unset() -> None:
    printer = Printer(**BASE)
    assert printer.grayscale and not printer.color
    assert printer.display_formats[0] == "STANDARD\\1,1"
    assert "STANDARD\\2,2" in printer.display_formats
    assert printer.film_sizes == printer.medium_types == printer.film_destinations == []
    assert printer.magnification_types == []
    assert printer.min_density is printer.max_density is None
    assert printer.border_density is printer.empty_image_density is printer.trim is None
    assert printer.bits == 8
    assert not printer.presentation_lut and not printer.annotation
    assert printer.send_only_set_attributes


@pytest.mark.parametrize(("field", "bad", "expected"), BAD_VALUES)
def test_bad_value_is_refused(field: str, bad: object, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Printer(**{**BASE, field: bad})
    assert caught.value.field == f"printer.{field}"
    assert expected in str(caught.value)


@pytest.mark.parametrize(("field", "bad", "expected"), BAD_VALUES)
def test_bad_value_is_refused_on_load(
    tmp_path: Path, field: str, bad: object, expected: str
) -> None:
    stored = {**asdict(Printer(**BASE)), field: bad}
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"printers": {"1": stored}}))
    with pytest.raises(ConfigError) as caught:
        ConfigStore(tmp_path)
    assert caught.value.field == f"printer.{field}"
    assert expected in str(caught.value)


@pytest.mark.parametrize(("field", "good", "normalised"), GOOD_VALUES)
def test_good_value_is_normalised_stored_and_reloaded(
    tmp_path: Path, field: str, good: object, normalised: object
) -> None:
    printer = Printer(**{**BASE, field: good})
    assert getattr(printer, field) == normalised
    store = ConfigStore(tmp_path)
    store.add_printer(printer)
    store.close()
    reloaded = ConfigStore(tmp_path)
    assert getattr(reloaded.printer("imager-1"), field) == normalised
    assert reloaded.printer("imager-1") == printer
    reloaded.close()


def test_a_printer_prints_grayscale_or_color() -> None:
    assert Printer(**BASE, color=True, grayscale=False).color
    with pytest.raises(ConfigError, match="printer.grayscale: a printer prints"):
        Printer(**BASE, color=False, grayscale=False)


def test_min_density_must_be_below_max_density() -> None:
    assert Printer(**BASE, min_density=20, max_density=320).max_density == 320
    with pytest.raises(ConfigError, match="printer.min_density: 320 is not below max_density"):
        Printer(**BASE, min_density=320, max_density=320)


@pytest.mark.parametrize(
    ("doc", "field", "expected"),
    [
        ({**BASE, "colour": True}, "printer.colour", "unknown printer field"),
        ({k: v for k, v in BASE.items() if k != "host"}, "printer.host", "is required"),
        ({k: v for k, v in BASE.items() if k != "port"}, "printer.port", "is required"),
    ],
)
def test_unknown_or_missing_fields_are_refused_on_load(
    tmp_path: Path, doc: dict[str, Any], field: str, expected: str
) -> None:
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"printers": {"1": doc}}))
    with pytest.raises(ConfigError) as caught:
        ConfigStore(tmp_path)
    assert caught.value.field == field
    assert expected in str(caught.value)


def test_add_list_replace_remove(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path)
    assert store.printers() == []
    store.add_printer(Printer(**{**BASE, "name": "zeta", "port": 105}))
    store.add_printer(Printer(**BASE, display_formats=["STANDARD\\2,2"], bits=12))
    assert [p.name for p in store.printers()] == ["imager-1", "zeta"]

    with pytest.raises(ConfigError, match="printer.name: a printer named 'zeta' already exists"):
        store.add_printer(Printer(**{**BASE, "name": "zeta"}))
    assert store.printer("zeta").port == 105

    store.add_printer(Printer(**{**BASE, "name": "zeta", "color": True}), replace=True)
    assert store.printer("zeta").port == 104 and store.printer("zeta").color
    assert len(store.printers()) == 2

    store.remove_printer("zeta")
    assert [p.name for p in store.printers()] == ["imager-1"]
    with pytest.raises(ConfigError, match="printer: no printer named 'zeta'"):
        store.remove_printer("zeta")
    with pytest.raises(ConfigError, match="printer: no printer named 'zeta'"):
        store.printer("zeta")
    store.close()

    reloaded = ConfigStore(tmp_path)
    only = reloaded.printer("imager-1")
    assert (only.display_formats, only.bits) == (["STANDARD\\2,2"], 12)
    reloaded.close()


def test_printers_live_beside_nodes_and_settings(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path)
    store.set("ae_title", "APPL")
    store.add_printer(Printer(**BASE))
    store.close()
    data = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert list(data["printers"].values())[0]["ae_title"] == "DRYVIEW"
    reloaded = ConfigStore(tmp_path)
    assert reloaded.settings().ae_title == "APPL"
    assert reloaded.nodes() == []
    reloaded.close()
