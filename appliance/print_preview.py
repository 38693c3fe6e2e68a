"""Film previews: each composed film rendered as the imager would print it, as PNG or PDF.

:func:`render_preview` renders every film of a print request with the same renderer the Print
SCU uses (``print_render.render_image_box``: Modality LUT, the film's window or the image's VOI,
aspect kept, centred in its box), on a canvas of the film's size at the preview resolution.
Output: a ``.pdf`` path gets one multi-page PDF (one page per film, the page the size of the
film, each page one Flate-compressed image; written by hand, no PDF library), a ``.png`` path
one PNG per film (``name.png`` for one film, ``name-1.png``, ``name-2.png``, ... for more).
Every file is written atomically (``fileio.atomic_write_bytes``).

Shown: layout, box borders (black), empty boxes, images, Polarity REVERSE. Not shown:
annotation text (no font renderer), the printer's own densities and Presentation LUT.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from appliance.fileio import atomic_write_bytes
from appliance.print_render import (
    MM_PER_INCH,
    encode_png,
    film_pixels,
    film_size_mm,
    fitted_size,
    item_pixels,
    parse_display_format,
    render_image_box,
    resize,
)

if TYPE_CHECKING:
    from appliance.print_jobs import ComposedFilm

DEFAULT_DPI = 100.0
#: Film size of a preview when neither the request nor the printer names one.
DEFAULT_FILM_SIZE = "14INX17IN"
POINTS_PER_INCH = 72.0
#: Grey of the film between the boxes and of empty boxes (0 black .. 255 white): film is black
#: where nothing is exposed.
BORDER = 0
EMPTY = 0


class PreviewError(ValueError):
    """The preview cannot be made (a bad output name, an image that will not render)."""


def film_canvas(composed: ComposedFilm, dpi: float = DEFAULT_DPI) -> np.ndarray:
    """The film as 8-bit pixels: (rows, columns) grey, or (rows, columns, 3) when an image is
    colour."""
    film = composed.film
    film_size = film.film_size or DEFAULT_FILM_SIZE
    orientation = film.orientation or "PORTRAIT"
    columns, rows = film_pixels(film_size, orientation, dpi)
    boxes = parse_display_format(film.display_format)
    windows = list(getattr(film, "windows", None) or [])
    items = []
    for place, image in zip(boxes, list(film.images) + [None] * len(boxes), strict=False):
        if image is None:
            items.append((place, None))
            continue
        _, _, width, height = place.pixels(columns, rows)
        index = place.position - 1
        window = windows[index] if index < len(windows) else None
        color = int(image.get("SamplesPerPixel", 1) or 1) > 1 or (
            str(image.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR"
        )
        try:
            item = render_image_box(image, width, height, bits=8, window=window, color=color)
        except (ValueError, NotImplementedError, AttributeError, RuntimeError) as exc:
            uid = image.get("SOPInstanceUID", "?")
            raise PreviewError(
                f"image {uid} (box {place.position}) does not render: {exc}"
            ) from None
        items.append((place, item))
    is_color = any(item is not None and int(item.SamplesPerPixel) == 3 for _, item in items)
    shape: tuple[int, ...] = (rows, columns, 3) if is_color else (rows, columns)
    canvas = np.full(shape, BORDER, dtype=np.uint8)
    for place, item in items:
        left, top, width, height = place.pixels(columns, rows)
        # one pixel of border between boxes, so the layout shows on the preview
        inner = canvas[top + 1 : top + height - 1, left + 1 : left + width - 1]
        inner[...] = EMPTY
        if item is None:
            continue
        pixels = item_pixels(item).astype(np.float32)
        if is_color and pixels.ndim == 2:
            pixels = np.repeat(pixels[:, :, None], 3, axis=2)
        out_columns, out_rows = fitted_size(pixels.shape[0], pixels.shape[1], width, height)
        if (out_rows, out_columns) != pixels.shape[:2]:
            pixels = resize(pixels, out_rows, out_columns)
        if str(getattr(film, "polarity", None) or "").upper() == "REVERSE":
            pixels = 255.0 - pixels
        y = top + (height - out_rows) // 2
        x = left + (width - out_columns) // 2
        canvas[y : y + out_rows, x : x + out_columns] = np.rint(np.clip(pixels, 0, 255))
    return canvas


# --- PDF ---------------------------------------------------------------------------------------


class PdfWriter:
    """A minimal PDF 1.4: one page per image, each page the given size in millimetres."""

    def __init__(self, title: str = "Film preview") -> None:
        self.title = title
        self._objects: list[bytes] = []
        self._pages: list[int] = []
        # 1: catalog, 2: page tree, 3: info; filled at the end
        for _ in range(3):
            self._objects.append(b"")

    def _add(self, body: bytes) -> int:
        self._objects.append(body)
        return len(self._objects)

    @staticmethod
    def _stream(dictionary: bytes, data: bytes) -> bytes:
        return (
            b"<< "
            + dictionary
            + b" /Length "
            + str(len(data)).encode()
            + b" >>\nstream\n"
            + data
            + b"\nendstream"
        )

    def add_page(self, pixels: np.ndarray, width_mm: float, height_mm: float) -> None:
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        rows, columns = pixels.shape[:2]
        space = b"/DeviceRGB" if pixels.ndim == 3 else b"/DeviceGray"
        image = self._add(
            self._stream(
                b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace %s "
                b"/BitsPerComponent 8 /Filter /FlateDecode" % (columns, rows, space),
                zlib.compress(pixels.tobytes(), 6),
            )
        )
        width = width_mm / MM_PER_INCH * POINTS_PER_INCH
        height = height_mm / MM_PER_INCH * POINTS_PER_INCH
        content = self._add(
            self._stream(b"", b"q %.2f 0 0 %.2f 0 0 cm /Im0 Do Q" % (width, height))
        )
        page = self._add(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %.2f %.2f] "
            b"/Resources << /XObject << /Im0 %d 0 R >> >> /Contents %d 0 R >>"
            % (width, height, image, content)
        )
        self._pages.append(page)

    def to_bytes(self) -> bytes:
        if not self._pages:
            raise PreviewError("a PDF needs at least one page")
        kids = b" ".join(b"%d 0 R" % page for page in self._pages)
        self._objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
        self._objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(self._pages))
        stamp = time.strftime("D:%Y%m%d%H%M%S")
        self._objects[2] = b"<< /Title %s /Producer (dicom-appliance) /CreationDate (%s) >>" % (
            _pdf_text(self.title),
            stamp.encode(),
        )
        out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        offsets = []
        for number, body in enumerate(self._objects, start=1):
            offsets.append(len(out))
            out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
        xref = len(out)
        out += b"xref\n0 %d\n" % (len(self._objects) + 1)
        out += b"0000000000 65535 f \n"
        for offset in offsets:
            out += b"%010d 00000 n \n" % offset
        out += b"trailer\n<< /Size %d /Root 1 0 R /Info 3 0 R >>\n" % (len(self._objects) + 1)
        out += b"startxref\n%d\n%%%%EOF\n" % xref
        return bytes(out)


def _pdf_text(text: str) -> bytes:
    """A PDF literal string of printable ASCII."""
    safe = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
    safe = safe.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return b"(" + safe.encode("ascii") + b")"


# --- files -------------------------------------------------------------------------------------


def png_paths(output: Path, count: int) -> list[Path]:
    """``name.png`` for one film, ``name-1.png`` ... for more."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{n}{output.suffix}") for n in range(1, count + 1)]


