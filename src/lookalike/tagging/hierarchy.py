"""The shop's category tree and placing products in it.

The tree comes from a text file with one path per line, levels separated by ``>``::

    Women > Apparel > Topwear > Tops
    Women > Apparel > Topwear > Tshirts
    Men > Footwear > Shoes > Casual Shoes

A tagger predicts a probability for each *leaf* path; the probability of an inner node is the
sum over the leaves below it.  A product is placed at the deepest node whose probability
reaches the threshold, so an ambiguous photo lands on "Women > Apparel > Topwear" rather than
on a wrong leaf.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEPARATOR = ">"


class HierarchyError(ValueError):
    """The category tree file is malformed; the message names the line."""


def split_path(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(text).split(SEPARATOR))


def join_path(parts: tuple[str, ...] | list[str]) -> str:
    return f" {SEPARATOR} ".join(parts)


@dataclass
class Placement:
    path: tuple[str, ...]
    confidence: float

    @property
    def depth(self) -> int:
        return len(self.path)


class CategoryTree:
    """A set of leaf paths; inner nodes are their prefixes."""

    def __init__(self, leaves: list[tuple[str, ...]]):
        if not leaves:
            raise HierarchyError("the category tree has no paths")
        # A path that is also a prefix of another is an inner node, not a leaf a product can sit in alone.
        inner = {leaf[:d] for leaf in leaves for d in range(1, len(leaf))}
        self.leaves = sorted(set(leaves) - inner)
        self._leaf_set = set(self.leaves)
        self.depth = max(len(leaf) for leaf in self.leaves)
        by_name: dict[str, list[tuple[str, ...]]] = {}
        for leaf in self.leaves:
            by_name.setdefault(leaf[-1].lower(), []).append(leaf)
        self._by_leaf_name = by_name

    @classmethod
    def from_file(cls, path: str | Path) -> CategoryTree:
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise HierarchyError(f"cannot read category tree {path}: {exc}") from exc
        return cls.from_lines(lines, source=str(path))

    @classmethod
    def from_lines(cls, lines: list[str], source: str = "category tree") -> CategoryTree:
        leaves = []
        for number, line in enumerate(lines, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = split_path(text)
            if any(not p for p in parts):
                raise HierarchyError(f"{source} line {number}: empty level in {text!r} (levels are separated by '{SEPARATOR}')")
            leaves.append(parts)
        return cls(leaves)

    def resolve(self, value: str | tuple[str, ...]) -> tuple[str, ...] | None:
        """The leaf a catalogue value names: a full path, or a leaf name that is unique in the tree."""
        parts = split_path(value) if isinstance(value, str) else tuple(value)
        if parts in self._leaf_set:
            return parts
        if len(parts) == 1:
            matches = self._by_leaf_name.get(parts[0].lower(), [])
            if len(matches) == 1:
                return matches[0]
        return None

    def place(self, leaf_paths: list[tuple[str, ...]], proba: np.ndarray, threshold: float) -> list[Placement]:
        """Deepest node whose summed probability reaches ``threshold``, for each row of ``proba``.

        A product whose evidence does not even reach the threshold at the top level gets the
        empty path with the top-level probability as confidence."""
        placements = []
        for row in np.atleast_2d(proba):
            best = Placement((), 0.0)
            prefix: tuple[str, ...] = ()
            for depth in range(1, self.depth + 1):
                totals: dict[tuple[str, ...], float] = {}
                for leaf, p in zip(leaf_paths, row):
                    if len(leaf) >= depth and leaf[: depth - 1] == prefix:
                        totals[leaf[:depth]] = totals.get(leaf[:depth], 0.0) + float(p)
                if not totals:
                    break
                node, mass = max(totals.items(), key=lambda item: item[1])
                if mass < threshold:
                    if depth == 1:
                        best = Placement((), mass)
                    break
                best, prefix = Placement(node, mass), node
            placements.append(best)
        return placements


def level_accuracy(true_paths: list[tuple[str, ...]], predicted: list[tuple[str, ...]], depth: int) -> list[float]:
    """Accuracy of the predicted path's prefix at each level (1..depth)."""
    out = []
    for level in range(1, depth + 1):
        pairs = [(t[:level], p[:level]) for t, p in zip(true_paths, predicted) if len(t) >= level]
        out.append(float(np.mean([t == p for t, p in pairs])) if pairs else float("nan"))
    return out
