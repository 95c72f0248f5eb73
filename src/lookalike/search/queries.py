"""Query objects: what a caller asks, independent of how it reached us (CLI, API, web page).

    ImageQuery(photo, k=20, where=("price<50",))
    ProductQuery("10184", k=12, hide_sharing=("base_colour",))   # "like this, but another colour"
    ProductQuery("10184", change=("base_colour=Red",))            # "like this, but in red"
    TextQuery("red floral summer dress", negative=("stripes",))   # words, optionally with a photo
    VectorQuery(vector, k=10, exclude=("10184",))

Every query has ``k``, ``where`` clauses and ``exclude`` ids; modifiers change the filter
from the query product's own values, so the recipe lives here once instead of in each route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from .filters import Clause, FilterError

MAX_K = 1000
MAX_HIDDEN_COLUMNS = 10
MAX_COLUMN_NAME = 200
MAX_TEXT = 500          # characters of a text query
MAX_NEGATIVE_TERMS = 10
MAX_CHANGES = 3


@dataclass(frozen=True, kw_only=True)
class QueryOptions:
    k: int = 10
    where: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()  # product ids never returned

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1 or self.k > MAX_K:
            raise ValueError(f"k must be an integer from 1 to {MAX_K}, got {self.k!r}")
        # Accept any iterable of clauses (or one string) and keep the query hashable.
        object.__setattr__(self, "where", _strings(self.where))
        object.__setattr__(self, "exclude", _strings(self.exclude))


@dataclass(frozen=True)
class ImageQuery(QueryOptions):
    """Products most similar to a photo (path, URL, bytes or PIL image)."""

    image: Any


@dataclass(frozen=True)
class ProductQuery(QueryOptions):
    """Products most similar to a catalogue product, the product itself excluded.

    ``hide_sharing``: columns whose value the results must not share with the product
    ("like this, but in another colour")."""

    product_id: str
    hide_sharing: tuple[str, ...] = ()
    # results take these facet values, all else like the product: {"base_colour": "Red"}, ["base_colour=Red"]
    # or (facet, value) pairs, kept as a tuple of pairs
    change: Any = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "hide_sharing", _strings(self.hide_sharing))
        object.__setattr__(self, "change", _changes(self.change))
        if len(self.hide_sharing) > MAX_HIDDEN_COLUMNS:
            raise FilterError(f"hide_sharing names {len(self.hide_sharing)} columns; at most {MAX_HIDDEN_COLUMNS}")
        for column in self.hide_sharing:
            if not column.strip() or len(column) > MAX_COLUMN_NAME:
                raise FilterError(f"hide_sharing column {column[:40]!r}{'…' if len(column) > 40 else ''}: "
                                  f"a column name must have 1 to {MAX_COLUMN_NAME} characters")

    def modifier_clauses(self, metadata: dict[str, Any]) -> list[Clause]:
        """``column != value`` for each hidden column the product has a value in (a column it
        has no value in hides nothing)."""
        clauses = []
        for column in self.hide_sharing:
            value = metadata.get(column)
            if value not in (None, ""):
                clauses.append(Clause(column, "!=", (str(value),)))
        return clauses


@dataclass(frozen=True)
class VectorQuery(QueryOptions):
    """Products nearest to an embedding of the serving model."""

    vector: np.ndarray


@dataclass(frozen=True)
class TextQuery(QueryOptions):
    """Products matching words ("navy slim fit shirt"), optionally around a photo ("this, but in
    red"); ``negative`` terms push products away ("stripes"), as "not …"/"without …" in the text do."""

    text: str = ""
    image: Any = None
    negative: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.text, str):
            raise FilterError(f"text must be a string, got {type(self.text).__name__}")
        object.__setattr__(self, "text", " ".join(self.text.split()))
        object.__setattr__(self, "negative", tuple(t for t in (" ".join(n.split()) for n in _strings(self.negative)) if t))
        if len(self.text) > MAX_TEXT:
            raise FilterError(f"text has {len(self.text)} characters; at most {MAX_TEXT}")
        if len(self.negative) > MAX_NEGATIVE_TERMS or any(len(n) > MAX_COLUMN_NAME for n in self.negative):
            raise FilterError(f"at most {MAX_NEGATIVE_TERMS} negative terms of at most {MAX_COLUMN_NAME} characters each")
        if not self.text and self.image is None and not self.negative:
            raise FilterError("a text query needs words (or a photo to go with the words)")


Query = Union[ImageQuery, ProductQuery, VectorQuery, TextQuery]


def _changes(values: Any) -> tuple[tuple[str, str], ...]:
    """``{"colour": "Red"}``, ``["colour=Red"]`` or ``[("colour", "Red")]`` as (facet, value) pairs."""
    if not values:
        return ()
    items = list(values.items()) if isinstance(values, dict) else list(values) if not isinstance(values, str) else [values]
    pairs = []
    for item in items:
        if isinstance(item, str):
            facet, sep, value = item.partition("=")
            if not sep:
                raise FilterError(f"change {item[:60]!r}: write it as facet=value (e.g. base_colour=Red)")
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            facet, value = item
        else:
            raise FilterError(f"change {str(item)[:60]!r}: write it as facet=value")
        facet, value = str(facet).strip(), str(value).strip()
        if not facet or not value or len(facet) > MAX_COLUMN_NAME or len(value) > MAX_COLUMN_NAME:
            raise FilterError(f"change {facet[:40]!r}={value[:40]!r}: facet and value need 1 to {MAX_COLUMN_NAME} characters")
        pairs.append((facet, value))
    if len(pairs) > MAX_CHANGES:
        raise FilterError(f"{len(pairs)} changes asked; at most {MAX_CHANGES}")
    if len({f for f, _ in pairs}) != len(pairs):
        raise FilterError("each facet may be changed once")
    return tuple(pairs)


def _strings(values: Any) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        return (values,)
    try:
        items = tuple(values)
    except TypeError as exc:
        raise FilterError(f"expected a list of strings, got {type(values).__name__}") from exc
    return tuple(str(v) for v in items if v is not None)
