"""Duplicate listings: find them, keep one, or remember that they are not duplicates."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import List, Optional

import typer

from ...duplicates import DuplicateOptions, DuplicateRule
from .common import app, bar_progress, fail, guarded, out, progress_bar, state

duplicates_app = typer.Typer(help="Duplicate listings: the same item (identical or re-processed photo) under several product ids.",
                             invoke_without_command=True)
app.add_typer(duplicates_app, name="duplicates")


def _who(who: Optional[str]) -> str:
    try:
        return (who or getpass.getuser())[:100]
    except (KeyError, OSError):
        return "cli"


@duplicates_app.callback()
def find(
    ctx: typer.Context,
    k: int = typer.Option(5, "-k", "--k", min=1, max=20, help="Nearest neighbours checked per product."),
    min_cosine: float = typer.Option(0.8, "--min-cosine", min=0.5, max=1.0, help="Embedding cosine below which a pair is not checked."),
    where: List[str] = typer.Option([], "--where", "-w", help="Only among products matching this filter, repeatable (brand=Nike)."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Also write the groups to this CSV file (one row per listing)."),
    rule: Optional[Path] = typer.Option(None, "--rule", help="A decision rule fitted on your own catalogue (JSON; see benchmarks/duplicates.py)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (groups, pairs and their evidence)."),
) -> None:
    """List groups of listings that are the same item (run without a sub-command)."""
    if ctx.invoked_subcommand is not None:
        return

    def body() -> None:
        options = DuplicateOptions(k=k, min_cosine=min_cosine, where=tuple(where))
        chosen = DuplicateRule.load(rule) if rule else None
        with state.engine() as engine, progress_bar() as bar:
            report = engine.duplicates.find(options, progress=bar_progress(bar), rule=chosen)
        if csv_path:
            report.write_csv(csv_path)
        if as_json:
            out.print_json(json.dumps(report.to_dict()))
            return
        for group in report.groups:
            best = max((p.probability for p in group.pairs), default=1.0)
            listed = ", ".join(f"[bold]{m}[/bold] (original)" if m == group.original else m for m in group.members)
            out.print(f"group {group.group}: {listed}  — probability {best:.3f}" + ("  identical photo" if any(p.identical for p in group.pairs) else ""))
        out.print(f"{len(report.groups):,} groups ({sum(len(g.members) for g in report.groups):,} listings) among {report.products:,} products; "
                  f"{report.verified:,} candidate pairs checked, {report.marked_skipped:,} marked not duplicates, {report.seconds:.1f} s", highlight=False)

    guarded(body)


@duplicates_app.command("not-duplicates")
def not_duplicates(
    product_ids: List[str] = typer.Argument(..., help="Two or more product ids that are different items."),
    who: Optional[str] = typer.Option(None, "--who", help="Who decided (default: your user name)."),
) -> None:
    """Remember that these listings are not duplicates: they are never grouped again."""

    def body() -> None:
        with state.engine() as engine:
            pairs = engine.duplicates.mark_not_duplicate(product_ids, _who(who))
        out.print(f"remembered {pairs} pair(s) as not duplicates", highlight=False)

    guarded(body)


@duplicates_app.command("forget")
def forget(product_ids: List[str] = typer.Argument(..., help="Product ids whose pairwise marks are forgotten.")) -> None:
    """Forget "not duplicates" marks among these listings."""

    def body() -> None:
        with state.engine() as engine:
            pairs = engine.duplicates.forget_marks(product_ids)
        out.print(f"forgot the marks of {pairs} pair(s)", highlight=False)

    guarded(body)


@duplicates_app.command("marks")
def marks(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the remembered verdicts (who and when)."""

    def body() -> None:
        with state.engine() as engine:
            remembered = engine.duplicates.marks()
        if as_json:
            out.print_json(json.dumps(remembered))
            return
        for mark in remembered:
            out.print(f"{mark['first']}  {mark['second']}  {mark['verdict']}  by {mark['who']}", highlight=False)

    guarded(body)


@duplicates_app.command("keep")
def keep(
    keep_id: str = typer.Argument(..., help="The listing to keep."),
    drop: List[str] = typer.Option(..., "--drop", help="A duplicate listing to delete, repeatable."),
    yes: bool = typer.Option(False, "--yes", help="Delete without asking."),
) -> None:
    """Keep one listing of a group and delete the others."""

    def body() -> None:
        with state.engine() as engine:
            missing = [p for p in [keep_id, *drop] if engine.store.get(p) is None]
            if missing:
                fail("unknown id(s): " + ", ".join(missing))
            if keep_id in drop:
                fail(f"{keep_id} is both kept and dropped")
            if not yes and not typer.confirm(f"delete {len(drop)} listing(s) and keep {keep_id}?"):
                fail("nothing deleted")
            deleted = engine.delete_many(drop)
        out.print(f"kept {keep_id}, deleted {deleted} listing(s)", highlight=False)

    guarded(body)
