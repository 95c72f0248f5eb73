"""Vector search at catalogue scale: latency (1 thread) and recall@10 against exact search.

    python benchmarks/vector_search.py --n 1000000
    python benchmarks/vector_search.py --n 1000000 --index "PCA256,IVF4096,PQ128x4fs" --nprobe 16 32 64 --rerank 4 10

Builds the index for N synthetic 1280-d vectors shaped like real catalogue embeddings (see
benchmarks/_common.py): the one lookalike picks automatically unless --index names a FAISS
factory string.  Then times single-query searches with one thread, unfiltered and with a
5 %-selective filter, for every nprobe × rerank combination, and compares the top 10 with
brute-force exact search (the baseline, timed in the same run).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time

import faiss
import numpy as np

from _common import CatalogueLikeVectors, fill_and_build, report, time_queries
from lookalike.vectors import FaissBackend, IndexSpec, faiss_ivf


def exact_top(matrix: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    scores = matrix @ q
    if mask is not None:
        scores = np.where(mask[: len(scores)], scores, -np.inf)
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--index", default="auto", help="auto, or a FAISS index factory string")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[IndexSpec.nprobe])
    parser.add_argument("--rerank", type=int, nargs="+", default=[IndexSpec.rerank_factor])
    parser.add_argument("--filter-probe-fraction", type=float, nargs="+", default=[faiss_ivf.FILTER_PROBE_FRACTION],
                        help="share of an unfiltered query's candidate volume a filtered query probes (lookalike's default first)")
    args = parser.parse_args()

    spec = IndexSpec(args.index, ann_threshold=min(IndexSpec.ann_threshold, args.n))
    index = FaissBackend(1280, spec, threads=2)
    data = CatalogueLikeVectors(args.n, seed=1)
    generate_s, build_s = fill_and_build(index, data, "upsert")
    queries = data.queries(args.queries)  # new photos of catalogue products, not in the index
    selective = np.random.default_rng(5).random(args.n) < 0.05

    faiss.omp_set_num_threads(1)
    exact_ms = []
    for q in queries[:50]:
        t = time.perf_counter()
        exact_top(index.matrix[: args.n], q, 10)
        exact_ms.append((time.perf_counter() - t) * 1000)
    truths = {label: [exact_top(index.matrix[: args.n], q, 10, mask) for q in queries] for label, mask in (("unfiltered", None), ("filter_5pct", selective))}
    results = {"n": args.n, "dim": 1280, "index": index.ann_factory, "build_s": round(build_s, 1), "generate_and_load_s": round(generate_s, 1),
               "ann_bytes_per_vector": round(faiss.serialize_index(index.ann).nbytes / args.n, 1),
               "exact_search_p50_ms": round(float(np.median(exact_ms)), 2), "runs": []}
    for nprobe, rerank, fraction in itertools.product(args.nprobe, args.rerank, args.filter_probe_fraction):
        index.spec = dataclasses.replace(spec, nprobe=nprobe, rerank_factor=rerank)
        faiss_ivf.FILTER_PROBE_FRACTION = fraction
        nlist = faiss.extract_index_ivf(index.ann).nlist
        run = {"nprobe": index.spec.probes(nlist), "rerank_factor": rerank, "filter_probe_fraction": fraction,
               "filter_5pct_nprobe": index.spec.filtered_probes(nlist, 0.05)}
        for label, mask in (("unfiltered", None), ("filter_5pct", selective)):
            timed = time_queries(index, queries, truths[label], mask)
            run[label] = {**timed, "speedup_vs_exact": round(results["exact_search_p50_ms"] / timed["p50_ms"], 1)}
        print(run, flush=True)
        results["runs"].append(run)
    suffix = "" if args.index == "auto" else "_" + args.index.replace(",", "_")
    report(f"vector_search_{args.n}{suffix}", results)


if __name__ == "__main__":
    main()
