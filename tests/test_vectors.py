"""The vector backend contract: every registered backend passes the same tests.

Adding a backend means adding one module, registering it, and adding its builder to BACKENDS.
Filters are built as the searcher builds them (a bitmap and an expression from the same clauses
over each id's metadata), so in-memory backends and a database backend answer the same query.
The Milvus backend runs against Milvus Lite when ``pip install 'lookalike[milvus]'`` is there, and
also against a Milvus server: the one ``LOOKALIKE_TEST_MILVUS_URI`` names, or one these tests start
for their module with the Python that ``LOOKALIKE_TEST_MILVUS_SERVER_PYTHON`` names (a venv with
PyPI's ``milvus`` server package; ``.ci/run`` makes one), so the server runs only while it is tested."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from lookalike.search.filters import MetadataColumns, clauses_expression, filter_fields, parse_where
from lookalike.vectors import BackendConfig, CodesBackend, ExactBackend, FaissBackend, IndexSpec, VectorBackend, VectorFilter, available_backends, create_backend
from lookalike.vectors.quantizer import AdditiveQuantizer, init_codebooks

HAS_MILVUS = importlib.util.find_spec("pymilvus") is not None and importlib.util.find_spec("milvus_lite") is not None
MILVUS_SERVER = os.environ.get("LOOKALIKE_TEST_MILVUS_URI", "")
MILVUS_SERVER_PYTHON = os.environ.get("LOOKALIKE_TEST_MILVUS_SERVER_PYTHON", "")
needs_milvus = pytest.mark.skipif(not HAS_MILVUS, reason="the milvus extra is not installed (pip install 'lookalike[milvus]')")

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


def _milvus(folder: Path, uri: str = "") -> VectorBackend:
    config = BackendConfig(backend="milvus", milvus_uri=uri or "vectors.db", store=str(folder), model="contract@1")
    return create_backend(DIM, config)


BACKENDS = {
    "exact": lambda folder: ExactBackend(DIM),
    "faiss": lambda folder: FaissBackend(DIM, IndexSpec("auto", ann_threshold=500, nprobe=16)),
    # 4-bit fast-scan codes, what `auto` builds from 4M vectors of ≤ 128 dimensions
    "faiss-fastscan": lambda folder: FaissBackend(DIM, IndexSpec(f"IVF16,PQ{DIM // 2}x4fsr", ann_threshold=500, nprobe=4)),
    "codes": lambda folder: _codes(),
    "milvus": _milvus,
}
PARAMS = [pytest.param(name, marks=needs_milvus) if name == "milvus" else name for name in sorted(BACKENDS)]
if MILVUS_SERVER or MILVUS_SERVER_PYTHON:
    PARAMS.append(pytest.param("milvus-server", marks=needs_milvus))


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    """The server's URI: the one named, or one started for this module and stopped after it."""
    if MILVUS_SERVER:
        yield MILVUS_SERVER
        return
    from .conftest import ROOT, free_port

    port, data = free_port(), tmp_path_factory.mktemp("milvus-server")
    log = (data / "server.log").open("w")
    server = subprocess.Popen([MILVUS_SERVER_PYTHON, str(ROOT / "scripts" / "milvus_server.py"), "--port", str(port), "--data", str(data)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while "milvus listening" not in (data / "server.log").read_text():
            assert server.poll() is None and time.monotonic() < deadline, "the Milvus server did not start:\n" + (data / "server.log").read_text()[-3000:]
            time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _make(name: str, folder: Path, request) -> VectorBackend:
    if name == "milvus-server":
        return _milvus(folder, request.getfixturevalue("milvus_server"))
    return BACKENDS[name](folder)


def test_every_registered_backend_is_under_contract():
    assert set(available_backends()) <= set(BACKENDS)


def metadata(ids: np.ndarray) -> list[dict]:
    return [{"shade": f"S{i % 100}", "price": str(i % 100), "family": "even" if i % 4 == 1 else "odd"} for i in ids.tolist()]


class Filled:
    """A backend holding 2,000 clustered vectors under sparse ids, with filterable metadata."""

    def __init__(self, backend: VectorBackend, folder: Path, maker):
        self.backend, self.folder, self.maker = backend, folder, maker
        self.x = clustered(2000)
        self.ids = np.arange(2000, dtype=np.int64) * 2 + 1
        self.columns = MetadataColumns()
        for rowid, meta in zip(self.ids.tolist(), metadata(self.ids)):
            self.columns.set(rowid, meta)
        backend.upsert(self.ids, self.x, [filter_fields(m) for m in metadata(self.ids)])
        backend.maintain()

    def where(self, clauses: list[str], exclude: tuple[int, ...] = ()) -> VectorFilter:
        """As the searcher builds it: a bitmap and an expression from the same clauses."""
        parsed = parse_where(clauses)
        return VectorFilter(self.columns.mask(parsed), clauses_expression(parsed), exclude)

    def __iter__(self):
        return iter((self.backend, self.ids, self.x))


@pytest.fixture(scope="module", params=PARAMS)
def shared(request, tmp_path_factory):
    """One filled backend of each kind for the tests that only read (a database backend's setup costs seconds)."""
    folder = tmp_path_factory.mktemp(request.param)
    yield Filled(_make(request.param, folder, request), folder, lambda again: _make(request.param, again, request))


@pytest.fixture(params=PARAMS)
def filled(request, tmp_path):
    """A backend of each kind of its own, for tests that write."""
    return Filled(_make(request.param, tmp_path, request), tmp_path, lambda again: _make(request.param, again, request))


def brute(x, ids, q, k, allowed=None):
    scores = x @ q
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    order = np.argsort(-scores, kind="stable")[:k]
    return ids[order[np.isfinite(scores[order])]]


def test_follows_the_protocol(shared):
    backend, ids, _ = shared
    assert isinstance(backend, VectorBackend) and backend.count == len(ids)
    assert backend.ids().tolist() == ids.tolist() and backend.live_mask()[ids].all()
    assert isinstance(backend.describe(), str) and backend.memory_bytes() > 0


def test_nearest_first_with_true_scores(shared):
    backend, ids, x = shared
    recall = []
    for i in range(0, 2000, 100):
        found, scores = backend.search(x[i], 10)
        assert found[0] == ids[i] and scores[0] == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(scores, x[(found - 1) // 2] @ x[i], rtol=1e-5, atol=1e-6)  # exact re-scoring
        assert np.all(np.diff(scores) <= 1e-6)
        recall.append(len(set(found.tolist()) & set(brute(x, ids, x[i], 10).tolist())) / 10)
    assert np.mean(recall) >= 0.9


@pytest.mark.parametrize("clauses", [["shade=s1"], ["shade=S3|s40|S77"], ["price<30"], ["price>=10", "family=odd"], ["shade!=s0|s1"],
                                     ["price=7"], ["family=EVEN", "shade!=s1"], ["shade=nowhere"]])
def test_filters_and_exclusions_are_obeyed_and_return_k(shared, clauses):
    backend, ids, x = shared
    where = shared.where(clauses, exclude=(int(ids[0]), int(ids[2])))
    allowed = where.bitmap(backend.live_mask())
    for q in (0, 1, 500):
        found, scores = backend.search(x[q], 15, where)
        assert len(found) == min(15, int(allowed.sum())), clauses
        assert allowed[found].all() and ids[0] not in found and ids[2] not in found
        expected = brute(x, ids, x[q], 15, allowed[ids])
        assert len(set(found.tolist()) & set(expected.tolist())) >= 0.8 * len(expected)


def test_bare_bitmaps_filter_too(shared):
    """Batch jobs pass business rules as bitmaps with no expression: narrow, broad and empty ones."""
    backend, ids, x = shared
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
def test_search_many_matches_search(shared, share):
    """The batched path (one ANN call for all queries) answers as one query at a time does,
    unfiltered, with a broad filter and with one narrow enough for an exact scan."""
    backend, ids, x = shared
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


def test_a_single_query_runs_faiss_on_one_thread_in_any_thread():
    """OpenMP's thread count belongs to each thread: a server's worker threads start at every
    core.  A single query's FAISS call runs on one (a second only spins), and the caller's setting
    is back afterwards; a batch still gets every core."""
    import threading

    import faiss

    backend = FaissBackend(DIM, IndexSpec("auto", ann_threshold=500, nprobe=8))
    x = clustered(2000)
    backend.upsert(np.arange(2000, dtype=np.int64), x)
    backend.maintain()
    assert backend.ann is not None
    seen: list[int] = []

    original = backend.ann.search

    def recording(*args, **kwargs):
        seen.append(faiss.omp_get_max_threads())
        return original(*args, **kwargs)

    backend.ann.search = recording  # this index object only
    outcome: dict[str, object] = {}

    def worker() -> None:
        faiss.omp_set_num_threads(2)  # what a fresh thread has on a 2-core machine
        found, _ = backend.search(x[0], 5)
        outcome["found"], outcome["after"] = found.tolist(), faiss.omp_get_max_threads()
        backend.search_many(x[:8], 5)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert outcome["found"][0] == 0 and outcome["after"] == 2
    assert seen[0] == 1 and seen[1] >= 2


def test_snapshot_restore_round_trip(filled, tmp_path):
    backend, ids, x = filled
    snapshots = tmp_path / "index"
    backend.snapshot(snapshots, generation=5, model="m@1")
    name = type(backend).__name__
    if name == "MilvusBackend":
        backend.client.close()  # type: ignore[attr-defined]  # Milvus Lite: one process, one client
    fresh = {"ExactBackend": lambda: ExactBackend(DIM), "FaissBackend": lambda: FaissBackend(DIM, backend.spec),  # type: ignore[attr-defined]
             "CodesBackend": lambda: CodesBackend(DIM, backend.quantizer),  # type: ignore[attr-defined]
             "MilvusBackend": lambda: filled.maker(filled.folder)}[name]()
    generation = fresh.restore(snapshots, model="m@1")
    assert generation in (None, 5)  # None: nothing derived to persist
    assert generation == 5 or not fresh.persistent
    fresh.load(ids, x)
    fresh.refresh(ids[:10])
    found, _ = fresh.search(x[3], 5)
    assert found[0] == ids[3] and len(set(found.tolist())) == 5
    if fresh.persistent:  # restored: it kept its vectors and filter fields, nothing was re-sent
        assert fresh.search(x[3], 5, filled.where(["shade=s1"]))[0].tolist() == brute(x, ids, x[3], 5, (ids % 100) == 1).tolist()
    assert fresh.restore(snapshots, model="other@1") is None  # another model's snapshot is never used


def test_bad_input_is_refused(shared):
    backend, ids, x = shared
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
    expression = clauses_expression(parse_where(['colour=Red|Navy "Blue"', "price<50", "size!=42"]))
    assert expression == ('(text["colour"] == "red" or text["colour"] == "navy \\"blue\\"") and numbers["price"] < 50.0 and '
                          '((exists text["size"]) and not (text["size"] == "42" or numbers["size"] == 42.0))')
    assert VectorFilter(None, expression, (3, 4)).full_expression() == f"({expression}) and id not in [3, 4]"
    assert filter_fields({"Colour": " Navy ", "price": "49.5", "note": "", "sizes": [1, 2], "a\nb": "x"}) == {
        "text": {"Colour": "navy", "price": "49.5", "a b": "x"}, "numbers": {"price": 49.5}}


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
