"""Run a suite for one or more configurations and collect everything the report shows.

Embeddings are cached per (data set, encoder) as ordinary lookalike stores under the cache
directory, so a second run (or a second configuration with the same encoder) re-embeds
nothing; only the configuration's index is rebuilt, and its build time, size and latency
are measured on the spot.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..common.progress import Log
from ..config import Settings, load_settings
from ..engine import DEFAULT_ENCODER, Engine
from ..images import ImageError, load_image
from .learned import run_learned_codes
from .look import run_shop_the_look
from .suite import EvalConfig, Suite, TaskSpec
from .tasks import ConfigIndex, DatasetEmbeddings, TaskResult, load_dataset, run_classification, run_pairs, run_retrieval, run_street_to_shop, run_tagging, run_views
from .text import run_text_search

RUNNERS: dict[str, Callable[[TaskSpec, DatasetEmbeddings, ConfigIndex, Suite], TaskResult]] = {
    "retrieval": run_retrieval, "pairs": run_pairs, "views": run_views, "street_to_shop": run_street_to_shop, "shop_the_look": run_shop_the_look, "classification": run_classification,
    "tagging": run_tagging, "learned_codes": run_learned_codes, "text_search": run_text_search,
}


@dataclass
class Evaluation:
    """Everything measured: per task and configuration, efficiency, data-set notes, maps."""

    suite: Suite
    configs: list[EvalConfig]
    tasks: dict[str, dict[str, TaskResult]] = field(default_factory=dict)  # task name -> config -> result
    efficiency: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # config -> dataset -> numbers
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)  # config -> dataset -> {items, skipped}
    maps: dict[str, dict[str, Any]] = field(default_factory=dict)  # config -> map points
    thumbnails: dict[str, dict[str, str]] = field(default_factory=dict)  # config -> item id -> data URI
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The raw numbers (no pictures), as written to results.json."""
        return {
            "suite": self.suite.name, "suite_file": str(self.suite.path), "seed": self.suite.seed, "bootstrap": self.suite.bootstrap,
            "configs": [{"name": c.name, "settings": c.settings} for c in self.configs], "seconds": round(self.seconds, 1),
            "tasks": [{"name": t.name, "type": t.type, "dataset": t.dataset,
                       "results": {c: {"metrics": r.metrics, "random_baseline": r.baseline, "notes": r.notes, "details": r.plots}
                                   for c, r in self.tasks.get(t.name, {}).items()}}
                      for t in self.suite.tasks],
            "efficiency": self.efficiency,
            "datasets": self.datasets,
        }


def _encoder_name(settings: Settings) -> str:
    return settings.encoder or DEFAULT_ENCODER


def _data_uri(jpeg: bytes | None) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode() if jpeg else ""


