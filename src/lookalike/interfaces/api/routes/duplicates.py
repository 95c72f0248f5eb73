"""Duplicate listings: a background job that finds them, its latest report (JSON or CSV), and people's verdicts."""

from __future__ import annotations

from typing import Any, List, Optional

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from ....duplicates import DuplicateOptions, load_latest
from ....duplicates.finder import LATEST_CSV
from ....security.keys import ApiKey
from ...background import MAX_ID, start_duplicate_search
from ..access import requires
from ..context import ApiContext


class DuplicatesIn(BaseModel):
    k: int = Field(5, ge=1, le=20, description="Nearest neighbours checked per product")
    min_cosine: float = Field(0.8, ge=0.5, le=1.0, description="Embedding cosine below which a pair is not checked")
    where: List[str] = Field([], max_length=20, description="Only among products matching these filters (search's syntax)")


class ListingsIn(BaseModel):
    ids: List[str] = Field(..., min_length=2, max_length=50, description="Product ids: every pair among them is marked")


def _checked_ids(ids: list[str]) -> list[str]:
    for item in ids:
        if not item or len(item) > MAX_ID:
            raise ValueError(f"product id {item[:80]!r}: must be 1..{MAX_ID} characters")
    return ids


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["duplicates"])
    engine = ctx.engine
    folder = engine.directory / "duplicates"
    writer = requires(ctx.scopes.policy, "write")

    @api.post("/duplicates", status_code=202, summary="Start finding duplicate listings (identical or re-processed photos)",
              dependencies=[ctx.scopes.write])
    def start(body: DuplicatesIn) -> dict[str, Any]:
        options = DuplicateOptions(body.k, body.min_cosine, tuple(body.where))
        return {**start_duplicate_search(engine, options), "report_url": "/duplicates"}

    @api.get("/duplicates/status", summary="The current (or last) duplicate search", dependencies=[ctx.scopes.admin_view])
    def status() -> dict[str, Any]:
        job = engine.jobs.latest.get("duplicates")
        return {"job": None if job is None else job.to_dict()}

    @api.get("/duplicates", summary="The latest duplicate search's groups, with evidence", dependencies=[ctx.scopes.admin_view])
    def latest(offset: int = Query(0, ge=0, le=10_000_000), limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
        report = load_latest(folder)
        if report is None:
            raise HTTPException(404, "no duplicate search has finished yet: POST /duplicates")
        groups = report.pop("groups")
        return {**report, "total_groups": len(groups), "offset": offset, "groups": groups[offset:offset + limit]}

    @api.get("/duplicates.csv", summary="The latest groups as CSV (one row per listing)", dependencies=[ctx.scopes.admin_view],
             response_class=FileResponse, responses={200: {"content": {"text/csv": {}}}})
    def latest_csv() -> FileResponse:
        path = folder / LATEST_CSV
        if not path.is_file():
            raise HTTPException(404, "no duplicate search has finished yet: POST /duplicates")
        return FileResponse(path, media_type="text/csv", filename="duplicates.csv")

    @api.post("/duplicates/not-duplicates", summary="Remember that these listings are different items (never grouped again)")
    def not_duplicates(body: ListingsIn, key: Optional[ApiKey] = Depends(writer)) -> dict[str, Any]:
        pairs = engine.duplicates.mark_not_duplicate(_checked_ids(body.ids), key.name if key else "anonymous")
        return {"marked_pairs": pairs}

    @api.post("/duplicates/forget", summary="Forget the marks among these listings", dependencies=[ctx.scopes.write])
    def forget(body: ListingsIn) -> dict[str, Any]:
        return {"forgotten_pairs": engine.duplicates.forget_marks(_checked_ids(body.ids))}

    @api.get("/duplicates/marks", summary="People's verdicts on pairs (who and when)", dependencies=[ctx.scopes.admin_view])
    def marks() -> dict[str, Any]:
        return {"marks": engine.duplicates.marks()}

    return api
