"""The vector backend contract: every registered backend passes the same tests.

Adding a backend means adding one module, registering it, and adding its builder to BACKENDS."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.vectors import BackendConfig, CodesBackend, ExactBackend, FaissBackend, IndexSpec, VectorBackend, VectorFilter, available_backends, create_backend
from lookalike.vectors.quantizer import AdditiveQuantizer, init_codebooks

DIM = 32


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, DIM))
    x = centres[rng.integers(0, 40, n)] + 0.3 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _codes() -> VectorBackend:
    sample = clustered(3000, seed=9)
    quantizer = AdditiveQuantizer(init_codebooks(sample, m=8, k=64, seed=0, iterations=5)).fit_norms(sample)
    return CodesBackend(DIM, quantizer, "adc", rerank_factor=10)


BACKENDS = {
    "exact": lambda: ExactBackend(DIM),
    "faiss": lambda: FaissBackend(DIM, IndexSpec("auto", ann_threshold=500, nprobe=16)),
    "codes": _codes,
}


def test_every_registered_backend_is_under_contract():
    assert set(available_backends()) <= set(BACKENDS)


@pytest.fixture(params=sorted(BACKENDS))
def filled(request):
    backend = BACKENDS[request.param]()
    x = clustered(2000)
    ids = np.arange(2000, dtype=np.int64) * 2 + 1  # sparse ids
    backend.upsert(ids, x)
    backend.maintain()
    return backend, ids, x


def brute(x, ids, q, k, allowed=None):
    scores = x @ q
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    order = np.argsort(-scores, kind="stable")[:k]
    return ids[order[np.isfinite(scores[order])]]


def test_follows_the_protocol(filled):
    backend, ids, _ = filled
    assert isinstance(backend, VectorBackend) and backend.count == len(ids)
    assert backend.ids().tolist() == ids.tolist() and backend.live_mask()[ids].all()
    assert isinstance(backend.describe(), str) and backend.memory_bytes() > 0


def test_nearest_first_with_true_scores(filled):
    backend, ids, x = filled
    recall = []
    for i in range(0, 2000, 100):
        found, scores = backend.search(x[i], 10)
        assert found[0] == ids[i] and scores[0] == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(scores, x[(found - 1) // 2] @ x[i], rtol=1e-5, atol=1e-6)  # exact re-scoring
        assert np.all(np.diff(scores) <= 1e-6)
        recall.append(len(set(found.tolist()) & set(brute(x, ids, x[i], 10).tolist())) / 10)
    assert np.mean(recall) >= 0.9


def test_filters_and_exclusions_are_obeyed_and_return_k(filled):
    backend, ids, x = filled
    rng = np.random.default_rng(1)
    for share in (0.01, 0.3, 0.9):
        allowed = np.zeros(ids.max() + 1, dtype=bool)
        allowed[ids[rng.random(len(ids)) < share]] = True
        where = VectorFilter(allowed, exclude=(int(ids[0]),))
        found, _ = backend.search(x[0], 15, where)
        expected = min(15, int(allowed.sum()) - int(allowed[ids[0]]))
        assert len(found) == expected and allowed[found].all() and ids[0] not in found
    found, _ = backend.search(x[0], 5, np.zeros(3, bool))  # a bare mask is a filter too
    assert len(found) == 0


def test_upsert_replaces_and_remove_forgets(filled):
    backend, ids, x = filled
    backend.upsert(ids[:1], x[100:101])  # the first product now looks like the 101st
    found, _ = backend.search(x[100], 2)
    assert set(found.tolist()) == {ids[0], ids[100]}
    assert backend.remove(np.array([ids[100], 10**7])) == 1
    found, _ = backend.search(x[100], 3)
    assert ids[100] not in found and found[0] == ids[0] and backend.count == len(ids) - 1
    with pytest.raises(KeyError):
        backend.vector(int(ids[100]))
    np.testing.assert_allclose(backend.vector(int(ids[0])), x[100])


@pytest.mark.parametrize("share", [None, 0.5, 0.01])
def test_search_many_matches_search(filled, share):
    """The batched path (one ANN call for all queries) answers as one query at a time does,
    unfiltered, with a broad filter and with one narrow enough for an exact scan."""
    backend, ids, x = filled
    allowed = None
    if share is not None:
        allowed = np.zeros(int(ids.max()) + 1, bool)
        allowed[ids[np.random.default_rng(2).random(len(ids)) < share]] = True
    many = backend.search_many(x[:40], 7, allowed)
    for q, (found, scores) in zip(x[:40], many):
        one = backend.search(q, 7, allowed)
        assert found.tolist() == one[0].tolist() and np.allclose(scores, one[1])
        if allowed is not None:
            assert allowed[found].all()
    if isinstance(backend, FaissBackend):
        assert backend.ann is not None  # the ANN index is built: the batched path ran


@pytest.mark.parametrize("make", [lambda: ExactBackend(DIM), lambda: FaissBackend(DIM, IndexSpec("auto", ann_threshold=10**6))])
def test_a_batch_below_the_ann_threshold_is_scored_in_matrix_products(make, monkeypatch):
    """Below the ANN threshold a batch is one matrix product per block of queries (blocks of a
    few queries here), answering as one query at a time does."""
    from lookalike.vectors import exact

    backend = make()
    x = clustered(1500)
    backend.upsert(np.arange(1500, dtype=np.int64), x)
    backend.maintain()
    monkeypatch.setattr(exact, "EXACT_BLOCK_SCORES", 1500 * 7)  # 7 queries per product block
    calls = []
    monkeypatch.setattr(type(backend), "search", lambda self, *a, **k: calls.append(1) or ExactBackend.search(self, *a, **k))
    many = backend.search_many(x[:30], 5)
    assert not calls  # no query went one at a time
    monkeypatch.undo()
    for q, (found, scores) in zip(x[:30], many):
        one = backend.search(q, 5)
        assert found.tolist() == one[0].tolist() and np.allclose(scores, one[1], atol=1e-5)


def test_snapshot_restore_round_trip(filled, tmp_path):
    backend, ids, x = filled
    backend.snapshot(tmp_path, generation=5, model="m@1")
    name = type(backend).__name__
    fresh = {"ExactBackend": lambda: ExactBackend(DIM), "FaissBackend": lambda: FaissBackend(DIM, backend.spec),  # type: ignore[attr-defined]
             "CodesBackend": lambda: CodesBackend(DIM, backend.quantizer)}[name]()  # type: ignore[attr-defined]
    generation = fresh.restore(tmp_path, model="m@1")
    assert generation in (None, 5)  # None: nothing derived to persist
    assert fresh.restore(tmp_path, model="other@1") is None  # another model's snapshot is never used
    fresh.load(ids, x)
    fresh.refresh(ids[:10])
    found, _ = fresh.search(x[3], 5)
    assert found[0] == ids[3] and len(set(found.tolist())) == 5


def test_bad_input_is_refused(filled):
    backend, ids, x = filled
    with pytest.raises(ValueError, match="dimensions"):
        backend.search(np.ones(DIM + 1), 3)
    with pytest.raises(ValueError, match="shape"):
        backend.upsert(ids[:2], x[:1])
    with pytest.raises(ValueError, match="non-negative"):
        backend.upsert(np.array([-1]), x[:1])
    assert backend.search(x[0], 0)[0].size == 0


def test_settings_choose_the_backend():
    quantizer = _codes().quantizer  # type: ignore[attr-defined]
    assert isinstance(create_backend(DIM, BackendConfig(index="flat")), ExactBackend)
    assert type(create_backend(DIM, BackendConfig())) is FaissBackend
    assert isinstance(create_backend(DIM, BackendConfig(), quantizer), CodesBackend)
    assert type(create_backend(DIM, BackendConfig(code_search="off"), quantizer)) is FaissBackend
    with pytest.raises(Exception, match="unknown vector backend 'nope'"):
        create_backend(DIM, BackendConfig(backend="nope"))


def test_filter_compiles_to_an_expression_for_database_backends():
    from lookalike.search.filters import clauses_expression, parse_where

    expression = clauses_expression(parse_where(['colour=Red|Navy "Blue"', "price<50"]))
    assert expression == 'metadata["colour"] in ["Red", "Navy \\"Blue\\""] and metadata["price"] < 50.0'
    assert VectorFilter(None, expression, (3, 4)).full_expression() == f"({expression}) and id not in [3, 4]"


def test_codes_answer_filtered_queries_on_a_small_catalogue_too():
    """A filter leaving few ids (every `similar`, which leaves out the product itself) is answered
    by the codes the shop chose, not by a silent exact scan."""
    backend = _codes()
    assert isinstance(backend, CodesBackend)
    backend.rerank_factor = 0  # codes alone: their scores are not the true cosines
    vectors = clustered(500, seed=3)
    backend.upsert(np.arange(500), vectors)
    allowed = np.ones(500, bool)
    allowed[0] = False
    ids, scores = backend.search(vectors[0], 10, VectorFilter(allowed))
    assert 0 not in ids.tolist()
    assert np.allclose(scores, backend.quantizer.adc_scores(vectors[0][None], backend.codes[ids])[0], atol=1e-5)
    assert not np.allclose(scores, vectors[ids] @ vectors[0], atol=1e-3)
