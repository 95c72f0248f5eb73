"""Finding garments in a photo: garment groups, a shop's mask/box labels mapped to them, the
garment finder (a small head on frozen EfficientNet-Lite0 feature maps) and its training.

* :mod:`.groups` — :data:`GARMENT_GROUPS`, :class:`GroupMap` (a shop's labels -> groups);
* :mod:`.regions` — regions (boxes) from pixel masks, box IoU;
* :mod:`.annotations` — the data format a shop brings (masks, boxes, label map);
* :mod:`.head`, :mod:`.canvas`, :mod:`.detector` — the served finder (NumPy after ONNX);
* :mod:`.artefact` — versioned detector folders, checked on load;
* :mod:`.training`, :mod:`.torch_head` — cached maps, the head's training (PyTorch), held-out figures;
* :mod:`.metrics` — pixel IoU per group, box recall per group.

Detectors are coarse on purpose: a small head on frozen features can tell a top from trousers
or shoes, not a blouse from a shirt; the tagger or the search names the fine type.
"""

from .artefact import DetectorArtefact, DetectorError, list_detectors, load_detector, resolve_detector
from .detector import FoundGarment, GarmentDetector
from .groups import GARMENT_GROUPS, GroupMap, GroupMapError, ccp_group_map
from .regions import Region, box_iou, regions_from_mask

__all__ = ["GARMENT_GROUPS", "DetectorArtefact", "DetectorError", "FoundGarment", "GarmentDetector", "GroupMap", "GroupMapError",
           "Region", "box_iou", "ccp_group_map", "list_detectors", "load_detector", "regions_from_mask", "resolve_detector"]
