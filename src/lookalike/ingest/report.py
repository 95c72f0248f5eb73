"""What an ingest run did: counts, skipped items with reasons, and the skip report file."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Skipped:
    item: str
    source: str
    kind: str
    reason: str


@dataclass
class IngestReport:
    run_id: int
    source: str
    seen: int = 0
    added: int = 0
    updated: int = 0  # image changed: re-embedded
    metadata_updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    skip_report: str | None = None
    status: str = "running"
    prune_refused: str | None = None
    garments: dict[str, Any] | None = None  # the outfit-shot garments stage after the write (None: not run)

    @property
    def embedded(self) -> int:
        return self.added + self.updated

    @property
    def done(self) -> int:
        """Rows finished (written, found unchanged or skipped): what progress counts."""
        return self.added + self.updated + self.metadata_updated + self.unchanged + len(self.skipped)

    def counts(self) -> dict[str, Any]:
        return {
            "seen": self.seen, "added": self.added, "updated": self.updated, "metadata_updated": self.metadata_updated,
            "unchanged": self.unchanged, "deleted": self.deleted, "skipped": len(self.skipped), "seconds": round(self.seconds, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "source": self.source, "status": self.status, **self.counts(), "skip_report": self.skip_report,
                "prune_refused": self.prune_refused, "garments": self.garments,
                "skipped_items": [s.__dict__ for s in self.skipped[:100]]}

    def summary(self) -> str:
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"{self.seen} rows: {self.added} added, {self.updated} re-embedded, {self.metadata_updated} metadata updated, "
            f"{self.unchanged} unchanged, {self.deleted} deleted, {len(self.skipped)} skipped "
            f"in {self.seconds:.1f} s ({rate:.0f} images/s)"
        )
        if self.prune_refused:
            text += "\n" + self.prune_refused
        if self.garments:
            text += "\n" + garments_summary(self.garments)
        if self.skipped:
            kinds: dict[str, int] = {}
            for s in self.skipped:
                kinds[s.kind] = kinds.get(s.kind, 0) + 1
            text += "\nskipped by reason: " + ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items()))
            if self.skip_report:
                text += f"\nfull list: {self.skip_report}"
        return text


def garments_summary(garments: dict[str, Any]) -> str:
    if "error" in garments:
        return f"garments of outfit shots: not found ({garments['error']}); run: lookalike garments"
    return (f"garments of outfit shots: {garments.get('looked_at', 0)} photos looked at, {garments.get('with_person', 0)} with a person, "
            f"{garments.get('garments', 0)} garments stored, {garments.get('skipped', 0)} skipped")


def write_skip_report(directory: Path, run_id: int, entries: list[tuple[str, str, str, str]]) -> str:
    """The skip list as CSV, written under a temporary name and renamed (never half a file)."""
    directory.mkdir(exist_ok=True)
    path = directory / f"ingest-{run_id}-skipped.csv"
    partial = path.with_suffix(".csv.partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item", "source", "kind", "reason"])
        writer.writerows(entries)
    partial.replace(path)
    return str(path)
