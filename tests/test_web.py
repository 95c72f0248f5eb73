"""The web app in a real headless Chromium (Debian's), driven by Playwright, against a real server."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from .conftest import DEMO_CSV, ROOT, Server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it")
ARTIFACTS = ROOT / "test-artifacts"
PHOTO = DEMO_CSV.parent / "images" / "878ff7a3.jpg"  # a blazer


@pytest.fixture(scope="module")
def web_server(demo_store, tmp_path_factory):
    store = tmp_path_factory.mktemp("web") / "store"
    shutil.copytree(demo_store, store)
    roots = f"{tmp_path_factory.getbasetemp()},{ROOT / 'examples'}"  # server-side catalogues and their photos
    server = Server(store, {"LOOKALIKE_INGEST_ROOTS": roots})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (pip install playwright)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page; the test fails if the Content-Security-Policy blocked anything on it."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text) if "Content Security Policy" in message.text else None)
    yield page
    context.close()
    assert not blocked, blocked


def shot(page, name: str) -> None:
    """Save a screenshot as a test artefact; LOOKALIKE_UPDATE_DOCS=1 also refreshes docs/screenshots."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)
    if os.environ.get("LOOKALIKE_UPDATE_DOCS"):
        (ROOT / "docs" / "screenshots").mkdir(parents=True, exist_ok=True)
        shutil.copy(ARTIFACTS / f"{name}.png", ROOT / "docs" / "screenshots" / f"{name}.png")


def result_ids(page, grid: str = "#result-grid") -> list[str]:
    return page.eval_on_selector_all(f"{grid} .card", "cards => cards.map(c => c.dataset.id)")


def upload(page, path: Path) -> None:
    page.set_input_files("#file", str(path))
    page.wait_for_selector("#results .results-heading, #results .error, #message .error")


def test_upload_a_catalogue_photo_and_see_its_product_first(page, web_server):
    page.goto(web_server.url + "/")
    started = time.perf_counter()
    upload(page, PHOTO)
    elapsed = time.perf_counter() - started
    ids = result_ids(page)
    assert ids[0] == "878ff7a3" and len(ids) == 24
    print(f"search results rendered {elapsed * 1000:.0f} ms after choosing the photo")
    shot(page, "search")


def test_facet_filters_results_without_reload(page, web_server):
    page.goto(web_server.url + "/")
    upload(page, PHOTO)
    page.evaluate("window.__marker = 1")  # survives only if the page is not reloaded
    with page.expect_response(lambda r: "/ui/search" in r.url and "category%3DShoes" in r.url):
        page.check("fieldset[data-column=category] input[value=Shoes]")
    page.wait_for_function("document.querySelectorAll('#result-grid .card').length > 0")
    categories = page.eval_on_selector_all("#result-grid .card li[data-column=category]", "els => els.map(e => e.textContent)")
    assert categories and set(categories) == {"Shoes"}
    assert page.evaluate("window.__marker") == 1
    shot(page, "search-facet")


def test_more_like_this_and_crop(page, web_server):
    page.goto(web_server.url + "/")
    upload(page, PHOTO)
    second = result_ids(page)[1]
    with page.expect_response(lambda r: f"/ui/similar/{second}" in r.url):
        page.click(f"#result-grid .card[data-id='{second}'] .more")
    page.wait_for_selector("#results .results-heading:has-text('More like')")
    assert second not in result_ids(page)
    still = "() => new Promise(done => { const y = window.scrollY; setTimeout(() => done(window.scrollY === y), 200); })"
    page.wait_for_function(still)  # the smooth scroll to the results has finished
    page.locator("#preview").scroll_into_view_if_needed()
    page.wait_for_function(still)
    box = page.locator("#preview").bounding_box()
    with page.expect_response(lambda r: "/ui/search" in r.url):
        page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6, steps=5)
        page.mouse.up()
    assert page.is_visible("#crop-box") and page.is_visible("#clear-crop")
    page.wait_for_selector("#results .results-heading:has-text('Results')")
    shot(page, "search-crop")


def test_product_page_shows_similar_items(page, web_server):
    page.goto(web_server.url + "/product/878ff7a3")
    assert page.inner_text("h1") and "Blazer" in page.inner_text("table.meta")
    similar = result_ids(page, "#similar")
    assert len(similar) == 12 and "878ff7a3" not in similar
    page.select_option("select[name=exclude]", "category")
    page.wait_for_url("**exclude=category**")
    categories = page.eval_on_selector_all("#similar li[data-column=category]", "els => els.map(e => e.textContent)")
    assert categories and "Blazer" not in categories
    shot(page, "product")


