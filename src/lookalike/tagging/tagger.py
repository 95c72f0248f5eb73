"""Train, save, load and apply a store's taggers.

    taggers = train_taggers(view, TrainOptions(columns=["article_type", "base_colour"],
                                                 hierarchy="tree.txt", path_columns=[...]))
    taggers.save(view)                    # STORE/taggers/taggers-v3.joblib, atomically current
    predict_tags(view, load_taggers(view))

A *tagger set* is one versioned file holding a :class:`ColumnTagger` per trained column (and
per hierarchy), the text rules, the identities of the encoders whose features it was trained
on, and the out-of-fold training report with its review list.  Loading a set trained on
another encoder's embeddings is refused: its classifiers would read meaningless numbers.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

import joblib
import numpy as np
from PIL import Image

from ..common.colour import colour_features
from ..common.folders import replace_atomically
from ..common.progress import Progress
from ..config import Settings
from ..images import thumbnail_jpeg
from ..ingest.distributors import Distributor
from ..ingest.reader import LOCAL
from ..models import EncoderError, get_encoder
from ..search.view import CatalogueView
from ..storage import shown_tags
from ..text.encoder import TextError, guess_text_columns, sentence_encoder
from .hierarchy import CategoryTree, join_path, level_accuracy, split_path
from .model import EXPERTS, TEXT, ColumnTagger, CrossFit, Evidence
from .rules import TextRules
from .zeroshot import ZeroShotGroups

FORMAT = 1
HIERARCHY_TAG = "category"
MISSING_LABELS = {"", "na", "n/a", "nan", "none", "null", "unknown", "skip", "not sure"}


ALTERNATIVES = 3        # runner-up values kept with a tag, with their probabilities
MIN_ALTERNATIVE = 0.05


class TaggerError(RuntimeError):
    """Taggers cannot be trained, loaded or applied as asked; the message says why and what to do."""


@dataclass
class TrainOptions:
    columns: list[str] = field(default_factory=list)
    text_columns: list[str] | None = None       # None: guess (title, name, description…)
    hierarchy: str | Path | None = None          # category tree file
    path_columns: list[str] | None = None        # columns joined into each product's current path
    image_model: str = "efficientnet-lite2"      # second backbone run on thumbnails; "none" to skip
    text_model: str = "tfidf"                    # or "minilm" (needs the text extra) or "none"
    folds: int = 3
    weight_power: float = 0.5
    min_class_count: int = 3
    threshold: float = 0.5
    review_confidence: float = 0.8
    rules: str | Path | None = None              # text rules file; None: the shipped defaults
    where: list[str] | None = None               # train only on products matching these filters
    seed: int = 0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _label(value: Any) -> str | None:
    text = "" if value is None else str(value).strip()
    return None if text.lower() in MISSING_LABELS else text


# ---- features -----------------------------------------------------------------------------------
class FeatureBuilder:
    """Evidence for products or uploads: store embedding (+ backbone), colour, text."""

    def __init__(self, settings: Settings, image_model: str, text_columns: list[str], text_model: str):
        self.settings = settings
        self.text_columns = text_columns
        self.text_model = text_model
        self._backbone = None
        if image_model and image_model != "none":
            try:
                self._backbone = get_encoder(image_model, settings)
            except EncoderError as exc:
                raise TaggerError(f"tagger image model {image_model!r} is unavailable ({exc}); pass --image-model none to use only the store's embeddings") from exc

    @property
    def backbone_identity(self) -> str | None:
        return None if self._backbone is None else self._backbone.identity

    def text_of(self, metadata: dict[str, Any]) -> str:
        return " . ".join(str(metadata[c]).strip() for c in self.text_columns if metadata.get(c) not in (None, ""))

    def _sentence_vectors(self, texts: list[str]) -> np.ndarray | None:
        if self.text_model != "minilm":
            return None
        try:
            return sentence_encoder(cache_dir=self.settings.model_cache_dir()).encode(texts)
        except TextError as exc:
            raise TaggerError(f"text model 'minilm': {exc}") from exc

    def _image_block(self, vectors: np.ndarray, thumbs: list[Image.Image]) -> np.ndarray:
        if self._backbone is None:
            return vectors.astype(np.float32)
        extra = self._backbone.encode(thumbs, batch_size=32)
        return (np.hstack([vectors, extra]) / np.sqrt(2.0)).astype(np.float32)

    def evidence(self, vectors: np.ndarray, thumbs: list[Image.Image], texts: list[str]) -> Evidence:
        return Evidence(self._image_block(vectors, thumbs), np.stack([colour_features(t) for t in thumbs]), texts, self._sentence_vectors(texts))

    def read(self, view: CatalogueView, rowids: list[int]) -> TagPartition:
        """Stored products' embeddings, thumbnails (encoded) and text, read once."""
        products = view.store.get_by_rowids(rowids)
        stored = view.store.thumbnails(rowids)
        vectors = np.stack([view.vector(r) for r in rowids])
        return TagPartition(rowids, vectors, [stored.get(r) for r in rowids], [self.text_of(products[r].metadata) for r in rowids])

    def load(self, view: CatalogueView, rowids: list[int]) -> tuple[np.ndarray, list[Image.Image], list[str]]:
        """Stored products' embeddings, decoded thumbnails and text."""
        part = self.read(view, rowids)
        return part.vectors, part.pictures(), part.texts

    def for_rowids(self, view: CatalogueView, rowids: list[int], chunk: int = 256, progress: Progress | None = None, label: str = "features") -> Evidence:
        parts = []
        for start in range(0, len(rowids), chunk):
            parts.append(self.evidence(*self.load(view, rowids[start : start + chunk])))
            if progress:
                progress(label, min(start + chunk, len(rowids)), len(rowids))
        if not parts:
            raise TaggerError("no products to compute features for")
        return Evidence(np.concatenate([p.image for p in parts]), np.concatenate([p.colour for p in parts]),
                        [t for p in parts for t in p.text],
                        None if parts[0].text_vectors is None else np.concatenate([p.text_vectors for p in parts]))

    def upload_thumbnail(self, picture: Image.Image) -> Image.Image:
        """An upload as stored products are seen: through the same JPEG thumbnail."""
        return _open_thumbnail(thumbnail_jpeg(picture, self.settings.thumbnail_size))


