"""Where the minutes of `lookalike train embedding` go on the shared Myntra catalogue, and how many.

    python benchmarks/train_speed.py [--n 6621] [--skip-baseline]

One store holds the Myntra catalogue (ingested first, not timed in the training figures). Then,
in the same run, with the default options (article_type positives, 4 views, 1,500 steps):

* baseline, cold: the feature cache empty and every view run through the backbone, the clean
  photo included (how training ran before it read view 0 from the store's own vectors);
* cold: the feature cache empty, view 0 read from the store;
* warm: a second run over the same catalogue (the cache holds every product).

Each run prints its stages' seconds (first to last progress report of each stage).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import SHARED, need_shared, report
from lookalike import Engine
from lookalike.training import EmbeddingOptions
from lookalike.training import embedding as embedding_module


def timed_training(engine: Engine, name: str) -> dict:
    stages: dict[str, list[float]] = {}

    def progress(stage: str, done: int, total: int | None) -> None:
        now = time.perf_counter()
        stages.setdefault(stage, [now, now])[1] = now

    started = time.perf_counter()
    model = engine.train_embedding(EmbeddingOptions(positives=["article_type"], name=name), progress=progress)
    total = time.perf_counter() - started
    validation = model.info["validation"]["fine_tuned"]
    return {"seconds": round(total, 1), "stages": {k: round(v[1] - v[0], 1) for k, v in stages.items()},
            "held_out_map": round(validation["map"], 4), "held_out_nn": round(validation["nn_accuracy"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-baseline", action="store_true", help="skip the cold run that computes every view")
    parser.add_argument("--store", help="reuse a store that already holds myntra/labels.csv")
    args = parser.parse_args()
    need_shared()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(args.store or Path(tmp) / "store")
        with Engine.open(store, ingest_garments=False) as engine:
            started = time.perf_counter()
            if engine.store.count() == 0:
                engine.ingest(SHARED / "myntra" / "labels.csv")
            results: dict = {"products": engine.store.count(), "ingest_seconds": round(time.perf_counter() - started, 1)}
            features = store / "training" / "features"
            if not args.skip_baseline:
                shutil.rmtree(features, ignore_errors=True)
                reuse = embedding_module._stored_clean_features
                embedding_module._stored_clean_features = lambda *a, **k: {}  # the old way: the backbone runs on view 0 too
                try:
                    results["baseline_cold"] = timed_training(engine, "speed-baseline")
                finally:
                    embedding_module._stored_clean_features = reuse
            shutil.rmtree(features, ignore_errors=True)
            results["cold"] = timed_training(engine, "speed-cold")
            results["warm"] = timed_training(engine, "speed-warm")
            if "baseline_cold" in results:
                results["cold_speedup"] = round(results["baseline_cold"]["seconds"] / results["cold"]["seconds"], 2)
    report("train_speed", results)


if __name__ == "__main__":
    main()
