#!/usr/bin/env python3
"""Anonymization benchmark: 300 CT images through the Basic Profile, ours against dicognito.

dicognito is not a dependency of the appliance: the first run installs it from PyPI into
``bench/results/dicognito-lib`` (``pip install --target``) and its side runs with that folder
on PYTHONPATH (it brings its own copy of pydicom; the bench says which versions it used).

The images: ``--count`` CT images (512 x 512, 16 bit, Explicit VR Little Endian, about 0.5 MB
each, patient, study, accession, referring physician, dates) generated once into
``bench/results/ct-COUNT-512x512/`` (shared with bench/ingest) and reused.

Two measurements, each side in a fresh Python process per round (alternating, ``--rounds``
each), timed inside the process from the first file to the last (imports excluded: the modules
ours loads on first use are imported before the clock starts):

- ``files``: each product's own folder-to-folder path. Ours: ``anonymize --input --output``
  (``appliance.anonymize_jobs.anonymize_files``: read, Basic Profile in place, Part 10 file
  written under a temporary name and renamed, one ``syncfs`` at the end). dicognito: its
  command line (``dicognito.__main__.main(["--quiet", "-o", OUT, SRC])``: read, anonymize,
  save; no fsync).
- ``memory``: the engines alone over the same files: read, anonymize (ours in place, as its
  job runner and CLI do; dicognito always edits in place), encode the result to bytes with
  pydicom's ``write_dataset`` (ours directly, dicognito's through pynetdicom's ``encode``, a
  thin wrapper of it), nothing written.

Prints images/s per round, the medians and the ratio ours/dicognito (target: at least 1), and
saves them as JSON in bench/results/anonymize-DATE-TIME.json.

Run from the repository root: ``bench/anonymize/anonymize_bench.py [--count 300] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
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
RESULTS = REPO / "bench" / "results"
DICOGNITO_LIB = RESULTS / "dicognito-lib"
SIDES = ("ours", "dicognito")
MODES = ("files", "memory")


# --- set-up --------------------------------------------------------------------------------------


def ensure_images(count: int) -> Path:
    folder = RESULTS / f"ct-{count}-512x512"
    if folder.is_dir() and len(list(folder.glob("ct*.dcm"))) == count:
        return folder
    sys.path.insert(0, str(REPO))
    from tests.factories import write_ct_series

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_ct_series(tmp, count, rows=512, columns=512)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def ensure_dicognito() -> str:
    if not (DICOGNITO_LIB / "dicognito").is_dir():
        print(f"installing dicognito into {DICOGNITO_LIB} (bench only)", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(DICOGNITO_LIB),
             "dicognito"],
            check=True,
        )  # fmt: skip
    version = subprocess.run(
        [sys.executable, "-c", "import dicognito, pydicom; print(dicognito.__version__, "
         "pydicom.__version__)"],
        env=_env("dicognito"), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return version.stdout.strip()


def _env(side: str) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(DICOGNITO_LIB)] if side == "dicognito" else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(REPO)])
    return env


# --- one round in its own process ----------------------------------------------------------------


def worker(side: str, mode: str, source: Path, out: Path) -> dict:
    """Runs inside the child: returns {"seconds", "images"}."""
    files = sorted(source.glob("*.dcm"))
    if side == "ours":
        # The modules the files path imports on first use, imported before the clock starts
        # as dicognito's are (its command line imports everything up front).
        import appliance.anonymize
        import appliance.archive
        import appliance.fileio
        import appliance.pixel_guard
        import appliance.pseudonyms  # noqa: F401
        from appliance.anonymize_jobs import Worker, anonymize_files, encode_dataset
        from appliance.config import ConfigStore

        data = out / "data"
        config = ConfigStore(data)
        if mode == "files":
            started = time.perf_counter()
            report = anonymize_files(config, data, "basic", source, out / "copies")
            seconds = time.perf_counter() - started
            assert len(report.done) == len(files), report.as_dict()
            return {"seconds": seconds, "images": len(report.done)}
        import pydicom

        with Worker(config, data, "basic") as engine:
            started = time.perf_counter()
            for path in files:
                # Read for this alone, as the job runner and the CLI do: edited in place.
                outcome = engine.anonymize(pydicom.dcmread(path), in_place=True)
                assert outcome.ok and outcome.dataset is not None, outcome
                encode_dataset(outcome.dataset)
            seconds = time.perf_counter() - started
        return {"seconds": seconds, "images": len(files)}

    import pydicom
    from dicognito.__main__ import main as dicognito_main
    from dicognito.anonymizer import Anonymizer
    from pynetdicom.dsutils import encode

    if mode == "files":
        started = time.perf_counter()
        dicognito_main(["--quiet", "--output-directory", str(out / "copies"), str(source)])
        seconds = time.perf_counter() - started
        written = len(list((out / "copies").rglob("*.dcm")))
        assert written == len(files), written
        return {"seconds": seconds, "images": written}
    anonymizer = Anonymizer()
    started = time.perf_counter()
    for path in files:
        ds = pydicom.dcmread(path)
        anonymizer.anonymize(ds)
        encode(ds, False, True)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "images": len(files)}


def one_round(side: str, mode: str, source: Path) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"anon-{side}-", dir=RESULTS))
    try:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", side, mode,
             str(source), str(out)],
            env=_env(side), capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{side} {mode} failed:\n{done.stdout}\n{done.stderr}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    result["rate"] = result["images"] / result["seconds"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--worker", nargs=4, metavar=("SIDE", "MODE", "SRC", "OUT"))
    args = parser.parse_args()
    if args.worker:
        side, mode, source, out = args.worker
        print(json.dumps(worker(side, mode, Path(source), Path(out))))
        return 0

    RESULTS.mkdir(parents=True, exist_ok=True)
    source = ensure_images(args.count)
    versions = ensure_dicognito()
    print(f"{args.count} CT images 512x512 in {source}; dicognito and its pydicom: {versions}")
    figures: dict[str, dict[str, list[float]]] = {m: {s: [] for s in SIDES} for m in args.modes}
    for mode in args.modes:
        for number in range(1, args.rounds + 1):
            for side in SIDES:
                result = one_round(side, mode, source)
                figures[mode][side].append(result["rate"])
                print(
                    f"{mode:<6} round {number}  {side:<9} {result['rate']:7.1f} img/s "
                    f"({result['seconds']:.2f} s)",
                    flush=True,
                )
    summary = {}
    for mode, sides in figures.items():
        ours, theirs = statistics.median(sides["ours"]), statistics.median(sides["dicognito"])
        summary[mode] = {"ours": ours, "dicognito": theirs, "ratio": ours / theirs}
        print(
            f"{mode:<6} median: ours {ours:.1f} img/s, dicognito {theirs:.1f} img/s, "
            f"ratio {ours / theirs:.2f}"
        )
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    report = {
        "count": args.count,
        "rounds": args.rounds,
        "rates": figures,
        "summary": summary,
        "dicognito": versions,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    path = RESULTS / f"anonymize-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
