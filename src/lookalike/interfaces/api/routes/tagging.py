"""Tagging an upload, the current tagger set and its review list."""

from __future__ import annotations

import time
from typing import Any, Optional

from fastapi import APIRouter, File, Form, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from ...errors import error_response, read_upload
from ..context import ApiContext
from ..schemas import TagsOut


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["tagging"])
    engine = ctx.engine

    @api.post("/tag", response_model=TagsOut, summary="Tag an uploaded photo (nothing is stored)", dependencies=[ctx.scopes.read])
    async def tag(
        image: UploadFile = File(..., description="JPEG, PNG, WebP, GIF, BMP or TIFF"),
        text: str = Form("", max_length=10_000, description="Optional title or description; text evidence is combined with the image"),
        threshold: Optional[float] = Query(None, ge=0.0, le=1.0, description="Override the tagger's confidence threshold"),
    ) -> TagsOut:
        started = time.perf_counter()
        data = await read_upload(image, ctx.image_limit)
        tags = await run_in_threadpool(engine.tag_image, data, text, threshold)
        taggers = engine.taggers
        return TagsOut(tags=tags, tagger=None if taggers is None else taggers.name, took_ms=round((time.perf_counter() - started) * 1000, 2))  # type: ignore[arg-type]

    @api.get("/taggers", summary="The current tagger set and its held-out scores", dependencies=[ctx.scopes.read])
    def taggers_info() -> Any:
        taggers = engine.taggers
        if taggers is None:
            return error_response(404, "no_taggers", "no trained taggers in this store; run `lookalike tag train`")
        columns = {name: {k: v for k, v in col.items() if k != "review"} for name, col in taggers.report.get("columns", {}).items()}
        return {**taggers.summary(), "columns_report": columns}

    @api.get("/tags/review", summary="Products whose label the taggers confidently disagree with", dependencies=[ctx.scopes.admin_view])
    def tags_review(column: Optional[str] = Query(None, max_length=200), limit_: int = Query(100, ge=1, le=100_000, alias="limit")) -> Any:
        taggers = engine.taggers
        if taggers is None:
            return error_response(404, "no_taggers", "no trained taggers in this store; run `lookalike tag train`")
        rows = taggers.review(column)
        return {"total": len(rows), "items": rows[:limit_]}

    return api
