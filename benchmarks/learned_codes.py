"""Fine-tuned embeddings and compact codes on held-out Myntra products (the issue's table).

Runs the `learned_codes` task of suites/learned.yaml: trains a head on 70 % of each article
type (plus the cached street-like views), codebooks of 32/48/64 bits, the FAISS PQ/OPQ and
sign-binarised baselines, and measures every representation on the held-out 30 %.  The first
run computes the view features (about 3 minutes on 2 cores); later runs reuse them.

    python benchmarks/learned_codes.py [--cache DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import ROOT, need_shared, report
from lookalike.evaluation import evaluate, load_suite

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache", help="store cache (embeddings and view features)")
    args = parser.parse_args()
    need_shared()
    started = time.perf_counter()
    result = evaluate(load_suite(ROOT / "suites" / "learned.yaml"), [], args.cache, progress=print)
    (task_name, by_config), = result.tasks.items()
    outcome = by_config["default"]
    table = outcome.plots["codes_table"]
    width = max(len(c) for c in table["columns"])
    print(f"\n{'representation'.ljust(width)}  " + "  ".join(r[:16].rjust(16) for r in table["rows"]))
    for column in table["columns"]:
        print(column.ljust(width) + "  " + "  ".join(f"{table['cells'][column][r]:16.3f}" for r in table["rows"]))
    report("learned_codes", {"task": task_name, "seconds": round(time.perf_counter() - started, 1), "table": table,
                             "model": outcome.plots["model"], "notes": outcome.notes})
