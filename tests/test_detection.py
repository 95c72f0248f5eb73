"""Garment groups and regions from masks (the ground truth a detector learns from and is scored on)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from lookalike.detection import GroupMap, GroupMapError, box_iou, ccp_group_map, regions_from_mask

from .conftest import SHARED, requires_shared

LABELS = {0: "null", 1: "skin", 2: "blouse", 3: "vest", 4: "shoes", 5: "jeans", 6: "earrings"}


def test_masks_become_one_box_per_group_around_its_blobs_and_specks_are_ignored():
    mask = np.zeros((100, 80), dtype=np.uint8)
    mask[10:30, 20:60] = 2        # blouse
    mask[25:45, 15:65] = 3        # vest: the same group as the blouse -> one "top" box
    mask[50:80, 25:55] = 5        # jeans
    mask[90:96, 10:20] = 4        # left shoe
    mask[90:96, 50:62] = 4        # right shoe: one "shoes" box around both
    mask[0:2, 0:2] = 6            # a 4-pixel earring: below 0.2 % of the photo
    mask[40:60, 0:5] = 1          # skin is no garment
    mask[99, 79] = 4              # a one-pixel speck of "shoes" does not stretch the box
    regions = {r.group: r for r in regions_from_mask(mask, LABELS, ccp_group_map())}
    assert set(regions) == {"top", "bottom", "shoes"}
    assert regions["top"].box == (15, 10, 65, 45)
    assert regions["bottom"].box == (25, 50, 55, 80)
    assert regions["shoes"].box == (10, 90, 62, 96) and regions["shoes"].pixels == 60 + 72
    assert [r.group for r in regions_from_mask(mask, LABELS, ccp_group_map())][0] == "top"  # largest first
    with_jewellery = GroupMap.from_dict({"top": ["blouse", "vest"], "bottom": ["jeans"], "shoes": ["shoes"], "accessory": ["earrings"]})
    assert {r.group for r in regions_from_mask(mask, LABELS, with_jewellery)} == {"top", "bottom", "shoes"}
    assert {r.group for r in regions_from_mask(mask, LABELS, with_jewellery, min_fraction=0)} == {"top", "bottom", "shoes", "accessory"}


def test_a_pair_of_shoes_under_the_floor_one_by_one_is_one_box_around_both():
    """The floor is the group's: each shoe is 0.15 % of the photo, the pair 0.3 % (over 0.2 %)."""
    mask = np.zeros((100, 80), dtype=np.uint8)
    mask[10:60, 20:60] = 2        # blouse
    mask[90:94, 10:13] = 4        # left shoe: 12 pixels
    mask[90:94, 50:53] = 4        # right shoe: 12 pixels
    mask[70, 70] = 4              # a one-pixel speck still does not stretch the box
    regions = {r.group: r for r in regions_from_mask(mask, LABELS, ccp_group_map())}
    assert regions["shoes"].box == (10, 90, 53, 94) and regions["shoes"].pixels == 24
    mask[90:94, 50:53] = 0        # one shoe alone is under the floor: too small to search for
    assert "shoes" not in {r.group for r in regions_from_mask(mask, LABELS, ccp_group_map())}


def test_an_empty_or_ungarmented_mask_has_no_regions_and_a_bad_shape_is_refused():
    assert regions_from_mask(np.zeros((10, 10), np.uint8), LABELS, ccp_group_map()) == []
    assert regions_from_mask(np.ones((10, 10), np.uint8), LABELS, ccp_group_map()) == []  # all skin
    with pytest.raises(ValueError, match="2-D"):
        regions_from_mask(np.zeros((4, 4, 3), np.uint8), LABELS, ccp_group_map())


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0


