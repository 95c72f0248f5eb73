"""The exact product first, when a fine-tuned model serves.

Fine-tuning teaches the head what a product *type* looks like, and trains away what tells one
photo of a product from another: an altered copy of a catalogue photo (cropped, blurred,
re-compressed, on another background) is found first by the off-the-shelf backbone far more often
than by the tuned model, yet it is usually still among the tuned model's first few dozen
results.  So a photo search keeps the tuned order, except that among its first ``depth`` results
the one whose stored backbone vector is nearest to the query's own backbone vector goes first.
A photo of a product the shop does not have moves one near neighbour up, so type-level quality
barely moves (figures in the README's fine-tuning section; the ``backbone_first_depth`` column of
the ``learned_codes`` evaluation task measures this rule).

The backbone vectors come from the store (kept beside the serving vectors by ingest and
re-index, :meth:`lookalike.models.encoders.Encoder.embed_keeping`); no second index is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

MAX_DEPTH = 1000


class KeptVectors(Protocol):
    """Vectors of non-serving models by rowid (:meth:`lookalike.storage.ProductStore.model_vectors`)."""

    def model_vectors(self, model: str, rowids: list[int]) -> dict[int, tuple[str | None, np.ndarray]]: ...


def _refusal(value: object) -> str:
    return f"setting 'exact_first_depth': expected \"auto\" or a whole number from 0 (off) to {MAX_DEPTH}, got {value!r}"


@dataclass(frozen=True)
class ExactFirst:
    """Among a ranking's first ``depth`` products, the one nearest the query by the kept models' vectors."""

    depth: int
    vectors: KeptVectors

    def __post_init__(self) -> None:
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or not 0 <= self.depth <= MAX_DEPTH:
            raise ValueError(_refusal(self.depth))

    @classmethod
    def chosen(cls, setting: str | int, model_depth: int, vectors: KeptVectors) -> ExactFirst:
        """The rule the setting asks for: ``"auto"`` reads the serving model's own depth
        (``Encoder.exact_first_depth``: 50 for a frozen head, 200 for an unfrozen one), a whole
        number that many (0: off)."""
        text = str(setting).strip().lower()
        try:
            return cls(model_depth if text == "auto" else int(text), vectors)
        except ValueError:
            raise ValueError(_refusal(setting)) from None

    def pick(self, query: dict[str, np.ndarray], rowids: list[int], hashes: dict[int, str | None]) -> tuple[int, float] | None:
        """(position in ``rowids``, mean cosine over the kept models) of the nearest candidate, or
        None.  A candidate counts only with a vector of every model in ``query``, computed from
        the picture it has now (``hashes``): a stale vector would describe another photo."""
        candidates = [int(r) for r in rowids[: self.depth]]
        if not query or len(candidates) < 2:
            return None
        total = np.zeros(len(candidates))
        usable = np.ones(len(candidates), dtype=bool)
        for model, vector in query.items():
            found = self.vectors.model_vectors(model, candidates)
            for i, rowid in enumerate(candidates):
                entry = found.get(rowid)
                if entry is None or entry[0] != hashes.get(rowid) or entry[1].shape != vector.shape:
                    usable[i] = False
                else:
                    total[i] += float(entry[1] @ vector)
        if not usable.any():
            return None
        total[~usable] = -np.inf
        best = int(np.argmax(total))
        return best, float(total[best] / len(query))
