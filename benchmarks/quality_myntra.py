"""Search quality on the shared Myntra catalogue (off-the-shelf EfficientNet-Lite0).

    python benchmarks/quality_myntra.py [--store DIR]

Leave-one-out over every catalogue photo: is the nearest other product of the same
article_type (NN accuracy), and mean average precision of the full ranking with
"same article_type" as relevance; the same with article_type + base_colour.  Random
ranking is printed beside them.  Duplicate listings (``identical_image`` pairs in
duplicate_pairs.csv whose listings are both in labels.csv): is the twin the top result?
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np

from _common import SHARED, need_shared, report
from lookalike import Engine


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    if not relevant.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = relevant[order]
    ranks = np.flatnonzero(hits) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def leave_one_out(vectors: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    nn = labels[np.argmax(sims, axis=1)] == labels
    aps = []
    for i in range(len(labels)):
        relevant = labels == labels[i]
        relevant[i] = False
        mask = np.ones(len(labels), bool)
        mask[i] = False
        aps.append(average_precision(sims[i][mask], relevant[mask]))
    values, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return {"nn_accuracy": round(float(nn.mean()), 4), "mAP": round(float(np.nanmean(aps)), 4),
            "random_nn_accuracy": round(float((p * (counts - 1) / (len(labels) - 1)).sum()), 4),
            "random_mAP": round(float((p * (counts - 1) / (len(labels) - 1)).sum()), 4), "queries": len(labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", help="reuse a store that already holds myntra/labels.csv")
    args = parser.parse_args()
    need_shared()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(args.store or Path(tmp) / "store")
        rows = list(csv.DictReader((SHARED / "myntra" / "labels.csv").open()))
        with Engine.open(store) as engine:
            engine.ingest(SHARED / "myntra" / "labels.csv")
            ids = [r["item_id"] for r in rows]
            rowids = [engine.get(i).rowid for i in ids]
            vectors = np.stack([engine.index.vector(r) for r in rowids])
            types = np.array([r["article_type"] for r in rows])
            colours = np.array([r["article_type"] + "/" + r["base_colour"] for r in rows])
            results = {"encoder": engine.encoder.identity, "same_article_type": leave_one_out(vectors, types),
                       "same_article_type_and_colour": leave_one_out(vectors, colours)}
            known = set(ids)
            groups: dict[str, set[str]] = {}
            for p in csv.DictReader((SHARED / "myntra" / "duplicate_pairs.csv").open()):
                if p["relation"] == "identical_image" and p["item_id_a"] in known and p["item_id_b"] in known:
                    groups.setdefault(p["duplicate_group"], set()).update((p["item_id_a"], p["item_id_b"]))
            queries = [(item, members) for members in groups.values() for item in members]
            top1 = sum(engine.similar(item, k=1)[0].id in members for item, members in queries)
            results["duplicate_listings"] = {"queries": len(queries), "twin_is_top_result": round(top1 / max(1, len(queries)), 4)}
    report("quality_myntra", results)


if __name__ == "__main__":
    main()
