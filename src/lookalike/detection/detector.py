"""Finding garments in a photo: backbone maps -> head -> per-pixel groups -> regions.

A region is one garment group's pixels (blobs smaller than ``min_fraction`` of the photo
dropped), its box, its mean probability (the confidence) and an outline picture for display.
Regions below ``min_confidence`` are not returned: a shopper should not be offered a "bag" that
is a shadow.  Both thresholds are fixed defaults chosen on the training photos, not tuned on
the held-out ones the README reports.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..config import Settings
from .artefact import DetectorArtefact
from .canvas import Canvas, to_canvas
from .graph import HEAD_STRIDE, CoarseFinderGraph, FinderGraph, onnx_available, ranges_file_name
from .head import scaled_probabilities, softmax
from .regions import kept_blobs, mask_box

MIN_FRACTION = 0.004  # a garment covers at least this share of the photo
MIN_CONFIDENCE = 0.55
# Its box goes around its blobs of at least a quarter of that share (a shoe alone is often
# under the garment's floor) that are also at least a quarter of its largest blob (a stray
# blob stretches the box).  Chosen among six rules on two development folds of the finder's
# training photos, against the same truth boxes: shoes found +3.5 and +4.1 points, bags +4.1
# and -2.3, the other groups within one box.
BLOB_SHARE = 0.25
# A person is told at 256 px about as well as at 448 (skin and hair on >= 2 % of the photo:
# 96 % of the training street photos, 8 % of phone photos of garments) in about 24 ms, not 92.
GLANCE_SIDE = 256
PALETTE = {"top": (230, 25, 75), "outerwear": (245, 130, 48), "dress": (145, 30, 180), "bottom": (0, 130, 200),
           "legwear": (70, 240, 240), "shoes": (60, 180, 75), "bag": (240, 50, 230), "hat": (255, 225, 25),
           "eyewear": (128, 128, 0), "accessory": (170, 110, 40)}


@dataclass
class FoundGarment:
    """One garment found in a photo (box in the photo's own pixels, x2/y2 exclusive)."""

    group: str
    box: tuple[float, float, float, float]
    confidence: float
    area: float  # share of the photo's pixels
    mask: np.ndarray | None = None  # bool, over the photo scaled to the detector's input
    person_area: float = 1.0  # share of the photo that is skin or hair (1.0: a finder that did not learn people)

    def outline_png(self) -> str:
        """The garment's pixels as a translucent overlay with a solid outline, a PNG data URL
        the size of the scaled photo (stretch it over the photo to show the mask)."""
        if self.mask is None:
            return ""
        colour = PALETTE.get(self.group, (255, 255, 255))
        from scipy import ndimage  # imported on first use: most commands never draw an outline

        edge = self.mask & ~ndimage.binary_erosion(self.mask, iterations=2)
        rgba = np.zeros(self.mask.shape + (4,), dtype=np.uint8)
        rgba[..., :3] = colour
        rgba[..., 3] = np.where(edge, 230, np.where(self.mask, 70, 0))
        buffer = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", optimize=True)
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    def to_dict(self, outline: bool = False) -> dict[str, Any]:
        found: dict[str, Any] = {"group": self.group, "box": [round(v, 1) for v in self.box],
                                 "confidence": round(self.confidence, 4), "area": round(self.area, 4)}
        if outline:
            found["outline"] = self.outline_png()
        return found


class GarmentDetector:
    """A trained garment finder: backbone and head as one ONNX graph (INT8 backbone by default), the
    regions from its probabilities with NumPy."""

    def __init__(self, artefact: DetectorArtefact, settings: Settings | None = None,
                 min_fraction: float = MIN_FRACTION, min_confidence: float = MIN_CONFIDENCE):
        from ..models.encoders import PyramidFeatures

        self.artefact = artefact
        self.backbone = PyramidFeatures(artefact.info["backbone"], settings)  # the maps, for training and evaluation
        self.long_side = int(artefact.info["long_side"])
        # Served photos run the backbone and head as one ONNX graph when it can be built (see .graph).
        int8 = (GLANCE_SIDE, self.long_side) if (settings or Settings()).detector_int8 else ()
        ranges = artefact.path / ranges_file_name(int8) if int8 else None  # the ranges its figures were measured with, if it keeps them
        self.graph = FinderGraph(artefact.info["backbone"], artefact.head, settings, int8, ranges=ranges) if onnx_available() else None
        self.glance_graph = (CoarseFinderGraph(artefact.info["backbone"], artefact.head, settings, int8, beside=self.graph, ranges=ranges)
                             if self.graph else None)
        self.min_fraction, self.min_confidence = min_fraction, min_confidence

    @property
    def identity(self) -> str:
        return self.artefact.identity

    @property
    def groups(self) -> tuple[str, ...]:
        return self.artefact.groups

    @property
    def classes(self) -> tuple[str, ...]:
        return self.artefact.classes

    def probabilities(self, image: Image.Image, long_side: int | None = None) -> tuple[np.ndarray, float]:
        """(scaled height, scaled width, 1 + groups) class probabilities, and the photo -> scaled factor."""
        canvas = to_canvas(image, long_side or self.long_side)
        if self.graph is not None:
            return self.graph.probabilities(canvas.pixels[None])[0, :canvas.height, :canvas.width], canvas.scale
        return scaled_probabilities(self._numpy_logits(canvas), canvas.pixels.shape[:2], (canvas.width, canvas.height)), canvas.scale

    def _numpy_logits(self, canvas: Canvas) -> np.ndarray:
        """The head's stride-4 logits of one canvas, from the backbone's maps in NumPy (no onnx to build the graph)."""
        return self.artefact.head.logits(self.backbone.maps(canvas.pixels[None]))[0]

    def detect(self, image: Image.Image) -> list[FoundGarment]:
        """The garments in ``image``, most prominent first."""
        return self.analyse(image)[2]

    def glance(self, image: Image.Image) -> list[FoundGarment]:
        """A quick, coarser look (longer side ``GLANCE_SIDE``, regions at the head's own stride-4
        resolution, see :class:`CoarseFinderGraph`): enough to tell a photo of a person from a
        packshot, and to box its main garment, before every plain search."""
        canvas = to_canvas(image, GLANCE_SIDE)
        if self.glance_graph is not None:
            probs = self.glance_graph.probabilities(canvas.pixels[None])[0]
        else:
            probs = softmax(self._numpy_logits(canvas))
        rows, cols = -(-canvas.height // HEAD_STRIDE), -(-canvas.width // HEAD_STRIDE)  # the cells the photo covers
        return self.garments(probs[:rows, :cols], canvas.scale / HEAD_STRIDE, image.size)

    def analyse(self, image: Image.Image) -> tuple[np.ndarray, float, list[FoundGarment]]:
        """(class probabilities, photo -> scaled factor, garments): what evaluation needs at once."""
        probs, scale = self.probabilities(image)
        return probs, scale, self.garments(probs, scale, image.size)

    def garments(self, probs: np.ndarray, scale: float, size: tuple[int, int]) -> list[FoundGarment]:
        """Garments from class probabilities over the scaled photo (``size``: the photo's own)."""
        labels = probs.argmax(-1)
        person_area = float((labels == len(self.groups) + 1).mean()) if "person" in self.classes else 1.0
        min_pixels = max(1, int(self.min_fraction * labels.size))
        found = []
        for index, group in enumerate(self.groups, start=1):
            member = labels == index
            if member.sum() < min_pixels:
                continue
            keep = kept_blobs(member, int(min_pixels * BLOB_SHARE), share_of_largest=BLOB_SHARE)
            if keep.sum() < min_pixels:
                continue
            confidence = float(probs[..., index][keep].mean())
            if confidence < self.min_confidence:
                continue
            x1, y1, x2, y2 = mask_box(keep, scale)
            box = (x1, y1, min(x2, float(size[0])), min(y2, float(size[1])))
            found.append(FoundGarment(group, box, confidence, float(keep.mean()), keep, person_area))
        return sorted(found, key=lambda g: -g.area * g.confidence)
