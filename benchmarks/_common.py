"""Helpers shared by the benchmark scripts: where the data is, how results are printed and kept."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOOKALIKE_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"


def myntra_subset_csv(n: int, directory: Path) -> tuple[Path, list[Path]]:
    """The first ``n`` Myntra rows as a catalogue file with absolute image paths, and those paths."""
    import csv

    rows = list(csv.DictReader((SHARED / "myntra" / "labels.csv").open()))[:n]
    path = directory / "subset.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "image_file": str(SHARED / "myntra" / r["image_file"])} for r in rows)
    return path, [SHARED / "myntra" / r["image_file"] for r in rows]


def need_shared() -> None:
    if not (SHARED / "myntra" / "labels.csv").exists():
        raise SystemExit(f"this benchmark needs the shared data set at {SHARED} (set LOOKALIKE_SHARED_DATA)")


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    a = np.asarray(samples_ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p90_ms": round(float(np.percentile(a, 90)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "mean_ms": round(float(a.mean()), 3), "n": len(a)}


def time_queries(backend, queries: np.ndarray, truth, mask: np.ndarray | None, warm_up: int = 0) -> dict:
    """Single-query latency percentiles (the first ``warm_up`` queries not counted) and mean
    recall@10 against the exact answers ``truth`` (one id list per query)."""
    latencies, recall = [], []
    for q, exact in zip(queries, truth):
        t = time.perf_counter()
        found, _ = backend.search(q, 10, mask)
        latencies.append((time.perf_counter() - t) * 1000)
        recall.append(len(set(found.tolist()) & set(np.asarray(exact).tolist())) / 10)
    return {**percentiles(latencies[warm_up:]), "recall_at_10": round(float(np.mean(recall)), 4)}


def cpu_facts() -> dict:
    """The CPU's model and whether it multiplies INT8 in one instruction (VNNI): without it ONNX
    Runtime's INT8 networks cost about twice as much, so a figure means little without this."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {"cpu": platform.processor() or None, "int8_vnni": None}
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lines)}  # the last CPU's; all alike
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name"), "int8_vnni": bool(flags & {"avx512_vnni", "avx_vnni"})}


def report(name: str, results: dict) -> None:
    """Print the figures and keep them in benchmarks/results/NAME.json."""
    results = {"benchmark": name, "when": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "machine": platform.machine(),
               **cpu_facts(), **results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2), flush=True)


class CatalogueLikeVectors:
    """Synthetic unit vectors shaped like real catalogue embeddings, for scale tests.

    Hierarchical: a shared offset (all product photos look alike to an ImageNet model),
    40 category centres, products around categories, photos (variants) around products,
    with a power-law spectrum.  Parameters were fitted so that a 6,621-vector sample matches
    EfficientNet-Lite0 embeddings of the Myntra catalogue: mean top-1 / top-10 / median cosine
    0.89 / 0.81 / 0.33 (real: 0.87 / 0.81 / 0.32), 89 % of variance in 256 principal
    components (real: 90 %).  Uniform random vectors would be unlike real data and the worst
    case for every index.
    """

    # Fitted (benchmarks/fit_synthetic.py, 300 trials) to the default fine-tuned 128-d head's
    # embeddings of the 6,621 Myntra photos: top-1 / top-10 / median cosine and variance in the
    # top fifth of components 0.968 / 0.961 / 0.434 / 0.80 against the real 0.963 / 0.933 / 0.422 / 0.84.
    FINE_TUNED_128: dict = {"dim": 128, "alpha": 0.457, "category": 1.957, "product": 0.327, "variant": 0.505,
                            "offset": 1.829, "photos_per_product": 2}

    def __init__(self, n: int, dim: int = 1280, seed: int = 0, alpha: float = 0.8, category: float = 1.0,
                 product: float = 0.5, variant: float = 0.5, offset: float = 1.0, n_categories: int = 40, photos_per_product: int = 3):
        rng = np.random.default_rng(seed)
        self.n, self.dim, self.variant, self.seed = n, dim, variant, seed
        scale = np.arange(1, dim + 1, dtype=np.float32) ** (-alpha / 2)
        self.scale = scale / (np.linalg.norm(scale) / np.sqrt(dim))
        direction = rng.normal(size=dim).astype(np.float32)
        self.offset = direction / np.linalg.norm(direction) * offset * np.sqrt(dim) * self.scale.mean()
        categories = rng.normal(size=(n_categories, dim)).astype(np.float32) * self.scale * category
        n_products = max(1, n // photos_per_product)
        self.products = np.empty((n_products, dim), dtype=np.float32)
        for start in range(0, n_products, 100_000):
            m = min(100_000, n_products - start)
            self.products[start : start + m] = categories[rng.integers(0, n_categories, m)] + rng.normal(size=(m, dim)).astype(np.float32) * self.scale * product

    def _photos(self, m: int, rng: np.random.Generator) -> np.ndarray:
        x = self.offset + self.products[rng.integers(0, len(self.products), m)] + rng.normal(size=(m, self.dim)).astype(np.float32) * self.scale * self.variant
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def chunks(self, chunk: int = 100_000):
        """The catalogue, chunk by chunk (deterministic for a seed)."""
        rng = np.random.default_rng(self.seed + 1)
        for start in range(0, self.n, chunk):
            yield self._photos(min(chunk, self.n - start), rng)

    def queries(self, m: int, seed: int | None = None) -> np.ndarray:
        """New photos of catalogue products: not in the index, same distribution (another
        ``seed`` draws a fresh set, for checking settings chosen on the first)."""
        return self._photos(m, np.random.default_rng(self.seed + 2 if seed is None else seed))


def vector_statistics(x: np.ndarray, sample: int = 6621, seed: int = 0) -> dict[str, float]:
    """What the synthetic vectors are fitted on: mean cosine to the nearest and the 10th nearest
    other vector, the median cosine of all pairs, and the share of variance in the top dim/5
    principal components (on up to ``sample`` vectors)."""
    x = np.asarray(x, dtype=np.float32)
    if len(x) > sample:
        x = x[np.random.default_rng(seed).choice(len(x), sample, replace=False)]
    cos = x @ x.T
    np.fill_diagonal(cos, -np.inf)
    ordered = -np.sort(-np.partition(cos, len(x) - 10, axis=1)[:, -10:], axis=1)  # the 10 nearest, best first
    upper = cos[np.triu_indices(len(x), 1)]
    centred = x - x.mean(axis=0)
    spectrum = np.linalg.svd(centred, compute_uv=False) ** 2
    return {"top1": round(float(ordered[:, 0].mean()), 3), "top10": round(float(ordered[:, 9].mean()), 3),
            "median": round(float(np.median(upper)), 3),
            "variance_top_fifth": round(float(spectrum[: max(1, x.shape[1] // 5)].sum() / spectrum.sum()), 3)}


def fill_and_build(backend, data: CatalogueLikeVectors, method: str = "load") -> tuple[float, float]:
    """Put every generated vector into ``backend`` (rowids 0..n-1) through ``method`` ("load" or
    "upsert"), then build its ANN index; returns the seconds each half took."""
    t = time.perf_counter()
    start = 0
    for chunk in data.chunks():
        getattr(backend, method)(np.arange(start, start + len(chunk)), chunk)
        start += len(chunk)
    generate_s = time.perf_counter() - t
    t = time.perf_counter()
    backend.build_ann()
    return generate_s, time.perf_counter() - t
