"""Calibration ranges kept with a model, so its INT8 graph is the same on every machine.

Static quantisation measures each activation's range by running the float graph over the
calibration photos.  Float convolutions sum in another order on CPUs with and without AVX-512,
so those ranges differ in their last bits from one machine to the next, and so do the scales
derived from them.  That is enough to move the garment finder's held-out figures: ranges nudged
by one part in a million (seeded signs, three seeds) moved box recall by up to two boxes per
group (dresses 16-18 of 35, bags 34-36 of 74).  A graph quantised from stored ranges instead is
byte for byte the one the figures were measured with, on any CPU, as long as ONNX Runtime and the
pre-processed float graph are the same; the ranges name the SHA-256 of that graph and are used
only for it.

ONNX Runtime reads and writes its own calibration cache (``quantize_static``'s
``calibration_cache_path``, ONNX Runtime 1.27 and later); this module converts between that cache
and a small, checked JSON file (at most :data:`MAX_BYTES`, finite ranges only), so a damaged or
edited file is refused with a reason instead of quantising a graph into noise.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..common.folders import replace_atomically
from .artefacts import ModelError

FORMAT = 1
MAX_BYTES = 2_000_000
MAX_TENSORS = 20_000
MAX_MAGNITUDE = 1e6  # an activation range beyond this is no calibration of an image model


def cache_supported() -> bool:
    """Whether this ONNX Runtime's ``quantize_static`` takes a calibration cache (1.27 and later)."""
    try:
        from onnxruntime.quantization import quantize_static
        from onnxruntime.quantization.calibrate import load_tensors_data, save_tensors_data  # noqa: F401
    except ImportError:
        return False
    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


@dataclass(frozen=True)
class CalibrationRanges:
    """Each calibrated tensor's (lowest, highest) value, for the pre-processed float graph whose
    SHA-256 is ``graph_sha256``."""

    graph_sha256: str
    ranges: dict[str, tuple[float, float]]

    def save(self, path: Path) -> None:
        """Write atomically (a reader never sees half a file), readable like the graph beside it."""
        payload = {"format": FORMAT, "graph_sha256": self.graph_sha256, "method": "MinMax",
                   "ranges": {name: [low, high] for name, (low, high) in sorted(self.ranges.items())}}

        def write(staged: Path) -> None:
            staged.write_text(json.dumps(payload))
            staged.chmod(0o644)  # the temporary file is private

        replace_atomically(path, write)

    @classmethod
    def load(cls, path: Path) -> CalibrationRanges:
        """Read and check a ranges file; a damaged, oversized or foreign one raises ModelError."""
        try:
            size = path.stat().st_size
            if size > MAX_BYTES:
                raise ModelError(f"calibration ranges {path}: {size:,} bytes, more than {MAX_BYTES:,}")
            payload = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"calibration ranges {path} cannot be read ({type(exc).__name__}: {exc})") from exc
        return cls.from_dict(payload, str(path))

    @classmethod
    def from_dict(cls, payload: Any, where: str) -> CalibrationRanges:
        if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("method") != "MinMax":
            raise ModelError(f"calibration ranges {where}: not a format-{FORMAT} MinMax ranges file")
        digest, ranges = payload.get("graph_sha256"), payload.get("ranges")
        if not isinstance(digest, str) or len(digest) != 64 or not isinstance(ranges, dict) or not 0 < len(ranges) <= MAX_TENSORS:
            raise ModelError(f"calibration ranges {where}: no graph digest or no ranges (at most {MAX_TENSORS:,})")
        checked: dict[str, tuple[float, float]] = {}
        for name, pair in ranges.items():
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)):
                raise ModelError(f"calibration ranges {where}: tensor {str(name)[:80]!r} has no (lowest, highest) pair")
            low, high = float(pair[0]), float(pair[1])
            if not (math.isfinite(low) and math.isfinite(high) and -MAX_MAGNITUDE <= low <= high <= MAX_MAGNITUDE):
                raise ModelError(f"calibration ranges {where}: tensor {str(name)[:80]!r} has the range ({low}, {high})")
            checked[str(name)] = (low, high)
        return cls(digest, checked)

    def write_ort_cache(self, path: Path) -> None:
        """ONNX Runtime's own calibration cache holding these ranges (float32, as it calibrates)."""
        from onnxruntime.quantization import CalibrationMethod
        from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

        data = {name: TensorData(lowest=np.float32(low), highest=np.float32(high)) for name, (low, high) in self.ranges.items()}
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)

    @classmethod
    def read_ort_cache(cls, path: Path, graph_sha256: str) -> CalibrationRanges:
        """The ranges ONNX Runtime calibrated and cached at ``path`` (float32 values, kept exactly)."""
        from onnxruntime.quantization.calibrate import load_tensors_data

        ranges: dict[str, tuple[float, float]] = {}
        for name, value in load_tensors_data(path).data.items():
            low, high = (np.asarray(v) for v in value.range_value)
            if low.size != 1 or high.size != 1:
                raise ModelError(f"calibration of {name!r} is not one range per tensor; ranges are kept only for MinMax per tensor")
            ranges[name] = (float(low.reshape(())), float(high.reshape(())))
        return cls(graph_sha256, ranges)
