"""Street crops as cross-domain positives (the consumer-to-shop setting of Street2Shop and DeepFashion).

Catalogue photos with street-like augmentation do not teach what a garment on a person in the
street looks like; a few thousand garment boxes cut from street photos do.  A shop brings

    boxes.csv     image_file,label,x1,y1,x2,y2[,product_id]   boxes in the photo's pixels
    labels.yaml   {column: article_type, labels: {street label: [catalogue value, ...]}}

Each crop is a positive of *every* catalogue class its label maps to ("shoes" → Casual Shoes,
Sports Shoes, Heels…), learned with a multi-positive proxy softmax; a crop that names the
``product_id`` it shows is also a view of that product, so street↔shop pairs of one product pull
together.  Photos, not boxes, are split for validation, so a held-out figure never sees a
sibling crop of the same photo.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..common.progress import Log, Progress
from .features import ProductImage, TrainingDataError, ViewFeatureCache

MAX_ROWS = 200_000
MAX_LABELS = 10_000


@dataclass
class StreetOptions:
    """Where the street boxes are and how their labels map onto the catalogue."""

    boxes: str                                   # boxes CSV; image paths are relative to its folder and must stay inside it
    labels: str | dict[str, Any] | None = None   # a YAML file or a mapping; None: a street label equals a catalogue value
    weight: float = 1.0                          # weight of the cross-domain loss next to the class loss
    holdout: float = 0.15                        # share of street photos kept out for validation
    exclude: list[str] = field(default_factory=list)  # image_file values never trained on (e.g. an evaluation's photos)
    per_batch: int = 64                          # street crops in each batch


@dataclass
class StreetCrop:
    image: Path
    key: str            # image_file as written in the CSV
    box: tuple[float, float, float, float]
    label: str
    product_id: str | None


@dataclass
class StreetSet:
    """Street crops with usable labels, their features and class sets, split by photo."""

    crops: list[StreetCrop]
    features: np.ndarray        # (n, views, dim) float16
    classes: np.ndarray         # (n, n_classes) bool: the catalogue classes each crop is a positive of
    products: np.ndarray        # (n,) training-set row of the product shown, -1 if not named
    holdout: np.ndarray         # (n,) bool, whole photos
    unmapped: dict[str, int]    # street labels without a catalogue counterpart, with their counts
    skipped: list[tuple[str, str]]

    def summary(self) -> dict[str, Any]:
        return {"crops": len(self.crops), "train_crops": int((~self.holdout).sum()), "holdout_crops": int(self.holdout.sum()),
                "photos": len({c.key for c in self.crops}), "paired_with_products": int((self.products >= 0).sum()),
                "unmapped_labels": dict(sorted(self.unmapped.items())), "skipped_crops": len(self.skipped)}


def read_label_map(labels: str | dict[str, Any] | None) -> tuple[str | None, dict[str, set[str]] | None]:
    """``(column, {street label: {catalogue values}})`` from a YAML file or mapping (lower-cased)."""
    if labels is None:
        return None, None
    if isinstance(labels, (str, Path)):
        try:
            loaded = yaml.safe_load(Path(labels).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise TrainingDataError(f"street label map {labels}: cannot be read ({exc})") from exc
    else:
        loaded = labels
    if not isinstance(loaded, dict):
        raise TrainingDataError("street label map: expected a mapping {street label: [catalogue values]}")
    column = loaded.get("column") if isinstance(loaded.get("labels"), dict) else None
    mapping = loaded["labels"] if isinstance(loaded.get("labels"), dict) else loaded
    if len(mapping) > MAX_LABELS:
        raise TrainingDataError(f"street label map: more than {MAX_LABELS} labels")
    out: dict[str, set[str]] = {}
    for key, values in mapping.items():
        items = values if isinstance(values, list) else [values]
        if not all(isinstance(v, (str, int, float)) for v in items):
            raise TrainingDataError(f"street label map: {key!r} must map to a value or a list of values")
        out[str(key).strip().lower()] = {str(v).strip().lower() for v in items}
    return (str(column) if column else None), out


def read_street_boxes(path: Path) -> list[StreetCrop]:
    """Boxes from the CSV, with paths confined to its folder; a malformed row is an error naming its line."""
    root = path.parent.resolve()
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("image_file", "label", "x1", "y1", "x2", "y2") if c not in (reader.fieldnames or [])]
            if missing:
                raise TrainingDataError(f"{path}: missing column(s) {', '.join(missing)}")
            crops = []
            for number, row in enumerate(reader, start=2):
                if number - 1 > MAX_ROWS:
                    raise TrainingDataError(f"{path}: more than {MAX_ROWS} rows")
                crops.append(_crop_of(row, root, f"{path} line {number}"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TrainingDataError(f"{path}: cannot be read ({exc})") from exc
    return crops


def _crop_of(row: dict[str, str], root: Path, where: str) -> StreetCrop:
    key = (row.get("image_file") or "").strip()
    if not key or "\x00" in key or len(key) > 1000:
        raise TrainingDataError(f"{where}: an empty or unreadable image_file")
    image = (root / key).resolve()
    if not image.is_relative_to(root):
        raise TrainingDataError(f"{where}: {key!r} is outside {root}")
    try:
        box = tuple(float(row[c]) for c in ("x1", "y1", "x2", "y2"))
    except (TypeError, ValueError) as exc:
        raise TrainingDataError(f"{where}: coordinates must be numbers") from exc
    if not all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise TrainingDataError(f"{where}: box {box} is empty or inverted")
    product = (row.get("product_id") or "").strip() or None
    return StreetCrop(image, key, box, (row.get("label") or "").strip().lower(), product)  # type: ignore[arg-type]


def crop_key(crop: StreetCrop) -> str:
    """The feature-cache id of a crop: its photo and box (a changed box is a new crop)."""
    return "street:" + crop.key + "#" + ",".join(f"{v:.1f}" for v in crop.box)


def crop_item(crop: StreetCrop) -> ProductImage:
    """A crop as the feature cache reads it; the image hash follows the photo's size and time, so an edited photo is recomputed."""
    try:
        stat = crop.image.stat()
        version = hashlib.blake2b(f"{stat.st_size}/{stat.st_mtime_ns}".encode(), digest_size=8).hexdigest()
    except OSError:
        version = None
    return ProductImage(crop_key(crop), version, str(crop.image), None, crop.box)


