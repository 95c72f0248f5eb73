"""Judging rounds: create one (admin), fetch tasks and vote (a judge's write key), the leaderboard and the votes."""

from __future__ import annotations

from typing import Any, List, Optional

from fastapi import APIRouter, Depends, Path
from fastapi.responses import Response
from pydantic import BaseModel, Field

from ....judging import JudgeConfig, JudgingError, votes_csv
from ....security.keys import ApiKey
from ..access import requires
from ..context import ApiContext


class RoundIn(BaseModel):
    name: str = Field(..., min_length=1, max_length=64, description="Letters, digits, '-' and '_'")
    configs: List[dict] = Field(..., min_length=2, max_length=2, description="Two configurations: {name, model, index, nprobe, "
                                                                             "rerank_factor, code_search}")
    queries: int = Field(40, ge=1, le=500, description="Catalogue products used as queries (a seeded sample)")
    k: int = Field(8, ge=1, le=24, description="Results shown per configuration")
    mode: str = Field("pair", pattern="^(pair|single|rating)$", description="pair: left/right/same; single: dope or nope; rating: 1-5")
    where: List[str] = Field([], max_length=20, description="Queries and results only among products matching these filters")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class VoteIn(BaseModel):
    query: str = Field(..., min_length=1, max_length=200)
    shown: List[int] = Field(..., min_length=1, max_length=2, description="Configuration positions in the order the task showed them")
    choice: str = Field(..., min_length=1, max_length=10)


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["judging"])
    rounds = ctx.engine.judging
    writer = requires(ctx.scopes.policy, "judge")  # a judge key votes; a write or admin key may too
    round_name = Path(..., min_length=1, max_length=64)

    @api.post("/judging/rounds", status_code=201, summary="Create a judging round of two configurations", dependencies=[ctx.scopes.admin])
    def create(body: RoundIn) -> dict[str, Any]:
        configs = [JudgeConfig.parse(c) for c in body.configs]
        created = rounds.create(body.name, configs, body.queries, body.k, body.mode, body.where or None, body.seed)
        return {"round": created.name, "mode": created.mode, "queries": len(created.queries), "judge_url": f"/judge/{created.name}"}

    @api.get("/judging/rounds", summary="The rounds of this store", dependencies=[ctx.scopes.admin_view])
    def listing() -> dict[str, Any]:
        return {"rounds": [{"name": n, "judge_url": f"/judge/{n}"} for n in rounds.names()]}

    @api.get("/judging/rounds/{name}/task", summary="The next task for the calling judge (blind: no configuration names)")
    def task(name: str = round_name, key: Optional[ApiKey] = Depends(writer)) -> dict[str, Any]:
        judge = key.name if key else "anonymous"
        return {"task": rounds.get(name).task(judge, rounds.judged_by(name, judge))}

    @api.post("/judging/rounds/{name}/votes", summary="Vote on a task (once per query and judge)")
    def vote(body: VoteIn, name: str = round_name, key: Optional[ApiKey] = Depends(writer)) -> dict[str, Any]:
        return rounds.vote(name, body.query, body.shown, body.choice, key.name if key else "anonymous")

    @api.get("/judging/rounds/{name}/leaderboard", summary="Preference or approval with 95 % intervals, and votes still needed",
             dependencies=[ctx.scopes.admin_view])
    def standings(name: str = round_name) -> dict[str, Any]:
        return rounds.standings(name)

    @api.get("/judging/rounds/{name}/votes", summary="Every vote, with the configurations in the order shown", dependencies=[ctx.scopes.admin_view])
    def votes(name: str = round_name) -> dict[str, Any]:
        return {"votes": rounds.votes(name)}

    @api.get("/judging/rounds/{name}/votes.csv", summary="Every vote as CSV (an evaluation set of people's preferences)",
             dependencies=[ctx.scopes.admin_view], response_class=Response, responses={200: {"content": {"text/csv": {}}}})
    def votes_file(name: str = round_name) -> Response:
        return Response(votes_csv(rounds.votes(name)), media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}-votes.csv"'})

    return api


__all__ = ["JudgingError", "router", "votes_csv"]
