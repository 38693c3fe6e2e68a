"""Burned-in annotation: risk per modality and SOP class, rules, and blanking regions in every
frame of uncompressed, RLE, JPEG 2000 and JPEG input (decoded with pylibjpeg), stored as
Explicit VR Little Endian with every other pixel unchanged."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from appliance.config import ConfigError, ConfigStore, PixelRegionRule
from appliance.pixel_guard import PixelError, PixelPolicy, Region, clean_pixels
from tests.peers import dcmtk

US_CLASS = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
XA_CLASS = "1.2.840.10008.5.1.4.1.1.12.1"
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"
ROWS, COLUMNS = 48, 64
TEXT_BAND = Region(0, 0, 40, 6)  # where the generated images carry their "text"


def image(
    *,
    modality: str = "US",
    sop_class: str = US_CLASS,
    frames: int = 1,
    rgb: bool = False,
    burned: str | None = None,
    manufacturer: str = "ACME",
    photometric: str | None = None,
    dtype: type = np.uint8,
    bits_stored: int | None = None,
) -> Dataset:
    """A small image with a bright 'text' band in its top left and noise elsewhere."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    ds.PatientName = "DOE^JANE"
    if burned is not None:
        ds.BurnedInAnnotation = burned
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    bits = bits_stored or info.bits
    high = min(int(info.max), (1 << (bits - (1 if info.min < 0 else 0))) - 1)
    low = 1 if info.min == 0 else -high
    shape = (frames, ROWS, COLUMNS) + ((3,) if rgb else ())
    arr = rng.integers(low, high // 2, size=shape, dtype=dtype)
    arr[:, TEXT_BAND.y : TEXT_BAND.height, TEXT_BAND.x : TEXT_BAND.width] = high
    if frames == 1:
        arr = arr[0]
    ds.set_pixel_data(
        arr, photometric or ("RGB" if rgb else "MONOCHROME2"), bits, generate_instance_uid=False
    )
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def policy(**rule: object) -> PixelPolicy:
    values: dict[str, object] = {
        "modality": "US",
        "columns": COLUMNS,
        "rows": ROWS,
        "regions": [[TEXT_BAND.x, TEXT_BAND.y, TEXT_BAND.width, TEXT_BAND.height]],
    }
    values.update(rule)
    return PixelPolicy([PixelRegionRule(**values)])  # type: ignore[arg-type]


def frames_of(ds: Dataset) -> np.ndarray:
    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames") or 1)
    return arr.reshape(frames, int(ds.Rows), int(ds.Columns), -1)


def assert_blanked(before: np.ndarray, after: Dataset, regions: list[Region], black: int) -> None:
    got = frames_of(after)
    assert got.shape == before.shape
    mask = np.zeros(before.shape, dtype=bool)
    for r in regions:
        mask[:, r.y : r.y + r.height, r.x : r.x + r.width, :] = True
    assert (got[mask] == black).all(), "a region kept some of its pixels"
    assert np.array_equal(got[~mask], before[~mask]), "pixels outside the regions changed"


def round_trip(ds: Dataset, tmp_path: Path) -> Dataset:
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


# --- risk ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "risky", "reason"),
    [
        ({"modality": "US"}, True, "US without Burned In Annotation"),
        ({"modality": "US", "burned": "NO"}, False, "is NO"),
        ({"modality": "US", "burned": "YES"}, True, "is YES"),
        ({"modality": "CT", "sop_class": CT_CLASS}, False, "rarely"),
        ({"modality": "CT", "sop_class": CT_CLASS, "burned": "YES"}, True, "is YES"),
        ({"modality": "CT", "sop_class": SC_CLASS}, True, "secondary capture"),
        ({"modality": "XA", "sop_class": XA_CLASS}, True, "XA without"),
        ({"modality": "RF", "sop_class": "1.2.840.10008.5.1.4.1.1.12.2"}, True, "RF without"),
        ({"modality": "ES", "sop_class": "1.2.840.10008.5.1.4.1.1.77.1.1"}, True, "endoscopy"),
        ({"modality": "MR", "sop_class": "1.2.840.10008.5.1.4.1.1.4"}, False, "rarely"),
        ({"modality": "CT", "sop_class": US_MULTIFRAME}, True, "ultrasound multi-frame"),
        ({"modality": "CT", "sop_class": "1.2.840.10008.5.1.4.1.1.77.1.4"}, True, "visible"),
        ({"modality": "CT", "sop_class": "1.2.840.10008.5.1.4.1.1.71"}, False, "rarely"),
    ],
)
def test_risk_per_modality_and_sop_class(kwargs, risky, reason):
    risk = PixelPolicy().assess(image(**kwargs))
    assert risk.risky is risky
    assert reason in risk.reason


