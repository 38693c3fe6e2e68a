"""The print queue: composing films from the archive, the ``print`` job and printer status.

A ``print`` job goes to a configured :class:`~appliance.config.Printer` (its target). Its
parameters (``job.params``) name the images, one of:

- ``study_uids``, ``series_uids``, ``sop_instance_uids``: images of the archive. The most
  specific one given selects (instances, else series, else studies); a wider one given with it
  must contain what it selects. Images are laid out in series number, then instance number
  order; objects without pixels (reports, Stored Prints, ...) are left out.
- ``stored_print_uids``: Stored Print objects in the archive (from our Print SCP, for example):
  each is one film with its own Image Display Format, film size, orientation, magnification,
  annotations and its Hardcopy images at their Image Box Positions.

and, optionally, composer options: ``layout`` (``STANDARD\\c,r``, ``ROW\\...``, ``COL\\...``;
default the printer's first display format), ``film_size``, ``orientation``, ``copies``,
``medium_type``, ``film_destination``, ``magnification_type``, ``window_center`` and
``window_width`` (else each image's own VOI), ``annotation`` and ``polarity``.

The first attempt composes the films and records the composition in ``params["composed"]``
so that later attempts, a restart or a reprint print the same films even if the study has
grown since. Each film is one job instance, ``film-<n>``, printed in an association of its own:
a printed film is never printed again by a later attempt (an operator's retry of an ended job
reprints only what did not print; ``jobs retry`` after a success prints nothing). A printer
that is unreachable or reports a transient status (FILM JAM, PRINT BUFF FULL, SUPPLY EMPTY, a
C6xx status) makes the attempt fail as retryable: the engine backs off and the job's error
says why the queue holds. A printer that refuses the film for good (0106 for a layout it does
not offer, ...) fails that film.

:class:`PrinterStatusBoard` keeps the last known status of each printer (from its N-GET, its
N-EVENT-REPORTs and failed connections) and publishes every change on the event bus (topic
``printer``). :class:`PrintOperations` are the control API's print and printer operations.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from appliance import print_scu
from appliance.config import ConfigError, ConfigStore, Printer, Settings
from appliance.job_engine import AttemptFailed, RunContext
from appliance.jobs import FAILED, PENDING, SUCCESS, WARNING, InstanceResult, JobError
from appliance.print_render import FILM_SIZES, ORIENTATIONS, parse_display_format
from appliance.print_scu import Film

if TYPE_CHECKING:
    from appliance.archive import Archive
    from appliance.control import Caller, ControlServer
    from appliance.events import EventBus
    from appliance.job_engine import JobEngine

LOG = logging.getLogger("appliance.print")

SOURCE_KEYS = ("study_uids", "series_uids", "sop_instance_uids", "stored_print_uids")
COMPOSER_KEYS = (
    "layout",
    "film_size",
    "orientation",
    "copies",
    "medium_type",
    "film_destination",
    "magnification_type",
    "window_center",
    "window_width",
    "annotation",
    "polarity",
)
POLARITIES = ("NORMAL", "REVERSE")
MAX_COPIES = 99
#: The most films one job may compose: a typo (a whole archive) should not print a forest.
MAX_FILMS = 500
DEFAULT_LAYOUT = "STANDARD\\1,1"
#: Seconds a live status request (printers.list with refresh) waits for each printer.
REFRESH_TIMEOUT = 5

STORED_PRINT_SOP_CLASS = "1.2.840.10008.5.1.1.27"
HARDCOPY_GRAYSCALE_SOP_CLASS = "1.2.840.10008.5.1.1.29"
HARDCOPY_COLOR_SOP_CLASS = "1.2.840.10008.5.1.1.30"
COLOR_META_SOP_CLASS = "1.2.840.10008.5.1.1.18"


class ComposeError(ValueError):
    """The request cannot be composed into films (nothing to print, a bad option)."""


@dataclass
class ComposedFilm:
    """One film of a print job: what the Print SCU prints, and where each box's image came
    from (SOP Instance UIDs in the archive, None for an empty box), with a short label per box
    for the console's film layout."""

    film: Film
    sources: list[str | None]
    labels: list[str] = field(default_factory=list)


def make_film(**values: Any) -> Film:
    """A Film from the values this Print SCU knows (a field it does not have yet is left
    out: the composer's full set of options comes before every option reaches the printer)."""
    known = {f.name for f in fields(Film)}
    return Film(**{k: v for k, v in values.items() if k in known})


