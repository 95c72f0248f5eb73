"""Label review: the F1 view and the contradicted labels of the real taggers on the demo, label fixes
recorded with who and when, retraining on the fixed labels, and every entry point refusing bad input."""

from __future__ import annotations

import csv
import io
import shutil
import time
from pathlib import Path

import httpx
import pytest

from lookalike import Engine
from lookalike.tagging import TrainOptions
from lookalike.tagging.review import LabelError

from .conftest import Server
from .test_cli import run
from .test_web import CHROMIUM, browser, page, shot  # noqa: F401  (fixtures)

OPTIONS = TrainOptions(columns=["category"], image_model="none", folds=2, review_confidence=0.3)


@pytest.fixture(scope="module")
def reviewed_store(demo_store, tmp_path_factory) -> Path:
    """The demo with taggers trained on its category column (contradictions listed from 0.3 confidence)."""
    store = tmp_path_factory.mktemp("review") / "store"
    shutil.copytree(demo_store, store)
    with Engine.open(store) as engine:
        engine.train_taggers(OPTIONS)
    return store


@pytest.fixture
def reviewed(reviewed_store, tmp_path) -> Path:
    target = tmp_path / "store"
    shutil.copytree(reviewed_store, target)
    return target


def test_the_views_a_fix_and_a_retrain(reviewed):
    with Engine.open(reviewed) as engine:
        review = engine.tagging.review.column("category")
        assert len(review.per_class) == 17 and [c["f1"] for c in review.per_class] == sorted(c["f1"] for c in review.per_class)
        assert review.items and all(i["current"] != i["predicted"] and i["confidence"] >= 0.3 and not i["fixed"] for i in review.items)
        first, second = review.items[0], review.items[1]
        change = engine.tagging.review.relabel(first["id"], "category", first["predicted"], who="ana")
        assert change == {"id": first["id"], "column": "category", "old": first["current"], "new": first["predicted"], "who": "ana"}
        engine.tagging.review.relabel(second["id"], "category", "  Skirt ", who="ben")  # typed by hand: trimmed
        product = engine.get(first["id"])
        assert product.metadata["category"] == first["predicted"]
        assert engine.get(second["id"]).metadata["category"] == "Skirt"
        assert engine.browse(where=f"category={first['predicted']}")[0] >= 1
        after = {i["id"]: i for i in engine.tagging.review.column("category").items}
        assert after[first["id"]]["fixed"] and after[first["id"]]["labelled"] == first["current"]
        changes = engine.tagging.review.changes()
        assert [(c["id"], c["who"], c["new"]) for c in changes] == [(second["id"], "ben", "Skirt"), (first["id"], "ana", first["predicted"])]
        assert all(c["at"] > time.time() - 120 for c in changes)
        before = engine.taggers.name
        retrained = engine.tagging.retrain()
        assert retrained.name != before and retrained.report["options"]["review_confidence"] == 0.3
        assert retrained.report["columns"]["category"]["products"] == 305
        assert first["id"] not in {i["id"] for i in engine.tagging.review.column("category").items if i["current"] == first["current"]}


def test_bad_fixes_are_refused_naming_what_and_why(reviewed):
    with Engine.open(reviewed) as engine:
        item = engine.tagging.review.column("category").items[0]
        for product, column, value, message in [
            ("missing-id", "category", "Dress", "no product with id 'missing-id'"),
            (item["id"], "price", "1", "column 'price' is not reviewed"),
            (item["id"], "category", "   ", "must be 1..200"),
            (item["id"], "category", "x" * 201, "must be 1..200"),
            (item["id"], "category", "Dre\u0000ss", "control"),
            (item["id"], "category", "Dress\u202e", "control"),
        ]:
            with pytest.raises(LabelError, match=message):
                engine.tagging.review.relabel(product, column, value, who="x")
        with pytest.raises(LabelError, match="no tagger was trained on column 'nope'"):
            engine.tagging.review.column("nope")
        assert engine.tagging.review.changes() == [] and engine.get(item["id"]).metadata["category"] == item["current"]