def split_photos(keys: list[str], fraction: float, seed: int) -> np.ndarray:
    """A seeded share of whole photos held out (by the photo's name, so the split survives re-ordering)."""
    if fraction <= 0:
        return np.zeros(len(keys), dtype=bool)
    def draw(key: str) -> float:
        digest = hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64
    return np.array([draw(k) < fraction for k in keys], dtype=bool)


def class_sets(crops: list[StreetCrop], label_map: dict[str, set[str]] | None, classes: list[str],
               class_values: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    """Which classes each crop is a positive of.  ``class_values`` is each class's value of the
    mapped column (lower case); a crop whose label maps to no class is left out (counted)."""
    by_value: dict[str, list[int]] = {}
    for index, value in enumerate(class_values):
        by_value.setdefault(value, []).append(index)
    sets = np.zeros((len(crops), len(classes)), dtype=bool)
    unmapped: dict[str, int] = {}
    for i, crop in enumerate(crops):
        wanted = label_map.get(crop.label, set()) if label_map is not None else {crop.label}
        for value in wanted:
            sets[i, by_value.get(value, [])] = True
        if not sets[i].any():
            unmapped[crop.label] = unmapped.get(crop.label, 0) + 1
    return sets, unmapped


def load_street_set(options: StreetOptions, ids: list[str], labels: np.ndarray, classes: list[str], metadata: list[dict[str, Any]],
                    positives: list[str], cache: ViewFeatureCache, seed: int, progress: Progress | None, log: Log) -> StreetSet:
    """Read, map, split and featurise the street crops for a training set of catalogue products."""
    column, label_map = read_label_map(options.labels)
    column = column or positives[0]
    if column not in positives:
        raise TrainingDataError(f"street label map names column {column!r}, which is not one of the positives ({', '.join(positives)})")
    crops = read_street_boxes(Path(options.boxes))
    excluded = set(options.exclude)
    crops = [c for c in crops if c.key not in excluded]
    class_values = [""] * len(classes)
    for label, meta, product_id in zip(labels.tolist(), metadata, ids):
        class_values[label] = product_id.lower() if column == "id" else str(meta.get(column) or "").strip().lower()
    sets, unmapped = class_sets(crops, label_map, classes, class_values)
    row_of = {product_id: i for i, product_id in enumerate(ids)}
    products = np.array([row_of.get(c.product_id, -1) if c.product_id else -1 for c in crops], dtype=np.int64)
    sets[products >= 0] = False
    sets[products >= 0, labels[products[products >= 0]]] = True  # a named product decides the class
    usable = np.asarray(sets.any(axis=1), dtype=bool)
    if unmapped:
        log(f"street labels without a catalogue class (left out): {', '.join(f'{k} ({v})' for k, v in sorted(unmapped.items()))}")
    crops = [c for c, keep in zip(crops, list(usable)) if keep]
    sets, products = sets[usable], products[usable]
    if len(crops) < 8:
        raise TrainingDataError(f"{options.boxes}: only {len(crops)} street boxes map onto the catalogue's {column} values (need at least 8)")
    features, skipped = cache.compute([crop_item(c) for c in crops], progress)
    for key, reason in skipped[:20]:
        log(f"skipped street crop {key}: {reason}")
    kept = np.array([crop_key(c) in features for c in crops], dtype=bool)
    crops = [c for c, keep in zip(crops, kept.tolist()) if keep]
    holdout = split_photos([c.key for c in crops], options.holdout, seed)
    stacked = np.stack([features[crop_key(c)] for c in crops]) if crops else np.zeros((0, cache.views, cache.dim), np.float16)
    return StreetSet(crops, stacked, sets[kept], products[kept], holdout, unmapped, skipped)
