"""Where vectors live and how they are searched: one protocol, several backends.

* :mod:`.base` — the :class:`VectorBackend` protocol and the :class:`VectorFilter` each backend compiles;
* :mod:`.exact`, :mod:`.faiss_ivf`, :mod:`.codes` — in-memory backends (exact; FAISS IVF with
  exact re-ranking; a learned quantiser's codes with exact re-ranking);
* :mod:`.milvus` — vectors and filter fields in Milvus (Lite or a cluster; ``pip install 'lookalike[milvus]'``),
  imported only when chosen;
* :mod:`.quantizer` — additive codebooks (trained by :mod:`lookalike.training`);
* :mod:`.registry` — backends by name, chosen from settings.
"""

from .base import BackendError, Fields, Neighbours, VectorBackend, VectorFilter, top_k
from .codes import CodesBackend
from .exact import EXACT_SUBSET_MAX, ExactBackend
from .faiss_ivf import FaissBackend, IndexBuildError, IndexSpec, auto_nlist
from .registry import BackendConfig, available_backends, create_backend, register_backend

__all__ = [
    "EXACT_SUBSET_MAX",
    "BackendConfig",
    "BackendError",
    "CodesBackend",
    "ExactBackend",
    "FaissBackend",
    "Fields",
    "IndexBuildError",
    "IndexSpec",
    "Neighbours",
    "VectorBackend",
    "VectorFilter",
    "auto_nlist",
    "available_backends",
    "create_backend",
    "register_backend",
    "top_k",
]
