"""Search by photo or words, and similar products (with the "like this, but…" modifiers)."""

from __future__ import annotations

import time
from typing import Optional

from fastapi import APIRouter, File, Form, Path, Query, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from ....detection import GARMENT_GROUPS
from ....search import FilterError, ImageQuery, ProductQuery, TextQuery
from ....search.queries import MAX_CHANGES, MAX_NEGATIVE_TERMS, MAX_TEXT
from ...errors import read_upload
from ..context import ApiContext
from ..schemas import ChangeValuesOut, LookOut, SearchOut, hits_out, look_out


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["search"], dependencies=[ctx.scopes.read])
    engine = ctx.engine

    @api.post("/search", response_model=SearchOut, summary="Search by uploaded photo, by words, or both")
    async def search(
        request: Request,
        image: Optional[UploadFile] = File(None, description="JPEG, PNG, WebP, GIF, BMP or TIFF (optional with `text`)"),
        text: Optional[str] = Form(None, max_length=MAX_TEXT, description='Words: "red floral summer dress"; with a photo: '
                                                                           '"in red", "without stripes"'),
        negative: list[str] = Form([], max_length=MAX_NEGATIVE_TERMS, description="Terms the results should not match"),
        k: int = Query(10, ge=1, le=1000),
        where: list[str] = Query([], max_length=50, description='Filters, repeatable: "article_type=Shirts", "price<50"'),
        whole: bool = Query(False, description="Search the whole frame even when the photo shows a person "
                                               "(otherwise its main garment is searched and returned as `garment`)"),
    ) -> SearchOut:
        started = time.perf_counter()
        if text is not None or negative:
            query = TextQuery(k=k, where=tuple(where), text=text or "", negative=tuple(negative),
                              image=await read_upload(image, ctx.image_limit) if image is not None else None)
            return hits_out(await run_in_threadpool(engine.query, query), started)
        if image is None:
            raise ValueError(_nothing_sent(request.headers.get("content-type", "")))
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

    @api.get("/search/text", response_model=SearchOut, summary="Search by words")
    def search_text(q: str = Query(..., max_length=MAX_TEXT, description='Words: "navy slim fit shirt", "summer dress, not red"'),
                    negative: list[str] = Query([], max_length=MAX_NEGATIVE_TERMS, description="Terms the results should not match"),
                    k: int = Query(10, ge=1, le=1000), where: list[str] = Query([], max_length=50)) -> SearchOut:
        started = time.perf_counter()
        return hits_out(engine.query(TextQuery(k=k, where=tuple(where), text=q, negative=tuple(negative))), started)

    @api.get("/products/{product_id:path}/similar", response_model=SearchOut, summary="Products similar to a product")
    def similar(product_id: str = Path(..., max_length=500), k: int = Query(10, ge=1, le=1000),
                where: list[str] = Query([], max_length=50),
                hide_sharing: list[str] = Query([], max_length=10, description="Columns whose value the results must not share "
                                                "with the product: \"like this, but another colour\""),
                change: list[str] = Query([], max_length=MAX_CHANGES, description="facet=value: like this, but with this value "
                                          "(base_colour=Red); a column or a predicted tag")) -> SearchOut:
        started = time.perf_counter()
        query = ProductQuery(product_id, k=k, where=tuple(where), hide_sharing=tuple(hide_sharing), change=tuple(change))
        return hits_out(engine.query(query), started)

    @api.get("/products/{product_id:path}/changes", response_model=ChangeValuesOut,
             summary="The values a facet takes among products like this one (\"same style in: …\")")
    def changes(product_id: str = Path(..., max_length=500), facet: str = Query(..., min_length=1, max_length=200),
                where: list[str] = Query([], max_length=50)) -> ChangeValuesOut:
        return ChangeValuesOut(facet=facet.removeprefix("tag."), values=engine.text.change_values(product_id, facet, tuple(where)))  # type: ignore[arg-type]

    return api


def _nothing_sent(content_type: str) -> str:
    """Why a search request carried neither photo nor words; a JSON body is the usual reason, so say so."""
    message = "send a photo (image), words (text), or both"
    if content_type.split(";")[0].strip().lower() == "application/json":
        message += (" as multipart/form-data fields; a JSON body was sent, which this endpoint does not read"
                    " (for words alone: GET /search/text?q=...)")
    return message
