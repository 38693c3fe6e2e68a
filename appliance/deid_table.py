"""PS3.15 Annex E Table E.1-1, the Application Level Confidentiality Profile Attributes, as data.

Every row of the table: the tag (or tag pattern), the attribute name, the Basic Profile action and
the action in each option column where the table gives one. The engine (``appliance.anonymize``)
reads nothing else to decide what happens to a listed attribute, so this file is the single place
to update when a newer edition of the standard changes the table.

Action codes (PS3.15 E.1.1): D dummy, Z zero length (or dummy), X remove, K keep (sequences are
cleaned), C clean, U new UID consistent within the set; combined codes (X/Z, X/D, X/Z/D, Z/D,
X/Z/U*) choose the first unless the IOD requires the next.

Option columns, as written in the table (their profile option names are in ``OPTION_COLUMNS``):
SP Retain Safe Private, UI Retain UIDs, DV Retain Device Identity, IN Retain Institution Identity,
PC Retain Patient Characteristics, LF Retain Longitudinal Temporal Information with Full Dates,
LM ... with Modified Dates, CD Clean Descriptors, CS Clean Structured Content, CG Clean Graphics.
Clean Pixel Data has no column: it concerns the pixels, not attributes.
"""

from __future__ import annotations

from dataclasses import dataclass

# Where the rows come from. The rows were transcribed from the machine-readable extraction of
# the standard's Table E.1-1 published by the innolitics/dicom-standard project
# (standard/confidentiality_profile_attributes.json, commit 0d01bf11, generated from the web
# edition of PS3.15 current at that commit), and each tag was checked against the data
# dictionary of pydicom (tests/test_anonymize_engine.py keeps checking it).
TABLE_SOURCE = (
    "DICOM PS3.15 Annex E Table E.1-1 (Application Level Confidentiality Profile Attributes), "
    "web edition as extracted by innolitics/dicom-standard commit 0d01bf11 "
    "(standard/confidentiality_profile_attributes.json), 460 rows"
)

OPTIONS = (
    "retain_safe_private",
    "retain_uids",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_patient_characteristics",
    "retain_long_full_dates",
    "retain_long_modified_dates",
    "clean_descriptors",
    "clean_structured_content",
    "clean_graphics",
    "clean_pixel_data",
)

# Table column abbreviation -> profile option.
OPTION_COLUMNS = {
    "SP": "retain_safe_private",
    "UI": "retain_uids",
    "DV": "retain_device_identity",
    "IN": "retain_institution_identity",
    "PC": "retain_patient_characteristics",
    "LF": "retain_long_full_dates",
    "LM": "retain_long_modified_dates",
    "CD": "clean_descriptors",
    "CS": "clean_structured_content",
    "CG": "clean_graphics",
}

