"""Film previews: the PDF is well formed (read back by a parser written here, and by qpdf and
pdfinfo), pages are film-sized, PNGs are numbered, files are written whole."""

from __future__ import annotations

import re
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from appliance.print_jobs import ComposedFilm, make_film
from appliance.print_preview import PreviewError, film_canvas, png_paths, render_preview
from appliance.print_render import MM_PER_INCH
from tests.factories import ct_dataset

OBJECT = re.compile(rb"(\d+) 0 obj\n(.*?)\nendobj\n", re.S)


def parse_pdf(data: bytes) -> dict[int, bytes]:
    """Objects by number, after checking the header, the xref table offsets and the trailer."""
    assert data.startswith(b"%PDF-1.4\n")
    assert data.rstrip().endswith(b"%%EOF")
    startxref = int(re.search(rb"startxref\n(\d+)\n%%EOF", data).group(1))  # type: ignore[union-attr]
    assert data[startxref:].startswith(b"xref\n")
    header = re.match(rb"xref\n0 (\d+)\n", data[startxref:])
    assert header is not None
    count = int(header.group(1))
    entries = data[startxref + header.end() :].split(b"\n")[:count]
    objects = {int(m.group(1)): m.group(2) for m in OBJECT.finditer(data)}
    assert len(objects) == count - 1
    for number, entry in enumerate(entries[1:], start=1):
        offset = int(entry[:10])
        assert data[offset:].startswith(b"%d 0 obj\n" % number), number
    trailer = data[data.index(b"trailer") :]
    assert b"/Size %d" % count in trailer and b"/Root 1 0 R" in trailer
    return objects


def stream(body: bytes) -> tuple[bytes, bytes]:
    dictionary, _, rest = body.partition(b"\nstream\n")
    length = int(re.search(rb"/Length (\d+)", dictionary).group(1))  # type: ignore[union-attr]
    data = rest[:length]
    assert rest[length:] == b"\nendstream"
    return dictionary, data


def films(count: int, layout: str = "STANDARD\\2,2", **extra: object) -> list[ComposedFilm]:
    made = []
    for number in range(count):
        images = [ct_dataset(instance_number=n + 1, rows=32, columns=32) for n in range(3)]
        film = make_film(display_format=layout, images=[*images, None], **extra)
        made.append(ComposedFilm(film, [str(i.SOPInstanceUID) for i in images] + [None]))
        del number
    return made


def test_pdf_one_page_per_film_sized_as_the_film(tmp_path: Path) -> None:
    output = tmp_path / "films.pdf"
    written = render_preview(
        films(3, film_size="8INX10IN", orientation="LANDSCAPE"), output, dpi=30
    )
    assert written == [output]
    data = output.read_bytes()
    objects = parse_pdf(data)
    assert objects[1] == b"<< /Type /Catalog /Pages 2 0 R >>"
    assert b"/Count 3" in objects[2]
    pages = [body for body in objects.values() if body.startswith(b"<< /Type /Page ")]
    assert len(pages) == 3
    width, height = 10 * 72, 8 * 72  # landscape 8x10 inch, in points
    for page in pages:
        assert f"/MediaBox [0 0 {width:.2f} {height:.2f}]".encode() in page
        image_number = int(re.search(rb"/Im0 (\d+) 0 R", page).group(1))  # type: ignore[union-attr]
        dictionary, compressed = stream(objects[image_number])
        assert b"/Filter /FlateDecode" in dictionary and b"/DeviceGray" in dictionary
        columns = int(re.search(rb"/Width (\d+)", dictionary).group(1))  # type: ignore[union-attr]
        rows = int(re.search(rb"/Height (\d+)", dictionary).group(1))  # type: ignore[union-attr]
        assert (columns, rows) == (300, 240)
        assert len(zlib.decompress(compressed)) == columns * rows
    for tool, args in (("qpdf", ["--check"]), ("pdfinfo", [])):
        # Installed by image-build/setup-debian.sh: independent readers of the PDF.
        assert shutil.which(tool), f"{tool} is not installed (qpdf, poppler-utils)"
        result = subprocess.run(
            [tool, *args, str(output)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        if tool == "pdfinfo":
            assert re.search(r"Pages:\s+3", result.stdout)
            assert re.search(r"Page size:\s+720 x 576 pts", result.stdout)
    assert not list(tmp_path.glob(".*.part"))


def test_png_numbered_when_more_than_one(tmp_path: Path) -> None:
    output = tmp_path / "film.png"
    written = render_preview(films(2), output, dpi=20)
    assert written == [tmp_path / "film-1.png", tmp_path / "film-2.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in written)
    assert render_preview(films(1), output, dpi=20) == [output]
    assert png_paths(output, 3)[2] == tmp_path / "film-3.png"
    both = render_preview(films(2), tmp_path / "x.pdf", dpi=20, also_png=True)
    assert [p.name for p in both] == ["x.pdf", "x-1.png", "x-2.png"]


def test_canvas_shows_layout_images_and_polarity() -> None:
    normal = film_canvas(films(1, film_size="14INX14IN")[0], dpi=20)
    assert normal.shape == (280, 280)
    # the empty fourth box (bottom right) is black; the images are not
    assert normal[150:270, 150:270].max() == 0
    assert normal[10:130, 10:130].max() > 0
    reverse = film_canvas(films(1, film_size="14INX14IN", polarity="REVERSE")[0], dpi=20)
    box = (slice(30, 110), slice(30, 110))
    assert np.allclose(reverse[box].astype(int), 255 - normal[box].astype(int), atol=1)
    width_mm = 14 * MM_PER_INCH
    assert round(width_mm / MM_PER_INCH * 20) == 280


def test_bad_output_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PreviewError, match=".pdf or a .png"):
        render_preview(films(1), tmp_path / "film.tiff")
    with pytest.raises(PreviewError, match="not a folder"):
        render_preview(films(1), tmp_path / "missing" / "film.pdf")
    with pytest.raises(PreviewError, match="no films"):
        render_preview([], tmp_path / "film.pdf")