def _open_thumbnail(data: bytes | None) -> Image.Image:
    if not data:
        return Image.new("RGB", (64, 64), (255, 255, 255))
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


@dataclass
class TagPartition:
    """A chunk of stored products to tag: what a worker needs (it never opens the store) and, once
    mapped, their tags.  Picklable, so a process pool or Ray actors can tag it."""

    rowids: list[int]
    vectors: np.ndarray
    thumbnails: list[bytes | None]
    texts: list[str]
    tags: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    lane: str = LOCAL

    def pictures(self) -> list[Image.Image]:
        return [_open_thumbnail(data) for data in self.thumbnails]


@dataclass(frozen=True)
class TaggingWorkerFactory:
    """Builds a :class:`TagPredictor` once per worker (its backbone, text and zero-shot models)."""

    taggers: TaggerSet
    settings: Settings
    threshold: float | None = None
    rules: TextRules | None = None

    def __call__(self) -> TaggingWorker:
        return TaggingWorker(self)


class TaggingWorker:
    def __init__(self, factory: TaggingWorkerFactory):
        self.predictor, self.threshold, self.rules = TagPredictor(factory.settings, factory.taggers), factory.threshold, factory.rules

    def __call__(self, partition: TagPartition) -> TagPartition:
        return self.predictor.tag_partition(partition, self.threshold, self.rules)

    def close(self) -> None:
        return None


