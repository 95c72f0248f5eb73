"""The merchandiser's workbench pages in a real headless Chromium against a real server."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from lookalike import Engine

from .conftest import Server
from .test_duplicates import add_copies, demo_rows
from .test_web import CHROMIUM, browser, page, shot  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)")


@pytest.fixture
def duplicates_server(demo_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(demo_store, store)
    originals = [r["id"] for r in demo_rows()[100:103]]
    with Engine.open(store) as engine:
        add_copies(engine, tmp_path, originals)
    server = Server(store)
    server.originals = originals
    yield server
    server.stop()


def sign_in(tab, server, target: str) -> None:
    tab.goto(server.url + target)
    tab.fill("#key", server.key)
    tab.click("form.login button[type=submit]")
    tab.wait_for_url("**" + target)


def groups(tab) -> dict[str, list[str]]:
    return {g: tab.eval_on_selector_all(f"#group-{g} .card", "cards => cards.map(c => c.dataset.id)")
            for g in tab.eval_on_selector_all(".dup-group", "gs => gs.map(g => g.dataset.group)")}


def test_duplicates_page_find_keep_one_and_mark_not_duplicates(page, duplicates_server):  # noqa: F811
    server = duplicates_server
    sign_in(page, server, "/admin/duplicates")
    assert page.inner_text("#no-report")
    page.click("#find-duplicates")
    deadline = time.time() + 120
    while time.time() < deadline and not page.query_selector("#duplicates-summary"):
        time.sleep(1)
        page.reload()
    found = groups(page)
    by_original = {o: g for g, members in found.items() for o in server.originals if o in members}
    assert set(by_original) == set(server.originals), found
    first, second = (by_original[o] for o in server.originals[:2])
    assert len(found[first]) == 5 and page.inner_text(f"#group-{first} .card.original .title") == server.originals[0]
    shot(page, "duplicates")
    # keep the original of the first group: its four copies are deleted
    page.click(f"#group-{first} .card.original button.keep")
    page.wait_for_load_state()
    assert first not in groups(page)
    for copy in found[first][1:]:
        assert httpx.get(server.url + f"/products/{copy}", headers=server.auth).status_code == 404
    # the second group is different items for the merchandiser: remembered, by the key's name
    page.click(f"#group-{second} form.not-duplicates button")
    page.wait_for_load_state()
    assert second not in groups(page)
    marks = httpx.get(server.url + "/duplicates/marks", headers=server.auth).json()["marks"]
    assert len(marks) == 10 and {m["who"] for m in marks} == {"tests"}
    # the CSV export of the latest search
    csv = httpx.get(server.url + "/duplicates.csv", headers=server.auth).text
    assert all(o in csv for o in server.originals)


def test_workbench_forms_refuse_posts_without_the_session_token(duplicates_server):
    server = duplicates_server
    ids = [server.originals[0], f"{server.originals[0]}~jpeg"]
    cookies = {"lookalike_key": server.key}
    # a cross-site form: the browser may send the cookie, but the page's token is unknown to it
    refused = httpx.post(server.url + "/ui/duplicates/not-duplicates", data={"ids": ids}, cookies=cookies)
    assert refused.status_code == 403
    forged = httpx.post(server.url + "/ui/duplicates/keep", data={"ids": ids, "keep": ids[0], "form_token": "0" * 64}, cookies=cookies)
    assert forged.status_code == 403
    assert httpx.post(server.url + "/ui/duplicates/run", data={"form_token": "x"}).status_code == 401  # signed out
    assert httpx.get(server.url + f"/products/{ids[1]}", headers=server.auth).status_code == 200  # nothing was deleted
    assert httpx.get(server.url + "/duplicates/marks", headers=server.auth).json()["marks"] == []
