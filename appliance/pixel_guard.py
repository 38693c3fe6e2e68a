"""Burned-in annotation: which objects may carry patient text in their pixels, and blanking it.

``PixelPolicy.assess`` says whether an object's pixels may show identifying text: Burned In
Annotation (0028,0301) YES, or absent on the kinds of object that commonly carry text in the
image (ultrasound, secondary capture, X-ray angiography and fluoroscopy, endoscopy and other
visible-light photographs, document scans); an encapsulated document (PDF, CDA) is always a
risk since nothing here reads it. ``regions_for`` finds the site's blanking rule for the
object (the ``pixel_regions`` configuration: modality, optional manufacturer and model, exact
size), and ``clean`` blanks those rectangles in every frame.

``clean`` never passes compressed pixels through: it decodes them (pydicom with the pylibjpeg
plugins: JPEG, JPEG-LS, JPEG 2000, RLE), blanks, and stores the result uncompressed in
Explicit VR Little Endian; Burned In Annotation becomes NO and the icon (a thumbnail of the
same image) is dropped. Lossy Image Compression stays as it was: decoding does not undo it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from appliance.config import PixelRegionRule

if TYPE_CHECKING:
    from appliance.config import ConfigStore

# Modalities whose images commonly carry burned-in text when they do not say otherwise.
RISKY_MODALITIES: dict[str, str] = {
    "US": "ultrasound",
    "IVUS": "intravascular ultrasound",
    "XA": "X-ray angiography",
    "RF": "radio fluoroscopy",
    "ES": "endoscopy",
    "XC": "external-camera photography",
    "GM": "general microscopy",
    "OP": "ophthalmic photography",
    "SC": "secondary capture",
    "OT": "other",
    "DOC": "document",
}
# SOP Classes of the same kinds, each with its sub-classes (``...6`` covers ``...6.1``), whatever
# the Modality says: a CT dose screen is a Secondary Capture with Modality CT.
RISKY_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture",
    "1.2.840.10008.5.1.4.1.1.6": "ultrasound",
    "1.2.840.10008.5.1.4.1.1.3.1": "ultrasound multi-frame",
    "1.2.840.10008.5.1.4.1.1.12": "X-ray angiography or fluoroscopy",
    "1.2.840.10008.5.1.4.1.1.77.1": "visible light image or video",
    "1.2.840.10008.5.1.4.1.1.104": "encapsulated document",
}
ENCAPSULATED_DOCUMENT = "1.2.840.10008.5.1.4.1.1.104"
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class PixelError(ValueError):
    """The pixels cannot be cleaned (unsupported encoding, region outside the image, ...)."""


@dataclass(frozen=True)
class Region:
    """A rectangle in pixel coordinates: ``x`` columns and ``y`` rows from the top left."""

    x: int
    y: int
    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.width},{self.height}"


@dataclass(frozen=True)
class PixelRisk:
    risky: bool
    reason: str  # why it is (or is not) a risk, for the operator and the job result


@dataclass(frozen=True)
class PixelDecision:
    """What the anonymizer does with an object's pixels: ``pass`` them as they are, ``clean``
    the ``regions``, or ``hold`` the object (``reason`` says why)."""

    action: Literal["pass", "clean", "hold"]
    reason: str
    regions: tuple[Region, ...] = ()


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if not isinstance(value, str) and isinstance(value, Iterable):
        value = "\\".join(str(v) for v in value)
    return str(value).strip()


def _in_family(uid: str, root: str) -> bool:
    return uid == root or uid.startswith(root + ".")


def has_pixels(ds: Dataset) -> bool:
    return any(keyword in ds for keyword in PIXEL_KEYWORDS)


class PixelPolicy:
    """Burned-in annotation rules: built from the configured ``pixel_regions`` rules."""

    def __init__(self, rules: Sequence[PixelRegionRule] = ()) -> None:
        self.rules = list(rules)

    @classmethod
    def from_config(cls, store: ConfigStore) -> PixelPolicy:
        return cls(store.pixel_regions())

    def assess(self, ds: Dataset) -> PixelRisk:
        sop_class = _text(ds, "SOPClassUID")
        if _in_family(sop_class, ENCAPSULATED_DOCUMENT) or "EncapsulatedDocument" in ds:
            return PixelRisk(True, "encapsulated document: its content may name the patient")
        if not has_pixels(ds):
            return PixelRisk(False, "no pixel data")
        burned = _text(ds, "BurnedInAnnotation").upper()
        modality = _text(ds, "Modality").upper()
        if burned == "YES":
            return PixelRisk(True, "Burned In Annotation is YES")
        if burned == "NO":
            return PixelRisk(False, "Burned In Annotation is NO")
        kind = RISKY_MODALITIES.get(modality)
        if kind is None:
            kind = next(
                (k for uid, k in RISKY_SOP_CLASSES.items() if _in_family(sop_class, uid)),
                None,
            )
        if kind is not None:
            label = modality or "object"
            return PixelRisk(
                True,
                f"burned-in annotation possible ({label} without Burned In Annotation: {kind})",
            )
        return PixelRisk(False, f"{modality or 'object'} images rarely carry burned-in text")

    def rule_for(self, ds: Dataset) -> PixelRegionRule | None:
        """The most specific rule for the object: modality and size must match; a rule naming
        the manufacturer (and model) wins over one that does not."""
        modality = _text(ds, "Modality").upper()
        manufacturer = _text(ds, "Manufacturer").upper()
        model = _text(ds, "ManufacturerModelName").upper()
        rows = int(ds.get("Rows") or 0)
        columns = int(ds.get("Columns") or 0)
        best: tuple[int, PixelRegionRule] | None = None
        for rule in self.rules:
            if rule.modality != modality or (rule.rows, rule.columns) != (rows, columns):
                continue
            if rule.manufacturer and rule.manufacturer.upper() != manufacturer:
                continue
            if rule.model and rule.model.upper() != model:
                continue
            score = bool(rule.manufacturer) + bool(rule.model)
            if best is None or score > best[0]:
                best = (score, rule)
        return best[1] if best else None

    def regions_for(self, ds: Dataset) -> list[Region] | None:
        """The rectangles to blank for this object, or None when no rule fits it."""
        rule = self.rule_for(ds)
        if rule is None:
            return None
        return [Region(*r) for r in rule.regions]

    def decide(
        self, ds: Dataset, *, clean_pixel_data: bool, confirmed: bool = False
    ) -> PixelDecision:
        """One place for the anonymizer's choice. ``clean_pixel_data`` is the profile's Clean
        Pixel Data option; ``confirmed`` that the technologist saw the image and released it."""
        risk = self.assess(ds)
        if not risk.risky:
            return PixelDecision("pass", risk.reason)
        if clean_pixel_data and has_pixels(ds):
            regions = self.regions_for(ds)
            if regions:
                return PixelDecision("clean", risk.reason, tuple(regions))
        if confirmed:
            return PixelDecision("pass", f"{risk.reason}; released by the operator")
        if clean_pixel_data and has_pixels(ds):
            hint = (
                f"no pixel region rule for {_text(ds, 'Modality') or '?'} "
                f"{_text(ds, 'Manufacturer') or '(any manufacturer)'} "
                f"{ds.get('Columns', '?')}x{ds.get('Rows', '?')}; add one or confirm"
            )
        elif has_pixels(ds):
            hint = "clean pixel regions or confirm"
        else:
            hint = "confirm after reading it"
        return PixelDecision("hold", f"{risk.reason}; {hint}")

    def clean(self, ds: Dataset, regions: Sequence[Region]) -> Dataset:
        """A copy of ``ds`` with ``regions`` set to black in every frame, uncompressed."""
        return clean_pixels(ds, regions)


def _blank_value(ds: Dataset, dtype: object) -> int:
    """The stored value that displays black: the lowest for MONOCHROME2 and colour, the
    highest for MONOCHROME1 (an inverted image)."""
    import numpy as np

    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    info = np.iinfo(dtype)  # type: ignore[type-var]
    low, high = max(low, int(info.min)), min(high, int(info.max))
    return high if _text(ds, "PhotometricInterpretation").upper() == "MONOCHROME1" else low


def clean_pixels(ds: Dataset, regions: Sequence[Region]) -> Dataset:
    import numpy as np

    if "PixelData" not in ds:
        raise PixelError("no Pixel Data (float pixel data is not cleaned)")
    rows, columns = int(ds.Rows), int(ds.Columns)
    for region in regions:
        if (
            region.x < 0
            or region.y < 0
            or region.width < 1
            or region.height < 1
            or region.x + region.width > columns
            or region.y + region.height > rows
        ):
            raise PixelError(f"region {region} does not fit a {columns}x{rows} image")
    out = copy.deepcopy(ds)
    meta = getattr(out, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        # A dataset without file meta (off the network) is in the encoding it was read with;
        # encapsulated pixel data then cannot be decoded without knowing the syntax.
        if out["PixelData"].is_undefined_length:
            raise PixelError("compressed Pixel Data without a transfer syntax")
        out.file_meta = meta = FileMetaDataset() if meta is None else meta
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    try:
        if meta.TransferSyntaxUID.is_compressed:
            # Colour JPEG (YBR) comes out as RGB; decompress sets Photometric Interpretation,
            # Planar Configuration and the transfer syntax to match.
            out.decompress(as_rgb=True, generate_instance_uid=False)
        arr = out.pixel_array
    except Exception as exc:  # decoders raise many types; the object is held either way
        raise PixelError(
            f"pixel data cannot be decoded ({meta.TransferSyntaxUID.name}): {exc}"
        ) from exc
    arr = np.array(arr, copy=True)
    frames = int(out.get("NumberOfFrames") or 1)
    samples = int(out.get("SamplesPerPixel") or 1)
    # Always (frames, rows, columns, samples) while blanking.
    view = arr.reshape(frames, rows, columns, samples)
    bits_stored = int(out.get("BitsStored") or out.BitsAllocated)
    if int(out.get("PixelRepresentation") or 0) == 0 and bits_stored < arr.dtype.itemsize * 8:
        # Bits above Bits Stored may hold a (retired) embedded overlay: text again.
        np.bitwise_and(view, (1 << bits_stored) - 1, out=view)
    black = _blank_value(out, arr.dtype)
    for region in regions:
        view[:, region.y : region.y + region.height, region.x : region.x + region.width, :] = black
    photometric = _text(out, "PhotometricInterpretation")
    if photometric.startswith("YBR"):
        # pixel_array gives uncompressed YBR as RGB (full resolution), so the output is RGB.
        photometric = "RGB"
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    try:
        out.set_pixel_data(
            view.reshape(arr.shape), photometric, bits_stored, generate_instance_uid=False
        )
    except Exception as exc:  # e.g. 1-bit or float pixels that set_pixel_data refuses
        raise PixelError(f"cleaned pixel data cannot be stored: {exc}") from exc
    out.BurnedInAnnotation = "NO"
    # The icon is a thumbnail of the same image, text included.
    if "IconImageSequence" in out:
        del out.IconImageSequence
    return out
