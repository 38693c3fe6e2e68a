"""The anonymizer with the real pixel policy: what is held, what is cleaned, and that pixels
that cannot be cleaned are held rather than passed through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from appliance.anonymize import Anonymizer, Profile
from appliance.pixel_guard import PixelPolicy
from appliance.pseudonyms import PseudonymStore
from tests.test_pixel_guard import PDF_CLASS, TEXT_BAND, image, policy

BASIC = Profile(name="basic")
CLEANING = Profile(name="clean", options=frozenset({"clean_pixel_data"}))


@pytest.fixture
def store(tmp_path: Path) -> PseudonymStore:
    return PseudonymStore(tmp_path / "data")


def pdf_document() -> Dataset:
    ds = image(modality="DOC", sop_class=PDF_CLASS)
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):
        if keyword in ds:
            del ds[keyword]
    ds.EncapsulatedDocument = b"%PDF-1.4 DOE^JANE born 1970\n"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    return ds


def test_a_us_image_without_burned_in_annotation_is_held_until_confirmed(store) -> None:
    engine = Anonymizer(BASIC, store, pixel_policy=PixelPolicy())
    held = engine.anonymize(image())
    assert held.held and "US" in held.held
    assert not engine.anonymize(image(), pixels_confirmed=True).held


def test_an_encapsulated_document_is_held_though_it_has_no_pixel_data(store) -> None:
    engine = Anonymizer(BASIC, store, pixel_policy=PixelPolicy())
    result = engine.anonymize(pdf_document())
    assert result.held and "encapsulated document" in result.held


def test_clean_pixel_data_blanks_the_configured_region_and_releases(store) -> None:
    engine = Anonymizer(CLEANING, store, pixel_policy=policy())
    source = image()
    result = engine.anonymize(source)
    assert not result.held
    before, after = source.pixel_array, result.dataset.pixel_array
    band = (slice(TEXT_BAND.y, TEXT_BAND.height), slice(TEXT_BAND.x, TEXT_BAND.width))
    assert before[band].min() > 0 and not after[band].any()
    outside = np.ones(before.shape, bool)
    outside[band] = False
    assert np.array_equal(before[outside], after[outside])
    assert result.dataset.BurnedInAnnotation == "NO"


def test_clean_pixel_data_without_a_rule_for_the_image_holds_it(store) -> None:
    engine = Anonymizer(CLEANING, store, pixel_policy=policy(columns=800, rows=600))
    result = engine.anonymize(image())
    assert result.held and "no pixel region rule" in result.held


def test_pixels_that_cannot_be_decoded_are_held_not_passed_through(store) -> None:
    broken = image()
    broken.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"  # JPEG, but raw bytes
    broken.PixelData = b"\x00" * 16
    engine = Anonymizer(CLEANING, store, pixel_policy=policy())
    result = engine.anonymize(broken)
    assert result.held and "cannot be cleaned" in result.held
