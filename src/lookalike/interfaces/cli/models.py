"""Models: train embeddings and quantisers, list and import models, re-index the store with one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.table import Table

from ...engine import Engine
from .common import DISTRIBUTOR_HELP, app, bar_progress, distributor_settings, guarded, out, progress_bar, say, state

train_app = typer.Typer(help="Learn from the shop's own catalogue: fine-tuned embeddings, compact quantised codes, the text bridge.", no_args_is_help=True)
app.add_typer(train_app, name="train")


def _print_validation(info: dict[str, Any]) -> None:
    street = "street" in info["training_data"]
    columns = ["held-out products", "NN accuracy", "mAP", "street-like view R@1"] + (["street crop P@10"] if street else [])
    table = Table(*columns, title=f"{info['name']}: validation on {info['training_data']['holdout_products']} held-out products")
    for label, metrics in info.get("validation", {}).items():
        if isinstance(metrics, dict) and metrics:
            cells = [f"{metrics[key]:.3f}" if key in metrics else "-" for key in ("nn_accuracy", "map", "view_recall_at_1", "street_p_at_10")]
            table.add_row(label.replace("_", " "), *cells[: len(columns) - 1])
    out.print(table)


def _run_training(train: Callable[[Engine], Callable[..., Any]], options: Any, as_json: bool) -> None:
    """Run ``train(engine)(options, progress=..., log=...)`` with a progress bar, then print the model."""
    with state.engine() as engine:
        with progress_bar() as bar:
            model = train(engine)(options, progress=bar_progress(bar), log=say)
        _train_output(model, as_json)


def _train_output(model: Any, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(model.info, default=str))
        return
    _print_validation(model.info)
    out.print(f"saved model {model.name} in {model.path}; switch search to it with: lookalike reindex --model {model.name}", highlight=False)


@train_app.command("embedding")
def train_embedding_cmd(
    positives: List[str] = typer.Option(["article_type"], "--positives", help="Column(s) whose shared value makes two products positives "
                                                                                  "(several: all must match); 'id' for views of the same product only."),
    where: List[str] = typer.Option([], "--where", "-w", help="Train only on products matching this filter (repeatable)."),
    backbone: List[str] = typer.Option([], "--backbone", help="Backbone encoder(s) whose features the head learns from (default: the store's encoder); several are concatenated."),
    unfreeze_head: bool = typer.Option(False, "--unfreeze-head", help="Also train the backbone's last 1x1 convolution, from cached feature maps (a longer run: more disk and minutes)."),
    views: int = typer.Option(4, min=1, max=32, help="Views cached per product: the clean photo plus street-like augmentations."),
    holdout: float = typer.Option(0.2, min=0.0, max=0.89, help="Share of each class kept out of training and used for validation."),
    loss: str = typer.Option("proxy-anchor", help="Ranking loss: triplet (batch-hard), triplet-semihard, multi-similarity or proxy-anchor."),
    instance_weight: float = typer.Option(0.5, min=0.0, help="Weight of the same-product (view against view) loss next to the class loss."),
    backbone_share: float = typer.Option(0.0, "--backbone-share", min=0.0, max=0.95,
                                         help="Share of each similarity kept from the backbone features: exact-product matching survives "
                                              "training (0.5 on Myntra: street-like view R@1 0.82 against 0.66 without, 0.86 off the shelf) for some class mAP (0.735 against 0.769)."),
    dim: int = typer.Option(128, min=8, max=4096, help="Embedding size."),
    steps: int = typer.Option(1500, min=1, help="Training steps (batches)."),
    seed: int = typer.Option(0, help="Random seed: same data + seed = same model."),
    name: Optional[str] = typer.Option(None, help="Model name (default: <positives>-vN)."),
    street_boxes: Optional[Path] = typer.Option(None, "--street-boxes", help="Garment boxes in street photos (CSV: image_file,label,x1,y1,x2,y2[,product_id]) "
                                                                             "learned as cross-domain positives of the catalogue classes their labels map to."),
    street_labels: Optional[Path] = typer.Option(None, "--street-labels", help="YAML {column: article_type, labels: {street label: list of catalogue values}}; "
                                                                               "default: a street label equals a catalogue value."),
    street_weight: float = typer.Option(1.0, "--street-weight", min=0.0, max=100.0, help="Weight of the street (cross-domain) loss."),
    street_exclude: List[str] = typer.Option([], "--street-exclude", help="A street photo (image_file as in the CSV) never trained on (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the model description as JSON."),
) -> None:
    """Fine-tune an embedding on the catalogue (cached backbone features of augmented views, then a small head)."""

    def body() -> None:
        from ...training import EmbeddingOptions, StreetOptions, TrainingDataError

        if street_labels is not None and street_boxes is None:
            raise TrainingDataError("--street-labels needs --street-boxes")
        street = StreetOptions(boxes=str(street_boxes), labels=str(street_labels) if street_labels else None, weight=street_weight,
                               exclude=list(street_exclude)) if street_boxes is not None else None
        options = EmbeddingOptions(positives=list(positives), where=list(where) or None, backbones=list(backbone) or None, unfreeze_head=unfreeze_head, views=views, holdout=holdout,
                                   loss=loss, instance_weight=instance_weight, backbone_share=backbone_share, dim=dim, steps=steps, seed=seed, name=name, street=street)
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
        from ...training import QuantizerOptions

        _run_training(lambda engine: engine.train_quantizer, QuantizerOptions(model=model, bits=bits, steps=steps, seed=seed, name=name), as_json)

    guarded(body)


@train_app.command("text")
def train_text_cmd(
    epochs: int = typer.Option(15, min=1, max=1000, help="Passes over the (title, photo) pairs."),
    dim: int = typer.Option(256, min=8, max=2048, help="Size of the shared space."),
    seed: int = typer.Option(0, help="Random seed."),
    where: List[str] = typer.Option([], "--where", "-w", help="Learn only from products matching these filters, repeatable."),
    word_weight: float = typer.Option(1.0, min=0.0, max=10.0, help="Weight of the titles' own words (brands, fits, fabrics) beside "
                                                                  "their sentence vectors; 0 reads sentence vectors only."),
    as_json: bool = typer.Option(False, "--json", help="Print the bridge description as JSON."),
) -> None:
    """Learn the text bridge (needs lookalike[text]): words meet photos, so products without a title are found by words."""

    def body() -> None:
        from ...text import BridgeOptions
        with state.engine() as engine, progress_bar() as bar:
            bridge = engine.text.train(BridgeOptions(epochs=epochs, dim=dim, seed=seed, where=tuple(where), word_weight=word_weight), progress=bar_progress(bar),
                                       log=say)
        if as_json:
            out.print_json(json.dumps(bridge.info, default=str))
            return
        validation = bridge.info.get("validation")
        shown = f"; a title finds its own photo among {validation['among']} held-out pairs: R@1 {validation['r_at_1']:.3f}, R@10 {validation['r_at_10']:.3f}" if validation else ""
        words = f", {bridge.info['words']} title words" if bridge.info.get("words") else ""
        out.print(f"saved text bridge {bridge.info.get('name')} ({bridge.info['pairs']} pairs{words}, {bridge.info['train_seconds']} s){shown}",
                  highlight=False)

    guarded(body)


@train_app.command("list")
def train_list(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The trained models in this store, with their held-out scores (same as ``models list``)."""
    guarded(lambda: _print_models(as_json))


