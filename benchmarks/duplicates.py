"""Duplicate listings on real catalogue photos: fit the decision rule on one part, measure on the other.

The shared Myntra catalogue is split by a hash of the product id: 70 % for fitting, 30 % held
out.  Each part is ingested into its own store with, for a sample of its products, four
re-processed copies listed under new ids (JPEG quality 50, half size, a 90 % crop, brightness
×0.75 or ×1.3); its own template look-alikes (different products shot the same way) are the
hard negatives.  ``--fit FILE`` fits the logistic rule on the fitting part and writes it (the
threshold: at most ``--negative-rate`` of the fitting part's hard negatives accepted);
without it, the shipped rule is measured on the held-out part: identical photos found, copies
found per kind, hard negatives grouped, precision, and time per product.

    python benchmarks/duplicates.py --fit src/lookalike/duplicates/default_rule.json
    python benchmarks/duplicates.py
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from _common import ROOT, SHARED, need_shared, report
from lookalike import Engine
from lookalike.duplicates import DuplicateOptions, DuplicateRule, PairFinding
from lookalike.duplicates.rule import FEATURES
from lookalike.duplicates.synthetic import COPY_KINDS, make_copy

HARD_NEGATIVE_COSINE = 0.93   # "template look-alikes": different photos this close in the embedding


def part_rows(held_out: bool) -> list[dict[str, str]]:
    with open(SHARED / "myntra" / "labels.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [r for r in rows if (zlib.crc32(r["item_id"].encode()) % 10 >= 7) == held_out]


def build(work: Path, rows: list[dict[str, str]], copies: int, seed: int) -> Path:
    """A store of ``rows`` plus four copies of ``copies`` of them (ids ``<id>~<kind>``)."""
    store = work / "store"
    if (work / "done").exists():
        return store
    shutil.rmtree(work, ignore_errors=True)
    (work / "copies").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    listing = [{"id": r["item_id"], "image": str(SHARED / "myntra" / r["image_file"])} for r in rows]
    for index in rng.choice(len(rows), min(copies, len(rows)), replace=False):
        row = rows[int(index)]
        original = Image.open(SHARED / "myntra" / row["image_file"]).convert("RGB")
        for kind in COPY_KINDS:
            path = work / "copies" / f"{row['item_id']}-{kind}.jpg"
            make_copy(original, kind, rng).save(path, quality=95)
            listing.append({"id": f"{row['item_id']}~{kind}", "image": str(path)})
    with open(work / "catalogue.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["id", "image"])
        writer.writeheader()
        writer.writerows(listing)
    with Engine.open(store) as engine:
        engine.ingest(work / "catalogue.csv", id_column="id", image_column="image", garments=False)
    (work / "done").write_text("ok")
    return store


def stem(product_id: str) -> str:
    return product_id.split("~")[0]


def same_item(first: str, second: str, hashes: dict[str, str | None]) -> bool:
    """Copies of one photo, or of two listings of the very same photo (the catalogue's own duplicates)."""
    a, b = stem(first), stem(second)
    return a == b or (hashes.get(a) is not None and hashes.get(a) == hashes.get(b))


def kind_of(first: str, second: str) -> str:
    """Which copy a pair holds: the kind of its copy, "copies" for two copies of one photo."""
    kinds = [pid.split("~")[1] for pid in (first, second) if "~" in pid]
    return kinds[0] if len(kinds) == 1 else "copies" if kinds else "identical"


def fit(store: Path, out: Path, negative_rate: float) -> None:
    from sklearn.linear_model import LogisticRegression
    cache = store.parent / "survey.json"
    if not cache.exists():
        permissive = DuplicateRule((0.0,) * len(FEATURES), 0.0, 0.5)
        with Engine.open(store) as engine:
            started = time.perf_counter()
            survey = engine.duplicates.survey(DuplicateOptions(), rule=permissive)
            print(f"survey: {len(survey.products):,} products, {len(survey.findings):,} pairs in {time.perf_counter() - started:.0f} s")
        hashes = {pid: p.image_hash for pid, p in survey.products.items()}
        cache.write_text(json.dumps({"hashes": hashes, "pairs": [f.to_dict() for f in survey.findings if not f.identical]}))
    cached = json.loads(cache.read_text())
    verified, hashes = [PairFinding(**row) for row in cached["pairs"]], cached["hashes"]
    features = np.array([[f.evidence["peak"], *np.log1p([f.evidence[k] for k in ("lightness_median", "lightness_p90", "chroma_median", "chroma_p90")])]
                         for f in verified])
    truth = np.array([same_item(f.first, f.second, hashes) for f in verified])
    model = LogisticRegression(C=10.0, max_iter=5000).fit(features, truth)
    probability = model.predict_proba(features)[:, 1]
    hard = ~truth & (np.array([f.cosine for f in verified]) >= HARD_NEGATIVE_COSINE)
    threshold = float(np.quantile(probability[hard], 1 - negative_rate)) if hard.any() else 0.5
    threshold = min(max(threshold, 0.5), 0.999)
    recall = {kind: float(np.mean([p >= threshold for f, p, t in zip(verified, probability, truth) if t and kind_of(f.first, f.second) == kind]))
              for kind in (*COPY_KINDS, "copies")}
    rule = DuplicateRule(tuple(float(w) for w in model.coef_[0]), float(model.intercept_[0]), threshold,
                         provenance=(f"Fitted by benchmarks/duplicates.py --fit on the fitting 70 % of the shared Myntra catalogue "
                                     f"(split by crc32 of the product id): {int(truth.sum())} copy pairs (JPEG q50, half size, 90 % crop, "
                                     f"brightness x0.75/x1.3) against {int((~truth).sum())} other candidate pairs, of which {int(hard.sum())} "
                                     f"template look-alikes (cosine >= {HARD_NEGATIVE_COSINE}); threshold: at most {negative_rate:.1%} of those "
                                     f"accepted. Fitting-part recall {json.dumps({k: round(v, 3) for k, v in recall.items()})}."))
    out.write_text(json.dumps(rule.to_dict(), indent=2) + "\n", encoding="utf-8")
    print(rule.provenance)


def measure(store: Path) -> dict:
    with Engine.open(store) as engine:
        started = time.perf_counter()
        result = engine.duplicates.find(DuplicateOptions())
        seconds = time.perf_counter() - started
        survey = engine.duplicates.survey(DuplicateOptions())
        ids = list(survey.products)
        hashes = {pid: p.image_hash for pid, p in survey.products.items()}
    group_of = {m: g.group for g in result.groups for m in g.members}
    same_group = lambda a, b: a in group_of and group_of.get(a) == group_of.get(b)  # noqa: E731
    found = {kind: [] for kind in COPY_KINDS}
    for pid in ids:
        if "~" in pid:
            found[pid.split("~")[1]].append(same_group(pid, stem(pid)))
    by_hash: dict[str, list[str]] = {}
    for pid in ids:
        if "~" not in pid and hashes[pid]:
            by_hash.setdefault(hashes[pid], []).append(pid)
    identical = [same_group(g[0], other) for g in by_hash.values() if len(g) > 1 for other in g[1:]]
    hard = [f for f in survey.findings if not f.identical and f.cosine >= HARD_NEGATIVE_COSINE and not same_item(f.first, f.second, hashes)]
    grouped_pairs = [(a, b) for g in result.groups for i, a in enumerate(g.members) for b in g.members[i + 1:]]
    true_pairs = [(a, b) for a, b in grouped_pairs if same_item(a, b, hashes)]
    return {"products": len(ids), "identical pairs found": f"{sum(identical)}/{len(identical)}",
            **{f"copies found: {k}": round(float(np.mean(v)), 3) for k, v in found.items()},
            "hard negatives (cosine >= 0.93) grouped": f"{sum(same_group(f.first, f.second) for f in hard)}/{len(hard)}",
            "pair precision": round(len(true_pairs) / max(1, len(grouped_pairs)), 4),
            "groups": len(result.groups), "candidates": result.candidates, "verified": result.verified,
            "seconds": round(seconds, 1), "ms per product": round(1000 * seconds / len(ids), 2),
            "ms per verified pair": round(1000 * seconds / max(1, result.verified), 2)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", type=Path, help="fit the rule on the fitting part and write it here")
    parser.add_argument("--copies", type=int, default=300, help="products given four re-processed copies each")
    parser.add_argument("--negative-rate", type=float, default=0.01, help="share of the fitting part's template look-alikes the rule may accept")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".cache" / "duplicates")
    args = parser.parse_args()
    need_shared()
    if args.fit:
        fit(build(args.work / "fitting", part_rows(held_out=False), args.copies, seed=1), args.fit, args.negative_rate)
    else:
        report("duplicates", measure(build(args.work / "held-out", part_rows(held_out=True), args.copies, seed=2)))
