"""People judging two configurations blind: leaderboard arithmetic checked by hand, rounds built from
the store's real vectors, votes kept once per judge and query, and the judge's page on a phone."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from lookalike import Engine
from lookalike.judging import JudgeConfig, JudgingError, leaderboard, votes_to_settle, wilson

from .conftest import Server
from .test_cli import run
from .test_web import CHROMIUM, browser, shot  # noqa: F401  (fixtures)

EXACT = {"name": "exact"}
IVF = {"name": "ivf-coarse", "index": "IVF16,Flat", "nprobe": 1}


def simulated(mode: str, counts: dict[tuple[str, ...], int]) -> list[dict]:
    """Votes as the store returns them: (shown configurations..., choice) -> how many."""
    return [{"shown": list(key[:-1]), "choice": key[-1]} for key, n in counts.items() for _ in range(n)]


def test_pairwise_leaderboard_on_200_simulated_votes_matches_hand_arithmetic():
    # 120 for a, 60 for b (either side), 20 ties: 200 votes
    votes = simulated("pair", {("a", "b", "left"): 70, ("b", "a", "right"): 50, ("a", "b", "right"): 25, ("b", "a", "left"): 35,
                               ("a", "b", "same"): 20})
    board = leaderboard("pair", ["a", "b"], votes)
    assert board["votes"] == 200
    top, bottom = board["standings"]
    assert (top["config"], top["wins"], top["losses"], top["ties"]) == ("a", 120, 60, 20)
    # by hand: p = 120/180 = 0.6667; Wilson centre (p + z²/2n)/(1 + z²/n) = 0.66319, half-width 0.068233
    assert top["preference"] == pytest.approx(0.6667, abs=1e-4)
    assert top["ci"] == pytest.approx([0.5950, 0.7314], abs=1e-3)
    assert bottom["ci"] == pytest.approx([1 - 0.7314, 1 - 0.5950], abs=1e-3)
    assert board["settled"] and board["votes_to_settle"] == 0


def test_votes_still_needed_by_hand():
    # 52 : 48, no ties -> z² p(1-p) / (p - 0.5)² = 3.8416 * 0.2496 / 0.0004 = 2397.2 decisive votes; 100 cast
    assert votes_to_settle(52, 48, 0) == 2298
    # 30 : 20 with 50 ties -> 3.8416 * 0.24 / 0.01 = 92.2 decisive; 50 cast; half the votes are decisive -> 85 more votes
    low, high = wilson(30, 50)
    assert (round(low, 4), round(high, 4)) == (0.4618, 0.7239)
    assert votes_to_settle(30, 20, 50) == 85
    assert votes_to_settle(10, 10, 0) is None  # an even split: no number of votes settles it
    assert wilson(0, 0) == (0.0, 1.0)


def test_approval_and_rating_leaderboards():
    approval = leaderboard("single", ["a", "b"], simulated("single", {("a", "dope"): 65, ("a", "nope"): 35, ("b", "dope"): 42, ("b", "nope"): 58}))
    a, b = approval["standings"]
    assert (a["config"], a["approval"], b["approval"]) == ("a", 0.65, 0.42)
    assert a["ci"] == pytest.approx([0.5525, 0.7364], abs=1e-3)  # Wilson 65/100 by hand
    assert approval["settled"]  # 0.5525 > b's upper bound 0.5181
    rating = leaderboard("rating", ["a", "b"], simulated("rating", {("a", "5"): 2, ("a", "3"): 2, ("b", "1"): 1}))
    top = rating["standings"][0]
    # mean 4, sample sd sqrt(4/3) = 1.1547, half-width 1.96 * 1.1547 / 2 = 1.1316
    assert top["mean"] == 4.0 and top["ci"] == pytest.approx([2.8684, 5.1316], abs=1e-3) and top["very_good"] == 0.5
    assert rating["standings"][1]["mean"] == 1.0 and not rating["settled"]


@pytest.fixture
def engine(store_copy):
    with Engine.open(store_copy) as engine:
        yield engine


def test_a_round_from_the_store_vectors_and_votes_once_per_judge(engine):
    round_ = engine.judging.create("exact-vs-ivf", [JudgeConfig.parse(EXACT), JudgeConfig.parse(IVF)], queries=20, k=6, seed=3)
    assert len(round_.queries) == 20 and all(len(q["lists"][0]) == len(q["lists"][1]) == 6 for q in round_.queries)
    assert all(q["id"] not in q["lists"][0] for q in round_.queries)
    assert sum(q["lists"][0] != q["lists"][1] for q in round_.queries) >= 10  # one probe of 16 lists misses neighbours
    exact = {q["id"]: [h.id for h in engine.similar(q["id"], k=6)] for q in round_.queries[:5]}
    assert all(q["lists"][0] == exact[q["id"]] for q in round_.queries[:5])  # the exact configuration answers as similar() does
    task = round_.task("ana", set(), seed=1)
    assert sorted(task["shown"]) == [0, 1] and task["rows"][0] == next(q for q in round_.queries if q["id"] == task["query"])["lists"][task["shown"][0]]
    assert engine.judging.vote("exact-vs-ivf", task["query"], task["shown"], "left", "ana")["choice"] == "left"
    with pytest.raises(JudgingError, match="already judged"):
        engine.judging.vote("exact-vs-ivf", task["query"], task["shown"], "right", "ana")
    engine.judging.vote("exact-vs-ivf", task["query"], task["shown"], "same", "ben")  # another judge may
    [first, second] = engine.judging.votes("exact-vs-ivf")
    assert first["shown"] == [round_.configs[i].name for i in task["shown"]] and second["judge"] == "ben"
    assert engine.judging.judged_by("exact-vs-ivf", "ana") == {task["query"]}
    board = engine.judging.standings("exact-vs-ivf")
    assert board["votes"] == 2 and {r["config"] for r in board["standings"]} == {"exact", "ivf-coarse"}


@pytest.mark.parametrize("config, message", [
    ({"name": "x", "threads": 8}, "unknown key"), ({"name": "../x"}, "configuration name"), ({"name": "x", "index": "IVF16;rm -rf"}, "index"),
    ({"name": "x", "nprobe": 0}, "nprobe"), ({"name": "x", "nprobe": True}, "nprobe"), ({"name": "x", "code_search": "fast"}, "code_search"),
    ("exact", "mapping"), ({"name": "x", "index": "auto"}, "index")])
def test_bad_configurations_are_refused(config, message):
    with pytest.raises(JudgingError, match=message):
        JudgeConfig.parse(config)


def test_bad_rounds_and_votes_are_refused(engine):
    exact, ivf = JudgeConfig.parse(EXACT), JudgeConfig.parse(IVF)
    for kwargs, message in [({"name": "../up"}, "round name"), ({"mode": "vibes"}, "mode"), ({"configs": [exact, exact]}, "different names"),
                            ({"configs": [exact]}, "exactly two"), ({"queries": 0}, "queries"), ({"k": 25}, "k 1..24"),
                            ({"configs": [exact, JudgeConfig.parse({"name": "other", "model": "resnet-9000"})]}, "holds vectors of"),
                            ({"configs": [exact, JudgeConfig.parse({"name": "odd", "index": "IVF99999,Flat"})]}, "cannot be built"),
                            ({"where": ["category=Nothing"]}, "0 products match")]:
        with pytest.raises(JudgingError, match=message):
            engine.judging.create(**{"name": "r", "configs": [exact, ivf], **kwargs})
    engine.judging.create("r", [exact, ivf], queries=5, k=4)
    with pytest.raises(JudgingError, match="exists already"):
        engine.judging.create("r", [exact, ivf])
    query = engine.judging.get("r").queries[0]["id"]
    for args, message in [(("missing", [0, 1], "left"), "not in round"), ((query, [0], "left"), "shown"), ((query, [0, 0], "left"), "shown"),
                          ((query, [0, 2], "left"), "shown"), ((query, [0, 1], "dope"), "choice")]:
        with pytest.raises(JudgingError, match=message):
            engine.judging.vote("r", *args, judge="ana")
    with pytest.raises(JudgingError, match="no judging round named 'nope'"):
        engine.judging.get("nope")
    assert engine.judging.votes("r") == []


def test_cli_create_leaderboard_and_votes(store_copy, tmp_path):
    (tmp_path / "a.yaml").write_text("name: exact\nindex: flat\n")
    (tmp_path / "b.yaml").write_text("name: coarse\nindex: IVF16,Flat\nnprobe: 1\n")
    created = run("judge", "create", "r1", "-c", str(tmp_path / "a.yaml"), "-c", str(tmp_path / "b.yaml"), "--queries", "10", "--mode", "single",
                  store=store_copy)
    assert created.returncode == 0 and "/judge/r1" in created.stdout, created.stderr
    with Engine.open(store_copy) as engine:
        task = engine.judging.get("r1").task("ana", set(), seed=0)
        engine.judging.vote("r1", task["query"], task["shown"], "dope", "ana")
    board = run("judge", "leaderboard", "r1", store=store_copy)
    assert board.returncode == 0 and "1 votes" in board.stdout
    exported = run("judge", "votes", "r1", "--csv", str(tmp_path / "votes.csv"), store=store_copy)
    assert exported.returncode == 0 and (tmp_path / "votes.csv").read_text().startswith("query,judge,shown,choice,at")
    (tmp_path / "bad.yaml").write_text("name: x\nthreads: 4\n")
    refused = run("judge", "create", "r2", "-c", str(tmp_path / "a.yaml"), "-c", str(tmp_path / "bad.yaml"), store=store_copy)
    assert refused.returncode == 1 and "unknown key" in refused.stderr
    assert run("judge", "--help", store=store_copy).returncode == 0


def test_http_round_task_vote_leaderboard_and_hostile_input(server):
    body = {"name": "http-round", "configs": [EXACT, IVF], "queries": 8, "k": 4}
    assert httpx.post(server.url + "/judging/rounds", json=body).status_code in (401, 403)
    created = httpx.post(server.url + "/judging/rounds", json=body, headers=server.auth)
    assert created.status_code == 201 and created.json()["judge_url"] == "/judge/http-round"
    task = httpx.get(server.url + "/judging/rounds/http-round/task", headers=server.auth).json()["task"]
    assert "exact" not in str(task) and "ivf" not in str(task)  # blind
    vote = {"query": task["query"], "shown": task["shown"], "choice": "right"}
    assert httpx.post(server.url + "/judging/rounds/http-round/votes", json=vote).status_code in (401, 403)
    assert httpx.post(server.url + "/judging/rounds/http-round/votes", json=vote, headers=server.auth).status_code == 200
    assert httpx.post(server.url + "/judging/rounds/http-round/votes", json=vote, headers=server.auth).status_code == 422  # once per judge
    board = httpx.get(server.url + "/judging/rounds/http-round/leaderboard", headers=server.auth).json()
    assert board["votes"] == 1 and board["mode"] == "pair"
    assert httpx.get(server.url + "/judging/rounds/http-round/votes.csv", headers=server.auth).text.count("\n") == 2
    assert httpx.get(server.url + "/judging/rounds/nope/leaderboard", headers=server.auth).status_code == 404
    for bad in [{**body, "name": "../x"}, {**body, "configs": [EXACT]}, {**body, "configs": [EXACT, {"name": "y", "index": "x" * 101}]},
                {**body, "mode": "vibes"}, {**body, "k": 0}, {**body, "queries": 501}, {**body, "configs": [EXACT, "ivf"]}]:
        refused = httpx.post(server.url + "/judging/rounds", json={**bad, "name": bad["name"] if bad["name"] != body["name"] else "other"},
                             headers=server.auth)
        assert refused.status_code == 422, (bad, refused.text)
    for bad_vote in [{**vote, "choice": "x" * 11}, {**vote, "shown": [0, 1, 1]}, {**vote, "query": ""}, {**vote, "shown": "0,1"}]:
        assert httpx.post(server.url + "/judging/rounds/http-round/votes", json=bad_vote, headers=server.auth).status_code == 422
    assert httpx.get(server.url + "/judging/rounds/..%2F..%2Fkeys/leaderboard", headers=server.auth).status_code in (404, 422)


def test_a_judge_key_votes_and_changes_nothing_else(server, store_copy):
    from lookalike.security import KeyRing

    body = {"name": "judged", "configs": [EXACT, IVF], "queries": 4, "k": 4}
    assert httpx.post(server.url + "/judging/rounds", json=body, headers=server.auth).status_code == 201
    _, token = KeyRing(store_copy).create("ana", "judge")
    judge, reader = {"Authorization": f"Bearer {token}"}, {"Authorization": f"Bearer {KeyRing(store_copy).create('rob', 'read')[1]}"}
    task = httpx.get(server.url + "/judging/rounds/judged/task", headers=judge).json()["task"]
    vote = {"query": task["query"], "shown": task["shown"], "choice": "left"}
    assert httpx.post(server.url + "/judging/rounds/judged/votes", json=vote, headers=reader).status_code == 403  # reading is not judging
    assert httpx.post(server.url + "/judging/rounds/judged/votes", json=vote, headers=judge).status_code == 200
    votes = httpx.get(server.url + "/judging/rounds/judged/votes", headers=server.auth).json()["votes"]
    assert [v["judge"] for v in votes] == ["ana"]
    assert httpx.get(server.url + "/search/text", params={"q": "shirt"}, headers=judge).status_code in (200, 422)  # a judge reads
    refused = [httpx.put(server.url + "/products/p-new", json={"metadata": {"title": "x"}}, headers=judge),
               httpx.delete(server.url + "/products/anything", headers=judge),
               httpx.post(server.url + "/judging/rounds", json={**body, "name": "mine"}, headers=judge),
               httpx.get(server.url + "/judging/rounds/judged/leaderboard", headers=judge)]
    assert [r.status_code for r in refused] == [403, 403, 403, 403], [r.text for r in refused]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_judging_on_a_phone(browser, store_copy):  # noqa: F811
    with Engine.open(store_copy) as engine:
        engine.judging.create("phone", [JudgeConfig.parse(EXACT), JudgeConfig.parse(IVF)], queries=3, k=8)
    server = Server(store_copy)
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, device_scale_factor=2)
    page = context.new_page()
    try:
        page.goto(server.url + "/judge/phone")
        page.fill("#key", server.key)
        page.click("form.login button[type=submit]")
        page.wait_for_selector("#judge-progress")
        html = page.content()
        assert "exact" not in html and "ivf-coarse" not in html  # blind
        assert page.locator(".judge-results img").count() == 16
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling on a phone
        shot(page, "judge-phone")
        for choice in ("#vote-left", "#vote-same", "#vote-right"):
            page.click(choice)
            page.wait_for_load_state()
        assert "all 3 queries" in page.inner_text("#all-judged")
        votes = httpx.get(server.url + "/judging/rounds/phone/votes", headers=server.auth).json()["votes"]
        assert [v["choice"] for v in votes] == ["left", "same", "right"] and {v["judge"] for v in votes} == {"tests"}
        page.goto(server.url + "/admin/judging")
        assert page.locator("#round-phone .leaderboard tr[data-config]").count() == 2
    finally:
        context.close()
        server.stop()
