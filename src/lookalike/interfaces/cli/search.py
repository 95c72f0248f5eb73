"""Search: by photo, and similar to a product."""

from __future__ import annotations

from typing import List

import typer

from .common import app, default_columns, guarded, print_hits, state


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
    hide_sharing: List[str] = typer.Option([], "--hide-sharing", help="Column whose value the results must not share with the "
                                                                       "product, repeatable: like this, but another colour."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
) -> None:
    """Find the products most similar to a catalogue product (itself excluded)."""

    def body() -> None:
        with state.engine() as engine:
            hits = engine.similar(product_id, k=k, where=where, hide_sharing=hide_sharing)
            print_hits(hits, as_json, default_columns(hits))

    guarded(body)


