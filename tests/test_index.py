"""Vector index: exact and approximate search agree, filters return k, snapshots round-trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lookalike.vectors import FaissBackend as VectorIndex
from lookalike.vectors import IndexSpec, auto_nlist


def clustered(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    x = centres[rng.integers(0, 50, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, allowed=None) -> list[int]:
    scores = x @ q
    if allowed is not None:
        scores[~allowed[ids]] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    return ids[order[np.isfinite(scores[order])]].tolist()


def test_exact_search_matches_brute_force():
    x = clustered(500)
    ids = np.arange(500) * 3  # ids need not be dense
    index = VectorIndex(64, IndexSpec("flat"))
    index.upsert(ids, x)
    found, scores = index.search(x[7], 10)
    assert found.tolist() == brute(x, ids, x[7], 10)
    assert found[0] == 21 and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert np.all(np.diff(scores) <= 1e-7)


def test_approximate_index_recall_and_true_scores():
    x = clustered(6000)
    ids = np.arange(6000)
    index = VectorIndex(64, IndexSpec("auto", ann_threshold=1000, nprobe=16))
    index.upsert(ids, x)
    index.build_ann()
    assert index.ann_factory.startswith("IVF")
    recall = []
    for qi in range(0, 6000, 300):
        found, scores = index.search(x[qi], 10)
        recall.append(len(set(found.tolist()) & set(brute(x, ids, x[qi], 10))) / 10)
        np.testing.assert_allclose(scores, x[found] @ x[qi], rtol=1e-5)  # re-ranked exactly
    assert np.mean(recall) >= 0.95


@pytest.mark.parametrize("kind", ["flat", "auto"])
def test_filtered_search_returns_k_when_k_match(kind):
    x = clustered(8000, seed=1)
    ids = np.arange(8000)
    index = VectorIndex(64, IndexSpec(kind, ann_threshold=1000, nprobe=4))
    index.upsert(ids, x)
    index.build_ann()
    rng = np.random.default_rng(3)
    for selectivity in (0.001, 0.05, 0.6):
        allowed = rng.random(8000) < selectivity
        found, _ = index.search(x[0], 20, allowed)
        assert len(found) == min(20, allowed.sum())
        assert allowed[found].all()
        if allowed.sum() <= 4096 or kind == "flat":
            assert found.tolist() == brute(x, ids, x[0], 20, allowed)


def test_upsert_replaces_and_remove_forgets_in_both_indexes():
    x = clustered(3000, seed=2)
    index = VectorIndex(64, IndexSpec("auto", ann_threshold=1000))
    index.upsert(np.arange(3000), x)
    index.build_ann()
    index.upsert(np.array([5]), x[100:101])  # product 5 now looks like 100
    found, _ = index.search(x[100], 2)
    assert set(found.tolist()) == {5, 100}
    assert index.remove(np.array([100, 99999])) == 1
    found, _ = index.search(x[100], 3)
    assert 100 not in found.tolist() and found[0] == 5
    assert index.count == 2999


def test_snapshot_round_trip(tmp_path):
    x = clustered(3000, seed=4)
    index = VectorIndex(64, IndexSpec("auto", ann_threshold=1000))
    index.upsert(np.arange(3000), x)
    index.build_ann()
    index.snapshot(tmp_path, generation=7)
    again = VectorIndex(64, IndexSpec("auto", ann_threshold=1000))
    assert again.restore(tmp_path) == 7
    again.upsert(np.arange(3000), x)  # with the snapshot attached this re-adds: results must not duplicate
    found, _ = again.search(x[10], 5)
    assert len(set(found.tolist())) == 5 and found[0] == 10
    (tmp_path / "ann.faiss").write_bytes(b"damaged")
    matrix_only = VectorIndex(64, IndexSpec("auto", ann_threshold=1000))
    assert matrix_only.restore(tmp_path) == 7  # the saved matrix still serves; the ANN index is rebuilt
    assert matrix_only.ann is None and matrix_only.count == 3000 and matrix_only.needs_rebuild()
    info = json.loads((tmp_path / "vectors.json").read_text())
    (tmp_path / info["base"]["vectors"]).write_bytes(b"damaged")
    assert VectorIndex(64).restore(tmp_path) is None


def test_matrix_snapshot_saves_changes_then_rebases(tmp_path):
    """A save after a few changes writes only those rows; many changes write a new base; every
    restore equals the index that saved it, deletions included, and leaves no stale files."""
    x = clustered(2000, seed=5)
    index = VectorIndex(64, IndexSpec("flat"))
    index.upsert(np.arange(2000), x)
    index.snapshot(tmp_path, generation=1)
    base = json.loads((tmp_path / "vectors.json").read_text())["base"]["vectors"]
    index.upsert(np.array([5, 2500]), x[:2] * -1)  # one replaced, one new past the saved rows
    index.remove(np.array([7, 99_999]))
    index.snapshot(tmp_path, generation=2)
    info = json.loads((tmp_path / "vectors.json").read_text())
    assert info["base"]["vectors"] == base and info["delta"] and info["generation"] == 2
    again = VectorIndex(64, IndexSpec("flat"))
    assert again.restore(tmp_path) == 2 and again.restored_vectors
    assert again.count == index.count == 2000
    assert np.array_equal(again.ids(), index.ids()) and np.allclose(again.vector(2500), -x[1]) and np.allclose(again.vector(5), -x[0])
    with pytest.raises(KeyError):
        again.vector(7)
    assert np.array_equal(again.search(x[3], 5)[0], index.search(x[3], 5)[0])
    again.upsert(np.arange(8, 1008), x[8:1008])  # half the catalogue changed: the next save is a new base
    again.snapshot(tmp_path, generation=3)
    info = json.loads((tmp_path / "vectors.json").read_text())
    assert info["base"]["vectors"] != base and info["delta"] is None
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"vectors.json", info["base"]["vectors"], info["live"]}
    third = VectorIndex(64, IndexSpec("flat"))
    assert third.restore(tmp_path) == 3 and third.count == 2000
    assert np.allclose(third.vector(8), x[8]) and np.allclose(third.vector(5), -x[0]) and type(third.vector(8)) is np.ndarray


@pytest.mark.parametrize("tamper", ["path", "pickle", "shape", "json"])
def test_a_tampered_matrix_snapshot_is_refused_not_trusted(tmp_path, tamper):
    """Whatever is written into the snapshot files, restoring reads nothing outside the
    directory, runs no code, and answers None (the store is read instead)."""
    index = VectorIndex(8, IndexSpec("flat"))
    index.upsert(np.arange(10), np.eye(10, 8, dtype=np.float32))
    index.snapshot(tmp_path, generation=4)
    info_path = tmp_path / "vectors.json"
    info = json.loads(info_path.read_text())
    if tamper == "path":
        info["base"]["vectors"] = "../../../etc/passwd"
    elif tamper == "pickle":
        np.save(tmp_path / info["live"], np.array([object()], dtype=object), allow_pickle=True)
    elif tamper == "shape":
        np.save(tmp_path / info["base"]["vectors"], np.zeros((10, 9), np.float32))
    else:
        info_path.write_text("{not json")
    if tamper != "json":
        info_path.write_text(json.dumps(info))
    again = VectorIndex(8, IndexSpec("flat"))
    assert again.restore(tmp_path) is None and again.count == 0 and not again.restored_vectors


def test_empty_and_bad_queries():
    index = VectorIndex(8)
    assert len(index.search(np.ones(8), 5)[0]) == 0
    index.upsert(np.array([0]), np.eye(8, dtype=np.float32)[:1])
    with pytest.raises(ValueError, match="dimensions"):
        index.search(np.ones(4), 5)
    assert index.search(np.ones(8), 5, np.zeros(1, bool))[0].size == 0


def test_auto_nlist_grows_with_catalogue():
    assert auto_nlist(20_000) < auto_nlist(1_000_000) <= 4096


def test_automatic_probing_keeps_the_1m_rule_and_widens_with_finer_lists():
    auto, fixed = IndexSpec(), IndexSpec(nprobe=16)
    assert auto.probes(4096) == 64  # 1M vectors: the measured default
    assert auto.probes(16384) == 164  # 10M: 1 % of the lists (0.4 % gave recall 0.84)
    assert auto.probes(32) == 32 and IndexSpec(nprobe=-5).probes(1000) == 64  # never more lists than exist; ≤ 0 is automatic
    assert fixed.probes(16384) == 16  # a set nprobe is obeyed
    # A 5 % filter sees a quarter of the allowed vectors an unfiltered 64-list query sees: 320 lists, at 1M and 10M alike.
    assert auto.filtered_probes(4096, 0.05) == 320 and auto.filtered_probes(16384, 0.05) == 320
    assert auto.filtered_probes(16384, 0.9) == 164  # a broad filter probes no fewer than an unfiltered query
    assert fixed.filtered_probes(16384, 0.05) == 80 and auto.filtered_probes(512, 0.0) == 512


def test_automatic_codes_follow_size_and_width():
    spec = IndexSpec()
    assert spec.factory_for(10_000, 128) is None  # below the ANN threshold: exact
    assert spec.factory_for(1_000_000, 128) == "IVF4096,SQ8"
    assert spec.factory_for(10_000_000, 128) == "IVF16384,PQ64x4fsr"  # fast-scan codes (of residuals) at 10M
    assert spec.factory_for(10_000_000, 1280) == "PCA256,IVF16384,SQ8"  # wide vectors keep SQ8 (4-bit codes plateaued)
    assert IndexSpec("IVF8,Flat").factory_for(10_000_000, 128) == "IVF8,Flat"


def test_fast_scan_codes_are_reranked_deeper_and_filter():
    x = clustered(6000, dim=32, seed=4)
    ids = np.arange(6000)
    index = VectorIndex(32, IndexSpec("IVF32,PQ16x4fsr", ann_threshold=1000, nprobe=8))
    index.upsert(ids, x)
    index.build_ann()
    assert index._fetch(10) == 400  # 10 results × rerank 10 × 4 for 4-bit codes
    recall, allowed = [], np.random.default_rng(0).random(6000) < 0.05
    for qi in range(0, 6000, 300):
        found, scores = index.search(x[qi], 10)
        recall.append(len(set(found.tolist()) & set(brute(x, ids, x[qi], 10))) / 10)
        np.testing.assert_allclose(scores, x[found] @ x[qi], rtol=1e-5)
        filtered, _ = index.search(x[qi], 10, allowed)
        assert len(filtered) == 10 and allowed[filtered].all()
    assert np.mean(recall) >= 0.95



def test_processes_saving_one_store_side_by_side_never_collide(tmp_path):
    """Two processes opening a new store at once both save its snapshot (this once crashed the
    second with FileNotFoundError: both wrote the same temporary file and one renamed it away).
    Each saver now writes its own temporary files; the last rename wins, and no temporary file
    is left behind."""
    import threading

    x = clustered(3000, seed=5)
    savers = []
    for _ in range(4):
        index = VectorIndex(64, IndexSpec("auto", ann_threshold=1000))
        index.upsert(np.arange(3000), x)
        index.build_ann()
        savers.append(index)
    errors: list[BaseException] = []
    start = threading.Barrier(len(savers))

    def save(index: VectorIndex) -> None:
        start.wait()
        try:
            for generation in range(25):
                index._ann_saved = False  # write the ANN file every time, as a fresh process does
                index.snapshot(tmp_path, generation=generation)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(index,)) for index in savers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    savers[0].snapshot(tmp_path, generation=25)  # a race may leave an unreadable set (rebuilt, never trusted); the next save mends it
    again = VectorIndex(64, IndexSpec("auto", ann_threshold=1000))
    assert again.restore(tmp_path) == 25 and again.ann is not None
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*tmp"))


def test_a_killed_writers_leftover_is_swept_once_stale(tmp_path):
    """A process killed while writing the ANN index leaves its temporary file; the next save
    removes it once it is an hour old, and leaves a fresh one (a live writer's) alone."""
    import os
    import time

    x = clustered(3000, seed=6)
    index = VectorIndex(64, IndexSpec("auto", ann_threshold=1000))
    index.upsert(np.arange(3000), x)
    index.build_ann()
    stale, fresh = tmp_path / ".ann.faiss-old1234.tmp", tmp_path / ".ann.faiss-new5678.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"half an index")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    index.snapshot(tmp_path, generation=1)
    assert not stale.exists() and fresh.exists()
    assert VectorIndex(64, IndexSpec("auto", ann_threshold=1000)).restore(tmp_path) == 1
