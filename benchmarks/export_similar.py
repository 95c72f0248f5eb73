"""Similar-items export at catalogue scale: every product's 12 similar items, written to Parquet.

Uses the 100,000-product store of ``text_latency.py`` (6,621 real Myntra products plus synthetic
ones fitted to their vectors; built on first use).  Measures, in one run: a full export with no
rules and with shop rules (same gender, at most 3 per article type), the same lists made one by
one through ``Engine.similar`` (the online call; a sample, the baseline), and an incremental
export after 1 % of the products changed, checked against a full recompute.

    python benchmarks/export_similar.py [--products 100000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from _common import ROOT, need_shared, report
from lookalike import Engine
from lookalike.storage import ProductWrite
from text_latency import build_store

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=1000, help="products listed one by one through Engine.similar")
    parser.add_argument("--store", type=Path, default=ROOT / "benchmarks" / ".cache" / "text-latency")
    args = parser.parse_args()
    need_shared()
    store = args.store / f"store-{args.products}"
    store.parent.mkdir(parents=True, exist_ok=True)
    build_store(store, args.products, bridge=False)
    out = args.store / "export"
    results = {}
    with Engine.open(store) as engine:
        n = len(engine)
        for name, rules in (("no rules", {}), ("same gender, 3 per article type", {"same": "gender", "cap": "article_type=3"})):
            target = out / f"{name.split(',')[0].replace(' ', '-')}.parquet"
            started = time.perf_counter()
            first = engine.exports.similar(target, k=12, incremental=False, **rules)
            seconds = time.perf_counter() - started
            results[name] = {"products": first.products, "rows": first.rows, "seconds": round(seconds, 1), "products_per_s": round(first.products / seconds, 1),
                             "short_lists": first.short_lists}
            print(name, results[name], flush=True)
        sample = [p.id for p in engine.browse(limit=args.baseline)[1]] if args.baseline <= 48 else None
        ids = sample or [p.id for off in range(0, args.baseline, 48) for p in engine.browse(offset=off * 7, limit=48)[1]][: args.baseline]
        started = time.perf_counter()
        for item in ids:
            engine.similar(item, k=12)
        one_by_one = len(ids) / (time.perf_counter() - started)
        # 1 % of the products change (new vectors), then an incremental export against a full one
        rng = np.random.default_rng(3)
        rowids = engine.index.ids()
        changed = rng.choice(rowids, n // 100, replace=False)
        products = engine.store.get_by_rowids(changed.tolist())
        writes = []
        for rowid in changed.tolist():
            vector = engine.index.vector(int(rowids[rng.integers(0, len(rowids))])) + 0.05 * rng.normal(size=engine.encoder.dim).astype(np.float32)
            product = products[rowid]
            writes.append(ProductWrite(product.id, None, None, product.metadata, vector / np.linalg.norm(vector)))
        target = out / "no-rules.parquet"
        before = pq.read_table(target).to_pydict()
        moved = {products[r].id for r in changed.tolist()}
        naming = len({p for p, i in zip(before["product_id"], before["similar_id"]) if i in moved})
        engine.searcher.serving.write(writes)
        started = time.perf_counter()
        update = engine.exports.similar(target, k=12)
        incremental_s = time.perf_counter() - started
        check = engine.exports.similar(out / "check.parquet", k=12, incremental=False)
        same = pq.read_table(target).equals(pq.read_table(out / "check.parquet"))
    full = results["no rules"]
    report("export_similar", {
        "products": n, **{f"full export ({k})": v for k, v in results.items()},
        "engine.similar one by one, products/s": round(one_by_one, 1),
        "export over one by one": round(full["products_per_s"] / one_by_one, 1),
        "incremental after 1 % changed": {"mode": update.mode, "lists naming a changed product": naming, "recomputed": update.recomputed, "seconds": round(incremental_s, 1),
                                          "speed-up over full": round(full["seconds"] / incremental_s, 1), "identical to a full recompute": same,
                                          "full recompute rows": check.rows},
    })
