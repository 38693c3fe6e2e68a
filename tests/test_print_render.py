"""Film renderer: display formats, film sizes and the preformatted image box items."""

from __future__ import annotations

import struct
import zlib
from io import BytesIO

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import JPEG2000Lossless, SecondaryCaptureImageStorage

from appliance.print_render import (
    FILM_SIZES,
    ImageBoxGeometry,
    film_aspect,
    film_pixels,
    film_size_mm,
    image_box_dataset,
    item_pixels,
    parse_display_format,
    render_film_png,
    render_image_box,
)
from tests.factories import ct_dataset

# --- display formats and films ----------------------------------------------------------------


def test_standard_format_is_row_major_grid() -> None:
    boxes = parse_display_format("STANDARD\\3,2")
    assert len(boxes) == 6
    assert [b.position for b in boxes] == [1, 2, 3, 4, 5, 6]
    assert boxes[0] == ImageBoxGeometry(1, 0.0, 0.0, 1 / 3, 0.5)
    assert boxes[1].x == pytest.approx(1 / 3) and boxes[1].y == 0.0
    assert boxes[3].x == 0.0 and boxes[3].y == 0.5
    assert parse_display_format("standard\\1,1") == [ImageBoxGeometry(1, 0.0, 0.0, 1.0, 1.0)]


def test_row_format() -> None:
    boxes = parse_display_format("ROW\\2,1")
    assert [(b.x, b.y, b.width, b.height) for b in boxes] == [
        (0.0, 0.0, 0.5, 0.5),
        (0.5, 0.0, 0.5, 0.5),
        (0.0, 0.5, 1.0, 0.5),
    ]


def test_col_format_is_numbered_top_to_bottom() -> None:
    boxes = parse_display_format("COL\\1,2")
    assert [(b.position, b.x, b.y, b.width, b.height) for b in boxes] == [
        (1, 0.0, 0.0, 0.5, 1.0),
        (2, 0.5, 0.0, 0.5, 0.5),
        (3, 0.5, 0.5, 0.5, 0.5),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "STANDARD",
        "STANDARD\\",
        "STANDARD\\2",
        "STANDARD\\2,2,2",
        "STANDARD\\0,2",
        "STANDARD\\a,2",
        "STANDARD\\-1,2",
        "STANDARD\\99,1",
        "ROW\\2,,1",
        "SLIDE",
        "CUSTOM\\1",
        "GRID\\2,2",
    ],
)
def test_bad_display_formats_raise(bad: str) -> None:
    with pytest.raises(ValueError, match="Image Display Format"):
        parse_display_format(bad)


def test_box_pixels_cover_the_film_without_gaps() -> None:
    boxes = parse_display_format("STANDARD\\3,3")
    rects = [b.pixels(1000, 1001) for b in boxes]
    assert sum(w * h for _, _, w, h in rects) == 1000 * 1001
    assert rects[4] == (333, 334, 334, 333)


def test_film_sizes_and_orientation() -> None:
    for name in (
        "8INX10IN",
        "10INX12IN",
        "11INX14IN",
        "14INX14IN",
        "14INX17IN",
        "24CMX30CM",
        "24CMX24CM",
        "A4",
        "A3",
    ):
        assert name in FILM_SIZES
    assert film_size_mm("14INX17IN") == pytest.approx((355.6, 431.8))
    assert film_size_mm("14INX17IN", "LANDSCAPE") == pytest.approx((431.8, 355.6))
    assert film_aspect("8INX10IN", "PORTRAIT") == pytest.approx(0.8)
    assert film_aspect("A4", "landscape") == pytest.approx(297 / 210)
    assert film_pixels("14INX17IN", "PORTRAIT", 100) == (1400, 1700)
    assert film_pixels("24CMX30CM", "LANDSCAPE", 254) == (3000, 2400)
    with pytest.raises(ValueError, match="Film Size ID"):
        film_size_mm("13INX13IN")
    with pytest.raises(ValueError, match="Film Orientation"):
        film_size_mm("A4", "SIDEWAYS")


# --- grayscale rendering ----------------------------------------------------------------------


