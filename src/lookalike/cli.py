"""The ``lookalike`` command line: ingest, search, similar, get, upsert, delete, info, serve."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .catalogue import CatalogueError
from .config import ConfigError, Settings, load_settings
from .encoders import EncoderError
from .engine import BusyError, Engine, NotFoundError
from .filters import FilterError
from .images import ImageError
from .index import IndexBuildError
from .search import Hit
from .security.keys import KeyRing
from .store import StoreError
from .evaluation.suite import SuiteError
from .tagging import HierarchyError, RulesError, TaggerError
from .training import ModelError, TrainingDataError

app = typer.Typer(help="lookalike: visual search and tagging for fashion catalogues.", no_args_is_help=True, add_completion=False)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

USER_ERRORS = (PermissionError, ModelError, TrainingDataError, TaggerError, RulesError, HierarchyError, SuiteError, CatalogueError, ConfigError, EncoderError, FilterError, ImageError, IndexBuildError, StoreError, NotFoundError, BusyError, ValueError)


class State:
    store: Optional[str] = None
    config: Optional[str] = None

    def settings(self, **overrides: Any) -> Settings:
        return load_settings(self.config, store=self.store, **overrides)

    def engine(self, **overrides: Any) -> Engine:
        return Engine.open(settings=self.settings(**overrides))


state = State()


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def guarded(fn: Callable[[], Any]) -> Any:
    """Run a command body, turning expected errors into one clear line and a non-zero exit."""
    try:
        return fn()
    except USER_ERRORS as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; everything committed so far is kept and the next ingest resumes", 130)


@app.callback()
def main_options(
    store: Optional[str] = typer.Option(None, "--store", "-s", help="Store directory (default: $LOOKALIKE_STORE or ./lookalike-store)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="TOML settings file (default: $LOOKALIKE_CONFIG or ./lookalike.toml)."),
) -> None:
    """Global options, before the command: lookalike --store DIR COMMAND ..."""
    state.store, state.config = store, config


def print_hits(hits: list[Hit], as_json: bool, show: list[str]) -> None:
    if as_json:
        out.print_json(json.dumps([h.to_dict() for h in hits]))
        return
    if not hits:
        out.print("no results")
        return
    table = Table("#", "id", "score", *show)
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), hit.id, f"{hit.score:.4f}", *[str(hit.metadata.get(c, "")) for c in show])
    out.print(table)


def default_columns(hits: list[Hit]) -> list[str]:
    preferred = ["title", "article_type", "category", "base_colour", "colour", "brand", "price"]
    present = {k for h in hits for k in h.metadata}
    return [c for c in preferred if c in present][:4]


@app.command()
def ingest(
    source: Path = typer.Argument(..., help="Catalogue: .csv/.tsv, .jsonl, .parquet, or a folder of images."),
    id_column: Optional[str] = typer.Option(None, help="Column holding the product id (default: id, item_id, product_id or sku)."),
    image_column: Optional[str] = typer.Option(None, help="Column holding the image path or URL (default: image, image_path, image_file, image_url...)."),
    prune: bool = typer.Option(False, help="Delete products that the catalogue no longer lists."),
    force_prune: bool = typer.Option(False, "--force-prune", help="Prune even when that deletes more than max_prune_fraction of the store."),
    batch_size: Optional[int] = typer.Option(None, min=1, max=512, help="Images per model batch."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Add or update products from a catalogue; only new or changed images are embedded."""

    def body() -> None:
        with state.engine() as engine:
            quiet = as_json or not sys.stderr.isatty()
            with Progress(TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} img/s"),
                          TimeElapsedColumn(), TimeRemainingColumn(), console=err, disable=quiet) as bar:
                task = bar.add_task("ingest", total=None, rate="0")

                def progress(report, total):
                    rate = report.embedded / report.seconds if report.seconds else 0
                    bar.update(task, completed=report.seen, total=total, rate=f"{rate:.0f}")

                report = engine.ingest(source, id_column=id_column, image_column=image_column, prune=prune, progress=progress, batch_size=batch_size,
                                       force_prune=force_prune)
            if as_json:
                out.print_json(json.dumps(report.to_dict()))
            else:
                out.print(report.summary(), highlight=False, markup=False)
                for skipped in report.skipped[:10]:
                    out.print(f"  skipped {skipped.item}: {skipped.reason}", highlight=False, markup=False)
                if len(report.skipped) > 10:
                    out.print(f"  ... and {len(report.skipped) - 10} more (see {report.skip_report})", highlight=False, markup=False)

    guarded(body)


