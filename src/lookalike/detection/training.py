"""Teaching the garment finder: cache the frozen backbone's maps once, train the small head.

Each annotated photo (and its mirror image) goes through the backbone once; the four maps are
kept in memory as float16 (about 0.4 MB a photo), with the photo's classes pooled to the head's
stride-4 grid as soft targets (the share of each class in each 4×4 cell), so a garment edge
teaches "half dress, half background" instead of a coin toss.  The head then trains for a few
epochs with Adam on cross-entropy weighted towards rare groups (shoes and bags are small).

PyTorch is needed here only; the trained head is saved as NumPy arrays and served without it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..common.progress import Progress
from ..images import ImageError, ImageLimits, load_image
from .annotations import AnnotatedPhoto, AnnotationError, class_map, group_lookup
from .canvas import LONG_SIDE, Canvas, mask_to_canvas, to_canvas
from .groups import PERSON, GroupMap
from .head import TAPS, SegmentationHead, scaled_probabilities
from .metrics import BoxScore, SegmentationScore
from .regions import Region, regions_from_mask
from .tail import export_blocks

IGNORE = 255
CELL = 4  # the head's output stride


def holdout_split(photos: Sequence[AnnotatedPhoto], share: float, seed: int = 0) -> tuple[list[AnnotatedPhoto], list[AnnotatedPhoto]]:
    """(train, held out) by a hash of each photo's key: stable when photos are added or reordered."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the held-out share must be from 0 to below 1, got {share}")
    train: list[AnnotatedPhoto] = []
    held: list[AnnotatedPhoto] = []
    for photo in photos:
        digest = hashlib.sha256(f"{seed}:{photo.key}".encode()).digest()
        (held if int.from_bytes(digest[:4], "big") / 2**32 < share else train).append(photo)
    return train, held


@dataclass
class CachedPhoto:
    """One photo's backbone maps (float16, NHWC without the batch axis) and its targets."""

    key: str
    maps: list[np.ndarray]
    soft_target: np.ndarray  # (h/4, w/4, classes + 1) class shares per cell (background first); last = ignored share
    cell_weight: np.ndarray  # (h/4, w/4)
    classes: np.ndarray  # (scaled height, scaled width) class per pixel of the scaled photo


@dataclass
class PhotoFailure:
    key: str
    reason: str


