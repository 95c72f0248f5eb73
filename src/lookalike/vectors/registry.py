"""Backends by name, chosen from settings.

``vector_backend = "auto"`` picks the codes backend for a quantised model (unless
``code_search = "off"``), exact search for ``index = "flat"``, and FAISS otherwise.  A new
backend is one module with a class following :class:`~lookalike.vectors.base.VectorBackend`
and a ``from_config(dim, config, quantizer)`` constructor, registered here by dotted path (so
an optional dependency such as a database client is imported only when the backend is used)
or at run time with :func:`register_backend`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from .base import BackendError, VectorBackend
from .codes import CodesBackend, Quantizer
from .exact import ExactBackend
from .faiss_ivf import FaissBackend, IndexSpec


@dataclass(frozen=True)
class BackendConfig:
    """The settings a backend is built from (a subset of :class:`lookalike.config.Settings`)."""

    backend: str = "auto"
    index: str = "auto"
    ann_threshold: int = 20_000
    nprobe: int = 0  # IVF lists probed per query; 0: automatic (64, or 1 % of the lists when more)
    rerank_factor: int = 10
    threads: int = 1
    code_search: str = "adc"
    milvus_uri: str = ""
    milvus_token: str = ""
    milvus_collection: str = ""
    milvus_index: str = "AUTOINDEX"
    store: str = ""  # the store folder (a relative milvus_uri is inside it)
    model: str = ""  # the encoder identity whose vectors the backend holds (a database backend's collection name)

    @classmethod
    def from_settings(cls, settings: Any, model: str = "") -> BackendConfig:
        return cls(settings.vector_backend, settings.index, settings.ann_threshold, settings.nprobe, settings.rerank_factor,
                   settings.threads, settings.code_search, settings.milvus_uri, settings.milvus_token, settings.milvus_collection,
                   settings.milvus_index, settings.store, model)

    @property
    def index_spec(self) -> IndexSpec:
        return IndexSpec(self.index, self.ann_threshold, self.nprobe, self.rerank_factor)


BackendFactory = Callable[[int, BackendConfig, "Quantizer | None"], VectorBackend]


def _exact(dim: int, config: BackendConfig, quantizer: Quantizer | None) -> VectorBackend:
    return ExactBackend(dim)


def _faiss(dim: int, config: BackendConfig, quantizer: Quantizer | None) -> VectorBackend:
    return FaissBackend(dim, config.index_spec, threads=config.threads)


def _codes(dim: int, config: BackendConfig, quantizer: Quantizer | None) -> VectorBackend:
    if quantizer is None:
        raise BackendError("the codes backend needs a quantised model (lookalike train quantizer)")
    return CodesBackend(dim, quantizer, config.code_search, config.rerank_factor)


_FACTORIES: dict[str, BackendFactory | str] = {"exact": _exact, "faiss": _faiss, "codes": _codes,
                                               "milvus": "lookalike.vectors.milvus:from_config"}


def register_backend(name: str, factory: BackendFactory | str) -> None:
    """Make a backend available by name: a factory, or ``"package.module:function"`` imported on first use."""
    _FACTORIES[name] = factory


def available_backends() -> list[str]:
    return sorted(_FACTORIES)


def choose_backend(config: BackendConfig, quantizer: Quantizer | None) -> str:
    if config.backend != "auto":
        return config.backend
    if quantizer is not None and config.code_search != "off":
        return "codes"
    return "exact" if config.index == "flat" else "faiss"


def create_backend(dim: int, config: BackendConfig, quantizer: Quantizer | None = None) -> VectorBackend:
    """A new, empty backend for ``dim``-dimensional vectors."""
    name = choose_backend(config, quantizer)
    factory = _FACTORIES.get(name)
    if factory is None:
        raise BackendError(f"unknown vector backend {name!r}; available: {', '.join(available_backends())}")
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(module), attribute)
        _FACTORIES[name] = factory
    return factory(dim, config, quantizer)