@app.command()
def search(
    image: str = typer.Argument(..., help="Query photo: a path or an http(s) URL."),
    k: int = typer.Option(10, "-k", "--top", min=1, max=1000, help="How many results."),
    where: List[str] = typer.Option([], "--where", "-w", help='Filter, repeatable: "article_type=Shirts", "price<50", "colour=Red|Blue".'),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
) -> None:
    """Find the products most similar to a photo."""

    def body() -> None:
        with state.engine() as engine:
            hits = engine.search(image, k=k, where=where)
            print_hits(hits, as_json, default_columns(hits))

    guarded(body)


@app.command()
def similar(
    product_id: str = typer.Argument(..., help="Id of a catalogue product."),
    k: int = typer.Option(10, "-k", "--top", min=1, max=1000, help="How many results."),
    where: List[str] = typer.Option([], "--where", "-w", help="Filter, repeatable (see search)."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
) -> None:
    """Find the products most similar to a catalogue product (itself excluded)."""

    def body() -> None:
        with state.engine() as engine:
            hits = engine.similar(product_id, k=k, where=where)
            print_hits(hits, as_json, default_columns(hits))

    guarded(body)


@app.command()
def get(product_id: str = typer.Argument(..., help="Product id."), as_json: bool = typer.Option(False, "--json")) -> None:
    """Show one product's stored metadata."""

    def body() -> None:
        with state.engine() as engine:
            product = engine.get(product_id)
            if as_json:
                out.print_json(json.dumps(product.to_dict()))
            else:
                table = Table("field", "value")
                table.add_row("id", product.id)
                table.add_row("image", str(product.image))
                for key, value in sorted(product.metadata.items()):
                    table.add_row(key, str(value))
                out.print(table)

    guarded(body)


def parse_meta(pairs: list[str]) -> dict[str, str]:
    meta = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--meta {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        if not key.strip():
            raise ValueError(f"--meta {pair!r}: empty key")
        meta[key.strip()] = value
    return meta


@app.command()
def upsert(
    product_id: str = typer.Argument(..., help="Product id (new or existing)."),
    image: Optional[str] = typer.Option(None, "--image", "-i", help="Image path or URL (required for a new product)."),
    meta: List[str] = typer.Option([], "--meta", "-m", help="Metadata KEY=VALUE, repeatable; replaces the stored metadata."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Insert or update one product."""

    def body() -> None:
        with state.engine() as engine:
            product = engine.upsert(product_id, image=image, metadata=parse_meta(meta) if meta else None)
            if as_json:
                out.print_json(json.dumps(product.to_dict()))
            else:
                out.print(f"stored {product.id}", highlight=False)

    guarded(body)


@app.command()
def delete(product_ids: List[str] = typer.Argument(..., help="One or more product ids.")) -> None:
    """Delete products (unknown ids are reported, exit code 1 if any)."""

    def body() -> None:
        with state.engine() as engine:
            missing = [p for p in product_ids if engine.store.get(p) is None]
            deleted = engine.delete_many([p for p in product_ids if p not in missing])
            out.print(f"deleted {deleted} product(s)", highlight=False)
            if missing:
                fail("unknown id(s): " + ", ".join(missing))

    guarded(body)


@app.command()
def info(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Show what the store holds: products, encoder, index, recent ingest runs."""

    def body() -> None:
        with state.engine() as engine:
            stats = engine.stats()
            stats["recent_runs"] = engine.store.runs(5)
            if as_json:
                out.print_json(json.dumps(stats))
                return
            table = Table("property", "value")
            for key, value in stats.items():
                if key != "recent_runs":
                    table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
            out.print(table)
            for run in stats["recent_runs"]:
                out.print(f"run {run['run_id']} {run['status']}: {run['source']} {run['counts']}", highlight=False)

    guarded(body)


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Address to listen on (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default 8000)."),
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""

    def body() -> None:
        import uvicorn

        from .security.http import AccessPolicy, check_bind
        from .server import create_app

        settings = state.settings(host=host, port=port)
        keys = KeyRing(Path(settings.store).expanduser())
        policy = AccessPolicy(keys, public_read=settings.public_read)
        check_bind(settings.host, policy)  # before loading anything: beyond loopback only with keys
        engine = Engine.open(settings=settings)
        access = ("API keys required for writes" + ("" if settings.public_read else " and reads")) if policy.keys_configured() \
            else "no API keys configured: reads open on loopback, writes refused (lookalike keys create)"
        err.print(f"lookalike serving {engine.stats()['products']} products from {engine.directory} at "
                  f"http://{settings.host}:{settings.port}  (API docs: /docs; {access})", highlight=False)
        # The app closes the engine on shutdown (SIGTERM and Ctrl-C alike): snapshot saved, runs closed.
        app_ = create_app(engine, keys, close_engine=True)
        try:
            uvicorn.run(app_, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=10)
        finally:
            engine.close()  # idempotent; covers a failure before the app started

    guarded(body)


@app.command(name="eval")
def eval_(
    suite: Path = typer.Argument(..., help="Suite file (YAML): data sets and tasks; see docs/evaluation.md."),
    config: List[Path] = typer.Option([], "--config", "-C", help="Configuration file (YAML), repeatable; none: the current settings."),
    out_dir: Path = typer.Option(Path("eval-report"), "--out", "-o", help="Directory for report.md, report.html, results.json and plots/."),
    cache: Optional[Path] = typer.Option(None, help="Where embeddings are cached between runs (default: OUT/.cache)."),
) -> None:
    """Evaluate one or more configurations on a suite and write a report."""

    def body() -> None:
        from .evaluation import evaluate, load_config, load_suite, write_report

        loaded = load_suite(suite)
        configs = [load_config(c) for c in config]
        evaluation = evaluate(loaded, configs, cache or out_dir / ".cache", base=state.settings(), progress=lambda m: err.print(m, highlight=False, markup=False))
        paths = write_report(evaluation, out_dir)
        from .evaluation.report import quality_rows

        table = Table("task", "metric", *[c.name for c in evaluation.configs], "random")
        for row in quality_rows(evaluation):
            table.add_row(row["task"], row["metric"], *[row["cells"].get(c.name, "–") for c in evaluation.configs], row["baseline"])
        out.print(table)
        out.print(f"report: {paths['html']} · {paths['markdown']} · {paths['json']}", highlight=False)

    guarded(body)


keys_app = typer.Typer(help="API keys for the HTTP server: create, list, revoke (scopes: read < write < admin).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _key_ring() -> KeyRing:
    settings = state.settings()
    directory = Path(settings.store).expanduser()
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"the store {directory} is a file, not a store directory")
    return KeyRing(directory)


@keys_app.command("create")
def keys_create(
    scope: str = typer.Option("read", help="read (search and view), write (add, change, delete products and ingest), "
                                           "or admin (also prune, re-index, run reports, admin pages)."),
    name: str = typer.Option(..., "--name", "-n", help="Who or what uses the key (shown in keys list)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""

    def body() -> None:
        key, token = _key_ring().create(name, scope)
        if as_json:
            out.print_json(json.dumps({**key.to_dict(), "key": token}))
        else:
            out.print(f"created key {key.key_id} ({key.scope}) for {key.name}. Keep it now; it cannot be shown again:", highlight=False)
            out.print(token, highlight=False, markup=False)

    guarded(body)


@keys_app.command("list")
def keys_list(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List API keys (ids, names, scopes; never the keys themselves)."""

    def body() -> None:
        keys = [k.to_dict() for k in _key_ring().list()]
        if as_json:
            out.print_json(json.dumps(keys))
            return
        table = Table("id", "name", "scope", "created", "revoked")
        for k in keys:
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(k["created_at"])))  # type: ignore[arg-type]
            table.add_row(str(k["key_id"]), str(k["name"]), str(k["scope"]), created, "yes" if k["revoked"] else "")
        out.print(table if keys else "no API keys")

    guarded(body)


@keys_app.command("revoke")
def keys_revoke(key_ids: List[str] = typer.Argument(..., help="Key id(s) from keys list.")) -> None:
    """Revoke keys; a running server refuses them from the next request on."""

    def body() -> None:
        ring = _key_ring()
        for key_id in key_ids:
            ring.revoke(key_id)
            out.print(f"revoked {key_id}", highlight=False)

    guarded(body)


tag_app = typer.Typer(help="Automatic tagging: train taggers from labelled columns, tag products, review disagreements.", no_args_is_help=True)
app.add_typer(tag_app, name="tag")


def _tag_progress(bar: Progress) -> Callable[[str, int, int], None]:
    tasks: dict[str, Any] = {}

    def progress(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total)
        bar.update(tasks[label], completed=done, total=total)

    return progress


def _progress_bar(quiet: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err, disable=quiet)


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
        from .tagging import TrainOptions

        options = TrainOptions(columns=list(column), text_columns=list(text_column) if text_column else None, hierarchy=hierarchy,
                               path_columns=list(path_column) or None, image_model=image_model, text_model=text_model, rules=rules,
                               threshold=threshold, review_confidence=review_confidence, folds=folds, min_class_count=min_class_count, seed=seed)
        quiet = as_json or not sys.stderr.isatty()
        with state.engine() as engine:
            with _progress_bar(quiet) as bar:
                taggers = engine.train_taggers(options, progress=_tag_progress(bar), log=lambda m: None if quiet else err.print(m, highlight=False, markup=False))
                tagged = engine.tag(progress=_tag_progress(bar)) if tag_now else 0
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
) -> None:
    """Tag products with the current taggers (or, untrained, with text rules and zero-shot image groups)."""

    def body() -> None:
        from .tagging import TextRules

        with state.engine() as engine:
            if engine.taggers is None:
                err.print("no trained taggers: using text rules and zero-shot image groups (lower confidence)", highlight=False)
            with _progress_bar(not sys.stderr.isatty()) as bar:
                done = engine.tag(only_untagged=only_new, threshold=threshold, rules=TextRules.from_file(rules) if rules else None,
                                  progress=_tag_progress(bar))
            out.print(f"tagged {done} products", highlight=False)

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


train_app = typer.Typer(help="Learn from the shop's own catalogue: fine-tuned embeddings and compact quantised codes.", no_args_is_help=True)
app.add_typer(train_app, name="train")


def _print_validation(info: dict[str, Any]) -> None:
    table = Table("held-out products", "NN accuracy", "mAP", "street-like view R@1", title=f"{info['name']}: validation on {info['training_data']['holdout_products']} held-out products")
    for label, metrics in info.get("validation", {}).items():
        if isinstance(metrics, dict) and metrics:
            table.add_row(label.replace("_", " "), f"{metrics.get('nn_accuracy', float('nan')):.3f}", f"{metrics.get('map', float('nan')):.3f}",
                          f"{metrics['view_recall_at_1']:.3f}" if "view_recall_at_1" in metrics else "-")
    out.print(table)


def _run_training(train: Callable[[Engine], Callable[..., Any]], options: Any, as_json: bool) -> None:
    """Run ``train(engine)(options, progress=..., log=...)`` with a progress bar, then print the model."""
    quiet = as_json or not sys.stderr.isatty()
    with state.engine() as engine:
        with _progress_bar(quiet) as bar:
            model = train(engine)(options, progress=_tag_progress(bar), log=lambda m: None if quiet else err.print(m, highlight=False, markup=False))
        _train_output(model, as_json)


def _train_output(model: Any, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(model.info, default=str))
        return
    _print_validation(model.info)
    out.print(f"saved model {model.name} in {model.path}; switch search to it with: lookalike reindex --model {model.name}", highlight=False)


@train_app.command("embedding")
def train_embedding_cmd(
    positives: List[str] = typer.Option(["article_type"], "--positives", help="Column(s) whose shared value makes two products positives (several: all must match); 'id' for views of the same product only."),
    where: List[str] = typer.Option([], "--where", "-w", help="Train only on products matching this filter (repeatable)."),
    backbone: List[str] = typer.Option([], "--backbone", help="Backbone encoder(s) whose features the head learns from (default: the store's encoder); several are concatenated."),
    unfreeze_head: bool = typer.Option(False, "--unfreeze-head", help="Also train the backbone's last 1x1 convolution, from cached feature maps (a longer run: more disk and minutes)."),
    views: int = typer.Option(4, min=1, max=32, help="Views cached per product: the clean photo plus street-like augmentations."),
    holdout: float = typer.Option(0.2, min=0.0, max=0.89, help="Share of each class kept out of training and used for validation."),
    loss: str = typer.Option("proxy-anchor", help="Ranking loss: triplet (batch-hard), triplet-semihard, multi-similarity or proxy-anchor."),
    instance_weight: float = typer.Option(0.5, min=0.0, help="Weight of the same-product (view against view) loss next to the class loss."),
    dim: int = typer.Option(128, min=8, max=4096, help="Embedding size."),
    steps: int = typer.Option(1500, min=1, help="Training steps (batches)."),
    seed: int = typer.Option(0, help="Random seed: same data + seed = same model."),
    name: Optional[str] = typer.Option(None, help="Model name (default: <positives>-vN)."),
    as_json: bool = typer.Option(False, "--json", help="Print the model description as JSON."),
) -> None:
    """Fine-tune an embedding on the catalogue (cached backbone features of augmented views, then a small head)."""

    def body() -> None:
        from .training import EmbeddingOptions

        options = EmbeddingOptions(positives=list(positives), where=list(where) or None, backbones=list(backbone) or None, unfreeze_head=unfreeze_head, views=views, holdout=holdout,
                                   loss=loss, instance_weight=instance_weight, dim=dim, steps=steps, seed=seed, name=name)
        _run_training(lambda engine: engine.train_embedding, options, as_json)

    guarded(body)


@train_app.command("quantizer")
def train_quantizer_cmd(
    model: str = typer.Option(..., "--model", "-m", help="The fine-tuned model to add codes to (a name from `lookalike train list`)."),
    bits: int = typer.Option(64, help="Code size in bits: a multiple of 8 (32, 48, 64, 128 …), 8 bits per codebook."),
    steps: int = typer.Option(1000, min=1, help="Training steps (batches)."),
    seed: int = typer.Option(0, help="Random seed."),
    name: Optional[str] = typer.Option(None, help="Name of the quantised model (default: <model>-<bits>bit-vN)."),
    as_json: bool = typer.Option(False, "--json", help="Print the model description as JSON."),
) -> None:
    """Learn compact codes jointly with the ranking loss (triplet + quantisation error + orthogonality)."""

    def body() -> None:
        from .training import QuantizerOptions

        _run_training(lambda engine: engine.train_quantizer, QuantizerOptions(model=model, bits=bits, steps=steps, seed=seed, name=name), as_json)

    guarded(body)


@train_app.command("list")
def train_list(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The trained models in this store, with their held-out scores."""

    def body() -> None:
        from .training import list_models

        with state.engine() as engine:
            models = list_models(engine.directory)
            serving = engine.encoder.identity
            if as_json:
                out.print_json(json.dumps([{**m, "serving": f"{m['name']}@{m['weights_sha'][:12]}" == serving} for m in models], default=str))
                return
            if not models:
                out.print("no trained models; run `lookalike train embedding`")
                return
            table = Table("name", "kind", "positives", "bits", "dim", "held-out NN", "held-out mAP", "created", "serving")
            for m in models:
                score = m.get("validation", {}).get("adc") or m.get("validation", {}).get("fine_tuned") or {}
                table.add_row(m["name"], m.get("kind", ""), " + ".join(m.get("positives", [])), str(m.get("bits") or "-"), str(m.get("dim")),
                              f"{score.get('nn_accuracy', float('nan')):.3f}", f"{score.get('map', float('nan')):.3f}", m.get("created", ""),
                              "yes" if f"{m['name']}@{m['weights_sha'][:12]}" == serving else "")
            out.print(table)

    guarded(body)


@app.command()
def reindex(
    model: str = typer.Option(..., "--model", "-m", help="Trained model name (see `lookalike train list`), model folder, or pretrained encoder name."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
) -> None:
    """Re-embed the catalogue with another model and switch to it atomically (search keeps serving the old index meanwhile)."""

    def body() -> None:
        with state.engine() as engine:
            with _progress_bar(quiet or as_json or not sys.stderr.isatty()) as bar:
                outcome = engine.reindex(model, progress=_tag_progress(bar))
            if as_json:
                out.print_json(json.dumps(outcome))
            elif not outcome["switched"]:
                out.print(f"nothing to do: {outcome['reason']} ({outcome['model']})", highlight=False)
            else:
                out.print(f"now serving {outcome['model']} (was {outcome['previous']}): {outcome['products']} products; "
                          f"{outcome['reused']} reused, {outcome['from_backbone_vectors']} from stored backbone vectors, "
                          f"{outcome['from_images']} from images, {outcome['from_thumbnails']} from thumbnails, {outcome['caught_up']} caught up", highlight=False)

    guarded(body)


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
