"""Build the committed demo catalogue from ../shared/data/clothing (CC0-1.0).

Takes up to 18 photos per garment class (seeded), downsizes them to at most 256 px and
writes examples/demo/products.csv.  Run once by a maintainer; the output is committed so
the demo works on a plain clone without ../shared.
"""

from __future__ import annotations

import csv
import random
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "clothing"
TARGET = ROOT / "examples" / "demo"
PER_CLASS = 18


def main() -> None:
    rows = list(csv.DictReader((SOURCE / "labels.csv").open()))
    by_class: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["label_is_garment_class"] == "True":
            by_class[row["category"]].append(row)
    rng = random.Random(7)
    (TARGET / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for category in sorted(by_class):
        for row in rng.sample(by_class[category], min(PER_CLASS, len(by_class[category]))):
            stem = Path(row["image_file"]).stem
            image = Image.open(SOURCE / row["image_file"]).convert("RGB")
            image.thumbnail((256, 256))
            name = f"images/{stem[:8]}.jpg"
            image.save(TARGET / name, quality=85, optimize=True)
            out.append({"id": stem[:8], "image": name, "category": category, "kids": row["kids"].lower(),
                        "source": f"{row['source_repo']}/{row['source_path']}", "license": row["license"]})
    with (TARGET / "products.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
    print(f"wrote {len(out)} products to {TARGET}", file=sys.stderr)


if __name__ == "__main__":
    main()
