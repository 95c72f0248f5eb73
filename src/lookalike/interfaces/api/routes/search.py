"""Search by photo, and similar products (with the "like this, but…" modifier)."""

from __future__ import annotations

import time

from fastapi import APIRouter, File, Path, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from ....search import ImageQuery, ProductQuery
from ...errors import read_upload
from ..context import ApiContext
from ..schemas import SearchOut, hits_out


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["search"], dependencies=[ctx.scopes.read])
    engine = ctx.engine

    @api.post("/search", response_model=SearchOut, summary="Search by uploaded photo")
    async def search(
        image: UploadFile = File(..., description="JPEG, PNG, WebP, GIF, BMP or TIFF"),
        k: int = Query(10, ge=1, le=1000),
        where: list[str] = Query([], max_length=50, description='Filters, repeatable: "article_type=Shirts", "price<50"'),
    ) -> SearchOut:
        started = time.perf_counter()
        data = await read_upload(image, ctx.image_limit)
        hits = await run_in_threadpool(engine.query, ImageQuery(data, k=k, where=tuple(where)))
        return hits_out(hits, started)

    @api.get("/products/{product_id:path}/similar", response_model=SearchOut, summary="Products similar to a product")
    def similar(product_id: str = Path(..., max_length=500), k: int = Query(10, ge=1, le=1000),
                where: list[str] = Query([], max_length=50),
                hide_sharing: list[str] = Query([], max_length=10, description="Columns whose value the results must not share "
                                                "with the product: \"like this, but another colour\"")) -> SearchOut:
        started = time.perf_counter()
        return hits_out(engine.query(ProductQuery(product_id, k=k, where=tuple(where), hide_sharing=tuple(hide_sharing))), started)

    return api