def _soft_targets(classes: np.ndarray, weights: np.ndarray, classes_count: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = classes.shape
    onehot = np.zeros((h, w, classes_count + 1), dtype=np.float32)
    index = np.where(classes == IGNORE, classes_count, classes).astype(np.int64)
    np.put_along_axis(onehot, index[..., None], 1.0, axis=2)
    cells = onehot.reshape(h // CELL, CELL, w // CELL, CELL, -1).mean(axis=(1, 3))
    cell_weight = weights.reshape(h // CELL, CELL, w // CELL, CELL).mean(axis=(1, 3))
    cell_weight = np.where(cells[..., -1] > 0.5, 0.0, cell_weight)  # mostly padding: nothing to learn
    return cells, cell_weight.astype(np.float32)


def cache_photos(photos: Sequence[AnnotatedPhoto], backbone: Any, lookup: np.ndarray | None, classes: tuple[str, ...], mirror: bool = True,
                 limits: ImageLimits = ImageLimits(), progress: Progress | None = None, long_sides: Sequence[int] = (LONG_SIDE,)) -> tuple[list[CachedPhoto], list[PhotoFailure]]:
    """Backbone maps and targets (``classes``: the garment groups, then "person" when the label
    map names skin and hair) for every photo at each of ``long_sides`` (more than one is
    scale augmentation), and its mirror; unreadable photos are reported."""
    cached: list[CachedPhoto] = []
    failures: list[PhotoFailure] = []
    for done, photo in enumerate(photos):
        try:
            image = load_image(photo.image, limits)
            targets, weights = class_map(photo, image.size, lookup, classes)
        except (ImageError, AnnotationError, OSError) as exc:
            failures.append(PhotoFailure(photo.key, str(exc)))
            continue
        for long_side in long_sides:
            _cache_variants(cached, photo.key, to_canvas(image, long_side), targets, weights, backbone, mirror, len(classes) + 1)
        if progress:
            progress("detector features", done + 1, len(photos))
    return cached, failures


def _mirrored(array: np.ndarray, canvas: Canvas) -> np.ndarray:
    """The scaled photo's part of a canvas-sized array mirrored, the padding right/bottom as at inference."""
    out = array.copy()
    out[:canvas.height, :canvas.width] = array[:canvas.height, :canvas.width][:, ::-1]
    return out


def _cache_variants(cached: list[CachedPhoto], key: str, canvas: Canvas, classes: np.ndarray, weights: np.ndarray,
                    backbone: Any, mirror: bool, classes_count: int) -> None:
    variant = (canvas.pixels, mask_to_canvas(classes, canvas, IGNORE), mask_to_canvas(weights, canvas, 0))
    variants = [variant] + ([tuple(_mirrored(a, canvas) for a in variant)] if mirror else [])
    for pixels, target, weight in variants:
        maps = backbone.maps(pixels[None])
        soft, cell_weight = _soft_targets(target, weight, classes_count)
        cached.append(CachedPhoto(key, [m[0].astype(np.float16) for m in maps], soft, cell_weight, target[:canvas.height, :canvas.width]))


@dataclass
class TrainingReport:
    epochs: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def _channel_stats(cached: Sequence[CachedPhoto]) -> list[tuple[np.ndarray, np.ndarray]]:
    stats = []
    for tap in range(len(TAPS)):
        total = sum(c.maps[tap].reshape(-1, c.maps[tap].shape[-1]).astype(np.float64).sum(0) for c in cached)
        squares = sum((c.maps[tap].reshape(-1, c.maps[tap].shape[-1]).astype(np.float64) ** 2).sum(0) for c in cached)
        count = sum(c.maps[tap].shape[0] * c.maps[tap].shape[1] for c in cached)
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 1e-6))
        stats.append((mean.astype(np.float32), std.astype(np.float32)))
    return stats


def _class_weights(cached: Sequence[CachedPhoto], classes: int) -> np.ndarray:
    """Inverse square-root frequency, scaled to mean 1 over the classes present, capped at 10."""
    counts = sum((c.soft_target[..., :classes] * c.cell_weight[..., None]).sum(axis=(0, 1)) for c in cached)
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros(classes)
    weights[present] = counts[present] ** -0.5
    weights[present] /= weights[present].mean()
    return np.minimum(weights, 10.0).astype(np.float32)


def train_head(cached: Sequence[CachedPhoto], epochs: int = 12, width: int = 48, batch_size: int = 16,
               learning_rate: float = 3e-3, seed: int = 0, threads: int = 2, progress: Progress | None = None,
               tail: Any = None, tail_learning_rate: float = 1e-3) -> tuple[SegmentationHead, TrainingReport]:
    """Train a head on cached photos; returns it with its per-channel normalisation folded in.
    ``tail``: the backbone's last blocks (torch) to fine-tune along, at a third of the head's
    rate, from the cached input of those blocks (the fifth cached map)."""
    import torch

    from .torch_head import TorchHead

    if not cached:
        raise ValueError("no photos to train on")
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    classes = cached[0].soft_target.shape[-1] - 1
    stats = _channel_stats(cached)
    channels = [m.shape[-1] for m in cached[0].maps[:len(TAPS)]]
    model = TorchHead(channels, width, classes, stats)
    class_weights = torch.from_numpy(_class_weights(cached, classes))
    rates = [learning_rate] + ([tail_learning_rate] if tail is not None else [])
    groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "lr": learning_rate}]
    if tail is not None:
        tail.train()
        for module in tail.modules():  # keep ImageNet's batch statistics: batches here are small
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        groups.append({"params": list(tail.parameters()), "lr": tail_learning_rate})
    optimiser = torch.optim.AdamW(groups, weight_decay=1e-4)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, photo in enumerate(cached):
        by_shape.setdefault(photo.maps[0].shape, []).append(index)
    steps_per_epoch = sum(-(-len(v) // batch_size) for v in by_shape.values())
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=rates, total_steps=max(1, epochs * steps_per_epoch))
    report = TrainingReport(epochs, 0.0)
    started = time.monotonic()
    step = 0
    for _ in range(epochs):
        batches = []
        for members in by_shape.values():
            shuffled = [int(i) for i in rng.permutation(members)]
            batches += [shuffled[i:i + batch_size] for i in range(0, len(shuffled), batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        epoch_loss = 0.0
        for indices in batches:
            taps = len(TAPS) + (1 if tail is not None else 0)
            maps = [torch.from_numpy(np.stack([cached[i].maps[t] for i in indices]).astype(np.float32)) for t in range(taps)]
            if tail is not None:
                maps[3] = _run_torch_tail(tail, maps.pop())
            target = torch.from_numpy(np.stack([cached[i].soft_target[..., :classes] for i in indices]))
            weight = torch.from_numpy(np.stack([cached[i].cell_weight for i in indices]))
            logits = model(maps)
            log_probs = torch.log_softmax(logits, dim=-1)
            per_cell = -(target * log_probs * class_weights).sum(-1) * weight
            loss = per_cell.sum() / weight.sum().clamp(min=1.0)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
            epoch_loss += loss.item() * len(indices)
            if progress:
                progress("training detector", step, epochs * steps_per_epoch)
        report.losses.append(epoch_loss / len(cached))
    report.seconds = time.monotonic() - started
    arrays = model.export()
    if tail is not None:
        tail.eval()
        arrays.update(export_blocks(tail))
    return SegmentationHead(arrays), report


def _run_torch_tail(tail: Any, maps: Any) -> Any:
    x = maps.permute(0, 3, 1, 2)
    for block in tail:
        x = block(x)
    return x.permute(0, 2, 3, 1)


def untrained_head(channels: Sequence[int], groups: int, width: int = 48, seed: int = 0) -> SegmentationHead:
    """A randomly initialised head (the baseline a training run must beat)."""
    import torch

    from .torch_head import TorchHead

    torch.manual_seed(seed)
    channels = list(channels)[:len(TAPS)]
    stats = [(np.zeros(c, np.float32), np.ones(c, np.float32)) for c in channels]
    return SegmentationHead(TorchHead(channels, width, groups + 1, stats).export())


def evaluate_head(head: SegmentationHead, cached: Sequence[CachedPhoto], classes: tuple[str, ...]) -> SegmentationScore:
    """Pixel IoU per class over cached photos (use un-mirrored photos of the held-out part)."""
    score = SegmentationScore(classes)
    for photo in cached:
        height, width = photo.classes.shape
        canvas_shape = (photo.maps[0].shape[0] * CELL, photo.maps[0].shape[1] * CELL)
        logits = head.logits([np.asarray(m, dtype=np.float32)[None] for m in photo.maps])[0]
        score.add(photo.classes, scaled_probabilities(logits, canvas_shape, (width, height)).argmax(-1), IGNORE)
    return score


def ground_truth_regions(classes: np.ndarray, groups: tuple[str, ...], min_fraction: float = 0.002) -> list[Region]:
    """The regions of a class map (0 background, 1.. ``groups``), as a shopper would box them."""
    labels = {i: g for i, g in enumerate(groups, start=1)}
    return regions_from_mask(classes, labels, GroupMap({g: g for g in groups}), min_fraction)


@dataclass
class PhotoScore:
    """What the finder saw in one photo, and the truth it was scored against (photo pixels)."""

    probabilities: np.ndarray
    scale: float
    found: list[Any]
    truth: list[Region]
    seconds: float  # the finder's own time (not the scoring's)


def score_photo(detector: Any, image: Image.Image, classes: np.ndarray, pixels: SegmentationScore, boxes: BoxScore) -> PhotoScore:
    """Run the finder on one annotated photo and add it to the pixel and box scores."""
    started = time.perf_counter()
    probs, scale, found = detector.analyse(image)
    seconds = time.perf_counter() - started
    truth_classes = np.asarray(Image.fromarray(classes).resize((probs.shape[1], probs.shape[0]), Image.Resampling.NEAREST))
    pixels.add(truth_classes, probs.argmax(-1), IGNORE)
    truth = [Region(r.group, tuple(v / scale for v in r.box), r.pixels)  # type: ignore[arg-type]
             for r in ground_truth_regions(truth_classes, detector.groups)]
    boxes.add(truth, [Region(g.group, g.box, 0, g.confidence) for g in found])
    return PhotoScore(probs, scale, found, truth, seconds)


def evaluate_detector(detector: Any, photos: Sequence[AnnotatedPhoto], lookup: np.ndarray | None,
                      limits: ImageLimits = ImageLimits(), progress: Progress | None = None) -> dict[str, Any]:
    """Held-out figures of a garment finder: pixel IoU per group (at the photo's scaled size),
    box recall and precision per group at IoU >= 0.5, and milliseconds per photo."""
    pixels = SegmentationScore(detector.classes)
    boxes = BoxScore()
    seconds, measured = 0.0, 0
    for done, photo in enumerate(photos):
        try:
            image = load_image(photo.image, limits)
            classes, _ = class_map(photo, image.size, lookup, detector.groups)
        except (ImageError, AnnotationError, OSError):
            continue
        seconds += score_photo(detector, image, classes, pixels, boxes).seconds
        measured += 1
        if progress:
            progress("evaluating detector", done + 1, len(photos))
    return {"photos": measured, "mean_iou": round(pixels.mean_iou(), 4), "pixel_accuracy": round(pixels.pixel_accuracy(), 4),
            "iou": {k: round(v, 4) for k, v in pixels.iou().items()},
            "box_recall": {k: round(v, 4) for k, v in boxes.recall().items()},
            "box_precision": {k: round(v, 4) for k, v in boxes.precision().items()},
            "boxes": dict(boxes.truths), "ms_per_photo": round(1000 * seconds / max(1, measured), 1)}


@dataclass
class DetectorTrainingSpec:
    """What ``lookalike train detector`` was asked for."""

    images_csv: Path
    group_map: GroupMap
    labels_csv: Path | None = None
    boxes_csv: Path | None = None
    holdout: float = 0.15
    epochs: int = 6
    width: int = 48
    long_side: int = 448
    train_sides: tuple[int, ...] = (320, 448)
    backbone: str = "efficientnet-lite0"
    fine_tune_tail: bool = True  # also adapt the backbone's last blocks (about +3 points of mIoU; a 2 MB larger file)
    seed: int = 0
    max_photos: int | None = None
    provenance: str = ""

    def check(self) -> None:
        """Refuse settings no detector can be built from, before any photo is read."""
        from .artefact import BACKBONES

        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}: the garment finder reads {' or '.join(BACKBONES)}")


def fit_detector(spec: DetectorTrainingSpec, target: Path, settings: Any = None, progress: Progress | None = None,
                 log: Any = print) -> tuple[Path, dict[str, Any]]:
    """Read the annotations, cache backbone maps, train the head, measure it on the held-out
    photos and save the detector at ``target``; returns (folder, held-out figures)."""
    from ..models.encoders import PyramidFeatures
    from .annotations import read_annotations, read_label_ids
    from .artefact import DetectorArtefact, save_detector
    from .detector import GarmentDetector

    spec.check()
    photos = read_annotations(spec.images_csv, spec.group_map, spec.labels_csv, spec.boxes_csv)
    if spec.max_photos:
        photos = photos[:spec.max_photos]
    groups = spec.group_map.group_names
    classes = groups + ((PERSON,) if spec.group_map.person else ())
    lookup = group_lookup(read_label_ids(spec.labels_csv), spec.group_map) if spec.labels_csv else None
    train, held = holdout_split(photos, spec.holdout, spec.seed)
    if not train:
        raise AnnotationError("no photo left to train on: lower --holdout or add photos")
    log(f"{len(photos)} annotated photos: {len(train)} to train on, {len(held)} held out; groups: {', '.join(groups)}")
    backbone = PyramidFeatures(spec.backbone, settings)
    cached, failures = cache_photos(train, backbone, lookup, classes, mirror=True, long_sides=spec.train_sides, progress=progress)
    for failure in failures[:20]:
        log(f"skipped {failure.key}: {failure.reason}")
    if len(failures) > 20:
        log(f"... and {len(failures) - 20} more photos skipped")
    tail = backbone.tail_blocks() if spec.fine_tune_tail else None
    head, report = train_head(cached, epochs=spec.epochs, width=spec.width, seed=spec.seed,
                              threads=getattr(settings, "threads", 2) or 2, progress=progress, tail=tail)
    del cached
    log(f"trained a head of {head.parameters(tail=False):,} parameters and {len(head.tail)} backbone blocks "
        f"({head.parameters() - head.parameters(tail=False):,}) in {report.seconds:.0f} s (loss {report.losses[0]:.3f} -> {report.losses[-1]:.3f})")
    info = {"groups": list(groups), "backbone": spec.backbone, "long_side": spec.long_side, "train_sides": list(spec.train_sides),
            "epochs": spec.epochs, "seed": spec.seed, "photos": len(photos), "trained_on": len(train) - len(failures),
            "held_out": len(held), "skipped": len(failures), "train_seconds": round(report.seconds, 1),
            "annotations": str(spec.images_csv), "label_map": spec.group_map.to_dict(), "person": bool(spec.group_map.person),
            "fine_tuned_blocks": len(head.tail),
            "provenance": spec.provenance}
    unsaved = DetectorArtefact(target.name, target, {**info, "weights_sha": "unsaved"}, head)
    detector = GarmentDetector(unsaved, settings)
    figures = evaluate_detector(detector, held, lookup, progress=progress) if held else {}
    final = save_detector(target, {**info, "held_out_figures": figures}, head, [p.key for p in held], _kept_ranges(detector))
    return final, figures


def _kept_ranges(detector: Any) -> dict[str, Path]:
    """The calibration ranges of the INT8 graph the held-out figures were measured with, to keep
    in the finder's folder: quantised from them elsewhere, it finds exactly what those figures say."""
    from .graph import ranges_file_name

    graph = detector.graph  # built by the evaluation (nothing held out: no figures, no ranges to keep)
    if graph is None or not graph.int8_sides or not graph.ranges_path.is_file():
        return {}
    return {ranges_file_name(graph.int8_sides): graph.ranges_path}
