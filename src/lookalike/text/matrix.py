"""One unit vector per product row, kept as int8 codes with a per-row scale, scored by ONNX Runtime.

Text search scores every product twice per query (its title's sentence vector, its photo in the
bridge's shared space): at 100K products, 100K × 384 and 100K × 256 numbers read per query.
Kept as 7-bit integers with one scale per row (the row's largest magnitude over 63), a cosine is
off by at most 0.0043 (mean 0.0007) on the Myntra titles, and the top ten of 200 queries agree
0.964 with float32 scoring, as closely as the bfloat16 matrices before them did (0.960).  Why 7
bits and not 8: without VNNI, ORT's uint8 × int8 kernel adds pairs of products in 16 bits, which
saturate at 255 × 127 × 2 (errors of 0.025 measured on 2 cores here); 255 × 63 × 2 fits.  ONNX Runtime's
integer matrix product reads them about twice as fast as torch's bfloat16 matrix-vector kernel (100K × 384 on 2 cores: 4.0 ms against 7.3 ms, measured 2026-12-06),
takes no BLAS threads that would be left spinning, and needs no torch at serving time.

The codes are stored column-major (dimensions × rows) because ORT's kernel streams its right-hand
operand: the query (one row) on the left, the matrix as given, no copy per query.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..common.runtime import cpu_session

ZERO_POINT = 128  # the query is coded as uint8 around this zero point (the kernel pairs uint8 with int8)
ROW_LIMIT = 63  # stored codes lie in [-63, 63]: pairs of products cannot saturate a 16-bit sum (see above)
QUERY_LIMIT = 127

_session: Any = None
_session_lock = threading.Lock()


def _product_session() -> Any:
    """The process's one ONNX graph: MatMulInteger(query uint8 (1 × d), codes int8 (d × n)) -> int32 (1 × n)."""
    global _session
    with _session_lock:
        if _session is None:
            from onnx import TensorProto, helper

            inputs = [helper.make_tensor_value_info("query", TensorProto.UINT8, [1, "dim"]),
                      helper.make_tensor_value_info("codes", TensorProto.INT8, ["dim", "rows"]),
                      helper.make_tensor_value_info("zero", TensorProto.UINT8, [])]
            output = helper.make_tensor_value_info("dots", TensorProto.INT32, [1, "rows"])
            graph = helper.make_graph([helper.make_node("MatMulInteger", ["query", "codes", "zero"], ["dots"])], "int8_scores", inputs, [output])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            # Not spinning: idle ORT threads would steal the core from the sentence encoder and NumPy work around each query.
            _session = cpu_session(model.SerializeToString(), 2, spin=False)
        return _session


def quantise(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float rows -> (int8 codes, per-row scales); a zero row gets scale 0 and scores 0, and a
    non-finite number counts as 0."""
    rows = np.asarray(rows, np.float32)
    rows = np.where(np.isfinite(rows), rows, 0).astype(np.float32)  # a damaged vector must not code outside ±ROW_LIMIT
    peak = np.abs(rows).max(axis=1) if rows.shape[1] else np.zeros(len(rows), np.float32)
    scales = (peak / ROW_LIMIT).astype(np.float32)
    safe = np.where(scales > 0, scales, 1)[:, None]
    return np.clip(np.rint(rows / safe), -ROW_LIMIT, ROW_LIMIT).astype(np.int8), scales


class Int8Rows:
    """Per-rowid vectors of one dimension; rows never written hold zeros (and score 0)."""

    def __init__(self, dim: int, capacity: int = 0):
        self.codes = np.zeros((dim, capacity), np.int8)
        self.scales = np.zeros(capacity, np.float32)

    @property
    def dim(self) -> int:
        return int(self.codes.shape[0])

    @property
    def capacity(self) -> int:
        return int(self.codes.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.scales.nbytes)

    def grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        if extra > 0:
            self.codes = np.concatenate([self.codes, np.zeros((self.dim, extra), np.int8)], axis=1)
            self.scales = np.concatenate([self.scales, np.zeros(extra, np.float32)])

    def set(self, rowids: Any, vectors: np.ndarray) -> None:
        codes, scales = quantise(vectors)
        self.codes[:, rowids] = codes.T
        self.scales[rowids] = scales

    def get(self, rowids: Any) -> np.ndarray:
        """The stored vectors of ``rowids`` as float32 (rows × dim), as quantised."""
        return (self.codes[:, rowids].T.astype(np.float32) * self.scales[rowids][:, None]).astype(np.float32)

    def scores(self, query: np.ndarray) -> np.ndarray:
        """Dot product of ``query`` with every row (float32, one per rowid)."""
        if not self.capacity or not self.dim:
            return np.zeros(self.capacity, np.float32)
        query = np.asarray(query, np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise ValueError(f"query has {query.shape[0]} dimensions, the rows {self.dim}")
        peak = float(np.abs(query).max())
        if peak == 0 or not np.isfinite(peak):
            return np.zeros(self.capacity, np.float32)
        step = peak / QUERY_LIMIT
        coded = (np.clip(np.rint(query / step), -QUERY_LIMIT, QUERY_LIMIT) + ZERO_POINT).astype(np.uint8)[None]
        (dots,) = _product_session().run(None, {"query": coded, "codes": self.codes, "zero": np.array(ZERO_POINT, np.uint8)})
        return dots[0].astype(np.float32) * (self.scales * np.float32(step))
