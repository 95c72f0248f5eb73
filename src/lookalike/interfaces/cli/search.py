"""Search: by photo, and similar to a product."""

from __future__ import annotations

from typing import List

import typer

from .common import app, default_columns, err, guarded, print_hits, state


@app.command()
def search(
    image: str = typer.Argument(..., help="Query photo: a path or an http(s) URL."),
    k: int = typer.Option(10, "-k", "--top", min=1, max=1000, help="How many results."),
    where: List[str] = typer.Option([], "--where", "-w", help='Filter, repeatable: "article_type=Shirts", "price<50", "colour=Red|Blue".'),
    look: bool = typer.Option(False, "--look", help="Search every garment found in the photo (as `lookalike look`)."),
    whole: bool = typer.Option(False, "--whole", help="Search the whole frame even when the photo shows a person."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
) -> None:
    """Find the products most similar to a photo (a photo of a person: its main garment, unless --whole)."""

    def body() -> None:
        if look and whole:
            raise ValueError("--look and --whole exclude each other")
        if look:
            from .look import look as look_command
            look_command(image, k=k, where=where, group=[], as_json=as_json)
            return
        with state.engine() as engine:
            garment, hits = engine.search_garment(image, k=k, where=where, whole=True if whole else None)
        if garment is not None and not as_json:
            err.print(f"searched the main garment: {garment['group']} (confidence {garment['confidence']:.2f}); --whole searches the whole photo",
                      highlight=False)
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


