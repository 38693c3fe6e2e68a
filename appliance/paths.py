"""Where the appliance keeps its data folder."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "DICOM_APPLIANCE_DATA"


def default_data_dir() -> Path:
    """The data folder: $DICOM_APPLIANCE_DATA, else $XDG_DATA_HOME/dicom-appliance."""
    explicit = os.environ.get(DATA_DIR_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "dicom-appliance"


def ensure_data_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
