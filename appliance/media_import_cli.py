"""`dicom-appliance media import` (being built)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from appliance.config import ConfigStore


def add_parser(cmds: Any, common: argparse.ArgumentParser) -> None:
    cmds.add_parser("import", parents=[common], help="(being built)")


def run(args: argparse.Namespace, store: ConfigStore) -> int:
    print("media import is not available yet", file=sys.stderr)
    return 2
