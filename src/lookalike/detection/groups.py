"""Garment groups, and the map from a shop's mask or box labels to them.

A shop brings masks or boxes labelled in its own words ("heels", "jeans", "Kurta"); a
:class:`GroupMap` says which coarse group each label belongs to, and which labels are not
garments at all (skin, hair, background).  Groups are what a detector finds and what a shopper
clicks; the catalogue's own categories refine them at search time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

GARMENT_GROUPS: tuple[str, ...] = ("top", "outerwear", "dress", "trousers", "skirt", "legwear", "shoes", "bag", "hat", "eyewear", "accessory")
MAX_LABELS = 1000
MAX_LABEL_LENGTH = 100


class GroupMapError(ValueError):
    """A label map that names an unknown group, or is not a mapping of labels to groups."""


@dataclass(frozen=True)
class GroupMap:
    """``label -> group`` for the labels that are garments; every other label is ignored."""

    groups: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, source: str = "label map") -> GroupMap:
        """From ``{group: [label, ...]}`` (the YAML a shop writes); labels compare case-insensitively."""
        if not isinstance(data, Mapping):
            raise GroupMapError(f"{source}: expected a mapping of group -> list of labels, got {type(data).__name__}")
        groups: dict[str, str] = {}
        for group, labels in data.items():
            if group not in GARMENT_GROUPS:
                raise GroupMapError(f"{source}: unknown garment group {group!r}; use one of {', '.join(GARMENT_GROUPS)}")
            if isinstance(labels, str) or not isinstance(labels, (list, tuple)):
                raise GroupMapError(f"{source}: group {group!r} must list its labels")
            for label in labels:
                text = str(label).strip().lower()
                if not text or len(text) > MAX_LABEL_LENGTH:
                    raise GroupMapError(f"{source}: group {group!r}: a label must have 1 to {MAX_LABEL_LENGTH} characters")
                if groups.get(text, group) != group:
                    raise GroupMapError(f"{source}: label {text!r} is in both {groups[text]!r} and {group!r}")
                groups[text] = group
        if len(groups) > MAX_LABELS:
            raise GroupMapError(f"{source}: {len(groups)} labels; at most {MAX_LABELS}")
        return cls(groups)

    def group_of(self, label: str) -> str | None:
        return self.groups.get(label.strip().lower())


# The clothing-co-parsing labels (shared street photos) in garment groups; hair, skin, the
# background and underwear are not searched for.
_CCP = {
    "top": ["blouse", "bodysuit", "cardigan", "hoodie", "jumper", "shirt", "sweater", "sweatshirt", "t-shirt", "top", "vest"],
    "outerwear": ["blazer", "cape", "coat", "jacket", "suit"],
    "dress": ["dress", "romper"],
    "trousers": ["jeans", "leggings", "pants", "shorts"],
    "skirt": ["skirt"],
    "legwear": ["socks", "stockings", "tights"],
    "shoes": ["boots", "clogs", "flats", "heels", "loafers", "pumps", "sandals", "shoes", "sneakers", "wedges"],
    "bag": ["bag", "purse", "wallet"],
    "hat": ["hat"],
    "eyewear": ["glasses", "sunglasses"],
    "accessory": ["accessories", "belt", "bracelet", "earrings", "gloves", "necklace", "ring", "scarf", "tie", "watch"],
}


def ccp_group_map() -> GroupMap:
    """The group map of the clothing-co-parsing label list (what the default detector learns)."""
    return GroupMap.from_dict(_CCP, "clothing-co-parsing labels")