def test_no_pixels_is_no_risk_but_an_encapsulated_document_is():
    ds = Dataset()
    ds.Modality = "SR"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    assert not PixelPolicy().assess(ds).risky
    pdf = Dataset()
    pdf.Modality = "DOC"
    pdf.SOPClassUID = PDF_CLASS
    pdf.EncapsulatedDocument = b"%PDF-1.4 DOE^JANE"
    risk = PixelPolicy().assess(pdf)
    assert risk.risky and "encapsulated document" in risk.reason
    decision = policy().decide(pdf, clean_pixel_data=True)
    assert decision.action == "hold"
    assert policy().decide(pdf, clean_pixel_data=True, confirmed=True).action == "pass"


def test_us_with_burned_in_text_is_held_until_cleaned_or_confirmed():
    ds = image(modality="US")
    held = PixelPolicy().decide(ds, clean_pixel_data=False)
    assert held.action == "hold"
    assert held.reason.startswith("burned-in annotation possible (US without Burned In")
    assert "clean pixel regions or confirm" in held.reason
    no_rule = PixelPolicy().decide(ds, clean_pixel_data=True)
    assert no_rule.action == "hold" and "no pixel region rule for US ACME 64x48" in no_rule.reason
    # A rule alone does nothing unless the profile cleans pixels.
    assert policy().decide(ds, clean_pixel_data=False).action == "hold"
    cleaning = policy().decide(ds, clean_pixel_data=True)
    assert cleaning.action == "clean" and cleaning.regions == (TEXT_BAND,)
    released = PixelPolicy().decide(ds, clean_pixel_data=False, confirmed=True)
    assert released.action == "pass" and "released by the operator" in released.reason
    assert PixelPolicy().decide(image(burned="NO"), clean_pixel_data=False).action == "pass"


def test_the_most_specific_rule_wins_and_size_must_match():
    generic = PixelRegionRule("US", COLUMNS, ROWS, [[0, 0, 10, 10]])
    vendor = PixelRegionRule("us", COLUMNS, ROWS, [[0, 0, 20, 20]], manufacturer="acme")
    model = PixelRegionRule(
        "US", COLUMNS, ROWS, [[0, 0, 30, 30]], manufacturer="ACME", model="Sono 5"
    )
    other_size = PixelRegionRule("US", 800, 600, [[0, 0, 40, 40]], manufacturer="ACME")
    pp = PixelPolicy([generic, other_size, vendor, model])
    ds = image()
    assert pp.regions_for(ds) == [Region(0, 0, 20, 20)]
    ds.ManufacturerModelName = "SONO 5"
    assert pp.regions_for(ds) == [Region(0, 0, 30, 30)]
    ds.Manufacturer = "Other"
    assert pp.regions_for(ds) == [Region(0, 0, 10, 10)]
    ds.Modality = "XA"
    assert pp.regions_for(ds) is None


def test_policy_from_config(tmp_path):
    store = ConfigStore(tmp_path)
    store.add_pixel_region(PixelRegionRule("US", COLUMNS, ROWS, [[0, 0, 40, 6]]))
    assert PixelPolicy.from_config(store).regions_for(image()) == [TEXT_BAND]
    store.close()


# --- cleaning --------------------------------------------------------------------------------


