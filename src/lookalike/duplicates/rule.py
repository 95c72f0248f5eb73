"""The decision "same photo, re-processed" from a pair's :class:`~.compare.PairEvidence`.

A logistic model over the evidence's features, fitted by ``benchmarks/duplicates.py --fit`` on
the training part of a catalogue (synthetic copies of its photos — re-encoded, resized,
cropped, re-exposed — against its own template look-alikes) and shipped as ``default_rule.json``
with its provenance.  A shop can fit its own and pass it (``--rule FILE``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .compare import PairEvidence

FEATURES = ("peak", "log1p lightness median", "log1p lightness p90", "log1p chroma median", "log1p chroma p90")
MAX_RULE_BYTES = 64_000


class RuleError(ValueError):
    """A rule file that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class DuplicateRule:
    weights: tuple[float, ...]
    bias: float
    threshold: float
    provenance: str = ""
    max_colour_shift: float = 3.0  # see colour_shift: beyond this no copy of the fitting part went (with a third to spare)

    def probability(self, evidence: PairEvidence) -> float:
        if not evidence.aligned or colour_shift(evidence) > self.max_colour_shift:
            return 0.0
        score = float(np.dot(self.weights, evidence.features())) + self.bias
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, score))))

    def is_duplicate(self, evidence: PairEvidence) -> bool:
        return self.probability(evidence) >= self.threshold

    def colours_differ(self, evidence: PairEvidence) -> bool:
        """Strong evidence of two variants, not one item: the garments' colours apart before any
        alignment, or moved beyond what the alignment explains.  Grouping never joins such a pair
        through third listings (a poor alignment is no such evidence: a crop may align poorly)."""
        return bool(evidence.screened) or (evidence.aligned and colour_shift(evidence) > self.max_colour_shift)

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(FEATURES), "weights": list(self.weights), "bias": self.bias, "threshold": self.threshold,
                "max_colour_shift": self.max_colour_shift, "provenance": self.provenance}

    @classmethod
    def from_dict(cls, data: Any, source: str) -> DuplicateRule:
        if not isinstance(data, dict):
            raise RuleError(f"{source}: a rule is a JSON object with weights, bias and threshold")
        weights: Any = data.get("weights")
        bias: Any = data.get("bias")
        threshold: Any = data.get("threshold")
        if not isinstance(weights, list) or len(weights) != len(FEATURES) or not all(_finite(w) for w in weights):
            raise RuleError(f"{source}: weights must be {len(FEATURES)} finite numbers ({', '.join(FEATURES)})")
        if not _finite(bias):
            raise RuleError(f"{source}: bias must be a finite number")
        if not _finite(threshold) or not 0.0 < float(threshold) < 1.0:
            raise RuleError(f"{source}: threshold must be a probability strictly between 0 and 1")
        shift: Any = data.get("max_colour_shift", cls.max_colour_shift)
        if not _finite(shift) or float(shift) <= 0:
            raise RuleError(f"{source}: max_colour_shift must be a positive number")
        return cls(tuple(float(w) for w in weights), float(bias), float(threshold), str(data.get("provenance", ""))[:2000], float(shift))

    @classmethod
    def load(cls, path: str | Path | None = None) -> DuplicateRule:
        """The shipped rule, or one from a JSON file."""
        if path is None:
            text = resources.files(__package__).joinpath("default_rule.json").read_text(encoding="utf-8")
            return cls.from_dict(json.loads(text), "the default duplicate rule")
        file = Path(path)
        try:
            if file.stat().st_size > MAX_RULE_BYTES:
                raise RuleError(f"{file}: a rule file is at most {MAX_RULE_BYTES:,} bytes")
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RuleError(f"{file}: cannot read the rule ({exc})") from exc
        return cls.from_dict(data, str(file))


def colour_shift(evidence: PairEvidence) -> float:
    """How far the garment's colour moved beyond what the alignment explains: the chroma residual's
    median over one plus the lightness residual's 90th percentile.  A copy that aligns well keeps
    its colours (a misaligned one differs in both); a recoloured variant aligns perfectly and
    differs in colour only — a linear rule over the residuals cannot express that, this ratio can."""
    return evidence.chroma_median / (1.0 + evidence.lightness_p90)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
