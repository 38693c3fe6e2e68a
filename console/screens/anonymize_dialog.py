"""Anonymize studies: the Studies screen's anonymize action.

The operator chooses a profile (the built-in ``basic``, the Basic Profile of PS3.15 Annex E
without options, or one of the site's), sees what it does to a sample instance of each chosen
study as a table of attribute, original value, action and result (``anonymize.preview``, a dry
run: nothing is stored and no pseudonym is made), and may have the anonymized copy sent to a
node or burned on a disc once it is in the archive. Images that may carry burned-in patient
data (a US image without Burned In Annotation, ...) are held by the daemon unless the profile
cleans them: they are listed with the reason, the daemon renders each to a PNG on request (the
print preview) and the operator ticks the ones looked at to release them. ``anonymize.submit``
queues the job; the Studies screen says its id. The daemon checks everything again: its refusal
shows under the field it names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Button, Checkbox, DataTable, Input, Label, Select, Static

from console.base import ConsoleScreen, describe_error
from console.screens._forms import (
    FORM_CSS,
    clear_field_errors,
    error_field,
    field_row,
    set_message,
    show_field_error,
)
from console.screens.burn_dialog import BurnValues, build_burn_request
from console.screens.film_composer import FormError, source_text
from console.tables import styled
from console.widgets import NodePickerModal

BUILT_IN = "basic"
DEFAULT_ID_PATTERN = "ANON{n:06d}"  # the engine's default: not worth a word on the profile line
PREVIEW_COLUMNS = (("Attribute", 20), ("Original", 17), ("Action", 9), ("Result", 20))
# Table E.1-1 action codes as words the operator reads; anything else is shown as the daemon
# says it (overrides "keep", "replace", "remove"; "shift" for modified dates, ...).
ACTION_WORDS = {
    "UID": "new UID",
    "X": "remove",
    "Z": "empty",
    "D": "dummy",
    "U": "new UID",
    "K": "keep",
    "C": "clean",
}
ACTION_STYLES = {
    "remove": "$error",
    "empty": "$warning",
    "keep": "$text-muted",
    "add": "$success",
}
# The option names of DESIGN (PS3.15 Table E.1-1 columns) as the profile line shows them.
OPTION_WORDS = {
    "retain_safe_private": "safe private",
    "retain_uids": "UIDs kept",
    "retain_device_identity": "device identity",
    "retain_institution_identity": "institution identity",
    "retain_patient_characteristics": "patient characteristics",
    "retain_long_full_dates": "full dates",
    "retain_long_modified_dates": "shifted dates",
    "clean_descriptors": "clean descriptors",
    "clean_structured_content": "clean structured content",
    "clean_graphics": "clean graphics",
    "clean_pixel_data": "clean pixel data",
}


# --- values ------------------------------------------------------------------------------------


def profile_name(profile: dict[str, Any]) -> str:
    return str(profile.get("name") or "")


def profile_text(profile: dict[str, Any]) -> str:
    """One line about a profile: its options, overrides, patterns and project."""
    options = [str(option) for option in profile.get("options") or []]
    description = str(profile.get("description") or "").strip()
    parts = [description] if description else []
    parts += [
        "Basic Profile"
        + (
            " + " + ", ".join(OPTION_WORDS.get(option, option) for option in options)
            if options
            else ", no options"
        )
    ]
    overrides = profile.get("overrides") or {}
    if overrides:
        parts.append(f"{len(overrides)} override{'' if len(overrides) == 1 else 's'}")
    pattern = profile.get("patient_id_pattern")
    if pattern and pattern != DEFAULT_ID_PATTERN:
        parts.append(f"ID {pattern}")
    project = profile.get("project")
    if project and project != "default":
        parts.append(f"project {project}")
    return "; ".join(parts)


def action_text(action: Any) -> str:
    text = str(action or "")
    return ACTION_WORDS.get(text.upper(), text) if len(text) <= 6 else text


def value_text(value: Any, width: int) -> str:
    """A value on one line: lists joined with ``\\`` (DICOM's multi-value separator), absent
    shown as ``-``, long ones cut with an ellipsis."""
    if value is None:
        return "-"
    if isinstance(value, list):
        value = "\\".join(str(item) for item in value)
    text = " ".join(str(value).split())
    if text == "":
        return '""'
    return text if len(text) <= width else text[: width - 1] + "…"


def attribute_text(row: dict[str, Any]) -> str:
    keyword = str(row.get("keyword") or "")
    tag = str(row.get("tag") or "")
    return keyword or tag


def preview_rows(answer: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The preview table's cells: attribute, original, action, result."""
    widths = [width for _, width in PREVIEW_COLUMNS]
    cells = []
    for row in answer.get("rows") or []:
        action = action_text(row.get("action"))
        result = row.get("result")
        original = row.get("original")
        cells.append(
            (
                value_text(attribute_text(row), widths[0]),
                # An attribute the profile adds had no value before; a removed one has none
                # after: both read as absent ("-"), not as an empty value.
                value_text(None if action == "add" and not original else original, widths[1]),
                value_text(action, widths[2]),
                value_text(None if action == "remove" and not result else result, widths[3]),
            )
        )
    return cells


def held_of(answer: dict[str, Any], study_uid: str = "") -> list[dict[str, Any]]:
    """The held instances a preview answer names, each as {sop_instance_uid, reason, modality,
    study_uid}.

    With a study, ``held_instances`` lists every instance of it the daemon would hold
    (``instance``, ``series_uid``, ``modality``, ``reason``); ``held`` is the sample's reason
    (or null), which is all an instance's preview says.
    """
    found: list[dict[str, Any]] = []
    for item in answer.get("held_instances") or []:
        if isinstance(item, dict):
            uid = item.get("sop_instance_uid") or item.get("instance")
            if uid:
                found.append({"study_uid": study_uid, **item, "sop_instance_uid": str(uid)})
    held = answer.get("held")
    if held and answer.get("instance"):
        uid = str(answer["instance"])
        if all(item["sop_instance_uid"] != uid for item in found):
            found.insert(0, {"study_uid": study_uid, "sop_instance_uid": uid, "reason": held})
    seen: set[str] = set()
    unique = []
    for item in found:
        if item["sop_instance_uid"] not in seen:
            seen.add(item["sop_instance_uid"])
            unique.append({**item, "reason": str(item.get("reason") or "")})
    return unique


def held_label(item: dict[str, Any]) -> str:
    """A held instance's checkbox: its modality and the end of its UID."""
    uid = str(item["sop_instance_uid"])
    what = " ".join(
        str(item.get(key)) for key in ("modality", "series_description") if item.get(key)
    )
    short = uid if len(uid) <= 28 else "…" + uid[-27:]
    return f"{what} {short}" if what else short


def held_note(item: dict[str, Any], png: str | None = None) -> str:
    """Under the checkbox: why it is held, and where the picture of it is once rendered."""
    reason = str(item.get("reason") or "held").removeprefix("held: ")
    return f"{reason}\n{png}" if png else reason


@dataclass(frozen=True)
class AnonymizeValues:
    profile: str
    send: str = ""
    burn: str = ""
    confirm_pixels: list[str] = field(default_factory=list)


def build_anonymize_request(
    values: AnonymizeValues,
    studies: list[dict[str, Any]],
    *,
    profiles: list[dict[str, Any]] | None = None,
    nodes: list[dict[str, Any]] | None = None,
    drives: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The anonymize.submit arguments; FormError (with the field it is about) otherwise.

    ``profiles``, ``nodes`` and ``drives`` are what the daemon listed (None: not known, the
    daemon checks alone)."""
    if not studies:
        raise FormError("studies", "no study chosen")
    profile = values.profile.strip()
    if not profile:
        raise FormError("profile", "choose a profile")
    if profiles is not None and profile not in {profile_name(p) for p in profiles}:
        raise FormError("profile", f"no profile {profile}")
    request: dict[str, Any] = {
        "profile": profile,
        "study_uids": [str(study["study_uid"]) for study in studies],
    }
    send = values.send.strip()
    if send:
        if nodes is not None:
            known = next((n for n in nodes if str(n.get("name")) == send), None)
            if known is None:
                raise FormError("send", f"no node {send} (ctrl+n lists them)")
            if "store" not in known.get("services", ["store"]):
                raise FormError("send", f"node {send} does not take sends (storage)")
        request["send"] = send
    burn = values.burn.strip()
    if burn:
        try:
            build_burn_request(BurnValues(drive=burn), studies, drives or [])
        except FormError as error:
            # One patient per disc: the anonymized studies keep one pseudonym per patient.
            raise FormError("burn", error.message) from None
        request["burn"] = burn
    if values.confirm_pixels:
        request["confirm_pixels"] = list(values.confirm_pixels)
    return request


# How the daemon's refusals name the dialog's fields.
_REFUSAL_FIELDS = {
    "profile": "profile",
    "send": "send",
    "node": "send",
    "burn": "burn",
    "drive": "burn",
    "study_uids": "studies",
    "study_uid": "studies",
    "confirm_pixels": "held",
}


# --- the modal ---------------------------------------------------------------------------------


class AnonymizeDialog(ConsoleScreen, ModalScreen[dict[str, Any] | None]):
    """Choose a profile, look at the preview and the held images, then run; dismisses with the
    queued anonymize job, or None."""

    DEFAULT_CSS = (
        FORM_CSS
        + """
    AnonymizeDialog { align: center middle; background: $background 60%; }
    AnonymizeDialog #anon {
        width: 100%; max-width: 110; height: 100%; max-height: 44;
        border: round $primary; background: $surface; padding: 0 1;
    }
    AnonymizeDialog #anon-title { text-style: bold; height: 1; }
    AnonymizeDialog .field-label { width: 10; }
    AnonymizeDialog .field-error { padding-left: 10; }
    AnonymizeDialog .field-note { color: $text-muted; padding-left: 10; height: auto; }
    AnonymizeDialog #anon-preview {
        height: 1fr; min-height: 4; border-top: solid $primary-muted;
    }
    AnonymizeDialog #anon-held {
        height: auto; max-height: 7; display: none; border-top: solid $warning;
    }
    AnonymizeDialog #anon-held.-shown { display: block; }
    AnonymizeDialog #anon-held Checkbox { border: none; padding: 0; height: 1; }
    AnonymizeDialog #anon-held .held-note { padding-left: 4; height: auto; color: $text-muted; }
    AnonymizeDialog #anon-message { height: auto; }
    AnonymizeDialog .buttons { height: 1; }
    AnonymizeDialog .buttons Button { width: auto; min-width: 8; margin-right: 1; }
    AnonymizeDialog .modal-hint { color: $text-muted; height: 1; }
    """
    )
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "run", "Anonymize", priority=True),
        Binding("ctrl+n", "pick_node", "Send to node"),
        Binding("ctrl+o", "render_held", "Show held images"),
    ]
    HINT = "ctrl+s anonymize  ctrl+n node  ctrl+o held images  space tick  esc cancel"

    def __init__(self, studies: list[dict[str, Any]]) -> None:
        super().__init__()
        self.studies = studies
        self.profiles: list[dict[str, Any]] | None = None
        self.nodes: list[dict[str, Any]] | None = None
        self.drives: list[dict[str, Any]] = []
        self.preview: dict[str, Any] = {}
        self.held: list[dict[str, Any]] = []
        self.pngs: dict[str, str] = {}
        self.checkboxes: list[Checkbox] = []
        self.notes: list[Static] = []
        self.previewed = ""  # the profile the table shows
        self.requested = ""  # the profile last asked about
        self.busy = False

    def compose(self) -> ComposeResult:
        with Vertical(id="anon"):
            yield Static(f"Anonymize {source_text(self.studies)}", id="anon-title")
            yield Static("", id="anon-studies-error", classes="field-error")
            yield from field_row(
                "Profile",
                Select[str]([], prompt="loading profiles", id="anon-profile", compact=True),
                error_id="anon-profile-error",
            )
            yield Static("", id="anon-profile-note", classes="field-note")
            table: DataTable[str | Text] = DataTable(id="anon-preview", cursor_type="row")
            for label, width in PREVIEW_COLUMNS:
                table.add_column(label, width=width)
            yield table
            yield VerticalScroll(id="anon-held")
            yield Static("", id="anon-held-error", classes="field-error")
            yield from field_row(
                "Send to",
                Input(placeholder="no send (ctrl+n: choose a node)", id="anon-send",
                      compact=True),
                error_id="anon-send-error",
            )  # fmt: skip
            yield from field_row(
                "Burn on",
                Input(placeholder="no burn (/dev/sr0 or stdio:/path/disc.iso)", id="anon-burn",
                      compact=True),
                error_id="anon-burn-error",
            )  # fmt: skip
            yield Static("Loading profiles...", id="anon-message", classes="form-message")
            with Horizontal(classes="buttons"):
                yield Button("Anonymize", id="anon-go", variant="primary", compact=True)
                yield Button("Node...", id="anon-node", compact=True)
                yield Button("Held images", id="anon-render", compact=True, disabled=True)
                yield Button("Cancel", id="anon-cancel", compact=True)
            yield Label(self.HINT, classes="modal-hint")

    def on_mount(self) -> None:
        self.query_one("#anon-preview").border_title = "Preview"
        self.query_one("#anon-held").border_title = "Held"
        for widget in self.query(Input):
            widget.cursor_blink = False
        self.call_in_background(
            self.client.anonymize_profiles,
            self.show_profiles,
            group="anon-profiles",
            on_error=self.no_profiles,
        )
        # Nodes and drives only help (suggestions, checks here): the daemon checks anyway.
        self.call_in_background(
            self.client.nodes, self.show_nodes, group="anon-nodes", on_error=lambda _: None
        )
        self.call_in_background(
            self.client.drives, self.show_drives, group="anon-drives", on_error=lambda _: None
        )

    # --- profiles and the preview --------------------------------------------------------

    def show_profiles(self, profiles: list[dict[str, Any]]) -> None:
        # The built-in first, then the site's in the order the daemon gives them.
        self.profiles = sorted(profiles, key=lambda p: profile_name(p) != BUILT_IN)
        select = self.query_one("#anon-profile", Select)
        select.set_options([(profile_name(p), profile_name(p)) for p in self.profiles])
        if not self.profiles:
            set_message(self.query_one("#anon-message", Static), "the daemon has no profile")
            return
        select.value = profile_name(self.profiles[0])
        select.focus()
        self.load_preview()

    def no_profiles(self, error: BaseException) -> None:
        set_message(
            self.query_one("#anon-message", Static),
            f"profiles: {describe_error(error)}",
            error=True,
        )

    def show_nodes(self, nodes: list[dict[str, Any]]) -> None:
        self.nodes = nodes
        names = [str(n["name"]) for n in nodes if "store" in n.get("services", ["store"])]
        self.query_one("#anon-send", Input).suggester = SuggestFromList(names)

    def show_drives(self, drives: list[dict[str, Any]]) -> None:
        self.drives = drives
        devices = [str(d.get("device")) for d in drives if d.get("device")]
        self.query_one("#anon-burn", Input).suggester = SuggestFromList(devices)

    def chosen_profile(self) -> str:
        value = self.query_one("#anon-profile", Select).value
        return value if isinstance(value, str) else ""

    def load_preview(self) -> None:
        """Ask the daemon what the profile does: the first study's sample in the table, and
        the held instances of every chosen study."""
        profile = self.chosen_profile()
        if not profile:
            return
        self.requested = profile
        profiles = {profile_name(p): p for p in self.profiles or []}
        self.query_one("#anon-profile-note", Static).update(
            profile_text(profiles.get(profile, {"name": profile}))
        )
        uids = [str(study["study_uid"]) for study in self.studies]
        set_message(self.query_one("#anon-message", Static), f"previewing {profile}...")

        def previews() -> list[tuple[str, dict[str, Any]]]:
            return [(uid, self.client.anonymize_preview(profile, study_uid=uid)) for uid in uids]

        self.call_in_background(
            previews,
            lambda answers: self.show_preview(profile, answers),
            group="anon-preview",
            on_error=self.refused,
        )

    def show_preview(self, profile: str, answers: list[tuple[str, dict[str, Any]]]) -> None:
        if profile != self.chosen_profile():
            return  # an older answer: the operator chose another profile meanwhile
        self.previewed = profile
        self.preview = answers[0][1] if answers else {}
        table = self.query_one("#anon-preview", DataTable)
        table.clear()
        for index, cells in enumerate(preview_rows(self.preview)):
            action = styled(self.app, cells[2], ACTION_STYLES)
            table.add_row(cells[0], cells[1], action, cells[3], key=str(index))
        instance = str(self.preview.get("instance") or "")
        more = f" (first of {len(answers)} studies)" if len(answers) > 1 else ""
        table.border_title = f"Preview: {instance or 'no instance'}{more}"
        held = [item for uid, answer in answers for item in held_of(answer, uid)]
        self.show_held(held)
        count = table.row_count
        text = f"{profile}: {count} attribute{'' if count == 1 else 's'} change"
        if held:
            text += f"; {len(held)} held image{'' if len(held) == 1 else 's'}: tick to release"
        set_message(self.query_one("#anon-message", Static), text)

    def show_held(self, held: list[dict[str, Any]]) -> None:
        """A checkbox per held instance; ticks stay across a new preview."""
        same = [item["sop_instance_uid"] for item in held] == [
            item["sop_instance_uid"] for item in self.held
        ]
        ticked = set(self.confirmed())
        self.held = held
        box = self.query_one("#anon-held", VerticalScroll)
        box.set_class(bool(held), "-shown")
        box.border_title = (
            f"Held: {len(held)} image{'' if len(held) == 1 else 's'} may show patient data; "
            "tick the ones you looked at"
            if held
            else "Held"
        )
        self.query_one("#anon-render", Button).disabled = not held
        if same and len(self.checkboxes) == len(held):
            self.relabel_held()
            return
        boxes = [
            Checkbox(
                held_label(item),
                item["sop_instance_uid"] in ticked,
                id=f"anon-held-{index}",
                compact=True,
            )
            for index, item in enumerate(held)
        ]
        notes = [
            Static(
                held_note(item, self.pngs.get(item["sop_instance_uid"])),
                id=f"anon-held-note-{index}",
                classes="held-note",
            )
            for index, item in enumerate(held)
        ]
        self.checkboxes, self.notes = boxes, notes

        async def rebuild() -> None:
            # The old boxes go before the new ones (with the same ids) come.
            await box.remove_children()
            if self.checkboxes is boxes:
                await box.mount_all(
                    widget for pair in zip(boxes, notes, strict=True) for widget in pair
                )

        self.run_worker(rebuild(), group="anon-held", exclusive=True)

    def relabel_held(self) -> None:
        for item, note in zip(self.held, self.notes, strict=False):
            note.update(held_note(item, self.pngs.get(item["sop_instance_uid"])))

    def confirmed(self) -> list[str]:
        """The held instances ticked by the operator."""
        return [
            str(item["sop_instance_uid"])
            for item, checkbox in zip(self.held, self.checkboxes, strict=False)
            if checkbox.value
        ]

    def action_render_held(self) -> None:
        """Have the daemon render the held images to PNG files (the print preview)."""
        if not self.held:
            return
        uids = [str(item["sop_instance_uid"]) for item in self.held]
        set_message(self.query_one("#anon-message", Static), "rendering the held images...")
        self.call_in_background(
            lambda: self.client.render_images(uids),
            lambda files: self.show_pngs(uids, files),
            group="anon-render",
            on_error=lambda error: set_message(
                self.query_one("#anon-message", Static),
                f"images: {describe_error(error)}",
                error=True,
            ),
        )

    def show_pngs(self, uids: list[str], files: list[str]) -> None:
        # One film per image, in the order asked: the n-th PNG is the n-th image.
        self.pngs.update(zip(uids, files, strict=False))
        self.relabel_held()
        set_message(
            self.query_one("#anon-message", Static),
            f"{len(files)} held image{'' if len(files) == 1 else 's'} rendered to PNG "
            "(the path is under each)",
            ok=bool(files),
        )

    # --- send target ---------------------------------------------------------------------

    def action_pick_node(self) -> None:
        def choose(nodes: list[dict[str, Any]]) -> None:
            self.show_nodes(nodes)
            senders = [n for n in nodes if "store" in n.get("services", ["store"])]
            self.app.push_screen(
                NodePickerModal(senders, title="Send the anonymized copy to"), picked
            )

        def picked(names: list[str] | None) -> None:
            if names:
                self.query_one("#anon-send", Input).value = names[0]

        self.call_in_background(self.client.nodes, choose, group="anon-nodes")

    # --- events ----------------------------------------------------------------------------

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if event.select.id == "anon-profile" and self.chosen_profile() != self.requested:
            self.load_preview()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_run()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        actions = {
            "anon-go": self.action_run,
            "anon-node": self.action_pick_node,
            "anon-render": self.action_render_held,
            "anon-cancel": self.action_cancel,
        }
        action = actions.get(event.button.id or "")
        if action is not None:
            action()

    # --- run -------------------------------------------------------------------------------

    def values(self) -> AnonymizeValues:
        return AnonymizeValues(
            profile=self.chosen_profile(),
            send=self.query_one("#anon-send", Input).value,
            burn=self.query_one("#anon-burn", Input).value,
            confirm_pixels=self.confirmed(),
        )

    def action_run(self) -> None:
        if self.busy:
            return
        clear_field_errors(self)
        try:
            request = build_anonymize_request(
                self.values(),
                self.studies,
                profiles=self.profiles,
                nodes=self.nodes,
                drives=self.drives,
            )
        except FormError as error:
            show_field_error(self, f"anon-{error.field}-error", error.message)
            return
        self.busy = True
        set_message(self.query_one("#anon-message", Static), f"queueing {request['profile']}...")
        self.call_in_background(
            lambda: self.client.anonymize(
                request["profile"],
                request["study_uids"],
                send=request.get("send"),
                burn=request.get("burn"),
                confirm_pixels=request.get("confirm_pixels"),
            ),
            self.queued,
            group="anon-submit",
            on_error=self.refused,
        )

    def queued(self, job: dict[str, Any]) -> None:
        self.busy = False
        self.dismiss(job)

    def refused(self, error: BaseException) -> None:
        """The daemon's refusal: under the field it names, else in the message line."""
        self.busy = False
        message = self.query_one("#anon-message", Static)
        name = error_field(error)
        target = _REFUSAL_FIELDS.get((name or "").split(".")[-1])
        if target is not None:
            show_field_error(self, f"anon-{target}-error", describe_error(error))
            set_message(message, "")
        else:
            set_message(message, describe_error(error), error=True)

    def action_cancel(self) -> None:
        self.dismiss(None)


def queued_text(job: dict[str, Any]) -> str:
    """``queued anonymize job #7 (profile basic), then send to PACS and burn on /dev/sr0``."""
    params = job.get("params") or {}
    text = f"queued anonymize job #{job.get('id')}"
    if params.get("profile"):
        text += f" (profile {params['profile']})"
    then = []
    if params.get("send"):
        then.append(f"send to {params['send']}")
    if params.get("burn"):
        then.append(f"burn on {params['burn']}")
    return text + (", then " + " and ".join(then) if then else "")


def open_anonymize_dialog(screen: ConsoleScreen, studies: list[dict[str, Any]]) -> None:
    """The Studies screen's anonymize action: choose and look, then say which job runs."""

    def queued(job: dict[str, Any] | None) -> None:
        if not job:
            return
        remember = getattr(screen.app, "remember_job", None)
        if remember is not None:
            remember(job)
        text = queued_text(job)
        lines = list(screen.query("#studies-message").results(Static))
        if lines:
            set_message(lines[0], text, ok=True)
        else:
            screen.notify(text)

    screen.app.push_screen(AnonymizeDialog(studies), queued)
