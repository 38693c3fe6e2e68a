"""Errors shared by the engine and its clients, in a module that imports nothing heavy.

The console and the control socket need them without loading pydicom (start-up time).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the field and what is allowed."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