def render_preview(
    composed_films: Iterable[ComposedFilm],
    output: Path,
    dpi: float = DEFAULT_DPI,
    *,
    also_png: bool = False,
) -> list[Path]:
    """Render the films into ``output`` (``.pdf``: one PDF; ``.png``: one PNG per film);
    with ``also_png`` a PDF gets the PNGs beside it too. Returns the files written."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".pdf", ".png"):
        raise PreviewError(f"{output}: the preview is a .pdf or a .png file")
    if not output.parent.is_dir():
        raise PreviewError(f"{output.parent} is not a folder")
    pdf = PdfWriter(title=f"Film preview {output.stem}") if suffix == ".pdf" else None
    written: list[Path] = []
    count = 0
    png_base = output if suffix == ".png" else output.with_suffix(".png")
    pngs: list[tuple[int, bytes]] = []
    for composed in composed_films:
        count += 1
        canvas = film_canvas(composed, dpi)
        film = composed.film
        if pdf is not None:
            width, height = film_size_mm(
                film.film_size or DEFAULT_FILM_SIZE, film.orientation or "PORTRAIT"
            )
            pdf.add_page(canvas, width, height)
        if pdf is None or also_png:
            # Encoded at once: a PNG is a fraction of the canvas, and only the count decides
            # the names.
            pngs.append((count, encode_png(canvas)))
        del canvas
    if count == 0:
        raise PreviewError("no films to preview")
    if pdf is not None:
        atomic_write_bytes(output, pdf.to_bytes())
        written.append(output)
    for path, (_, data) in zip(png_paths(png_base, count), pngs, strict=False):
        atomic_write_bytes(path, data)
        written.append(path)
    return written