def test_non_image_upload_shows_an_error(page, web_server, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a photo")
    page.goto(web_server.url + "/")
    upload(page, bad)
    assert "not a photo we can read" in page.inner_text("#results .error")
    too_big = tmp_path / "big.jpg"
    too_big.write_bytes(b"\xff\xd8\xff" + b"0" * (21 * 1024 * 1024))
    page.set_input_files("#file", str(too_big))
    page.wait_for_selector("#message .error")
    assert "too large" in page.inner_text("#message .error")
    shot(page, "search-error")


def test_browse_with_facets_and_pages(page, web_server):
    page.goto(web_server.url + "/browse")
    assert "305 products" in page.inner_text("#browse")
    page.click("#browse a[rel=next]")
    page.wait_for_selector("#browse :text('page 2 of')")
    page.check("fieldset[data-column=category] input[value=Hat]")
    page.wait_for_selector("#browse :text('18 products')")
    assert set(page.eval_on_selector_all("#browse-grid li[data-column=category]", "els => els.map(e => e.textContent)")) == {"Hat"}
    shot(page, "browse")


def test_admin_shows_stats_runs_and_skipped_items(page, web_server, tmp_path):
    catalogue = tmp_path / "extra.csv"
    catalogue.write_text(f"id,image,category\nnew-1,{PHOTO},Blazer\nbroken,{tmp_path / 'missing.jpg'},Hat\n")
    assert httpx.post(web_server.url + "/ingest", headers=web_server.auth, json={"source": str(catalogue)}).status_code == 202
    page.goto(web_server.url + "/admin")
    assert "/login" in page.url  # the admin pages ask for a key
    page.fill("#key", "lk_wrong_key")
    page.click("form.login button[type=submit]")
    assert "unknown or revoked" in page.inner_text("main")
    page.fill("#key", web_server.key)
    page.click("form.login button[type=submit]")
    page.wait_for_url("**/admin")
    page.wait_for_selector("#skipped :text('broken')", timeout=30_000)
    assert "file not found" in page.inner_text("#skipped")
    assert "efficientnet-lite0" in page.inner_text("#stats")
    page.wait_for_selector("#stats :text('306')")  # the product added by that ingest, without a reload
    shot(page, "admin")


def test_keyboard_and_phone_layout(browser, web_server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(web_server.url + "/")
    assert page.get_attribute("#camera", "capture") == "environment"
    reached = []
    for _ in range(20):  # keyboard only: the skip link, the menu, the drop zone, the file and camera inputs
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    assert {"drop", "file", "camera"} <= set(reached)
    upload(page, PHOTO)
    assert page.is_visible("#result-grid .card")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # no sideways scrolling on a phone
    shot(page, "phone")
    context.close()


def test_empty_catalogue_says_so(page, tmp_path):
    server = Server(tmp_path / "empty-store")
    try:
        page.goto(server.url + "/")
        assert "catalogue is empty" in page.inner_text("main .error")
        upload(page, PHOTO)
        assert "catalogue is empty" in page.inner_text("#results .error")
    finally:
        server.stop()


OUTFIT = ROOT / "examples" / "street" / "outfit-0122.jpg"  # a person in the street: blouse, jeans, shoes, bag


def test_shop_the_look_click_a_garment_to_see_its_products(page, web_server):
    page.goto(web_server.url + "/")
    upload(page, OUTFIT)
    page.wait_for_selector("#look .garment-chip")
    groups = page.eval_on_selector_all("#look .garment-chip", "chips => chips.map(c => c.dataset.group)")
    assert {"top", "bottom", "shoes"} <= set(groups)
    assert page.locator(".crop-area .garment-box").count() == len(groups)  # a box over the photo per garment
    assert page.is_visible(".crop-area .garment-outline")  # the selected garment's mask
    visible = page.eval_on_selector_all(".garment-results:not([hidden])", "els => els.map(e => e.dataset.group)")
    assert len(visible) == 1
    # click the shoes on the photo itself: their panel replaces the first one
    box = page.locator("#preview").bounding_box()
    x1, y1, x2, y2 = map(float, page.get_attribute("#look .garment-chip[data-group=shoes]", "data-box").split(","))
    look = page.locator("#look")
    width, height = float(look.get_attribute("data-width")), float(look.get_attribute("data-height"))
    page.mouse.click(box["x"] + box["width"] * (x1 + x2) / 2 / width, box["y"] + box["height"] * (y1 + y2) / 2 / height)
    page.wait_for_function("document.querySelector('.garment-results[data-group=shoes]').hidden === false")
    assert page.eval_on_selector_all(".garment-results:not([hidden])", "els => els.map(e => e.dataset.group)") == ["shoes"]
    assert page.get_attribute("#look .garment-chip[data-group=shoes]", "aria-selected") == "true"
    categories = page.eval_on_selector_all(".garment-results[data-group=shoes] .card li[data-column=category]", "els => els.map(e => e.textContent)")
    assert categories and categories[0] == "Shoes"
    shot(page, "shop-the-look")
    # the chips work too, and dragging a crop still searches just the crop
    page.click("#look .garment-chip[data-group=top]")
    assert page.eval_on_selector_all(".garment-results:not([hidden])", "els => els.map(e => e.dataset.group)") == ["top"]
    with page.expect_response(lambda r: "/ui/search" in r.url and "whole=1" in r.url):
        page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.15)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.45, steps=5)
        page.mouse.up()
    page.wait_for_selector("#results .results-heading:has-text('Results')")
    assert page.locator("#result-grid .card").count() > 0


