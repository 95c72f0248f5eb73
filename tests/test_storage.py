"""The store keeps embeddings by (model, region, product) and opens stores written by version 1."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from lookalike import Engine
from lookalike.storage import ProductStore, ProductWrite, StoreError
from lookalike.storage import store as store_module

from .conftest import ROOT

PHOTO = ROOT / "examples" / "demo" / "images" / "878ff7a3.jpg"


def _downgrade_to_version_1(directory, kept_model: str = "older-model") -> int:
    """Rewrite a store the way lookalike 0.x (schema 1) kept it: serving vectors in
    ``products.vector`` and other models' in ``model_vectors``."""
    db = sqlite3.connect(directory / ProductStore.FILENAME)
    serving = db.execute("SELECT value FROM meta WHERE key = 'encoder'").fetchone()[0]
    db.executescript("""
        ALTER TABLE products ADD COLUMN vector BLOB;
        CREATE TABLE model_vectors (encoder TEXT NOT NULL, rowid INTEGER NOT NULL, image_hash TEXT,
                                    vector BLOB NOT NULL, PRIMARY KEY (encoder, rowid));
    """)
    db.execute("UPDATE products SET vector = (SELECT e.vector FROM embeddings e WHERE e.model = ? AND e.region = '' AND e.product = products.rowid)",
               (serving,))
    kept = db.execute("INSERT INTO model_vectors SELECT ?, rowid, image_hash, zeroblob(16) FROM products WHERE rowid % 2 = 0", (kept_model,)).rowcount
    db.executescript("DROP TABLE embeddings; UPDATE meta SET value = '1' WHERE key = 'schema_version';")
    db.commit()
    db.close()
    return kept


def test_a_version_1_store_is_read_read_only_and_upgraded_when_writable(store_copy, monkeypatch):
    with Engine.open(store_copy) as engine:
        before = [h.id for h in engine.search(PHOTO, k=5)]
        products = engine.stats()["products"]
    kept = _downgrade_to_version_1(store_copy)

    with monkeypatch.context() as patch:
        patch.setattr(store_module, "_is_read_only", lambda directory, path: True)
        with Engine.open(store_copy) as engine:  # read through a temporary view; nothing written
            assert [h.id for h in engine.search(PHOTO, k=5)] == before
            assert engine.stats()["kept_vectors"] == {"older-model": kept}
    assert ProductStore(store_copy, read_only=True).get_meta("schema_version") == "1"

    with Engine.open(store_copy) as engine:
        assert [h.id for h in engine.search(PHOTO, k=5)] == before
        stats = engine.stats()
        assert stats["vectors"] == products and stats["kept_vectors"] == {"older-model": kept}
    db = sqlite3.connect(store_copy / ProductStore.FILENAME)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
    assert db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'model_vectors'").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM products WHERE vector IS NOT NULL").fetchone()[0] == 0


def test_a_store_from_a_newer_version_is_refused_with_a_clear_error(store_copy):
    db = sqlite3.connect(store_copy / ProductStore.FILENAME)
    db.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 9"):
        ProductStore(store_copy)


def _store_with_products(tmp_path, n: int = 3) -> ProductStore:
    store = ProductStore(tmp_path / "s")
    store.bind_encoder("model-a", 4)
    rng = np.random.default_rng(0)
    store.write([ProductWrite(f"p{i}", f"{i}.jpg", f"hash{i}", {}, rng.normal(size=4).astype(np.float32)) for i in range(n)], "model-a")
    return store


def test_embeddings_are_kept_per_model_and_region_and_go_with_their_product(tmp_path):
    store = _store_with_products(tmp_path)
    rowids = [store.get(f"p{i}").rowid for i in range(3)]
    store.stage_vectors("model-b", [(r, f"hash{i}", np.ones(8, np.float32)) for i, r in enumerate(rowids)])
    store.stage_vectors("model-b", [(rowids[0], "hash0", np.full(8, 2, np.float32))], region="garment-0")
    assert store.count_vectors() == 3
    assert store.kept_encoders() == {"model-b": 3}
    assert store.regions("model-b") == {"": 3, "garment-0": 1}
    assert len(store.model_vectors("model-b", rowids)) == 3
    assert store.model_vectors("model-b", rowids, region="garment-0")[rowids[0]][1][0] == 2

    store.delete(["p0"])  # a deleted product takes all its embeddings with it
    assert store.regions("model-b") == {"": 2}
    assert store.count_vectors() == 2

    store.switch_encoder("model-b", 8)
    assert store.serving_model == "model-b" and store.count_vectors() == 2
    assert store.kept_encoders() == {"model-a": 2}  # the previous model's vectors stay, for switching back
    assert all(len(v) == 8 for _, v, _ in store.iter_vectors() for v in v)


def test_a_new_picture_drops_the_regions_found_in_the_old_one(tmp_path):
    store = _store_with_products(tmp_path, 1)
    rowid = store.get("p0").rowid
    store.stage_vectors("model-b", [(rowid, "hash0", np.ones(4, np.float32))])
    store.stage_vectors("model-b", [(rowid, "hash0", np.ones(4, np.float32))], region="garment-0")
    with store._write_transaction(new_generation=False):
        store._put_embedding("model-a", "garment-0", rowid, "hash0", np.ones(4, np.float32))
    store.write([ProductWrite("p0", "0.jpg", "hash0", {"title": "same picture"}, np.ones(4, np.float32))], "model-a")
    assert store.regions("model-a") == {"": 1, "garment-0": 1}
    store.write([ProductWrite("p0", "new.jpg", "other-hash", {}, np.ones(4, np.float32))], "model-a")
    assert store.regions("model-a") == {"": 1}
    # another model's whole-image vector stays (re-index reuse checks its hash); no model keeps old regions
    assert store.regions("model-b") == {"": 1}


def test_staging_the_serving_model_is_refused(tmp_path):
    store = _store_with_products(tmp_path, 1)
    with pytest.raises(StoreError, match="serving model"):
        store.stage_vectors("model-a", [(1, "hash0", np.ones(4, np.float32))])


def test_a_switch_to_a_model_missing_vectors_is_refused_and_changes_nothing(tmp_path):
    store = _store_with_products(tmp_path)
    store.stage_vectors("model-b", [(store.get("p0").rowid, "hash0", np.ones(8, np.float32))])
    generation = store.generation
    with pytest.raises(StoreError, match="2 product"):
        store.switch_encoder("model-b", 8)
    assert store.serving_model == "model-a" and store.generation == generation
