"""The merchandiser's workbench pages: duplicate listings (groups, evidence, keep one, not duplicates,
CSV), label review (the F1 view, contradicted labels with one-click fixes, the change log, retraining)
and blind judging of two configurations (one task per screen; the operator's leaderboards).

Pages render for an ``admin`` view; their forms change the catalogue through :class:`~.forms.FormGuard`
(a ``write`` key signed in, and the session's form token).  Every action answers with a redirect back
to the page (post/redirect/get), so a reload never repeats it, and works without the script.
"""

from __future__ import annotations

from typing import Any, Callable, List
from urllib.parse import quote

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ...duplicates import NOT_DUPLICATE, DuplicateOptions, load_latest
from ...engine import Engine
from ...judging import JudgingError
from ...security.http import SESSION_COOKIE
from ...security.keys import ApiKey
from ...tagging.review import MAX_VALUE
from ..background import MAX_ID, start_duplicate_search, start_retrain
from .forms import FormGuard

GROUPS_PER_PAGE = 20
Render = Callable[..., HTMLResponse]


def duplicates_router(engine: Engine, render: Render, administrator: Any, forms: FormGuard) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    writer = forms.requires("write")

    @router.get("/admin/duplicates", response_class=HTMLResponse, dependencies=[administrator])
    def duplicates_page(request: Request, page_number: int = Query(1, ge=1, le=100_000, alias="page")) -> HTMLResponse:
        report = load_latest(engine.directory / "duplicates")
        groups = open_groups(engine, report["groups"]) if report else []
        pages = max(1, -(-len(groups) // GROUPS_PER_PAGE))
        shown = groups[(page_number - 1) * GROUPS_PER_PAGE:page_number * GROUPS_PER_PAGE]
        job = engine.jobs.latest.get("duplicates")
        return render(request, "duplicates.html", report=report, groups=shown, total=len(groups), page_number=page_number, pages=pages,
                      job=None if job is None else job.to_dict(), form_token=forms.token(request))

    @router.post("/ui/duplicates/run")
    def run(key: ApiKey = writer) -> Response:
        start_duplicate_search(engine, DuplicateOptions())
        return RedirectResponse("/admin/duplicates", status_code=303)

    @router.post("/ui/duplicates/not-duplicates")
    def not_duplicates(ids: List[str] = Form(..., min_length=2, max_length=50), back: int = Form(1, ge=1, le=100_000),
                       key: ApiKey = writer) -> Response:
        engine.duplicates.mark_not_duplicate(_checked(ids), who=key.name)
        return RedirectResponse(f"/admin/duplicates?page={back}", status_code=303)

    @router.post("/ui/duplicates/keep")
    def keep(keep_id: str = Form(..., alias="keep", max_length=MAX_ID), ids: List[str] = Form(..., min_length=2, max_length=50),
             back: int = Form(1, ge=1, le=100_000), key: ApiKey = writer) -> Response:
        members = _checked(ids)
        if keep_id not in members:
            raise ValueError(f"{keep_id[:80]!r} is not in the group")
        engine.delete_many([m for m in members if m != keep_id])
        return RedirectResponse(f"/admin/duplicates?page={back}", status_code=303)

    return router


def labels_router(engine: Engine, render: Render, administrator: Any, forms: FormGuard) -> APIRouter:
    """The label review page: a column's F1 view, the labels the taggers contradict with one-click
    fixes, the change log and its CSV, and retraining."""
    router = APIRouter(include_in_schema=False)
    writer, admin = forms.requires("write"), forms.requires("admin")

    @router.get("/admin/labels", response_class=HTMLResponse, dependencies=[administrator])
    def labels_page(request: Request, column: str = Query("", max_length=200)) -> HTMLResponse:
        columns = engine.tagging.review.columns()
        chosen = column if column in columns else (columns[0] if columns else "")
        review = engine.tagging.review.column(chosen) if chosen else None
        job = engine.jobs.latest.get("tag-train")
        return render(request, "labels.html", columns=columns, column=chosen, review=review, changes=engine.tagging.review.changes(20),
                      taggers=engine.taggers, job=None if job is None else job.to_dict(), form_token=forms.token(request))

    @router.post("/ui/labels")
    def relabel(product_id: str = Form(..., alias="id", max_length=MAX_ID), column: str = Form(..., max_length=200),
                value: str = Form(..., max_length=MAX_VALUE), key: ApiKey = writer) -> Response:
        engine.tagging.review.relabel(product_id, column, value, who=key.name)
        return RedirectResponse(f"/admin/labels?column={quote(column, safe='')}#review", status_code=303)

    @router.post("/ui/labels/retrain")
    def retrain(column: str = Form("", max_length=200), key: ApiKey = admin) -> Response:
        start_retrain(engine)
        return RedirectResponse(f"/admin/labels?column={quote(column, safe='')}", status_code=303)

    return router


def judging_router(engine: Engine, render: Render, judge_access: Any, administrator: Any, forms: FormGuard) -> APIRouter:
    """The blind judging page (a phone is enough: one task per screen) and the operator's leaderboards."""
    router = APIRouter(include_in_schema=False)
    voter = forms.requires("judge")

    @router.get("/judge/{name}", response_class=HTMLResponse, dependencies=[judge_access])
    def judge_page(request: Request, name: str = Path(..., max_length=64)) -> HTMLResponse:
        round_ = engine.judging.get(name)
        key = forms.policy.keys.verify(request.cookies.get(SESSION_COOKIE) or "")
        judge = key.name if key is not None else "anonymous"  # votes are kept per judge: the signed-in key's name
        done = engine.judging.judged_by(name, judge)
        return render(request, "judge.html", round=round_, task=round_.task(judge, done), judged=len(done), total=len(round_.queries),
                      form_token=forms.token(request))

    @router.post("/ui/judge/{name}/vote")
    def vote(name: str = Path(..., max_length=64), query: str = Form(..., max_length=MAX_ID), shown: str = Form(..., max_length=10),
             choice: str = Form(..., max_length=10), key: ApiKey = voter) -> Response:
        try:
            positions = [int(p) for p in shown.split(",")]
        except ValueError:
            raise JudgingError(f"shown {shown!r}: configuration positions such as 1,0") from None
        engine.judging.vote(name, query, positions, choice, key.name)
        return RedirectResponse(f"/judge/{quote(name, safe='')}", status_code=303)

    @router.get("/admin/judging", response_class=HTMLResponse, dependencies=[administrator])
    def judging_page(request: Request) -> HTMLResponse:
        boards = [{"round": engine.judging.get(n), "board": engine.judging.standings(n)} for n in engine.judging.names()]
        return render(request, "judging.html", boards=boards)

    return router


def _checked(ids: list[str]) -> list[str]:
    for item in ids:
        if not item or len(item) > MAX_ID:
            raise ValueError(f"product id {item[:80]!r}: must be 1..{MAX_ID} characters")
    return ids


def open_groups(engine: Engine, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's groups as they stand now: deleted listings dropped, pairs people marked "not
    duplicates" removed, and groups left with fewer than two joined listings hidden."""
    refused = {(m["first"], m["second"]) for m in engine.store.pair_marks(NOT_DUPLICATE)}
    shown = []
    for group in groups:
        present = {m for m in group["members"] if engine.store.get(m) is not None}
        pairs = [p for p in group["pairs"] if p["first"] in present and p["second"] in present
                 and (min(p["first"], p["second"]), max(p["first"], p["second"])) not in refused]
        joined = {m for p in pairs for m in (p["first"], p["second"])}
        if len(joined) < 2:
            continue
        members = [m for m in group["members"] if m in joined]
        best = {m: max(p["probability"] for p in pairs if m in (p["first"], p["second"])) for m in members}
        identical = {m for p in pairs if p["identical"] for m in (p["first"], p["second"])}
        shown.append({"group": group["group"], "original": group["original"] if group["original"] in joined else members[0],
                      "members": [{"id": m, "probability": best[m], "identical": m in identical,
                                   "evidence": _evidence_text(pairs, m, group["original"])} for m in members]})
    return shown


def _evidence_text(pairs: list[dict[str, Any]], member: str, original: str) -> str:
    """A short human reading of why a listing is in the group, from its pair with the original (or any)."""
    pair = next((p for p in pairs if {p["first"], p["second"]} == {member, original}), None) or \
        next((p for p in pairs if member in (p["first"], p["second"])), None)
    if pair is None or member == original:
        return ""
    if pair["identical"]:
        return "identical photo"
    evidence = pair["evidence"]
    scale = float(evidence.get("scale", 1.0))
    crop = " · cropped" if abs(scale - 1.0) > 0.03 else ""
    return f"same photo re-processed{crop} · lightness diff {evidence.get('lightness_p90', 0):.1f} · colour diff {evidence.get('chroma_p90', 0):.1f}"
