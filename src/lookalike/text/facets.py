"""Facets as text search and "like this, but…" see them: a shop column and its predicted tag as one.

A facet is a shop column (``base_colour``) and the tagger's prediction for it (``tag.base_colour``);
a product shows a facet value through its own label (full weight) or, when it has none, through a
predicted tag (``TAG_WEIGHT``: a guess counts less than a label).  Read straight from the serving
index's filter columns, so facets follow ingest and tagging without a second copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..search.filters import TAG_PREFIX, FilterError, MetadataColumns, parse_number
from .vocabulary import MAX_FACET_VALUES, FacetVocabulary

TAG_WEIGHT = 0.8


class Facets:
    def __init__(self, columns: MetadataColumns, text_columns: list[str], tag_probabilities: dict[str, dict[str, np.ndarray]] | None = None,
                 tag_guesses: dict[str, dict[str, np.ndarray]] | None = None):
        self.columns = columns
        self.tag_probabilities = tag_probabilities or {}
        self.tag_guesses = tag_guesses or {}  # facet -> value -> per rowid: its likeliest value, below the tagger's threshold
        self.sources: dict[str, list[tuple[str, float]]] = {}
        for name, column in columns.columns.items():
            if name in text_columns or not 2 <= len(column.labels) <= MAX_FACET_VALUES or _mostly_numbers(column.labels):
                continue
            facet = name[len(TAG_PREFIX):] if name.startswith(TAG_PREFIX) else name
            self.sources.setdefault(facet, []).append((name, TAG_WEIGHT if name.startswith(TAG_PREFIX) else 1.0))
        for sources in self.sources.values():
            sources.sort(key=lambda s: -s[1])  # the shop's own column first
        self._vocabulary: FacetVocabulary | None = None

    @property
    def vocabulary(self) -> FacetVocabulary:
        if self._vocabulary is None:
            self._vocabulary = FacetVocabulary({f: self.values(f) for f in self.sources})
        return self._vocabulary

    def names(self) -> list[str]:
        return sorted(self.sources)

    def values(self, facet: str) -> list[str]:
        seen: dict[str, str] = {}
        for name, _ in self.sources.get(facet, []):
            for label in self.columns.columns[name].labels:
                seen.setdefault(label.lower(), label)
        return list(seen.values())

    def resolve(self, facet: str, value: str) -> tuple[str, str]:
        """The facet and value as the catalogue spells them; a clear error for unknown ones."""
        name = facet[len(TAG_PREFIX):] if facet.startswith(TAG_PREFIX) else facet
        if name not in self.sources:
            known = ", ".join(self.names()[:30]) or "(none: the catalogue has no categorical columns or tags)"
            raise FilterError(f"{facet!r} is not a facet of this catalogue; facets: {known}")
        for known_value in self.values(name):
            if known_value.lower() == value.strip().lower():
                return name, known_value
        listed = sorted(self.values(name))
        more = f" and {len(listed) - 20} more" if len(listed) > 20 else ""
        raise FilterError(f"no product has {name}={value!r}; values: {', '.join(listed[:20])}{more}")

    def match(self, facet: str, value: str, capacity: int, hard: bool = False) -> np.ndarray:
        """Per rowid, how surely the product has ``value``: 1 where its label says so; where it has no
        label, the tagger's probability of the value (its tag or a runner-up; ``TAG_WEIGHT`` when
        only the tag is known, or ``hard``: runners-up ignored); 0 otherwise.  A label overrides any tag."""
        out = np.zeros(capacity, np.float32)
        labelled = np.zeros(capacity, bool)
        key = value.strip().lower()
        for name, weight in self.sources.get(facet, []):
            column = self.columns.columns[name]
            n = min(capacity, len(column.codes))
            codes = column.codes[:n]
            code = column.vocab.get(key)
            hit = (codes == code) if code is not None else np.zeros(n, bool)
            if weight == 1.0:
                out[:n][hit] = 1.0
                labelled[:n] |= codes >= 0
                continue
            hit = hit | self._guessed(facet, key, n)  # a guess below the threshold counts as the product's tag here
            soft = None if hard else self.tag_probabilities.get(facet, {}).get(key)
            if soft is None:
                evidence = hit * np.float32(weight)
            else:  # the gallery may lag the filter columns by the products written since its refresh
                evidence = np.zeros(n, np.float32)
                evidence[: min(n, len(soft))] = soft[:n]
            free = ~labelled[:n]
            out[:n][free] = np.maximum(out[:n][free], evidence[free])
        return out

    def value_of(self, facet: str, rowid: int) -> tuple[str, str] | None:
        """(value, "label" or "tag") a product shows for a facet (a tag below the threshold: its
        likeliest value), or None."""
        for name, weight in self.sources.get(facet, []):
            column = self.columns.columns[name]
            if rowid < len(column.codes) and column.codes[rowid] >= 0:
                return column.labels[column.codes[rowid]], "label" if weight == 1.0 else "tag"
        if facet in self.sources:
            for key, guessed in self.tag_guesses.get(facet, {}).items():
                if rowid < len(guessed) and guessed[rowid]:
                    spelled = {v.lower(): v for v in self.values(facet)}
                    return spelled.get(key, key), "tag"
        return None

    def _guessed(self, facet: str, key: str, n: int) -> np.ndarray:
        """Per rowid (``n`` of them), whether ``key`` is the product's below-threshold likeliest value."""
        out = np.zeros(n, bool)
        guessed = self.tag_guesses.get(facet, {}).get(key)
        if guessed is not None:  # the gallery may lag (or lead) the filter columns by a few products
            out[: min(n, len(guessed))] = guessed[:n]
        return out


def _mostly_numbers(labels: list[Any]) -> bool:
    return sum(parse_number(v) is not None for v in labels) > len(labels) / 2
