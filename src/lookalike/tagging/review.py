"""Label review: where the taggers and the shop's labels disagree, and fixing the labels.

GILT's workflow: look at each class's precision and recall (the F1 view), then at the products
whose label the taggers confidently contradict (the false-negatives view), accept the prediction
or type the right value, and retrain.  The taggers' out-of-fold report holds both views; a change
is written to the product's metadata and to a change log (who, when, the old value) in one
transaction, and the next ``tag train`` learns from the fixed labels.
"""

from __future__ import annotations

import csv
import io
import time
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable

from ..search.view import CatalogueView
from .tagger import TaggerError, TaggerSet

MAX_VALUE = 200
MAX_WHO = 100


class LabelError(ValueError):
    """A label change that cannot be made; the message names the product, column or value and why."""


@dataclass(frozen=True)
class ColumnReview:
    column: str
    per_class: list[dict[str, Any]]       # precision, recall, F1, support per class (out of fold), worst F1 first
    items: list[dict[str, Any]]           # contradicted labels: id, current (now), labelled (at training), predicted, confidence, fixed
    accuracy: float | None
    macro_f1: float | None


def checked_value(value: str) -> str:
    text = unicodedata.normalize("NFC", str(value)).strip()
    if not text or len(text) > MAX_VALUE:
        raise LabelError(f"label value {text[:80]!r}: must be 1..{MAX_VALUE} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text):
        raise LabelError(f"label value {text[:80]!r}: control and format characters are not allowed")
    return text


class LabelReview:
    """The review views of the current tagger set, and label changes against the store."""

    def __init__(self, view: Callable[[], CatalogueView], taggers: Callable[[], TaggerSet | None]):
        self._view, self._taggers = view, taggers

    def columns(self) -> list[str]:
        taggers = self._taggers()
        return sorted(taggers.report.get("columns", {})) if taggers is not None else []

    def column(self, column: str, limit: int = 200) -> ColumnReview:
        """The F1 view and the contradicted labels of one labelled column, as the store has them now."""
        taggers = self._require()
        report = taggers.report.get("columns", {}).get(column)
        if report is None:
            raise LabelError(f"no tagger was trained on column {column[:80]!r}; reviewed columns: {', '.join(self.columns()) or 'none'}")
        rows = taggers.review(column)[:limit]
        products = {p.id: p for p in (self._view().store.get(r["id"]) for r in rows) if p is not None}
        items = []
        for row in rows:
            product = products.get(row["id"])
            if product is None:
                continue  # deleted since training
            now = product.metadata.get(column)
            items.append({**row, "labelled": row["current"], "current": None if now is None else str(now),
                          "fixed": None if now is None else str(now) != row["current"]})
        scores = report.get("all_evidence", {})
        return ColumnReview(column, sorted(report.get("per_class", []), key=lambda c: (c["f1"], -c["support"])), items,
                            scores.get("accuracy"), scores.get("macro_f1"))

    def relabel(self, product_id: str, column: str, value: str, who: str) -> dict[str, Any]:
        """Set a reviewed column's value on one product; recorded with who and when."""
        if column not in self.columns():
            raise LabelError(f"column {column[:80]!r} is not reviewed here; reviewed columns: {', '.join(self.columns()) or 'none'}")
        text, author = checked_value(value), (str(who).strip() or "anonymous")[:MAX_WHO]
        try:
            old = self._view().store.relabel(str(product_id), column, text, author)
        except KeyError:
            raise LabelError(f"no product with id {str(product_id)[:80]!r}") from None
        return {"id": product_id, "column": column, "old": old, "new": text, "who": author}

    def changes(self, limit: int = 100_000) -> list[dict[str, Any]]:
        return self._view().store.label_changes(limit)

    def _require(self) -> TaggerSet:
        taggers = self._taggers()
        if taggers is None:
            raise TaggerError("no trained taggers in this store: label review compares labels with a trained tagger set; run `lookalike tag train`")
        return taggers


def changes_csv(changes: list[dict[str, Any]]) -> str:
    """The change log as CSV (times in UTC, ISO 8601), for the shop's own records."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["change", "id", "column", "old", "new", "who", "at"])
    for change in changes:
        writer.writerow([change["change"], change["id"], change["column"], change["old"] or "", change["new"], change["who"],
                         time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(change["at"]))])
    return buffer.getvalue()
