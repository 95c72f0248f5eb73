"""Query objects: what a caller asks, independent of how it reached us (CLI, API, web page).

    ImageQuery(photo, k=20, where=("price<50",))
    ProductQuery("10184", k=12, hide_sharing=("base_colour",))   # "like this, but another colour"
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

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "hide_sharing", _strings(self.hide_sharing))
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


Query = Union[ImageQuery, ProductQuery, VectorQuery]


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
