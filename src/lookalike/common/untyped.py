"""FAISS typed as ``Any``.

FAISS ships SWIG-generated stubs that do not know the keyword constructors and array overloads
it accepts at run time (``IVFSearchParameters(nprobe=..., sel=...)``, ``remove_ids(array)``), so
type-checking calls against them reports errors that are not there.  Modules import FAISS from
here (lazily where start-up time matters) instead of silencing each call.
"""

from typing import Any

import faiss as _faiss

faiss: Any = _faiss
