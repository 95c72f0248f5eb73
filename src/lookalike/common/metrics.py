"""Ranking and classification metrics, with ties and empty relevance handled explicitly.

Ties: items with equal scores (duplicate photos give identical vectors) have no order, so
every ranking metric here is the *expected* value over all orderings of tied items
(McSherry & Najork, ECIR 2008).  A consequence used by the reports: scoring every item the
same gives exactly the expected metric of a random ranking, the baseline printed beside
each configuration.

Empty relevance: a query with no relevant item has no average precision and no recall;
those are NaN and left out of the means (the report counts such queries).  Precision@k is
still defined (it is 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_KS = (1, 5, 10, 20)
RECALL_LEVELS = np.linspace(0.0, 1.0, 21)


@dataclass
class TieGroups:
    """A ranking cut into groups of equal score, best first."""

    starts: np.ndarray  # position of each group's first item (0-based)
    sizes: np.ndarray
    relevant: np.ndarray  # relevant items per group
    relevant_before: np.ndarray  # relevant items in all earlier groups

    @classmethod
    def of(cls, scores: np.ndarray, relevant: np.ndarray) -> TieGroups:
        order = np.argsort(-scores, kind="stable")
        s = scores[order]
        rel = relevant[order].astype(np.float64)
        n = len(s)
        if n == 0:
            empty = np.zeros(0)
            return cls(empty.astype(int), empty.astype(int), empty, empty)
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        sizes = np.diff(np.r_[starts, n])
        per_group = np.add.reduceat(rel, starts)
        before = np.r_[0.0, np.cumsum(per_group)[:-1]]
        return cls(starts, sizes, per_group, before)

    @property
    def total_relevant(self) -> float:
        return float(self.relevant.sum())

    def expected_hits(self, k: int) -> float:
        """Expected number of relevant items among the first k."""
        if len(self.starts) == 0 or k <= 0:
            return 0.0
        n = int(self.starts[-1] + self.sizes[-1])
        k = min(k, n)
        g = int(np.searchsorted(self.starts, k, side="right") - 1)  # group holding position k-1
        inside = k - self.starts[g]
        return float(self.relevant_before[g] + inside * self.relevant[g] / self.sizes[g])

    def found_within(self, k: int) -> float:
        """Probability that at least one relevant item is among the first k (over tied orderings)."""
        holding = np.flatnonzero(self.relevant > 0)
        if len(holding) == 0 or k <= 0:
            return 0.0
        g = int(holding[0])
        start, size, relevant = int(self.starts[g]), int(self.sizes[g]), int(self.relevant[g])
        slots = k - start
        if slots <= 0:
            return 0.0
        if slots >= size:
            return 1.0
        # none of the `slots` positions drawn from the tie group holds one of its relevant items
        misses = np.prod([(size - relevant - i) / (size - i) for i in range(slots)]) if size - relevant >= slots else 0.0
        return float(1.0 - misses)


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Expected average precision over orderings of tied items; NaN when nothing is relevant."""
    return _average_precision(TieGroups.of(np.asarray(scores, float), np.asarray(relevant, bool)))


def _average_precision(groups: TieGroups) -> float:
    total = groups.total_relevant
    if total == 0:
        return float("nan")
    single = (groups.sizes == 1) & (groups.relevant > 0)
    # An untied relevant item at position p (1-based) with b relevant items before it adds (b+1)/p.
    ap = float(np.sum((groups.relevant_before[single] + 1) / (groups.starts[single] + 1)))
    for g in np.flatnonzero((groups.sizes > 1) & (groups.relevant > 0)):
        start, n, r, before = groups.starts[g], groups.sizes[g], groups.relevant[g], groups.relevant_before[g]
        # Position i (1..n) in a tie group holds a relevant item with probability r/n; given that,
        # the expected number of relevant items up to it is before + 1 + (i-1)(r-1)/(n-1).
        i = np.arange(1, n + 1)
        ap += float(np.sum((r / n) * (before + 1 + (i - 1) * (r - 1) / (n - 1)) / (start + i)))
    return ap / total


def ranking_metrics(scores: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """AP, precision@k, recall@k (share of the relevant items in the first k), found@k (is any
    relevant item in the first k: the exact-product "R@k" of SOP / In-shop benchmarks, where a
    three-listing group whose twin comes first counts 1, not 0.5) and nearest-neighbour accuracy."""
    groups = TieGroups.of(np.asarray(scores, float), np.asarray(relevant, bool))
    total = groups.total_relevant
    out = {"ap": _average_precision(groups), "nn_accuracy": groups.expected_hits(1)}
    for k in ks:
        hits = groups.expected_hits(k)
        out[f"p@{k}"] = hits / k
        out[f"r@{k}"] = hits / total if total else float("nan")
        out[f"found@{k}"] = groups.found_within(k) if total else float("nan")
    return out


def interpolated_precision(scores: np.ndarray, relevant: np.ndarray, levels: np.ndarray = RECALL_LEVELS) -> np.ndarray:
    """Precision at fixed recall levels (max precision at any recall >= level); NaN without relevant items.

    Ties are broken by position here: a PR curve is a picture, not a headline number."""
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    rel = np.asarray(relevant, bool)[order]
    total = rel.sum()
    if total == 0:
        return np.full(len(levels), np.nan)
    hits = np.cumsum(rel)
    precision = hits / np.arange(1, len(rel) + 1)
    recall = hits / total
    best_after = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, levels, side="left")
    return np.where(idx < len(rel), best_after[np.minimum(idx, len(rel) - 1)], 0.0)


@dataclass
class MetricSummary:
    """Mean of a per-query metric with a bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    values: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": self.n}


def bootstrap(values: np.ndarray | list[float], seed: int = 0, n_boot: int = 1000, alpha: float = 0.05) -> MetricSummary:
    """Mean and percentile bootstrap CI (resampling queries); NaNs (undefined queries) are left out."""
    a = np.asarray(values, dtype=np.float64)
    a = a[~np.isnan(a)]
    if len(a) == 0:
        return MetricSummary(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(axis=1) if n_boot > 0 and len(a) > 1 else np.array([a.mean()])
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return MetricSummary(float(a.mean()), float(low), float(high), len(a))


def classification_report(truth: list[str], predicted: list[str | None]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    A missing prediction (None, e.g. below a confidence threshold) counts as wrong."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    pred = ["<none>" if p is None else str(p) for p in predicted]
    truth = [str(t) for t in truth]
    classes = sorted(set(truth))
    precision, recall, f1, support = precision_recall_fscore_support(truth, pred, labels=classes, zero_division=0)
    correct = np.array([t == p for t, p in zip(truth, pred)], dtype=float)
    return {
        "accuracy": float(correct.mean()) if len(correct) else float("nan"),
        "macro_f1": float(np.mean(f1)) if len(f1) else float("nan"),
        "correct": correct.tolist(),
        "classes": classes,
        "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support)},
        "confusion": confusion_matrix(truth, pred, labels=classes).tolist(),
    }
