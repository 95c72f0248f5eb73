"""A configuration's ranking over a set of vectors, scored as that configuration searches.

Shared by the evaluation (``lookalike eval`` scores each configuration this way) and judging
rounds (people compare two configurations' top results): flat, an approximate index's own
ranking first, or learned codes with exact re-ranking.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from . import CodesBackend, FaissBackend, IndexSpec
from .codes import Quantizer

CODE_DEPTH = 10  # a quantised configuration is scored as a top-10 search: this many × rerank_factor candidates re-ranked
APPROXIMATE_DEPTH = 100  # how deep an approximate index's own ranking is used before exact scores take over


class VectorSet(Protocol):
    ids: list[Any]
    vectors: np.ndarray


@dataclass
class ConfigIndex:
    """The configuration's vector index over one data set (positions as ids), with its costs.

    A configuration whose model is quantised (``lookalike train quantizer``) is scored as it
    searches: items ranked by their codes (``code_search`` adc or sdc), the first
    ``CODE_DEPTH × rerank_factor`` re-ranked by their float vectors — not by the float vectors alone.
    """

    index: FaissBackend | CodesBackend
    build_s: float
    bytes_per_item: float

    @classmethod
    def build(cls, data: VectorSet, settings: Any, quantizer: Quantizer | None = None) -> ConfigIndex:
        n = max(1, len(data.ids))
        if quantizer is not None and settings.code_search != "off":
            start = time.perf_counter()
            codes = CodesBackend(data.vectors.shape[1], quantizer, settings.code_search, settings.rerank_factor)
            codes.upsert(np.arange(len(data.ids)), data.vectors)
            floats = data.vectors.nbytes if settings.rerank_factor > 0 else 0  # re-ranking keeps the float vectors
            return cls(codes, time.perf_counter() - start, (codes.codes[: len(data.ids)].nbytes + floats) / n)
        threshold = settings.ann_threshold if settings.index == "auto" else 0
        index = FaissBackend(data.vectors.shape[1], IndexSpec(settings.index, threshold, settings.nprobe, settings.rerank_factor), threads=settings.threads)
        index.upsert(np.arange(len(data.ids)), data.vectors)
        start = time.perf_counter()
        index.build_ann()
        build_s = time.perf_counter() - start
        ann_bytes = index.ann_bytes()
        # Exact re-ranking keeps the float vectors in memory either way.
        return cls(index, build_s, (data.vectors.nbytes + ann_bytes) / n)

    @property
    def scored_by(self) -> str:
        return self.index.describe()

    def scores(self, vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
        """A full ranking's scores: exact similarity, with an approximate index's top results first."""
        return self.score_block(vectors, query[None])[0]

    def score_block(self, vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """``scores`` for many queries at once (one matrix product instead of one per query)."""
        if isinstance(self.index, CodesBackend):
            return self._code_scores(vectors, queries)
        exact = queries @ vectors.T
        if self.index.ann is None:
            return exact
        ranked = exact - 10.0  # below every candidate the approximate index returned
        for row, query in enumerate(queries):
            found, _ = self.index.search(query, APPROXIMATE_DEPTH)
            ranked[row, found] = exact[row, found]
        return ranked

    def _code_scores(self, vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Code similarities for every item; the first ``CODE_DEPTH × rerank_factor`` of each
        query get their exact similarity and rank above the rest, as the codes backend answers."""
        assert isinstance(self.index, CodesBackend)
        q, codes = self.index.quantizer, self.index.codes[: len(vectors)]
        approx = q.sdc_scores(q.encode(queries), codes) if self.index.code_search == "sdc" else q.adc_scores(queries, codes)
        approx = np.asarray(approx, np.float64)
        depth = min(len(vectors), CODE_DEPTH * self.index.rerank_factor)
        if depth <= 0:
            return approx
        ranked = approx - (approx.max() - approx.min() + 10.0)  # below every re-ranked candidate
        for row, query in enumerate(queries):
            candidates = np.argpartition(-approx[row], depth - 1)[:depth]
            ranked[row, candidates] = vectors[candidates] @ query
        return ranked

    def iter_scores(self, vectors: np.ndarray, positions: list[int], block: int = 256):
        """(position, full-ranking scores) for items of the data set used as queries, block by block."""
        for start in range(0, len(positions), block):
            chunk = positions[start : start + block]
            yield from zip(chunk, self.score_block(vectors, vectors[chunk]))

    def latency(self, queries: np.ndarray) -> dict[str, float]:
        from ..common.untyped import faiss

        faiss.omp_set_num_threads(1)
        for q in queries[:5]:  # warm caches: the first calls are not what a running server sees
            self.index.search(q, 10)
        times = []
        for q in queries:
            start = time.perf_counter()
            self.index.search(q, 10)
            times.append((time.perf_counter() - start) * 1000)
        return {"query_p50_ms": float(np.percentile(times, 50)), "query_p99_ms": float(np.percentile(times, 99))}
