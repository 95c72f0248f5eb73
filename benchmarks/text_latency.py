"""Text query latency at catalogue scale: ``search --text`` on N products (default 100,000).

Builds a store of the real Myntra catalogue (photos embedded by the real model, titles, labels)
topped up with synthetic products: vectors are real vectors perturbed per dimension, metadata is
a real product's (half of them keep a title with a style code appended, half have none, so both
the title and the photo evidence are exercised).  Trains the text bridge, then times text queries
end to end in process (parse, MiniLM, scoring every product, top-k, metadata), against two
baselines measured in the same run: MiniLM encoding alone (the floor) and a photo-vector search.

    python benchmarks/text_latency.py [--products 100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from _common import ROOT, SHARED, need_shared, percentiles, report
from lookalike import Engine
from lookalike.search import VectorQuery
from lookalike.storage import ProductWrite

LABELS = ["gender", "master_category", "sub_category", "article_type", "base_colour", "season", "usage"]


def build_store(path: Path, n_products: int, bridge: bool = True) -> None:
    with open(SHARED / "myntra" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    catalogue = path.parent / "text-real.csv"
    with catalogue.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["item_id", "image", "title", *LABELS])
        writer.writeheader()
        writer.writerows({"item_id": r["item_id"], "image": str(SHARED / "myntra" / r["image_file"]), "title": r["title"], **{c: r[c] for c in LABELS}}
                         for r in rows)
    with Engine.open(path) as engine:
        engine.ingest(catalogue, "item_id", "image", garments=False)
        if len(engine) < n_products:
            real = np.stack([engine.index.vector(r) for r in engine.index.ids()])
            spread = real.std(axis=0)
            rng = np.random.default_rng(0)
            for start in range(len(engine), n_products, 5000):
                m = min(5000, n_products - start)
                picks = rng.integers(0, len(rows), m)
                vectors = real[rng.integers(0, len(real), m)] + 0.6 * spread * rng.normal(size=(m, real.shape[1])).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                writes = []
                for i, pick in enumerate(picks.tolist()):
                    source = rows[pick]
                    metadata = {c: source[c] for c in LABELS}
                    if i % 2 == 0:
                        metadata["title"] = f"{source['title']} style {start + i}"
                    writes.append(ProductWrite(f"syn-{start + i}", None, None, metadata, vectors[i]))
                engine.searcher.serving.write(writes)
            engine.searcher.serving.maintain(save=True)
        if bridge and engine.text.bridge_folder() is None:
            started = time.perf_counter()
            bridge = engine.text.train()
            print(f"bridge trained in {time.perf_counter() - started:.0f} s (titles encoded and colour read once, cached in the store)", flush=True)
            print(bridge.info, flush=True)


def queries(n: int) -> list[str]:
    with open(SHARED / "myntra" / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rng = np.random.default_rng(1)
    picked = [rows[i] for i in rng.integers(0, len(rows), n)]
    half = [f"{r['base_colour']} {r['article_type']}".lower() for r in picked[: n // 2]]
    return half + [r["title"] for r in picked[n // 2:]]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--store", type=Path, default=ROOT / "benchmarks" / ".cache" / "text-latency")
    args = parser.parse_args()
    need_shared()
    store = args.store / f"store-{args.products}"
    store.parent.mkdir(parents=True, exist_ok=True)
    build_store(store, args.products)
    texts = queries(args.queries)
    with Engine.open(store) as engine:
        started = time.perf_counter()
        engine.search_text("warm up", k=10)
        first = (time.perf_counter() - started) * 1000
        sentences = engine.text._sentences()
        encode, text, photo = [], [], []
        for q in texts:
            t0 = time.perf_counter()
            sentences.encode([q])
            t1 = time.perf_counter()
            engine.search_text(q, k=10)
            t2 = time.perf_counter()
            encode.append((t1 - t0) * 1000)
            text.append((t2 - t1) * 1000)
        vectors = [engine.index.vector(int(r)) for r in engine.index.ids()[: len(texts)]]
        for vector in vectors:
            t0 = time.perf_counter()
            engine.query(VectorQuery(vector, k=10))
            photo.append((time.perf_counter() - t0) * 1000)
        text_p, encode_p, photo_p = percentiles(text), percentiles(encode), percentiles(photo)
        report("text_latency", {
            "products": len(engine), "first_query_ms": round(first, 1), "text_query": text_p, "minilm_encode_only": encode_p,
            "photo_vector_search": photo_p, "text_over_encode_p50": round(text_p["p50_ms"] / encode_p["p50_ms"], 2),
            "text_over_photo_vector_p50": round(text_p["p50_ms"] / photo_p["p50_ms"], 2), "status": engine.text.status()["bridge"],
        })
