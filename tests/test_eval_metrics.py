"""Every ranking and classification metric against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from lookalike.common.metrics import average_precision, bootstrap, classification_report, interpolated_precision, ranking_metrics


def test_plain_ranking():
    m = ranking_metrics(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
    assert m["ap"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert m["nn_accuracy"] == 1.0 and m["p@1"] == 1.0
    assert m["p@5"] == pytest.approx(2 / 5)  # fewer than k candidates: the missing ranks count as misses
    assert m["r@1"] == pytest.approx(0.5) and m["r@5"] == pytest.approx(1.0)


def test_order_of_input_does_not_matter():
    scores, rel = np.array([0.1, 0.9, 0.5, 0.7]), np.array([0, 1, 0, 1])
    perm = np.array([2, 0, 3, 1])
    assert ranking_metrics(scores, rel) == ranking_metrics(scores[perm], rel[perm])


def test_two_way_tie_is_the_mean_of_both_orders():
    # relevant first: AP 1; relevant second: AP 1/2
    assert average_precision(np.array([1.0, 1.0]), np.array([1, 0])) == pytest.approx(0.75)
    assert ranking_metrics(np.array([1.0, 1.0]), np.array([1, 0]))["nn_accuracy"] == pytest.approx(0.5)


def test_three_way_tie_with_two_relevant():
    # the non-relevant item at position 3, 2 or 1: AP 1, (1 + 2/3)/2, (1/2 + 2/3)/2
    expected = (1 + (1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 3
    assert average_precision(np.ones(3), np.array([1, 1, 0])) == pytest.approx(expected)


def test_tie_after_a_prefix():
    # [rel] then a tie of {rel, not}: AP = (1 + E[precision of the second relevant]) / 2
    # second relevant at position 2 (p=1/2): precision 1; at position 3: 2/3
    expected = (1 + 0.5 * 1 + 0.5 * 2 / 3) / 2
    assert average_precision(np.array([2.0, 1.0, 1.0]), np.array([1, 1, 0])) == pytest.approx(expected)


def test_tie_straddling_the_cutoff():
    m = ranking_metrics(np.array([3.0, 2.0, 2.0, 1.0]), np.array([0, 1, 0, 1]), ks=(1, 2, 3))
    assert m["p@1"] == 0.0
    assert m["p@2"] == pytest.approx(0.5 / 2)  # one of two tied slots, half of them relevant
    assert m["p@3"] == pytest.approx(1 / 3)
    assert m["r@2"] == pytest.approx(0.25)


def test_all_tied_equals_the_random_baseline():
    # one relevant among four, random order: AP is 1/position averaged over positions
    assert average_precision(np.zeros(4), np.array([0, 0, 1, 0])) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert ranking_metrics(np.zeros(4), np.array([0, 1, 1, 0]), ks=(1,))["nn_accuracy"] == pytest.approx(0.5)


def test_empty_relevance():
    m = ranking_metrics(np.array([0.3, 0.2]), np.array([0, 0]), ks=(1,))
    assert math.isnan(m["ap"]) and math.isnan(m["r@1"])
    assert m["p@1"] == 0.0 and m["nn_accuracy"] == 0.0
    assert np.isnan(interpolated_precision(np.array([0.3]), np.array([0]))).all()


def test_agrees_with_scikit_learn_without_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores, rel = rng.random(50), rng.random(50) < 0.3
        if rel.any():
            assert average_precision(scores, rel) == pytest.approx(average_precision_score(rel, scores))


def test_interpolated_precision():
    levels = np.array([0.0, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(interpolated_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1]), levels), [1, 1, 2 / 3, 2 / 3])
    np.testing.assert_allclose(interpolated_precision(np.array([0.9, 0.8, 0.7]), np.array([0, 1, 1]), levels), [2 / 3] * 4)


def test_bootstrap_is_seeded_and_skips_undefined_queries():
    values = [1.0, 0.0, 1.0, float("nan"), 1.0]
    a, b = bootstrap(values, seed=3), bootstrap(values, seed=3)
    assert (a.mean, a.low, a.high, a.n) == (b.mean, b.low, b.high, b.n) == (0.75, a.low, a.high, 4)
    assert 0.0 <= a.low <= a.mean <= a.high <= 1.0
    assert math.isnan(bootstrap([float("nan")]).mean)
    constant = bootstrap([0.5] * 10)
    assert constant.low == constant.high == 0.5


def test_classification_report_by_hand():
    r = classification_report(["a", "a", "b", "b"], ["a", "b", "b", None])
    assert r["accuracy"] == pytest.approx(0.5)
    assert r["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert r["per_class"]["b"]["precision"] == pytest.approx(0.5) and r["per_class"]["b"]["recall"] == pytest.approx(0.5)
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert r["confusion"] == [[1, 1], [0, 1]]  # the missing prediction is in no column


def test_found_at_k_counts_a_group_whose_twin_comes_first_as_found():
    # a listing with two twins: the first result is one of them -> found@1 is 1 (recall@1 is only 1/2)
    m = ranking_metrics(np.array([0.99, 0.5, 0.98, 0.1]), np.array([1, 0, 1, 0]), ks=(1, 2))
    assert m["found@1"] == 1.0 and m["r@1"] == pytest.approx(0.5) and m["found@2"] == 1.0
    assert ranking_metrics(np.array([0.9, 0.5, 0.4]), np.array([0, 1, 1]), ks=(1,))["found@1"] == 0.0


def test_found_at_k_in_a_tie_by_hand():
    # four tied at the top, one of them relevant; two slots: 1 - (3/4)(2/3) = 1/2 of the orders find it
    m = ranking_metrics(np.array([1.0, 1.0, 1.0, 1.0, 0.2]), np.array([0, 0, 1, 0, 1]), ks=(1, 2, 4))
    assert m["found@1"] == pytest.approx(0.25) and m["found@2"] == pytest.approx(0.5) and m["found@4"] == 1.0
    # two relevant among four tied, one slot: half the orders put one first
    assert ranking_metrics(np.zeros(4), np.array([0, 1, 1, 0]), ks=(1,))["found@1"] == pytest.approx(0.5)
    assert np.isnan(ranking_metrics(np.zeros(3), np.zeros(3, bool), ks=(1,))["found@1"])
