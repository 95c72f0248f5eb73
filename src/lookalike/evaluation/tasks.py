"""The evaluation tasks: each turns a data set's embeddings (for one configuration) into
per-query values, summaries with bootstrap confidence intervals, and data for plots."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from ..common.metrics import DEFAULT_KS, RECALL_LEVELS, bootstrap, classification_report, interpolated_precision, ranking_metrics
from ..common.views import alter
from ..engine import Engine
from ..images import ImageError, load_image
from ..search.filters import MetadataColumns, parse_where
from ..vectors.scoring import ConfigIndex
from .suite import ALTERATIONS, DatasetSpec, Suite, SuiteError, TaskSpec


@dataclass
class DatasetEmbeddings:
    """A data set as one configuration's encoder sees it: ids, metadata and unit vectors, row-aligned."""

    spec: DatasetSpec
    engine: Engine
    ids: list[str]
    metadata: list[dict[str, Any]]
    images: list[str | None]
    hashes: list[str | None]
    vectors: np.ndarray
    skipped: list[dict[str, str]] = field(default_factory=list)

    def column(self, name: str) -> list[Any]:
        return [m.get(name) for m in self.metadata]

    def thumbnail(self, position: int) -> bytes | None:
        try:
            return self.engine.thumbnail(self.ids[position])
        except KeyError:
            return None


def load_dataset(spec: DatasetSpec, engine: Engine) -> DatasetEmbeddings:
    """Ingest (incrementally: cached stores re-embed nothing) and collect the rows the suite keeps."""
    from ..ingest.catalogue import CatalogueRow, read_catalogue

    report = engine.ingest(spec.catalogue, spec.id_column, spec.image_column, garments=spec.garments)
    rows = [r for r in read_catalogue(spec.catalogue, spec.id_column, spec.image_column) if isinstance(r, CatalogueRow)]
    if spec.where:
        columns = MetadataColumns()
        for i, row in enumerate(rows):
            columns.set(i, row.metadata)
        mask = columns.mask(parse_where(spec.where))
        if mask is not None:
            rows = [r for i, r in enumerate(rows) if mask[i]]
    products = [engine.store.get(r.id) for r in rows]
    kept = [(r, p) for r, p in zip(rows, products) if p is not None]
    vectors = np.stack([engine.index.vector(p.rowid) for _, p in kept]) if kept else np.zeros((0, engine.encoder.dim), np.float32)
    skipped = [{"item": s.item, "reason": s.reason} for s in report.skipped]
    return DatasetEmbeddings(spec, engine, [r.id for r, _ in kept], [r.metadata for r, _ in kept], [r.image for r, _ in kept],
                             [p.image_hash for _, p in kept], vectors, skipped)


@dataclass
class TaskResult:
    """What one task measured for one configuration."""

    metrics: dict[str, dict[str, float]]  # metric -> {mean, ci_low, ci_high, n}
    baseline: dict[str, float] = field(default_factory=dict)  # random ranking, same queries
    plots: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def summarise(per_query: dict[str, list[float]], suite: Suite) -> dict[str, dict[str, float]]:
    return {name: bootstrap(values, suite.seed, suite.bootstrap).to_dict() for name, values in per_query.items()}


def _label(meta: dict[str, Any], columns: list[str]) -> tuple | None:
    values = tuple(meta.get(c) for c in columns)
    return None if any(v is None or v == "" for v in values) else tuple(str(v).strip().lower() for v in values)


def _ranking_values(scores: np.ndarray, relevant: np.ndarray, per_query: dict[str, list[float]], ks=DEFAULT_KS) -> dict[str, float]:
    m = ranking_metrics(scores, relevant, ks)
    per_query.setdefault("mAP", []).append(m["ap"])
    per_query.setdefault("nn_accuracy", []).append(m["nn_accuracy"])
    for k in ks:
        per_query.setdefault(f"P@{k}", []).append(m[f"p@{k}"])
        per_query.setdefault(f"R@{k}", []).append(m[f"r@{k}"])
    return m


