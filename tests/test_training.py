"""Fine-tuned embeddings and compact codes: losses, mining, codes, a real training run, re-indexing."""

from __future__ import annotations

import csv
import random
import shutil
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs PyTorch (pip install torch==2.13.0)")

from lookalike import Engine  # noqa: E402
from lookalike.models.artefacts import models_dir  # noqa: E402
from lookalike.training import AdditiveQuantizer, EmbeddingOptions, ModelError, QuantizerOptions, TrainingDataError, load_model  # noqa: E402
from lookalike.training.embedding import split_holdout  # noqa: E402
from lookalike.training.losses import (  # noqa: E402
    ProxyAnchorLoss,
    hardest_negatives,
    multi_similarity_loss,
    semi_hard_negatives,
    triplet_loss,
)

from .conftest import DEMO_CSV, SHARED, requires_shared  # noqa: E402

# Four unit vectors in the plane at 0°, 30°, 90°, 60°; classes {0, 1} and {2, 3}.
ANGLES = np.radians([0.0, 30.0, 90.0, 60.0])
E = torch.tensor(np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1), dtype=torch.float32)
LABELS = torch.tensor([0, 0, 1, 1])
C30, C60 = np.cos(np.radians(30)), np.cos(np.radians(60))


# ---- losses against values computed by hand ---------------------------------------------------------
def test_batch_hard_triplet_loss_matches_hand_computation():
    # distances 1 - cos: d(0,1) = 1 - cos30, d(0,3) = 1 - cos60 (hardest negative of 0), d(1,3) = 1 - cos30 (hardest of 1),
    # d(2,3) = 1 - cos30, d(2,1) = 1 - cos60 (hardest negative of 2), d(3,1) = 1 - cos30 (hardest of 3).
    margin = 0.2
    per_anchor = [
        max(0.0, (1 - C30) - (1 - C60) + margin),   # anchor 0
        max(0.0, (1 - C30) - (1 - C30) + margin),   # anchor 1
        max(0.0, (1 - C30) - (1 - C60) + margin),   # anchor 2
        max(0.0, (1 - C30) - (1 - C30) + margin),   # anchor 3
    ]
    assert triplet_loss(E, LABELS, margin, "hard").item() == pytest.approx(np.mean(per_anchor), abs=1e-6)
    # by hand: anchors 0 and 2 give max(0, 0.134 - 0.5 + 0.2) = 0; anchors 1 and 3 give 0.134 - 0.134 + 0.2 = 0.2
    assert triplet_loss(E, LABELS, margin, "hard").item() == pytest.approx(0.1, abs=1e-6)


def test_semi_hard_triplet_loss_matches_hand_computation():
    # Each positive pair has d(a,p) = 1 - cos30 = 0.134.  Negatives farther than that:
    # anchor 0: d(0,3)=0.5, d(0,2)=1 -> 0.5; anchor 1: d(1,3)=0.134 is not farther, d(1,2)=0.5 -> 0.5; symmetric for 2 and 3.
    margin = 0.6
    d_ap, d_an = 1 - C30, 1 - C60
    expected = max(0.0, d_ap - d_an + margin)
    assert triplet_loss(E, LABELS, margin, "semi-hard").item() == pytest.approx(expected, abs=1e-6)


def test_multi_similarity_loss_matches_hand_computation():
    alpha, beta, base, eps = 2.0, 50.0, 0.5, 0.1
    sim = (E @ E.T).numpy()
    total = []
    for i in range(4):
        pos = [j for j in range(4) if j != i and LABELS[j] == LABELS[i]]
        neg = [j for j in range(4) if LABELS[j] != LABELS[i]]
        kept_pos = [sim[i, j] for j in pos if sim[i, j] - eps < max(sim[i, n] for n in neg)]
        kept_neg = [sim[i, n] for n in neg if sim[i, n] + eps > min(sim[i, j] for j in pos)]
        total.append(np.log1p(sum(np.exp(-alpha * (s - base)) for s in kept_pos)) / alpha
                     + np.log1p(sum(np.exp(beta * (s - base)) for s in kept_neg)) / beta)
    assert multi_similarity_loss(E, LABELS, alpha, beta, base, eps).item() == pytest.approx(np.mean(total), rel=1e-5)
    # by hand: anchor 0 is easy (its positive at 0.866 beats its best negative 0.5 by more than eps): no pair counts.
    # anchor 1: positive 0.866 and the negative at 60° (0.866) are both informative, the one at 90° (0.5) is not.
    assert total[0] == 0.0
    assert total[1] == pytest.approx(np.log1p(np.exp(-2 * (C30 - 0.5))) / 2 + np.log1p(np.exp(50 * (C30 - 0.5))) / 50, rel=1e-6)


