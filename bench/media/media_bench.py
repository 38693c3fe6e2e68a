#!/usr/bin/env python3
"""Media benchmark: file-set, DICOMDIR and ISO image for a 1,000-image CT study, ours against
DCMTK ``dcmmkdir`` plus ``xorriso`` over the same files.

Stores ``--count`` CT images (512 x 512, 16 bit, Explicit VR Little Endian, about 0.5 MB each)
in a fresh archive under bench/results, then times, in alternating rounds:

- ours: ``fileset.plan_discs`` + ``fileset.build_fileset`` (STD-GEN-CD: copies the archive's
  files into DICOM/PAT00001/..., DICOMDIR through pydicom's FileSet, README.TXT, INDEX.HTM,
  LABEL.TXT) + ``optical.make_iso`` (xorriso, ISO 9660 + Joliet + Rock Ridge);
- the reference: the same archive files copied into the same 8-character tree, DCMTK
  ``/usr/bin/dcmmkdir -Pgp +r +id DIR DICOM +D DIR/DICOMDIR`` (STD-GEN-CD) and
  ``/usr/bin/xorriso`` with the same image options as ``optical.make_iso``.

Every round starts with no output on disk (each round's folders and ISO are deleted); the
archive files are in the page cache for both sides. Prints each round's times, the medians
and the ratio ours/reference (target: at most 1.2), and saves them as JSON in
bench/results/media-DATE-TIME.json.

Run from the repository root: ``bench/media/media_bench.py [--count 1000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom.dsutils import encode  # noqa: E402

from appliance import fileset, optical  # noqa: E402
from appliance.archive import Archive  # noqa: E402
from tests.factories import ct_dataset  # noqa: E402
from tests.peers import dcmtk  # noqa: E402

RESULTS = REPO / "bench" / "results"
XORRISO = "/usr/bin/xorriso"
VOLUME_ID = "BENCH_CT"


def fill_archive(archive: Archive, count: int) -> str:
    study, series = generate_uid(), generate_uid()
    for number in range(1, count + 1):
        ds = ct_dataset(
            study_uid=study, series_uid=series, instance_number=number, rows=512, columns=512
        )
        archive.store_encoded(
            encode(ds, False, True),
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            transfer_syntax=ExplicitVRLittleEndian,
            source_ae="BENCH",
        )
    return study


def ours(archive: Archive, study: str, work: Path) -> tuple[float, dict[str, float]]:
    started = time.perf_counter()
    discs = fileset.plan_discs(archive, [study], fileset.CD_BYTES)
    planned = time.perf_counter()
    built = fileset.build_fileset(discs[0], archive, work / "ours")
    done_build = time.perf_counter()
    optical.make_iso(built.folder, work / "ours.iso", VOLUME_ID)
    done = time.perf_counter()
    return done - started, {
        "plan": planned - started,
        "build": done_build - planned,
        "iso": done - done_build,
    }


def reference(archive: Archive, study: str, work: Path) -> tuple[float, dict[str, float]]:
    # Which file goes where is not timed: the reference gets the layout for free.
    records = fileset.study_instances(archive, [study])
    folder = work / "ref"
    series_dir = folder / "DICOM" / "PAT00001" / "STU00001" / "SER00001"
    started = time.perf_counter()
    series_dir.mkdir(parents=True)
    for n, record in enumerate(records, 1):
        shutil.copyfile(record.path, series_dir / f"IMG{n:05d}")
    copied = time.perf_counter()
    subprocess.run(
        [dcmtk("dcmmkdir"), "-q", "-Pgp", "+r", "+id", str(folder), "DICOM"]
        + ["+D", str(folder / "DICOMDIR")],
        check=True,
    )
    dicomdir = time.perf_counter()
    subprocess.run(
        [XORRISO, "-abort_on", "FAILURE", "-outdev", f"stdio:{work / 'ref.iso'}"]
        + ["-volid", VOLUME_ID, "-joliet", "on", "-rockridge", "on"]
        + ["-map", str(folder), "/", "-close", "on", "-commit"],
        check=True,
        capture_output=True,
    )
    done = time.perf_counter()
    return done - started, {
        "copy": copied - started,
        "dcmmkdir": dicomdir - copied,
        "xorriso": done - dicomdir,
    }


def clean(work: Path) -> None:
    for name in ("ours", "ref"):
        shutil.rmtree(work / name, ignore_errors=True)
    for name in ("ours.iso", "ref.iso"):
        (work / name).unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="media-", dir=RESULTS))
    try:
        archive = Archive(work / "data")
        started = time.perf_counter()
        study = fill_archive(archive, args.count)
        print(f"{args.count} CT images 512x512 stored in {time.perf_counter() - started:.1f} s")
        rounds: list[dict] = []
        for n in range(args.warmup + args.rounds):
            # Alternate which side goes first, so neither always gets the warmer cache.
            sides = [("ours", ours), ("reference", reference)]
            if n % 2:
                sides.reverse()
            result: dict = {}
            for name, run in sides:
                total, parts = run(archive, study, work)
                result[name] = {"seconds": total, **parts}
                clean(work)
            label = "warmup" if n < args.warmup else f"round {n - args.warmup + 1}"
            print(
                f"{label}: ours {result['ours']['seconds']:.2f} s ("
                + ", ".join(f"{k} {v:.2f}" for k, v in result["ours"].items() if k != "seconds")
                + f"), reference {result['reference']['seconds']:.2f} s ("
                + ", ".join(
                    f"{k} {v:.2f}" for k, v in result["reference"].items() if k != "seconds"
                )
                + ")"
            )
            if n >= args.warmup:
                rounds.append(result)
        ours_median = statistics.median(r["ours"]["seconds"] for r in rounds)
        ref_median = statistics.median(r["reference"]["seconds"] for r in rounds)
        ratio = ours_median / ref_median
        verdict = "met" if ratio <= 1.2 else "NOT met"
        print(
            f"median: ours {ours_median:.2f} s, dcmmkdir + xorriso {ref_median:.2f} s,"
            f" ratio {ratio:.2f} (target <= 1.2: {verdict})"
        )
        out = RESULTS / f"media-{datetime.now():%Y%m%d-%H%M%S}.json"
        out.write_text(
            json.dumps(
                {
                    "count": args.count,
                    "rounds": rounds,
                    "ours_median": ours_median,
                    "reference_median": ref_median,
                    "ratio": ratio,
                    "python": platform.python_version(),
                    "machine": platform.machine(),
                },
                indent=2,
            )
        )
        print(f"saved {out.relative_to(REPO)}")
        return 0 if ratio <= 1.2 else 1
    finally:
        archive_ref = locals().get("archive")
        if archive_ref is not None:
            archive_ref.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
