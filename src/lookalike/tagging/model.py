"""One tagger per catalogue column: several experts, fused by weights learned out of fold.

Each *expert* is a class-weighted logistic regression on one kind of evidence:

- ``image``: the store's embedding plus the tagger backbone's features of the thumbnail;
- ``colour``: the garment-pixel colour descriptor (:mod:`lookalike.common.colour`);
- ``text``: TF-IDF (word and character n-grams) or MiniLM vectors of title/description.

The fused score of a class is ``Σ w_e · log p_e(class)`` over the experts that have evidence
for the product, soft-maxed.  The weights are fitted by minimising log-loss on out-of-fold
predictions (every labelled product scored by experts that never saw it), which also makes the
confidences honest: a product tagged at 0.9 is right about nine times in ten.  A second set
of weights covers products without text, so an untitled upload is tagged from its image alone.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

# scikit-learn and scipy load when a tagger is used, not with the package (``lookalike get`` starts fast)

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

IMAGE, COLOUR, TEXT = "image", "colour", "text"
EXPERTS = (IMAGE, COLOUR, TEXT)
_EPS = 1e-6


@dataclass
class Evidence:
    """Feature blocks for n products. ``text`` entries may be empty strings (no text)."""

    image: np.ndarray
    colour: np.ndarray
    text: list[str]
    text_vectors: np.ndarray | None = None  # MiniLM sentence vectors when the text model is "minilm"

    def __len__(self) -> int:
        return len(self.image)

    def subset(self, index: np.ndarray) -> Evidence:
        return Evidence(self.image[index], self.colour[index], [self.text[i] for i in index],
                        None if self.text_vectors is None else self.text_vectors[index])

    def has_text(self) -> np.ndarray:
        return np.array([bool(t.strip()) for t in self.text])


def class_weights(labels: np.ndarray, power: float) -> np.ndarray:
    """Per-sample weights ∝ (class count)^-power, mean 1: 0 ignores imbalance, 1 fully balances.

    The default 0.5 lifts rare classes (better macro-F1) without giving up the accuracy that
    full balancing costs on a catalogue where a few classes dominate."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    weights = counts[inverse].astype(np.float64) ** -power
    return weights * (len(weights) / weights.sum())


class Expert:
    """A logistic regression on one evidence block, returning log-probabilities over ``classes``."""

    def __init__(self, kind: str, classes: np.ndarray, C: float, weight_power: float, text_model: str = "tfidf"):
        self.kind, self.classes, self.C, self.weight_power, self.text_model = kind, classes, C, weight_power, text_model
        self.transform: Any = None
        self.model: LogisticRegression | None = None

    def _features(self, evidence: Evidence, fit: bool) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import FeatureUnion
        from sklearn.preprocessing import StandardScaler

        if self.kind == IMAGE:
            return evidence.image
        if self.kind == COLOUR:
            if fit:
                self.transform = StandardScaler().fit(evidence.colour)
            return self.transform.transform(evidence.colour)
        if self.text_model == "minilm":
            return evidence.text_vectors
        if fit:
            self.transform = FeatureUnion([
                ("words", TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, lowercase=True)),
                ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True, max_features=50_000)),
            ]).fit(evidence.text)
        return self.transform.transform(evidence.text)

    def fit(self, evidence: Evidence, labels: np.ndarray) -> Expert:
        from sklearn.linear_model import LogisticRegression

        X = self._features(evidence, fit=True)
        self.model = LogisticRegression(C=self.C, max_iter=2000, tol=1e-3)
        self.model.fit(X, labels, sample_weight=class_weights(labels, self.weight_power))
        return self

    def log_proba(self, evidence: Evidence) -> np.ndarray:
        """(n, len(classes)) log-probabilities; classes unseen by this expert get a floor."""
        assert self.model is not None
        out = np.full((len(evidence), len(self.classes)), np.log(_EPS))
        if len(evidence) == 0:
            return out
        proba = self.model.predict_proba(self._features(evidence, fit=False))
        columns = np.searchsorted(self.classes, self.model.classes_)
        out[:, columns] = np.log(np.clip(proba, _EPS, 1.0))
        from scipy.special import logsumexp

        return out - logsumexp(out, axis=1, keepdims=True)


def fuse(log_probas: dict[str, np.ndarray], weights: dict[str, float], present: dict[str, np.ndarray]) -> np.ndarray:
    """Weighted sum of expert log-probabilities (experts without evidence left out), soft-maxed."""
    n, k = next(iter(log_probas.values())).shape
    total = np.zeros((n, k))
    for name, lp in log_probas.items():
        w = weights.get(name, 0.0)
        if w:
            total += w * lp * present[name][:, None]
    from scipy.special import logsumexp

    return np.exp(total - logsumexp(total, axis=1, keepdims=True))


def fit_weights(log_probas: dict[str, np.ndarray], present: dict[str, np.ndarray], target: np.ndarray) -> dict[str, float]:
    """Non-negative fusion weights minimising log-loss of the fused prediction (temperature included)."""
    names = list(log_probas)

    from scipy.optimize import minimize

    def loss(w: np.ndarray) -> float:
        p = fuse(log_probas, dict(zip(names, w)), present)
        return float(-np.mean(np.log(np.clip(p[np.arange(len(target)), target], 1e-12, 1.0))))

    start = np.ones(len(names))
    result = minimize(loss, start, method="L-BFGS-B", bounds=[(0.0, 5.0)] * len(names))
    return {n: round(float(w), 4) for n, w in zip(names, result.x)}


