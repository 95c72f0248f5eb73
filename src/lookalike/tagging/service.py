"""The tagging capability of one store: its current tagger set, kept loaded, and the calls that apply it.

Loading a tagger set means loading its models (a backbone, the ImageNet head), so the set and
its predictor are cached until a new set is saved; without a trained set the label-free set
(text rules, zero-shot groups) is used, rebuilt when the catalogue changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from ..common.progress import Log, Progress, no_log
from ..config import Settings
from ..ingest import Distributor, make_distributor
from ..search.view import CatalogueView
from ..storage import shown_tags
from .review import LabelReview
from .rules import TextRules
from .tagger import TaggerError, TaggerSet, TagPredictor, TrainOptions, current_tagger_path, load_taggers, retrain_options, train_taggers, untrained_taggers


class TaggingService:
    def __init__(self, view: Callable[[], CatalogueView]):
        self._view = view  # a callable: a re-index swaps the serving model the view reads
        self._taggers: tuple[Path, TaggerSet | None] | None = None
        self._predictor: tuple[Any, TagPredictor] | None = None
        self.review = LabelReview(view, lambda: self.taggers)  # the F1 and contradicted-labels views, label fixes

    @property
    def taggers(self) -> TaggerSet | None:
        """The store's current tagger set; None when never trained."""
        view = self._view()
        path = current_tagger_path(view)
        if path is None:
            return None
        if self._taggers is None or self._taggers[0] != path:
            self._taggers = (path, load_taggers(view, path))
        return self._taggers[1]

    def retrain(self, progress: Progress | None = None, log: Log = no_log) -> TaggerSet:
        """Train again with the current set's options, on the labels as they are now (after review)."""
        current = self.taggers
        if current is None:
            raise TaggerError("no trained taggers to retrain: run `lookalike tag train` first")
        return self.train(retrain_options(current.report), progress, log)

    def train(self, options: TrainOptions, progress: Progress | None = None, log: Log = no_log, save: bool = True) -> TaggerSet:
        """Train taggers from the catalogue's labelled columns; saved as the store's next version."""
        view = self._view()
        taggers = train_taggers(view, options, progress=progress, log=log)
        if save:
            taggers.save(view)
        return taggers

    def predictor(self, taggers: TaggerSet | None = None) -> TagPredictor:
        """The predictor of ``taggers`` (default: the current set, else the label-free set)."""
        view = self._view()
        if taggers is not None:
            return TagPredictor(view.settings, taggers)
        current = self.taggers
        key = current if current is not None else ("untrained", view.store.generation)  # sets compare by identity
        if self._predictor is None or self._predictor[0] != key:
            self._predictor = (key, TagPredictor(view.settings, current or untrained_taggers(view)))
        return self._predictor[1]

    def tag(self, only_untagged: bool = False, threshold: float | None = None, rules: TextRules | None = None,
            progress: Progress | None = None, taggers: TaggerSet | None = None) -> int:
        """Write predicted tags for every product (or those without tags); returns how many were tagged."""
        view = self._view()
        rowids = view.store.untagged_rowids() if only_untagged else view.matching_rowids().tolist()
        return self.predictor(taggers).predict_rowids(view, rowids, threshold=threshold, rules=rules, progress=progress,
                                                      distributor=_distributor(view.settings))

    def coverage(self) -> dict[str, dict[str, int]]:
        """Per tag column, how many products show a tag and how many the tagger was unsure of (no tag
        shown; their likeliest values are kept for text search): where a shop's labels are thin."""
        counts: dict[str, dict[str, int]] = {}
        for tags in self._view().store.all_tags().values():
            shown = shown_tags(tags)
            for column, tag in tags.items():
                if column in shown or (isinstance(tag, dict) and tag.get("value") is None):
                    counts.setdefault(str(column), {"shown": 0, "unsure": 0})["shown" if column in shown else "unsure"] += 1
        return dict(sorted(counts.items()))

    def tag_picture(self, picture: Image.Image, vector: np.ndarray, text: str = "", threshold: float | None = None) -> dict[str, dict[str, Any]]:
        """Tags for an uploaded photo (and optional title), without storing anything."""
        return self.predictor().predict_picture(picture, vector, text, threshold)

    def auto_tag(self) -> None:
        """Once taggers exist, ingest tags what it added or changed (not with taggers of an
        encoder the store no longer serves: those need retraining, which ``tag info`` says)."""
        try:
            taggers = self.taggers
        except TaggerError:
            return
        if taggers is not None:
            self.tag(only_untagged=True)

    def load_file(self, path: str | Path) -> TaggerSet:
        """A tagger set from a file anywhere (trained in another store), checked against this store's encoder."""
        taggers = load_taggers(self._view(), path)
        if taggers is None:
            raise TaggerError(f"{path} holds no tagger set")
        return taggers


def _distributor(settings: Settings) -> Distributor | None:
    """Tagging runs in this process, its models loaded once, unless a process pool or Ray is configured
    (``distributor``, or ``--distributor`` on ``tag predict``): then on their workers."""
    if settings.distributor in ("threads", "serial"):
        return None
    return make_distributor(settings.distributor, settings.distributor_workers, settings.max_downloads, settings.ray_address)
