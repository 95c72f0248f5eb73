"""Fit the synthetic catalogue vectors (``CatalogueLikeVectors``) to a real model's embeddings.

    python benchmarks/fit_synthetic.py --store STORE     # the vectors a store serves

Prints the real vectors' statistics (``vector_statistics``), then a random search over the
generator's parameters scored by the squared distance between the statistics, and the best
parameters with their statistics: what ``CatalogueLikeVectors.FINE_TUNED_128`` holds.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from _common import CatalogueLikeVectors, vector_statistics
from lookalike import Engine


def distance(a: dict[str, float], b: dict[str, float]) -> float:
    return sum((a[k] - b[k]) ** 2 for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--trials", type=int, default=300)
    args = parser.parse_args()
    with Engine.open(args.store) as engine:
        index = engine.index
        real = np.stack([index.vector(i) for i in index.ids()])
        model = engine.encoder.identity
    target = vector_statistics(real)
    print("real", model, real.shape, target, flush=True)
    rng = np.random.default_rng(0)
    best: tuple[float, dict, dict] = (np.inf, {}, {})
    for trial in range(args.trials):
        params = {"alpha": float(rng.uniform(0.0, 2.0)), "category": float(rng.uniform(0.2, 3.0)), "product": float(rng.uniform(0.1, 2.0)),
                  "variant": float(rng.uniform(0.1, 2.0)), "offset": float(rng.uniform(0.0, 2.0)), "photos_per_product": int(rng.integers(1, 4))}
        synthetic = CatalogueLikeVectors(len(real), dim=real.shape[1], seed=trial, **params)
        stats = vector_statistics(next(synthetic.chunks()))
        score = distance(stats, target)
        if score < best[0]:
            best = (score, params, stats)
            print(trial, round(score, 5), stats, flush=True)
    print(json.dumps({"model": model, "real": target, "fitted": best[2], "params": {k: round(v, 3) for k, v in best[1].items()}}, indent=2))


if __name__ == "__main__":
    main()
