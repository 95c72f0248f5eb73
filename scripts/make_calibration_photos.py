"""Pick the photos that calibrate the built-in INT8 encoder (``efficientnet-lite0-int8``).

    python scripts/make_calibration_photos.py

Six photos of each class of the CC0 demo catalogue (the first by product id, so the choice is
reproducible), shrunk to the encoder's 224-pixel input, written to
``src/lookalike/models/calibration/`` with their sources.  Changing them changes the built-in
INT8 graph: bump ``CALIBRATION_VERSION`` in ``lookalike/models/int8.py`` when you do.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo"
TARGET = ROOT / "src" / "lookalike" / "models" / "calibration"
PER_CLASS, SIDE = 6, 224


def main() -> None:
    by_class: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in sorted(csv.DictReader((DEMO / "products.csv").open()), key=lambda r: r["id"]):
        by_class[row["category"]].append(row)
    chosen = [row for rows in by_class.values() for row in rows[:PER_CLASS]]
    TARGET.mkdir(parents=True, exist_ok=True)
    for old in TARGET.glob("*.jpg"):
        old.unlink()
    with (TARGET / "sources.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "category", "source", "license"])
        for row in sorted(chosen, key=lambda r: r["id"]):
            with Image.open(DEMO / row["image"]) as image:
                image = image.convert("RGB")
                image.thumbnail((SIDE, SIDE), Image.Resampling.LANCZOS)
                image.save(TARGET / f"{row['id']}.jpg", quality=88, optimize=True)
            writer.writerow([f"{row['id']}.jpg", row["category"], row["source"], row["license"]])
    print(f"{len(chosen)} photos in {TARGET}")


if __name__ == "__main__":
    main()
