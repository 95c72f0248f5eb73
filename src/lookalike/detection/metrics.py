"""How well a garment finder does: per-group IoU of pixel labels, and box recall per group.

mIoU is the mean over garment groups that occur in the truth (background is reported apart,
so a photo that is mostly street cannot flatter the figure); a box is found when a detected
region of the same group overlaps it at IoU >= 0.5, as in PASCAL VOC.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .groups import PERSON
from .regions import Region, box_iou

BOX_IOU = 0.5


@dataclass
class SegmentationScore:
    """A confusion matrix over (background, group 1, …); ``ignore`` pixels are not counted."""

    groups: tuple[str, ...]
    confusion: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.groups) + 1
        self.confusion = np.zeros((n, n), dtype=np.int64)

    def add(self, truth: np.ndarray, predicted: np.ndarray, ignore: int = 255) -> None:
        n = len(self.groups) + 1
        keep = truth != ignore
        pairs = truth[keep].astype(np.int64) * n + predicted[keep].astype(np.int64)
        self.confusion += np.bincount(pairs, minlength=n * n).reshape(n, n)

    def iou(self) -> dict[str, float]:
        """IoU per group that occurs in the truth, plus ``background``."""
        inter = np.diag(self.confusion).astype(float)
        union = self.confusion.sum(0) + self.confusion.sum(1) - inter
        names = ("background",) + self.groups
        present = self.confusion.sum(1) > 0
        return {names[i]: float(inter[i] / union[i]) for i in range(len(names)) if present[i] and union[i] > 0}

    def mean_iou(self) -> float:
        """Mean IoU over garment groups (not the background, not a person's skin and hair)."""
        per_group = {k: v for k, v in self.iou().items() if k not in ("background", PERSON)}
        return float(np.mean(list(per_group.values()))) if per_group else 0.0

    def pixel_accuracy(self) -> float:
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else 0.0


@dataclass
class BoxScore:
    """Box recall and precision per group at IoU >= 0.5 (one detection matches one truth box)."""

    found: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    truths: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    detections: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    correct: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, truth: list[Region], detected: list[Region]) -> list[Region | None]:
        """Counts one photo; returns, per truth region, the detected region matched to it (or None)."""
        matched: list[Region | None] = []
        used: set[int] = set()
        for region in truth:
            self.truths[region.group] += 1
            best, best_iou = None, BOX_IOU
            for index, candidate in enumerate(detected):
                if index in used or candidate.group != region.group:
                    continue
                overlap = box_iou(region.box, candidate.box)
                if overlap >= best_iou:
                    best, best_iou = index, overlap
            if best is not None:
                used.add(best)
                self.found[region.group] += 1
                self.correct[region.group] += 1
            matched.append(None if best is None else detected[best])
        for candidate in detected:
            self.detections[candidate.group] += 1
        return matched

    def recall(self) -> dict[str, float]:
        return {g: self.found[g] / n for g, n in sorted(self.truths.items()) if n}

    def precision(self) -> dict[str, float]:
        return {g: self.correct[g] / n for g, n in sorted(self.detections.items()) if n}