# ---- words and "like this, but…" (the demo has no titles: category labels and zero-shot tags) ----
@pytest.fixture(scope="module")
def tagged_server(demo_store, tmp_path_factory):
    from lookalike import Engine

    store = tmp_path_factory.mktemp("web-tagged") / "store"
    shutil.copytree(demo_store, store)
    with Engine.open(store) as engine:
        engine.tag()  # label-free tags: a colour for every product, so product pages get swatches
        # two blazers in another colour guess the blazer's first swatch colour as their runner-up:
        # "like this, but <that colour>" then shows them, saying it is a guess
        wanted = engine.text.change_values("878ff7a3", "colour")[0]["value"]
        _, blazers = engine.browse(where=["category=Blazer"], limit=100)
        others = [p for p in blazers if p.id != "878ff7a3" and p.tags.get("colour", {}).get("value") not in (None, wanted)][:2]
        engine.store.write_tags([(p.rowid, {**p.tags, "colour": {**p.tags["colour"], "alternatives": [[wanted, 0.3]]}}) for p in others], "test")
        assert len(others) == 2
    server = Server(store)
    yield server
    server.stop()


def test_search_by_words_alone_and_with_a_photo(page, tagged_server):
    page.goto(tagged_server.url + "/")
    page.evaluate("window.__marker = 1")
    page.fill("#q", "dress")
    with page.expect_response(lambda r: "/ui/search/text" in r.url and "q=dress" in r.url):
        page.press("#q", "Enter")
    page.wait_for_selector("#results .results-heading:has-text('Results for')")
    categories = page.eval_on_selector_all("#result-grid .card li[data-column=category]", "els => els.map(e => e.textContent)")
    dresses = categories.count("Dress")
    assert len(categories) == 24 and dresses >= 10 and categories[:dresses] == ["Dress"] * dresses  # every dress first
    assert "category: Dress" in page.inner_text("#read-as") and page.evaluate("window.__marker") == 1  # no reload
    legend = page.inner_text("fieldset[data-column='tag.colour'] legend")  # predicted facets say so, not "Tag.Colour"
    assert legend.startswith("Colour") and "(predicted)" in legend and "tag." not in legend.lower()
    shot(page, "search-words")
    # the words change a photo's search: "this blazer, but a dress"
    with page.expect_response(lambda r: "/ui/search" in r.url and r.request.method == "POST"):
        page.set_input_files("#file", str(PHOTO))
    page.wait_for_selector("#results .results-heading:has-text('Like your photo')")
    categories = page.eval_on_selector_all("#result-grid .card li[data-column=category]", "els => els.map(e => e.textContent)")
    assert categories[:dresses] == ["Dress"] * dresses


def test_words_work_without_the_script(browser, tagged_server):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(tagged_server.url + "/?q=shoes")
        categories = page.eval_on_selector_all("#result-grid .card li[data-column=category]", "els => els.map(e => e.textContent)")
        assert categories[:10] == ["Shoes"] * 10
        page.goto(tagged_server.url + "/?q=" + "x" * 600)
        assert page.locator("text=String should have at most 500 characters").count() or "500" in page.content()
    finally:
        context.close()


def test_product_page_swatches_show_the_same_style_in_another_colour(page, tagged_server):
    page.goto(tagged_server.url + "/product/878ff7a3")
    swatches = page.locator("#same-style a.swatch")
    assert swatches.count() >= 2
    value = swatches.first.get_attribute("data-value")
    swatches.first.click()
    page.wait_for_url("**change=colour%3D**")
    assert f"Like this, but {value}" in page.inner_text("#similar-heading")
    cards = page.eval_on_selector_all("#similar .card", """els => els.map(e => ({
        tag: (e.querySelector('li.tag[data-tag=colour]') || {}).textContent || null,
        guess: e.querySelector('p.guess[data-facet=colour]') ? e.querySelector('p.guess[data-facet=colour]').dataset.value : null,
        note: (e.querySelector('p.guess') || {}).textContent || ''}))""")
    # the asked colour is each card's own guess, or a runner-up guess the card says is one
    assert cards and all((c["tag"] == value) != (c["guess"] == value) for c in cards), cards
    assert cards[0]["tag"] == value and all(c["note"] == f"{value}? 30 % likely" for c in cards if c["guess"])
    assert sum(c["guess"] == value for c in cards) == 2  # the two blazers whose runner-up it is
    shot(page, "product-swatches")
    page.goto(tagged_server.url + "/product/878ff7a3?change=colour%3Dplaid-ish")
    assert "no product has colour='plaid-ish'" in page.inner_text(".similar .error")
