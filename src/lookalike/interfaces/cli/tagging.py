"""Automatic tagging: train, predict, tag an image, review, info."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.table import Table

from .common import app, bar_progress, distributor_settings, err, fail, guarded, out, progress_bar, say, state

tag_app = typer.Typer(help="Automatic tagging: train taggers from labelled columns, tag products, review disagreements.", no_args_is_help=True)
app.add_typer(tag_app, name="tag")






@tag_app.command("train")
def tag_train(
    column: List[str] = typer.Option([], "--column", help="Labelled catalogue column to learn, repeatable (article_type, base_colour...)."),
    text_column: Optional[List[str]] = typer.Option(None, "--text-column", help="Column with title/description text, repeatable (default: title, name, description... when present)."),
    hierarchy: Optional[Path] = typer.Option(None, help="Category tree file: one path per line, levels separated by '>'."),
    path_column: List[str] = typer.Option([], "--path-column", help="Column(s) holding each product's current category: one column of 'A > B' paths, or one per level, top first."),
    image_model: str = typer.Option("efficientnet-lite2", help="Second image backbone run on thumbnails for tagging; 'none' uses only the store's embeddings."),
    text_model: str = typer.Option("tfidf", help="Text features: tfidf, minilm (needs lookalike[text]) or none."),
    rules: Optional[Path] = typer.Option(None, help="Text rules file (YAML); default: the shipped rules."),
    threshold: float = typer.Option(0.5, min=0.0, max=1.0, help="Tags below this confidence are left empty."),
    review_confidence: float = typer.Option(0.8, min=0.0, max=1.0, help="List a product for review when the tagger disagrees with its label at least this confidently."),
    folds: int = typer.Option(3, min=2, max=10, help="Cross-validation folds: every labelled product is scored by a model that never saw it."),
    min_class_count: int = typer.Option(3, min=2, help="Classes with fewer labelled products are left out (and reported)."),
    seed: int = typer.Option(0, help="Random seed (training is reproducible)."),
    tag_now: bool = typer.Option(True, "--tag/--no-tag", help="Tag every product with the new taggers when training ends."),
    as_json: bool = typer.Option(False, "--json", help="Print the training report as JSON."),
) -> None:
    """Train taggers from the catalogue's own labels and save them as the store's next version."""

    def body() -> None:
        from ...tagging import TrainOptions

        options = TrainOptions(columns=list(column), text_columns=list(text_column) if text_column else None, hierarchy=hierarchy,
                               path_columns=list(path_column) or None, image_model=image_model, text_model=text_model, rules=rules,
                               threshold=threshold, review_confidence=review_confidence, folds=folds, min_class_count=min_class_count, seed=seed)
        with state.engine() as engine:
            with progress_bar() as bar:
                taggers = engine.train_taggers(options, progress=bar_progress(bar), log=say)
                tagged = engine.tag(progress=bar_progress(bar)) if tag_now else 0
            if as_json:
                out.print_json(json.dumps({**taggers.summary(), "tagged": tagged, "report": taggers.report}, default=str))
                return
            print_training_report(taggers.report)
            out.print(f"saved {taggers.name} in {engine.directory / 'taggers'}; tagged {tagged} products", highlight=False)

    guarded(body)


def print_training_report(report: dict[str, Any]) -> None:
    table = Table("column", "products", "classes", "accuracy", "macro-F1", "image-only acc.", "image-only F1", "review", title="out-of-fold (held-out) scores")
    for name, col in report.get("columns", {}).items():
        table.add_row(name, str(col["products"]), str(col["classes"]), f"{col['all_evidence']['accuracy']:.3f}", f"{col['all_evidence']['macro_f1']:.3f}",
                      f"{col['image_only']['accuracy']:.3f}", f"{col['image_only']['macro_f1']:.3f}", str(len(col["review"])))
    out.print(table)
    for name, col in report.get("columns", {}).items():
        if "levels" in col:
            levels = ", ".join(f"L{i + 1} {a:.3f}" for i, a in enumerate(col["levels"]["accuracy_by_level"]))
            out.print(f"{name}: accuracy by level {levels}; placed-node accuracy {col['levels']['placed_node_accuracy']}", highlight=False)


@tag_app.command("predict")
def tag_predict(
    only_new: bool = typer.Option(False, "--only-new", help="Tag only products without tags (ingest does this automatically)."),
    threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Override the tagger's confidence threshold."),
    rules: Optional[Path] = typer.Option(None, help="Text rules file (YAML) to use instead of the tagger set's."),
    taggers: Optional[Path] = typer.Option(None, help="A tagger file to use instead of the store's current set (e.g. trained "
                                                      "in another store on the same encoder)."),
    distributor: Optional[str] = typer.Option(None, help="Where products are tagged: threads (default: this process), processes, or ray."),
    workers: Optional[int] = typer.Option(None, min=1, max=4096, help="Workers of the distributor (default: one per CPU)."),
    ray_address: Optional[str] = typer.Option(None, help="With --distributor ray: a running cluster (auto, ray://host:10001); default: a local Ray."),
) -> None:
    """Tag products with the current taggers (or, untrained, with text rules and zero-shot image groups)."""

    def body() -> None:
        from ...tagging import TextRules

        with state.engine(**distributor_settings(distributor, workers, ray_address)) as engine:
            chosen = engine.tagging.load_file(taggers) if taggers else None
            if chosen is None and engine.taggers is None:
                err.print("no trained taggers: using text rules and zero-shot image groups (lower confidence)", highlight=False)
            with progress_bar() as bar:
                done = engine.tagging.tag(only_untagged=only_new, threshold=threshold, rules=TextRules.from_file(rules) if rules else None,
                                          progress=bar_progress(bar), taggers=chosen)
            out.print(f"tagged {done} products", highlight=False)
            unsure = {c: n for c, n in engine.tagging.coverage().items() if n["unsure"]}
            if unsure:
                listed = ", ".join(f"{c} {n['unsure']} of {n['shown'] + n['unsure']}" for c, n in unsure.items())
                out.print(f"below the threshold (no tag shown; their likeliest values still count in text search): {listed}", highlight=False)

    guarded(body)


@tag_app.command("image")
def tag_image(
    image: str = typer.Argument(..., help="Photo to tag: a path or an http(s) URL."),
    text: str = typer.Option("", help="Optional title or description of the photo."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Tag one photo without adding it to the catalogue."""

    def body() -> None:
        with state.engine() as engine:
            print_tags(engine.tag_image(image, text=text), as_json)

    guarded(body)