def test_proxy_anchor_loss_matches_hand_computation():
    loss = ProxyAnchorLoss(2, 2, alpha=32.0, delta=0.1)
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    sim = E.numpy() @ np.eye(2)
    pos = [np.log1p(sum(np.exp(-32 * (sim[i, c] - 0.1)) for i in range(4) if LABELS[i] == c)) for c in (0, 1)]
    neg = [np.log1p(sum(np.exp(32 * (sim[i, c] + 0.1)) for i in range(4) if LABELS[i] != c)) for c in (0, 1)]
    assert loss(E, LABELS).item() == pytest.approx(np.mean(pos) + np.mean(neg), rel=1e-5)


def test_mining_picks_the_hardest_valid_negative():
    distances = 1 - E @ E.T
    assert hardest_negatives(distances, LABELS).tolist() == [3, 3, 1, 1]
    # a batch where one anchor has no negative at all
    assert hardest_negatives(distances[:2, :2], LABELS[:2]).tolist() == [-1, -1]
    # semi-hard: for anchor 1 and positive 0 (d = 0.134) the closest *farther* negative is 2 (0.5), not 3 (0.134)
    assert semi_hard_negatives(distances, LABELS, 0.2)[1, 0].item() == 2
    assert semi_hard_negatives(distances, LABELS, 0.2)[0, 1].item() == 3


def test_holdout_split_is_seeded_per_class_and_keeps_two_for_training():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 2)
    a, b = split_holdout(labels, 0.3, seed=1), split_holdout(labels, 0.3, seed=1)
    assert (a == b).all() and a[:10].sum() == 3 and a[10:13].sum() == 1 and a[13:].sum() == 0


# ---- codes --------------------------------------------------------------------------------------------
def _orthogonal_quantizer(m: int = 4, k: int = 16, d: int = 32, seed: int = 0) -> AdditiveQuantizer:
    """Codebooks in mutually orthogonal subspaces (codebook i lives in dims 8i..8i+7)."""
    rng = np.random.default_rng(seed)
    books = np.zeros((m, k, d), dtype=np.float32)
    for i in range(m):
        books[i, :, 8 * i : 8 * i + 8] = rng.normal(size=(k, 8))
    return AdditiveQuantizer(books)


def test_codes_round_trip():
    q = _orthogonal_quantizer()
    codes = np.random.default_rng(1).integers(0, 16, size=(50, 4)).astype(np.uint8)
    again = q.encode(q.decode(codes))
    assert (again[:, :4] == codes).all()
    # the fifth byte is the squared norm, quantised over the codebooks' range
    exact = (q.decode(codes) ** 2).sum(axis=1)
    step = (q.norm_range[1] - q.norm_range[0]) / 255
    np.testing.assert_allclose(q.squared_norms(again), exact, atol=step / 2 + 1e-5)
    assert q.bits == 16 and q.bytes_per_code == 5


