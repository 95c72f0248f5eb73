"""Exports: every product's similar items as a background job, written inside the store, downloaded by name."""

from __future__ import annotations

import re
from typing import Any, List, Optional

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from ....export import ExportError, SimilarRules
from ....jobs import BusyError
from ..context import ApiContext

# An export's name is a plain file name: no folders, no dot files, nothing a client can point elsewhere.
EXPORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.(parquet|csv|jsonl)")
MEDIA_TYPES = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv", "jsonl": "application/x-ndjson"}


class ExportSimilarIn(BaseModel):
    name: str = Field("similar.parquet", max_length=70, description="File name inside the store's exports folder: letters, digits, "
                                                                     "'-' and '_', ending in .parquet, .csv or .jsonl")
    k: int = Field(12, ge=1, le=100, description="Similar items per product")
    where: List[str] = Field([], max_length=20, description="Which products may be recommended (filter syntax of search)")
    for_where: List[str] = Field([], max_length=20, description="Which products get a list (default: all)")
    same: List[str] = Field([], max_length=20, description="Columns a result must share with the product")
    cap: Optional[str] = Field(None, max_length=210, description="At most N results per value of a column: brand=2")
    keep_duplicates: bool = Field(False, description="Keep listings of the very same photo")
    full: bool = Field(False, description="Recompute every list instead of only what changed since the last export of this name")


def checked_name(name: str) -> str:
    if not EXPORT_NAME.fullmatch(name):  # fullmatch: "$" alone would let a trailing newline through
        raise ExportError(f"export name {name[:80]!r}: use letters, digits, '-' and '_' (at most 64), ending in .parquet, .csv or .jsonl")
    return name


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["exports"])
    engine = ctx.engine
    folder = engine.directory / "exports"

    @api.post("/exports/similar", status_code=202, summary="Start writing every product's similar items (incremental, resumable)",
              dependencies=[ctx.scopes.write])
    def export_similar(body: ExportSimilarIn) -> dict[str, Any]:
        name = checked_name(body.name)
        rules = SimilarRules.parse(body.k, body.where, body.for_where, body.same, body.cap, not body.keep_duplicates)
        engine.exports.check(rules)  # unknown columns: refused now, not in the job
        running = engine.jobs.latest.get("export")
        if running is not None and running.running:
            raise BusyError(f"an export ({running.label}) is already running; GET /export/status")

        def run() -> None:
            status = engine.jobs.latest["export"]
            report = engine.exports.run(folder / name, rules, incremental=not body.full, progress=status.progress)
            status.set_outcome(report.to_dict() | {"path": None, "download_url": f"/exports/{name}"})

        started = engine.jobs.start("export", run, label=name)
        return {**started, "download_url": f"/exports/{name}"}

    @api.get("/export/status", summary="The current (or last) export job", dependencies=[ctx.scopes.admin_view])
    def export_status() -> dict[str, Any]:
        job = engine.jobs.latest.get("export")
        return {"job": None if job is None else job.to_dict()}

    @api.get("/exports/{name}", summary="Download a finished export", dependencies=[ctx.scopes.admin_view],
             response_class=FileResponse, responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}})
    def download(name: str = Path(..., max_length=70)) -> FileResponse:
        path = folder / checked_name(name)
        if not path.is_file():
            raise HTTPException(404, f"no export named {name!r} yet")
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix[1:]], filename=name)

    return api
