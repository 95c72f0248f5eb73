"""Finding garments in a photo (issue 13, in progress): garment groups, label maps from a shop's
own mask or box labels to those groups, and regions (boxes) from pixel masks.

Detectors are coarse on purpose: a small head on frozen features can tell a top from trousers
or shoes, not a blouse from a shirt; the tagger or the search names the fine type.
"""

from .groups import GARMENT_GROUPS, GroupMap, GroupMapError, ccp_group_map
from .regions import Region, box_iou, regions_from_mask

__all__ = ["GARMENT_GROUPS", "GroupMap", "GroupMapError", "Region", "box_iou", "ccp_group_map", "regions_from_mask"]