@pytest.mark.parametrize("rgb", [False, True], ids=["mono", "rgb"])
@pytest.mark.parametrize(
    "syntax", [None, RLELossless, JPEG2000Lossless], ids=["native", "rle", "j2k"]
)
def test_regions_blanked_in_every_frame_rest_unchanged(tmp_path, syntax, rgb):
    ds = image(frames=3, rgb=rgb)
    before = frames_of(ds).copy()
    if syntax is not None:
        ds.compress(syntax, generate_instance_uid=False)
        ds = round_trip(ds, tmp_path)
    encoded = ds.PixelData
    regions = [TEXT_BAND, Region(60, 40, 4, 8)]
    out = policy().clean(ds, regions)
    assert ds.PixelData == encoded, "the input was changed"
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.BurnedInAnnotation == "NO"
    assert out.SOPInstanceUID == ds.SOPInstanceUID  # new UIDs are the engine's business
    assert not out["PixelData"].is_undefined_length
    out = round_trip(out, tmp_path)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.NumberOfFrames == 3
    assert_blanked(before, out, regions, 0)


@pytest.mark.parametrize("rgb", [False, True], ids=["mono", "rgb"])
def test_jpeg_baseline_is_decoded_with_pylibjpeg_and_stored_uncompressed(tmp_path, rgb):
    source = image(frames=2, rgb=rgb)
    plain = tmp_path / "plain.dcm"
    source.save_as(plain, enforce_file_format=True)
    jpeg = tmp_path / "jpeg.dcm"
    subprocess.run([dcmtk("dcmcjpeg"), "+eb", str(plain), str(jpeg)], check=True, timeout=60)
    ds = pydicom.dcmread(jpeg)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    before = frames_of(ds).copy()  # lossy: compare with what the decoder gives
    out = round_trip(policy().clean(ds, [TEXT_BAND]), tmp_path)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.PhotometricInterpretation == ("RGB" if rgb else "MONOCHROME2")
    assert_blanked(before, out, [TEXT_BAND], 0)
    assert out.LossyImageCompression == "01"  # decoding does not undo the loss


def test_a_held_us_image_loses_its_text_when_cleaned(tmp_path):
    ds = image(modality="US")
    assert (frames_of(ds)[0, :6, :40] == 255).all()
    pp = policy()
    decision = pp.decide(ds, clean_pixel_data=True)
    out = pp.clean(ds, list(decision.regions))
    assert not (frames_of(out) == 255).any()
    assert pp.decide(out, clean_pixel_data=False).action == "pass"


def test_monochrome1_blanks_to_white_value_and_signed_to_its_lowest(tmp_path):
    ds = image(photometric="MONOCHROME1", dtype=np.uint16, bits_stored=12)
    out = clean_pixels(ds, [TEXT_BAND])
    assert (frames_of(out)[0, :6, :40] == 4095).all()
    signed = image(modality="CT", sop_class=SC_CLASS, dtype=np.int16, bits_stored=16)
    out = round_trip(clean_pixels(signed, [TEXT_BAND]), tmp_path)
    assert out.PixelRepresentation == 1
    assert (frames_of(out)[0, :6, :40] == -32768).all()


def test_bits_above_bits_stored_are_cleared(tmp_path):
    ds = image(dtype=np.uint16, bits_stored=12)
    raw = np.frombuffer(ds.PixelData, dtype="<u2").copy()
    raw |= 0xF000  # a retired embedded overlay in the high bits
    ds.PixelData = raw.tobytes()
    out = clean_pixels(ds, [TEXT_BAND])
    stored = np.frombuffer(out.PixelData, dtype="<u2")
    assert not (stored & 0xF000).any()


def test_uncompressed_ybr_comes_out_rgb(tmp_path):
    ds = image(rgb=True)
    ds.PhotometricInterpretation = "YBR_FULL"
    expected = frames_of(ds).copy()  # pydicom converts to RGB
    out = round_trip(clean_pixels(ds, [TEXT_BAND]), tmp_path)
    assert out.PhotometricInterpretation == "RGB"
    assert_blanked(expected, out, [TEXT_BAND], 0)


def test_icon_is_dropped():
    ds = image()
    icon = Dataset()
    icon.Rows = 4
    ds.IconImageSequence = [icon]
    assert "IconImageSequence" not in clean_pixels(ds, [TEXT_BAND])


