"""Burn studies on a disc: the Studies screen's burn action.

The operator picks a drive from the ones the daemon watches (a blank disc first) or types a
device, or ``stdio:/path/disc.iso`` to write a disc image file instead; the capacity in MB
(blank: what the disc says, 700 for a disc image) decides where the studies split over several
discs; the label file (patient, birth date, study dates, disc n of N) is on unless unticked.
The dialog checks what it can (one patient, a drive that is not holding a written disc, a
capacity that is a number) under the field it is about, then ``media.burn`` queues the job and
the Studies screen says its id. The daemon checks again: its refusal shows here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from console.base import ConsoleScreen, describe_error
from console.screens._forms import (
    FORM_CSS,
    clear_field_errors,
    error_field,
    field_row,
    set_message,
    show_field_error,
)
from console.screens.film_composer import FormError, source_text
from console.screens.media import BLANK_STATES, DATA_STATES, drive_state, drive_text, size_text

MB = 1000**2  # discs are sold in decimal units: a 700 MB CD holds 700 * 10^6 bytes
MAX_CAPACITY_MB = 128_000  # the largest Blu-ray; anything above is a typing slip


@dataclass(frozen=True)
class BurnValues:
    drive: str
    capacity: str = ""
    label: bool = True


def patients_of(studies: list[dict[str, Any]]) -> list[str]:
    """The distinct patients of the studies (ID, else name), in the order they come."""
    seen: list[str] = []
    for study in studies:
        who = str(study.get("patient_id") or study.get("patient_name") or "")
        if who not in seen:
            seen.append(who)
    return seen


def build_burn_request(
    values: BurnValues, studies: list[dict[str, Any]], drives: list[dict[str, Any]]
) -> dict[str, Any]:
    """The media.burn arguments; FormError (with the field it is about) otherwise."""
    patients = patients_of(studies)
    if not studies:
        raise FormError("studies", "no study chosen")
    if len(patients) > 1:
        raise FormError(
            "studies",
            f"the studies are of {len(patients)} patients ({', '.join(patients[:3])}): "
            "a disc holds one patient's studies",
        )
    drive = values.drive.strip()
    if not drive:
        raise FormError("drive", "choose a drive, or type stdio:/path/disc.iso for an image file")
    if drive.startswith("stdio:"):
        if not drive.removeprefix("stdio:").startswith("/"):
            raise FormError("drive", "a disc image needs an absolute path: stdio:/path/disc.iso")
    elif not drive.startswith("/dev/"):
        raise FormError("drive", "a device (/dev/sr0) or stdio:/path/disc.iso")
    known = next((d for d in drives if d.get("device") == drive), None)
    if known is not None:
        state = known.get("state")
        if state in DATA_STATES:
            label = f' "{known["label"]}"' if known.get("label") else ""
            raise FormError(
                "drive", f"{drive} holds a written disc{label}: insert a blank CD or DVD"
            )
        if state == "gone":
            raise FormError("drive", f"{drive} was unplugged")
    request: dict[str, Any] = {"drive": drive, "study_uids": [str(s["study_uid"]) for s in studies]}
    capacity = values.capacity.strip().upper().removesuffix("MB").strip()
    if capacity:
        if not capacity.isdigit() or not 1 <= int(capacity) <= MAX_CAPACITY_MB:
            raise FormError(
                "capacity", f"MB per disc: a whole number from 1 to {MAX_CAPACITY_MB} (CD 700)"
            )
        request["capacity_bytes"] = int(capacity) * MB
    request["label"] = values.label
    return request


def drive_note(drive: dict[str, Any] | None, target: str) -> str:
    """What the chosen drive means for the burn, for the line under the field."""
    if target.startswith("stdio:"):
        return "a disc image file: disc 2 and on are written beside it (disc-2.iso, ...)"
    if drive is None:
        return ""
    state = drive.get("state")
    if state in BLANK_STATES:
        size = size_text(drive.get("capacity_bytes"))
        return f"blank {drive.get('media') or 'disc'}{f', {size} free' if size else ''}"
    if state == "empty":
        return "no disc in the drive: insert a blank one"
    if state == "busy":
        return "the drive is busy (another burn holds it)"
    return drive_state(drive)


# How the daemon's refusals name the dialog's fields.
_REFUSAL_FIELDS = {
    "drive": "drive",
    "target": "drive",
    "capacity_bytes": "capacity",
    "capacity": "capacity",
    "study_uids": "studies",
}


class BurnDialog(ConsoleScreen, ModalScreen[dict[str, Any] | None]):
    """Choose a drive and the options; dismisses with the queued burn job, or None."""

    DEFAULT_CSS = (
        FORM_CSS
        + """
    BurnDialog { align: center middle; background: $background 60%; }
    BurnDialog #burn {
        width: 84; max-width: 100%; height: auto; max-height: 100%;
        border: round $primary; background: $surface; padding: 0 1;
    }
    BurnDialog #burn-title { text-style: bold; height: auto; }
    BurnDialog #burn-drives { height: auto; max-height: 6; margin: 1 0 0 0; }
    BurnDialog .field-label { width: 14; }
    BurnDialog .field-error { padding-left: 14; }
    BurnDialog .field-note { color: $text-muted; padding-left: 14; height: auto; }
    BurnDialog #burn-label { margin-left: 14; border: none; height: 1; padding: 0; }
    BurnDialog .buttons { height: 1; margin-top: 1; }
    BurnDialog .buttons Button { width: auto; min-width: 8; margin-right: 1; }
    """
    )
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "burn", "Burn", priority=True),
    ]
    HINT = "up/down enter: choose a drive   ctrl+s: burn   escape: cancel"

    def __init__(self, studies: list[dict[str, Any]]) -> None:
        super().__init__()
        self.studies = studies
        self.drives: list[dict[str, Any]] = []
        self.loaded = False
        self.busy = False

    def compose(self) -> ComposeResult:
        with Vertical(id="burn"):
            yield Static(f"Burn {source_text(self.studies)}", id="burn-title")
            yield Static("", id="burn-studies-error", classes="field-error")
            yield OptionList(id="burn-drives")
            yield from field_row(
                "Drive",
                Input(placeholder="/dev/sr0 or stdio:/path/disc.iso", id="burn-drive",
                      compact=True),
                error_id="burn-drive-error",
            )  # fmt: skip
            yield Static("", id="burn-drive-note", classes="field-note")
            yield from field_row(
                "Capacity MB",
                Input(placeholder="from the disc (CD 700, DVD 4700)", id="burn-capacity",
                      compact=True),
                error_id="burn-capacity-error",
            )  # fmt: skip
            yield Checkbox(
                "Label file: patient, birth date, study dates, disc n of N",
                True,
                id="burn-label",
                compact=True,
            )
            yield Static("Looking for drives...", id="burn-message", classes="form-message")
            with Horizontal(classes="buttons"):
                yield Button("Burn", id="burn-go", variant="primary", compact=True)
                yield Button("Cancel", id="burn-cancel", compact=True)
            yield Label(self.HINT, classes="modal-hint")

    def on_mount(self) -> None:
        for field in self.query(Input):
            field.cursor_blink = False
        patients = patients_of(self.studies)
        if len(patients) > 1:
            show_field_error(
                self,
                "burn-studies-error",
                f"{len(patients)} patients: a disc holds one patient's studies",
            )
        self.call_in_background(
            self.client.drives, self.show_drives, group="burn-drives", on_error=self.no_drives
        )

    def show_drives(self, drives: list[dict[str, Any]]) -> None:
        self.loaded = True
        # Blank discs first: that is where a burn goes.
        self.drives = sorted(drives, key=lambda d: d.get("state") not in BLANK_STATES)
        options = self.query_one("#burn-drives", OptionList)
        options.clear_options()
        options.add_options(
            [
                # A written disc or an unplugged drive cannot take a burn: shown, not chosen.
                Option(
                    drive_text(d),
                    id=str(d.get("device")),
                    disabled=d.get("state") in (*DATA_STATES, "gone"),
                )
                for d in self.drives
            ]
        )
        field = self.query_one("#burn-drive", Input)
        message = self.query_one("#burn-message", Static)
        if not self.drives:
            options.display = False
            set_message(
                message,
                "No optical drive found: type stdio:/path/disc.iso to write a disc image file.",
            )
            field.focus()
            return
        set_message(message, "")
        if not field.value:
            field.value = str(self.drives[0].get("device"))
        options.highlighted = 0
        options.focus()
        self.show_note()

    def no_drives(self, error: BaseException) -> None:
        self.loaded = True
        self.query_one("#burn-drives", OptionList).display = False
        set_message(
            self.query_one("#burn-message", Static),
            f"drives: {describe_error(error)} (a stdio:/path/disc.iso target still works)",
            error=True,
        )
        self.query_one("#burn-drive", Input).focus()

    def drive(self, device: str) -> dict[str, Any] | None:
        return next((d for d in self.drives if d.get("device") == device), None)

    def show_note(self) -> None:
        target = self.query_one("#burn-drive", Input).value.strip()
        note = drive_note(self.drive(target), target)
        self.query_one("#burn-drive-note", Static).update(note)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        if event.option.id is not None:
            self.query_one("#burn-drive", Input).value = event.option.id

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.query_one("#burn-drive", Input).value = event.option.id
            self.query_one("#burn-capacity", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if event.input.id == "burn-drive":
            self.show_note()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_burn()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "burn-go":
            self.action_burn()
        elif event.button.id == "burn-cancel":
            self.action_cancel()

    def values(self) -> BurnValues:
        return BurnValues(
            drive=self.query_one("#burn-drive", Input).value,
            capacity=self.query_one("#burn-capacity", Input).value,
            label=self.query_one("#burn-label", Checkbox).value,
        )

    def action_burn(self) -> None:
        if self.busy:
            return
        clear_field_errors(self)
        try:
            request = build_burn_request(self.values(), self.studies, self.drives)
        except FormError as error:
            show_field_error(self, f"burn-{error.field}-error", str(error))
            return
        self.busy = True
        set_message(self.query_one("#burn-message", Static), f"queueing on {request['drive']}...")
        self.call_in_background(
            lambda: self.client.burn(
                request["drive"],
                request["study_uids"],
                capacity_bytes=request.get("capacity_bytes"),
                label=request["label"],
            ),
            self.dismiss,
            group="burn-submit",
            on_error=self.refused,
        )

    def refused(self, error: BaseException) -> None:
        """The daemon's refusal: under the field it names, else in the message line."""
        self.busy = False
        message = self.query_one("#burn-message", Static)
        name = error_field(error)
        field = _REFUSAL_FIELDS.get((name or "").split(".")[-1])
        if field is not None:
            show_field_error(self, f"burn-{field}-error", describe_error(error))
            set_message(message, "")
        else:
            set_message(message, describe_error(error), error=True)

    def action_cancel(self) -> None:
        self.dismiss(None)


def open_burn_dialog(screen: ConsoleScreen, studies: list[dict[str, Any]]) -> None:
    """The Studies screen's burn action: choose the drive, then say which job burns."""

    def queued(job: dict[str, Any] | None) -> None:
        if not job:
            return
        remember = getattr(screen.app, "remember_job", None)
        if remember is not None:
            remember(job)
        text = f"queued burn job #{job.get('id')} on {job.get('target')}"
        lines = list(screen.query("#studies-message").results(Static))
        if lines:
            set_message(lines[0], text, ok=True)
        else:
            screen.notify(text)

    screen.app.push_screen(BurnDialog(studies), queued)
