"""Text search and "like this, but…" on held-out Myntra products without titles or labels.

Runs the ``text_search`` task of suites/text.yaml (see lookalike/evaluation/text.py): a store where
70 % of each article type keeps its title and labels and the other 30 % is a bare photo (and, for
the baselines, a titled copy and a labelled copy); taggers and the text bridge learn from the 70 %;
every figure is measured on the 30 %, with random and title-only baselines from the same queries.
``--dev`` measures on a fifth of the 70 % instead (the reported products left out): the split the
text service's weights were chosen on.  The first run builds the store (taggers ~3 min; with
``--tagger-image-model none``, the taggers read only the store's embedding and the garment colour).

    python benchmarks/text_search.py [--dev] [--cache DIR] [--tagger-image-model efficientnet-lite2|none]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import ROOT, need_shared, report
from lookalike.evaluation import evaluate, load_suite

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache", help="store cache (embeddings, the task's store)")
    parser.add_argument("--dev", action="store_true", help="measure on the development split the weights were chosen on")
    parser.add_argument("--tagger-image-model", default=None, help="the taggers' second backbone (default: the suite's, else the taggers' default)")
    args = parser.parse_args()
    need_shared()
    suite = load_suite(ROOT / "suites" / "text.yaml")
    if args.tagger_image_model:
        suite.tasks[0].options["tagger_image_model"] = args.tagger_image_model
    if args.dev:
        suite.tasks[0].options["development"] = True
    started = time.perf_counter()
    result = evaluate(suite, [], args.cache, progress=print)
    (task_name, by_config), = result.tasks.items()
    outcome = by_config["default"]
    width = max(len(m) for m in outcome.metrics)
    print(f"\n{'metric'.ljust(width)}    mean  95% CI          random")
    for metric, value in outcome.metrics.items():
        base = outcome.baseline.get(metric)
        print(f"{metric.ljust(width)}  {value['mean']:6.3f}  [{value['ci_low']:.3f}, {value['ci_high']:.3f}]  {'' if base is None else f'{base:.3f}'}")
    name = ("text_search_dev" if args.dev else "text_search") + (f"_{args.tagger_image_model}" if args.tagger_image_model else "")
    report(name, {"task": task_name, "seconds": round(time.perf_counter() - started, 1),
                  "metrics": outcome.metrics, "baseline": outcome.baseline, "notes": outcome.notes})
