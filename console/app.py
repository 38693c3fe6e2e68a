"""`dicom-console`: the operator console.

The console is a thin client of the daemon. Until the daemon's control API exists it shows only
where the appliance keeps its data; the job, node and archive screens are built on that API.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from textual.app import App, ComposeResult
from textual.widgets import Footer, Header, Static

from appliance.paths import default_data_dir


class ConsoleApp(App[None]):
    TITLE = "DICOM Appliance"
    SUB_TITLE = "operator console"
    BINDINGS = [("q", "quit", "Quit")]

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        self.data_dir = data_dir

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(
            f"Data folder: {self.data_dir}\n\n"
            "The DICOM services run in the daemon (dicom-appliance serve); quitting this "
            "console never stops them.\n"
            "Administration today: dicom-appliance config|node|send --help",
            id="welcome",
        )
        yield Footer()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicom-console", description="DICOM appliance console")
    parser.add_argument("--data-dir", type=Path, default=None, help="the daemon's data folder")
    args = parser.parse_args(argv)
    ConsoleApp(args.data_dir or default_data_dir()).run()
    return 0
