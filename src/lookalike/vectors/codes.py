"""Search over a learned quantiser's compact codes, re-ranked exactly.

A quantised model (``lookalike train quantizer``) encodes each vector as a few bytes.  The
query is scored against every allowed code by ``adc`` (float query) or ``sdc`` (coded query),
and the ``rerank_factor * k`` best are re-scored with the float vectors (``rerank_factor`` 0:
the code scores are the answer).  The codes take the place of the FAISS index.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .base import Neighbours, top_k
from .exact import ExactBackend

CODE_SEARCH_MODES = ("adc", "sdc")


def describe_codes(code_bytes: int, mode: str) -> str:
    """How ``info`` names a codes backend (also said without loading one, from the model file)."""
    return f"{code_bytes}-byte codes, {mode.upper()}"


class Quantizer(Protocol):
    """What the codes backend needs of a quantiser (:class:`lookalike.vectors.quantizer.AdditiveQuantizer`)."""

    codebooks: np.ndarray

    @property
    def bytes_per_code(self) -> int: ...

    def encode(self, vectors: np.ndarray) -> np.ndarray: ...

    def adc_scores(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray: ...

    def sdc_scores(self, query_codes: np.ndarray, codes: np.ndarray) -> np.ndarray: ...


class CodesBackend(ExactBackend):
    """Float vectors for re-ranking plus one code per id for the candidate pass."""

    name = "codes"
    # Codes answer every query, filtered ones on a small catalogue too: a shop that chose codes
    # (and measures them) gets code answers, not an exact scan that hides what the codes lose.
    scan_small_subsets = False

    def __init__(self, dim: int, quantizer: Quantizer, mode: str = "adc", rerank_factor: int = 10):
        super().__init__(dim)
        if quantizer.codebooks.shape[2] != dim:
            raise ValueError(f"codebooks are for {quantizer.codebooks.shape[2]}-d vectors; the index holds {dim}-d")
        self.quantizer = quantizer
        self.rerank_factor = rerank_factor
        self.code_search = "adc"
        self.set_mode(mode)
        self.codes = np.zeros((0, quantizer.bytes_per_code), dtype=np.uint8)

    def set_mode(self, mode: str) -> None:
        if mode not in CODE_SEARCH_MODES:
            raise ValueError(f"code search must be {' or '.join(CODE_SEARCH_MODES)}, got {mode!r}")
        self.code_search = mode

    @property
    def code_bytes(self) -> int:
        return int(self.quantizer.bytes_per_code)

    def _grew(self, capacity: int) -> None:
        codes = np.zeros((capacity, self.codes.shape[1]), dtype=np.uint8)
        kept = min(capacity, len(self.codes))
        codes[:kept] = self.codes[:kept]
        self.codes = codes

    def _per_id_arrays(self) -> dict[str, np.ndarray]:
        return {"codes": self.codes}

    def _restore_per_id(self, arrays: dict[str, np.ndarray]) -> None:
        codes = arrays.get("codes")
        if codes is None or codes.dtype != np.uint8 or codes.shape != (len(self.matrix), self.codes.shape[1]):
            raise ValueError("the saved codes do not fit this quantiser or the saved vectors")
        self.codes = np.array(codes)

    def _store(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        super()._store(ids, vectors)
        self.codes[ids] = self.quantizer.encode(vectors)

    def describe(self) -> str:
        return describe_codes(self.code_bytes, self.code_search)

    def memory_bytes(self) -> int:
        return super().memory_bytes() + int(self.codes.nbytes)

    def _search(self, query: np.ndarray, k: int, mask: np.ndarray, filtered: bool, n_allowed: int) -> Neighbours:
        ids = np.flatnonzero(mask)
        q = self.quantizer
        if self.code_search == "sdc":
            scores = q.sdc_scores(q.encode(query[None]), self.codes[ids])[0]
        else:
            scores = q.adc_scores(query[None], self.codes[ids])[0]
        if self.rerank_factor <= 0:
            order = top_k(scores, k)
            return ids[order], scores[order]
        candidates = ids[top_k(scores, min(len(ids), k * self.rerank_factor))]
        return self._exact_subset(query, candidates, k)
