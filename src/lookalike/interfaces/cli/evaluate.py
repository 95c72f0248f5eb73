"""Measuring: evaluate configurations on a suite."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .common import app, err, guarded, out, state


@app.command(name="eval")
def eval_(
    suite: Path = typer.Argument(..., help="Suite file (YAML): data sets and tasks; see docs/evaluation.md."),
    config: List[Path] = typer.Option([], "--config", "-C", help="Configuration file (YAML), repeatable; none: the current settings."),
    out_dir: Path = typer.Option(Path("eval-report"), "--out", "-o", help="Directory for report.md, report.html, results.json and plots/."),
    cache: Optional[Path] = typer.Option(None, help="Where embeddings are cached between runs (default: OUT/.cache)."),
) -> None:
    """Evaluate one or more configurations on a suite and write a report."""

    def body() -> None:
        from ...evaluation import evaluate, load_config, load_suite, write_report

        loaded = load_suite(suite)
        configs = [load_config(c) for c in config]
        evaluation = evaluate(loaded, configs, cache or out_dir / ".cache", base=state.settings(), progress=lambda m: err.print(m, highlight=False, markup=False))
        paths = write_report(evaluation, out_dir)
        from ...evaluation.report import quality_rows

        table = Table("task", "metric", *[c.name for c in evaluation.configs], "random")
        for row in quality_rows(evaluation):
            table.add_row(row["task"], row["metric"], *[row["cells"].get(c.name, "–") for c in evaluation.configs], row["baseline"])
        out.print(table)
        out.print(f"report: {paths['html']} · {paths['markdown']} · {paths['json']}", highlight=False)

    guarded(body)


