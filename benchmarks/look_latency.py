"""Shop the look: time per street photo, garment finding plus one search per garment.

    python benchmarks/look_latency.py [--store DIR] [--photos 60]

Ingests the shared Myntra catalogue (6,621 photos) into a store (or reuses --store), then
for the street photos the packaged garment finder never trained on: the time of
``engine.look(photo, k=10)`` (decode, finding, one search per garment), of finding alone, and
of a plain whole-photo search in the same run (the baseline the ratio is against).  The
issue's target is 150 ms per photo on two cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

from _common import SHARED, need_shared, percentiles, report
from lookalike import Engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="a store with the Myntra catalogue (default: ingest into a temporary one)")
    parser.add_argument("--photos", type=int, default=60)
    args = parser.parse_args()
    need_shared()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / "store"
        with Engine.open(store, garment_groups=str(Path(__file__).resolve().parents[1] / "configs" / "myntra-garment-groups.yaml")) as engine:
            if len(engine) == 0:
                engine.ingest(SHARED / "myntra" / "labels.csv", id_column="item_id", image_column="image_file")
            finder = engine.looks.finder()
            assert finder is not None
            held = finder.artefact.holdout[: args.photos]  # type: ignore[attr-defined]
            photos = [(SHARED / "ccp" / key).read_bytes() for key in held]
            engine.look(photos[0], k=10)  # warm-up: sessions, thread pools
            look_ms, find_ms, search_ms, garments = [], [], [], 0
            for data in photos:
                started = time.perf_counter()
                found = engine.look(data, k=10)
                look_ms.append((time.perf_counter() - started) * 1000)
                garments += len(found.garments)
                picture = engine.read_image(data)
                started = time.perf_counter()
                finder.detect(picture)
                find_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                engine.search(data, k=10)
                search_ms.append((time.perf_counter() - started) * 1000)
            size = Image.open(SHARED / "ccp" / held[0]).size
    look, find, whole = percentiles(look_ms), percentiles(find_ms), percentiles(search_ms)
    report("look_latency", {"photos": len(photos), "photo_size": list(size),
                            "garments_per_photo": round(garments / len(photos), 2), "look": look, "finding_only": find,
                            "whole_photo_search": whole, "look_over_whole_search_p50": round(look["p50_ms"] / whole["p50_ms"], 2),
                            "detector": finder.identity})


if __name__ == "__main__":
    main()
