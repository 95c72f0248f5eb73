"""Search by photo, and similar products (with the "like this, but…" modifier)."""

from __future__ import annotations

import time

from fastapi import APIRouter, File, Path, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from ....detection import GARMENT_GROUPS
from ....search import FilterError, ImageQuery, ProductQuery
from ...errors import read_upload
from ..context import ApiContext
from ..schemas import LookOut, SearchOut, hits_out, look_out


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["search"], dependencies=[ctx.scopes.read])
    engine = ctx.engine

    @api.post("/search", response_model=SearchOut, summary="Search by uploaded photo")
    async def search(
        image: UploadFile = File(..., description="JPEG, PNG, WebP, GIF, BMP or TIFF"),
        k: int = Query(10, ge=1, le=1000),
        where: list[str] = Query([], max_length=50, description='Filters, repeatable: "article_type=Shirts", "price<50"'),
        whole: bool = Query(False, description="Search the whole frame even when the photo shows a person "
                                               "(otherwise its main garment is searched and returned as `garment`)"),
    ) -> SearchOut:
        started = time.perf_counter()
        data = await read_upload(image, ctx.image_limit)
        ImageQuery(data, k=k, where=tuple(where))  # validate before detection
        garment, hits = await run_in_threadpool(engine.search_garment, data, k, tuple(where), True if whole else None)
        return hits_out(hits, started, garment)

    @api.post("/search/look", response_model=LookOut, summary="Shop the look: every garment in a photo, each with its products")
    async def look(
        image: UploadFile = File(..., description="An outfit photo: JPEG, PNG, WebP, GIF, BMP or TIFF"),
        k: int = Query(5, ge=1, le=100, description="Products per garment"),
        where: list[str] = Query([], max_length=50, description="Filters applied to every garment's results"),
        group: list[str] = Query([], max_length=len(GARMENT_GROUPS), description="Only garments of these groups"),
    ) -> LookOut:
        started = time.perf_counter()
        unknown = [g[:40] for g in group if g not in GARMENT_GROUPS]
        if unknown:
            raise FilterError(f"unknown garment group(s) {', '.join(map(repr, unknown))}; groups: {', '.join(GARMENT_GROUPS)}")
        data = await read_upload(image, ctx.image_limit)
        ImageQuery(data, k=k, where=tuple(where))
        found = await run_in_threadpool(lambda: engine.look(data, k, tuple(where), groups=tuple(group) or None))
        return look_out(found, started)

    @api.get("/products/{product_id:path}/similar", response_model=SearchOut, summary="Products similar to a product")
    def similar(product_id: str = Path(..., max_length=500), k: int = Query(10, ge=1, le=1000),
                where: list[str] = Query([], max_length=50),
                hide_sharing: list[str] = Query([], max_length=10, description="Columns whose value the results must not share "
                                                "with the product: \"like this, but another colour\"")) -> SearchOut:
        started = time.perf_counter()
        return hits_out(engine.query(ProductQuery(product_id, k=k, where=tuple(where), hide_sharing=tuple(hide_sharing))), started)

    return api