def _random_baseline(relevant_counts: list[int], candidates: int, ks=DEFAULT_KS) -> dict[str, float]:
    """Expected metrics of a random ranking (every score tied), averaged over the same queries."""
    values: dict[str, list[float]] = {}
    for r in sorted(set(relevant_counts)):
        rel = np.zeros(candidates, bool)
        rel[:r] = True
        m = ranking_metrics(np.zeros(candidates), rel, ks)
        weight = relevant_counts.count(r)
        for key, out in (("ap", "mAP"), ("nn_accuracy", "nn_accuracy"), *[(f"p@{k}", f"P@{k}") for k in ks], *[(f"r@{k}", f"R@{k}") for k in ks],
                         *[(f"found@{k}", f"found@{k}") for k in ks]):
            values.setdefault(out, []).extend([m[key]] * weight)
    return {k: float(np.nanmean(v)) for k, v in values.items()}


def run_retrieval(task: TaskSpec, data: DatasetEmbeddings, index: ConfigIndex, suite: Suite) -> TaskResult:
    """In-shop retrieval: every item queries the rest of its set; relevance is equal values of the named columns."""
    columns = [task.options["relevance"]] if isinstance(task.options["relevance"], str) else list(task.options["relevance"])
    labels = [_label(m, columns) for m in data.metadata]
    n = len(labels)
    per_query: dict[str, list[float]] = {}
    pr_curves, worst, relevant_counts = [], [], []
    label_array = np.array([hash(l) if l is not None else 0 for l in labels])
    has_label = np.array([l is not None for l in labels])
    for i, row in index.iter_scores(data.vectors, [i for i in range(n) if labels[i] is not None]):
        scores = np.delete(row, i)
        relevant = np.delete((label_array == label_array[i]) & has_label, i)
        m = _ranking_values(scores, relevant, per_query)
        relevant_counts.append(int(relevant.sum()))
        pr_curves.append(interpolated_precision(scores, relevant))
        others = np.delete(np.arange(n), i)
        top = others[np.argsort(-scores, kind="stable")[:5]]
        worst.append((m["ap"] if not np.isnan(m["ap"]) else -1.0, i, top.tolist(), [bool(label_array[t] == label_array[i]) for t in top]))
    worst.sort(key=lambda w: w[0])
    curves = np.array(pr_curves) if pr_curves else np.zeros((0, len(RECALL_LEVELS)))
    notes = []
    unlabelled = int((~has_label).sum())
    if unlabelled:
        notes.append(f"{unlabelled} items without a value in {', '.join(columns)} were not used as queries")
    no_relevant = sum(1 for c in relevant_counts if c == 0)
    if no_relevant:
        notes.append(f"{no_relevant} queries had no relevant item (left out of mAP and recall)")
    return TaskResult(
        summarise(per_query, suite), _random_baseline(relevant_counts, n - 1), notes=notes,
        plots={"pr_levels": RECALL_LEVELS.tolist(), "pr_precision": np.nanmean(curves, axis=0).tolist() if len(curves) else [],
               "worst": [{"query": data.ids[q], "ap": ap, "results": [data.ids[t] for t in top], "relevant": rel, "query_pos": q, "result_pos": top}
                         for ap, q, top, rel in worst[:6]],
               "label_column": columns[0]},
    )


