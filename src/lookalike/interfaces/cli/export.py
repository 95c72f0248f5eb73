"""Batch exports: every product's similar items, for a shop's own pages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .common import app, bar_progress, guarded, out, progress_bar, state

export_app = typer.Typer(help="Batch exports of what search computes online (similar items for every product).", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("similar")
def export_similar(
    output: Path = typer.Option(..., "--out", "-o", help="Output file: .parquet, .csv or .jsonl (one row per product and similar item; "
                                                         "JSON Lines: one line per product)."),
    k: int = typer.Option(12, "-k", "--k", min=1, max=100, help="Similar items per product."),
    where: List[str] = typer.Option([], "--where", "-w", help="Which products may be recommended, repeatable (stock>0)."),
    for_where: List[str] = typer.Option([], "--for", help="Which products get a list, repeatable (default: all)."),
    same: List[str] = typer.Option([], "--same", help="Column a result must share with the product, repeatable (gender)."),
    cap: Optional[str] = typer.Option(None, "--cap", help="At most N results per value of a column, for diversity: brand=2."),
    duplicates: bool = typer.Option(False, "--keep-duplicates", help="Keep listings of the very same photo (left out by default)."),
    full: bool = typer.Option(False, "--full", help="Recompute every list (default: only what changed since the last export to this file)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Write every product's similar items to a file, incrementally and resumably (a killed run resumes)."""

    def body() -> None:
        with state.engine() as engine, progress_bar() as bar:
            report = engine.exports.similar(output, k=k, where=where, for_where=for_where, same=same, cap=cap, exclude_duplicates=not duplicates,
                                            incremental=not full, progress=bar_progress(bar))
        if as_json:
            out.print_json(json.dumps(report.to_dict()))
            return
        out.print(f"{report.mode}: {report.products:,} products, {report.rows:,} rows in {report.path} "
                  f"({report.recomputed:,} lists computed, {report.reused:,} reused, {report.seconds:.1f} s)", highlight=False)
        for note in report.notes:
            out.print(f"note: {note}", highlight=False)

    guarded(body)