# ---- the tagger set -------------------------------------------------------------------------------
@dataclass(eq=False)
class TaggerSet:
    version: int
    created: str
    encoder: str
    image_model: str | None  # identity (name@version) of the second backbone, None without one
    text_model: str
    text_columns: list[str]
    taggers: dict[str, ColumnTagger]
    rules: TextRules
    threshold: float
    hierarchy: CategoryTree | None = None
    report: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT

    @property
    def name(self) -> str:
        return f"taggers-v{self.version}"

    @property
    def image_model_name(self) -> str:
        return self.image_model.split("@")[0] if self.image_model else "none"

    @property
    def zero_shot(self) -> bool:
        """A set without trained taggers falls back on zero-shot image groups and colour."""
        return not self.taggers

    @property
    def hierarchy_leaves(self) -> list[tuple[str, ...]]:
        """The tree leaves the hierarchy tagger's classes stand for, in class order."""
        tagger = self.taggers.get(HIERARCHY_TAG)
        return [] if tagger is None else [split_path(c) for c in tagger.classes]

    def review(self, column: str | None = None) -> list[dict[str, Any]]:
        """Labels the out-of-fold predictions confidently contradict, most confident first."""
        rows = [r for name, col in self.report.get("columns", {}).items() if column in (None, name) for r in col["review"]]
        return sorted(rows, key=lambda r: -r["confidence"])

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "created": self.created, "encoder": self.encoder,
                "image_model": self.image_model, "text_model": self.text_model, "text_columns": self.text_columns,
                "columns": sorted(self.taggers), "rules": self.rules.names, "threshold": self.threshold,
                "hierarchy_levels": None if self.hierarchy is None else self.hierarchy.depth, "zero_shot": self.zero_shot}

    # -- files --
    @staticmethod
    def directory(view: CatalogueView) -> Path:
        return view.directory / "taggers"

    def save(self, view: CatalogueView) -> Path:
        """Write the set as a new version and make it current, each step atomic."""
        folder = self.directory(view)
        folder.mkdir(parents=True, exist_ok=True)
        existing = [int(m.group(1)) for p in folder.glob("taggers-v*.joblib") if (m := re.match(r"taggers-v(\d+)\.joblib$", p.name))]
        self.version = max(existing, default=0) + 1
        target = folder / f"{self.name}.joblib"
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as tmp:
            joblib.dump(self, tmp, compress=3)
        os.replace(tmp.name, target)
        report_path = folder / f"{self.name}-report.json"
        report_path.write_text(json.dumps({**self.summary(), "report": self.report}, indent=2, default=str))
        _atomic_text(folder / "CURRENT", target.name + "\n")
        return target


def _atomic_text(path: Path, text: str) -> None:
    replace_atomically(path, lambda temporary: temporary.write_text(text))


def current_tagger_path(view: CatalogueView) -> Path | None:
    pointer = TaggerSet.directory(view) / "CURRENT"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.exists() else None


def load_taggers(view: CatalogueView, path: str | Path | None = None) -> TaggerSet | None:
    """The store's current tagger set (or the file at ``path``); None when none was trained.

    Raises :class:`TaggerError` for a file that is not a tagger set or was trained on another
    encoder's embeddings."""
    path = Path(path) if path else current_tagger_path(view)
    if path is None:
        return None
    try:
        taggers = joblib.load(path)
    except Exception as exc:  # joblib/pickle raise many types for a damaged file
        raise TaggerError(f"{path} is not a readable tagger file: {exc}") from exc
    if not isinstance(taggers, TaggerSet) or getattr(taggers, "format", None) != FORMAT:
        raise TaggerError(f"{path} is not a lookalike tagger set of format {FORMAT}; retrain with `lookalike tag train`")
    if taggers.encoder != view.encoder.identity:
        raise TaggerError(
            f"tagger file {path.name} was trained on embeddings of {taggers.encoder}, but this store's encoder is "
            f"{view.encoder.identity}; its classifiers would read meaningless features. Retrain with `lookalike tag train`."
        )
    if taggers.image_model:
        try:
            identity = get_encoder(taggers.image_model_name, view.settings).identity
        except EncoderError as exc:
            raise TaggerError(f"tagger file {path.name} needs image model {taggers.image_model}: {exc}") from exc
        if identity != taggers.image_model:
            raise TaggerError(f"tagger file {path.name} was trained with image model {taggers.image_model}, but {identity} is installed; "
                              "retrain with `lookalike tag train`")
    return taggers