@pytest.mark.parametrize(
    "region", [Region(60, 0, 10, 5), Region(0, 40, 5, 10), Region(-1, 0, 5, 5), Region(0, 0, 0, 5)]
)
def test_region_outside_the_image_is_refused(region):
    with pytest.raises(PixelError, match="does not fit a 64x48 image"):
        clean_pixels(image(), [region])


def test_undecodable_pixels_raise_pixel_error(tmp_path):
    ds = image()
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.PixelData = ds.PixelData[:40]
    with pytest.raises(PixelError, match="cannot be decoded"):
        clean_pixels(ds, [TEXT_BAND])


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"modality": "", "columns": 64, "rows": 48, "regions": [[0, 0, 1, 1]]}, "modality"),
        ({"modality": "US", "columns": 0, "rows": 48, "regions": [[0, 0, 1, 1]]}, "1..65535"),
        ({"modality": "US", "columns": 64, "rows": 48, "regions": []}, "at least one"),
        ({"modality": "US", "columns": 64, "rows": 48, "regions": [[0, 0, 65, 1]]}, "fit"),
        ({"modality": "US", "columns": 64, "rows": 48, "regions": [[0, 0, 1]]}, "x,y,width"),
        ({"modality": "US", "columns": 64, "rows": 48, "regions": [["a", 0, 1, 1]]}, "x,y,"),
        ({"modality": "US", "columns": 64, "rows": 48, "regions": [[0, 0, 1, 1]], "x": 1},
         "unknown"),
    ],
)  # fmt: skip
def test_bad_pixel_region_rules_are_refused(rule, message):
    with pytest.raises(ConfigError, match=message):
        PixelRegionRule.from_mapping(rule)


def test_pixel_region_store_add_replace_remove(tmp_path):
    store = ConfigStore(tmp_path)
    rule = PixelRegionRule("US", 640, 480, [[0, 0, 640, 40]], manufacturer="ACME")
    store.add_pixel_region(rule)
    with pytest.raises(ConfigError, match="already exists"):
        store.add_pixel_region(PixelRegionRule("us", 640, 480, [[0, 0, 1, 1]], manufacturer="acme"))
    store.add_pixel_region(PixelRegionRule("US", 640, 480, [[0, 0, 1, 1]]))  # any manufacturer
    store.add_pixel_region(
        PixelRegionRule("US", 640, 480, [[0, 0, 2, 2]], manufacturer="Acme"), replace=True
    )
    store.close()
    store = ConfigStore(tmp_path)  # validated on load
    rules = store.pixel_regions()
    assert [(r.manufacturer, r.regions) for r in rules] == [("", [[0, 0, 1, 1]]),
                                                           ("Acme", [[0, 0, 2, 2]])]  # fmt: skip
    store.remove_pixel_region("us", 640, 480, manufacturer="ACME")
    assert [r.manufacturer for r in store.pixel_regions()] == [""]
    with pytest.raises(ConfigError, match="no rule"):
        store.remove_pixel_region("US", 640, 480, manufacturer="ACME")
    store.close()


def _testdata(name: str) -> Dataset:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not in this pydicom installation")
    return pydicom.dcmread(path)


@pytest.mark.parametrize(
    ("name", "black"), [("MR_small_jpeg_ls_lossless.dcm", -32768), ("SC_rgb_rle_2frame.dcm", 0)]
)
def test_pydicom_test_files_other_codecs(tmp_path, name, black):
    """A signed 16-bit JPEG-LS file and a two-frame RGB RLE file that ship with pydicom."""
    ds = _testdata(name)
    before = frames_of(ds).copy()
    regions = [Region(0, 0, 10, 5), Region(int(ds.Columns) - 4, int(ds.Rows) - 3, 4, 3)]
    out = round_trip(clean_pixels(ds, regions), tmp_path)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert_blanked(before, out, regions, black)


def test_pixels_the_decoder_refuses_are_never_passed_through():
    # pydicom's JPEG-lossy.dcm has a scan libjpeg rejects: the object is held, not copied.
    ds = _testdata("JPEG-lossy.dcm")
    with pytest.raises(PixelError, match="cannot be decoded"):
        policy(modality="NM", columns=int(ds.Columns), rows=int(ds.Rows)).clean(
            ds, [Region(0, 0, 1, 1)]
        )
