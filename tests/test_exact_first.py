"""A fine-tuned model's photo search puts the exact product first (lookalike.search.exact).

The head under test is deliberately blind: it gives every product the same vector, so its own
order cannot tell an altered photo's product from any other.  Only the backbone vectors kept in
the store can, which is what the rule reads.  Real backbone, real store, real photos."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFilter

from lookalike import Engine
from lookalike.ingest.reindex import ReembedBatch, ReembedderFactory
from lookalike.models.artefacts import EmbeddingHead, save_model
from lookalike.search.exact import ExactFirst

from .conftest import DEMO_CSV, Server

IMAGES = DEMO_CSV.parent / "images"


def _demo_rows() -> list[dict[str, str]]:
    with open(DEMO_CSV, newline="") as f:
        return list(csv.DictReader(f))


def _altered(name: str) -> bytes:
    """A re-processed copy of a catalogue photo: cropped, blurred, darker, re-compressed."""
    image = Image.open(IMAGES / name).convert("RGB")
    w, h = image.size
    image = image.crop((w // 10, h // 12, w - w // 14, h - h // 10)).filter(ImageFilter.GaussianBlur(1.5))
    image = image.point(lambda v: int(v * 0.85))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=40)
    return out.getvalue()


@pytest.fixture(scope="module")
def blind_store(demo_store, tmp_path_factory):
    """The demo store serving a head that maps every photo to the same vector."""
    path = tmp_path_factory.mktemp("blind") / "store"
    shutil.copytree(demo_store, path)
    with Engine.open(path) as engine:
        backbone = engine.encoder.identity
        head = EmbeddingHead([(np.zeros((engine.encoder.dim, 4), np.float32), np.array([1, 0, 0, 0], np.float32))])
        save_model(path, "blind", {"backbones": [backbone]}, head)
        outcome = engine.reindex("blind")
        assert outcome["switched"] and outcome["from_backbone_vectors"] == 305  # the backbone's vectors stay kept
    return path, backbone


def _query_product() -> tuple[str, str]:
    row = _demo_rows()[40]  # not the first product, which the blind head's ties put first
    return row["id"], row["image"].split("/")[-1]


def test_an_altered_photo_finds_its_product_first_through_the_kept_backbone_vectors(blind_store):
    path, _ = blind_store
    product, image = _query_product()
    with Engine.open(path, exact_first_depth=1000) as engine:
        assert engine.encoder.identity.startswith("blind@")
        hits = engine.search(_altered(image), k=5)
        assert hits[0].id == product
        assert hits[0].evidence and hits[0].evidence["model_rank"] > 1 and hits[0].evidence["backbone_similarity"] > 0.5
        assert all(h.evidence is None for h in hits[1:]) and len(hits) == 5
        category = engine.get(product).metadata["category"]
        filtered = engine.search(_altered(image), k=3, where=f"category={category}")
        assert filtered[0].id == product and all(h.metadata["category"] == category for h in filtered)
        assert engine.search(_altered(image), k=3, where=f"category!={category}")[0].id != product  # filters still rule
    with Engine.open(path, exact_first_depth=0) as engine:  # the rule off: the blind head's order, nothing placed first
        hits = engine.search(_altered(image), k=5)
        assert hits[0].id != product and all(h.evidence is None for h in hits)
    with Engine.open(path, exact_first_depth=1000) as engine:  # similar items (a product query) are not touched by the rule
        assert all(h.evidence is None for h in engine.similar(product, k=5))


def test_only_the_first_depth_results_are_candidates(blind_store):
    path, _ = blind_store
    product, image = _query_product()
    with Engine.open(path, exact_first_depth=3) as engine:
        first = engine.search(_altered(image), k=1)[0]
        assert first.id != product and first.evidence["model_rank"] <= 3  # one of the blind order's first three, not the product from far below


def test_products_written_under_a_fine_tuned_model_keep_their_backbone_vectors(blind_store, tmp_path):
    path, backbone = blind_store
    store = tmp_path / "store"
    shutil.copytree(path, store)
    source = IMAGES / _demo_rows()[7]["image"].split("/")[-1]
    with Engine.open(store, exact_first_depth=1000) as engine:
        engine.upsert("new-1", source.read_bytes(), {"category": "New"})
        rowid = engine.store.get("new-1").rowid
        kept = engine.store.model_vectors(backbone, [rowid])
        assert rowid in kept and kept[rowid][0] == engine.store.get("new-1").image_hash
        first = engine.search(source.read_bytes(), k=2, where="category=New")
        assert first[0].id == "new-1"
    with Engine.open(tmp_path / "plain") as lite:  # the backbone's own vector of the same picture
        assert np.allclose(kept[rowid][1], lite.searcher.embed(source.read_bytes()), atol=1e-5)


def test_re_embedding_from_images_keeps_the_backbone_vectors_too(blind_store):
    path, backbone = blind_store
    with Engine.open(path) as engine:
        image = IMAGES / _demo_rows()[3]["image"].split("/")[-1]
        worker = ReembedderFactory(engine.encoder, engine.limits)()
        try:
            batch = worker(ReembedBatch(lane="local", todo=[(9, "hash-9", str(image), None)]))
        finally:
            worker.close()
        assert [r for r, _, _ in batch.ready] == [9]
        (rowid, image_hash, vector), = batch.kept[backbone]
        assert (rowid, image_hash, vector.shape) == (9, "hash-9", (engine.encoder.backbones[0].dim,))


def test_the_server_answers_with_the_exact_product_first_and_says_why(blind_store, tmp_path):
    path, _ = blind_store
    store = tmp_path / "store"
    shutil.copytree(path, store)
    product, image = _query_product()
    server = Server(store, {"LOOKALIKE_EXACT_FIRST_DEPTH": "1000"})
    try:
        r = httpx.post(server.url + "/search", files={"image": ("q.jpg", _altered(image), "image/jpeg")}, params={"k": 3}, timeout=60)
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        assert hits[0]["id"] == product and hits[0]["evidence"]["model_rank"] > 1
    finally:
        server.stop()


def test_the_cli_says_which_product_was_placed_first(blind_store, tmp_path):
    path, _ = blind_store
    product, image = _query_product()
    photo = tmp_path / "altered.jpg"
    photo.write_bytes(_altered(image))
    env = {**os.environ, "LOOKALIKE_EXACT_FIRST_DEPTH": "1000"}
    done = subprocess.run([sys.executable, "-m", "lookalike", "--store", str(path), "search", str(photo), "-k", "3", "--whole"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    first_row = next(line for line in done.stdout.splitlines() if line.startswith("│ 1 "))
    assert product in first_row
    assert "first: the nearest photo off the shelf (the model ranked it" in done.stderr


def test_auto_depth_follows_the_serving_model(blind_store, store_copy):
    path, _ = blind_store
    with Engine.open(path) as engine:  # the default, "auto": a frozen head's depth
        assert engine.searcher.exact_first is not None and engine.searcher.exact_first.depth == 50
    with Engine.open(path, exact_first_depth=7) as engine:  # a number overrides the model's
        assert engine.searcher.exact_first.depth == 7
    with Engine.open(store_copy) as engine:  # the plain backbone keeps no vectors, but its depth is still read
        assert engine.encoder.exact_first_depth == 50


@pytest.mark.parametrize("depth", ["-1", "1001", "many", "2.5"])
def test_a_bad_exact_first_depth_is_refused_naming_the_setting(store_copy, monkeypatch, depth):
    monkeypatch.setenv("LOOKALIKE_EXACT_FIRST_DEPTH", depth)
    with pytest.raises(ValueError, match=f"exact_first_depth': expected \"auto\" or a whole number .* got '{depth}'"), Engine.open(store_copy):
        pass


class _Vectors:
    def __init__(self, rows):
        self.rows, self.asked = rows, []

    def model_vectors(self, model, rowids):
        self.asked.append(list(rowids))
        return {r: self.rows[r] for r in rowids if r in self.rows}


def test_pick_skips_missing_and_stale_vectors_and_reads_only_the_depth():
    q = np.array([1.0, 0.0], np.float32)
    near, far = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    rows = {1: ("a", far), 2: ("old", near), 3: ("c", np.array([0.8, 0.6], np.float32)), 4: ("d", near)}
    vectors = _Vectors(rows)
    rule = ExactFirst(3, vectors)
    # 2's vector describes a picture it no longer has; 4 is beyond the depth; 5 has no vector
    assert rule.pick({"m": q}, [1, 2, 3, 4, 5], {1: "a", 2: "new", 3: "c", 4: "d"}) == (2, pytest.approx(0.8))
    assert vectors.asked == [[1, 2, 3]]
    assert rule.pick({"m": q}, [1], {1: "a"}) is None  # one candidate: nothing to reorder
    assert rule.pick({}, [1, 3], {1: "a", 3: "c"}) is None  # the model keeps no vectors
    assert rule.pick({"m": np.ones(3, np.float32)}, [1, 3], {1: "a", 3: "c"}) is None  # another model's size
    for bad in (-1, 1001, 2.5, True):
        with pytest.raises(ValueError, match="exact_first_depth"):
            ExactFirst(bad, vectors)


def test_an_unfrozen_head_keeps_the_pretrained_vector_of_its_feature_map(blind_store, tmp_path):
    """An unfrozen head reads the backbone's last feature map; it keeps the convolution it started
    from, so the same map gives the photo's off-the-shelf vector (under the plain backbone's
    identity) and the rule works for it too.  A head saved without it keeps nothing."""
    pytest.importorskip("torch")
    from lookalike.models.artefacts import ModelError, load_model, models_dir
    from lookalike.models.encoders.efficientnet import pretrained_conv_head

    path, backbone = blind_store
    store = tmp_path / "store"
    shutil.copytree(path, store)
    conv = pretrained_conv_head("efficientnet-lite0")
    blind = [(np.zeros((1280, 4), np.float32), np.array([1, 0, 0, 0], np.float32))]
    save_model(store, "blind-maps", {"backbones": ["efficientnet-lite0-maps@2"]}, EmbeddingHead(blind, conv, 0.0, conv))
    save_model(store, "blind-maps-old", {"backbones": ["efficientnet-lite0-maps@2"]}, EmbeddingHead(blind, conv))
    product, image = _query_product()
    with Engine.open(store, exact_first_depth=1000) as engine:
        assert engine.reindex("blind-maps")["from_images"] == 305
        assert engine.encoder.exact_first_depth == 200  # the unfrozen head's own depth, which "auto" serves
        rowid = engine.store.get(product).rowid
        (image_hash, kept), = engine.store.model_vectors(backbone, [rowid]).values()
        assert image_hash == engine.store.get(product).image_hash
        hits = engine.search(_altered(image), k=3)
        assert hits[0].id == product and hits[0].evidence["model_rank"] > 1
    with Engine.open(tmp_path / "plain") as lite:  # the same numbers the backbone itself stores
        assert float(kept @ lite.searcher.embed(IMAGES / image)) > 0.9999
    with Engine.open(store, exact_first_depth=1000) as engine:
        searcher = engine.searcher
        old = type(engine.encoder)(load_model(models_dir(store) / "blind-maps-old"), lambda name: engine.encoder.backbones[0])
        assert old.embed_keeping(searcher.serving.encoder.preprocess(Image.open(IMAGES / image).convert("RGB"))[None])[1] == {}
        assert old.exact_first_depth == 50
    with Engine.open(store) as engine:  # "auto", the default: the unfrozen head's depth
        assert engine.searcher.exact_first.depth == 200
    with pytest.raises(ModelError, match="pretrained convolution does not match"):
        bad = EmbeddingHead(blind, conv, 0.0, (conv[0][:10], conv[1]))
        load_model(save_model(store, "blind-maps-bad", {"backbones": ["efficientnet-lite0-maps@2"]}, bad))
