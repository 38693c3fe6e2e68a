"""The de-identification engine against PS3.15 Table E.1-1: the table data itself, then every
listed attribute under the Basic Profile and under each option, compared with the table's column.

The pseudonym store is a small stand-in with the same methods as
``appliance.pseudonyms.PseudonymStore`` so these tests need nothing on disk; the corpus tests
(tests/test_anonymize_corpus.py) use the real store.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from pydicom import Dataset
from pydicom.datadict import dictionary_description, dictionary_VR
from pydicom.sequence import Sequence

from appliance import deid_table
from appliance.anonymize import (
    BASIC,
    Anonymizer,
    Profile,
    ProfileError,
    preview,
)
from appliance.deid_table import OPTIONS, ROWS, TABLE_SOURCE, row_for


class FakeStore:
    """Same interface as PseudonymStore: deterministic, in memory, counts the stored patients."""

    def __init__(self) -> None:
        self.patients: dict[tuple[str, str], int] = {}

    def project_key(self, project: str) -> bytes:
        return hashlib.sha256(project.encode()).digest()

    def patient(
        self,
        project: str,
        patient_id: str,
        patient_name: str,
        birth_date: str,
        *,
        id_pattern: str = "ANON{n:06d}",
        name_pattern: str = "ANONYMOUS^{n:06d}",
        dry_run: bool = False,
    ) -> tuple[str, str]:
        key = (project, patient_id or patient_name)
        n = self.patients.get(key, len(self.patients) + 1)
        if not dry_run:
            self.patients[key] = n
        return id_pattern.format(n=n, hash8="0" * 8), name_pattern.format(n=n, hash8="0" * 8)

    def date_shift_days(
        self, project: str, patient_id: str, patient_name: str = "", birth_date: str = ""
    ) -> int:
        return -42


def _tag(row: deid_table.Row) -> int:
    return int(row.tag[1:5] + row.tag[6:10], 16)


EXACT = [r for r in ROWS if "x" not in r.tag and "g" not in r.tag]
# Rows the planted object can carry: not the command group nor the file meta group.
PLANTABLE = [r for r in EXACT if _tag(r) >> 16 not in (0x0000, 0x0002)]


# --- the table as data -----------------------------------------------------------------------


def test_table_is_complete_and_matches_the_data_dictionary():
    assert "E.1-1" in TABLE_SOURCE
    assert len(ROWS) == 460
    assert len({r.tag for r in ROWS}) == len(ROWS)
    for row in EXACT:
        # Each tag names the attribute the table names (catches a mistyped tag).
        description = dictionary_description(_tag(row))

        def norm(s: str) -> str:
            return re.sub(r"[^a-z0-9]", "", s.lower().replace("(trial)", ""))

        assert norm(description) == norm(row.name), row
    codes = {"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
    for row in ROWS:
        assert row.basic in codes, row
        assert set(row.options) <= set(OPTIONS), row
        assert set(row.options.values()) <= {"K", "C", "X"}, row
    # The option columns all appear somewhere (Clean Pixel Data has none: it is about pixels).
    used = {o for r in ROWS for o in r.options}
    assert used == set(OPTIONS) - {"clean_pixel_data"}
    assert row_for(0x60023000).name == "Overlay Data"
    assert row_for(0x50001000).name == "Curve Data"
    assert row_for(0x00291010).tag == "(gggg,eeee)"
    assert row_for(0x00280010) is None  # Rows: not listed, kept


def test_profile_validation():
    with pytest.raises(ProfileError):
        Profile(options=frozenset({"retain_everything"}))
    with pytest.raises(ProfileError):
        Profile(options=frozenset({"retain_long_full_dates", "retain_long_modified_dates"}))
    with pytest.raises(ProfileError):
        Profile(overrides={"NotAKeyword": "keep"})
    with pytest.raises(ProfileError):
        Profile(overrides={"PatientAge": "hide"})
    Profile(overrides={"(0010,1010)": "keep", "StudyDescription": "replace:RESEARCH"})


# --- a dataset with every listed attribute ---------------------------------------------------


def _vr(tag: int) -> str:
    vr = dictionary_VR(tag)
    return vr.split(" or ")[0]


def _value(vr: str, i: int) -> object:
    marker = f"PHI{i:03d}"
    return {
        "DA": f"1987{(i % 12) + 1:02d}{(i % 27) + 1:02d}",
        "TM": f"10{i % 60:02d}00",
        "DT": f"1987{(i % 12) + 1:02d}{(i % 27) + 1:02d}101500",
        "UI": f"1.2.826.0.1.3680043.10.999.{i}",
        "PN": f"{marker}^PERSON",
        "CS": marker,
        "AE": marker,
        "AS": "045Y",
        "DS": "81.5",
        "IS": "7",
        "US": 7,
        "SS": 7,
        "UL": 7,
        "SL": 7,
        "FL": 1.5,
        "FD": 1.5,
        "OB": marker.encode() + b"\x00",
        "OW": marker.encode() + b"\x00",
        "UN": marker.encode() + b"\x00",
        "UR": f"http://{marker.lower()}.example/",
        "AT": 0x00100010,
    }.get(vr, f"{marker} text")


def planted() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    for i, row in enumerate(PLANTABLE):
        tag = _tag(row)
        vr = _vr(tag)
        if vr == "SQ":
            item = Dataset()
            item.PersonName = f"PHISQ{i:03d}^NESTED"
            item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.10.998.{i}"
            ds.add_new(tag, "SQ", Sequence([item]))
        else:
            ds.add_new(tag, vr, _value(vr, i))
    return ds


def outcome(ds: Dataset, tag: int, original: object) -> str:
    """What happened to one attribute: removed, empty, kept, or changed."""
    if tag not in ds:
        return "removed"
    elem = ds[tag]
    if elem.VR == "SQ":
        if len(elem.value) == 0:
            return "empty"
        item = elem.value[0]
        return "kept" if item.get("PersonName") == original else "changed"
    if elem.value in (None, "", b""):
        return "empty"
    return "kept" if elem.value == original else "changed"


def expected(action: str, tag: int, vr: str, options: frozenset[str]) -> set[str]:
    """The outcome(s) the table's action allows for a planted attribute."""
    if tag in (0x00100010, 0x00100020):
        return {"changed"}  # Z: the project's pseudonym (a dummy value, allowed by Z)
    if action == "X":
        return {"removed"}
    if action in ("Z", "X/Z"):
        return {"empty"}
    if action in ("D", "U", "X/Z/U*"):
        return {"changed"}
    if action in ("X/D",):
        return {"removed", "changed"}
    if action in ("Z/D", "X/Z/D"):
        return {"empty", "changed"}
    if action == "K":
        return {"kept"} if vr != "SQ" else {"kept", "changed"}
    if action == "C":
        if vr in ("OB", "OW", "UN"):
            return {"removed"}  # binary values cannot be cleaned (e.g. Frame Origin Timestamp)
        if vr in ("DA", "DT"):
            return {"changed"}  # shifted
        if vr == "TM":
            return {"kept"}  # whole-day shift leaves times
        return {"changed", "kept"}  # cleaned text (identifiers removed)
    raise AssertionError(action)


