"""The vector backend contract: what search needs from wherever vectors live.

A backend stores unit vectors under non-negative integer ids (the store's product rowids) and
answers "the k nearest ids to this query, among those the filter allows", with true cosine
scores, best first.  In-memory backends (:mod:`.exact`, :mod:`.faiss_ivf`, :mod:`.codes`)
compile a :class:`VectorFilter` to a bitmap over ids; a backend inside a database (:mod:`.milvus`)
runs its ``expression`` server-side instead, which is why the filter carries both (the searcher fills
them from the same parsed ``where`` clauses) and why writes may carry each id's filterable fields
(:func:`lookalike.search.filters.filter_fields`), which in-memory backends ignore.  A *persistent*
backend keeps its vectors between runs itself: at open, a restored one is sent only what changed.
Every backend passes the same contract tests (``tests/test_vectors.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

Neighbours = tuple[np.ndarray, np.ndarray]  # (ids int64, scores float32), best first
Fields = list[dict[str, Any]]  # per id: its filterable fields (lookalike.search.filters.filter_fields)


class BackendError(RuntimeError):
    """A vector backend cannot be built, loaded or reached as configured."""


@dataclass(frozen=True)
class VectorFilter:
    """Which ids a query may return.

    ``allowed`` is the metadata filter's answer as a boolean mask indexed by id (ids past its
    end are not allowed); ``expression`` is the same condition as a boolean expression over
    the stored filter fields (see :func:`lookalike.search.filters.clauses_expression`), for backends
    that filter server-side; ``exclude`` ids are never returned (the query product itself)."""

    allowed: np.ndarray | None = None
    expression: str = ""
    exclude: tuple[int, ...] = field(default_factory=tuple)

    @classmethod
    def coerce(cls, value: VectorFilter | np.ndarray | None) -> VectorFilter | None:
        """Accept a bare boolean mask where a filter is expected (the common in-memory case)."""
        if value is None or isinstance(value, VectorFilter):
            return value
        return cls(allowed=np.asarray(value, dtype=bool))

    @property
    def restricts(self) -> bool:
        return self.allowed is not None or bool(self.exclude)

    def bitmap(self, live: np.ndarray) -> np.ndarray:
        """The allowed ids as a mask the size of ``live``, limited to live ids."""
        if self.allowed is None:
            mask = live.copy()
        elif len(self.allowed) >= len(live):  # the usual case: one pass (milliseconds at 10M ids)
            mask = np.logical_and(self.allowed[:len(live)], live)
        else:
            mask = np.zeros(len(live), dtype=bool)
            np.logical_and(self.allowed, live[:len(self.allowed)], out=mask[:len(self.allowed)])
        excluded = [i for i in self.exclude if 0 <= i < len(mask)]
        mask[excluded] = False
        return mask

    def full_expression(self) -> str:
        """The whole filter, exclusions included, as one expression (for database backends)."""
        parts = [f"({self.expression})"] if self.expression else []
        if self.exclude:
            parts.append(f"id not in [{', '.join(str(int(i)) for i in self.exclude)}]")
        return " and ".join(parts)


@runtime_checkable
class VectorBackend(Protocol):
    """Where vectors live and how they are searched.  Implementations are thread-safe."""

    name: str
    dim: int
    persistent: bool  # holds its vectors between runs (a database): a restored one is sent only changes
    wants_fields: bool  # filters by ``expression`` server-side, so writes carry each id's filter fields
    restored_vectors: bool  # :meth:`restore` brought back every vector itself: the serving index sends only changes

    @property
    def count(self) -> int: ...

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, fields: Fields | None = None) -> None:
        """Add vectors, replacing any stored under the same ids (with their filter fields, when given)."""

    def load(self, ids: np.ndarray, vectors: np.ndarray, fields: Fields | None = None) -> None:
        """Bulk-add at open time; derived structures (an ANN snapshot) are caught up by
        :meth:`refresh` / :meth:`maintain` afterwards rather than per call.  A persistent backend
        with a restored snapshot already holds these: it only notes the ids."""

    def annotate(self, ids: np.ndarray, fields: Fields) -> None:
        """Replace the filter fields of stored ids (metadata or tags changed, the vector did not)."""

    def remove(self, ids: np.ndarray) -> int:
        """Forget ids (unknown ones are ignored); returns how many were removed."""

    def search(self, query: np.ndarray, k: int, filter: VectorFilter | np.ndarray | None = None) -> Neighbours:
        """The k nearest allowed ids with their cosine scores, best first."""

    def search_many(self, queries: np.ndarray, k: int, filter: VectorFilter | np.ndarray | None = None) -> list[Neighbours]:
        """:meth:`search` for each row of ``queries``."""

    def ids(self) -> np.ndarray:
        """Every stored id, ascending."""

    def vector(self, id_: int) -> np.ndarray:
        """The stored vector of one id (KeyError when absent)."""

    def live_mask(self) -> np.ndarray:
        """A boolean mask indexed by id: which ids hold a vector."""

    def snapshot(self, directory: Path, generation: int, model: str = "") -> None:
        """Persist derived structures atomically, tagged with the store generation they reflect
        and the model whose vectors they hold."""

    def restore(self, directory: Path, model: str = "") -> int | None:
        """Load a snapshot of ``model``'s vectors; returns its generation, or None when there is
        none usable (missing, damaged, or another model's)."""

    def refresh(self, ids: np.ndarray) -> None:
        """Bring a restored snapshot up to date for ids changed or deleted since it was taken
        (in-memory backends; a persistent one is sent the changes by upsert and remove instead)."""

    def discard_snapshot(self) -> None:
        """Forget a restored snapshot (it belongs to another database)."""

    def maintain(self) -> bool:
        """Rebuild derived structures when the collection outgrew them; returns whether it did."""

    def describe(self) -> str:
        """One line for ``info``: what this backend searches with."""

    def memory_bytes(self) -> int:
        """Bytes held in memory (vectors plus derived structures)."""


def checked(ids: np.ndarray, vectors: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids as int64 and vectors as contiguous float32 of the backend's shape, or a ValueError saying what is wrong."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(ids) and vectors.shape != (len(ids), dim):
        raise ValueError(f"expected vectors of shape ({len(ids)}, {dim}), got {vectors.shape}")
    if len(ids) and ids.min() < 0:
        raise ValueError("ids must be non-negative")
    return ids, vectors


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest scores, best first (ties broken by position, so results are stable)."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.lexsort((part, -scores[part]))]


def no_neighbours() -> Neighbours:
    return np.zeros(0, np.int64), np.zeros(0, np.float32)