def _film_value(film: Film, name: str) -> Any:
    return getattr(film, name, None)


# --- parameters --------------------------------------------------------------------------------


def _uid_list(params: dict[str, Any], key: str) -> list[str]:
    value = params.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ComposeError(f"{key} must be a list of UIDs")
    return list(dict.fromkeys(v.strip() for v in value))


def _text(params: dict[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ComposeError(f"{key} must be text")
    return value.strip() or None


def _number(params: dict[str, Any], key: str) -> float | None:
    value = params.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ComposeError(f"{key} must be a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ComposeError(f"{key} must be a number, not {value!r}") from None


def _offered(printer: Printer | None, attribute: str, value: str, what: str) -> None:
    offered = getattr(printer, attribute, None) if printer is not None else None
    if offered and value not in offered:
        raise ComposeError(
            f"printer {printer.name} does not offer {what} {value} "  # type: ignore[union-attr]
            f"(it offers {', '.join(offered)})"
        )


def normalise_params(params: dict[str, Any], printer: Printer | None) -> dict[str, Any]:
    """Check a print request's source and composer options; returns them cleaned (UID lists,
    upper-case defined terms, numbers). Raises ComposeError."""
    clean: dict[str, Any] = {}
    for key in SOURCE_KEYS:
        uids = _uid_list(params, key)
        if uids:
            clean[key] = uids
    if not clean:
        raise ComposeError(
            "nothing to print: give study_uids, series_uids, sop_instance_uids or stored_print_uids"
        )
    if "stored_print_uids" in clean and len(clean) > 1:
        raise ComposeError("stored_print_uids cannot be combined with other images")
    layout = _text(params, "layout")
    if layout is not None:
        try:
            parse_display_format(layout)
        except ValueError as exc:
            raise ComposeError(str(exc)) from None
        kind, _, rest = layout.partition("\\")
        clean["layout"] = f"{kind.strip().upper()}\\{rest.replace(' ', '')}"
    film_size = _text(params, "film_size")
    if film_size is not None:
        film_size = film_size.upper()
        if film_size not in FILM_SIZES:
            raise ComposeError(f"unknown film size {film_size}; known: {', '.join(FILM_SIZES)}")
        _offered(printer, "film_sizes", film_size, "film size")
        clean["film_size"] = film_size
    orientation = _text(params, "orientation")
    if orientation is not None:
        orientation = orientation.upper()
        if orientation not in ORIENTATIONS:
            raise ComposeError("orientation must be PORTRAIT or LANDSCAPE")
        clean["orientation"] = orientation
    copies = params.get("copies")
    if copies is not None:
        if isinstance(copies, bool) or not isinstance(copies, int | str):
            raise ComposeError("copies must be a number")
        try:
            copies = int(copies)
        except ValueError:
            raise ComposeError(f"copies must be a number, not {copies!r}") from None
        if not 1 <= copies <= MAX_COPIES:
            raise ComposeError(f"copies must be 1..{MAX_COPIES}")
        clean["copies"] = copies
    for key, attribute, what in (
        ("medium_type", "medium_types", "medium type"),
        ("film_destination", "film_destinations", "film destination"),
        ("magnification_type", "magnification_types", "magnification type"),
    ):
        value = _text(params, key)
        if value is not None:
            value = value.upper()
            _offered(printer, attribute, value, what)
            clean[key] = value
    center = _number(params, "window_center")
    width = _number(params, "window_width")
    if (center is None) != (width is None):
        raise ComposeError("window_center and window_width go together")
    if width is not None:
        if width < 1:
            raise ComposeError("window_width must be at least 1")
        clean["window_center"], clean["window_width"] = center, width
    annotation = _text(params, "annotation")
    if annotation is not None:
        if len(annotation) > 64:
            raise ComposeError("annotation must be at most 64 characters")
        clean["annotation"] = annotation
    polarity = _text(params, "polarity")
    if polarity is not None:
        polarity = polarity.upper()
        if polarity not in POLARITIES:
            raise ComposeError("polarity must be NORMAL or REVERSE")
        clean["polarity"] = polarity
    return clean


# --- composing ---------------------------------------------------------------------------------


@dataclass
class _Image:
    uid: str
    path: Path
    label: str
    sop_class_uid: str


def _as_int(text: object) -> int | None:
    try:
        return int(float(str(text).strip()))
    except (TypeError, ValueError):
        return None


def _archive_images(archive: Archive, params: dict[str, Any]) -> list[_Image]:
    """The printable images the request selects, in study, series number, instance number
    order."""
    from appliance.query import connect, index_path

    studies = params.get("study_uids") or []
    series = params.get("series_uids") or []
    instances = params.get("sop_instance_uids") or []
    if instances:
        column, wanted = "i.sop_instance_uid", instances
    elif series:
        column, wanted = "i.series_uid", series
    else:
        column, wanted = "i.study_uid", studies
    db = connect(index_path(archive))
    try:
        rows: list[tuple] = []
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            rows.extend(
                db.execute(
                    "SELECT i.sop_instance_uid, i.study_uid, i.series_uid,"
                    " COALESCE(s.series_number, ''), COALESCE(i.instance_number, ''),"
                    " COALESCE(i.received_at, 0), COALESCE(s.modality, '')"
                    " FROM instances i LEFT JOIN series s ON s.series_uid = i.series_uid"
                    f" WHERE {column} IN ({','.join('?' * len(part))})",
                    part,
                ).fetchall()
            )
    finally:
        db.close()
    if studies and (series or instances):
        outside = [r[0] for r in rows if r[1] not in studies]
        if outside:
            raise ComposeError(f"{outside[0]} is not in the studies given")
    if series and instances:
        outside = [r[0] for r in rows if r[2] not in series]
        if outside:
            raise ComposeError(f"{outside[0]} is not in the series given")
    found = {r[0] for r in rows} | {r[1] for r in rows} | {r[2] for r in rows}
    missing = [uid for uid in wanted if uid not in found]
    if missing:
        raise ComposeError(f"the archive has no {_what(column)} {missing[0]}")
    order = {uid: n for n, uid in enumerate(wanted)}
    big = 1 << 30

    def key(row: tuple) -> tuple:
        uid, study, series_uid, series_number, instance_number, received, _ = row
        if instances:
            return (order[uid],)
        series_no = _as_int(series_number)
        instance_no = _as_int(instance_number)
        return (
            order.get(study, 0) if column == "i.study_uid" else order.get(series_uid, 0),
            big if series_no is None else series_no,
            series_uid,
            big if instance_no is None else instance_no,
            received,
            uid,
        )

    images: list[_Image] = []
    for row in sorted(rows, key=key):
        record = archive.instance(row[0])
        if record is None:
            continue
        image = _image(record.path, row[0], record.sop_class_uid, row[3], row[4], row[6])
        if image is not None:
            images.append(image)
    return images


def _what(column: str) -> str:
    return {"i.sop_instance_uid": "instance", "i.series_uid": "series"}.get(column, "study")


def _image(
    path: Path,
    uid: str,
    sop_class_uid: str,
    series_number: object,
    instance_number: object,
    modality: str,
) -> _Image | None:
    """The image at ``path`` if it has pixels to print (None for reports, Stored Prints,
    presentation states, ...)."""
    try:
        header = dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=["Rows", "Columns", "SeriesNumber", "InstanceNumber", "Modality"],
        )
    except Exception as exc:  # noqa: BLE001 - an unreadable file is reported when printed
        LOG.warning("print: %s: cannot read %s: %s", uid, path, exc)
        return _Image(uid, path, uid, sop_class_uid)
    if "Rows" not in header or "Columns" not in header:
        return None
    modality = str(header.get("Modality", "") or modality or "").strip()
    series_number = header.get("SeriesNumber", series_number)
    instance_number = header.get("InstanceNumber", instance_number)
    parts = [modality] if modality else []
    if str(series_number or "").strip():
        parts.append(f"se {series_number}")
    if str(instance_number or "").strip():
        parts.append(f"im {instance_number}")
    return _Image(uid, path, " ".join(parts) or uid[-12:], sop_class_uid)


def _full_range_window(image: Dataset) -> tuple[float, float]:
    """The window that shows a preformatted (Hardcopy) image's stored values as they are."""
    levels = float(1 << int(image.get("BitsStored", 8) or 8))
    return levels / 2, levels


def compose_films(
    archive: Archive, params: dict[str, Any], printer: Printer | None, *, load: bool = True
) -> list[ComposedFilm]:
    """The films a print request makes: images of the archive laid out ``layout`` per film
    (as many films as needed), or one film per Stored Print. ``load`` false leaves the images
    out (None): the layout only, for the console and for the job's first attempt."""
    clean = normalise_params(params, printer)
    if "stored_print_uids" in clean:
        films = [
            _stored_print_film(archive, uid, clean, load=load) for uid in clean["stored_print_uids"]
        ]
    else:
        films = _archive_films(archive, clean, printer, load=load)
    if len(films) > MAX_FILMS:
        raise ComposeError(f"{len(films)} films: at most {MAX_FILMS} per print job")
    return films


def _archive_films(
    archive: Archive, clean: dict[str, Any], printer: Printer | None, *, load: bool
) -> list[ComposedFilm]:
    layout = clean.get("layout") or (
        printer.display_formats[0] if printer and printer.display_formats else DEFAULT_LAYOUT
    )
    per_film = len(parse_display_format(layout))
    images = _archive_images(archive, clean)
    if not images:
        raise ComposeError("the archive has no printable images for this request")
    window = None
    if clean.get("window_width") is not None:
        window = (float(clean["window_center"]), float(clean["window_width"]))
    film_size = clean.get("film_size") or (
        printer.film_sizes[0] if printer and printer.film_sizes else None
    )
    films: list[ComposedFilm] = []
    for start in range(0, len(images), per_film):
        chunk = images[start : start + per_film]
        film = make_film(
            display_format=layout,
            images=[None] * len(chunk),
            film_size=film_size,
            orientation=clean.get("orientation"),
            copies=clean.get("copies"),
            medium_type=clean.get("medium_type"),
            film_destination=clean.get("film_destination"),
            magnification_type=clean.get("magnification_type"),
            windows=None if window is None else [window] * len(chunk),
            annotations=[clean["annotation"]] if clean.get("annotation") else [],
            polarity=clean.get("polarity"),
            label=f"film {len(films) + 1}",
        )
        composed = ComposedFilm(
            film, [image.uid for image in chunk], [image.label for image in chunk]
        )
        films.append(load_images(archive, composed) if load else composed)
    return films


def _load(archive: Archive, uid: str) -> Dataset:
    record = archive.instance(uid)
    if record is None:
        raise ComposeError(f"image {uid} is no longer in the archive")
    try:
        return dcmread(record.path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem here
        raise ComposeError(f"image {uid}: cannot read {record.path}: {exc}") from None


def _stored_print_film(
    archive: Archive, uid: str, clean: dict[str, Any], *, load: bool
) -> ComposedFilm:
    record = archive.instance(uid)
    if record is None:
        raise ComposeError(f"the archive has no Stored Print {uid}")
    if record.sop_class_uid != STORED_PRINT_SOP_CLASS:
        raise ComposeError(f"{uid} is not a Stored Print (SOP Class {record.sop_class_uid})")
    try:
        stored = dcmread(record.path)
    except Exception as exc:  # noqa: BLE001
        raise ComposeError(f"Stored Print {uid}: cannot read {record.path}: {exc}") from None
    box_items = stored.get("FilmBoxContentSequence") or [Dataset()]
    film_box = box_items[0]
    layout = str(film_box.get("ImageDisplayFormat", "") or "").strip()
    if not layout:
        raise ComposeError(f"Stored Print {uid} has no Image Display Format")
    try:
        boxes = parse_display_format(layout)
    except ValueError as exc:
        raise ComposeError(f"Stored Print {uid}: {exc}") from None
    sources: list[str | None] = [None] * len(boxes)
    labels = [""] * len(boxes)
    polarities: set[str] = set()
    for item in stored.get("ImageBoxContentSequence") or []:
        position = _as_int(item.get("ImageBoxPosition"))
        refs = item.get("ReferencedImageSequence") or []
        if position is None or not 1 <= position <= len(boxes) or not refs:
            continue
        sources[position - 1] = str(refs[0].ReferencedSOPInstanceUID)
        labels[position - 1] = f"box {position}"
        if item.get("Polarity"):
            polarities.add(str(item.Polarity).strip().upper())
    if not any(sources):
        raise ComposeError(f"Stored Print {uid} has no images")
    annotations = [
        str(item.get("TextString", "") or "")
        for item in sorted(
            stored.get("AnnotationContentSequence") or [],
            key=lambda a: _as_int(a.get("AnnotationPosition")) or 0,
        )
    ]

    def own(keyword: str) -> str | None:
        value = film_box.get(keyword) or stored.get(keyword)
        return str(value).strip() or None if value is not None else None

    copies = clean.get("copies") or _as_int(own("NumberOfCopies"))
    film = make_film(
        display_format=layout,
        images=[None] * len(boxes),
        film_size=clean.get("film_size") or own("FilmSizeID"),
        orientation=own("FilmOrientation") or clean.get("orientation"),
        copies=copies,
        medium_type=clean.get("medium_type") or own("MediumType"),
        film_destination=clean.get("film_destination") or own("FilmDestination"),
        magnification_type=own("MagnificationType") or clean.get("magnification_type"),
        annotations=[a for a in annotations if a]
        or ([clean["annotation"]] if clean.get("annotation") else []),
        polarity=(polarities.pop() if len(polarities) == 1 else None) or clean.get("polarity"),
        label=f"stored print {uid}",
    )
    composed = ComposedFilm(film, sources, labels)
    return load_images(archive, composed) if load else composed


def load_images(archive: Archive, composed: ComposedFilm) -> ComposedFilm:
    """The composed film with its images read from the archive (ComposeError when one is
    gone); Hardcopy images are shown at their full stored range unless a window is set."""
    film = composed.film
    given = list(_film_value(film, "windows") or [None] * len(composed.sources))
    images: list[Dataset | None] = []
    windows: list[tuple[float, float] | None] = []
    for n, uid in enumerate(composed.sources):
        if uid is None:
            images.append(None)
            windows.append(None)
            continue
        ds = _load(archive, uid)
        images.append(ds)
        window = given[n] if n < len(given) else None
        if window is None and str(ds.get("SOPClassUID", "")) in (
            HARDCOPY_GRAYSCALE_SOP_CLASS,
            HARDCOPY_COLOR_SOP_CLASS,
        ):
            window = _full_range_window(ds)
        windows.append(None if window is None else (float(window[0]), float(window[1])))
    values = {f.name: getattr(film, f.name) for f in fields(film)}
    values["images"] = images
    if "windows" in values:
        values["windows"] = windows if any(w is not None for w in windows) else None
    return replace(composed, film=Film(**values))


def film_doc(composed: ComposedFilm) -> dict[str, Any]:
    """A composed film as JSON (what the job records), without the images."""
    film = composed.film
    doc: dict[str, Any] = {
        name: _film_value(film, name)
        for name in (
            "display_format",
            "film_size",
            "orientation",
            "copies",
            "medium_type",
            "film_destination",
            "magnification_type",
            "polarity",
            "label",
        )
    }
    doc["annotations"] = list(_film_value(film, "annotations") or [])
    windows = _film_value(film, "windows")
    doc["windows"] = None if windows is None else [None if w is None else list(w) for w in windows]
    doc["sources"] = list(composed.sources)
    doc["labels"] = list(composed.labels)
    return doc


def film_from_doc(doc: dict[str, Any]) -> ComposedFilm:
    sources = list(doc.get("sources") or [])
    windows = doc.get("windows")
    film = make_film(
        display_format=doc["display_format"],
        images=[None] * len(sources),
        film_size=doc.get("film_size"),
        orientation=doc.get("orientation"),
        copies=doc.get("copies"),
        medium_type=doc.get("medium_type"),
        film_destination=doc.get("film_destination"),
        magnification_type=doc.get("magnification_type"),
        windows=None if windows is None else [None if w is None else tuple(w) for w in windows],
        annotations=list(doc.get("annotations") or []),
        polarity=doc.get("polarity"),
        label=doc.get("label"),
    )
    return ComposedFilm(film, sources, list(doc.get("labels") or []))


def layout_doc(films: Sequence[ComposedFilm]) -> dict[str, Any]:
    """What ``print.compose`` answers: each film's layout and the image of each box."""
    out = []
    for number, composed in enumerate(films, start=1):
        film = composed.film
        boxes = []
        for place in parse_display_format(film.display_format):
            index = place.position - 1
            uid = composed.sources[index] if index < len(composed.sources) else None
            label = composed.labels[index] if index < len(composed.labels) else ""
            boxes.append({"position": place.position, "sop_instance_uid": uid, "label": label})
        out.append(
            {
                "number": number,
                "display_format": film.display_format,
                "film_size": film.film_size,
                "orientation": film.orientation,
                "boxes": boxes,
            }
        )
    return {"films": out}


# --- printer status ----------------------------------------------------------------------------


def printer_status(
    settings: Settings, printer: Printer, *, timeout: float = REFRESH_TIMEOUT
) -> tuple[str | None, str | None, str | None]:
    """N-GET of the printer's Printer SOP instance: (Printer Status, Printer Status Info,
    error). The error says why there is no answer (unreachable, refused, ...)."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import build_context

    from appliance.scu import associate, describe_failed_association, requestor_ae

    seconds = max(1, round(timeout))
    quick = replace(
        settings, association_timeout=seconds, dimse_timeout=seconds, network_timeout=seconds
    )
    meta = print_scu.GRAYSCALE_META_SOP_CLASS if printer.grayscale else COLOR_META_SOP_CLASS
    context = build_context(meta, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    node = print_scu._printer_node(printer)
    assoc, connected = associate(requestor_ae(quick), quick, node, [context])
    if not assoc.is_established:
        return None, None, describe_failed_association(assoc, connected=connected)
    try:
        status, attrs = assoc.send_n_get(
            [], print_scu.PRINTER_SOP_CLASS, print_scu.PRINTER_SOP_INSTANCE, meta_uid=meta
        )
    finally:
        if assoc.is_established:
            assoc.release()
    if status is None or "Status" not in status:
        return None, None, "no answer to the Printer N-GET"
    code = int(status.Status)
    if code != 0 and not print_scu.is_warning(code):
        return None, None, f"Printer N-GET answered 0x{code:04X} ({print_scu.status_name(code)})"
    if attrs is None:
        return None, None, "the Printer N-GET answer has no attributes"

    def text(keyword: str) -> str | None:
        value = attrs.get(keyword)
        return str(value).strip() or None if value is not None else None

    return text("PrinterStatus"), text("PrinterStatusInfo"), None


class PrinterStatusBoard:
    """The last known status of each printer; every change is published (topic ``printer``)."""

    def __init__(self, events: EventBus | None = None) -> None:
        self._events = events
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}

    def update(
        self,
        printer: str,
        status: str | None,
        info: str | None,
        source: str,
        error: str | None = None,
    ) -> None:
        entry = {
            "printer": printer,
            "printer_status": status,
            "printer_status_info": info,
            "source": source,
            "updated": time.time(),
            "error": error,
        }
        with self._lock:
            before = self._entries.get(printer)
            self._entries[printer] = entry
        if before is not None and all(
            before[k] == entry[k] for k in ("printer_status", "printer_status_info", "error")
        ):
            return  # the same news: no event for every film
        LOG.info(
            "printer %s: %s%s%s",
            printer,
            status or "unknown",
            f" ({info})" if info else "",
            f": {error}" if error else "",
        )
        if self._events is not None:
            self._events.publish("printer", dict(entry))

    def get(self, printer: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(printer)
            return None if entry is None else dict(entry)

    def all(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: dict(entry) for name, entry in self._entries.items()}

    def forget(self, printer: str) -> None:
        with self._lock:
            self._entries.pop(printer, None)

    def refresh(
        self, settings: Settings, printers: list[Printer], *, timeout: float = REFRESH_TIMEOUT
    ) -> None:
        """Ask every printer for its status now, all at once; a printer that does not answer
        within ``timeout`` seconds is recorded with the reason."""

        def ask(printer: Printer) -> None:
            try:
                status, info, error = printer_status(settings, printer, timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - a status request must not break a listing
                status, info, error = None, None, f"status request failed: {exc}"
            self.update(printer.name, status, info, "n-get", error)

        threads = [
            threading.Thread(target=ask, args=(p,), name=f"printer-status-{p.name}", daemon=True)
            for p in printers
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 3 * timeout + 2
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


# --- the print job -----------------------------------------------------------------------------


def _printer(ctx: RunContext) -> Printer:
    try:
        return ctx.config.printer(ctx.job.target)
    except ConfigError as exc:
        raise AttemptFailed(
            f"{exc}: reroute the job to a configured printer", retryable=False
        ) from None


def film_uid(number: int) -> str:
    return f"film-{number}"


def print_one(
    settings: Settings,
    printer: Printer,
    film: Film,
    *,
    number: int,
    on_printer_status: Any = None,
) -> print_scu.PrintReport:
    """One film, one association (print_scu.print_film; its predecessor prints a one-film
    session the same way)."""
    single = getattr(print_scu, "print_film", None)
    if single is not None:
        return single(settings, printer, film, on_printer_status=on_printer_status, number=number)
    return print_scu.print_film_session(settings, printer, [film])


def make_validator(archive: Archive | None) -> Any:
    def validate_print(
        target: str,
        params: dict[str, Any],
        config: ConfigStore,
        instances: Sequence[InstanceResult] = (),
    ) -> None:
        try:
            printer = config.printer(target)
        except ConfigError as exc:
            raise JobError(str(exc)) from None
        params.pop("composed", None)  # the runner's own record, never a request's
        try:
            clean = normalise_params(params, printer)
            if archive is not None:
                compose_films(archive, clean, printer, load=False)
        except ComposeError as exc:
            raise JobError(str(exc)) from None
        params.clear()
        params.update(clean)

    return validate_print


def _summary(ctx: RunContext, films: list[ComposedFilm]) -> dict[str, Any]:
    studies: list[str] = []
    for composed in films:
        for uid in composed.sources:
            record = ctx.archive.instance(uid) if uid else None
            if record is not None:
                studies.append(record.study_uid)
                break
    for uid in ctx.job.params.get("stored_print_uids") or []:
        record = ctx.archive.instance(uid)
        if record is not None:
            studies.append(record.study_uid)
    summary: dict[str, Any] = {"films": len(films)}
    unique = list(dict.fromkeys(studies))
    if unique:
        row = ctx.archive.study(unique[0]) or {}
        summary.update(
            patient_name=row.get("patient_name") or "",
            patient_id=row.get("patient_id") or "",
            study_description=row.get("study_description") or "",
            study_date=row.get("study_date") or "",
            studies=len(unique),
        )
    return summary


def make_runner(board: PrinterStatusBoard) -> Any:
    def run_print(ctx: RunContext) -> None:
        job = ctx.job
        printer = _printer(ctx)
        plan = job.params.get("composed")
        if not job.instances or not plan:
            ctx.set_stage("composing")
            try:
                films = compose_films(ctx.archive, job.params, printer, load=False)
            except ComposeError as exc:
                raise AttemptFailed(str(exc), retryable=False) from None
            with ctx.lock:
                # Kept with the job: later attempts and a restart print exactly these films.
                job.params["composed"] = [film_doc(f) for f in films]
                job.summary = _summary(ctx, films)
            ctx.add_instances([InstanceResult(film_uid(n)) for n in range(1, len(films) + 1)])
            ctx.log(f"{len(films)} film(s) composed")
            plan = job.params["composed"]
        total = len(plan)
        for number, doc in enumerate(plan, start=1):
            uid = film_uid(number)
            before = ctx.instance(uid) or InstanceResult(uid)
            if before.done or (before.status == FAILED and not before.retryable):
                continue
            if ctx.should_stop():
                return
            ctx.set_stage(f"film {number} of {total}: rendering")
            try:
                composed = load_images(ctx.archive, film_from_doc(doc))
            except ComposeError as exc:
                ctx.record(replace(before, status=FAILED, error=str(exc), retryable=False))
                continue
            ctx.set_stage(f"film {number} of {total}: printing on {printer.name}")

            def on_status(status: str, info: str | None, source: str) -> None:
                board.update(printer.name, status, info, source)

            report = print_one(
                ctx.settings, printer, composed.film, number=number, on_printer_status=on_status
            )
            if report.printer_status is not None:
                board.update(
                    printer.name, report.printer_status, report.printer_status_info, "n-get"
                )
            elif not report.ok and not report.steps:
                board.update(printer.name, None, None, "n-get", error=report.error)
            if report.ok:
                status = WARNING if report.warnings else SUCCESS
                ctx.record(
                    replace(
                        before,
                        status=status,
                        error="; ".join(report.warnings),
                        retryable=False,
                        status_code=_last_code(report),
                    )
                )
                ctx.log(f"film {number} of {total} printed on {printer.name}")
                # Saved at once, not within SAVE_INTERVAL: a film printed must not be printed
                # again after a crash.
                ctx.flush()
                continue
            error = report.error or "print failed"
            if report.retryable:
                ctx.record(replace(before, status=PENDING, error=error, retryable=True))
                ctx.set_stage(f"held: {error}")
                raise AttemptFailed(error)
            ctx.record(
                replace(
                    before,
                    status=FAILED,
                    error=error,
                    retryable=False,
                    status_code=_last_code(report),
                )
            )
            ctx.log(f"film {number} of {total} failed: {error}")

    return run_print


def _last_code(report: print_scu.PrintReport) -> str | None:
    return report.steps[-1].status_hex if report.steps else None


def register_print(engine: JobEngine, board: PrinterStatusBoard, archive: Archive) -> None:
    engine.register("print", make_runner(board), validate=make_validator(archive))


# --- control API -------------------------------------------------------------------------------


class PrintOperations:
    """``printers.*`` and ``print.*`` of the control API (appliance.api registers them)."""

    def __init__(
        self,
        *,
        data_dir: Path,
        config: ConfigStore,
        archive: Archive,
        engine: JobEngine,
        board: PrinterStatusBoard,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.config = config
        self.archive = archive
        self.engine = engine
        self.board = board

    def register(self, control: ControlServer) -> None:
        for op, handler in (
            ("printers.list", self.printers_list),
            ("print.compose", self.print_compose),
            ("print.submit", self.print_submit),
            ("print.preview", self.print_preview),
        ):
            control.register(op, handler)
        control.register("printers.add", self.printers_add, service_only=True)
        control.register("printers.remove", self.printers_remove, service_only=True)

    @staticmethod
    def _error(code: str, text: str) -> Exception:
        from appliance.control import ApiError

        return ApiError(code, text)

    def _printer(self, name: object) -> Printer:
        if not isinstance(name, str) or not name:
            raise self._error("bad-request", "printer is required (a printer name)")
        try:
            return self.config.printer(name)
        except ConfigError:
            raise self._error("not-found", f"no printer named {name!r}") from None

    def printers_list(self, args: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
        printers = self.config.printers()
        if args.get("refresh"):
            self.board.refresh(self.config.settings(), printers)
        return [{**asdict(p), "status": self.board.get(p.name)} for p in printers]

    def printers_add(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        values = args.get("printer")
        if not isinstance(values, dict):
            raise self._error("bad-request", "printer must be an object of printer fields")
        try:
            printer = Printer.from_mapping(dict(values))
            self.config.add_printer(printer, replace=bool(args.get("replace", False)))
        except (ConfigError, TypeError) as exc:
            raise self._error("invalid", str(exc)) from None
        self.board.forget(printer.name)
        return asdict(printer)

    def printers_remove(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = args.get("name")
        self._printer(name)
        self.config.remove_printer(str(name))
        self.board.forget(str(name))
        return {"removed": name}

    def _compose(self, args: dict[str, Any], *, load: bool) -> list[ComposedFilm]:
        printer = self._printer(args["printer"]) if args.get("printer") else None
        request = {k: args[k] for k in (*SOURCE_KEYS, *COMPOSER_KEYS) if k in args}
        try:
            return compose_films(self.archive, request, printer, load=load)
        except ComposeError as exc:
            raise self._error("invalid", str(exc)) from None

    def print_compose(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return layout_doc(self._compose(args, load=False))

    def print_submit(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        from appliance.api import job_detail

        printer = self._printer(args.get("printer"))
        params = {k: args[k] for k in (*SOURCE_KEYS, *COMPOSER_KEYS) if k in args}
        priority = args.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise self._error("bad-request", "priority must be an integer")
        try:
            job = self.engine.submit("print", printer.name, params, priority=priority)
        except JobError as exc:
            raise self._error("invalid", str(exc)) from None
        return job_detail(job)

    def print_preview(self, args: dict[str, Any], caller: Caller) -> dict[str, Any]:
        from appliance.print_preview import PreviewError, render_preview

        output = args.get("output")
        also_png = False
        if output is None:
            folder = self.data_dir / "previews"
            folder.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1000000:06d}"
            path = folder / f"print-{stamp}.pdf"
            also_png = True
        else:
            if not isinstance(output, str) or not Path(output).is_absolute():
                raise self._error("bad-request", "output must be an absolute path")
            path = Path(output)
        films = self._compose(args, load=False)
        try:
            # One film in memory at a time: a long study does not load all its images.
            files = render_preview((self._loaded(f) for f in films), path, also_png=also_png)
        except PreviewError as exc:
            raise self._error("invalid", str(exc)) from None
        return {"files": [str(p) for p in files]}

    def _loaded(self, composed: ComposedFilm) -> ComposedFilm:
        try:
            return load_images(self.archive, composed)
        except ComposeError as exc:
            raise self._error("invalid", str(exc)) from None