PROFILES = [frozenset()] + [frozenset({o}) for o in OPTIONS]


@pytest.mark.parametrize("options", PROFILES, ids=lambda o: "+".join(sorted(o)) or "basic")
def test_every_listed_attribute_follows_its_table_column(options: frozenset[str]):
    source = planted()
    result = Anonymizer(Profile(options=options), FakeStore()).anonymize(source)
    out = result.dataset
    wrong = []
    for row in PLANTABLE:
        tag = _tag(row)
        vr = _vr(tag)
        original = source[tag].value
        if vr == "SQ":
            original = source[tag].value[0].PersonName
        action = row.action(options)
        got = outcome(out, tag, original)
        if got not in expected(action, tag, vr, options):
            wrong.append((row.tag, row.name, action, got))
    assert wrong == []


@pytest.mark.parametrize("option", [o for o in OPTIONS if o != "clean_pixel_data"])
def test_each_option_changes_exactly_its_column(option: str):
    """Against the Basic Profile, an option changes the outcome only of rows where its column
    has an action (and of no other attribute)."""
    source = planted()
    basic = Anonymizer(BASIC, FakeStore()).anonymize(source).dataset
    with_option = Anonymizer(Profile(options=frozenset({option})), FakeStore()).anonymize(source)
    out = with_option.dataset
    differing = set()
    for row in PLANTABLE:
        tag = _tag(row)
        vr = _vr(tag)
        original = source[tag].value if vr != "SQ" else source[tag].value[0].PersonName
        if outcome(basic, tag, original) != outcome(out, tag, original):
            differing.add(row.tag)
    column = {r.tag for r in PLANTABLE if option in r.options}
    assert differing <= column
    # Every row whose column keeps what the Basic Profile removes does change.
    kept = {
        r.tag
        for r in PLANTABLE
        if r.options.get(option) == "K" and r.basic not in ("U",) and "U*" not in r.basic
    }
    assert kept <= differing | {r.tag for r in PLANTABLE if r.basic == "K"}