def _ct_with(values: np.ndarray, **attributes: object) -> Dataset:
    """A CT (Rescale Intercept -1024) whose stored pixels are ``values`` (uint16)."""
    rows, columns = values.shape
    ds = ct_dataset(rows=rows, columns=columns)
    ds.PixelData = values.astype("<u2").tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


# stored 0 → -1024 HU, 1024 → 0 HU, 1064 → 40 HU (window centre), 2000 → 976 HU
KNOWN = np.array([[0, 1024, 1064, 2000]] * 4, dtype=np.uint16)


def test_ct_window_to_8_bit() -> None:
    item = render_image_box(_ct_with(KNOWN), 4, 4, bits=8, window=(40, 400), color=False)
    assert (item.BitsAllocated, item.BitsStored, item.HighBit) == (8, 8, 7)
    assert (item.Rows, item.Columns) == (4, 4)
    pixels = item_pixels(item)
    assert pixels.dtype == np.uint8
    # below the window → 0; 0 HU → ((0 - 39.5) / 399 + 0.5) * 255; centre → mid-grey; above → 255
    assert pixels[0].tolist() == [0, 102, 128, 255]


def test_ct_window_to_12_bit() -> None:
    item = render_image_box(_ct_with(KNOWN), 4, 4, bits=12, window=(40, 400), color=False)
    assert (item.BitsAllocated, item.BitsStored, item.HighBit) == (16, 12, 11)
    assert item["PixelData"].VR == "OW"
    assert len(item.PixelData) == 4 * 4 * 2
    assert item_pixels(item)[0].tolist() == [0, 1642, 2053, 4095]


def test_rescale_slope_is_applied() -> None:
    # slope 2: stored 532 → 1064 - 1024 = 40 HU, the window centre
    values = np.array([[0, 532]], dtype=np.uint16)
    item = render_image_box(
        _ct_with(values, RescaleSlope=2), 2, 1, bits=8, window=(40, 400), color=False
    )
    assert item_pixels(item).tolist() == [[0, 128]]


def test_image_window_first_value_is_used() -> None:
    ds = _ct_with(KNOWN, WindowCenter=[40, 300], WindowWidth=[400, 1500])
    item = render_image_box(ds, 4, 4, bits=8, window=None, color=False)
    assert item_pixels(item)[0].tolist() == [0, 102, 128, 255]
    # a given window overrides the image's own
    item = render_image_box(ds, 4, 4, bits=8, window=(1000, 100), color=False)
    assert item_pixels(item)[0].tolist() == [0, 0, 0, 67]


def test_voi_lut_sequence() -> None:
    ds = _ct_with(np.array([[0, 1, 2, 5]], dtype=np.uint16), RescaleIntercept=0)
    lut = Dataset()
    lut.LUTDescriptor = [3, 0, 8]
    lut.LUTData = [0, 100, 255]
    ds.VOILUTSequence = [lut]
    item = render_image_box(ds, 4, 1, bits=8, window=None, color=False)
    assert item_pixels(item).tolist() == [[0, 100, 255, 255]]


def test_min_max_when_no_voi() -> None:
    ds = _ct_with(np.array([[100, 200, 300]], dtype=np.uint16))
    item = render_image_box(ds, 3, 1, bits=12, window=None, color=False)
    assert item_pixels(item).tolist() == [[0, 2048, 4095]]


def test_monochrome1_is_inverted_to_monochrome2() -> None:
    ds = _ct_with(KNOWN, PhotometricInterpretation="MONOCHROME1")
    item = render_image_box(ds, 4, 4, bits=8, window=(40, 400), color=False)
    assert item.PhotometricInterpretation == "MONOCHROME2"
    assert item_pixels(item)[0].tolist() == [255, 153, 127, 0]


def test_multiframe_uses_first_frame() -> None:
    ds = _ct_with(np.zeros((2, 2), dtype=np.uint16))
    first = np.full((2, 2), 1064, dtype="<u2")
    second = np.zeros((2, 2), dtype="<u2")
    ds.NumberOfFrames = 2
    ds.PixelData = first.tobytes() + second.tobytes()
    item = render_image_box(ds, 2, 2, bits=8, window=(40, 400), color=False)
    assert item_pixels(item).tolist() == [[128, 128], [128, 128]]


