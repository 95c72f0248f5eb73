"""Garment groups, and the map from a shop's mask or box labels to them.

A shop brings masks or boxes labelled in its own words ("heels", "jeans", "Kurta"); a
:class:`GroupMap` says which coarse group each label belongs to, and which labels are not
garments at all (skin, hair, background).  Groups are what a detector finds and what a shopper
clicks; the catalogue's own categories refine them at search time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

PERSON = "person"
GARMENT_GROUPS: tuple[str, ...] = ("top", "outerwear", "dress", "bottom", "legwear", "shoes", "bag", "hat", "eyewear", "accessory")
MAX_LABELS = 1000
MAX_LABEL_LENGTH = 100


class GroupMapError(ValueError):
    """A label map that names an unknown group, or is not a mapping of labels to groups."""


@dataclass(frozen=True)
class GroupMap:
    """``label -> group`` for the labels that are garments; every other label is ignored."""

    groups: Mapping[str, str] = field(default_factory=dict)
    person: frozenset[str] = frozenset()  # labels of a person's own pixels (skin, hair): "a person is in the photo"

    @classmethod
    def from_dict(cls, data: Any, source: str = "label map") -> GroupMap:
        """From ``{group: [label, ...]}`` (the YAML a shop writes); labels compare case-insensitively.
        The optional key ``person`` lists labels of skin and hair: not garments, but they teach the
        finder to tell a photo of a person from a garment on a plain background."""
        if not isinstance(data, Mapping):
            raise GroupMapError(f"{source}: expected a mapping of group -> list of labels, got {type(data).__name__}")
        groups: dict[str, str] = {}
        for group, labels in data.items():
            if group not in GARMENT_GROUPS and group != PERSON:
                raise GroupMapError(f"{source}: unknown garment group {group!r}; use one of {', '.join(GARMENT_GROUPS)} (or {PERSON!r})")
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
        person = frozenset(label for label, group in groups.items() if group == PERSON)
        return cls({label: group for label, group in groups.items() if group != PERSON}, person)

    def group_of(self, label: str) -> str | None:
        return self.groups.get(label.strip().lower())

    def is_person(self, label: str) -> bool:
        return label.strip().lower() in self.person

    @property
    def group_names(self) -> tuple[str, ...]:
        """The groups this map uses, in :data:`GARMENT_GROUPS` order: a detector's garment classes."""
        used = set(self.groups.values())
        return tuple(g for g in GARMENT_GROUPS if g in used)

    def to_dict(self) -> dict[str, list[str]]:
        """The YAML form (``from_dict`` reads it back)."""
        out = {g: sorted(k for k, v in self.groups.items() if v == g) for g in self.group_names}
        if self.person:
            out[PERSON] = sorted(self.person)
        return out


# The clothing-co-parsing labels (shared street photos) in the five groups the default garment
# finder looks for: what a shopper buys from a street photo, and what a small head on frozen
# features separates reliably (jackets and tops are one "top": from the street they overlap;
# skirts are bottoms).  Skin and hair are learnt as "person" (not searched: they tell a photo of
# a person from a garment on a plain background).  The background, underwear, socks, hats, glasses and jewellery
# are background to it; a shop that sells those trains its own finder with its own map.
_CCP = {
    "top": ["blouse", "bodysuit", "cardigan", "hoodie", "jumper", "shirt", "sweater", "sweatshirt", "t-shirt", "top", "vest",
            "blazer", "cape", "coat", "jacket", "suit"],
    "dress": ["dress", "romper"],
    "bottom": ["jeans", "leggings", "pants", "shorts", "skirt"],
    "shoes": ["boots", "clogs", "flats", "heels", "loafers", "pumps", "sandals", "shoes", "sneakers", "wedges"],
    "bag": ["bag", "purse", "wallet"],
    "person": ["skin", "hair"],
}


def ccp_group_map() -> GroupMap:
    """The group map of the clothing-co-parsing label list (what the default detector learns)."""
    return GroupMap.from_dict(_CCP, "clothing-co-parsing labels")