def test_identity_marks_list_exactly_the_applied_options():
    source = planted()
    options = frozenset({"retain_long_modified_dates", "clean_descriptors", "retain_uids"})
    out = Anonymizer(Profile(options=options), FakeStore()).anonymize(source).dataset
    assert out.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113110", "113107", "113105"]  # profile, then OPTIONS order
    assert all(i.CodingSchemeDesignator == "DCM" for i in out.DeidentificationMethodCodeSequence)
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert len(out.DeidentificationMethod) == 4
    basic = Anonymizer(BASIC, FakeStore()).anonymize(source).dataset
    assert [i.CodeValue for i in basic.DeidentificationMethodCodeSequence] == ["113100"]
    assert basic.LongitudinalTemporalInformationModified == "REMOVED"


def test_modified_dates_shift_by_the_patients_days():
    ds = Dataset()
    ds.PatientID = "P1"
    ds.StudyDate = "20240301"
    ds.AcquisitionDateTime = "20240301101500.000000"
    ds.InstanceCreationDate = "20240229"  # not in the table: dates follow the same option
    ds.StudyTime = "101500"
    options = frozenset({"retain_long_modified_dates"})
    out = Anonymizer(Profile(options=options), FakeStore()).anonymize(ds).dataset
    assert out.StudyDate == "20240119"
    assert out.AcquisitionDateTime == "20240119101500.000000"
    assert out.InstanceCreationDate == "20240118"
    assert out.StudyTime == "101500"
    full = Anonymizer(Profile(options=frozenset({"retain_long_full_dates"})), FakeStore())
    assert full.anonymize(ds).dataset.StudyDate == "20240301"
    basic = Anonymizer(BASIC, FakeStore()).anonymize(ds).dataset
    assert basic.StudyDate == "" and basic.InstanceCreationDate == "19000101"


def test_overrides_keep_remove_replace():
    ds = Dataset()
    ds.PatientID = "P1"
    ds.PatientName = "DOE^JANE"
    ds.PatientAge = "045Y"
    ds.StudyDescription = "CT head for DOE"
    ds.Modality = "CT"
    profile = Profile(
        name="site",
        overrides={
            "PatientAge": "keep",
            "(0008,1030)": "replace:RESEARCH",
            "Modality": "remove",
            "PatientName": "replace:TRIAL^SUBJECT",
        },
    )
    result = Anonymizer(profile, FakeStore()).anonymize(ds)
    out = result.dataset
    assert out.PatientAge == "045Y"
    assert out.StudyDescription == "RESEARCH"
    assert "Modality" not in out
    assert out.PatientName == "TRIAL^SUBJECT"
    assert out.PatientID == "ANON000001"
    assert "override" in out.DeidentificationMethod[-1]


def test_clean_descriptors_removes_identifiers_from_text():
    ds = Dataset()
    ds.PatientID = "MRN12345"
    ds.PatientName = "SMITH^ALICE"
    ds.AccessionNumber = "ACC777"
    ds.StudyDescription = "CT chest Smith MRN12345 ACC777"
    out = (
        Anonymizer(Profile(options=frozenset({"clean_descriptors"})), FakeStore())
        .anonymize(ds)
        .dataset
    )
    assert out.StudyDescription == "CT chest"