def test_cli_relabel_changes_and_retrain(reviewed, tmp_path):
    with Engine.open(reviewed) as engine:
        item = engine.tagging.review.column("category").items[0]
    fixed = run("tag", "relabel", item["id"], "category", item["predicted"], "--who", "ana", store=reviewed)
    assert fixed.returncode == 0 and f"-> '{item['predicted']}'" in fixed.stdout
    assert run("tag", "relabel", item["id"], "colour", "Red", store=reviewed).returncode == 1
    listed = run("tag", "changes", "--csv", str(tmp_path / "changes.csv"), store=reviewed)
    assert listed.returncode == 0 and "by ana" in listed.stdout
    rows = list(csv.DictReader(io.StringIO((tmp_path / "changes.csv").read_text())))
    assert rows[0]["id"] == item["id"] and rows[0]["old"] == item["current"] and rows[0]["who"] == "ana"
    retrained = run("tag", "retrain", store=reviewed)
    assert retrained.returncode == 0 and "retrained: taggers-v2" in retrained.stdout


def test_http_labels_review_fix_changes_and_retrain(reviewed):
    server = Server(reviewed)
    try:
        review = httpx.get(server.url + "/labels/review", params={"column": "category"}, headers=server.auth).json()
        item = review["items"][0]
        body = {"id": item["id"], "column": "category", "value": item["predicted"]}
        assert httpx.post(server.url + "/labels", json=body).status_code in (401, 403)
        fixed = httpx.post(server.url + "/labels", json=body, headers=server.auth)
        assert fixed.status_code == 200 and fixed.json()["who"] == "tests"
        for bad in [{**body, "value": ""}, {**body, "value": "x" * 201}, {**body, "column": "price"}, {**body, "id": "missing"},
                    {**body, "value": "a\nb"}, {**body, "id": "x" * 201}, {"id": item["id"]}, {**body, "value": ["Dress"]}]:
            refused = httpx.post(server.url + "/labels", json=bad, headers=server.auth)
            assert refused.status_code == 422, (bad, refused.text)
        assert httpx.get(server.url + "/labels/review", params={"column": "nope"}, headers=server.auth).status_code == 422
        assert httpx.get(server.url + "/labels/changes").status_code in (401, 403)
        changes = httpx.get(server.url + "/labels/changes", headers=server.auth).json()["changes"]
        assert [(c["id"], c["new"]) for c in changes] == [(item["id"], item["predicted"])]
        assert httpx.get(server.url + "/labels/changes.csv", headers=server.auth).text.startswith("change,id,column,old,new,who,at")
        started = httpx.post(server.url + "/tags/retrain", headers=server.auth)
        assert started.status_code == 202, started.text
        deadline = time.time() + 120
        while time.time() < deadline:
            job = httpx.get(server.url + "/taggers", headers=server.auth).json()
            if job.get("name") == "taggers-v2":
                break
            time.sleep(0.5)
        assert job["name"] == "taggers-v2"
    finally:
        server.stop()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_label_review_page_accept_retype_and_retrain(page, reviewed):  # noqa: F811
    server = Server(reviewed)
    try:
        page.goto(server.url + "/admin/labels?column=category")
        page.fill("#key", server.key)
        page.click("form.login button[type=submit]")
        page.wait_for_selector("#per-class tr[data-class]")
        assert page.locator("#per-class tr[data-class]").count() == 17
        cards = page.eval_on_selector_all("#contradicted .card", "cs => cs.map(c => c.dataset.id)")
        first, second = cards[0], cards[1]
        predicted = page.inner_text(f"#contradicted .card[data-id='{first}'] button.accept").removeprefix("Accept “").removesuffix("”")
        shot(page, "label-review")
        page.click(f"#contradicted .card[data-id='{first}'] button.accept")
        page.wait_for_selector(f"#contradicted .card.fixed[data-id='{first}']")
        page.fill(f"#contradicted .card[data-id='{second}'] .retype input[name=value]", "Skirt")
        page.click(f"#contradicted .card[data-id='{second}'] .retype button")
        page.wait_for_selector(f"#contradicted .card.fixed[data-id='{second}']")
        assert "Skirt" in page.inner_text(f"#contradicted .card[data-id='{second}'] .current")
        changes = page.inner_text("#changes")
        assert first in changes and second in changes and "tests" in changes
        assert predicted in changes
        page.click("#retrain")
        deadline = time.time() + 120
        while time.time() < deadline and "Retrained" not in (page.text_content("#retrain-status") or ""):
            time.sleep(1)
            page.reload()
        assert "taggers-v2" in page.inner_text("#retrain-status")
    finally:
        server.stop()
