"""Request and response bodies of the HTTP API (they make the OpenAPI schema)."""

from __future__ import annotations

import time
from typing import Any, Optional
from urllib.parse import quote

from pydantic import BaseModel, Field

from ...search import Hit

MAX_OFFSET = 10**9
MAX_RUN_ID = 2**62


class TagOut(BaseModel):
    value: str
    confidence: float = Field(description="0..1; tags below the tagger's threshold are left out")
    source: str = Field(description="Evidence: image, colour, text (fused as image+colour+text...), rule or zero-shot")

    model_config = {"extra": "allow"}


class HitOut(BaseModel):
    id: str
    score: float = Field(description="Cosine similarity to the query, -1..1 (text and \"like this, but…\" queries: their combined score)")
    metadata: dict[str, Any]
    tags: dict[str, TagOut] = Field(default_factory=dict, description="Predicted tags, kept apart from the shop's metadata")
    thumbnail_url: str
    evidence: Optional[dict[str, Any]] = Field(None, description="Text and \"like this, but…\" queries: what ranked the product "
                                                                   "(facet values matched and whether from a label or a predicted tag, title or photo, "
                                                                   "how the query was read; changed and kept facets, and changed_probability: how likely the "
                                                                   "product has each asked value, 1 for a label). A fine-tuned model's photo search: on the "
                                                                   "product placed first as the nearest photo off the shelf, its backbone similarity and the model's own rank")


class GarmentOut(BaseModel):
    group: str = Field(description="Garment group: top, bottom, dress, shoes, bag … (the detector's groups)")
    box: list[float] = Field(description="x1, y1, x2, y2 in the uploaded photo's pixels (x2, y2 exclusive)")
    confidence: float = Field(description="Mean probability of the group over the garment's pixels, 0..1")
    area: float = Field(description="Share of the photo's pixels")
    outline: Optional[str] = Field(None, description="PNG data URL: the garment's mask and outline, to stretch over the photo")


class SearchOut(BaseModel):
    results: list[HitOut]
    took_ms: float
    garment: Optional[GarmentOut] = Field(None, description="The garment searched when the photo shows a person (null: the whole photo)")


class ChangeValueOut(BaseModel):
    value: str
    count: int = Field(description="Products of the same type with this value")
    current: bool = Field(description="The product's own value")


class ChangeValuesOut(BaseModel):
    facet: str
    values: list[ChangeValueOut]


class LookGarmentOut(GarmentOut):
    results: list[HitOut]


class LookOut(BaseModel):
    width: int
    height: int
    detector: str = Field(description="The garment finder used, name@version")
    garments: list[LookGarmentOut]
    took_ms: float


class ProductOut(BaseModel):
    id: str
    image: Optional[str]
    metadata: dict[str, Any]
    tags: dict[str, TagOut] = Field(default_factory=dict, description="Predicted tags, kept apart from the shop's metadata")
    updated_at: float
    thumbnail_url: str


class TagsOut(BaseModel):
    tags: dict[str, TagOut]
    tagger: Optional[str] = Field(description="The tagger set used; null when untrained (rules and zero-shot only)")
    took_ms: float


class ReindexIn(BaseModel):
    model: str = Field(max_length=200, description="Trained model name (GET /models) or pretrained encoder name")


class IngestIn(BaseModel):
    source: str = Field(max_length=4096, description="Catalogue path on the server, inside one of the ingest_roots: "
                                                     ".csv, .tsv, .jsonl, .parquet or a folder")
    id_column: Optional[str] = Field(None, max_length=200)
    image_column: Optional[str] = Field(None, max_length=200)
    prune: bool = Field(False, description="Delete products the catalogue no longer lists (needs an admin key)")
    force_prune: bool = Field(False, description="Prune even beyond max_prune_fraction of the catalogue")


def thumb_url(product_id: str) -> str:
    return f"/products/{quote(product_id, safe='')}/thumbnail"


def hit_out(hit: Hit) -> HitOut:
    return HitOut(id=hit.id, score=hit.score, metadata=hit.metadata, tags=hit.tags, thumbnail_url=thumb_url(hit.id), evidence=hit.evidence)  # type: ignore[arg-type]


def hits_out(hits: list[Hit], started: float, garment: dict[str, Any] | None = None) -> SearchOut:
    return SearchOut(results=[hit_out(h) for h in hits], took_ms=round((time.perf_counter() - started) * 1000, 2),
                     garment=GarmentOut(**garment) if garment else None)


def look_out(look: Any, started: float) -> LookOut:
    garments = [LookGarmentOut(**g.region.to_dict(outline=True), results=[hit_out(h) for h in g.hits]) for g in look.garments]
    return LookOut(width=look.width, height=look.height, detector=look.detector, garments=garments,
                   took_ms=round((time.perf_counter() - started) * 1000, 2))
