"""Products and the store: ingest, get, upsert, delete, info."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .common import DISTRIBUTOR_HELP, app, distributor_settings, fail, guarded, out, progress_bar, state


@app.command()
def ingest(
    source: Path = typer.Argument(..., help="Catalogue: .csv/.tsv, .jsonl, .parquet, or a folder of images."),
    id_column: Optional[str] = typer.Option(None, help="Column holding the product id (default: id, item_id, product_id or sku)."),
    image_column: Optional[str] = typer.Option(None, help="Column holding the image path or URL (default: image, image_path, image_file, image_url...)."),
    prune: bool = typer.Option(False, help="Delete products that the catalogue no longer lists."),
    force_prune: bool = typer.Option(False, "--force-prune", help="Prune even when that deletes more than max_prune_fraction of the store."),
    batch_size: Optional[int] = typer.Option(None, min=1, max=512, help="Images per model batch."),
    garments: Optional[bool] = typer.Option(None, "--garments/--no-garments",
                                            help="Then find the garments of new outfit shots, as `lookalike garments` does (default: the ingest_garments setting)."),
    distributor: Optional[str] = typer.Option(None, help=DISTRIBUTOR_HELP),
    workers: Optional[int] = typer.Option(None, min=1, max=4096, help="Workers of the distributor (default: one per CPU)."),
    ray_address: Optional[str] = typer.Option(None, help="With --distributor ray: a running cluster (auto, ray://host:10001); default: a local Ray."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Add or update products from a catalogue (only new or changed images are embedded), then find the garments of new photos of people.

    The garments stage is `lookalike garments`; --no-garments skips it once."""

    def body() -> None:
        with state.engine(**distributor_settings(distributor, workers, ray_address)) as engine:
            with progress_bar(unit="rows") as bar:
                task = bar.add_task("ingest", total=None, rate="0")
                started = time.perf_counter()

                def progress(stage: str, done: int, total: int | None) -> None:
                    rate = done / max(time.perf_counter() - started, 1e-6)
                    bar.update(task, description=stage, completed=done, total=total, rate=f"{rate:.0f}")

                report = engine.ingest(source, id_column=id_column, image_column=image_column, prune=prune, progress=progress, batch_size=batch_size,
                                       force_prune=force_prune, garments=garments)
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
def get(product_id: str = typer.Argument(..., help="Product id."), as_json: bool = typer.Option(False, "--json")) -> None:
    """Show one product's stored metadata."""

    def body() -> None:
        with state.catalog() as engine:
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
        with state.catalog() as engine:
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
        with state.catalog() as engine:
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


