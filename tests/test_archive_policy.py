"""What the archive keeps: duplicate SOP Instance UIDs, Specific Character Set round trips."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.factories import ct_dataset
from tests.scp_helpers import (
    ARCHIVE,
    files_under,
    index_rows,
    read_stored,
    stored_path,
    storescu,
    succeeded_files,
)


def _patient_row(data_dir, patient_id):
    rows = index_rows(
        data_dir,
        "SELECT patient_name, charset FROM patients WHERE patient_id=?",
        (patient_id,),
    )
    assert len(rows) == 1, rows
    return rows[0]


# --- duplicates -----------------------------------------------------------------------------


def _send_twice(daemon, tmp_path):
    uid = generate_uid()
    study = generate_uid()
    series = generate_uid()
    paths = []
    for n, name in enumerate(("FIRST^SENT", "SECOND^SENT")):
        ds = ct_dataset(
            patient_id="DUP001",
            patient_name=name,
            sop_instance_uid=uid,
            study_uid=study,
            series_uid=series,
            instance_number=n + 1,
        )
        path = tmp_path / f"send{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        result = storescu(daemon, [path], calling=f"SENDER{n}")
        assert result.returncode == 0, result.stdout + result.stderr
        # Both sends are answered with success, whatever the policy keeps.
        assert succeeded_files(result.stdout + result.stderr) == [str(path)]
        paths.append(path)
    rows = index_rows(
        daemon.data_dir,
        "SELECT instance_number, source_ae FROM instances WHERE sop_instance_uid=?",
        (uid,),
    )
    assert len(rows) == 1
    archived = files_under(daemon.data_dir / ARCHIVE)
    assert archived == {stored_path(daemon.data_dir, uid)}
    return uid, rows[0]


def test_duplicate_overwrite_replaces_file_and_index_row(daemon_factory, tmp_path):
    daemon = daemon_factory(duplicate_policy="overwrite").start()
    uid, (instance_number, source_ae) = _send_twice(daemon, tmp_path)
    stored = read_stored(daemon.data_dir, uid)
    assert str(stored.PatientName) == "SECOND^SENT"
    assert stored.InstanceNumber == 2
    assert stored.file_meta.SourceApplicationEntityTitle == "SENDER1"
    assert (instance_number, source_ae) == ("2", "SENDER1")
    assert _patient_row(daemon.data_dir, "DUP001")[0] == "SECOND^SENT"


def test_overwrite_is_the_default_policy(daemon, tmp_path):
    uid, (instance_number, _) = _send_twice(daemon, tmp_path)
    assert instance_number == "2"
    assert str(read_stored(daemon.data_dir, uid).PatientName) == "SECOND^SENT"


def test_duplicate_keep_first_keeps_file_and_index_row(daemon_factory, tmp_path):
    daemon = daemon_factory(duplicate_policy="keep-first").start()
    uid, (instance_number, source_ae) = _send_twice(daemon, tmp_path)
    stored = read_stored(daemon.data_dir, uid)
    assert str(stored.PatientName) == "FIRST^SENT"
    assert stored.InstanceNumber == 1
    assert stored.file_meta.SourceApplicationEntityTitle == "SENDER0"
    assert (instance_number, source_ae) == ("1", "SENDER0")
    assert _patient_row(daemon.data_dir, "DUP001")[0] == "FIRST^SENT"


# --- Specific Character Set -----------------------------------------------------------------

CHARSET_CASES = {
    "latin-1": ("ISO_IR 100", "Müller^Jürgen", "Schädel nativ", "ISO_IR 100"),
    "cyrillic": ("ISO_IR 144", "Иванов^Иван", "Грудная клетка", "ISO_IR 144"),
    "utf-8 greek": ("ISO_IR 192", "Ωμέγα^Ünïcode", "Θώρακας", "ISO_IR 192"),
    "utf-8 chinese": ("ISO_IR 192", "王^小東=王^小东", "胸部 CT", "ISO_IR 192"),
    "iso 2022 japanese": (
        ["", "ISO 2022 IR 87"],
        "ヤマダ^タロウ=山田^太郎=やまだ^たろう",
        "胸部",
        "\\ISO 2022 IR 87",
    ),
}


@pytest.mark.parametrize("name", list(CHARSET_CASES))
def test_specific_character_set_round_trip(daemon, tmp_path, name):
    charset, patient_name, description, charset_column = CHARSET_CASES[name]
    patient_id = f"CS{list(CHARSET_CASES).index(name):03d}"
    ds = ct_dataset(patient_id=patient_id, patient_name=patient_name, charset=charset)
    ds.StudyDescription = description
    path = tmp_path / "charset.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    assert patient_name.encode("utf-8") not in raw or charset == "ISO_IR 192"
    if charset_column.endswith("ISO 2022 IR 87"):
        assert b"\x1b$B" in raw  # really ISO 2022 escape sequences on the wire

    result = storescu(daemon, [path], calling="CHARSET")
    assert result.returncode == 0, result.stdout + result.stderr
    assert succeeded_files(result.stdout + result.stderr) == [str(path)]

    stored_name, stored_charset = _patient_row(daemon.data_dir, patient_id)
    assert stored_name == patient_name
    assert stored_charset == charset_column
    [(study_description, study_charset)] = index_rows(
        daemon.data_dir,
        "SELECT study_description, charset FROM studies WHERE patient_id=?",
        (patient_id,),
    )
    assert study_description == description
    assert study_charset == charset_column

    stored_file = stored_path(daemon.data_dir, ds.SOPInstanceUID)
    stored = dcmread(stored_file)
    assert str(stored.PatientName) == patient_name
    assert stored.StudyDescription == description
    assert stored.SpecificCharacterSet == charset
    # Stored as received: the encoded data set bytes are the sender's, not re-encoded.
    assert raw[raw.index(b"\x08\x00\x05\x00") :] in stored_file.read_bytes()
