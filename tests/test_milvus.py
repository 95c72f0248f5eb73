"""The Milvus backend behind the engine: the same answers as the embedded default, filters run
inside Milvus, writes visible to the next query, a reopened store sends only what changed, and a
write Milvus missed is sent again rather than lost.  Runs on Milvus Lite (the ``milvus`` extra);
the backend contract itself is in test_vectors.py (there also against a Milvus server in CI)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lookalike import Engine
from lookalike.vectors import BackendError

from .conftest import DEMO_CSV
from .test_vectors import HAS_MILVUS

pytestmark = pytest.mark.skipif(not HAS_MILVUS, reason="the milvus extra is not installed (pip install 'lookalike[milvus]')")

QUERIES = ["878ff7a3", "9733514d"]
THIRD = "18741138"
WHERE = [[], ["category=Dress|Shirt"], ["category!=Blazer", "kids=false"], ['category=no "such" \\ value']]


def _open(path: Path, **settings) -> Engine:
    return Engine.open(path, vector_backend="milvus", **settings)


@pytest.fixture
def milvus_store(demo_store, tmp_path) -> Path:
    target = tmp_path / "store"
    shutil.copytree(demo_store, target)
    return target


def _answers(engine: Engine) -> list[list[tuple[str, float]]]:
    return [[(h.id, round(h.score, 4)) for h in engine.similar(q, k=8, where=where)] for q in QUERIES for where in WHERE]


def test_same_answers_as_the_embedded_default_with_filters_pushed_down(milvus_store, monkeypatch):
    with Engine.open(milvus_store) as embedded:
        expected = _answers(embedded)
    with _open(milvus_store) as engine:
        backend = engine.index
        assert backend.name == "milvus" and backend.count == 305 and "Milvus Lite" in backend.describe()
        sent: list[str] = []
        search = backend.client.search
        monkeypatch.setattr(backend.client, "search", lambda *a, **k: sent.append(k["filter"]) or search(*a, **k))
        assert _answers(engine) == expected
    assert any('text["category"] == "dress"' in f for f in sent)  # the where clause ran inside Milvus
    assert all("id in [" not in f for f in sent)  # not as a list of ids allowed by an in-memory filter
    assert all("id not in [" in f for f in sent)  # the product itself is excluded there too


def test_writes_deletes_and_tags_are_visible_to_the_next_query(milvus_store):
    with _open(milvus_store) as engine:
        source = engine.get(QUERIES[0])
        twin = engine.upsert("twin-of-first", image=str(DEMO_CSV.parent / source.image), metadata={"category": "Odd", "price": "12.5"})
        assert engine.similar(QUERIES[0], k=1)[0].id == twin.id
        assert [h.id for h in engine.similar(QUERIES[0], k=3, where=["price<20"])] == [twin.id]
        engine.upsert("twin-of-first", metadata={"category": "Odd", "price": "30"})  # metadata only: the filter fields follow
        assert engine.similar(QUERIES[0], k=3, where=["price<20"]) == []
        rowid = engine.get("twin-of-first").rowid
        engine.searcher.serving.write_tags([(rowid, {"colour": {"value": "Teal", "confidence": 0.9}})], "test")
        assert [h.id for h in engine.similar(QUERIES[0], k=3, where=["tag.colour=teal"])] == [twin.id]
        assert engine.delete_many(["twin-of-first"]) == 1
        assert twin.id not in [h.id for h in engine.similar(QUERIES[0], k=5)]


def test_a_reopened_store_sends_only_what_changed(milvus_store, monkeypatch):
    with _open(milvus_store) as engine:
        engine.delete_many([QUERIES[1]])
    with Engine.open(milvus_store) as embedded:  # another backend writes while the collection is closed
        embedded.upsert("added-meanwhile", image=str(DEMO_CSV.parent / embedded.get(QUERIES[0]).image), metadata={"category": "New"})
        assert embedded.delete_many([THIRD]) == 1
    from lookalike.vectors import milvus

    written: list[int] = []
    upsert = milvus.MilvusBackend._write
    monkeypatch.setattr(milvus.MilvusBackend, "_write", lambda self, ids, *a: written.append(len(ids)) or upsert(self, ids, *a))
    with _open(milvus_store) as engine:
        assert sum(written) == 1  # the one product added meanwhile, not the 304 the collection kept
        assert engine.index.count == engine.store.count() == 304
        assert engine.similar(QUERIES[0], k=1, where=["category=New"])[0].id == "added-meanwhile"
        found = [h.id for h in engine.similar(QUERIES[0], k=400)]
        assert len(found) == 303 and QUERIES[1] not in found and THIRD not in found


def test_a_write_milvus_missed_is_sent_again_at_the_next_open(milvus_store, monkeypatch):
    with _open(milvus_store) as engine:
        backend = engine.index
        image = str(DEMO_CSV.parent / engine.get(QUERIES[0]).image)

        def down(*args, **kwargs):
            raise ConnectionError("Milvus went away")

        monkeypatch.setattr(backend.client, "upsert", down)
        with pytest.raises(BackendError, match="writing vectors failed: Milvus went away"):
            engine.upsert("lost-in-transit", image=image, metadata={"category": "Lost"})
        monkeypatch.undo()
    with _open(milvus_store) as engine:  # SQLite has the product; the collection's tag stayed behind it
        assert engine.similar(QUERIES[0], k=1, where=["category=Lost"])[0].id == "lost-in-transit"


def test_broad_bitmaps_page_through_id_lists(milvus_store, monkeypatch):
    """Batch jobs' bitmaps too broad to spell as one id list: a wider search kept to the allowed
    ids, or pages of id lists when that falls short; the same answer as the embedded exact scan."""
    from lookalike.vectors import VectorFilter, milvus

    with Engine.open(milvus_store, index="flat") as embedded:
        exact = embedded.index
        allowed = np.zeros(exact.capacity, bool)
        allowed[exact.ids()[::3]] = True
        queries = np.stack([exact.vector(int(i)) for i in exact.ids()[:5]])
        expected = exact.search_many(queries, 6, VectorFilter(allowed))
    monkeypatch.setattr(milvus, "ID_LIST_MAX", 20)
    with _open(milvus_store) as engine:
        for narrow in (False, True):
            if narrow:
                monkeypatch.setattr(milvus, "MAX_LIMIT", 8)  # the wider search cannot reach: pages of ids answer
            answers = engine.index.search_many(queries, 6, VectorFilter(allowed))
            for (ids, scores), (want, want_scores) in zip(answers, expected):
                assert ids.tolist() == want.tolist() and np.allclose(scores, want_scores, atol=1e-4)


@pytest.mark.parametrize("setting, message", [({"milvus_index": "DISKANN; drop"}, "milvus_index"),
                                              ({"milvus_collection": "bad name; drop"}, "milvus_collection"),
                                              ({"milvus_uri": "http://127.0.0.1:9"}, "cannot open Milvus at 'http://127.0.0.1:9'")])
def test_bad_settings_are_refused_with_the_reason(milvus_store, setting, message):
    with pytest.raises(BackendError, match=message):
        _open(milvus_store, **setting)
    with Engine.open(milvus_store) as engine:  # the store itself is untouched
        assert engine.store.count() == 305
