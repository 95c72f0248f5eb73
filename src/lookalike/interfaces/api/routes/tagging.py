"""Tagging an upload, the current tagger set and its review list."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Optional

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ....security.keys import ApiKey
from ....tagging.review import MAX_VALUE, changes_csv
from ...background import start_retrain
from ...errors import error_response, read_upload
from ..access import requires
from ..context import ApiContext
from ..schemas import TagsOut


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["tagging"])
    engine = ctx.engine
    writer = requires(ctx.scopes.policy, "write")

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

    @api.get("/labels/review", summary="One labelled column's per-class F1 and the labels the taggers contradict, as they stand now",
             dependencies=[ctx.scopes.admin_view])
    def labels_review(column: str = Query(..., min_length=1, max_length=200), limit_: int = Query(200, ge=1, le=10_000, alias="limit")) -> Any:
        return asdict(engine.tagging.review.column(column, limit_))

    @api.post("/labels", summary="Set a product's label in a reviewed column (recorded with who and when)")
    def relabel(body: RelabelIn, key: Optional[ApiKey] = Depends(writer)) -> Any:
        return engine.tagging.review.relabel(body.id, body.column, body.value, key.name if key else "anonymous")

    @api.get("/labels/changes", summary="Recorded label changes, newest first", dependencies=[ctx.scopes.admin_view])
    def label_changes(limit_: int = Query(1000, ge=1, le=100_000, alias="limit")) -> Any:
        return {"changes": engine.tagging.review.changes(limit_)}

    @api.get("/labels/changes.csv", summary="Recorded label changes as CSV", dependencies=[ctx.scopes.admin_view],
             response_class=Response, responses={200: {"content": {"text/csv": {}}}})
    def label_changes_csv() -> Response:
        return Response(changes_csv(engine.tagging.review.changes()), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="label-changes.csv"'})

    @api.post("/tags/retrain", status_code=202, summary="Retrain the taggers with their last options on the labels as they are now",
              dependencies=[ctx.scopes.admin])
    def retrain() -> Any:
        return start_retrain(engine)

    return api


class RelabelIn(BaseModel):
    id: str = Field(..., min_length=1, max_length=200, description="Product id")
    column: str = Field(..., min_length=1, max_length=200, description="A column the taggers were trained on")
    value: str = Field(..., min_length=1, max_length=MAX_VALUE, description="The right label")