def _groups_from_pairs(task: TaskSpec, suite: Suite, known: set[str]) -> tuple[list[set[str]], list[tuple[str, str]], list[str]]:
    path = task.path("pairs", suite.base)
    id_a, id_b = task.options.get("id_a", "item_id_a"), task.options.get("id_b", "item_id_b")
    relation, positive = task.options.get("relation_column", "relation"), task.options.get("positive", "identical_image")
    hard = task.options.get("hard_negative")
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    negatives, notes, missing = [], [], 0
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            a, b = row.get(id_a), row.get(id_b)
            if a not in known or b not in known:
                missing += 1
                continue
            if row.get(relation) == positive:
                parent[find(a)] = find(b)
            elif hard and row.get(relation) == hard:
                negatives.append((a, b))
    groups: dict[str, set[str]] = {}
    for item in parent:
        groups.setdefault(find(item), set()).add(item)
    if missing:
        notes.append(f"{missing} pairs name items not in the data set (or unreadable) and were skipped")
    return [g for g in groups.values() if len(g) > 1], negatives, notes


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of unit vectors, clipped to [-1, 1]: float32 rounding puts identical photos at
    1.0000009, past the similarity histogram's last bin edge."""
    return float(np.clip(a @ b, -1.0, 1.0))


def run_pairs(task: TaskSpec, data: DatasetEmbeddings, index: ConfigIndex, suite: Suite) -> TaskResult:
    """Exact product / duplicate listings: each listed item queries the rest; its twins are relevant.

    R@k is whether a twin is in the first k (found@k): a listing with two twins whose first hit is
    one of them has found its duplicate, whichever twin it is."""
    position = {item: i for i, item in enumerate(data.ids)}
    groups, negatives, notes = _groups_from_pairs(task, suite, set(position))
    per_query: dict[str, list[float]] = {}
    positive_sims, counts = [], []
    n = len(data.ids)
    for group in groups:
        members = [position[m] for m in group]
        for q, row in index.iter_scores(data.vectors, members):
            scores = np.delete(row, q)
            relevant = np.zeros(n, bool)
            relevant[members] = True
            relevant = np.delete(relevant, q)
            m = ranking_metrics(scores, relevant, (1, 5))
            per_query.setdefault("R@1", []).append(m["found@1"])
            per_query.setdefault("R@5", []).append(m["found@5"])
            per_query.setdefault("mAP", []).append(m["ap"])
            counts.append(int(relevant.sum()))
        positive_sims += [_cosine(data.vectors[a], data.vectors[b]) for i, a in enumerate(members) for b in members[i + 1:]]
    negative_sims = [_cosine(data.vectors[position[a]], data.vectors[position[b]]) for a, b in negatives]
    metrics = summarise(per_query, suite)
    if positive_sims and negative_sims:
        from sklearn.metrics import roc_auc_score

        auc = roc_auc_score([1] * len(positive_sims) + [0] * len(negative_sims), positive_sims + negative_sims)
        metrics["AUC twin vs hard negative"] = {"mean": float(auc), "ci_low": float("nan"), "ci_high": float("nan"), "n": len(positive_sims) + len(negative_sims)}
    random = _random_baseline(counts, n - 1, (1, 5)) if counts else {}
    baseline = {"R@1": random["found@1"], "R@5": random["found@5"], "mAP": random["mAP"]} if counts else {}
    return TaskResult(metrics, baseline, plots={"positive_sims": positive_sims, "negative_sims": negative_sims}, notes=notes)


def _embed_images(engine: Engine, images: list[Image.Image], batch: int = 16) -> np.ndarray:
    return engine.encoder.encode(images, batch_size=batch)


def run_views(task: TaskSpec, data: DatasetEmbeddings, index: ConfigIndex, suite: Suite) -> TaskResult:
    """Synthetic street-like views of sampled products query the catalogue; the original is relevant."""
    names = list(task.options.get("alterations", ALTERATIONS))
    sample = min(int(task.options.get("sample", 200)), len(data.ids))
    rng = np.random.default_rng(suite.seed)
    chosen = np.sort(rng.choice(len(data.ids), sample, replace=False)) if sample else np.zeros(0, int)
    hashes = np.array([h or f"#{i}" for i, h in enumerate(data.hashes)])
    per_query: dict[str, list[float]] = {}
    notes, unreadable = [], 0
    for q in chosen:
        try:
            original = load_image(data.images[q], data.engine.limits)
        except ImageError:
            unreadable += 1
            continue
        altered = [alter(original, name, suite.seed * 1_000_003 + int(q) * 31 + j) for j, name in enumerate(names)]
        vectors = _embed_images(data.engine, altered)
        relevant = hashes == hashes[q]  # the product itself and any listing of the very same photo
        for name, vector in zip(names, vectors):
            m = ranking_metrics(index.scores(data.vectors, vector), relevant, (1, 5))
            for k in (1, 5):  # found: the original (or a listing of the same photo) within the top k
                per_query.setdefault(f"{name} R@{k}", []).append(min(1.0, m[f"p@{k}"] * k))
    if unreadable:
        notes.append(f"{unreadable} sampled products had unreadable images and were skipped")
    n = max(1, len(data.ids))
    baseline = {f"{name} R@{k}": min(1.0, k / n) for name in names for k in (1, 5)}
    return TaskResult(summarise(per_query, suite), baseline, notes=notes)