def _embedding_map(data: DatasetEmbeddings, column: str, suite: Suite) -> dict[str, Any]:
    """A 2-D t-SNE map of (a sample of) the data set, for the report's scatter plot."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(data.ids)
    if n < 10:
        return {}
    rng = np.random.default_rng(suite.seed)
    chosen = np.sort(rng.choice(n, min(n, suite.map_points), replace=False))
    x = data.vectors[chosen]
    x = PCA(n_components=min(50, len(chosen) - 1, x.shape[1]), random_state=suite.seed).fit_transform(x)
    xy = TSNE(n_components=2, perplexity=min(30.0, (len(chosen) - 1) / 3), init="pca", random_state=suite.seed).fit_transform(x)
    labels = [str(data.metadata[i].get(column, "")) for i in chosen]
    return {"column": column, "x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(), "labels": labels,
            "ids": [data.ids[i] for i in chosen], "positions": chosen.tolist()}


def _efficiency(data: DatasetEmbeddings, index: ConfigIndex, suite: Suite) -> dict[str, Any]:
    rng = np.random.default_rng(suite.seed)
    queries = data.vectors[rng.choice(len(data.ids), min(200, len(data.ids)), replace=False)]
    pixels = []
    for path in [p for p in data.images if p is not None][:16]:
        try:
            pixels.append(data.engine.encoder.preprocess(load_image(path, data.engine.limits)))
        except ImageError:
            continue
    embed_ms = float("nan")
    if pixels:
        batch = np.stack(pixels)
        data.engine.encoder.embed(batch)  # warm
        runs = []
        for _ in range(5):  # the fastest of several runs: other processes only ever add time
            start = time.perf_counter()
            data.engine.encoder.embed(batch)
            runs.append((time.perf_counter() - start) * 1000 / len(pixels))
        embed_ms = min(runs)
    return {"items": len(data.ids), "index": index.scored_by, "bytes_per_item": round(index.bytes_per_item, 1), "build_s": round(index.build_s, 3),
            **{k: round(v, 4) for k, v in index.latency(queries).items()}, "embed_ms_per_image": round(embed_ms, 2)}


def evaluate(suite: Suite, configs: list[EvalConfig], cache_dir: Path, base: Settings | None = None, progress: Log = lambda _: None) -> Evaluation:
    """Run every task of ``suite`` for every configuration."""
    base = base or load_settings()
    configs = configs or [EvalConfig("default")]
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"configuration names must differ: {', '.join(names)}")
    result = Evaluation(suite, configs)
    started = time.perf_counter()
    used = list(dict.fromkeys(t.dataset for t in suite.tasks))
    for config in configs:
        settings = config.apply(base)
        for name in used:
            spec = suite.datasets[name]
            store = cache_dir / f"{name}--{_encoder_name(settings)}"
            progress(f"[{config.name}] embedding data set {name} ({spec.catalogue})")
            with Engine.open(store, settings=settings.replace(index="flat", store=str(store))) as engine:
                data = load_dataset(spec, engine)
                result.datasets.setdefault(config.name, {})[name] = {"items": len(data.ids), "skipped": data.skipped}
                index = ConfigIndex.build(data, settings, getattr(engine.encoder, "quantizer", None))
                result.efficiency.setdefault(config.name, {})[name] = _efficiency(data, index, suite)
                for task in (t for t in suite.tasks if t.dataset == name):
                    progress(f"[{config.name}] task {task.name}")
                    outcome = RUNNERS[task.type](task, data, index, suite)
                    result.tasks.setdefault(task.name, {})[config.name] = outcome
                    _keep_thumbnails(result, config.name, data, outcome)
                first_retrieval = next((t for t in suite.tasks if t.dataset == name and t.type == "retrieval"), None)
                if first_retrieval is not None and config.name not in result.maps:
                    progress(f"[{config.name}] embedding map of {name}")
                    column = first_retrieval.options["relevance"]
                    column = column if isinstance(column, str) else column[0]
                    result.maps[config.name] = _embedding_map(data, column, suite)
                    thumbs = result.thumbnails.setdefault(config.name, {})
                    for item, pos in zip(result.maps[config.name].get("ids", []), result.maps[config.name].get("positions", [])):
                        thumbs.setdefault(item, _data_uri(data.thumbnail(pos)))
    result.seconds = time.perf_counter() - started
    return result


def _keep_thumbnails(result: Evaluation, config: str, data: DatasetEmbeddings, outcome: TaskResult) -> None:
    """Thumbnails for the worst-query gallery, taken while the store is open."""
    thumbs = result.thumbnails.setdefault(config, {})
    for entry in outcome.plots.get("worst", []):
        for item, pos in [(entry["query"], entry["query_pos"]), *zip(entry["results"], entry["result_pos"])]:
            thumbs.setdefault(item, _data_uri(data.thumbnail(pos)))
    for photo in outcome.plots.get("look_gallery", []):  # shop the look: each garment's top results
        for garment in photo["garments"]:
            for item, pos in zip(garment["results"], garment["result_pos"]):
                thumbs.setdefault(item, _data_uri(data.thumbnail(pos)))
