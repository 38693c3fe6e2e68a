"""DCMTK `dcmprscp` as a film imager for print tests, configured from the test.

`Dcmprscp` writes a ``dcmpstat.cfg`` into its own folder (database, spool and log folders under
it), with one or more LOCALPRINTER entries, and runs ``/usr/bin/dcmprscp -c CFG -p NAME`` on a
free loopback port. dcmprscp does not print: on a Film Box N-ACTION it stores one Stored Print
object (1.2.840.10008.5.1.1.27) plus one Hardcopy Grayscale image (1.2.840.10008.5.1.1.29) per
filled image box in the database folder, and ``stored_prints()`` / ``hardcopy_images()`` read
them back with pydicom.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import FileDataset

from tests.peers import LOOPBACK, dcmtk, free_port, wait_for_port

STORED_PRINT_SOP_CLASS = "1.2.840.10008.5.1.1.27"
HARDCOPY_GRAYSCALE_SOP_CLASS = "1.2.840.10008.5.1.1.29"

FULL_DISPLAY_FORMATS = ("1,1", "1,2", "2,2", "2,3", "3,3", "3,4", "3,5", "4,4", "4,5")
FULL_FILM_SIZES = (
    "8INX10IN",
    "10INX12IN",
    "10INX14IN",
    "11INX14IN",
    "14INX14IN",
    "14INX17IN",
    "24CMX24CM",
    "24CMX30CM",
)


@dataclass
class PrinterEntry:
    """One LOCALPRINTER section of dcmpstat.cfg (dcmprscp's emulated film imager).

    ``display_formats`` are ``c,r`` pairs for portrait (dcmprscp derives landscape itself).
    Lists become backslash-separated values; an empty list or None omits the key, which for the
    optional keys (min density, border/empty density, resolution, smoothing) makes dcmprscp
    refuse the attribute.
    """

    name: str
    ae_title: str
    display_formats: Sequence[str] = FULL_DISPLAY_FORMATS
    film_sizes: Sequence[str] = FULL_FILM_SIZES
    medium_types: Sequence[str] = ("PAPER", "CLEAR FILM", "BLUE FILM")
    film_destinations: Sequence[str] = ("MAGAZINE", "PROCESSOR", "BIN_1", "BIN_2")
    magnification_types: Sequence[str] = ("REPLICATE", "BILINEAR", "CUBIC", "NONE")
    max_density: Sequence[str] = ("320",)
    min_density: Sequence[str] = ("20",)
    border_density: Sequence[str] = ("150", "20", "BLACK", "WHITE")
    empty_image_density: Sequence[str] = ("20", "BLACK", "WHITE")
    resolution_ids: Sequence[str] = ("STANDARD", "HIGH")
    smoothing_types: Sequence[str] = ("NONE",)
    implicit_only: bool = False
    disable_new_vrs: bool = False
    max_pdu: int = 32768
    supports_12bit: bool = True
    presentation_lut: bool = True
    presentation_lut_match_required: bool = False
    presentation_lut_in_film_session: bool = False
    omit_sop_class_uid_from_create_response: bool = False
    supports_trim: bool = True
    supports_image_size: bool = True
    supports_decimate_crop: bool = True
    configuration_information: Sequence[str] = field(default_factory=tuple)

    def section(self, port: int) -> str:
        def flag(value: bool) -> str:
            return "true" if value else "false"

        lines = [
            f"[{self.name}]",
            f"Aetitle = {self.ae_title}",
            f"Description = test printer {self.name}",
            f"Hostname = {LOOPBACK}",
            f"Port = {port}",
            "Type = LOCALPRINTER",
            f"ImplicitOnly = {flag(self.implicit_only)}",
            f"DisableNewVRs = {flag(self.disable_new_vrs)}",
            f"MaxPDU = {self.max_pdu}",
            f"DisplayFormat = {chr(92).join(self.display_formats)}",
            f"Supports12Bit = {flag(self.supports_12bit)}",
            f"SupportsPresentationLUT = {flag(self.presentation_lut)}",
            f"PresentationLUTMatchRequired = {flag(self.presentation_lut_match_required)}",
            f"PresentationLUTinFilmSession = {flag(self.presentation_lut_in_film_session)}",
            "OmitSOPClassUIDFromCreateResponse = "
            + flag(self.omit_sop_class_uid_from_create_response),
            f"SupportsTrim = {flag(self.supports_trim)}",
            f"SupportsImageSize = {flag(self.supports_image_size)}",
            f"SupportsDecimateCrop = {flag(self.supports_decimate_crop)}",
        ]
        for key, values in (
            ("FilmSizeID", self.film_sizes),
            ("MediumType", self.medium_types),
            ("FilmDestination", self.film_destinations),
            ("MagnificationType", self.magnification_types),
            ("MaxDensity", self.max_density),
            ("MinDensity", self.min_density),
            ("BorderDensity", self.border_density),
            ("EmptyImageDensity", self.empty_image_density),
            ("ResolutionID", self.resolution_ids),
            ("SmoothingType", self.smoothing_types),
        ):
            if values:
                lines.append(f"{key} = {chr(92).join(values)}")
        for number, text in enumerate(self.configuration_information, start=1):
            lines.append(f"Configuration_{number} = {text}")
        return "\n".join(lines) + "\n"


def full_printer(name: str = "FULLPRINTER", ae_title: str = "FULLPRINTER") -> PrinterEntry:
    """Explicit and implicit VR, nine layouts, eight film sizes, 12 bit, Presentation LUT (no
    match rule), trim, image size, decimate/crop, densities. dcmprscp itself has no Annotation
    Box support (its configuration file says to omit ``Annotation`` for LOCALPRINTER entries),
    so annotation tests need the pynetdicom fake printer."""
    return PrinterEntry(name=name, ae_title=ae_title)


def restricted_printer(name: str = "RESTRICTED", ae_title: str = "RESTRICTED") -> PrinterEntry:
    """Implicit VR only, ``STANDARD\\1,1`` only, no Presentation LUT, no optional attributes,
    Affected SOP Class UID left out of N-CREATE-RSP, 16 KiB PDUs."""
    return PrinterEntry(
        name=name,
        ae_title=ae_title,
        display_formats=("1,1",),
        film_sizes=("8INX10IN", "11INX14IN", "14INX17IN"),
        medium_types=("STOREDPRINT",),
        film_destinations=("STOREDPRINT",),
        min_density=(),
        border_density=(),
        empty_image_density=(),
        resolution_ids=(),
        smoothing_types=(),
        implicit_only=True,
        disable_new_vrs=True,
        max_pdu=16384,
        presentation_lut=False,
        presentation_lut_match_required=True,
        omit_sop_class_uid_from_create_response=True,
        supports_trim=False,
        supports_image_size=False,
        supports_decimate_crop=False,
    )


def write_config(folder: Path, printers: Sequence[PrinterEntry], ports: dict[str, int]) -> Path:
    """A minimal dcmpstat.cfg with absolute database, spool and log folders under ``folder``."""
    for sub in ("database", "spool", "log", "lut"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    general = f"""[[GENERAL]]
[APPLICATION]
LogDirectory = {folder / "log"}
LogFile = general.log
LogLevel = INFO
MessagePort = 0
KeepMessagePortOpen = false
[PRINT]
Directory = {folder / "spool"}
DetailedLog = false
BinaryLog = false
DefaultIllumination = 2000
DefaultReflection = 10
DeletePrintJobs = true
AlwaysDeleteTerminateJobs = true
[DATABASE]
Directory = {folder / "database"}
[LUT]
Directory = {folder / "lut"}

[[COMMUNICATION]]
"""
    sections = "\n".join(p.section(ports[p.name]) for p in printers)
    path = folder / "dcmpstat.cfg"
    path.write_text(general + sections, encoding="ascii")
    return path


class Dcmprscp:
    """``dcmprscp`` emulating one configured printer on a free loopback port.

    The config file may hold several printers (each given its own port); ``printer`` picks the
    one this process serves (``-p``), by default the first.
    """

    def __init__(
        self,
        folder: Path,
        printers: Sequence[PrinterEntry] | None = None,
        printer: str | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.printers = list(printers) if printers else [full_printer()]
        self.ports = {p.name: free_port() for p in self.printers}
        chosen = printer or self.printers[0].name
        entry = next((p for p in self.printers if p.name == chosen), None)
        if entry is None:
            raise ValueError(f"no printer named {chosen!r} in {[p.name for p in self.printers]}")
        self.entry = entry
        self.port = self.ports[chosen]
        self.ae_title = entry.ae_title
        self.config_path = write_config(folder, self.printers, self.ports)
        self.database = folder / "database"
        self.log_path = folder / f"dcmprscp-{chosen}.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [dcmtk("dcmprscp"), "-c", str(self.config_path), "-p", chosen, "-v", "+d", *extra],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
        try:
            wait_for_port(self.port, proc=self.proc)
        except Exception:
            self.stop()
            raise

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def _objects(self, sop_class_uid: str) -> list[FileDataset]:
        found = []
        for path in sorted(self.database.rglob("*")):
            if not path.is_file() or path.name.startswith("index"):
                continue
            try:
                ds = pydicom.dcmread(path)
            except Exception:  # noqa: BLE001 - not a DICOM file (lock or index files)
                continue
            if ds.get("SOPClassUID") == sop_class_uid:
                found.append(ds)
        return found

    def stored_prints(self) -> list[FileDataset]:
        return self._objects(STORED_PRINT_SOP_CLASS)

    def hardcopy_images(self) -> list[FileDataset]:
        return self._objects(HARDCOPY_GRAYSCALE_SOP_CLASS)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code