@dataclass
class StreetCrops:
    """Garment boxes cut from street photos, with their street labels and what they may match."""

    crops: list[Image.Image]
    labels: list[str]
    wanted: dict[str, set[str]]  # street label -> catalogue values that count as a match
    unmapped: int
    unreadable: int  # photos that could not be read
    tiny: int = 0    # boxes under the minimum side (8 px) after padding: nothing to search with

    def notes(self) -> list[str]:
        from ..training.features import MIN_SIDE

        out = [f"{self.unmapped} boxes have labels without a catalogue mapping and were not used"]
        if self.tiny:
            out.append(f"{self.tiny} boxes are under {MIN_SIDE} px on a side (after padding) and were skipped")
        if self.unreadable:
            out.append(f"{self.unreadable} boxes were skipped because their photo or coordinates could not be read")
        return out


def street_photo_keys(task: TaskSpec, suite: Suite) -> set[str] | None:
    """The street photos a task measures on when it names them (``street_photos``: a JSON list
    of image_file values, e.g. a garment finder's holdout.json); None: every photo."""
    if not task.options.get("street_photos"):
        return None
    path = task.path("street_photos", suite.base)
    try:
        keys = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SuiteError(f"task {task.name!r}: street_photos {path} cannot be read ({exc})") from exc
    if not isinstance(keys, list) or not keys:
        raise SuiteError(f"task {task.name!r}: street_photos {path} must be a non-empty JSON list of image_file values")
    return {str(k) for k in keys}


def street_label_map(task: TaskSpec) -> dict[str, set[str]]:
    """The task's ``label_map`` (street label -> values of its ``column``), read by the same rule
    as ``lookalike train embedding --street-labels`` so evaluation and training never disagree."""
    from ..training.street import TrainingDataError, read_label_map

    column, raw = task.options.get("column"), task.options.get("label_map")
    if not column:
        raise SuiteError(f"task {task.name!r}: needs 'column', the catalogue column street labels map to")
    if not isinstance(raw, dict) or not raw:
        raise SuiteError(f"task {task.name!r}: needs 'label_map' from street labels to values of {column!r}")
    try:
        return read_label_map({"column": column, "labels": raw})[1] or {}
    except TrainingDataError as exc:
        raise SuiteError(f"task {task.name!r}: {exc}") from exc


def street_positives(task: TaskSpec, suite: Suite, exclude: Iterable[str], weight: float) -> Any:
    """The task's street boxes, labelled by its ``column`` and ``label_map``, as cross-domain
    positives of a model trained in the run (:class:`~lookalike.training.StreetOptions`), never
    from the ``exclude``d photos.  A bad label map is refused here, before minutes of training."""
    from ..training import StreetOptions

    street_label_map(task)
    return StreetOptions(boxes=str(task.path("boxes", suite.base)), labels={"column": task.options["column"], "labels": task.options["label_map"]},
                         exclude=sorted(exclude), weight=weight)


