"""Duplicate listings on real catalogue photos: fit the decision rule on one part, measure on the other.

The shared Myntra catalogue is split by a hash of the product id: 70 % for fitting, 30 % held
out.  Each part is ingested into its own store with, for a sample of its products, four
re-processed copies listed under new ids (JPEG quality 50, half size, a 90 % crop, brightness
×0.75 or ×1.3) and, for those whose garment is colourful, a recoloured variant (the same photo,
hues turned); its own template look-alikes (different products shot the same way) and the
recoloured variants are the hard negatives.  ``--fit FILE`` fits the logistic rule on the fitting part and writes it (the
threshold: at most ``--negative-rate`` of the fitting part's hard negatives accepted);
without it, the shipped rule is measured on the held-out part: identical photos found, copies
found per kind, hard negatives grouped, precision, and time per product — with the copies, and
on the held-out listings alone (a shop's catalogue holds far fewer duplicates than this test's 38 %).
``--at-scale 100000`` times one search over every image here (Myntra, phone and street photos and
the 70,000 Fashion-MNIST articles: 83,706 listings with the copies), directly rather than by
extrapolation (needs ``apt-get install dataset-fashion-mnist``).

    python benchmarks/duplicates.py --fit src/lookalike/duplicates/default_rule.json
    python benchmarks/duplicates.py
    python benchmarks/duplicates.py --at-scale 100000
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
from lookalike.duplicates import DuplicateOptions, DuplicateRule, PairEvidence, PairFinding
from lookalike.duplicates.rule import FEATURES, colour_shift
from lookalike.duplicates.synthetic import COPY_KINDS, is_colourful, make_copy, make_variant

HARD_NEGATIVE_COSINE = 0.93   # "template look-alikes": different photos this close in the embedding


def part_rows(held_out: bool) -> list[dict[str, str]]:
    with open(SHARED / "myntra" / "labels.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [r for r in rows if (zlib.crc32(r["item_id"].encode()) % 10 >= 7) == held_out]


def photo_path(row: dict[str, str]) -> str:
    return row.get("path") or str(SHARED / "myntra" / row["image_file"])


def every_real_photo() -> list[dict[str, str]]:
    """All of Myntra and the phone photos of ``clothing`` (ids: their file names): the largest real
    catalogue here, to see how the time per listing grows with the catalogue."""
    rows = part_rows(held_out=False) + part_rows(held_out=True)
    with open(SHARED / "clothing" / "labels.csv", encoding="utf-8") as handle:
        rows += [{"item_id": "c-" + Path(r["image_file"]).stem, "path": str(SHARED / "clothing" / r["image_file"])} for r in csv.DictReader(handle)]
    return rows


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist (MIT)


def street_photos() -> list[dict[str, str]]:
    with open(SHARED / "ccp" / "images.csv", encoding="utf-8") as handle:
        return [{"item_id": "s-" + Path(r["image_file"]).stem, "path": str(SHARED / "ccp" / r["image_file"])} for r in csv.DictReader(handle)]


def fashion_mnist_rows(work: Path, count: int) -> list[dict[str, str]]:
    """Up to 70,000 distinct Zalando articles from Fashion-MNIST as catalogue photos: inverted back to
    a dark garment on white (the set stores them light on black) and enlarged to 224 px.  Many are
    near look-alikes at this resolution (plain T-shirts, trainers), which makes the candidate search
    work harder per listing than a real catalogue does: a pessimistic filler."""
    import gzip

    if not FASHION_MNIST.is_dir():
        raise SystemExit(f"{FASHION_MNIST} is missing: apt-get install -y dataset-fashion-mnist")
    folder = work / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    for part in ("train", "t10k"):
        with gzip.open(FASHION_MNIST / f"{part}-images-idx3-ubyte.gz") as handle:
            pixels = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        for i, image in enumerate(pixels[: count - len(rows)]):
            path = folder / f"{part}-{i}.jpg"
            if not path.exists():
                Image.fromarray(255 - image).resize((224, 224), Image.Resampling.BICUBIC).save(path, quality=90)
            rows.append({"item_id": f"f-{part}-{i}", "path": str(path)})
    return rows


def at_scale_rows(work: Path, n: int) -> list[dict[str, str]]:
    """``n`` listings: every real photo here (held-out Myntra first: the copies are made of those, then
    the rest of Myntra, phone photos, street photos), then Fashion-MNIST."""
    held_out = part_rows(held_out=True)
    first = {r["item_id"] for r in held_out}
    rows = held_out + [r for r in every_real_photo() if r["item_id"] not in first] + street_photos()
    if len(rows) < n:
        rows += fashion_mnist_rows(work, n - len(rows))
    return rows[:n]


def build(work: Path, rows: list[dict[str, str]], copies: int, seed: int, copy_pool: int = 0) -> Path:
    """A store of ``rows`` plus four copies of ``copies`` of them (of the first ``copy_pool`` when
    given; ids ``<id>~<kind>``) and, for the colourful ones among those, a recoloured variant
    (id ``<id>@variant``: not a duplicate)."""
    store = work / "store"
    if (work / "done").exists():
        return store
    shutil.rmtree(work, ignore_errors=True)
    (work / "copies").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    listing = [{"id": r["item_id"], "image": photo_path(r)} for r in rows]
    pool = copy_pool or len(rows)
    for index in rng.choice(pool, min(copies, pool), replace=False):
        row = rows[int(index)]
        original = Image.open(photo_path(row)).convert("RGB")
        for kind in COPY_KINDS:
            path = work / "copies" / f"{row['item_id']}-{kind}.jpg"
            make_copy(original, kind, rng).save(path, quality=95)
            listing.append({"id": f"{row['item_id']}~{kind}", "image": str(path)})
        if is_colourful(original):
            path = work / "copies" / f"{row['item_id']}-variant.jpg"
            make_variant(original, rng).save(path, quality=95)
            listing.append({"id": f"{row['item_id']}@variant", "image": str(path)})
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


def fit(store: Path, out: Path, negative_rate: float, hard_weight: float) -> None:
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
    # pairs set aside before aligning (colours apart) or that never aligned get probability 0 whatever the rule: not fitted on
    verified = [f for f in (PairFinding(**row) for row in cached["pairs"]) if f.evidence.get("aligned", True)]
    hashes = cached["hashes"]
    evidences = [PairEvidence(**f.evidence) for f in verified]
    features = np.array([evidence.features() for evidence in evidences])  # what the rule reads
    truth = np.array([same_item(f.first, f.second, hashes) for f in verified])
    variant = np.array(["@variant" in f.first + f.second for f in verified])
    hard = ~truth & ((np.array([f.cosine for f in verified]) >= HARD_NEGATIVE_COSINE) | variant)
    # the hard negatives weigh more: the easy ones (other products, other framing) would otherwise set the boundary
    model = LogisticRegression(C=10.0, max_iter=5000).fit(features, truth, sample_weight=np.where(hard, hard_weight, 1.0))
    probability = model.predict_proba(features)[:, 1]
    shift = np.array([colour_shift(evidence) for evidence in evidences])
    shifts = shift[truth]
    max_shift = round(float(shifts.max()) * 4 / 3, 2)  # the largest a fitting-part copy showed, a third to spare
    probability = np.where(shift > max_shift, 0.0, probability)
    threshold = float(np.quantile(probability[hard], 1 - negative_rate)) if hard.any() else 0.5
    threshold = min(max(threshold, 0.5), 0.999)
    recall = {kind: float(np.mean([p >= threshold for f, p, t in zip(verified, probability, truth) if t and kind_of(f.first, f.second) == kind]))
              for kind in (*COPY_KINDS, "copies")}
    rule = DuplicateRule(tuple(float(w) for w in model.coef_[0]), float(model.intercept_[0]), threshold, max_colour_shift=max_shift,
                         provenance=(f"Fitted by benchmarks/duplicates.py --fit on the fitting 70 % of the shared Myntra catalogue "
                                     f"(split by crc32 of the product id): {int(truth.sum())} copy pairs (JPEG q50, half size, 90 % crop, "
                                     f"brightness x0.75/x1.3) against {int((~truth).sum())} other candidate pairs, of which {int(hard.sum())} "
                                     f"template look-alikes (cosine >= {HARD_NEGATIVE_COSINE}) or recoloured variants ({int(variant.sum())}), "
                                     f"weighted x{hard_weight:g}; threshold: at most {negative_rate:.1%} of those accepted; "
                                     f"max_colour_shift: the largest a copy pair showed ({shifts.max():.2f}) plus a third. "
                                     f"Fitting-part recall {json.dumps({k: round(v, 3) for k, v in recall.items()})}."))
    out.write_text(json.dumps(rule.to_dict(), indent=2) + "\n", encoding="utf-8")
    print(rule.provenance)


def copies_found(group_of: dict[str, str], ids: list[str]) -> dict[str, list[bool]]:
    """For each kind of copy, whether each copy (id ``<original>~<kind>``) is grouped with its original."""
    found: dict[str, list[bool]] = {kind: [] for kind in COPY_KINDS}
    for pid in ids:
        if "~" in pid:
            found[pid.split("~")[1]].append(pid in group_of and group_of[pid] == group_of.get(stem(pid)))
    return found


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
    found = copies_found(group_of, ids)
    by_hash: dict[str, list[str]] = {}
    for pid in ids:
        if "~" not in pid and hashes[pid]:
            by_hash.setdefault(hashes[pid], []).append(pid)
    identical = [same_group(g[0], other) for g in by_hash.values() if len(g) > 1 for other in g[1:]]
    hard = [f for f in survey.findings if not f.identical and f.cosine >= HARD_NEGATIVE_COSINE and not same_item(f.first, f.second, hashes)]
    product_pairs: dict[tuple[str, str], bool] = {}  # each pair of products once, however many synthetic copies one side has
    for f in hard:
        pair = (min(stem(f.first), stem(f.second)), max(stem(f.first), stem(f.second)))
        product_pairs[pair] = product_pairs.get(pair, False) or same_group(f.first, f.second)
    variants = [pid for pid in ids if pid.endswith("@variant")]
    grouped_pairs = [(a, b) for g in result.groups for i, a in enumerate(g.members) for b in g.members[i + 1:]]
    true_pairs = [(a, b) for a, b in grouped_pairs if same_item(a, b, hashes)]
    return {"products": len(ids), "identical pairs found": f"{sum(identical)}/{len(identical)}",
            **{f"copies found: {k}": round(float(np.mean(v)), 3) for k, v in found.items()},
            "hard negatives (cosine >= 0.93) grouped": f"{sum(same_group(f.first, f.second) for f in hard)}/{len(hard)}",
            "hard negatives grouped, each pair of products once": f"{sum(product_pairs.values())}/{len(product_pairs)}",
            "recoloured variants grouped with their photo": f"{sum(same_group(v, v.split('@')[0]) for v in variants)}/{len(variants)}",
            "pair precision": round(len(true_pairs) / max(1, len(grouped_pairs)), 4),
            "groups": len(result.groups), "candidates": result.candidates, "verified": result.verified,
            "seconds": round(seconds, 1), "ms per product": round(1000 * seconds / len(ids), 2),
            "ms per verified pair": round(1000 * seconds / max(1, result.verified), 2),
            "set aside before aligning (garment colours apart)": sum(1 for f in survey.findings if f.evidence.get("screened"))}


def at_scale(store: Path) -> dict:
    """One duplicate search over the whole large catalogue, timed directly, with the copies found."""
    with Engine.open(store) as engine:
        started = time.perf_counter()
        result = engine.duplicates.find(DuplicateOptions())
        seconds = time.perf_counter() - started
    group_of = {m: g.group for g in result.groups for m in g.members}
    with open(store.parent / "catalogue.csv", encoding="utf-8") as handle:
        found = copies_found(group_of, [row["id"] for row in csv.DictReader(handle)])
    sources = {"f-": "Fashion-MNIST", "s-": "street", "c-": "phone"}
    source = lambda pid: next((name for prefix, name in sources.items() if pid.startswith(prefix)), "Myntra")  # noqa: E731
    kinds: dict[str, int] = {}
    for g in result.groups:
        key = " + ".join(sorted({source(m) for m in g.members}))
        kinds[key] = kinds.get(key, 0) + 1
    return {"products": result.products, "candidate pairs": result.candidates, "pairs per product": round(result.candidates / result.products, 2),
            "verified": result.verified, "groups": len(result.groups), "groups by where their members come from": kinds,
            "seconds": round(seconds, 1),
            "ms per product": round(1000 * seconds / result.products, 2), "minutes": round(seconds / 60, 1),
            **{f"copies found: {k}": f"{sum(v)}/{len(v)}" for k, v in found.items()}}


def timing(store: Path, runs: int = 2) -> dict:
    """Time per product on a catalogue as a shop has it (the held-out part without synthetic copies,
    whose dense groups cost more per product than real listings do), every run reported."""
    seconds, result = [], None
    with Engine.open(store) as engine:
        for _ in range(runs):
            started = time.perf_counter()
            result = engine.duplicates.find(DuplicateOptions())
            seconds.append(time.perf_counter() - started)
    assert result is not None
    per_product = [1000 * s / result.products for s in seconds]
    return {"products": result.products, "candidate pairs": result.candidates, "pairs per product": round(result.candidates / result.products, 2),
            "seconds per run": [round(s, 1) for s in seconds], "ms per product per run": [round(m, 2) for m in per_product],
            "minutes per 100K products (slowest run, linear)": round(max(per_product) * 100_000 / 1000 / 60, 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", type=Path, help="fit the rule on the fitting part and write it here")
    parser.add_argument("--copies", type=int, default=300, help="products given four re-processed copies each")
    parser.add_argument("--negative-rate", type=float, default=0.01, help="share of the fitting part's template look-alikes the rule may accept")
    parser.add_argument("--hard-weight", type=float, default=5.0, help="weight of the hard negatives (look-alikes, recoloured variants) in the fit")
    parser.add_argument("--scale", action="store_true", help="also time every real photo here (Myntra and phone photos, ~10,900)")
    parser.add_argument("--seed", type=int, default=2, help="which held-out products get copies and variants (another seed: a fresh synthetic set the rule never saw)")
    parser.add_argument("--at-scale", type=int, metavar="N", help="only time one search over up to N listings: every real photo here, "
                        "filled up with Fashion-MNIST articles (83,706 listings in all), plus copies of --copies held-out Myntra products")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".cache" / "duplicates")
    args = parser.parse_args()
    need_shared()
    if args.at_scale:
        rows = at_scale_rows(args.work, args.at_scale - 4 * args.copies)  # Fashion-MNIST photos written beside the store's folder
        report(f"duplicates_at_{args.at_scale}", at_scale(build(args.work / f"at-scale-{args.at_scale}", rows, args.copies, args.seed,
                                                                copy_pool=len(part_rows(held_out=True)))))
    elif args.fit:
        fit(build(args.work / "fitting", part_rows(held_out=False), args.copies, seed=1), args.fit, args.negative_rate, args.hard_weight)
    else:
        held_out = args.work / ("held-out" if args.seed == 2 else f"held-out-seed-{args.seed}")
        figures = measure(build(held_out, part_rows(held_out=True), args.copies, seed=args.seed))
        figures["real listings only"] = timing(build(args.work / "held-out-plain", part_rows(held_out=True), 0, seed=2))
        if args.scale:
            figures["every real photo here"] = timing(build(args.work / "every-real-photo", every_real_photo(), 0, seed=3))
        report("duplicates", figures)