# ---- training ------------------------------------------------------------------------------------
def _replayable(options: TrainOptions) -> dict[str, Any]:
    """The options as plain data, so a later run (retraining after labels were fixed) can repeat them."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}


def retrain_options(report: dict[str, Any]) -> TrainOptions:
    """The options a tagger set was trained with (defaults for a set trained before they were kept)."""
    stored = report.get("options")
    known = {f.name for f in fields(TrainOptions)}
    return TrainOptions(**{k: v for k, v in stored.items() if k in known}) if isinstance(stored, dict) else TrainOptions(columns=sorted(report.get("columns", {})))


def _per_class(classes: np.ndarray, target: np.ndarray, predicted: np.ndarray) -> list[dict[str, Any]]:
    from sklearn.metrics import precision_recall_fscore_support  # scikit-learn loads only when a tagger trains

    labels = np.arange(len(classes))
    p, r, f, s = precision_recall_fscore_support(target, predicted, labels=labels, zero_division=0)
    return [{"class": str(c), "precision": round(float(pi), 4), "recall": round(float(ri), 4), "f1": round(float(fi), 4), "support": int(si)}
            for c, pi, ri, fi, si in zip(classes, p, r, f, s)]


def _scores(target: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    predicted = proba.argmax(1)
    return {"accuracy": round(float((predicted == target).mean()), 4),
            "macro_f1": round(float(f1_score(target, predicted, average="macro", zero_division=0)), 4)}


def _column_report(column: str, fit: CrossFit, tagger: ColumnTagger, ids: list[str], has_text: np.ndarray,
                   dropped: dict[str, int], options: TrainOptions) -> dict[str, Any]:
    predicted = fit.proba.argmax(1)
    confidence = fit.proba.max(1)
    review: list[dict[str, Any]] = [
        {"id": ids[i], "column": column, "current": str(fit.classes[fit.target[i]]), "predicted": str(fit.classes[predicted[i]]),
         "confidence": round(float(confidence[i]), 4)}
        for i in np.flatnonzero((predicted != fit.target) & (confidence >= options.review_confidence))
    ]
    review.sort(key=lambda r: -r["confidence"])
    kept = confidence >= options.threshold
    return {
        "column": column, "products": len(ids), "classes": len(fit.classes), "with_text": int(has_text.sum()),
        "dropped_rare_classes": dropped,
        "all_evidence": _scores(fit.target, fit.proba),
        "image_only": _scores(fit.target, fit.proba_image_only),
        "coverage_at_threshold": round(float(kept.mean()), 4),
        "accuracy_at_threshold": round(float((predicted == fit.target)[kept].mean()), 4) if kept.any() else None,
        "experts": {k: round(v, 4) for k, v in fit.expert_accuracy.items()},
        "weights": tagger.weights, "weights_image_only": tagger.weights_image_only,
        "per_class": _per_class(fit.classes, fit.target, predicted),
        "review": review,
    }


def train_taggers(view: CatalogueView, options: TrainOptions, progress: Progress | None = None, log: Callable[[str], None] = lambda _: None) -> TaggerSet:
    """Train one tagger per column (and one for the hierarchy) from the store's own labels."""
    rowids = _training_rowids(view, options.where)
    if not rowids:
        raise TaggerError("the store has no products" + (" matching the filter" if options.where else "") + "; ingest a catalogue first")
    products = view.store.get_by_rowids(rowids)
    metadata = [products[r].metadata for r in rowids]
    ids = [products[r].id for r in rowids]
    known = set().union(*(m.keys() for m in metadata))
    missing = [c for c in options.columns if c not in known]
    if missing:
        raise TaggerError(f"the catalogue has no column {', '.join(map(repr, missing))}; columns: {', '.join(sorted(known)) or '(none)'}")
    text_columns = list(options.text_columns) if options.text_columns is not None else guess_text_columns(known)
    bad_text = [c for c in text_columns if c not in known]
    if bad_text:
        raise TaggerError(f"text column {', '.join(map(repr, bad_text))} is not in the catalogue")
    if options.text_model not in ("tfidf", "minilm", "none"):
        raise TaggerError(f"text model must be tfidf, minilm or none, not {options.text_model!r}")
    text_model = options.text_model if text_columns else "none"
    targets: dict[str, list[str | None]] = {c: [_label(m.get(c)) for m in metadata] for c in options.columns}
    tree = None
    if options.hierarchy:
        tree = CategoryTree.from_file(options.hierarchy)
        targets[HIERARCHY_TAG] = _hierarchy_targets(tree, metadata, options.path_columns, log)
    if not targets:
        log("no label columns given: the tagger set holds text rules and zero-shot image groups only")
    builder = FeatureBuilder(view.settings, options.image_model, text_columns, text_model)
    needed = sorted({i for values in targets.values() for i, v in enumerate(values) if v is not None})
    taggers: dict[str, ColumnTagger] = {}
    report: dict[str, Any] = {"columns": {}, "trained_at": _now(), "folds": options.folds, "products": len(rowids),
                              "options": _replayable(options)}
    if needed:
        evidence = builder.for_rowids(view, [rowids[i] for i in needed], progress=progress, label="features")
        position = {row: k for k, row in enumerate(needed)}
        experts = tuple(e for e in EXPERTS if e != TEXT or text_model != "none")
        for column, values in targets.items():
            labelled = [i for i, v in enumerate(values) if v is not None]
            labels = np.array([values[i] for i in labelled], dtype=object)
            classes, counts = np.unique(labels, return_counts=True)
            rare = {str(c): int(n) for c, n in zip(classes, counts) if n < options.min_class_count}
            keep = np.array([l not in rare for l in labels])
            labelled = [i for i, k in zip(labelled, keep) if k]
            labels = labels[keep]
            if len(set(labels)) < 2:
                log(f"{column}: fewer than two classes with {options.min_class_count}+ labelled products; skipped")
                continue
            tagger = ColumnTagger(column, experts, weight_power=options.weight_power, text_model=text_model, folds=options.folds, seed=options.seed)
            subset = evidence.subset(np.array([position[i] for i in labelled]))
            fit = tagger.fit(subset, labels, progress=lambda m: log(m))
            taggers[column] = tagger
            report["columns"][column] = _column_report(column, fit, tagger, [ids[i] for i in labelled], subset.has_text(), rare, options)
            if column == HIERARCHY_TAG and tree is not None:
                report["columns"][column]["levels"] = _hierarchy_report(tree, fit, options.threshold)
    return TaggerSet(
        version=0, created=_now(), encoder=view.encoder.identity, image_model=builder.backbone_identity,
        text_model=text_model, text_columns=text_columns, taggers=taggers,
        rules=TextRules.from_file(options.rules) if options.rules else TextRules.default(),
        threshold=options.threshold, hierarchy=tree, report=report,
    )


