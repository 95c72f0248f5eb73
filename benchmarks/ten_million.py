"""Ten million products on one machine: fine-tuned 128-d vectors, an IVF index of 8-bit codes in
memory, the full vectors on disk, memory-mapped for the exact re-rank.

    python benchmarks/ten_million.py --n 10000000
    python benchmarks/ten_million.py --n 1000000 --keep /tmp/ten   # smaller, keeping the files

Two processes, as a user's would be:

1. **build** (this process): synthetic 128-d vectors shaped like the fine-tuned head's embeddings
   of the Myntra catalogue (``CatalogueLikeVectors`` with the 128-d fit, see ``_common.py``) go
   into lookalike's own ``FaissBackend`` (the serving backend, default ``auto`` index choice:
   ``IVF16384,SQ8`` at 10M), which builds the index and saves its snapshot (the vector matrix plus
   the index, as ``lookalike serve`` does on shutdown).  Exact answers for the queries, with and
   without a 5 %-selective filter, are computed here by brute force.
2. **serve** (a fresh process): restores the snapshot (the matrix is memory-mapped, not read),
   then times single queries on one thread and scores recall@10 against the exact answers.

Printed: build time, both processes' peak RSS (VmHWM), the serving process's open time, p50/p99
latency and recall@10 unfiltered and filtered, and exact search's latency in the same run
(the baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import CatalogueLikeVectors, fill_and_build, percentiles, report

DIM = 128
MODEL = "synthetic-128"


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def exact_answers(matrix: np.ndarray, queries: np.ndarray, mask: np.ndarray | None, k: int = 10) -> np.ndarray:
    """Brute-force top k for every query, in blocks of rows (never all scores at once)."""
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    for start in range(0, len(matrix), 500_000):
        scores = queries @ matrix[start:start + 500_000].T
        if mask is not None:
            scores[:, ~mask[start:start + 500_000]] = -np.inf
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        best_ids = np.hstack([best_ids, part + start])
        best_scores = np.hstack([best_scores, np.take_along_axis(scores, part, axis=1)])
        keep = np.argsort(-best_scores, axis=1)[:, :k]
        best_ids, best_scores = np.take_along_axis(best_ids, keep, axis=1), np.take_along_axis(best_scores, keep, axis=1)
    return best_ids


def build(args: argparse.Namespace, directory: Path) -> dict:
    from lookalike.vectors import FaissBackend, IndexSpec

    backend = FaissBackend(DIM, IndexSpec(), threads=os.cpu_count() or 1)
    data = CatalogueLikeVectors(args.n, **CatalogueLikeVectors.FINE_TUNED_128)
    generate_s, build_s = fill_and_build(backend, data)
    t = time.perf_counter()
    backend.snapshot(directory, generation=1, model=MODEL)
    save_s = time.perf_counter() - t
    queries = data.queries(args.queries)
    category = np.random.default_rng(5).integers(0, 20, args.n).astype(np.int8)  # category 0: a 5 % filter
    exact = {"unfiltered": exact_answers(backend.matrix, queries, None), "filter_5pct": exact_answers(backend.matrix, queries, category == 0)}
    single = []
    for q in queries[:5]:  # the baseline: one query scored exactly against every vector (in memory here)
        t = time.perf_counter()
        scores = backend.matrix @ q
        np.argpartition(-scores, 10)[:10]
        single.append(time.perf_counter() - t)
    exact_s = float(np.median(single))
    np.save(directory / "bench-queries.npy", queries)
    np.save(directory / "bench-category.npy", category)
    for label, answers in exact.items():
        np.save(directory / f"bench-exact-{label}.npy", answers)
    return {"n": args.n, "dim": DIM, "index": backend.ann_factory, "generate_and_load_s": round(generate_s, 1),
            "index_build_s": round(build_s, 1), "snapshot_save_s": round(save_s, 1),
            "snapshot_gb": round(sum(p.stat().st_size for p in directory.iterdir() if not p.name.startswith("bench-")) / 1e9, 2),
            "exact_search_ms_per_query": round(exact_s * 1000, 1), "build_peak_rss_mb": peak_rss_mb()}


def serve(directory: Path) -> dict:
    """The serving process: open the snapshot, then time queries on one thread."""
    import faiss

    from lookalike.vectors import FaissBackend, IndexSpec

    t = time.perf_counter()
    backend = FaissBackend(DIM, IndexSpec(), threads=1)
    assert backend.restore(directory, MODEL) == 1 and backend.restored_vectors and backend.ann is not None
    open_s = time.perf_counter() - t
    faiss.omp_set_num_threads(1)
    queries = np.load(directory / "bench-queries.npy")
    allowed = np.load(directory / "bench-category.npy") == 0
    out: dict = {"open_s": round(open_s, 2), "rss_after_open_mb": _rss_mb(), "matrix_memory_mapped": isinstance(backend.matrix, np.memmap)}
    for label, mask in (("unfiltered", None), ("filter_5pct", allowed)):
        exact = np.load(directory / f"bench-exact-{label}.npy")
        latencies, recall = [], []
        for q, truth in zip(queries, exact):
            t = time.perf_counter()
            found, _ = backend.search(q, 10, mask)
            latencies.append((time.perf_counter() - t) * 1000)
            recall.append(len(set(found.tolist()) & set(truth.tolist())) / 10)
        out[label] = {**percentiles(latencies[20:]), "recall_at_10": round(float(np.mean(recall)), 4)}
    out["serve_peak_rss_mb"] = peak_rss_mb()
    return out


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--queries", type=int, default=320)
    parser.add_argument("--keep", type=Path, help="build into this directory and keep it (default: a temporary one)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the serving process's half
    args = parser.parse_args()
    if args.serve:
        print(json.dumps(serve(args.serve)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.keep or Path(tmp) / "snapshot"
        directory.mkdir(parents=True, exist_ok=True)
        results = build(args, directory)
        print(results, flush=True)
        child = subprocess.run([sys.executable, __file__, "--serve", str(directory)], capture_output=True, text=True, check=True)
        served = json.loads(child.stdout.strip().splitlines()[-1])
        served["speedup_vs_exact"] = round(results["exact_search_ms_per_query"] / served["unfiltered"]["p50_ms"], 1)
        results["serve"] = served
    report(f"ten_million_{args.n}", results)


if __name__ == "__main__":
    main()
