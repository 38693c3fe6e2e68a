#!/usr/bin/env python3
"""Print benchmark: a 20-film 4x5 CT print job to DCMTK dcmprscp, and the render time per film.

Stores ``--films`` x 20 CT images (512 x 512, 16 bit) in a fresh archive under bench/results,
starts DCMTK ``dcmprscp`` (the full-featured test printer of ``tests/print_peers.py``, 12 bit,
every film stored as a Stored Print plus Hardcopy images in its database; with
``TCP_NODELAY=1`` unless ``--peer-nagle``), and runs one
``print`` job through the job engine: ``STANDARD\\4,5`` on 14INX17IN, one association per film.
Prints the job's wall time (submit to succeeded) and films per minute. Then, for each film
alone: reading its 20 images from the archive and rendering them into the 20 preformatted
12-bit image box items the printer gets (``print_scu.render_film``, at the Print SCU's default
resolution, and at ``--dpi`` for a sharper printer); median and worst per film. Target: under
0.5 s per film, so the imager is never kept waiting.

Run from the repository root:
``bench/print/print_bench.py [--films 20] [--dpi 300] [--peer-nagle]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom.dsutils import encode  # noqa: E402

from appliance import print_scu  # noqa: E402
from appliance.archive import Archive  # noqa: E402
from appliance.config import ConfigStore, Printer  # noqa: E402
from appliance.events import EventBus  # noqa: E402
from appliance.job_engine import JobEngine  # noqa: E402
from appliance.job_store import JobStore  # noqa: E402
from appliance.print_jobs import (  # noqa: E402
    PrinterStatusBoard,
    compose_films,
    load_images,
    register_print,
)
from tests.factories import ct_dataset  # noqa: E402
from tests.peers import LOOPBACK  # noqa: E402
from tests.print_peers import Dcmprscp  # noqa: E402

RESULTS = REPO / "bench" / "results"
LAYOUT = "STANDARD\\4,5"
FILM_SIZE = "14INX17IN"
PER_FILM = 20


def fill_archive(archive: Archive, count: int) -> str:
    study, series = generate_uid(), generate_uid()
    for number in range(1, count + 1):
        ds = ct_dataset(
            study_uid=study, series_uid=series, instance_number=number, rows=512, columns=512
        )
        ds.WindowCenter, ds.WindowWidth = 40, 400
        archive.store_encoded(
            encode(ds, False, True),
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            transfer_syntax=ExplicitVRLittleEndian,
            source_ae="BENCH",
        )
    return study


def render_times(
    archive: Archive, params: dict, printer: Printer, dpi: float | None
) -> tuple[list[float], list[float]]:
    """Per film: seconds to read its images, seconds to render its image box items."""
    reads, renders = [], []
    for composed in compose_films(archive, params, printer, load=False):
        started = time.perf_counter()
        loaded = load_images(archive, composed)
        read = time.perf_counter()
        items = print_scu.render_film(loaded.film, printer, color=False, dpi=dpi)
        done = time.perf_counter()
        assert len(items) == PER_FILM
        reads.append(read - started)
        renders.append(done - read)
    return reads, renders


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, default=20)
    parser.add_argument("--dpi", type=float, default=300.0, help="the sharper printer's dpi")
    parser.add_argument(
        "--peer-nagle",
        action="store_true",
        help="leave dcmprscp's Nagle algorithm on (by default it runs with TCP_NODELAY=1)",
    )
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="print-", dir=RESULTS))
    try:
        data = work / "data"
        config = ConfigStore(data)
        config.set("disk_reserve_mb", 1)
        archive = Archive(data)
        images = args.films * PER_FILM
        started = time.perf_counter()
        study = fill_archive(archive, images)
        print(f"{images} CT images 512x512 stored in {time.perf_counter() - started:.1f} s")

        if not args.peer_nagle:
            # DCMTK reads TCP_NODELAY from its environment (as in bench/ingest); with Nagle on,
            # each of dcmprscp's responses waits for our delayed ACK, about 40 ms per DIMSE
            # exchange, which dominates the time of a film.
            os.environ["TCP_NODELAY"] = "1"
        imager = Dcmprscp(work / "imager")
        store = JobStore(data)
        events = EventBus()
        engine = JobEngine(store, config, archive, events, data)
        try:
            printer = Printer(
                name="film",
                ae_title=imager.ae_title,
                host=LOOPBACK,
                port=imager.port,
                bits=12,
                film_sizes=[FILM_SIZE],
                display_formats=[LAYOUT],
            )
            config.add_printer(printer)
            register_print(engine, PrinterStatusBoard(events), archive)
            engine.start()
            params = {"study_uids": [study], "layout": LAYOUT, "film_size": FILM_SIZE}
            submitted = time.perf_counter()
            job = engine.submit("print", "film", params)
            while True:
                current = engine.get(job.id)
                assert current is not None
                if current.is_final:
                    break
                time.sleep(0.05)
            wall = time.perf_counter() - submitted
            if current.state != "succeeded":
                print(f"job {job.id} {current.state}: {current.error}", file=sys.stderr)
                return 1
            stored = len(imager.stored_prints())
            assert stored == args.films, f"{stored} Stored Prints for {args.films} films"
        finally:
            engine.stop(10)
            imager.stop()
            store.close()
        per_minute = args.films / wall * 60
        print(
            f"print job: {args.films} films {LAYOUT} {FILM_SIZE} 12 bit to dcmprscp in "
            f"{wall:.2f} s: {per_minute:.1f} films/min ({wall / args.films:.2f} s per film)"
            + (" (dcmprscp with Nagle)" if args.peer_nagle else " (dcmprscp with TCP_NODELAY=1)")
        )
        figures: dict[str, object] = {
            "films": args.films,
            "wall_seconds": round(wall, 3),
            "films_per_minute": round(per_minute, 1),
            "peer_nagle": args.peer_nagle,
        }
        for label, dpi in (("default", None), (f"{args.dpi:g} dpi", args.dpi)):
            reads, renders = render_times(archive, params, printer, dpi)
            shown = dpi or print_scu.DEFAULT_DPI
            print(
                f"render per film at {shown:g} dpi ({label}): median "
                f"{statistics.median(renders) * 1000:.0f} ms, worst {max(renders) * 1000:.0f} ms"
                f"; reading its 20 images: median {statistics.median(reads) * 1000:.0f} ms"
            )
            figures[f"render_ms_{shown:g}dpi"] = {
                "median": round(statistics.median(renders) * 1000, 1),
                "worst": round(max(renders) * 1000, 1),
                "read_median": round(statistics.median(reads) * 1000, 1),
            }
        archive.close()
        config.close()
        figures.update(
            machine=f"{os.cpu_count()} CPUs, {platform.machine()}",
            python=platform.python_version(),
        )
        out = RESULTS / f"print-{datetime.now():%Y%m%d-%H%M%S}.json"
        out.write_text(json.dumps(figures, indent=2))
        print(f"figures saved in {out.relative_to(REPO)}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
