"""The "shop the look" task: full street photos as queries, garments found automatically.

For each street photo the detector has never trained on (its ``holdout.json``):

* pixel IoU per garment group and box recall/precision per group at IoU >= 0.5 (from the masks);
* for every ground-truth garment box whose label maps to catalogue values: does a detected
  garment of the same group overlap it at IoU >= 0.5, and P@10 of that garment's results
  (relevance: the label's catalogue values, as in the street-to-shop task).  "P@10, detected"
  counts a missed garment as 0 (what a shopper sees); "P@10, found garments" averages over the
  garments the detector found;
* the same boxes drawn by hand (cropped from the ground truth), searched plainly (the old
  figure) and restricted to the group the detector sees inside the box.

Results are restricted to the catalogue values of the garment's group when the task (or the
store's setting ``garment_groups``) maps groups to catalogue values.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw

from ..common.metrics import ranking_metrics
from ..detection import GroupMap, load_detector
from ..detection.annotations import class_map, group_lookup, read_annotations, read_label_ids
from ..detection.artefact import DEFAULT_DIR
from ..detection.detector import GarmentDetector
from ..detection.metrics import BoxScore, SegmentationScore
from ..detection.regions import Region, box_iou
from ..detection.training import score_photo
from ..images import ImageError, load_image
from ..search.look import GroupCategories, crop_box
from .suite import Suite, SuiteError, TaskSpec
from .tasks import ConfigIndex, DatasetEmbeddings, TaskResult, _embed_images, street_label_map, street_positives, summarise

GALLERY = 6


def _detector(task: TaskSpec, data: DatasetEmbeddings, suite: Suite) -> GarmentDetector:
    choice = task.options.get("detector")
    if choice:
        # a path that does not exist is an error (load_detector names it), never the default in disguise
        path = DEFAULT_DIR if choice == "default" else (Path(choice) if Path(choice).is_absolute() else suite.base / choice)
        return GarmentDetector(load_detector(path), data.engine.settings)
    finder = data.engine.looks.finder()
    if not isinstance(finder, GarmentDetector):
        raise SuiteError(f"task {task.name!r}: the store has no garment finder (setting detector = none)")
    return finder


def _categories(task: TaskSpec, data: DatasetEmbeddings) -> GroupCategories | None:
    if task.options.get("garment_groups"):
        return GroupCategories.from_dict(task.options["garment_groups"], f"task {task.name!r}: garment_groups")
    return data.engine.looks.categories()


def _as_stored(vectors: np.ndarray) -> np.ndarray:
    return vectors


def _street_model(task: TaskSpec, data: DatasetEmbeddings, suite: Suite, column: str,
                  held: set[str]) -> tuple[Callable[[np.ndarray], np.ndarray], list[str]]:
    """With ``train_embedding`` (options of `lookalike train embedding`), a model is trained inside
    the run on the catalogue's ``column`` with the street boxes of the photos the detector trained
    on as cross-domain positives (never the photos measured here), and every vector goes through
    its head; otherwise the store's vectors are used as they are."""
    from ..training import EmbeddingOptions

    spec = task.options.get("train_embedding")
    if not spec:
        return _as_stored, []
    if not isinstance(spec, dict):
        spec = {}
    if not held:
        raise SuiteError(f"task {task.name!r}: train_embedding needs a detector with a held-out photo list, so training never sees the photos measured")
    street = street_positives(task, suite, held, float(spec.get("street_weight", 1.0)))
    options = EmbeddingOptions(positives=[column], seed=suite.seed, street=street, steps=int(spec.get("steps", 1500)),
                               holdout=float(spec.get("holdout", 0.2)), loss=str(spec.get("loss", "proxy-anchor")))
    model = data.engine.train_embedding(options, save=False)
    street_info = model.info["training_data"].get("street", {})
    return model.head, [f"a model trained in the run on the catalogue's {column} with {street_info.get('train_crops', 0)} street crops from "
                        f"photos the detector trained on (none of the {len(held)} measured here); validation {model.info['validation']}"]