# CID 7050 De-identification Method (scheme DCM): the code for the profile and each option.
METHOD_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    "clean_recognizable_visual_features": ("113102", "Clean Recognizable Visual Features Option"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_long_full_dates": (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    "retain_long_modified_dates": (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}

# Table E.1-1, one row a line: tag, Basic Profile action, option column actions, name.
# "-" means no option column changes the row. Tags with x are patterns over the repeating
# groups; (gggg,eeee) stands for every private attribute (odd group).
_ROWS = """\
(0008,0050)  Z       -          Accession Number
(0018,4000)  X       CD=C       Acquisition Comments
(0040,0555)  X/Z     CS=C       Acquisition Context Sequence
(0008,0022)  X/Z     LF=K,LM=C  Acquisition Date
(0008,002A)  X/Z/D   LF=K,LM=C  Acquisition DateTime
(0018,1400)  X/D     CD=C       Acquisition Device Processing Description
(0018,11BB)  D       CD=C       Acquisition Field Of View Label
(0018,9424)  X       CD=C       Acquisition Protocol Description
(0008,0032)  X/Z     LF=K,LM=C  Acquisition Time
(0040,4035)  X       -          Actual Human Performers Sequence
(0010,21B0)  X       CD=C       Additional Patient History
(0040,A353)  X       -          Address (Trial)
(0038,0010)  X       -          Admission ID
(0038,0020)  X       LF=K,LM=C  Admitting Date
(0008,1084)  X       CD=C       Admitting Diagnoses Code Sequence
(0008,1080)  X       CD=C       Admitting Diagnoses Description
(0038,0021)  X       LF=K,LM=C  Admitting Time
(0000,1000)  X       UI=K       Affected SOP Instance UID
(0010,2110)  X       PC=C,CD=C  Allergies
(4000,0010)  X       -          Arbitrary
(0040,A078)  X       -          Author Observer Sequence
(2200,0005)  X/Z     -          Barcode Value
(300A,00C3)  X       CD=C       Beam Description
(300A,00DD)  X       CD=C       Bolus Description
(0010,1081)  X       -          Branch of Service
(0016,004D)  X       -          Camera Owner Name
(0018,1007)  X       DV=K       Cassette ID
(0012,0060)  Z       IN=K       Clinical Trial Coordinating Center Name
(0012,0082)  X       -          Clinical Trial Protocol Ethics Committee Approval Number
(0012,0081)  D       IN=K       Clinical Trial Protocol Ethics Committee Name
(0012,0020)  D       -          Clinical Trial Protocol ID
(0012,0021)  Z       -          Clinical Trial Protocol Name
(0012,0072)  X       CD=C       Clinical Trial Series Description
(0012,0071)  X       -          Clinical Trial Series ID
(0012,0030)  Z       IN=K       Clinical Trial Site ID
(0012,0031)  Z       IN=K       Clinical Trial Site Name
(0012,0010)  D       -          Clinical Trial Sponsor Name
(0012,0040)  D       -          Clinical Trial Subject ID
(0012,0042)  D       -          Clinical Trial Subject Reading ID
(0012,0051)  X       CD=C       Clinical Trial Time Point Description
(0012,0050)  Z       -          Clinical Trial Time Point ID
(0040,0310)  X       CD=C       Comments on Radiation Dose
(0040,0280)  X       CD=C       Comments on the Performed Procedure Step
(300A,02EB)  X       CD=C       Compensator Description
(0020,9161)  U       UI=K       Concatenation UID
(3010,000F)  Z       CD=C       Conceptual Volume Combination Description
(3010,0017)  Z       CD=C       Conceptual Volume Description
(3010,0006)  U       UI=K       Conceptual Volume UID
(0040,3001)  X       -          Confidentiality Constraint on Patient Data Description
(3010,0013)  U       UI=K       Constituent Conceptual Volume UID
(0008,009C)  Z       -          Consulting Physician's Name
(0008,009D)  X       -          Consulting Physician Identification Sequence
(0050,001B)  X       -          Container Component ID
(0040,051A)  X       CD=C       Container Description
(0040,0512)  D       -          Container Identifier
(0070,0086)  X       -          Content Creator's Identification Code Sequence
(0070,0084)  Z/D     -          Content Creator's Name
(0008,0023)  Z/D     LF=K,LM=C  Content Date
(0040,A730)  D       CS=C       Content Sequence
(0008,0033)  Z/D     LF=K,LM=C  Content Time
(0018,0010)  Z/D     CD=C       Contrast/Bolus Agent
(0018,A003)  X       CD=C       Contribution Description
(0010,2150)  X       -          Country of Residence
(0040,A307)  X       -          Current Observer (Trial)
(0038,0300)  X       -          Current Patient Location
(50xx,xxxx)  X       CG=C       Curve Data
(0008,0025)  X       LF=K,LM=C  Curve Date
(0008,0035)  X       LF=K,LM=C  Curve Time
(0040,A07C)  X       -          Custodial Organization Sequence
(FFFC,FFFC)  X       -          Data Set Trailing Padding
(0018,937F)  X       CD=C       Decomposition Description
(0008,2111)  X       CD=C       Derivation Description
(0018,700A)  X/D     DV=K       Detector ID
(3010,001B)  Z       -          Device Alternate Identifier
(0050,0020)  X       DV=K       Device Description
(3010,002D)  D       DV=K       Device Label
(0018,1000)  X/Z/D   DV=K       Device Serial Number
(0016,004B)  X       CD=C       Device Setting Description
(0018,1002)  U       UI=K,DV=K  Device UID
(FFFA,FFFA)  X       -          Digital Signatures Sequence
(0400,0100)  U       -          Digital Signature UID
(0020,9164)  U       UI=K       Dimension Organization UID
(0038,0040)  X       CD=C       Discharge Diagnosis Description
(4008,011A)  X       -          Distribution Address
(4008,0119)  X       -          Distribution Name
(300A,0016)  X       CD=C       Dose Reference Description
(300A,0013)  U       UI=K       Dose Reference UID
(3010,006E)  U       UI=K       Dosimetric Objective UID
(0018,9517)  X/D     LF=K,LM=C  End Acquisition DateTime
(3010,0037)  X       CD=C       Entity Description
(3010,0035)  D       CD=C       Entity Label
(3010,0038)  D       CD=C       Entity Long Label
(3010,0036)  X       CD=C       Entity Name
(300A,0676)  X       CD=C       Equipment Frame of Reference Description
(0010,2160)  X       PC=K       Ethnic Group
(0040,4011)  X       LF=K,LM=C  Expected Completion DateTime
(0008,0058)  U       UI=K       Failed SOP Instance UID List
(0070,031A)  U       UI=K       Fiducial UID
(0040,2017)  Z       -          Filler Order Number / Imaging Service Request
(3008,0054)  X/D     LF=K,LM=C  First Treatment Date
(300A,0196)  X       CD=C       Fixation Device Description
(0034,0002)  D       -          Flow Identifier
(0034,0001)  D       -          Flow Identifier Sequence
(3010,007F)  Z       CD=C       Fractionation Notes
(300A,0072)  X       CD=C       Fraction Group Description
(0020,9158)  X       CD=C       Frame Comments
(0020,0052)  U       UI=K       Frame of Reference UID
(0034,0007)  D       LF=K,LM=C  Frame Origin Timestamp
(0018,1008)  X       DV=K       Gantry ID
(0018,1005)  X       DV=K       Generator ID
(0016,0076)  X       -          GPS Altitude
(0016,0075)  X       -          GPS Altitude Ref
(0016,008C)  X       -          GPS Area Information
(0016,008D)  X       LF=K,LM=C  GPS Date Stamp
(0016,0088)  X       -          GPS Dest Bearing
(0016,0087)  X       -          GPS Dest Bearing Ref
(0016,008A)  X       -          GPS Dest Distance
(0016,0089)  X       -          GPS Dest Distance Ref
(0016,0084)  X       -          GPS Dest Latitude
(0016,0083)  X       -          GPS Dest Latitude Ref
(0016,0086)  X       -          GPS Dest Longitude
(0016,0085)  X       -          GPS Dest Longitude Ref
(0016,008E)  X       -          GPS Differential
(0016,007B)  X       -          GPS DOP
(0016,0081)  X       -          GPS Img Direction
(0016,0080)  X       -          GPS Img Direction Ref
(0016,0072)  X       -          GPS Latitude
(0016,0071)  X       -          GPS Latitude Ref
(0016,0074)  X       -          GPS Longitude
(0016,0073)  X       -          GPS Longitude Ref
(0016,0082)  X       -          GPS Map Datum
(0016,007A)  X       -          GPS Measure Mode
(0016,008B)  X       -          GPS Processing Method
(0016,0078)  X       -          GPS Satellites
(0016,007D)  X       -          GPS Speed
(0016,007C)  X       -          GPS Speed Ref
(0016,0079)  X       -          GPS Status
(0016,0077)  X       -          GPS Time Stamp
(0016,007F)  X       -          GPS Track
(0016,007E)  X       -          GPS Track Ref
(0016,0070)  X       -          GPS Version ID
(0070,0001)  D       CG=C       Graphic Annotation Sequence
(0040,4037)  X       -          Human Performer's Name
(0040,4036)  X       -          Human Performer's Organization
(0088,0200)  X       -          Icon Image Sequence
(0008,4000)  X       CD=C       Identifying Comments
(0020,4000)  X       CD=C       Image Comments
(0028,4000)  X       -          Image Presentation Comments
(0040,2400)  X       CD=C       Imaging Service Request Comments
(003A,0314)  D       LF=K,LM=C  Impedance Measurement DateTime
(4008,0300)  X       CD=C       Impressions
(0008,0015)  X       LF=K,LM=C  Instance Coercion DateTime
(0008,0014)  U       UI=K       Instance Creator UID
(0400,0600)  X       -          Instance Origin Status
(0008,0081)  X       IN=K       Institution Address
(0008,1040)  X       IN=K       Institutional Department Name
(0008,1041)  X       IN=K       Institutional Department Type Code Sequence
(0008,0082)  X/Z/D   IN=K       Institution Code Sequence
(0008,0080)  X/Z/D   IN=K       Institution Name
(0010,1050)  X       -          Insurance Plan Identification
(3010,004D)  X/D     LF=K,LM=C  Intended Phase End Date
(3010,004C)  X/D     LF=K,LM=C  Intended Phase Start Date
(0040,1011)  X       -          Intended Recipients of Results Identification Sequence
(300A,0741)  D       LF=K,LM=C  Interlock DateTime
(300A,0742)  D       CD=C       Interlock Description
(300A,0783)  D       CD=C       Interlock Origin Description
(4008,0111)  X       -          Interpretation Approver Sequence
(4008,010C)  X       -          Interpretation Author
(4008,0115)  X       CD=C       Interpretation Diagnosis Description
(4008,0202)  X       -          Interpretation ID Issuer
(4008,0102)  X       -          Interpretation Recorder
(4008,010B)  X       CD=C       Interpretation Text
(4008,010A)  X       -          Interpretation Transcriber
(0008,3010)  U       UI=K       Irradiation Event UID
(0038,0011)  X       -          Issuer of Admission ID
(0038,0014)  X       -          Issuer of Admission ID Sequence
(0010,0021)  X       -          Issuer of Patient ID
(0038,0061)  X       -          Issuer of Service Episode ID
(0038,0064)  X       -          Issuer of Service Episode ID Sequence
(0040,0513)  Z       -          Issuer of the Container Identifier Sequence
(0040,0562)  Z       -          Issuer of the Specimen Identifier Sequence
(2200,0002)  X/Z     CD=C       Label Text
(0028,1214)  U       UI=K       Large Palette Color Lookup Table UID
(0010,21D0)  X       LF=K,LM=C  Last Menstrual Date
(0016,004F)  X       DV=K       Lens Make
(0016,0050)  X       DV=K       Lens Model
(0016,0051)  X       DV=K       Lens Serial Number
(0016,004E)  X       DV=K       Lens Specification
(0050,0021)  X       CD=C       Long Device Description
(0400,0404)  X       -          MAC
(0016,002B)  X       CD=C       Maker Note
(0018,100B)  U       UI=K,DV=K  Manufacturer's Device Class UID
(3010,0043)  Z       DV=K       Manufacturer's Device Identifier
(0002,0003)  U       UI=K       Media Storage SOP Instance UID
(0010,2000)  X       CD=C       Medical Alerts
(0010,1090)  X       -          Medical Record Locator
(0010,1080)  X       -          Military Rank
(0400,0550)  X       -          Modified Attributes Sequence
(0020,3406)  X       -          Modified Image Description
(0020,3401)  X       -          Modifying Device ID
(3008,0056)  X/D     LF=K,LM=C  Most Recent Treatment Date
(0018,937B)  X       CD=C       Multi-energy Acquisition Description
(003A,0310)  U       UI=K       Multiplex Group UID
(0008,1060)  X       -          Name of Physician(s) Reading Study
(0040,1010)  X       -          Names of Intended Recipients of Results
(0400,0551)  X       -          Nonconforming Modified Attributes Sequence
(0400,0552)  X       -          Nonconforming Data Element Value
(0040,A192)  X       LF=K,LM=C  Observation Date (Trial)
(0040,A402)  U       UI=K       Observation Subject UID (Trial)
(0040,A193)  X       LF=K,LM=C  Observation Time (Trial)
(0040,A171)  U       UI=K       Observation UID
(0010,2180)  X       CD=C       Occupation
(0008,1072)  X/D     -          Operator Identification Sequence
(0008,1070)  X/Z/D   -          Operators' Name
(0040,2010)  X       -          Order Callback Phone Number
(0040,2011)  X       -          Order Callback Telecom Information
(0040,2008)  X       -          Order Entered By
(0040,2009)  X       -          Order Enterer's Location
(0400,0561)  X       -          Original Attributes Sequence
(0010,1000)  X       -          Other Patient IDs
(0010,1002)  X       -          Other Patient IDs Sequence
(0010,1001)  X       -          Other Patient Names
(60xx,4000)  X       CG=C       Overlay Comments
(60xx,3000)  X       CG=C       Overlay Data
(0008,0024)  X       LF=K,LM=C  Overlay Date
(0008,0034)  X       LF=K,LM=C  Overlay Time
(300A,0760)  D       LF=K,LM=C  Override DateTime
(0028,1199)  U       UI=K       Palette Color Lookup Table UID
(0040,A07A)  X       -          Participant Sequence
(0010,1040)  X       -          Patient's Address
(0010,1010)  X       PC=K       Patient's Age
(0010,0030)  Z       -          Patient's Birth Date
(0010,1005)  X       -          Patient's Birth Name
(0010,0032)  X       -          Patient's Birth Time
(0038,0400)  X       -          Patient's Institution Residence
(0010,0050)  X       -          Patient's Insurance Plan Code Sequence
(0010,1060)  X       -          Patient's Mother's Birth Name
(0010,0010)  Z       -          Patient's Name
(0010,0101)  X       -          Patient's Primary Language Code Sequence
(0010,0102)  X       -          Patient's Primary Language Modifier Code Sequence
(0010,21F0)  X       -          Patient's Religious Preference
(0010,0040)  Z       PC=K       Patient's Sex
(0010,2203)  X/Z     PC=K       Patient's Sex Neutered
(0010,1020)  X       PC=K       Patient's Size
(0010,2155)  X       -          Patient's Telecom Information
(0010,2154)  X       -          Patient's Telephone Numbers
(0010,1030)  X       PC=K       Patient's Weight
(0010,4000)  X       CD=C       Patient Comments
(0010,0020)  Z       -          Patient ID
(300A,0650)  U       UI=K       Patient Setup UID
(0038,0500)  X       PC=C,CD=C  Patient State
(0040,1004)  X       -          Patient Transport Arrangements
(0040,0243)  X       -          Performed Location
(0040,0254)  X       CD=C       Performed Procedure Step Description
(0040,0250)  X       LF=K,LM=C  Performed Procedure Step End Date
(0040,4051)  X       LF=K,LM=C  Performed Procedure Step End DateTime
(0040,0251)  X       LF=K,LM=C  Performed Procedure Step End Time
(0040,0253)  X       -          Performed Procedure Step ID
(0040,0244)  X       LF=K,LM=C  Performed Procedure Step Start Date
(0040,4050)  X       LF=K,LM=C  Performed Procedure Step Start DateTime
(0040,0245)  X       LF=K,LM=C  Performed Procedure Step Start Time
(0040,0241)  X       DV=K       Performed Station AE Title
(0040,4030)  X       DV=K       Performed Station Geographic Location Code Sequence
(0040,0242)  X       DV=K       Performed Station Name
(0040,4028)  X       DV=K       Performed Station Name Code Sequence
(0008,1050)  X       -          Performing Physician's Name
(0008,1052)  X       -          Performing Physician Identification Sequence
(0040,1102)  X       -          Person's Address
(0040,1104)  X       -          Person's Telecom Information
(0040,1103)  X       -          Person's Telephone Numbers
(0040,1101)  D       -          Person Identification Code Sequence
(0040,A123)  D       -          Person Name
(0008,1048)  X       -          Physician(s) of Record
(0008,1049)  X       -          Physician(s) of Record Identification Sequence
(0008,1062)  X       -          Physician(s) Reading Study Identification Sequence
(4008,0114)  X       -          Physician Approving Interpretation
(0040,2016)  Z       -          Placer Order Number / Imaging Service Request
(0018,1004)  X       DV=K       Plate ID
(0010,21C0)  X       PC=K       Pregnancy Status
(0040,0012)  X       PC=C       Pre-Medication
(300A,000E)  X       CD=C       Prescription Description
(3010,007B)  Z       CD=C       Prescription Notes
(3010,0081)  Z       CD=C       Prescription Notes Sequence
(0070,1101)  U       UI=K       Presentation Display Collection UID
(0070,1102)  U       UI=K       Presentation Sequence Collection UID
(3010,0061)  X       CD=C       Prior Treatment Dose Description
(gggg,eeee)  X       SP=C       Private attributes (gggg odd)
(0040,4052)  X       LF=K,LM=C  Procedure Step Cancellation DateTime
(0018,1030)  X/D     CD=C       Protocol Name
(300A,0619)  D       CD=C       Radiation Dose Identification Label
(300A,0623)  D       CD=C       Radiation Dose In-Vivo Measurement Label
(300A,067D)  Z       CD=C       Radiation Generation Mode Description
(300A,067C)  D       CD=C       Radiation Generation Mode Label
(300C,0113)  X       CD=C       Reason for Omission Description
(0040,100A)  X       CD=C       Reason for Requested Procedure Code Sequence
(0032,1030)  X       CD=C       Reason for Study
(3010,005C)  Z       CD=C       Reason for Superseding
(0040,2001)  X       CD=C       Reason for the Imaging Service Request
(0040,1002)  X       CD=C       Reason for the Requested Procedure
(0032,1066)  X       CD=C       Reason for Visit
(0032,1067)  X       CD=C       Reason for Visit Code Sequence
(300A,073A)  D       LF=K,LM=C  Recorded RT Control Point DateTime
(3010,000B)  U       UI=K       Referenced Conceptual Volume UID
(0400,0402)  X       -          Referenced Digital Signature Sequence
(300A,0083)  U       UI=K       Referenced Dose Reference UID
(3010,006F)  U       UI=K       Referenced Dosimetric Objective UID
(3010,0031)  U       UI=K       Referenced Fiducials UID
(3006,0024)  U       UI=K       Referenced Frame of Reference UID
(0040,4023)  U       UI=K       Referenced General Purpose Scheduled Procedure Step Transaction UID
(0008,1140)  X/Z/U*  UI=K       Referenced Image Sequence
(0040,A172)  U       UI=K       Referenced Observation UID (Trial)
(0038,0004)  X       -          Referenced Patient Alias Sequence
(0010,1100)  X       -          Referenced Patient Photo Sequence
(0008,1120)  X       UI=X       Referenced Patient Sequence
(0008,1111)  X/Z/D   UI=K       Referenced Performed Procedure Step Sequence
(0400,0403)  X       -          Referenced SOP Instance MAC Sequence
(0008,1155)  U       UI=K       Referenced SOP Instance UID
(0004,1511)  U       UI=K       Referenced SOP Instance UID in File
(0008,1110)  X/Z     UI=K       Referenced Study Sequence
(0008,0092)  X       -          Referring Physician's Address
(0008,0090)  Z       -          Referring Physician's Name
(0008,0094)  X       -          Referring Physician's Telephone Numbers
(0008,0096)  X       -          Referring Physician Identification Sequence
(0010,2152)  X       -          Region of Residence
(3006,00C2)  U       UI=K       Related Frame of Reference UID
(0040,0275)  X       CD=C       Request Attributes Sequence
(0032,1070)  X       CD=C       Requested Contrast Agent
(0040,1400)  X       CD=C       Requested Procedure Comments
(0032,1060)  X/Z     CD=C       Requested Procedure Description
(0040,1001)  X       -          Requested Procedure ID
(0040,1005)  X       -          Requested Procedure Location
(0018,9937)  X       CD=C       Requested Series Description
(0000,1001)  U       UI=K       Requested SOP Instance UID
(0032,1032)  X       -          Requesting Physician
(0032,1033)  X       -          Requesting Service
(0018,9185)  X       CD=C       Respiratory Motion Compensation Technique Description
(0010,2299)  X       -          Responsible Organization
(0010,2297)  X       -          Responsible Person
(4008,4000)  X       CD=C       Results Comments
(4008,0118)  X       -          Results Distribution List Sequence
(4008,0042)  X       -          Results ID Issuer
(300E,0008)  X/Z     -          Reviewer Name
(3006,0028)  X       CD=C       ROI Description
(3006,0038)  X       CD=C       ROI Generation Description
(3006,00A6)  Z       -          ROI Interpreter
(3006,0026)  Z       CD=C       ROI Name
(3006,0088)  X       CD=C       ROI Observation Description
(3006,0085)  X       CD=C       ROI Observation Label
(300A,0615)  Z       -          RT Accessory Device Slot ID
(300A,0611)  Z       -          RT Accessory Holder Slot ID
(3010,005A)  Z       CD=C       RT Physician Intent Narrative
(300A,0006)  X/D     LF=K,LM=C  RT Plan Date
(300A,0004)  X       CD=C       RT Plan Description
(300A,0002)  D       CD=C       RT Plan Label
(300A,0003)  X       CD=C       RT Plan Name
(300A,0007)  X/D     LF=K,LM=C  RT Plan Time
(3010,0054)  D       CD=C       RT Prescription Label
(300A,062A)  D       CD=C       RT Tolerance Set Label
(3010,0056)  X/D     CD=C       RT Treatment Approach Label
(3010,003B)  U       UI=K       RT Treatment Phase UID
(0040,4034)  X       -          Scheduled Human Performers Sequence
(0038,001E)  X       -          Scheduled Patient Institution Residence
(0040,0006)  X       -          Scheduled Performing Physician's Name
(0040,000B)  X       -          Scheduled Performing Physician Identification Sequence
(0040,0007)  X       CD=C       Scheduled Procedure Step Description
(0040,0004)  X       LF=K,LM=C  Scheduled Procedure Step End Date
(0040,0005)  X       LF=K,LM=C  Scheduled Procedure Step End Time
(0040,4008)  X       LF=K,LM=C  Scheduled Procedure Step Expiration DateTime
(0040,0009)  X       -          Scheduled Procedure Step ID
(0040,0011)  X       DV=K       Scheduled Procedure Step Location
(0040,4010)  X       LF=K,LM=C  Scheduled Procedure Step Modification DateTime
(0040,0002)  X       LF=K,LM=C  Scheduled Procedure Step Start Date
(0040,4005)  X       LF=K,LM=C  Scheduled Procedure Step Start DateTime
(0040,0003)  X       LF=K,LM=C  Scheduled Procedure Step Start Time
(0040,0001)  X       DV=K       Scheduled Station AE Title
(0040,4027)  X       DV=K       Scheduled Station Geographic Location Code Sequence
(0040,0010)  X       DV=K       Scheduled Station Name
(0040,4025)  X       DV=K       Scheduled Station Name Code Sequence
(0032,1020)  X       DV=K       Scheduled Study Location
(0032,1021)  X       DV=K       Scheduled Study Location AE Title
(0008,0021)  X/D     LF=K,LM=C  Series Date
(0008,103E)  X       CD=C       Series Description
(0020,000E)  U       UI=K       Series Instance UID
(0008,0031)  X/D     LF=K,LM=C  Series Time
(0038,0062)  X       CD=C       Service Episode Description
(0038,0060)  X       -          Service Episode ID
(300A,01B2)  X       CD=C       Setup Technique Description
(300A,01A6)  X       CD=C       Shielding Device Description
(0040,06FA)  X       -          Slide Identifier
(0010,21A0)  X       PC=K       Smoking Status
(0008,0018)  U       UI=K       SOP Instance UID
(3010,0015)  U       UI=K       Source Conceptual Volume UID
(0018,936A)  D       LF=K,LM=C  Source End DateTime
(0034,0005)  D       -          Source Identifier
(0008,2112)  X/Z/U*  UI=K       Source Image Sequence
(300A,0216)  X       DV=K       Source Manufacturer
(3008,0105)  X/Z     DV=K       Source Serial Number
(0018,9369)  D       LF=K,LM=C  Source Start DateTime
(0038,0050)  X       PC=C       Special Needs
(0040,050A)  X       -          Specimen Accession Number
(0040,0602)  X       CD=C       Specimen Detailed Description
(0040,0551)  D       -          Specimen Identifier
(0040,0610)  Z       CS=C       Specimen Preparation Sequence
(0040,0600)  X       CD=C       Specimen Short Description
(0040,0554)  U       UI=K       Specimen UID
(0018,9516)  X/D     LF=K,LM=C  Start Acquisition DateTime
(0008,1010)  X/Z/D   DV=K       Station Name
(0088,0140)  U       UI=K       Storage Media File-set UID
(3006,0008)  Z       LF=K,LM=C  Structure Set Date
(3006,0006)  X       CD=C       Structure Set Description
(3006,0002)  D       CD=C       Structure Set Label
(3006,0004)  X       CD=C       Structure Set Name
(3006,0009)  X/D     LF=K,LM=C  Structure Set Time
(0032,4000)  X       CD=C       Study Comments
(0008,0020)  Z       LF=K,LM=C  Study Date
(0008,1030)  X       CD=C       Study Description
(0020,0010)  Z       -          Study ID
(0032,0012)  X       -          Study ID Issuer
(0020,000D)  U       UI=K       Study Instance UID
(0008,0030)  Z       LF=K,LM=C  Study Time
(0020,0200)  U       UI=K       Synchronization Frame of Reference UID
(0018,2042)  U       UI=K       Target UID
(0040,A354)  X       -          Telephone Number (Trial)
(0040,DB0D)  U       UI=K       Template Extension Creator UID
(0040,DB0C)  U       UI=K       Template Extension Organization UID
(4000,4000)  X       -          Text Comments
(2030,0020)  X       -          Text String
(0008,0201)  X       LF=K,LM=C  Timezone Offset From UTC
(0088,0910)  X       -          Topic Author
(0088,0912)  X       -          Topic Keywords
(0088,0906)  X       -          Topic Subject
(0088,0904)  X       -          Topic Title
(0062,0021)  U       UI=K       Tracking UID
(0008,1195)  U       UI=K       Transaction UID
(0018,5011)  X       DV=K       Transducer Identification Sequence
(3008,0250)  X/D     LF=K,LM=C  Treatment Date
(300A,00B2)  X       DV=K       Treatment Machine Name
(300A,0608)  D       CD=C       Treatment Position Group Label
(300A,0609)  U       UI=K       Treatment Position Group UID
(300A,0700)  U       UI=K       Treatment Session UID
(3010,0077)  D       CD=C       Treatment Site
(3010,007A)  Z       CD=C       Treatment Technique Notes
(3008,0251)  X/D     LF=K,LM=C  Treatment Time
(300A,0736)  D       LF=K,LM=C  Treatment Tolerance Violation DateTime
(300A,0734)  D       CD=C       Treatment Tolerance Violation Description
(0018,100A)  X       DV=K       UDI Sequence
(0040,A124)  U       -          UID
(0018,1009)  X       DV=K       Unique Device Identifier
(3010,0033)  D       CD=C       User Content Label
(3010,0034)  D       CD=C       User Content Long Label
(0040,A352)  X       -          Verbal Source (Trial)
(0040,A358)  X       -          Verbal Source Identifier Code Sequence (Trial)
(0040,A088)  Z       -          Verifying Observer Identification Code Sequence
(0040,A075)  D       -          Verifying Observer Name
(0040,A073)  D       -          Verifying Observer Sequence
(0040,A027)  D       -          Verifying Organization
(0038,4000)  X       CD=C       Visit Comments
(0018,9371)  D       DV=K       X-Ray Detector ID
(0018,9373)  X       DV=K       X-Ray Detector Label
(0018,9367)  D       DV=K       X-Ray Source ID
"""


@dataclass(frozen=True)
class Row:
    tag: str  # "(0008,0050)", "(60xx,3000)" or "(gggg,eeee)"
    name: str
    basic: str  # "Z", "X/Z/D", ...
    options: dict[str, str]  # option name -> action, only where the table has one

    def action(self, enabled: frozenset[str] | set[str]) -> str:
        """The action with the given options: an option's column wins over the Basic Profile;
        where two enabled options both have a column, keeping wins over cleaning (K > C > X),
        since each option exists to retain something the other does not ask to lose."""
        found = [self.options[o] for o in self.options if o in enabled]
        if not found:
            return self.basic
        for code in ("K", "C", "X"):
            if code in found:
                return code
        return found[0]


def _parse(text: str) -> tuple[Row, ...]:
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        tag, basic, opts, name = line.split(None, 3)
        options: dict[str, str] = {}
        if opts != "-":
            for item in opts.split(","):
                column, action = item.split("=")
                options[OPTION_COLUMNS[column]] = action
        rows.append(Row(tag=tag, name=name, basic=basic, options=options))
    return tuple(rows)


ROWS: tuple[Row, ...] = _parse(_ROWS)

# Exact tags (int) -> row; the patterns are matched by ``row_for``.
BY_TAG: dict[int, Row] = {
    int(r.tag[1:5] + r.tag[6:10], 16): r for r in ROWS if "x" not in r.tag and "g" not in r.tag
}
CURVE_ROW = next(r for r in ROWS if r.tag == "(50xx,xxxx)")
OVERLAY_DATA_ROW = next(r for r in ROWS if r.tag == "(60xx,3000)")
OVERLAY_COMMENTS_ROW = next(r for r in ROWS if r.tag == "(60xx,4000)")
PRIVATE_ROW = next(r for r in ROWS if r.tag == "(gggg,eeee)")


def row_for(tag: int) -> Row | None:
    """The table row that governs ``tag`` (an int), or None when the table does not list it."""
    row = BY_TAG.get(tag)
    if row is not None:
        return row
    group, element = tag >> 16, tag & 0xFFFF
    if group & 1:
        return PRIVATE_ROW
    if 0x5000 <= group <= 0x50FF and not group & 1:
        return CURVE_ROW
    if 0x6000 <= group <= 0x60FF and not group & 1:
        if element == 0x3000:
            return OVERLAY_DATA_ROW
        if element == 0x4000:
            return OVERLAY_COMMENTS_ROW
    return None
