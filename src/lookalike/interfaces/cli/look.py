"""Shop the look: find every garment in a photo and search each; train and list garment finders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
import yaml
from rich.table import Table

from .common import app, bar_progress, default_columns, err, guarded, out, print_hits, progress_bar, say, state
from .models import train_app


@app.command()
def look(
    image: str = typer.Argument(..., help="A photo of an outfit (path or http(s) URL)."),
    k: int = typer.Option(5, "-k", "--top", min=1, max=100, help="Products per garment."),
    where: List[str] = typer.Option([], "--where", "-w", help="Filter applied to every garment's results, repeatable (see search)."),
    group: List[str] = typer.Option([], "--group", "-g", help="Only garments of this group (top, bottom, dress, shoes, bag …), repeatable."),
    as_json: bool = typer.Option(False, "--json", help="Print garments and results as JSON (boxes in the photo's pixels)."),
) -> None:
    """Find every garment in an outfit photo and the catalogue products most like each."""

    def body() -> None:
        with state.engine() as engine:
            found = engine.look(image, k=k, where=where, groups=group or None)
        if as_json:
            out.print_json(json.dumps(found.to_dict(outline=False)))
            return
        if not found.garments:
            out.print(f"no garment found in {image} (detector {found.detector}); `lookalike search` searches the whole photo", highlight=False)
            return
        for garment in found.garments:
            region = garment.region
            box = ", ".join(f"{v:.0f}" for v in region.box)
            out.print(f"[bold]{region.group}[/] (confidence {region.confidence:.2f}, box {box})", highlight=False)
            print_hits(garment.hits, False, default_columns(garment.hits))

    guarded(body)


@app.command()
def garments(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
) -> None:
    """Find the garments in the catalogue's own outfit photos, so shop the look matches products by the garment, not the pose."""

    def body() -> None:
        with state.engine() as engine, progress_bar(quiet) as bar:
            outcome = engine.find_garments(progress=bar_progress(bar))
        if as_json:
            out.print_json(json.dumps(outcome))
            return
        out.print(f"{outcome['looked_at']} product photos looked at (of {outcome['products']}): {outcome['with_person']} show a person, "
                  f"{outcome['garments']} garments stored; {outcome['skipped']} unreadable", highlight=False)
        for rowid, reason in outcome["skipped_examples"]:
            err.print(f"skipped product {rowid}: {reason}", highlight=False, markup=False)

    guarded(body)


detector_app = typer.Typer(help="Garment finders: list the store's, show the one in use.", no_args_is_help=True)
app.add_typer(detector_app, name="detectors")


@detector_app.command("list")
def detectors_list(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The packaged default and the store's trained garment finders, with their held-out figures."""

    def body() -> None:
        from ...detection import list_detectors, load_detector, resolve_detector

        with state.catalog() as catalog:
            found = [load_detector(resolve_detector("default", None)).info] + list_detectors(catalog.directory)
        setting = state.settings().detector
        found[0]["folder"] = "default"
        in_use = setting if setting != "auto" else found[-1]["folder"]
        if as_json:
            out.print_json(json.dumps([{**d, "in_use": d["folder"] == in_use} for d in found], default=str))
            return
        table = Table("name", "groups", "photos", "held-out mIoU", "box recall", "ms/photo", "in use")
        for d in found:
            figures = d.get("held_out_figures") or {}
            recall = ", ".join(f"{g} {v:.2f}" for g, v in (figures.get("box_recall") or {}).items())
            table.add_row(d["folder"], ", ".join(d["groups"]), str(d.get("trained_on", "")), f"{figures.get('mean_iou', float('nan')):.3f}",
                          recall, str(figures.get("ms_per_photo", "")), "yes" if d["folder"] == in_use else "")
        out.print(table)

    guarded(body)


@train_app.command("detector")
def train_detector_cmd(
    images: Path = typer.Argument(..., help="CSV of annotated photos: image_file[,mask_file] (paths relative to the CSV, inside its folder)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV label_id,label: what each mask value means (needed with masks)."),
    boxes: Optional[Path] = typer.Option(None, "--boxes", help="CSV image_file,label,x1,y1,x2,y2 of garment boxes (photo pixels)."),
    groups: Optional[Path] = typer.Option(None, "--groups", help="YAML {group: [label, ...]}: the shop's labels in garment groups "
                                                                  "(default: the clothing-co-parsing labels)."),
    holdout: float = typer.Option(0.15, min=0.0, max=0.5, help="Share of photos kept out of training and measured on."),
    epochs: int = typer.Option(6, min=1, max=200, help="Passes over the training photos."),
    max_photos: Optional[int] = typer.Option(None, min=2, help="Use only the first N annotated photos (a quick trial)."),
    seed: int = typer.Option(0, help="Random seed: same data + seed = same detector."),
    backbone: str = typer.Option("efficientnet-lite0", help="The backbone whose maps the finder reads: efficientnet-lite0 (the default "
                                                            "finder's) or efficientnet-lite2 (larger, about 1.5x the finder's time)."),
    name: Optional[str] = typer.Option(None, help="Detector name (default: garments-vN)."),
    as_json: bool = typer.Option(False, "--json", help="Print the held-out figures as JSON."),
) -> None:
    """Teach the garment finder from masks and/or boxes (frozen backbone maps cached once, a small head trained in minutes)."""

    def body() -> None:
        from ...detection import GroupMap, ccp_group_map
        from ...detection.training import DetectorTrainingSpec

        if groups is None:
            group_map = ccp_group_map()
        else:
            try:
                group_map = GroupMap.from_dict(yaml.safe_load(groups.read_text(encoding="utf-8")), str(groups))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
                raise ValueError(f"label map {groups}: cannot be read ({exc})") from exc
        spec = DetectorTrainingSpec(images, group_map, labels, boxes, holdout=holdout, epochs=epochs, seed=seed, max_photos=max_photos,
                                    backbone=backbone, provenance=f"trained with 'lookalike train detector' on {images}")
        with state.engine() as engine, progress_bar() as bar:
            path, figures = engine.train_detector(spec, name, progress=bar_progress(bar), log=say)
        if as_json:
            out.print_json(json.dumps({"name": path.name, "path": str(path), "held_out": figures}))
            return
        if figures:
            out.print(f"held out ({figures['photos']} photos): mIoU {figures['mean_iou']:.3f}; box recall at IoU 0.5: "
                      + ", ".join(f"{g} {v:.2f}" for g, v in figures["box_recall"].items()), highlight=False)
        out.print(f"saved detector {path.name} in {path.parent}; with setting detector = auto (the default) look and search use it now",
                  highlight=False)

    guarded(body)