def test_adc_and_sdc_match_brute_force():
    rng = np.random.default_rng(2)
    q = AdditiveQuantizer(rng.normal(size=(3, 8, 6)).astype(np.float32))  # deliberately not orthogonal
    vectors = rng.normal(size=(40, 6)).astype(np.float32)
    q.fit_norms(vectors)
    codes = q.encode(vectors)
    queries = rng.normal(size=(5, 6)).astype(np.float32)
    books, decoded = q.codebooks, q.decode(codes)
    step = (q.norm_range[1] - q.norm_range[0]) / 255
    # brute force from the definitions: ADC = 1/2 + <q, x̂> - ||x̂||²/2 (exact norm, up to its byte's rounding)
    adc = np.array([[0.5 + x @ r - 0.5 * r @ r for r in decoded] for x in queries])
    np.testing.assert_allclose(q.adc_scores(queries, codes), adc, atol=step / 4 + 1e-4)
    # SDC = 1 - Σ_m ||C_m[a_m] - C_m[b_m]||² / 2, one codebook at a time
    sdc = np.array([[1 - 0.5 * sum(np.sum((books[m, a[m]] - books[m, b[m]]) ** 2) for m in range(3)) for b in codes] for a in codes[:5]])
    np.testing.assert_allclose(q.sdc_scores(codes[:5], codes), sdc, rtol=1e-4, atol=1e-4)
    # with mutually orthogonal codebooks SDC is exactly 1 - ||â - b̂||² / 2 of the decoded vectors
    o = _orthogonal_quantizer()
    oc = o.encode(o.decode(rng.integers(0, 16, size=(30, 4)).astype(np.uint8)))
    od = o.decode(oc)
    distances = ((od[:3, None, :] - od[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(o.sdc_scores(oc[:3], oc), 1 - distances / 2, rtol=1e-4, atol=1e-3)
    assert o.cross_term_ratio() == pytest.approx(0.0, abs=1e-7)
    # a reconstruction's own code is its best ADC match, up to the norm byte's rounding
    # (ranking by the raw inner product <q, x̂> would not guarantee it)
    own = q.adc_scores(decoded, codes)
    assert (np.diag(own) >= own.max(axis=1) - step).all()


def test_hamming_distances_count_differing_bits():
    from lookalike.vectors.quantizer import hamming_distances, sign_codes

    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(3, 16)), rng.normal(size=(7, 16))
    bits_a, bits_b = a > 0, b > 0
    expected = (bits_a[:, None, :] != bits_b[None, :, :]).sum(axis=2)
    assert (hamming_distances(sign_codes(a, np.eye(16)), sign_codes(b, np.eye(16))) == expected).all()


def test_orthogonality_penalty_equals_the_brute_force_cross_products():
    from lookalike.training.embedding import _cross_codebook_energy

    books = torch.randn(4, 16, 8, generator=torch.Generator().manual_seed(0))
    brute = [float((books[i] @ books[j].T).pow(2).mean()) for i in range(4) for j in range(4) if i != j]
    assert _cross_codebook_energy(torch, books).item() == pytest.approx(np.mean(brute), rel=1e-5)
    orthogonal = torch.zeros(2, 4, 4)
    orthogonal[0, :, :2], orthogonal[1, :, 2:] = torch.randn(4, 2), torch.randn(4, 2)
    assert _cross_codebook_energy(torch, orthogonal).item() == pytest.approx(0.0, abs=1e-9)


# ---- a real (tiny) training run on the demo catalogue's phone photos ---------------------------------
@pytest.fixture(scope="module")
def trained_store(demo_store, tmp_path_factory):
    """A copy of the demo store with a fine-tuned model (category positives) and a 32-bit quantised one."""
    path = tmp_path_factory.mktemp("trained") / "store"
    shutil.copytree(demo_store, path)
    with Engine.open(path) as engine:
        model = engine.train_embedding(EmbeddingOptions(positives=["category"], views=2, holdout=0.3, steps=300, dim=64, hidden=512, batch_classes=12))
        coded = engine.train_quantizer(QuantizerOptions(model=model.name, bits=32, steps=150, batch_classes=12))
    return path, model.name, coded.name


def test_models_record_their_data_parameters_and_validation(trained_store):
    path, name, coded_name = trained_store
    model = load_model(models_dir(path) / name)
    assert model.info["training_data"]["holdout_products"] >= 60 and model.info["training_data"]["classes"] == 17
    assert model.info["parameters"]["positives"] == ["category"] and model.info["backbones"] == ["efficientnet-lite0-int8@2.1"]
    assert set(model.info["validation"]) == {"off_the_shelf", "fine_tuned"} and len(model.holdout) == model.info["training_data"]["holdout_products"]
    coded = load_model(models_dir(path) / coded_name)
    assert coded.quantizer.bits == 32 and coded.quantizer.codebooks.shape == (4, 256, 64) and coded.info["base_model"] == name
    assert coded.quantizer.bytes_per_code == 5 and coded.quantizer.norm_range[0] < coded.quantizer.norm_range[1]
    # 5 bytes per product still rank far above chance (17 classes: a random ranking's mAP is about 0.07)
    assert coded.info["validation"]["adc"]["map"] > 0.2, coded.info["validation"]


@requires_shared
def test_tiny_real_run_beats_off_the_shelf_on_held_out_catalogue_photos(tmp_path):
    """Confusable Myntra article types (shirts / t-shirts / tops / kurtas, four kinds of shoes), 40 each."""
    rows = list(csv.DictReader((SHARED / "myntra" / "labels.csv").open(encoding="utf-8")))
    rng = random.Random(0)
    sample = []
    for kind in ("Tshirts", "Shirts", "Tops", "Kurtas", "Casual Shoes", "Sports Shoes", "Heels", "Flats"):
        sample += rng.sample([r for r in rows if r["article_type"] == kind], 40)
    source = tmp_path / "sample.csv"
    with source.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["item_id", "image", "article_type"])
        writer.writeheader()
        writer.writerows({"item_id": r["item_id"], "image": str(SHARED / "myntra" / r["image_file"]), "article_type": r["article_type"]} for r in sample)
    with Engine.open(tmp_path / "store") as engine:
        engine.ingest(source, id_column="item_id", image_column="image")
        model = engine.train_embedding(EmbeddingOptions(positives=["article_type"], views=2, holdout=0.3, steps=400, batch_classes=8))
    validation = model.info["validation"]
    assert validation["fine_tuned"]["map"] > validation["off_the_shelf"]["map"] + 0.05, validation
    assert validation["fine_tuned"]["nn_accuracy"] >= validation["off_the_shelf"]["nn_accuracy"], validation


def test_training_is_reproducible_with_a_seed(trained_store, tmp_path):
    path, name, _ = trained_store
    copy = tmp_path / "store"
    shutil.copytree(path, copy)
    first = load_model(models_dir(path) / name)
    with Engine.open(copy) as engine:  # the cached view features are reused, the head is retrained
        again = engine.train_embedding(EmbeddingOptions(**{**first.info["parameters"], "keep_out": []}))
    assert again.name != first.name and again.info["weights_sha"] == first.info["weights_sha"]


def test_bad_training_requests_are_refused_with_reasons(engine):
    with pytest.raises(TrainingDataError, match="unknown positives column"):
        engine.train_embedding(EmbeddingOptions(positives=["no_such_column"]))
    with pytest.raises(TrainingDataError, match="loss must be one of"):
        engine.train_embedding(EmbeddingOptions(positives=["category"], loss="contrastive-ish"))
    with pytest.raises(ModelError, match="no model 'missing'"):
        engine.train_quantizer(QuantizerOptions(model="missing"))
    with pytest.raises(ModelError, match="must be 1-80 letters"):
        engine.train_embedding(EmbeddingOptions(positives=["category"], name="../escape"))


def test_damaged_model_is_refused(trained_store, tmp_path):
    path, name, _ = trained_store
    copy = tmp_path / "model"
    shutil.copytree(models_dir(path) / name, copy)
    info = (copy / "model.json").read_text().replace('"steps": 300', '"steps": 301')
    (copy / "model.json").write_text(info)
    load_model(copy)  # parameters are descriptive; the weights still match
    weights = np.load(copy / "weights.npz")
    arrays = {k: weights[k] for k in weights.files}
    arrays["layer0_bias"] = arrays["layer0_bias"] + 1
    np.savez(copy / "weights.npz", **arrays)
    with pytest.raises(ModelError, match="does not match"):
        load_model(copy)


# ---- re-indexing --------------------------------------------------------------------------------------
def test_reindex_switches_atomically_under_concurrent_queries(trained_store, tmp_path):
    path, name, _ = trained_store
    store = tmp_path / "store"
    shutil.copytree(path, store)
    queries = [DEMO_CSV.parent / "images" / f for f in ("878ff7a3.jpg", "9733514d.jpg")]
    errors: list[str] = []
    seen_dims: set[int] = set()
    stop = threading.Event()
    with Engine.open(store) as engine:
        old_identity = engine.encoder.identity

        def query_loop() -> None:
            while not stop.is_set():
                for image in queries:
                    try:
                        hits = engine.search(image, k=10)
                        similar = engine.similar(image.stem, k=5)
                    except Exception as exc:  # any failure during the switch is a bug
                        errors.append(repr(exc))
                        return
                    seen_dims.add(engine.index.dim)
                    # complete results only: k hits, the photo's own product first with (almost) identical vectors
                    if len(hits) != 10 or hits[0].id != image.stem or hits[0].score < 0.99 or len(similar) != 5:
                        errors.append(f"incomplete result: {[(h.id, round(h.score, 3)) for h in hits[:3]]}")

        threads = [threading.Thread(target=query_loop) for _ in range(2)]
        for t in threads:
            t.start()
        outcome = engine.reindex(name)
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        assert outcome["switched"] and outcome["products"] == 305
        # the head is applied to the stored backbone vectors: no image is read again
        assert outcome["from_backbone_vectors"] == 305 and outcome["from_images"] == 0
        assert engine.encoder.identity.startswith(name + "@") and engine.index.dim == 64
        assert engine.stats()["kept_vectors"] == {old_identity: 305}
        assert engine.search(queries[0], k=1)[0].id == "878ff7a3"
    with Engine.open(store) as engine:  # the switch is on disk: reopening serves the model
        assert engine.encoder.identity.startswith(name + "@") and len(engine) == 305
        back = engine.reindex("efficientnet-lite0-int8")
        assert back["reused"] == 305 and back["from_images"] == 0, "switching back reuses the kept vectors"
        assert engine.encoder.identity == old_identity


def test_reindex_catches_up_products_changed_during_staging(trained_store, tmp_path):
    path, name, _ = trained_store
    store = tmp_path / "store"
    shutil.copytree(path, store)
    with Engine.open(store) as engine:
        from lookalike.ingest.reindex import Reindexer
        from lookalike.models import get_encoder

        reindexer = Reindexer(engine.store, engine.limits, get_encoder(name, engine.settings.replace(store=str(store))))
        reindexer.stage()
        engine.upsert("new-one", DEMO_CSV.parent / "images" / "878ff7a3.jpg", {"category": "Blazer"})
        assert reindexer.catch_up() == 1
        assert engine.store.model_vectors(reindexer.target.identity, [engine.get("new-one").rowid])


def test_reindex_with_unknown_model_names_the_choices(engine):
    from lookalike.models.encoders import EncoderError

    with pytest.raises(EncoderError, match="unknown encoder 'nope'.*lookalike train embedding"):
        engine.reindex("nope")


def test_cli_train_list_and_reindex(trained_store, tmp_path):
    import json
    import subprocess
    import sys

    path, name, coded_name = trained_store
    store = tmp_path / "store"
    shutil.copytree(path, store)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lookalike", "--store", str(store), *args], capture_output=True, text=True, timeout=300)

    listed = run("train", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    models = {m["name"]: m for m in json.loads(listed.stdout)}
    assert set(models) == {name, coded_name} and not any(m["serving"] for m in models.values())
    bad = run("train", "quantizer", "--model", name, "--bits", "60")
    assert bad.returncode == 1 and "multiple of 8" in bad.stderr
    missing = run("reindex", "--model", "no-such-model")
    assert missing.returncode == 1 and "unknown encoder 'no-such-model'" in missing.stderr
    switched = run("reindex", "--model", coded_name, "--json")
    assert switched.returncode == 0, switched.stderr
    outcome = json.loads(switched.stdout)
    assert outcome["switched"] and outcome["products"] == 305 and outcome["from_images"] == 0
    info = json.loads(run("info", "--json").stdout)
    assert info["encoder"].startswith(coded_name + "@") and info["quantized_bits"] == 32 and info["dim"] == 64
    assert info["index"] == "5-byte codes, ADC"
    hits = json.loads(run("search", str(DEMO_CSV.parent / "images" / "878ff7a3.jpg"), "--json", "-k", "3").stdout)
    assert hits[0]["id"] == "878ff7a3"
    again = run("reindex", "--model", coded_name)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_serving_a_quantised_model_searches_codes_then_reranks(trained_store, tmp_path):
    path, _, coded_name = trained_store
    store = tmp_path / "store"
    shutil.copytree(path, store)
    with Engine.open(store) as engine:
        engine.reindex(coded_name)
        index = engine.index
        assert index.quantizer is not None and index.codes.shape[1] == 5
        rowids = index.ids()
        exact_top, coded_top, sdc_top = [], [], []
        for rowid in rowids[:60]:
            query = index.vector(int(rowid))
            exact = index.matrix[rowids] @ query
            exact_top.append(set(rowids[np.argsort(-exact)[:10]].tolist()))
            coded_top.append(set(index.search(query, 10)[0].tolist()))
        # ADC proposes 10 x 10 candidates, exact scores re-rank them: nearly the exact top 10
        overlap = np.mean([len(a & b) / 10 for a, b in zip(exact_top, coded_top)])
        assert overlap > 0.8, overlap
        index.rerank_factor = 0  # the code scores are the answer
        index.set_mode("sdc")
        for rowid in rowids[:60]:
            ids, scores = index.search(index.vector(int(rowid)), 10)
            assert len(ids) == 10 and (np.diff(scores) <= 1e-6).all()
            sdc_top.append(set(ids.tolist()))
        assert np.mean([len(a & b) / 10 for a, b in zip(exact_top, sdc_top)]) > 0.3


def test_http_reindex_switches_the_running_server(trained_store, tmp_path):
    import time

    import httpx

    from .conftest import Server

    path, name, _ = trained_store
    store = tmp_path / "store"
    shutil.copytree(path, store)
    server = Server(store)
    try:
        models = httpx.get(server.url + "/models").json()
        assert {m["name"] for m in models["models"]} >= {name} and models["serving"].startswith("efficientnet-lite0-int8@")
        missing = httpx.post(server.url + "/reindex", headers=server.auth, json={"model": "nope"})
        assert missing.status_code == 404 and "unknown encoder 'nope'" in missing.json()["detail"]
        started = httpx.post(server.url + "/reindex", headers=server.auth, json={"model": name})
        assert started.status_code == 202
        photo = (DEMO_CSV.parent / "images" / "878ff7a3.jpg").read_bytes()
        deadline = time.time() + 120
        while time.time() < deadline:
            hits = httpx.post(server.url + "/search", files={"image": ("q.jpg", photo, "image/jpeg")}, params={"k": 5}).json()["results"]
            assert len(hits) == 5 and hits[0]["id"] == "878ff7a3"  # served throughout, old index or new
            status = httpx.get(server.url + "/reindex/status", headers=server.auth).json()
            if not status["running"]:
                break
            time.sleep(0.2)
        assert status["error"] is None and status["outcome"]["switched"], status
        assert status["serving"].startswith(name + "@") and httpx.get(server.url + "/stats", headers=server.auth).json()["dim"] == 64
    finally:
        server.stop()


def test_a_process_with_the_old_encoder_cannot_write_after_another_reindexed(trained_store, tmp_path):
    from lookalike.storage import StoreError

    path, name, _ = trained_store
    store = tmp_path / "store"
    shutil.copytree(path, store)
    with Engine.open(store) as stale, Engine.open(store) as other:
        other.reindex(name)
        with pytest.raises(StoreError, match="re-indexed by another process"):
            stale.upsert("late", DEMO_CSV.parent / "images" / "878ff7a3.jpg", {"category": "Blazer"})
        stale.upsert("878ff7a3", metadata={"category": "Blazer", "note": "metadata-only changes are fine"})


def test_unfrozen_head_starts_from_the_backbone_and_serves(trained_store, tmp_path):
    """--unfreeze-head trains the backbone's last 1x1 convolution from cached feature maps."""
    path, name, _ = trained_store
    store = tmp_path / "store"
    shutil.copytree(path, store)
    frozen = load_model(models_dir(path) / name)
    with Engine.open(store) as engine:
        model = engine.train_embedding(EmbeddingOptions(positives=["category"], views=2, holdout=0.3, steps=40, dim=64, hidden=512,
                                                        batch_classes=12, unfreeze_head=True))
        assert model.info["backbones"] == ["efficientnet-lite0-maps@2"] and model.head.conv[0].shape == (320, 1280)
        assert model.head.pretrained_conv is not None and not np.allclose(model.head.pretrained_conv[0], model.head.conv[0])  # kept, and trained away from
        # before training, the folded pretrained convolution reproduces the frozen backbone's features exactly:
        # the off-the-shelf baseline measured through the feature maps equals the one of the frozen run
        for key, value in frozen.info["validation"]["off_the_shelf"].items():
            assert model.info["validation"]["off_the_shelf"][key] == pytest.approx(value, abs=0.02), key
        outcome = engine.reindex(model.name)
        assert outcome["from_images"] == 305 and outcome["from_backbone_vectors"] == 0  # no stored feature maps to reuse
        assert engine.search(DEMO_CSV.parent / "images" / "878ff7a3.jpg", k=1)[0].id == "878ff7a3"
    with pytest.raises(TrainingDataError, match="one EfficientNet-Lite backbone"), Engine.open(store) as engine:
        engine.train_embedding(EmbeddingOptions(positives=["category"], backbones=["efficientnet-lite0", "efficientnet-lite2"], unfreeze_head=True))


def test_models_are_portable_between_stores(trained_store, demo_store, tmp_path):
    """Trained in one store, applied to another by folder path (re-index imports it) or after `models import`."""
    import json
    import subprocess
    import sys

    path, name, coded_name = trained_store
    other = tmp_path / "other"
    shutil.copytree(demo_store, other)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lookalike", "--store", str(other), *args], capture_output=True, text=True, timeout=300)

    switched = run("reindex", "--model", str(models_dir(path) / name), "--json")
    assert switched.returncode == 0, switched.stderr
    assert (models_dir(other) / name / "model.json").is_file()  # imported, so the store reopens with it by name
    info = json.loads(run("info", "--json").stdout)
    assert info["encoder"].startswith(name + "@") and info["dim"] == 64
    hits = json.loads(run("search", str(DEMO_CSV.parent / "images" / "878ff7a3.jpg"), "--json", "-k", "1").stdout)
    assert hits[0]["id"] == "878ff7a3"
    imported = run("models", "import", str(models_dir(path) / coded_name))
    assert imported.returncode == 0 and coded_name in imported.stdout
    assert run("models", "import", str(models_dir(path) / coded_name)).returncode == 0  # the same model again: a no-op
    listed = {m["name"]: m for m in json.loads(run("models", "list", "--json").stdout)}
    assert set(listed) == {name, coded_name} and listed[name]["serving"]
    assert run("models", "import", str(tmp_path)).returncode == 1  # not a model folder: refused with a reason
    damaged = tmp_path / "damaged"
    shutil.copytree(models_dir(path) / name, damaged)
    (damaged / "weights.npz").write_bytes(b"x")
    refused = run("models", "import", str(damaged))
    assert refused.returncode == 1 and "cannot be read" in refused.stderr


def test_a_tagger_file_from_another_store_tags_this_one(engine, tmp_path, demo_store):
    from lookalike.tagging import TrainOptions
    from lookalike.tagging.tagger import current_tagger_path

    engine.train_taggers(TrainOptions(columns=["category"], image_model="none", folds=2))
    taggers_file = current_tagger_path(engine)
    other = tmp_path / "other"
    shutil.copytree(demo_store, other)
    with Engine.open(other) as second:
        assert second.taggers is None
        chosen = second.tagging.load_file(taggers_file)
        assert second.tagging.tag(taggers=chosen) == 305
        assert second.get("878ff7a3").tags["category"]["value"] == "Blazer"


# ---- keeping the backbone's share of the similarity -----------------------------------------------------
def test_a_backbone_share_mixes_the_two_similarities_and_serves(trained_store, tmp_path):
    """--backbone-share 0.5: each cosine is half the head's and half the backbone's, the share is
    part of the hashed weights (an edit is refused), search serves it and codes refuse it."""
    path, name, _ = trained_store
    store = tmp_path / "store"
    shutil.copytree(path, store)
    with Engine.open(store) as engine:
        plain = load_model(models_dir(store) / name)
        mixed = engine.train_embedding(EmbeddingOptions(positives=["category"], views=2, holdout=0.3, steps=300, dim=64, hidden=512, batch_classes=12,
                                                        backbone_share=0.5, name="mixed"))
        assert mixed.head.dim == 64 + 1280 and load_model(models_dir(store) / "mixed").head.backbone_share == 0.5
        features = np.random.default_rng(0).normal(size=(5, 1280)).astype(np.float32)
        unit = features / np.linalg.norm(features, axis=1, keepdims=True)
        out = mixed.head(features)
        assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
        head_only = mixed.head(features)[:, :64] / np.sqrt(0.5)
        assert np.allclose(out @ out.T, 0.5 * head_only @ head_only.T + 0.5 * unit @ unit.T, atol=1e-5)
        # same seed and data as the plain model: the head part is the plain model's head
        assert np.allclose(head_only, plain.head(features), atol=1e-5)
        # a street-like view of a held-out product finds its own photo at least as often as without the share
        assert mixed.info["validation"]["fine_tuned"]["view_recall_at_1"] >= plain.info["validation"]["fine_tuned"]["view_recall_at_1"]
        with pytest.raises(ModelError, match="backbone share"):
            engine.train_quantizer(QuantizerOptions(model="mixed", bits=32, steps=5))
        engine.reindex("mixed")
        hits = engine.search(DEMO_CSV.parent / "images" / "878ff7a3.jpg", k=3)
        assert hits[0].id == "878ff7a3" and hits[0].score > 0.99
    folder = models_dir(store) / "mixed"
    weights = np.load(folder / "weights.npz")
    arrays = {k: weights[k] for k in weights.files}
    arrays["backbone_share"] = np.array([0.9])
    np.savez(folder / "weights.npz", **arrays)
    with pytest.raises(ModelError, match="does not match"):
        load_model(folder)


def test_a_backbone_share_out_of_range_is_refused(engine):
    for share in (-0.1, 1.0, float("nan")):
        with pytest.raises(TrainingDataError, match="backbone share"):
            engine.train_embedding(EmbeddingOptions(positives=["category"], backbone_share=share, steps=1))


def test_clean_photo_features_come_from_the_stored_vectors(store_copy):
    """View 0 is the product's own photo through the store's encoder: the store already holds
    that vector, so the backbone runs on the augmented views only (a quarter less work at 4 views)."""
    from lookalike.training.embedding import load_training_set, open_cache

    with Engine.open(store_copy) as engine:
        view = engine.view()
        cache = open_cache(view, [engine.encoder.name], views=2, seed=0)
        backbone = cache.backbones[0]
        images_run = []
        original = backbone.embed

        def counting(batch):
            images_run.append(len(batch))
            return original(batch)

        backbone.embed = counting  # type: ignore[method-assign]
        lines: list[str] = []
        data = load_training_set(view, ["category"], ["kids=false"], cache, 0.3, 2, 0, None, lines.append)
        products = len(data.ids)
        assert products > 200 and sum(images_run) == products  # the augmented view of each, no clean photo
        assert any("read from the store's vectors" in line for line in lines)
        rowids = [engine.store.get(pid).rowid for pid in data.ids[:20]]
        vectors = engine.store.model_vectors(engine.encoder.identity, rowids)
        for row, rowid in enumerate(rowids):
            assert np.allclose(data.features[row, 0].astype(np.float32), vectors[rowid][1], atol=2e-3)
        # a product whose photo changed since its vector was stored gets its clean view computed again
        first = data.ids[0]
        engine.store._db.execute("UPDATE products SET image_hash = 'changed' WHERE id = ?", (first,))
        images_run.clear()
        shutil.rmtree(cache.directory)
        cache.directory.mkdir(parents=True)
        load_training_set(view, ["category"], ["kids=false"], cache, 0.3, 2, 0, None, lines.append)
        assert sum(images_run) == products + 1
