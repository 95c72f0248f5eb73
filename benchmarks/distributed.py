"""The scale-out parts on this machine: ingest on Ray against local threads, and Milvus against FAISS.

    python benchmarks/distributed.py --n 2000 --milvus-uri http://127.0.0.1:19530

Ray: the same Myntra photos ingested by the default thread distributor and by Ray actors (one
and two workers), timed end to end in the same run (Ray's start-up included, and also reported
on its own); the vectors must be identical.  Milvus: the same vectors (fine-tuned-like 128-d,
fitted to real statistics) in the embedded FAISS backend, a Milvus server (when ``--milvus-uri``
names one; ``scripts/milvus_server.py`` starts one) and Milvus Lite (fewer vectors: it scans
every row per query): write rate, search p50/p99 unfiltered and with a 5 % filter pushed down,
recall@10 against exact search.  docs/scale.md builds its 50M-product arithmetic on these.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import CatalogueLikeVectors, myntra_subset_csv, need_shared, percentiles, report
from lookalike import Engine
from lookalike.search.filters import MetadataColumns, clauses_expression, filter_fields, parse_where
from lookalike.vectors import BackendConfig, VectorFilter, create_backend


def vectors_of(engine: Engine) -> dict[str, np.ndarray]:
    return {i: engine.index.vector(engine.store.get(i).rowid) for i in engine.store.all_ids()}


def ray_versus_threads(n: int, work: Path) -> dict:
    import ray

    from lookalike.ingest.ray_distributor import RayDistributor

    catalogue, images = myntra_subset_csv(n, work)
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.shutdown()
    ray_start = time.perf_counter() - started
    runs, vectors = {}, {}
    for label, distributor in [("threads (default)", None), ("ray, 1 worker", RayDistributor(workers=1)), ("ray, 2 workers", RayDistributor(workers=2))]:
        with Engine.open(work / label.replace(" ", "_").replace(",", "")) as engine:
            engine.searcher.embed(images[0])  # load the model outside the timing
            t = time.perf_counter()
            done = engine.ingest(catalogue, distributor=distributor, garments=False)
            seconds = time.perf_counter() - t
            vectors[label] = vectors_of(engine)
        runs[label] = {"seconds": round(seconds, 1), "images_per_s": round(done.embedded / seconds, 1), "skipped": len(done.skipped)}
    local = vectors["threads (default)"]
    for label in runs:
        runs[label]["max_abs_difference_vs_threads"] = float(max(np.abs(vectors[label][i] - local[i]).max() for i in local))
        runs[label]["time_vs_threads"] = round(runs[label]["seconds"] / runs["threads (default)"]["seconds"], 2)
    return {"images": n, "ray_start_and_stop_seconds": round(ray_start, 1), "runs": runs, "tag predict": tagging(work / "threads_(default)", work)}


def tagging(store: Path, work: Path) -> dict:
    """`tag predict` (label-free set: rules, zero-shot groups, colour) in this process and on one Ray actor."""
    runs, tags = {}, {}
    for label, settings in [("in this process (default)", {}), ("ray, 1 worker", {"distributor": "ray", "distributor_workers": 1})]:
        copy = work / f"tagging-{len(runs)}"
        shutil.copytree(store, copy)
        with Engine.open(copy, **settings) as engine:
            t = time.perf_counter()
            done = engine.tag()
            seconds = time.perf_counter() - t
            tags[label] = {i: {k: v["value"] for k, v in engine.get(i).tags.items()} for i in engine.store.all_ids()}
        runs[label] = {"products": done, "seconds": round(seconds, 1), "products_per_s": round(done / seconds, 1)}
    runs["ray, 1 worker"]["time_vs_local"] = round(runs["ray, 1 worker"]["seconds"] / runs["in this process (default)"]["seconds"], 2)
    runs["ray, 1 worker"]["same_tags"] = tags["ray, 1 worker"] == tags["in this process (default)"]
    return runs


def backend_figures(backend, vectors: np.ndarray, fields: list[dict], columns: MetadataColumns, queries: np.ndarray) -> dict:
    ids = np.arange(len(vectors), dtype=np.int64)
    t = time.perf_counter()
    for start in range(0, len(ids), 10_000):
        backend.upsert(ids[start:start + 10_000], vectors[start:start + 10_000], fields[start:start + 10_000] if backend.wants_fields else None)
    backend.maintain()
    write_s = time.perf_counter() - t
    out = {"vectors": len(ids), "write_per_s": round(len(ids) / write_s), "write_and_build_seconds": round(write_s, 1)}
    for label, clauses in [("unfiltered", []), ("5% filter", ["shade=s1|s2|s3|s4|s5"])]:
        parsed = parse_where(clauses)
        where = VectorFilter(columns.mask(parsed), clauses_expression(parsed)) if parsed else None
        allowed = columns.mask(parsed)[: len(ids)] if parsed else np.ones(len(ids), bool)
        backend.search(queries[0], 10, where)  # warm
        latencies, recalls = [], []
        for q in queries:
            t = time.perf_counter()
            found, _ = backend.search(q, 10, where)
            latencies.append((time.perf_counter() - t) * 1000)
            scores = np.where(allowed, vectors @ q, -np.inf)
            truth = np.argpartition(-scores, 10)[:10]
            recalls.append(len(set(found.tolist()) & set(truth.tolist())) / 10)
        out[label] = {**percentiles(latencies), "recall_at_10": round(float(np.mean(recalls)), 3)}
    return out


def milvus_versus_faiss(n: int, n_lite: int, dim: int, uri: str, work: Path, queries_n: int) -> dict:
    data = CatalogueLikeVectors(n, dim=dim, seed=4)
    vectors = np.concatenate(list(data.chunks()))[:n]
    queries = data.queries(queries_n)
    metadata = [{"shade": f"s{i % 100}", "price": i % 200} for i in range(n)]
    fields = [filter_fields(m) for m in metadata]
    columns = MetadataColumns()
    for i, m in enumerate(metadata):
        columns.set(i, m)
    results = {"dim": dim}
    results["faiss (embedded default)"] = backend_figures(create_backend(dim, BackendConfig(threads=2)), vectors, fields, columns, queries)
    if uri:
        config = BackendConfig(backend="milvus", milvus_uri=uri, store=str(work / "server"), model=f"bench-{time.time_ns()}", milvus_index="HNSW")
        results["milvus server (HNSW)"] = backend_figures(create_backend(dim, config), vectors, fields, columns, queries)
    lite = BackendConfig(backend="milvus", milvus_uri="lite.db", store=str(work / "lite"), model="bench")
    results[f"milvus lite ({n_lite} vectors)"] = backend_figures(create_backend(dim, lite), vectors[:n_lite], fields[:n_lite], columns, queries[:50])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="Myntra photos ingested per distributor")
    parser.add_argument("--vectors", type=int, default=100_000, help="vectors in FAISS and the Milvus server")
    parser.add_argument("--lite-vectors", type=int, default=10_000, help="vectors in Milvus Lite")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--milvus-uri", default="", help="a Milvus server, e.g. http://127.0.0.1:19530 (scripts/milvus_server.py)")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-milvus", action="store_true")
    args = parser.parse_args()
    need_shared()
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_ray:
            figures["ray versus threads (ingest, Myntra photos)"] = ray_versus_threads(args.n, Path(tmp))
        if not args.skip_milvus:
            figures["milvus versus faiss (search)"] = milvus_versus_faiss(args.vectors, args.lite_vectors, args.dim, args.milvus_uri, Path(tmp), args.queries)
    report("distributed", figures)


if __name__ == "__main__":
    main()
