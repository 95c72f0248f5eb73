"""Tags with no labels at all: image groups from ImageNet classes, colour from the pixels.

A shop that has not labelled anything still gets an ``image_group`` (top, dress, footwear,
bag…) from the ImageNet classifier's probability mass on garment classes, and a ``colour``
from the garment-pixel palette.  These are weaker than trained taggers or title rules, so
their confidence is capped at ``ZERO_SHOT_CAP`` and their source is ``zero-shot``; a rule
hit on the title or a trained tagger always takes precedence.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..common.colour import dominant_colour_name
from ..config import Settings

ZERO_SHOT_CAP = 0.5

# ImageNet-1k class indices (standard ILSVRC-2012 order) that carry evidence for a garment group.
IMAGENET_GROUPS: dict[str, dict[int, str]] = {
    "top": {610: "jersey, T-shirt", 465: "bulletproof vest", 824: "stole"},
    "outerwear": {841: "sweatshirt", 474: "cardigan", 869: "trench coat", 568: "fur coat", 617: "lab coat", 735: "poncho",
                  501: "cloak", 834: "suit", 652: "military uniform"},
    "dress": {578: "gown", 601: "hoopskirt", 399: "abaya", 614: "kimono", 400: "academic gown"},
    "bottom": {608: "jean", 655: "miniskirt", 689: "overskirt"},
    "footwear": {630: "loafer", 770: "running shoe", 502: "clog", 774: "sandal", 514: "cowboy boot", 806: "sock"},
    "bag": {414: "backpack", 636: "mailbag", 748: "purse", 893: "wallet"},
    "accessory": {531: "digital watch", 409: "analog clock", 826: "stopwatch", 836: "sunglass", 837: "sunglasses",
                  906: "Windsor tie", 457: "bow tie", 464: "buckle", 679: "necklace", 515: "cowboy hat", 808: "sombrero",
                  433: "bathing cap", 452: "bonnet", 658: "mitten"},
    "innerwear": {459: "brassiere", 697: "pajama"},
    "swimwear": {445: "bikini", 638: "maillot", 639: "tank suit", 842: "swimming trunks"},
    "beauty": {711: "perfume", 631: "lotion", 585: "hair spray", 551: "face powder", 629: "lipstick"},
}


def group_scores(probabilities: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(groups, (n, groups) summed ImageNet probability per group)."""
    groups = list(IMAGENET_GROUPS)
    scores = np.stack([probabilities[:, list(IMAGENET_GROUPS[g])].sum(1) for g in groups], axis=1)
    return groups, scores


class ZeroShotGroups:
    def __init__(self, settings: Settings, model_name: str = "efficientnet-lite0"):
        from ..models.encoders.efficientnet import ImageNetClassifier

        self.classifier = ImageNetClassifier(model_name, settings)

    def groups(self, thumbnails: list[Image.Image], colour: np.ndarray) -> list[dict[str, tuple[str, float]]]:
        groups, scores = group_scores(self.classifier.encode(thumbnails, batch_size=32))
        out = []
        for row, feats in zip(scores, colour):
            guess: dict[str, tuple[str, float]] = {}
            total = float(row.sum())
            if total >= 0.15:  # enough of the image's probability sits on garment classes at all
                best = int(row.argmax())
                share = float(row[best]) / total
                guess["image_group"] = (groups[best], min(ZERO_SHOT_CAP, share * min(1.0, total * 2)))
            name, share = dominant_colour_name(feats)
            guess["colour"] = (name, min(ZERO_SHOT_CAP, share))
            out.append(guess)
        return out
