"""Ten million products on one machine: fine-tuned 128-d vectors, an IVF index of 8-bit codes in
memory, the full vectors on disk, memory-mapped for the exact re-rank.

    python benchmarks/ten_million.py --n 10000000
    python benchmarks/ten_million.py --n 1000000 --keep /tmp/ten   # smaller, keeping the files
    python benchmarks/ten_million.py --serve-only /tmp/ten --sweep # the serving half again, with a sweep
    python benchmarks/ten_million.py --serve-only /tmp/ten --fresh-queries 7 --nprobe 128  # a setting chosen on the sweep, on new queries

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

from _common import CatalogueLikeVectors, fill_and_build, report, time_queries

DIM = 128
MODEL = "synthetic-128"


def memory_mb(key: str = "VmHWM") -> float:
    """A memory figure of this process from /proc (VmHWM: peak resident; VmRSS: resident now), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
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
    exact = {"unfiltered": exact_answers(backend.matrix[: args.n], queries, None), "filter_5pct": exact_answers(backend.matrix[: args.n], queries, category == 0)}
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
            "exact_search_ms_per_query": round(exact_s * 1000, 1), "build_peak_rss_mb": memory_mb()}


def fresh_queries(directory: Path, n: int, seed: int, m: int) -> str:
    """Draw another query set (new photos of the same products) and its exact answers, so that
    settings chosen on the first set are measured on queries they were not chosen on."""
    from lookalike.vectors import FaissBackend

    prefix = f"fresh{seed}-"
    if all((directory / f"bench-{prefix}{name}.npy").exists() for name in ("queries", "exact-unfiltered", "exact-filter_5pct")):
        return prefix  # drawn before with this seed: the same set
    queries = CatalogueLikeVectors(n, **CatalogueLikeVectors.FINE_TUNED_128).queries(m, seed=seed)
    backend = FaissBackend(DIM)
    assert backend.restore(directory, MODEL) == 1
    category = np.load(directory / "bench-category.npy")
    np.save(directory / f"bench-{prefix}queries.npy", queries)
    np.save(directory / f"bench-{prefix}exact-unfiltered.npy", exact_answers(backend.matrix[:n], queries, None))
    np.save(directory / f"bench-{prefix}exact-filter_5pct.npy", exact_answers(backend.matrix[:n], queries, category == 0))
    return prefix


def serve(directory: Path, sweep: bool = False, prefix: str = "", spec: dict | None = None) -> dict:
    """The serving process: open the snapshot, then time queries on one thread."""
    import faiss

    from lookalike.vectors import FaissBackend, IndexSpec

    t = time.perf_counter()
    backend = FaissBackend(DIM, IndexSpec(**(spec or {})), threads=1)
    assert backend.restore(directory, MODEL) == 1 and backend.restored_vectors and backend.ann is not None
    open_s = time.perf_counter() - t
    faiss.omp_set_num_threads(1)
    queries = np.load(directory / f"bench-{prefix}queries.npy")
    allowed = np.load(directory / "bench-category.npy") == 0
    out: dict = {"open_s": round(open_s, 2), "rss_after_open_mb": memory_mb("VmRSS"), "matrix_memory_mapped": isinstance(backend.matrix, np.memmap),
                 "queries": prefix.rstrip("-") or "first set", "index": backend.ann_factory, "probing": probing(backend)}
    for label, mask in (("unfiltered", None), ("filter_5pct", allowed)):
        out[label] = time_queries(backend, queries, np.load(directory / f"bench-{prefix}exact-{label}.npy"), mask, warm_up=20)
    out["serve_peak_rss_mb"] = memory_mb()
    if sweep:
        exact = {label: np.load(directory / f"bench-{prefix}exact-{label}.npy") for label in ("unfiltered", "filter_5pct")}
        out["sweep"] = sweep_settings(backend, queries, exact, allowed)
    return out


def probing(backend) -> dict:
    """The lists an unfiltered and a 5 %-filtered query probe, and the candidates re-ranked per result."""
    import faiss

    nlist = faiss.extract_index_ivf(backend.ann).nlist
    return {"nlist": nlist, "nprobe": backend.spec.probes(nlist), "filter_5pct_nprobe": backend.spec.filtered_probes(nlist, 0.05),
            "rerank_depth": backend.rerank_depth()}


def sweep_settings(backend, queries: np.ndarray, exact: dict[str, np.ndarray], allowed: np.ndarray) -> list[dict]:
    """p50 and recall@10 for other nprobe / re-rank settings on the same index, to see which one
    limits recall: the lists probed, or the 8-bit codes' ranking of what they hold.  A filtered
    query probes ``nprobe × 0.5 / selectivity`` lists, so its rows vary that base nprobe."""
    from lookalike.vectors import IndexSpec

    settings = [("unfiltered", nprobe, rerank) for nprobe in (32, 64, 96, 128, 192, 256) for rerank in (10, 20, 40)]
    settings += [("filter_5pct", nprobe, 10) for nprobe in (8, 16, 32)]
    rows = []
    for label, nprobe, rerank in settings:
        backend.spec = IndexSpec(nprobe=nprobe, rerank_factor=rerank)
        mask = allowed if label == "filter_5pct" else None
        rows.append({"query": label, **probing(backend), **time_queries(backend, queries, exact[label], mask, warm_up=20)})
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--queries", type=int, default=320)
    parser.add_argument("--keep", type=Path, help="build into this directory and keep it (default: a temporary one)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the serving process's half
    parser.add_argument("--serve-only", type=Path, metavar="DIR", help="only re-run the serving half on a directory kept with --keep")
    parser.add_argument("--sweep", action="store_true", help="also time other nprobe / re-rank settings (unfiltered)")
    parser.add_argument("--nprobe", type=int, help="serve with this nprobe instead of the default")
    parser.add_argument("--fresh-queries", type=int, metavar="SEED", help="with --serve-only: a new query set drawn with SEED")
    parser.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    spec = {"nprobe": args.nprobe} if args.nprobe else {}
    if args.serve:
        print(json.dumps(serve(args.serve, args.sweep, args.prefix, spec)))
        return
    if args.serve_only:
        results = json.loads((args.serve_only / "bench-build.json").read_text())
        prefix = fresh_queries(args.serve_only, results["n"], args.fresh_queries, args.queries) if args.fresh_queries is not None else ""
        results["serve"] = run_serving_process(args.serve_only, args.sweep, results, prefix, args.nprobe)
        name = f"ten_million_{results['n']}" + (f"_{prefix.rstrip('-')}" if prefix else "") + (f"_nprobe{args.nprobe}" if args.nprobe else "")
        report(name, results)
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.keep or Path(tmp) / "snapshot"
        directory.mkdir(parents=True, exist_ok=True)
        results = build(args, directory)
        (directory / "bench-build.json").write_text(json.dumps(results))
        print(results, flush=True)
        results["serve"] = run_serving_process(directory, args.sweep, results)
    report(f"ten_million_{args.n}", results)


def run_serving_process(directory: Path, sweep: bool, built: dict, prefix: str = "", nprobe: int | None = None) -> dict:
    """The serving half in a fresh process (its open time and peak RSS are its own)."""
    command = [sys.executable, __file__, "--serve", str(directory), "--prefix", prefix] + (["--sweep"] if sweep else []) + \
        (["--nprobe", str(nprobe)] if nprobe else [])
    child = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    served = json.loads(child.stdout.strip().splitlines()[-1])
    served["speedup_vs_exact"] = round(built["exact_search_ms_per_query"] / served["unfiltered"]["p50_ms"], 1)
    return served


if __name__ == "__main__":
    main()
