"""Scanner-side DICOM appliance: engine and daemon."""

__version__ = "0.1.0"

# Our own UID root (a UUID-derived 2.25 root, so it is globally unique without a registration).
IMPLEMENTATION_CLASS_UID = "2.25.41209923376020867434783941583668618647"
IMPLEMENTATION_VERSION_NAME = "DICOMAPPL_010"