def street_crops(task: TaskSpec, suite: Suite) -> StreetCrops:
    """Read the task's boxes file and crop every box whose label has a catalogue mapping
    (only in the photos of ``street_photos`` when the task names them), as training crops them."""
    from ..training.features import padded_box

    boxes_path = task.path("boxes", suite.base)
    images_base = task.path("images", suite.base) if task.options.get("images") else boxes_path.parent
    wanted = street_label_map(task)
    padding = float(task.options.get("padding", 0.1))
    rows = list(csv.DictReader(boxes_path.open(newline="", encoding="utf-8")))
    only = street_photo_keys(task, suite)
    usable = [r for r in rows if r.get("label", "").lower() in wanted and (only is None or r.get("image_file") in only)]
    unmapped = len(rows) - len(usable)
    limit = task.options.get("sample")
    if limit and len(usable) > int(limit):
        keep = np.sort(np.random.default_rng(suite.seed).choice(len(usable), int(limit), replace=False))
        usable = [usable[i] for i in keep]
    crops, labels, unreadable, tiny = [], [], 0, 0
    current: tuple[Path | None, Image.Image] | None = None  # boxes of one photo come together
    for row in usable:
        path = images_base / row["image_file"]
        try:
            image = current[1] if current is not None and current[0] == path else load_image(path)
            current = (path, image)
            x1, y1, x2, y2 = (float(row[k]) for k in ("x1", "y1", "x2", "y2"))
        except (ImageError, KeyError, ValueError):
            unreadable += 1
            continue
        region = padded_box((x1, y1, x2, y2), image.width, image.height, padding)
        if region is None:
            tiny += 1
            continue
        crops.append(image.crop(region))
        labels.append(row["label"].lower())
    return StreetCrops(crops, labels, wanted, unmapped, unreadable, tiny)


def run_street_to_shop(task: TaskSpec, data: DatasetEmbeddings, index: ConfigIndex, suite: Suite) -> TaskResult:
    """Boxes cropped from street photos query the catalogue; relevance through a label → category map."""
    street = street_crops(task, suite)
    crops, labels, wanted = street.crops, street.labels, street.wanted
    values = np.array([str(v).strip().lower() if v is not None else "" for v in data.column(task.options["column"])])
    per_query: dict[str, list[float]] = {}
    per_label: dict[str, list[float]] = {}
    counts = []
    vectors = _embed_images(data.engine, crops) if crops else np.zeros((0, data.vectors.shape[1]))
    for vector, label in zip(vectors, labels):
        relevant = np.isin(values, list(wanted[label]))
        m = ranking_metrics(index.scores(data.vectors, vector), relevant, (1, 10))
        per_query.setdefault("P@1", []).append(m["p@1"])
        per_query.setdefault("P@10", []).append(m["p@10"])
        per_query.setdefault("mAP", []).append(m["ap"])
        per_label.setdefault(label, []).append(m["p@10"])
        counts.append(int(relevant.sum()))
    notes = street.notes()
    baseline = {k: v for k, v in _random_baseline(counts, len(data.ids), (1, 10)).items() if k in ("P@1", "P@10", "mAP")} if counts else {}
    return TaskResult(summarise(per_query, suite), baseline, notes=notes,
                      plots={"per_label_p10": {k: float(np.mean(v)) for k, v in sorted(per_label.items())}})


