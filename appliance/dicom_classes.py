"""SOP classes and transfer syntaxes the appliance supports.

The storage list is the union of the storage classes named in the conformance statements the
product is built from (TruPlan, Canon Angio Workstation, DICOMscope, GEMINI PET/CT).
"""

from __future__ import annotations

from pydicom.uid import UID

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

# DICOMscope's private IPC class: DICOMscope shuts its own listener down when it is proposed.
# We never honour it (an unauthenticated remote shutdown); proposing it gets nothing accepted.
DICOMSCOPE_SHUTDOWN_SOP_CLASS = "1.2.276.0.7230010.3.4.1915765545.18030.917282194.0"

STORAGE_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray, For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray, For Processing
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography, For Presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography, For Processing
    "1.2.840.10008.5.1.4.1.1.1.3",  # Digital Intra-Oral, For Presentation
    "1.2.840.10008.5.1.4.1.1.1.3.1",  # Digital Intra-Oral, For Processing
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame (retired)
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.5",  # Nuclear Medicine (retired)
    "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound (retired)
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
    "1.2.840.10008.5.1.4.1.1.8",  # Standalone Overlay (retired)
    "1.2.840.10008.5.1.4.1.1.9",  # Standalone Curve (retired)
    "1.2.840.10008.5.1.4.1.1.9.1.1",  # 12-lead ECG Waveform
    "1.2.840.10008.5.1.4.1.1.9.1.2",  # General ECG Waveform
    "1.2.840.10008.5.1.4.1.1.9.1.3",  # Ambulatory ECG Waveform
    "1.2.840.10008.5.1.4.1.1.9.2.1",  # Hemodynamic Waveform
    "1.2.840.10008.5.1.4.1.1.9.3.1",  # Cardiac Electrophysiology Waveform
    "1.2.840.10008.5.1.4.1.1.9.4.1",  # Basic Voice Audio Waveform
    "1.2.840.10008.5.1.4.1.1.10",  # Standalone Modality LUT (retired)
    "1.2.840.10008.5.1.4.1.1.11",  # Standalone VOI LUT (retired)
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic
    "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic
    "1.2.840.10008.5.1.4.1.1.12.3",  # X-Ray Angiographic Bi-Plane (retired)
    "1.2.840.10008.5.1.4.1.1.13.1.1",  # X-Ray 3D Angiographic
    "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine
    "1.2.840.10008.5.1.4.1.1.66.5",  # Surface Segmentation
    "1.2.840.10008.5.1.4.1.1.77.1",  # VL Image (retired)
    "1.2.840.10008.5.1.4.1.1.77.1.1",  # VL Endoscopic
    "1.2.840.10008.5.1.4.1.1.77.1.2",  # VL Microscopic
    "1.2.840.10008.5.1.4.1.1.77.1.3",  # VL Slide-Coordinates Microscopic
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic
    "1.2.840.10008.5.1.4.1.1.77.2",  # VL Multi-frame (retired)
    "1.2.840.10008.5.1.4.1.1.88.1",  # Text SR (retired)
    "1.2.840.10008.5.1.4.1.1.88.2",  # Audio SR (retired)
    "1.2.840.10008.5.1.4.1.1.88.3",  # Detail SR (retired)
    "1.2.840.10008.5.1.4.1.1.88.4",  # Comprehensive SR (retired)
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.50",  # Mammography CAD SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
    "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography
    "1.2.840.10008.5.1.4.1.1.129",  # Standalone PET Curve (retired)
    "1.2.840.10008.5.1.4.1.1.481.1",  # RT Image
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.481.4",  # RT Beams Treatment Record
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan
    "1.2.840.10008.5.1.4.1.1.481.6",  # RT Brachy Treatment Record
    "1.2.840.10008.5.1.4.1.1.481.7",  # RT Treatment Summary Record
    "1.2.840.10008.5.1.1.27",  # Stored Print
    "1.2.840.10008.5.1.1.29",  # Hardcopy Grayscale Image
    "1.2.840.10008.5.1.1.30",  # Hardcopy Color Image
)

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_P14 = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

UNCOMPRESSED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    EXPLICIT_VR_BE,
)

# Default acceptance order: uncompressed first (explicit before implicit, so VRs are kept),
# then the lossless compressions, then the lossy ones. The requestor's proposal never
# overrides this order: for each context we accept the first of ours that it proposed.
SUPPORTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    DEFLATED_EXPLICIT_VR_LE,
    JPEG_LOSSLESS_SV1,
    JPEG_LOSSLESS_P14,
    JPEG_LS_LOSSLESS,
    JPEG_2000_LOSSLESS,
    RLE_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_2000,
)


def transfer_syntax_name(uid: str) -> str:
    return UID(uid).name
