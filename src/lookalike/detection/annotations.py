"""What a shop brings to teach the garment finder: photos with pixel masks, boxes, or both.

Format (all paths relative to the CSV's folder, and they must stay inside it)::

    images.csv    image_file[,mask_file]          one row per annotated photo
    labels.csv    label_id,label                  what each mask value means (masks only)
    boxes.csv     image_file,label,x1,y1,x2,y2    boxes in the photo's pixels (optional)
    groups.yaml   {group: [label, ...]}           the shop's labels in garment groups

A photo with a mask learns from its pixels; a photo with boxes only learns "this group is
somewhere in this box, and nothing is outside every box" (boxes filled smallest on top, the
box interiors weighted less because they also hold background).  Labels the group map does
not name (skin, hair, background, underwear) are background.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .groups import GroupMap

MAX_ROWS = 200_000
MAX_MASK_PIXELS = 4096 * 4096


class AnnotationError(ValueError):
    """Annotations that cannot be read, name files outside their folder, or do not fit together."""


@dataclass
class AnnotatedPhoto:
    """One photo to learn from: its path, and a mask path and/or boxes (group, x1, y1, x2, y2)."""

    image: Path
    key: str  # the image_file as written in the CSV: stable across machines, used for hold-out splits
    mask: Path | None = None
    boxes: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)


def _inside(root: Path, relative: str, what: str) -> Path:
    if not relative or "\x00" in relative or len(relative) > 1000:
        raise AnnotationError(f"{what}: an empty or unreadable path")
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise AnnotationError(f"{what}: {relative!r} is outside {root}")
    return path


def _rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise AnnotationError(f"{path}: missing column(s) {', '.join(missing)}")
            rows = []
            for row in reader:
                rows.append(row)
                if len(rows) > MAX_ROWS:
                    raise AnnotationError(f"{path}: more than {MAX_ROWS} rows")
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise AnnotationError(f"{path}: cannot be read ({exc})") from exc


def read_label_ids(path: Path) -> dict[int, str]:
    """``label_id -> label`` from a labels CSV."""
    labels = {}
    for row in _rows(path, ("label_id", "label")):
        try:
            labels[int(row["label_id"])] = row["label"].strip()
        except ValueError as exc:
            raise AnnotationError(f"{path}: label_id {row['label_id']!r} is not a whole number") from exc
    return labels


def read_annotations(images_csv: Path, group_map: GroupMap, labels_csv: Path | None = None,
                     boxes_csv: Path | None = None) -> list[AnnotatedPhoto]:
    """Photos with a mask or at least one box in a known group (others cannot teach anything)."""
    root = images_csv.parent
    rows = _rows(images_csv, ("image_file",))
    has_masks = any((row.get("mask_file") or "").strip() for row in rows)
    if has_masks and labels_csv is None:
        raise AnnotationError(f"{images_csv} names mask files: give the labels CSV that says what each mask value means")
    boxes: dict[str, list[tuple[str, tuple[float, float, float, float]]]] = defaultdict(list)
    if boxes_csv is not None:
        for number, row in enumerate(_rows(boxes_csv, ("image_file", "label", "x1", "y1", "x2", "y2")), start=2):
            group = group_map.group_of(row["label"])
            if group is None:
                continue
            try:
                box = tuple(float(row[c]) for c in ("x1", "y1", "x2", "y2"))
            except ValueError as exc:
                raise AnnotationError(f"{boxes_csv} line {number}: coordinates must be numbers") from exc
            if not all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
                raise AnnotationError(f"{boxes_csv} line {number}: box {box} is empty or inverted")
            boxes[row["image_file"].strip()].append((group, box))  # type: ignore[arg-type]
    photos = []
    for number, row in enumerate(rows, start=2):
        key = row["image_file"].strip()
        mask_name = (row.get("mask_file") or "").strip()
        mask = _inside(root, mask_name, f"{images_csv} line {number}") if mask_name else None
        if mask is None and not boxes.get(key):
            continue
        photos.append(AnnotatedPhoto(_inside(root, key, f"{images_csv} line {number}"), key, mask, boxes.get(key, [])))
    if not photos:
        raise AnnotationError(f"{images_csv}: no photo has a mask or a box in a garment group of the label map")
    return photos


def group_lookup(labels: dict[int, str], group_map: GroupMap) -> np.ndarray:
    """A 256-entry table from mask value to class index (0 background, 1.. the map's groups, then
    "person" for skin and hair when the map names them)."""
    table = np.zeros(256, dtype=np.uint8)
    classes = group_map.group_names
    for label_id, label in labels.items():
        group = group_map.group_of(label)
        if not 0 <= label_id < 256:
            continue
        if group is not None:
            table[label_id] = classes.index(group) + 1
        elif group_map.is_person(label):
            table[label_id] = len(classes) + 1  # the class after the garments
    return table


def class_map(photo: AnnotatedPhoto, size: tuple[int, int], lookup: np.ndarray | None, groups: tuple[str, ...]
              ) -> tuple[np.ndarray, np.ndarray]:
    """(classes, weights) for one photo at its own ``size`` (width, height): class index per pixel
    (0 background) and how much each pixel counts (box interiors less than mask pixels)."""
    width, height = size
    if photo.mask is not None and lookup is not None:
        try:
            with Image.open(photo.mask) as image:
                if image.width * image.height > MAX_MASK_PIXELS:
                    raise AnnotationError(f"{photo.mask}: mask larger than {MAX_MASK_PIXELS} pixels")
                values = np.asarray(image.convert("L") if image.mode not in ("L", "P") else image, dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise AnnotationError(f"{photo.mask}: cannot be read as a label map ({exc})") from exc
        if values.shape != (height, width):
            values = np.asarray(Image.fromarray(values).resize((width, height), Image.Resampling.NEAREST))
        return lookup[values], np.ones((height, width), dtype=np.float32)
    classes = np.zeros((height, width), dtype=np.uint8)
    weights = np.ones((height, width), dtype=np.float32)
    for group, (x1, y1, x2, y2) in sorted(photo.boxes, key=lambda b: -(b[1][2] - b[1][0]) * (b[1][3] - b[1][1])):
        left, top = max(0, int(x1)), max(0, int(y1))
        right, bottom = min(width, int(np.ceil(x2))), min(height, int(np.ceil(y2)))
        classes[top:bottom, left:right] = groups.index(group) + 1
        weights[top:bottom, left:right] = 0.3
    return classes, weights