def print_tags(tags: dict[str, dict[str, Any]], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(tags))
        return
    table = Table("tag", "value", "confidence", "source")
    for name, tag in sorted(tags.items()):
        table.add_row(name, str(tag["value"]), f"{tag['confidence']:.2f}", tag["source"])
    out.print(table)


@tag_app.command("review")
def tag_review(
    column: Optional[str] = typer.Option(None, help="Only this tagged column."),
    limit: int = typer.Option(50, min=1, help="How many to show (most confident disagreements first)."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Write the whole list to this CSV file."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Products whose label the taggers disagree with confidently (scored out of fold at training)."""

    def body() -> None:
        with state.engine() as engine:
            taggers = engine.taggers
            if taggers is None:
                fail("no trained taggers in this store; run `lookalike tag train` first")
            rows = taggers.review(column)
            if csv_path:
                import csv

                with open(csv_path, "w", newline="", encoding="utf-8") as handle:
                    writer = csv.DictWriter(handle, fieldnames=["id", "column", "current", "predicted", "confidence"])
                    writer.writeheader()
                    writer.writerows(rows)
            if as_json:
                out.print_json(json.dumps(rows[:limit]))
                return
            table = Table("id", "column", "current label", "predicted", "confidence", title=f"{len(rows)} products flagged for review")
            for r in rows[:limit]:
                table.add_row(r["id"], r["column"], r["current"], r["predicted"], f"{r['confidence']:.2f}")
            out.print(table)

    guarded(body)


@tag_app.command("relabel")
def tag_relabel(
    product_id: str = typer.Argument(..., help="The product."),
    column: str = typer.Argument(..., help="A column the taggers were trained on."),
    value: str = typer.Argument(..., help="The right label."),
    who: Optional[str] = typer.Option(None, "--who", help="Who decided (default: your user name)."),
) -> None:
    """Fix one product's label (recorded with who and when); the next `tag train` / `tag retrain` learns from it."""

    def body() -> None:
        import getpass

        with state.engine() as engine:
            change = engine.tagging.review.relabel(product_id, column, value, who or getpass.getuser())
        out.print(f"{change['id']}: {change['column']} {change['old']!r} -> {change['new']!r} (by {change['who']})", highlight=False)

    guarded(body)


@tag_app.command("changes")
def tag_changes(
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Write every recorded change to this CSV file."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Recorded label changes (review fixes), newest first: who changed what, from what, when."""

    def body() -> None:
        from ...tagging.review import changes_csv

        with state.engine() as engine:
            changes = engine.tagging.review.changes()
        if csv_path:
            csv_path.write_text(changes_csv(changes), encoding="utf-8")
        if as_json:
            out.print_json(json.dumps(changes))
            return
        for change in changes[:50]:
            out.print(f"{change['id']}  {change['column']}: {change['old']!r} -> {change['new']!r}  by {change['who']}", highlight=False)

    guarded(body)


@tag_app.command("retrain")
def tag_retrain(as_json: bool = typer.Option(False, "--json", help="Print the new set's summary as JSON.")) -> None:
    """Train the taggers again with their last options, on the labels as they are now."""

    def body() -> None:
        with state.engine() as engine, progress_bar() as bar:
            taggers = engine.tagging.retrain(progress=bar_progress(bar))
        if as_json:
            out.print_json(json.dumps(taggers.summary()))
            return
        out.print(f"retrained: {taggers.name} ({', '.join(sorted(taggers.report.get('columns', {})))})", highlight=False)

    guarded(body)


@tag_app.command("info")
def tag_info(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Show the current tagger set: version, columns, encoders, training scores."""

    def body() -> None:
        with state.engine() as engine:
            taggers = engine.taggers
            if taggers is None:
                fail("no trained taggers in this store; run `lookalike tag train` first")
            if as_json:
                out.print_json(json.dumps({**taggers.summary(), "report": taggers.report}, default=str))
                return
            for key, value in taggers.summary().items():
                out.print(f"{key}: {value}", highlight=False)
            print_training_report(taggers.report)

    guarded(body)


