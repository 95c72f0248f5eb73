"""Liveness and store statistics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from .... import __version__
from ..context import ApiContext


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["service"])
    engine = ctx.engine

    @api.get("/health", summary="Liveness (no key needed)")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "products": await run_in_threadpool(len, engine), "version": __version__}

    @api.get("/stats", dependencies=[ctx.scopes.admin_view])
    def stats() -> dict[str, Any]:
        return engine.stats()

    return api