def _training_rowids(view: CatalogueView, where: list[str] | None) -> list[int]:
    return view.matching_rowids(where).tolist()


def _hierarchy_targets(tree: CategoryTree, metadata: list[dict[str, Any]], path_columns: list[str] | None, log: Callable[[str], None]) -> list[str | None]:
    if not path_columns:
        raise TaggerError("a hierarchy needs --path-column: the column(s) holding each product's current category "
                          "(one column with 'A > B > C' paths, or one column per level, top first)")
    out: list[str | None] = []
    unknown: dict[str, int] = {}
    for meta in metadata:
        parts = [_label(meta.get(c)) for c in path_columns]
        if any(p is None for p in parts):
            out.append(None)
            continue
        value = parts[0] if len(parts) == 1 else join_path([str(p) for p in parts])
        leaf = tree.resolve(str(value))
        if leaf is None:
            unknown[str(value)] = unknown.get(str(value), 0) + 1
        out.append(None if leaf is None else join_path(leaf))
    if unknown:
        sample = ", ".join(f"{k!r} ({v})" for k, v in sorted(unknown.items(), key=lambda kv: -kv[1])[:5])
        log(f"{sum(unknown.values())} products have a category that is not a leaf of the tree and are not used for training: {sample}")
    return out


def _hierarchy_report(tree: CategoryTree, fit: CrossFit, threshold: float) -> dict[str, Any]:
    leaves = [split_path(c) for c in fit.classes]
    truth = [leaves[t] for t in fit.target]
    argmax = [leaves[i] for i in fit.proba.argmax(1)]
    placed = tree.place(leaves, fit.proba, threshold)
    depth_counts = np.bincount([p.depth for p in placed], minlength=tree.depth + 1)
    correct_placed = [truth[i][: p.depth] == p.path for i, p in enumerate(placed) if p.depth]
    return {
        "accuracy_by_level": [round(a, 4) for a in level_accuracy(truth, argmax, tree.depth)],
        "placed_depth_counts": {str(d): int(n) for d, n in enumerate(depth_counts)},
        "placed_node_accuracy": round(float(np.mean(correct_placed)), 4) if correct_placed else None,
    }