def test_sequences_walked_at_every_depth_and_private_removed():
    inner = Dataset()
    inner.PersonName = "DEEP^NAME"
    inner.ReferencedSOPInstanceUID = "1.2.3.4.5"
    inner.add_new(0x00291010, "LO", "PRIVATE PHI")
    middle = Dataset()
    middle.ReferencedImageSequence = Sequence([inner])
    middle.InstitutionName = "GENERAL HOSPITAL"
    outer = Dataset()
    outer.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    outer.SourceImageSequence = Sequence([middle])
    outer.add_new(0x00090010, "LO", "ACME")
    outer.add_new(0x00091001, "LO", "PRIVATE TOP")
    out = Anonymizer(BASIC, FakeStore()).anonymize(outer).dataset
    m = out.SourceImageSequence[0]
    i = m.ReferencedImageSequence[0]
    assert i.PersonName == "ANONYMIZED"
    assert i.ReferencedSOPInstanceUID.startswith("2.25.")
    assert 0x00291010 not in i
    assert m.InstitutionName == ""
    assert 0x00090010 not in out and 0x00091001 not in out


def test_overlays_and_curves_removed_as_groups():
    ds = Dataset()
    ds.add_new(0x60000010, "US", 8)
    ds.add_new(0x60000011, "US", 8)
    ds.add_new(0x60003000, "OW", b"\xff" * 8)
    ds.add_new(0x60004000, "LT", "overlay by DR PHI")
    ds.add_new(0x50000005, "US", 1)
    for options in (frozenset(), frozenset({"clean_graphics"})):
        out = Anonymizer(Profile(options=options), FakeStore()).anonymize(ds).dataset
        assert not [e for e in out if e.tag.group in (0x6000, 0x5000)]


def test_preview_stores_no_pseudonym_and_matches_the_real_run():
    ds = Dataset()
    ds.PatientID = "P9"
    ds.PatientName = "X^Y"
    ds.SOPInstanceUID = "1.2.3.9"
    store = FakeStore()
    changes = preview(ds, BASIC, store)
    assert store.patients == {}
    rows = {c.keyword: c for c in changes}
    assert rows["PatientID"].original == "P9"
    assert rows["PatientID"].action == "pseudonym"
    real = Anonymizer(BASIC, store).anonymize(ds)
    assert real.dataset.SOPInstanceUID == rows["SOPInstanceUID"].result
    assert real.dataset.PatientID == rows["PatientID"].result
    assert set(rows["PatientID"].as_row()) == {"tag", "keyword", "original", "action", "result"}
    assert ds.PatientID == "P9"  # input untouched


def test_uids_replaced_consistently_and_validly():
    store = FakeStore()
    a = Anonymizer(BASIC, store)
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.AcquisitionUID = "1.2.3.4.6"  # newer than the table: still an instance UID
    one = a.anonymize(ds).dataset
    two = Anonymizer(BASIC, store).anonymize(ds).dataset
    assert one.StudyInstanceUID == two.StudyInstanceUID != "1.2.3"
    assert one.SOPClassUID == ds.SOPClassUID
    assert one.AcquisitionUID.startswith("2.25.")
    for uid in (one.StudyInstanceUID, one.SeriesInstanceUID, one.SOPInstanceUID):
        assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid) and len(uid) <= 64
    other = Anonymizer(Profile(project="other"), store).anonymize(ds).dataset
    assert other.StudyInstanceUID != one.StudyInstanceUID
    kept = Anonymizer(Profile(options=frozenset({"retain_uids"})), store).anonymize(ds).dataset
    assert kept.StudyInstanceUID == "1.2.3" and kept.AcquisitionUID == "1.2.3.4.6"


class _Risk:
    def __init__(self, reason: str | None) -> None:
        self.risky = reason is not None
        self.reason = reason


class FakePixelPolicy:
    """Same methods as appliance.pixel_guard.PixelPolicy."""

    def __init__(self, regions: list[tuple[int, int, int, int]] | None) -> None:
        self.regions = regions
        self.cleaned = 0

    def assess(self, ds: Dataset) -> _Risk:
        if ds.get("Modality") == "US" and "BurnedInAnnotation" not in ds:
            return _Risk("burned-in annotation possible (US without BurnedInAnnotation)")
        return _Risk(None)

    def regions_for(self, ds: Dataset) -> list[tuple[int, int, int, int]] | None:
        return self.regions

    def clean(self, ds: Dataset, regions: list[tuple[int, int, int, int]]) -> Dataset:
        self.cleaned += 1
        out = Dataset(ds)
        out.BurnedInAnnotation = "NO"
        return out