def _print_models(as_json: bool) -> None:
    from ...models import list_models

    with state.catalog() as catalog:  # no vectors needed: model files and the store's record
        models = list_models(catalog.directory)
        serving = catalog.store.get_meta("encoder")
    if as_json:
        out.print_json(json.dumps([{**m, "serving": f"{m['name']}@{m['weights_sha'][:12]}" == serving} for m in models], default=str))
        return
    if not models:
        out.print("no trained models; run `lookalike train embedding`, or copy one in with `lookalike models import`")
        return
    table = Table("name", "kind", "positives", "bits", "dim", "held-out NN", "held-out mAP", "created", "serving")
    for m in models:
        score = m.get("validation", {}).get("adc") or m.get("validation", {}).get("fine_tuned") or {}
        table.add_row(m["name"], m.get("kind", ""), " + ".join(m.get("positives", [])), str(m.get("bits") or "-"), str(m.get("dim")),
                      *(f"{score[key]:.3f}" if key in score else "-" for key in ("nn_accuracy", "map")), m.get("created", ""),
                      "yes" if f"{m['name']}@{m['weights_sha'][:12]}" == serving else "")
    out.print(table)


models_app = typer.Typer(help="Models in this store: list them, quantise an encoder to INT8, import one trained elsewhere.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The trained models in this store, with their held-out scores."""
    guarded(lambda: _print_models(as_json))


@models_app.command("quantize")
def models_quantize(
    encoder: str = typer.Option("efficientnet-lite0", "--encoder", help="The float encoder to quantise (efficientnet-lite0 or efficientnet-lite2)."),
    photos: int = typer.Option(256, "--photos", help="How many of the store's photos (a random sample of its thumbnails) calibrate it; "
                                                      "a fifth, at most 256, is held back to check it against the float encoder."),
    seed: int = typer.Option(0, help="Random seed of the sample."),
    name: Optional[str] = typer.Option(None, help="Model name (default: <encoder>-int8-vN)."),
    as_json: bool = typer.Option(False, "--json", help="Print the model description as JSON."),
) -> None:
    """An INT8 encoder calibrated on this shop's photos (ONNX Runtime static quantisation): faster
    ingest and search-by-photo; serve it with reindex --model NAME."""

    def body() -> None:
        from ...models.int8 import Int8Options, quantize_encoder, sample_photos

        options = Int8Options(base=encoder, photos=photos, seed=seed, name=name)
        options.check()  # a bad option fails before any photo is read
        with state.catalog() as catalog:
            sample = sample_photos(catalog.store.thumbnail_rowids(), catalog.store.thumbnails, photos, seed)
            with progress_bar(unit="photos") as bar:
                model = quantize_encoder(catalog.directory, sample, options, catalog.settings, progress=bar_progress(bar), log=say)
        if as_json:
            out.print_json(json.dumps(model.info, default=str))
            return
        check = model.info["validation"]["against_float"]
        shown = (f"; on {check['photos']} held-back photos: mean cosine to float {check['mean_cosine']:.3f}, "
                 f"same nearest photo {check.get('same_nearest', float('nan')):.3f}") if check else ""
        out.print(f"saved INT8 encoder {model.name} ({model.info['calibration']['photos']} calibration photos){shown}; "
                  f"serve it with: lookalike reindex --model {model.name}", highlight=False)

    guarded(body)


@models_app.command("import")
def models_import(source: Path = typer.Argument(..., help="A model folder (STORE/models/NAME of another store).")) -> None:
    """Copy a trained model into this store, checked; then reindex --model NAME, or name it in an eval config."""

    def body() -> None:
        from ...models import import_model

        with state.catalog() as catalog:
            target = import_model(source, catalog.directory)
        out.print(f"imported {target.name} into {target.parent}", highlight=False)

    guarded(body)


@app.command()
def reindex(
    model: str = typer.Option(..., "--model", "-m", help="Trained model name (see `lookalike train list`), model folder, or pretrained encoder name."),
    distributor: Optional[str] = typer.Option(None, help=DISTRIBUTOR_HELP),
    workers: Optional[int] = typer.Option(None, min=1, max=4096, help="Workers of the distributor (default: one per CPU)."),
    ray_address: Optional[str] = typer.Option(None, help="With --distributor ray: a running cluster (auto, ray://host:10001); default: a local Ray."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
) -> None:
    """Re-embed the catalogue with another model and switch to it atomically (search keeps serving the old index meanwhile)."""

    def body() -> None:
        with state.engine(**distributor_settings(distributor, workers, ray_address)) as engine:
            with progress_bar(quiet) as bar:
                outcome = engine.reindex(model, progress=bar_progress(bar))
            if as_json:
                out.print_json(json.dumps(outcome))
            elif not outcome["switched"]:
                out.print(f"nothing to do: {outcome['reason']} ({outcome['model']})", highlight=False)
            else:
                out.print(f"now serving {outcome['model']} (was {outcome['previous']}): {outcome['products']} products; "
                          f"{outcome['reused']} reused, {outcome['from_backbone_vectors']} from stored backbone vectors, "
                          f"{outcome['from_images']} from images, {outcome['from_thumbnails']} from thumbnails, {outcome['caught_up']} caught up", highlight=False)

    guarded(body)