@dataclass
class CrossFit:
    """Out-of-fold results of training: fused probabilities for every labelled product."""

    classes: np.ndarray
    target: np.ndarray            # class index of each labelled product
    proba: np.ndarray             # out-of-fold fused probabilities, all evidence
    proba_image_only: np.ndarray  # out-of-fold fused probabilities, text withheld
    expert_accuracy: dict[str, float] = field(default_factory=dict)


class ColumnTagger:
    """Predicts one column's value (or a hierarchy path) from image, colour and text evidence."""

    def __init__(self, column: str, experts: tuple[str, ...] = EXPERTS, C: dict[str, float] | None = None,
                 weight_power: float = 0.5, text_model: str = "tfidf", folds: int = 3, seed: int = 0):
        self.column = column
        self.expert_names = tuple(experts)
        self.C = {IMAGE: 10.0, COLOUR: 1.0, TEXT: 10.0, **(C or {})}
        self.weight_power, self.text_model, self.folds, self.seed = weight_power, text_model, folds, seed
        self.classes: np.ndarray = np.array([])
        self.experts: dict[str, Expert] = {}
        self.weights: dict[str, float] = {}
        self.weights_image_only: dict[str, float] = {}

    def _present(self, evidence: Evidence) -> dict[str, np.ndarray]:
        n = len(evidence)
        has_text = evidence.has_text() if TEXT in self.expert_names else np.zeros(n, bool)
        return {IMAGE: np.ones(n, bool), COLOUR: np.ones(n, bool), TEXT: has_text}

    def _active(self, evidence: Evidence) -> tuple[str, ...]:
        """Experts worth training: text only when some products have text."""
        return tuple(e for e in self.expert_names if e != TEXT or evidence.has_text().sum() >= 2)

    def _fit_experts(self, evidence: Evidence, labels: np.ndarray) -> dict[str, Expert]:
        experts = {}
        for name in self._active(evidence):
            subset = evidence
            if name == TEXT:  # the text expert learns only from products that have text
                keep = np.flatnonzero(evidence.has_text())
                subset, sub_labels = evidence.subset(keep), labels[keep]
            else:
                sub_labels = labels
            experts[name] = Expert(name, self.classes, self.C[name], self.weight_power, self.text_model).fit(subset, sub_labels)
        return experts

    def fit(self, evidence: Evidence, labels: np.ndarray, progress: Callable[[str], None] = lambda _: None) -> CrossFit:
        from sklearn.model_selection import StratifiedKFold

        """Cross-fit (out-of-fold scores, fusion weights), then fit the final experts on everything."""
        labels = np.asarray(labels, dtype=object).astype(str)
        self.classes = np.unique(labels)
        target = np.searchsorted(self.classes, labels)
        active = self._active(evidence)
        oof = {name: np.zeros((len(labels), len(self.classes))) for name in active}
        counts = np.bincount(target)
        folds = max(2, min(self.folds, int(counts.max())))
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.seed)
        with warnings.catch_warnings():
            # A class with fewer members than folds is missing from some folds' tests; each of its
            # members is still held out exactly once, which is all out-of-fold scoring needs.
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            splits = list(splitter.split(np.zeros(len(labels)), target))
        for number, (train, test) in enumerate(splits, start=1):
            progress(f"{self.column}: fold {number}/{folds}")
            for name, expert in self._fit_experts(evidence.subset(train), labels[train]).items():
                oof[name][test] = expert.log_proba(evidence.subset(test))
        present = self._present(evidence)
        self.weights = fit_weights(oof, present, target)
        image_only = {k: v for k, v in oof.items() if k != TEXT}
        self.weights_image_only = fit_weights(image_only, present, target)
        progress(f"{self.column}: final fit on {len(labels)} products")
        self.experts = self._fit_experts(evidence, labels)
        return CrossFit(
            classes=self.classes, target=target,
            proba=fuse(oof, self.weights, present),
            proba_image_only=fuse(image_only, self.weights_image_only, present),
            expert_accuracy={name: float((lp.argmax(1) == target)[present[name]].mean()) if present[name].any() else float("nan")
                             for name, lp in oof.items()},
        )

    def predict_proba(self, evidence: Evidence) -> tuple[np.ndarray, list[str]]:
        """Fused probabilities (n, classes) and, per product, the evidence that went into it."""
        present = self._present(evidence)
        log_probas = {name: expert.log_proba(evidence) for name, expert in self.experts.items()}
        with_text = present[TEXT] & (TEXT in log_probas)
        proba = np.zeros((len(evidence), len(self.classes)))
        if with_text.any():
            proba[with_text] = fuse({k: v[with_text] for k, v in log_probas.items()}, self.weights,
                                    {k: v[with_text] for k, v in present.items()})
        if (~with_text).any():
            rest = {k: v[~with_text] for k, v in log_probas.items() if k != TEXT}
            proba[~with_text] = fuse(rest, self.weights_image_only, {k: v[~with_text] for k, v in present.items()})
        sources = []
        for has in with_text:
            weights = self.weights if has else self.weights_image_only
            used = [e for e in log_probas if weights.get(e, 0) > 0.05 and (e != TEXT or has)]
            sources.append("+".join(used) or "image")
        return proba, sources