def test_aspect_ratio_kept_and_fitted() -> None:
    wide = _ct_with(np.full((100, 200), 1064, dtype=np.uint16))
    item = render_image_box(wide, 300, 300, bits=8, window=(40, 400), color=False)
    assert (item.Columns, item.Rows) == (300, 150)
    assert set(item_pixels(item).ravel().tolist()) == {128}
    ct = ct_dataset(rows=64, columns=64)
    item = render_image_box(ct, 2048, 2560, bits=12, window=None, color=False)
    assert (item.Columns, item.Rows) == (2048, 2048)
    item = render_image_box(ct, 500, 200, bits=8, window=None, color=False)
    assert (item.Columns, item.Rows) == (200, 200)


def test_downscale_keeps_edges() -> None:
    values = np.zeros((512, 512), dtype=np.uint16)
    values[:, 256:] = 2000
    item = render_image_box(_ct_with(values), 100, 100, bits=8, window=(40, 400), color=False)
    pixels = item_pixels(item)
    assert pixels.shape == (100, 100)
    assert pixels[:, :49].max() == 0
    assert pixels[:, 51:].min() == 255


def test_jpeg2000_compressed_input_decodes() -> None:
    ds = _ct_with(np.tile(KNOWN, (16, 16)))
    ds.compress(JPEG2000Lossless)
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    item = render_image_box(ds, 64, 64, bits=8, window=(40, 400), color=False)
    assert item_pixels(item)[0, :8].tolist() == [0, 102, 128, 255] * 2


def test_dataset_without_file_meta() -> None:
    ds = _ct_with(KNOWN)
    del ds.file_meta
    item = render_image_box(ds, 4, 4, bits=8, window=(40, 400), color=False)
    assert item_pixels(item)[0].tolist() == [0, 102, 128, 255]


def test_bad_arguments() -> None:
    ds = _ct_with(KNOWN)
    with pytest.raises(ValueError, match="bits"):
        render_image_box(ds, 4, 4, bits=16, window=None, color=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window width"):
        render_image_box(ds, 4, 4, bits=8, window=(40, 0), color=False)
    del ds.PixelData
    with pytest.raises(ValueError, match="Pixel Data"):
        render_image_box(ds, 4, 4, bits=8, window=None, color=False)


# --- colour -----------------------------------------------------------------------------------


def _rgb(values: np.ndarray) -> Dataset:
    rows, columns, _ = values.shape
    ds = ct_dataset(rows=rows, columns=columns)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    for keyword in ("RescaleIntercept", "RescaleSlope"):
        delattr(ds, keyword)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = values.astype(np.uint8).tobytes()
    return ds


def test_rgb_input_to_color_item_is_planar() -> None:
    values = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    item = render_image_box(_rgb(values), 2, 2, bits=8, window=None, color=True)
    assert item.SamplesPerPixel == 3
    assert item.PhotometricInterpretation == "RGB"
    assert item.PlanarConfiguration == 1
    assert (item.BitsAllocated, item.BitsStored, item.HighBit, item.PixelRepresentation) == (
        8,
        8,
        7,
        0,
    )
    # colour-by-plane: all red samples, then all green, then all blue
    assert item.PixelData == bytes([255, 0, 0, 10, 0, 255, 0, 20, 0, 0, 255, 30])
    assert item_pixels(item).tolist() == values.tolist()


def test_rgb_input_to_grayscale_uses_luminance() -> None:
    values = np.array([[[255, 255, 255], [255, 0, 0]]], dtype=np.uint8)
    item = render_image_box(_rgb(values), 2, 1, bits=8, window=None, color=False)
    assert item.PhotometricInterpretation == "MONOCHROME2"
    assert item_pixels(item).tolist() == [[255, 76]]


def test_grayscale_input_to_color_repeats_planes() -> None:
    item = render_image_box(_ct_with(KNOWN), 4, 4, bits=8, window=(40, 400), color=True)
    pixels = item_pixels(item)
    assert pixels[0].tolist() == [[0] * 3, [102] * 3, [128] * 3, [255] * 3]


def test_jpeg_baseline_ybr_input_decodes_to_rgb() -> None:
    path = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")
    assert path is not None
    ds = dcmread(path)
    assert ds.PhotometricInterpretation == "YBR_FULL"
    item = render_image_box(ds, 100, 100, bits=8, window=None, color=True)
    pixels = item_pixels(item).astype(int)
    assert (item.Rows, item.Columns) == (100, 100)
    # the top band is red, the bottom right is white (lossy: allow a few levels)
    assert np.abs(pixels[5, 5] - [255, 0, 0]).max() <= 3
    assert np.abs(pixels[95, 95] - [255, 255, 255]).max() <= 3


# --- the N-SET attribute list -----------------------------------------------------------------

GRAYSCALE_ITEM = {
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelData",
}


def _implicit_round_trip(ds: Dataset) -> Dataset:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, ds)
    return read_dataset(BytesIO(fp.getvalue()), is_implicit_VR=True, is_little_endian=True)


