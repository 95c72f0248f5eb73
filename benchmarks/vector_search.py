"""Vector search at catalogue scale: latency (1 thread) and recall@10 against exact search.

    python benchmarks/vector_search.py --n 1000000

Builds the index lookalike chooses automatically for N synthetic 1280-d vectors shaped like
real catalogue embeddings (see benchmarks/_common.py), then times
single-query searches with one thread, unfiltered and with a 5 %-selective filter, and
compares the top 10 with brute-force exact search (the baseline, timed in the same run).
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from _common import CatalogueLikeVectors, percentiles, report
from lookalike.index import IndexSpec, VectorIndex


def exact_top(matrix: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    scores = matrix @ q
    if mask is not None:
        scores = np.where(mask[: len(scores)], scores, -np.inf)
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--rerank", type=int, default=4)
    args = parser.parse_args()

    index = VectorIndex(1280, IndexSpec("auto", nprobe=args.nprobe, rerank_factor=args.rerank), threads=2)
    t = time.perf_counter()
    data = CatalogueLikeVectors(args.n, seed=1)
    start = 0
    for chunk in data.chunks():
        index.upsert(np.arange(start, start + len(chunk)), chunk)
        start += len(chunk)
    generate_s = time.perf_counter() - t
    t = time.perf_counter()
    index.build_ann()
    build_s = time.perf_counter() - t
    queries = data.queries(args.queries)  # new photos of catalogue products, not in the index
    selective = np.random.default_rng(5).random(args.n) < 0.05

    faiss.omp_set_num_threads(1)
    results = {"n": args.n, "dim": 1280, "index": index.ann_factory, "nprobe": args.nprobe, "rerank_factor": args.rerank,
               "build_s": round(build_s, 1), "generate_and_load_s": round(generate_s, 1),
               "bytes_per_vector_ann": round(faiss.serialize_index(index.ann).nbytes / args.n, 1) if args.n <= 2_000_000 else None}
    for label, mask in (("unfiltered", None), ("filter_5pct", selective)):
        lat, recall, exact_ms = [], [], []
        for q in queries:
            t = time.perf_counter()
            found, _ = index.search(q, 10, mask)
            lat.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            truth = exact_top(index.matrix[: args.n], q, 10, mask)
            exact_ms.append((time.perf_counter() - t) * 1000)
            recall.append(len(set(found.tolist()) & set(truth.tolist())) / 10)
        results[label] = {**percentiles(lat), "recall_at_10": round(float(np.mean(recall)), 4),
                          "exact_baseline_p50_ms": round(float(np.median(exact_ms)), 2),
                          "speedup_vs_exact": round(float(np.median(exact_ms) / np.median(lat)), 1)}
        print(label, results[label], flush=True)
    report(f"vector_search_{args.n}", results)


if __name__ == "__main__":
    main()