def _catalogue_garments(data: DatasetEmbeddings, groups: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """group -> (data set positions, garment vectors) of the catalogue's outfit shots, when
    ``lookalike garments`` has been run on the data set's store (see :mod:`lookalike.ingest.garments`)."""
    store, model = data.engine.store, data.engine.encoder.identity
    position = {item: i for i, item in enumerate(data.ids)}
    found = {}
    for group in groups:
        rowids, matrix = store.region_matrix(model, group)
        if not len(rowids):
            continue
        products = store.get_by_rowids(rowids.tolist())
        pairs = [(position[products[r].id], i) for i, r in enumerate(rowids.tolist()) if r in products and products[r].id in position]
        if pairs:
            found[group] = (np.array([p for p, _ in pairs]), matrix[[i for _, i in pairs]])
    return found


def _boxes(path: Path, label_map: dict[str, set[str]]) -> dict[str, list[tuple[str, tuple[float, float, float, float]]]]:
    found: dict[str, list[tuple[str, tuple[float, float, float, float]]]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            label = row.get("label", "").strip().lower()
            if label in label_map:
                found[row["image_file"]].append((label, tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2"))))  # type: ignore[arg-type]
    return found


def _dominant_group(detector: GarmentDetector, probs: np.ndarray, scale: float, box: tuple[float, float, float, float]) -> str | None:
    """The group with the most pixels inside a hand-drawn box (None: background only)."""
    x1, y1, x2, y2 = (int(round(v * scale)) for v in box)
    window = probs[max(0, y1):max(y1 + 1, y2), max(0, x1):max(x1 + 1, x2)].argmax(-1)
    counts = np.bincount(window.ravel(), minlength=len(detector.classes) + 1)[1:len(detector.groups) + 1]
    return detector.groups[int(counts.argmax())] if counts.sum() else None


def _thumbnail(image: Image.Image, truth: list[Region], found: list[Any]) -> str:
    picture = image.convert("RGB").copy()
    draw = ImageDraw.Draw(picture)
    for region in truth:
        draw.rectangle(region.box, outline=(255, 255, 255), width=1)
    for garment in found:
        draw.rectangle(garment.box, outline=(255, 200, 0), width=2)
        draw.text((garment.box[0] + 2, garment.box[1] + 1), garment.group, fill=(255, 200, 0))
    picture.thumbnail((160, 240))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=80)
    import base64
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def run_shop_the_look(task: TaskSpec, data: DatasetEmbeddings, index: ConfigIndex, suite: Suite) -> TaskResult:
    detector = _detector(task, data, suite)
    categories = _categories(task, data)
    column = task.options["column"]
    label_map = street_label_map(task)
    group_map = GroupMap.from_dict(detector.artefact.info.get("label_map") or {}, "the detector's label map")
    images_csv = task.path("annotations", suite.base)
    labels_csv = task.path("labels", suite.base)
    boxes = _boxes(task.path("boxes", suite.base), label_map)
    photos = read_annotations(images_csv, group_map, labels_csv)
    held = set(detector.artefact.holdout)
    trained_on = [p for p in photos if p.key not in held] if held else []
    photos = [p for p in photos if p.key in held] if held else photos
    limit = task.options.get("sample")
    if limit and len(photos) > int(limit):
        keep = np.sort(np.random.default_rng(suite.seed).choice(len(photos), int(limit), replace=False))
        photos = [photos[i] for i in keep]
    lookup = group_lookup(read_label_ids(labels_csv), group_map)
    values = np.array([str(v).strip().lower() if v is not None else "" for v in data.column(column)])
    allowed = {g: np.isin(values, [v.lower() for v in categories.values.get(g, ())]) for g in detector.groups} if categories else {}

    project, model_notes = _street_model(task, data, suite, column, held)
    vectors = project(data.vectors)
    garments = {g: (p, project(m)) for g, (p, m) in _catalogue_garments(data, detector.groups).items()}

    def embed(images: list[Image.Image]) -> np.ndarray:
        return project(_embed_images(data.engine, images))

    def ranked(vector: np.ndarray, group: str | None) -> np.ndarray:
        scores = index.scores(data.vectors, vector).astype(float) if project is _as_stored else (vectors @ vector).astype(float)
        if group is not None and group in garments:  # a product also matches by its own garment of the group
            positions, matrix = garments[group]
            scores[positions] = np.maximum(scores[positions], matrix @ vector)
        if group is not None and group in allowed and allowed[group].any():
            scores = np.where(allowed[group], scores, -np.inf)
        return scores

    pixels, box_score = SegmentationScore(detector.classes), BoxScore()
    per_query: dict[str, list[float]] = defaultdict(list)
    per_group_p10: dict[str, list[float]] = defaultdict(list)
    gallery: list[dict[str, Any]] = []
    skipped = 0
    for photo in photos:
        try:
            image = load_image(photo.image)
            classes, _ = class_map(photo, image.size, lookup, detector.groups)
        except (ImageError, OSError, ValueError):
            skipped += 1
            continue
        seen_photo = score_photo(detector, image, classes, pixels, box_score)
        probs, scale, found = seen_photo.probabilities, seen_photo.scale, seen_photo.found
        entry: dict[str, Any] = {"photo": photo.key, "garments": []}
        for label, box in boxes.get(photo.key, []):
            group = group_map.group_of(label)
            if group is None:
                continue
            relevant = np.isin(values, list(label_map[label]))
            hand = crop_box(image, box)
            if hand.width < 8 or hand.height < 8:
                continue
            hand_vector = embed([hand])[0]  # once, for both hand-box figures
            per_query["P@10, hand box, whole catalogue"].append(ranking_metrics(ranked(hand_vector, None), relevant, (10,))["p@10"])
            seen = _dominant_group(detector, probs, scale, box)
            per_query["P@10, hand box, detected group"].append(ranking_metrics(ranked(hand_vector, seen), relevant, (10,))["p@10"])
            match = max(((box_iou(box, g.box), g) for g in found if g.group == group), default=(0.0, None), key=lambda t: t[0])
            if match[1] is None or match[0] < 0.5:
                per_query["P@10, detected"].append(0.0)
                per_query["garment found"].append(0.0)
                per_group_p10[group].append(0.0)
                continue
            scores = ranked(embed([crop_box(image, match[1].box)])[0], group)
            p10 = ranking_metrics(scores, relevant, (10,))["p@10"]
            per_query["P@10, detected"].append(p10)
            per_query["P@10, found garments"].append(p10)
            per_query["garment found"].append(1.0)
            per_group_p10[group].append(p10)
            if len(gallery) < GALLERY:
                top = np.argsort(-scores)[:5]
                entry["garments"].append({"label": label, "group": group, "p10": p10, "results": [data.ids[i] for i in top],
                                          "result_pos": [int(i) for i in top]})
        if len(gallery) < GALLERY and entry["garments"]:
            entry["thumbnail"] = _thumbnail(image, seen_photo.truth, found)
            gallery.append(entry)
    notes = [f"{len(photos)} street photos the detector {detector.identity} never trained on"
             + (f" ({len(trained_on)} photos it trained on are left out)" if trained_on else " (it has no held-out list: all photos used)")]
    notes += model_notes
    if skipped:
        notes.append(f"{skipped} photos could not be read and were skipped")
    if categories is None:
        notes.append("no garment_groups map: results are not restricted to the garment's catalogue values")
    if garments:
        notes.append("catalogue outfit shots match by their own garments too (" + ", ".join(f"{g}: {len(p)}" for g, (p, _) in garments.items()) + ")")
    metrics = summarise(dict(per_query), suite)
    point = {"mIoU": pixels.mean_iou(), "pixel accuracy": pixels.pixel_accuracy()}
    point.update({f"IoU {g}": v for g, v in pixels.iou().items() if g not in ("background", "person")})
    point.update({f"box recall {g}": v for g, v in box_score.recall().items()})
    point.update({f"box precision {g}": v for g, v in box_score.precision().items()})
    for name, value in point.items():
        metrics[name] = {"mean": float(value), "ci_low": float("nan"), "ci_high": float("nan"), "n": float(len(photos))}
    return TaskResult(metrics, {}, notes=notes, plots={"per_group_p10": {g: float(np.mean(v)) for g, v in sorted(per_group_p10.items())},
                                                      "look_gallery": gallery})