def run_classification(task: TaskSpec, data: DatasetEmbeddings, index: ConfigIndex, suite: Suite) -> TaskResult:
    """Predict a column: leave-one-out k-NN on the configuration's embeddings, or a predictions file."""
    column = task.options["column"]
    truth = data.column(column)
    keep = [i for i, t in enumerate(truth) if t not in (None, "")]
    if "predictions" in task.options:
        path = task.path("predictions", suite.base)
        predicted_by_id = {r["id"]: r.get("predicted") or None for r in csv.DictReader(path.open(newline="", encoding="utf-8"))}
        predicted = [predicted_by_id.get(data.ids[i]) for i in keep]
    else:
        k = min(int(task.options.get("k", 10)), max(1, len(keep) - 1))
        labels = [str(truth[i]) for i in keep]
        vectors = data.vectors[keep]
        predicted = []
        for start in range(0, len(keep), 512):
            block = vectors[start : start + 512] @ vectors.T
            block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf  # leave the item itself out
            top = np.argpartition(-block, k - 1, axis=1)[:, :k]
            for row, neighbours in zip(block, top):
                votes: dict[str, float] = {}
                for j in neighbours:  # similarity-weighted vote of the k nearest labelled items
                    votes[labels[j]] = votes.get(labels[j], 0.0) + float(row[j])
                predicted.append(max(votes, key=lambda label: votes[label]) if votes else None)
    report = classification_report([str(truth[i]) for i in keep], predicted)
    metrics = summarise({"accuracy": report["correct"]}, suite)
    metrics["macro-F1"] = {"mean": report["macro_f1"], "ci_low": float("nan"), "ci_high": float("nan"), "n": len(keep)}
    counts = np.array([report["per_class"][c]["support"] for c in report["classes"]], float)
    baseline = {"accuracy": float(counts.max() / counts.sum()) if counts.sum() else float("nan")}  # always the commonest class
    notes = [f"{len(truth) - len(keep)} items without a {column!r} value were left out"] if len(keep) < len(truth) else []
    return TaskResult(metrics, baseline, notes=notes,
                      plots={"per_class": report["per_class"], "classes": report["classes"], "confusion": report["confusion"]})


def _point(value: float | None, n: int) -> dict[str, float]:
    return {"mean": float("nan") if value is None else float(value), "ci_low": float("nan"), "ci_high": float("nan"), "n": n}


def run_tagging(task: TaskSpec, data: DatasetEmbeddings, index: ConfigIndex, suite: Suite) -> TaskResult:
    """Train taggers on the data set's labelled columns and report their out-of-fold scores.

    Every labelled product is scored by taggers trained on the other folds, so these are
    held-out numbers; nothing is saved to the cached store."""
    from ..tagging import TrainOptions

    columns = task.options.get("columns", [])
    options = TrainOptions(
        columns=[columns] if isinstance(columns, str) else list(columns),
        text_columns=task.options.get("text_columns"),
        hierarchy=task.path("hierarchy", suite.base) if task.options.get("hierarchy") else None,
        path_columns=task.options.get("path_columns"),
        image_model=str(task.options.get("image_model", "efficientnet-lite2")),
        text_model=str(task.options.get("text_model", "tfidf")),
        folds=int(task.options.get("folds", 3)),
        where=data.spec.where or None,
        seed=suite.seed,
    )
    taggers = data.engine.train_taggers(options, save=False)
    metrics: dict[str, dict[str, float]] = {}
    baseline: dict[str, float] = {}
    notes = []
    per_class = {}
    for name, col in taggers.report["columns"].items():
        n = col["products"]
        metrics[f"{name} accuracy"] = _point(col["all_evidence"]["accuracy"], n)
        metrics[f"{name} macro-F1"] = _point(col["all_evidence"]["macro_f1"], n)
        if col["with_text"]:
            metrics[f"{name} accuracy, image only"] = _point(col["image_only"]["accuracy"], n)
            metrics[f"{name} macro-F1, image only"] = _point(col["image_only"]["macro_f1"], n)
        metrics[f"{name} flagged for review"] = _point(len(col["review"]) / n if n else None, n)  # share of labelled products
        supports = [c["support"] for c in col["per_class"]]
        baseline[f"{name} accuracy"] = max(supports) / sum(supports)
        for level, acc in enumerate(col.get("levels", {}).get("accuracy_by_level", []), start=1):
            metrics[f"{name} level {level} accuracy"] = _point(acc, n)
        per_class[name] = col["per_class"]
        if col["dropped_rare_classes"]:
            notes.append(f"{name}: {len(col['dropped_rare_classes'])} classes with too few products left out")
        notes.append(f"{name}: expert accuracies {col['experts']}, fusion weights {col['weights']}")
    return TaskResult(metrics, baseline, notes=notes, plots={"tagging": per_class})

