"""A round's leaderboard: who won, how sure we are, and how many more votes would settle it.

* ``pair``: a configuration's preference is its share of the decisive votes (ties left out), with a
  Wilson 95 % interval; the round is settled when the interval excludes 50 %.  The votes still
  needed are estimated from the current share: the decisive votes at which the normal interval's
  half-width equals the distance to 50 %, scaled up by the share of votes that were decisive.
* ``single`` (dope or nope): each configuration's approval rate with its Wilson interval.
* ``rating``: each configuration's mean rating with a 95 % interval, and the share rated 4 or 5
  ("very good", as ShopAI reported).
"""

from __future__ import annotations

import math
from typing import Any

Z = 1.959963984540054  # the normal quantile of a two-sided 95 % interval


def wilson(successes: int, trials: int) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 %); (0, 1) without trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + Z * Z / (2 * trials)) / (1 + Z * Z / trials)
    half = Z * math.sqrt(p * (1 - p) / trials + Z * Z / (4 * trials * trials)) / (1 + Z * Z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def votes_to_settle(wins: int, losses: int, ties: int) -> int | None:
    """More votes (ties included, at the current tie rate) until the preference's interval would
    exclude 50 % if the share held; 0 when settled, None when the share is exactly even."""
    decisive = wins + losses
    low, high = wilson(wins, decisive)
    if decisive and (low > 0.5 or high < 0.5):
        return 0
    share = wins / decisive if decisive else 0.5
    if share == 0.5:
        return None
    needed = Z * Z * share * (1 - share) / (share - 0.5) ** 2
    decisive_rate = decisive / (decisive + ties) if decisive + ties else 1.0
    return max(1, math.ceil((needed - decisive) / decisive_rate))


def leaderboard(mode: str, configs: list[str], votes: list[dict[str, Any]]) -> dict[str, Any]:
    """Votes (``shown``: configuration names in display order, ``choice``) -> the standings."""
    if mode == "pair":
        return _pairwise(configs, votes)
    if mode == "single":
        return _approval(configs, votes)
    return _ratings(configs, votes)


def _pairwise(configs: list[str], votes: list[dict[str, Any]]) -> dict[str, Any]:
    wins = dict.fromkeys(configs, 0)
    ties = 0
    for vote in votes:
        left, right = vote["shown"]
        if vote["choice"] == "same":
            ties += 1
        else:
            wins[left if vote["choice"] == "left" else right] += 1
    first, second = configs
    decisive = wins[first] + wins[second]
    rows: list[dict[str, Any]] = []
    for name, other in ((first, second), (second, first)):
        low, high = wilson(wins[name], decisive)
        rows.append({"config": name, "wins": wins[name], "losses": wins[other], "ties": ties,
                     "preference": round(wins[name] / decisive, 4) if decisive else None, "ci": [round(low, 4), round(high, 4)]})
    rows.sort(key=lambda r: -(r["preference"] or 0))
    settle = votes_to_settle(wins[first], wins[second], ties)
    return {"mode": "pair", "votes": len(votes), "standings": rows, "settled": settle == 0, "votes_to_settle": settle}


def _approval(configs: list[str], votes: list[dict[str, Any]]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for name in configs:
        mine = [v for v in votes if v["shown"][0] == name]
        dope = sum(v["choice"] == "dope" for v in mine)
        low, high = wilson(dope, len(mine))
        rows.append({"config": name, "votes": len(mine), "approved": dope, "approval": round(dope / len(mine), 4) if mine else None,
                     "ci": [round(low, 4), round(high, 4)]})
    rows.sort(key=lambda r: -(r["approval"] or 0))
    return {"mode": "single", "votes": len(votes), "standings": rows, "settled": _apart(rows), "votes_to_settle": None}


def _ratings(configs: list[str], votes: list[dict[str, Any]]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for name in configs:
        scores = [int(v["choice"]) for v in votes if v["shown"][0] == name]
        n = len(scores)
        mean = sum(scores) / n if n else None
        spread = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1)) if n > 1 and mean is not None else 0.0
        half = Z * spread / math.sqrt(n) if n else 0.0
        rows.append({"config": name, "votes": n, "mean": round(mean, 4) if mean is not None else None,
                     "ci": [round(mean - half, 4), round(mean + half, 4)] if mean is not None and n > 1 else [1.0, 5.0],  # one rating says nothing of the spread
                     "very_good": round(sum(s >= 4 for s in scores) / n, 4) if n else None})
    rows.sort(key=lambda r: -(r["mean"] or 0))
    return {"mode": "rating", "votes": len(votes), "standings": rows, "settled": _apart(rows), "votes_to_settle": None}


def _apart(rows: list[dict[str, Any]]) -> bool:
    """Two configurations are told apart when their intervals do not overlap."""
    return len(rows) == 2 and all(r["votes"] for r in rows) and rows[0]["ci"][0] > rows[1]["ci"][1]