@pytest.mark.parametrize("data, reason", [
    (["top"], "mapping"),
    ({"tops": ["shirt"]}, "unknown garment group"),
    ({"top": "shirt"}, "list its labels"),
    ({"top": ["shirt"], "outerwear": ["Shirt"]}, "in both"),
    ({"top": [""]}, "1 to 100"),
    ({"top": ["x" * 101]}, "1 to 100"),
])
def test_a_bad_group_map_is_refused_with_its_reason(data, reason):
    with pytest.raises(GroupMapError, match=reason):
        GroupMap.from_dict(data, "shop.yaml")


def test_a_shop_map_in_its_own_words_is_case_insensitive():
    shop = GroupMap.from_dict({"dress": ["Kurta", "Maxi Dress"], "shoes": ["Heels"]})
    assert shop.group_of("kurta") == "dress" and shop.group_of(" HEELS ") == "shoes" and shop.group_of("scarf") is None


@requires_shared
def test_boxes_from_the_shared_street_masks_match_the_published_boxes():
    """Where a group holds one label, the box from the mask is the data set's box for it."""
    base = SHARED / "ccp"
    with open(base / "label_list.csv", newline="") as f:
        labels = {int(r["label_id"]): r["label"] for r in csv.DictReader(f)}
    with open(base / "boxes.csv", newline="") as f:
        published: dict[str, list[dict[str, str]]] = {}
        for row in csv.DictReader(f):
            published.setdefault(row["image_file"], []).append(row)
    with open(base / "images.csv", newline="") as f:
        photos = [r for r in csv.DictReader(f) if r["annotation"] == "pixel"][:40]
    group_map, ious = ccp_group_map(), []
    for photo in photos:
        mask = np.asarray(Image.open(base / photo["mask_file"]))
        found = {r.group: r for r in regions_from_mask(mask, labels, group_map, min_fraction=0)}
        rows = published.get(photo["image_file"], [])
        for row in rows:
            group = group_map.group_of(row["label"])
            if group is None or sum(group_map.group_of(r["label"]) == group for r in rows) != 1:
                continue
            box = tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2"))
            ious.append(box_iou(found[group].box, box))  # type: ignore[arg-type]
    assert len(ious) > 50
    assert np.median(ious) > 0.9 and min(ious) > 0.5


@requires_shared
def test_boxes_at_the_evaluation_floor_still_match_the_published_boxes():
    """Box recall is scored against boxes from the masks at a floor of 0.2 % of the photo.  At
    that floor they must still be the data set's own boxes (which go around every blob of a
    label), group by group.  A floor on each blob dropped one shoe of many pairs: 42 of 679
    photos lost their shoes box, and only 0.90 of the shoe boxes and 0.86 of the bag boxes left
    were within IoU 0.9 of the published ones (0.96 and 0.98 with the group's floor)."""
    base = SHARED / "ccp"
    with open(base / "label_list.csv", newline="") as f:
        labels = {int(r["label_id"]): r["label"] for r in csv.DictReader(f)}
    group_map = ccp_group_map()
    published: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    with open(base / "boxes.csv", newline="") as f:
        for row in csv.DictReader(f):
            group = group_map.group_of(row["label"])
            if group is not None:
                published.setdefault((row["image_file"], group), []).append(tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2")))
    with open(base / "images.csv", newline="") as f:
        photos = [r for r in csv.DictReader(f) if r["annotation"] == "pixel"]
    close: dict[str, list[bool]] = {}
    for photo in photos:
        mask = np.asarray(Image.open(base / photo["mask_file"]))
        for region in regions_from_mask(mask, labels, group_map):
            boxes = np.array(published.get((photo["image_file"], region.group), [(0.0, 0.0, 0.0, 0.0)]))
            around = (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max())
            close.setdefault(region.group, []).append(box_iou(region.box, around) >= 0.9)  # type: ignore[arg-type]
    assert set(close) == {"top", "bottom", "dress", "shoes", "bag"}
    for group, hits in close.items():
        assert len(hits) > 150 and np.mean(hits) > 0.92, (group, np.mean(hits))
