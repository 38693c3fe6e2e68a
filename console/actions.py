"""Actions on a selected study that other parts of the appliance add to the Studies screen.

Print, burn and anonymize have their places (keys and buttons) from the start; until the issue
that builds one registers it, choosing it says it is not available yet::

    register_study_action("print", "Print", open_print_dialog)

A callback gets the screen and the chosen studies (archive.studies rows) and runs on the UI
thread: it must hand daemon calls to ``screen.call_in_background``.

Print (the film composer), burn (the burn dialog) and anonymize (the anonymize dialog) are
built in. A registered action takes the place of a built-in one until it is unregistered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from console.base import ConsoleScreen

StudyCallback = Callable[["ConsoleScreen", list[dict[str, Any]]], None]

# The planned actions, in the order the screen shows them: (key, label, keyboard key).
PLANNED: tuple[tuple[str, str, str], ...] = (
    ("print", "Print", "p"),
    ("burn", "Burn", "b"),
    ("anonymize", "Anonymize", "a"),
)


@dataclass(frozen=True)
class StudyAction:
    key: str
    label: str
    callback: StudyCallback | None = None

    @property
    def available(self) -> bool:
        return self.callback is not None

    def run(self, screen: ConsoleScreen, studies: list[dict[str, Any]]) -> str | None:
        """Runs the action; returns why it did not run (for the operator), or None."""
        if self.callback is None:
            return f"{self.label}: not available yet"
        if not studies:
            return f"{self.label}: select a study first"
        self.callback(screen, studies)
        return None


_registry: dict[str, StudyAction] = {}


def _open_film_composer(screen: ConsoleScreen, studies: list[dict[str, Any]]) -> None:
    # Imported on use: the Studies screen loads this module, the composer is needed later.
    from console.screens.film_composer import open_film_composer

    open_film_composer(screen, studies)


def _open_burn_dialog(screen: ConsoleScreen, studies: list[dict[str, Any]]) -> None:
    from console.screens.burn_dialog import open_burn_dialog

    open_burn_dialog(screen, studies)


def _open_anonymize_dialog(screen: ConsoleScreen, studies: list[dict[str, Any]]) -> None:
    from console.screens.anonymize_dialog import open_anonymize_dialog

    open_anonymize_dialog(screen, studies)


_BUILT_IN: dict[str, StudyAction] = {
    "print": StudyAction("print", "Print", _open_film_composer),
    "burn": StudyAction("burn", "Burn", _open_burn_dialog),
    "anonymize": StudyAction("anonymize", "Anonymize", _open_anonymize_dialog),
}


def register_study_action(key: str, label: str, callback: StudyCallback) -> None:
    """Make ``key`` (e.g. "print") run ``callback`` on the selected studies."""
    _registry[key] = StudyAction(key, label, callback)


def unregister_study_action(key: str) -> None:
    _registry.pop(key, None)


def study_action(key: str) -> StudyAction:
    """The registered action, else the built-in one, else the planned one that is not
    available yet."""
    if key in _registry:
        return _registry[key]
    if key in _BUILT_IN:
        return _BUILT_IN[key]
    for planned, label, _ in PLANNED:
        if planned == key:
            return StudyAction(planned, label)
    raise KeyError(key)


def study_actions() -> list[StudyAction]:
    """The planned actions (registered or not), then any other registered one."""
    planned = [study_action(key) for key, _, _ in PLANNED]
    others = [action for key, action in _registry.items() if key not in {a.key for a in planned}]
    return planned + others