# ---- prediction -----------------------------------------------------------------------------------
def _tag(value: str, confidence: float, source: str, **extra: Any) -> dict[str, Any]:
    return {"value": value, "confidence": round(float(confidence), 4), "source": source, **extra}


def _uncertain(candidates: list[list[Any]], source: str) -> dict[str, Any]:
    """A prediction below the threshold: no value is shown (not on the product, not as a filter),
    but its likeliest values are kept.  Text search and "like this, but…" read them as soft evidence,
    so a photo the tagger is unsure of still counts a little for its likeliest type or colour,
    instead of not at all (what a product the tagger is sure is something else gets)."""
    return {"value": None, "confidence": candidates[0][1], "source": source, "candidates": candidates}


def _offer(tags: dict[str, dict[str, Any]], attribute: str, tag: dict[str, Any]) -> None:
    """Add ``tag`` unless the attribute already has a value (a below-threshold guess gives way)."""
    if tags.get(attribute, {}).get("value") is None:
        tags[attribute] = tag


class TagPredictor:
    """Applies a tagger set to stored products or to an upload.

    It holds the loaded models (backbone, ImageNet head), so the tagging service keeps one per tagger
    set; the threshold and rules can still be chosen per call."""

    def __init__(self, settings: Settings, taggers: TaggerSet):
        self.taggers = taggers
        self.builder = FeatureBuilder(settings, taggers.image_model_name, taggers.text_columns, taggers.text_model)
        self.zero_shot = ZeroShotGroups(settings) if taggers.zero_shot else None

    def tags_for(self, evidence: Evidence, thumbnails: list[Image.Image], threshold: float | None = None,
                 rules: TextRules | None = None) -> list[dict[str, dict[str, Any]]]:
        threshold = self.taggers.threshold if threshold is None else threshold
        rules = rules or self.taggers.rules
        n = len(evidence)
        out: list[dict[str, dict[str, Any]]] = [{} for _ in range(n)]
        for column, tagger in self.taggers.taggers.items():
            proba, sources = tagger.predict_proba(evidence)
            if column == HIERARCHY_TAG and self.taggers.hierarchy is not None:
                for i, placement in enumerate(self.taggers.hierarchy.place(self.taggers.hierarchy_leaves, proba, threshold)):
                    if placement.depth:
                        out[i][column] = _tag(join_path(placement.path), placement.confidence, sources[i], depth=placement.depth)
                continue
            ranked = np.argsort(-proba, axis=1)[:, : 1 + ALTERNATIVES]
            for i in range(n):
                best = ranked[i, 0]
                likely = [(j, [str(tagger.classes[j]), round(float(proba[i, j]), 4)]) for j in ranked[i] if proba[i, j] >= MIN_ALTERNATIVE]
                if proba[i, best] >= threshold:
                    # the runners-up with their probabilities: text search reads them as soft evidence
                    alternatives = [pair for j, pair in likely if j != best]
                    out[i][column] = _tag(str(tagger.classes[best]), proba[i, best], sources[i], **({"alternatives": alternatives} if alternatives else {}))
                elif likely:
                    out[i][column] = _uncertain([pair for _, pair in likely], sources[i])
        for i, text in enumerate(evidence.text):
            for attribute, hit in rules.apply(text).items():
                _offer(out[i], attribute, _tag(hit.value, hit.confidence, "rule", matched=hit.matched))
        if self.zero_shot is not None:
            for i, guess in enumerate(self.zero_shot.groups(thumbnails, evidence.colour)):
                for attribute, (value, confidence) in guess.items():
                    _offer(out[i], attribute, _tag(value, confidence, "zero-shot"))
        return out

    def tag_partition(self, partition: TagPartition, threshold: float | None = None, rules: TextRules | None = None) -> TagPartition:
        """Tags for a partition of stored products; their pixels and vectors are not sent back."""
        pictures = partition.pictures()
        partition.tags = self.tags_for(self.builder.evidence(partition.vectors, pictures, partition.texts), pictures, threshold, rules)
        partition.vectors, partition.thumbnails = partition.vectors[:0], []
        return partition

    def predict_rowids(self, view: CatalogueView, rowids: list[int], threshold: float | None = None, rules: TextRules | None = None,
                       chunk: int = 256, progress: Progress | None = None, distributor: Distributor | None = None) -> int:
        """Tag stored products and write the tags, one transaction per chunk.  The store is read
        and written here; the tagging itself runs in this process (its models already loaded) or,
        given a distributor (a process pool, Ray), on its workers, each loading the models once."""
        live_mask = view.live_mask()
        live = [r for r in rowids if r < len(live_mask) and live_mask[r]]
        partitions = (self.builder.read(view, live[start : start + chunk]) for start in range(0, len(live), chunk))
        mapped: Iterable[TagPartition | None] = (
            (self.tag_partition(p, threshold, rules) for p in partitions) if distributor is None
            else distributor.map(TaggingWorkerFactory(self.taggers, view.settings, threshold, rules), partitions))
        done = seen = 0
        for partition in mapped:
            if partition is None:
                continue
            done += view.write_tags(list(zip(partition.rowids, partition.tags)), self.taggers.name)
            seen += len(partition.rowids)
            if progress:
                progress("tagging", seen, len(live))
        return done

    def predict_picture(self, picture: Image.Image, vector: np.ndarray, text: str = "", threshold: float | None = None) -> dict[str, dict[str, Any]]:
        thumb = self.builder.upload_thumbnail(picture)
        return shown_tags(self.tags_for(self.builder.evidence(vector[None], [thumb], [text or ""]), [thumb], threshold)[0])


def untrained_taggers(view: CatalogueView, rules: TextRules | None = None, threshold: float = 0.5) -> TaggerSet:
    """A label-free tagger set: text rules plus zero-shot image groups and colour (lower confidence)."""
    known: set[str] = set()
    for product in view.store.page(0, 200):
        known.update(product.metadata)
    return TaggerSet(version=0, created=_now(), encoder=view.encoder.identity, image_model=None,
                     text_model="none", text_columns=guess_text_columns(known), taggers={}, rules=rules or TextRules.default(),
                     threshold=threshold)
