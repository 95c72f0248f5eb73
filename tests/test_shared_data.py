"""Real catalogue photos from ../shared/data: duplicates and same-type neighbours."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from lookalike import Engine

from .conftest import SHARED, requires_shared

pytestmark = requires_shared


@pytest.fixture(scope="module")
def myntra_engine(tmp_path_factory):
    """Every listing in a duplicate pair plus an even sample of the rest (about 700 products)."""
    labels = list(csv.DictReader((SHARED / "myntra" / "labels.csv").open()))
    known = {r["item_id"] for r in labels}
    pairs = [p for p in csv.DictReader((SHARED / "myntra" / "duplicate_pairs.csv").open())
             if p["item_id_a"] in known and p["item_id_b"] in known]  # the pairs file also names listings kept aside
    in_pairs = {p["item_id_a"] for p in pairs} | {p["item_id_b"] for p in pairs}
    rows = [r for i, r in enumerate(labels) if r["item_id"] in in_pairs or i % 11 == 0]
    subset = tmp_path_factory.mktemp("myntra") / "subset.csv"
    with subset.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "image_file": str(SHARED / "myntra" / r["image_file"])} for r in rows)
    engine = Engine.open(tmp_path_factory.mktemp("myntra-store"))
    report = engine.ingest(subset)
    assert report.added == len(rows) and not report.skipped
    yield engine, pairs
    engine.close()


def test_duplicate_listings_find_their_twin_first(myntra_engine):
    engine, pairs = myntra_engine
    group_of: dict[str, set[str]] = {}
    for p in pairs:
        if p["relation"] == "identical_image":
            group = group_of.setdefault(p["duplicate_group"], set())
            group |= {p["item_id_a"], p["item_id_b"]}
    found = total = 0
    for members in group_of.values():
        for item in members:
            total += 1
            found += engine.similar(item, k=1)[0].id in members
    assert total > 20 and found / total >= 0.95


def test_hard_negatives_score_below_true_duplicates(myntra_engine):
    engine, pairs = myntra_engine

    def score(a: str, b: str) -> float:
        va, vb = (engine.index.vector(engine.get(x).rowid) for x in (a, b))
        return float(va @ vb)

    duplicates = [score(p["item_id_a"], p["item_id_b"]) for p in pairs if p["relation"] == "identical_image"]
    templates = [score(p["item_id_a"], p["item_id_b"]) for p in pairs if p["relation"] == "same_photo_template_different_variant"]
    assert min(duplicates) > 0.999
    if templates:
        assert sorted(templates)[len(templates) // 2] < min(duplicates)


def test_nearest_neighbour_is_usually_the_same_article_type(myntra_engine):
    engine, _ = myntra_engine
    ids = [p.id for p in engine.store.page(0, 10_000)]
    same = 0
    for item in ids:
        hit = engine.similar(item, k=1)[0]
        same += hit.metadata["article_type"] == engine.get(item).metadata["article_type"]
    majority = Counter(engine.get(i).metadata["article_type"] for i in ids).most_common(1)[0][1] / len(ids)
    accuracy = same / len(ids)
    assert accuracy >= 0.75 and accuracy > 3 * majority  # far above guessing the commonest type