@pytest.mark.parametrize("bits", [8, 12])
def test_grayscale_nset_has_every_attribute(bits: int) -> None:
    item = render_image_box(
        ct_dataset(rows=32, columns=48), 60, 60, bits=bits, window=(40, 400), color=False
    )  # type: ignore[arg-type]
    box = image_box_dataset(3, item, polarity="NORMAL")
    assert box.ImageBoxPosition == 3
    assert box.Polarity == "NORMAL"
    assert "BasicColorImageSequence" not in box
    sent = _implicit_round_trip(box)
    received = sent.BasicGrayscaleImageSequence[0]
    assert {element.keyword for element in received} == GRAYSCALE_ITEM
    assert "PixelAspectRatio" not in received
    assert received.PhotometricInterpretation == "MONOCHROME2"
    assert received.SamplesPerPixel == 1 and received.PixelRepresentation == 0
    assert (received.Columns, received.Rows) == (60, 40)
    assert len(received.PixelData) == 60 * 40 * (1 if bits == 8 else 2)
    assert item_pixels(received).tolist() == item_pixels(item).tolist()


def test_color_nset_has_every_attribute() -> None:
    item = render_image_box(ct_dataset(rows=8, columns=8), 8, 8, bits=8, window=None, color=True)
    box = image_box_dataset(1, item)
    assert "Polarity" not in box
    received = _implicit_round_trip(box).BasicColorImageSequence[0]
    assert {element.keyword for element in received} == GRAYSCALE_ITEM | {"PlanarConfiguration"}
    assert received.PlanarConfiguration == 1
    assert len(received.PixelData) == 8 * 8 * 3


# --- preview ----------------------------------------------------------------------------------


def _png_size_and_pixels(png: bytes) -> tuple[int, int, int, bytes]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    offset = 8
    idat = b""
    width = height = color_type = 0
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind = png[offset + 4 : offset + 8]
        data = png[offset + 8 : offset + 8 + length]
        crc = struct.unpack(">I", png[offset + 8 + length : offset + 12 + length])[0]
        assert zlib.crc32(kind + data) & 0xFFFFFFFF == crc
        if kind == b"IHDR":
            width, height, _, color_type = struct.unpack(">IIBB", data[:10])
        elif kind == b"IDAT":
            idat += data
        offset += 12 + length
    return width, height, color_type, zlib.decompress(idat)


def test_film_png_places_images_in_boxes() -> None:
    boxes = parse_display_format("STANDARD\\2,1")
    film_columns, film_rows = film_pixels("8INX10IN", "LANDSCAPE", 10)
    assert (film_columns, film_rows) == (100, 80)
    white = _ct_with(np.full((10, 10), 2000, dtype=np.uint16))
    left = boxes[0].pixels(film_columns, film_rows)
    item = render_image_box(white, left[2], left[3], bits=12, window=(40, 400), color=False)
    png = render_film_png([(boxes[0], item), (boxes[1], None)], "8INX10IN", "LANDSCAPE", 10)
    width, height, color_type, raw = _png_size_and_pixels(png)
    assert (width, height, color_type) == (100, 80, 0)
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(80, 101)[:, 1:]
    # a 50x80 box holds a 50x50 white square centred vertically; the rest is black
    assert rows[15:65, 0:50].min() == 255
    assert rows[:15].max() == 0 and rows[65:].max() == 0
    assert rows[:, 50:].max() == 0
