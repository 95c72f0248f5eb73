"""The INT8 encoder against the float one, in the same run: speed and search quality.

    python benchmarks/int8_encoder.py [--n 2000] [--calibration 256] [--ingest 1000]

The shop's part of Myntra (a fifth of the products, chosen by a hash of the id) is ingested
into a store and calibrates the INT8 model (`lookalike models quantize`, on the store's
thumbnails); everything measured is in the other four fifths, or in the phone photos of
``clothing/``, which calibration never saw.  The built-in INT8 encoder (``efficientnet-lite0-int8``,
the default for a new store, calibrated on photos packaged with lookalike) is measured beside
both; the phone photos the demo catalogue and those packaged photos come from are left out.

* model only: images/s through the ONNX graph in batches of 32, and one photo's latency;
* quality: leave-one-out nearest-neighbour same-type accuracy and mAP (article type for
  Myntra, garment class for the phone photos), float against INT8 on the same photos;
* end to end: `ingest` of the same catalogue into two fresh stores, float and INT8 (the
  garment-finding stage off in both: it is the same work for both encoders).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from _common import SHARED, need_shared, percentiles, report
from lookalike import Engine
from lookalike.models import import_model
from lookalike.models.encoders import EfficientNetLiteEncoder, Encoder
from lookalike.models.int8 import BuiltinInt8Encoder, Int8Encoder, Int8Options, quantize_encoder, sample_photos

DEMO_CSV = Path(__file__).resolve().parents[1] / "examples" / "demo" / "products.csv"


def _shop_part(row: dict[str, str]) -> bool:
    return zlib.crc32(row["item_id"].encode()) % 5 == 0


def _write_csv(rows: list[dict[str, str]], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "image_file": str(SHARED / "myntra" / r["image_file"])} for r in rows)
    return path


def leave_one_out(vectors: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    nn = float((labels[sims.argmax(axis=1)] == labels).mean())
    aps = []
    for i in range(len(labels)):
        relevant = labels == labels[i]
        relevant[i] = False
        if not relevant.any():
            continue
        ranks = np.flatnonzero(relevant[np.argsort(-sims[i], kind="stable")][:-1]) + 1
        aps.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
    return {"nn_accuracy": round(nn, 4), "mAP": round(float(np.mean(aps)), 4)}


def model_speed(encoder: Encoder, pixels: np.ndarray) -> dict[str, float]:
    encoder.embed(pixels[:32])  # load and warm up outside the timing
    start = time.perf_counter()
    for i in range(0, len(pixels), 32):
        encoder.embed(pixels[i:i + 32])
    batch_rate = len(pixels) / (time.perf_counter() - start)
    single = []
    for i in range(min(200, len(pixels))):
        t = time.perf_counter()
        encoder.embed(pixels[i:i + 1])
        single.append((time.perf_counter() - t) * 1000)
    return {"images_per_s_batch32": round(batch_rate, 1), "one_photo": percentiles(single)}


def embed_all(encoder: Encoder, pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([encoder.embed(pixels[i:i + 32]) for i in range(0, len(pixels), 32)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="held-out photos per data set for quality and model speed")
    parser.add_argument("--shop", type=int, default=800, help="products of the shop's part ingested for calibration")
    parser.add_argument("--calibration", type=int, default=256, help="calibration photos (of the shop's part)")
    parser.add_argument("--ingest", type=int, default=1000, help="held-out products ingested end to end per encoder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    need_shared()
    rows = list(csv.DictReader((SHARED / "myntra" / "labels.csv").open()))
    shop, held = [r for r in rows if _shop_part(r)][: args.shop], [r for r in rows if not _shop_part(r)]
    packaged = {Path(r["source"]).name for r in csv.DictReader(DEMO_CSV.open())}  # the built-in INT8's calibration photos come from these
    phone = [r for r in csv.DictReader((SHARED / "clothing" / "labels.csv").open())
             if r["label_is_garment_class"] == "True" and Path(r["source_path"]).name not in packaged][: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "shop"
        with Engine.open(store, threads=args.threads, ingest_garments=False) as engine:
            engine.ingest(_write_csv(shop, Path(tmp) / "shop.csv"))
            photos = sample_photos(engine.store.thumbnail_rowids(), engine.store.thumbnails, args.calibration, 0)
            started = time.perf_counter()
            model = quantize_encoder(store, photos, Int8Options(photos=args.calibration), engine.settings)
            quantize_seconds = time.perf_counter() - started
            settings = engine.settings
        float_encoder, int8_encoder = EfficientNetLiteEncoder("efficientnet-lite0", settings), Int8Encoder(model, settings)
        builtin = BuiltinInt8Encoder("efficientnet-lite0", settings)
        encoders: dict[str, Encoder] = {"float": float_encoder, "int8": int8_encoder, "int8_builtin": builtin}
        results: dict = {"calibration_photos": model.info["calibration"]["photos"], "quantize_seconds": round(quantize_seconds, 1),
                         "against_float_held_back": model.info["validation"]["against_float"]}
        for name, folder, chosen, column in (("myntra", SHARED / "myntra", held[: args.n], "article_type"),
                                             ("phone_photos", SHARED / "clothing", phone, "category")):
            pixels = np.stack([float_encoder.preprocess(Image.open(folder / r["image_file"]).convert("RGB")) for r in chosen])
            labels = np.array([r[column] for r in chosen])
            quality = {}
            vectors = {label: embed_all(encoder, pixels) for label, encoder in encoders.items()}
            for label in encoders:
                quality[label] = leave_one_out(vectors[label], labels)
            for label in ("int8", "int8_builtin"):
                quality[f"delta_points_{label}"] = {k: round(100 * (quality[label][k] - quality["float"][k]), 2) for k in ("nn_accuracy", "mAP")}
                cosine = (vectors[label] * vectors["float"]).sum(axis=1)
                quality[f"cosine_to_float_{label}"] = {"mean": round(float(cosine.mean()), 4), "lowest": round(float(cosine.min()), 4)}
            results[f"quality_{name}"] = {"photos": len(chosen), **quality}
            if name == "myntra":
                speed: dict = {label: model_speed(encoder, pixels) for label, encoder in encoders.items()}
                for label in ("int8", "int8_builtin"):
                    speed[f"batch_speedup_{label}"] = round(speed[label]["images_per_s_batch32"] / speed["float"]["images_per_s_batch32"], 2)
                    speed[f"one_photo_speedup_{label}"] = round(speed["float"]["one_photo"]["p50_ms"] / speed[label]["one_photo"]["p50_ms"], 2)
                results["model_only"] = speed
        catalogue = _write_csv(held[: args.ingest], Path(tmp) / "held.csv")
        ingest = {}
        for label in encoders:
            target = Path(tmp) / f"ingest-{label}"
            encoder_name = {"float": "efficientnet-lite0", "int8_builtin": builtin.name}.get(label) or import_model(model.path, target).name
            with Engine.open(target, threads=args.threads, ingest_garments=False, encoder=encoder_name) as engine:
                engine.searcher.embed((SHARED / "myntra" / held[0]["image_file"]).read_bytes())  # load the model outside the timing
                outcome = engine.ingest(catalogue)
                ingest[label] = {"images": outcome.embedded, "seconds": round(outcome.seconds, 1),
                                 "images_per_s": round(outcome.embedded / outcome.seconds, 1), "encoder": engine.encoder.identity}
        for label in ("int8", "int8_builtin"):
            ingest[f"speedup_{label}"] = round(ingest[label]["images_per_s"] / ingest["float"]["images_per_s"], 2)
        results["ingest_end_to_end"] = ingest
    report("int8_encoder", results)


if __name__ == "__main__":
    main()