def test_pixels_hold_until_cleaned_or_confirmed():
    ds = Dataset()
    ds.Modality = "US"
    ds.PatientID = "P1"
    ds.PixelData = b"\x00" * 16
    held = Anonymizer(BASIC, FakeStore(), pixel_policy=FakePixelPolicy(None)).anonymize(ds)
    assert held.held and "US" in held.held and not held.released
    confirmed = Anonymizer(BASIC, FakeStore(), pixel_policy=FakePixelPolicy(None)).anonymize(
        ds, pixels_confirmed=True
    )
    assert confirmed.released
    clean = Profile(options=frozenset({"clean_pixel_data"}))
    no_rule = Anonymizer(clean, FakeStore(), pixel_policy=FakePixelPolicy(None)).anonymize(ds)
    assert no_rule.held and "no pixel region rule" in no_rule.held
    policy = FakePixelPolicy([(0, 0, 10, 10)])
    cleaned = Anonymizer(clean, FakeStore(), pixel_policy=policy).anonymize(ds)
    assert cleaned.released and policy.cleaned == 1
    assert cleaned.dataset.BurnedInAnnotation == "NO"
    codes = [i.CodeValue for i in cleaned.dataset.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113101"]


# --- in place and copying give the same bytes ----------------------------------------------------


def _bytes(ds: Dataset) -> bytes:
    import io

    from pydicom import dcmwrite

    buffer = io.BytesIO()
    dcmwrite(buffer, ds, implicit_vr=False, little_endian=True, enforce_file_format=False)
    return buffer.getvalue()


def _as_read(ds: Dataset) -> Dataset:
    """``ds`` written and read back: undecoded (raw) elements, as the job runner sees them."""
    import io

    from pydicom import dcmread

    return dcmread(io.BytesIO(_bytes(ds)), force=True)


def _nested_source() -> Dataset:
    ds = planted()
    ds.PatientID = "PID-NESTED"
    ds.PatientName = "NESTED^PATIENT"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.997.1"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.997.2"
    inner = Dataset()
    inner.PersonName = "DEEP^NAME"
    inner.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.10.997.3"
    inner.add_new(0x00291010, "LO", "PRIVATE PHI")
    middle = Dataset()
    middle.ReferencedImageSequence = Sequence([inner])
    middle.InstitutionName = "GENERAL HOSPITAL"
    middle.ImageComments = "seen by NESTED^PATIENT"
    ds.SourceImageSequence = Sequence([middle])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "LO", "PRIVATE TOP")
    return ds


@pytest.mark.parametrize(
    "profile",
    [
        BASIC,
        Profile(options=frozenset({"retain_long_modified_dates", "clean_descriptors"})),
        Profile(options=frozenset(o for o in OPTIONS if o != "retain_long_full_dates")),
        Profile(overrides={"PatientID": "keep", "StudyDescription": "replace:X"}),
    ],
    ids=["basic", "dates-descriptors", "all-options", "overrides"],
)
@pytest.mark.parametrize("raw", [False, True], ids=["decoded", "as-read"])
def test_in_place_and_copying_give_the_same_bytes_and_copying_leaves_the_input(
    profile: Profile, raw: bool
) -> None:
    def source() -> Dataset:
        return _as_read(_nested_source()) if raw else _nested_source()

    store = FakeStore()
    engine = Anonymizer(profile, store)
    original = source()
    before = _bytes(source())
    copied = engine.anonymize(original)
    assert copied.dataset is not original
    assert _bytes(original) == before  # the input is left as it was, at every depth
    assert original == source()
    assert original.SourceImageSequence[0].ReferencedImageSequence[0].PersonName == "DEEP^NAME"

    edited = source()
    in_place = engine.anonymize(edited, in_place=True)
    assert in_place.dataset is edited
    assert _bytes(in_place.dataset) == _bytes(copied.dataset)
    assert in_place.changes == copied.changes
    originals = ("1.2.826.0.1.3680043.10.997.1", "1.2.826.0.1.3680043.10.997.2")
    for result in (copied, in_place):
        assert (result.original_study_uid, result.original_sop_instance_uid) == originals
    # The copy can be changed without reaching back into the input.
    copied.dataset.SourceImageSequence[0].ImageComments = "changed"
    copied.dataset.ImageType = ["DERIVED"]
    assert _bytes(original) == before


def test_preview_never_edits_its_input() -> None:
    ds = _as_read(_nested_source())
    before = _bytes(ds)
    Anonymizer(BASIC, FakeStore()).preview(ds)
    assert _bytes(ds) == before
