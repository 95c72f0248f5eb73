"""Search: by photo, by words, and similar to a product (optionally with one facet changed)."""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import app, default_columns, err, guarded, print_hits, state


@app.command()
def search(
    image: Optional[str] = typer.Argument(None, help="Query photo: a path or an http(s) URL (optional with --text)."),
    text: Optional[str] = typer.Option(None, "--text", "-t", help='Words: "red floral summer dress"; with a photo: "in red" ("not …"/"without …" push away).'),
    negative: List[str] = typer.Option([], "--not", help="A term the results should not match, repeatable: --not stripes."),
    k: int = typer.Option(10, "-k", "--top", min=1, max=1000, help="How many results."),
    where: List[str] = typer.Option([], "--where", "-w", help='Filter, repeatable: "article_type=Shirts", "price<50", "colour=Red|Blue".'),
    look: bool = typer.Option(False, "--look", help="Search every garment found in the photo (as `lookalike look`)."),
    whole: bool = typer.Option(False, "--whole", help="Search the whole frame even when the photo shows a person."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
) -> None:
    """Find the products most similar to a photo (a photo of a person: its main garment, unless --whole), or matching words (--text)."""

    def body() -> None:
        if text is not None or negative:
            if look:
                raise ValueError("--look searches garments of a photo; it does not take --text")
            with state.engine() as engine:
                hits = engine.search_text(text or "", k=k, where=where, image=image, negative=negative)
            print_hits(hits, as_json, default_columns(hits))
            if hits and hits[0].evidence and not as_json:
                wanted = hits[0].evidence["query"]["wanted"]
                err.print("read as: " + (", ".join(f"{f}={v}" for f, v in wanted.items()) or "no facet values named") +
                          ("; words ranked by title and photo" if hits[0].evidence["query"]["text"] else ""), highlight=False)
            return
        if image is None:
            raise ValueError("give a photo, or words with --text")
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
        placed = hits[0].evidence if hits and hits[0].evidence and "placed_first" in hits[0].evidence else None
        if placed and not as_json:
            err.print(f"first: the nearest photo off the shelf (the model ranked it {placed['model_rank']}, backbone similarity "
                      f"{placed['backbone_similarity']:.3f}); exact_first_depth = 0 turns this off", highlight=False)

    guarded(body)


@app.command()
def similar(
    product_id: str = typer.Argument(..., help="Id of a catalogue product."),
    k: int = typer.Option(10, "-k", "--top", min=1, max=1000, help="How many results."),
    where: List[str] = typer.Option([], "--where", "-w", help="Filter, repeatable (see search)."),
    hide_sharing: List[str] = typer.Option([], "--hide-sharing", help="Column whose value the results must not share with the "
                                                                       "product, repeatable: like this, but another colour."),
    change: List[str] = typer.Option([], "--change", help="facet=value, repeatable: like this, but with this value "
                                                          "(--change base_colour=Red); the facet is a column or a predicted tag."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
) -> None:
    """Find the products most similar to a catalogue product (itself excluded)."""

    def body() -> None:
        with state.engine() as engine:
            hits = engine.similar(product_id, k=k, where=where, hide_sharing=hide_sharing, change=change)
            print_hits(hits, as_json, default_columns(hits))

    guarded(body)


