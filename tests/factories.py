"""Synthetic DICOM objects for tests and benchmarks, written as real Part 10 files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_dataset(
    *,
    patient_id: str = "PAT001",
    patient_name: str = "DOE^JOHN",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    rows: int = 64,
    columns: int = 64,
    charset: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate = "20240115"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC001"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "REF^DOC"
    ds.StudyDescription = "CT CHEST"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0, 0, instance_number]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1
    ds.KVP = 120
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    pixels = (np.arange(rows * columns, dtype=np.uint32) * (instance_number + 7)) % 4096
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def write_ct_series(
    folder: Path, count: int, *, rows: int = 64, columns: int = 64, **kwargs: object
) -> list[Path]:
    """Write ``count`` CT images of one series into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = kwargs.pop("study_uid", None) or generate_uid()
    series_uid = kwargs.pop("series_uid", None) or generate_uid()
    paths = []
    for number in range(1, count + 1):
        ds = ct_dataset(
            study_uid=study_uid,  # type: ignore[arg-type]
            series_uid=series_uid,  # type: ignore[arg-type]
            instance_number=number,
            rows=rows,
            columns=columns,
            **kwargs,  # type: ignore[arg-type]
        )
        path = folder / f"ct{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
