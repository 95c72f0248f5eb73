"""The web app for shoppers and merchandisers, served by ``lookalike serve`` next to the API.

Server-rendered Jinja2 pages; one small script (``static/app.js``) swaps HTML fragments
rendered by the same templates, so facets and "more like this" update results without a
page reload and there is no front-end build step.  Every asset is served by the app.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from ...engine import Engine, NotFoundError
from ...images import ImageError
from ...search import Hit, ProductQuery
from ...search.filters import FilterError
from ...search.look import Look
from ...search.queries import MAX_TEXT
from ...security.http import SESSION_COOKIE, AccessPolicy, AuthError
from ..errors import IMAGE_STATUS, read_upload
from .forms import FormGuard
from .workbench import duplicates_router, judging_router, labels_router

HERE = Path(__file__).parent
KEY_COLUMNS = ("article_type", "category", "base_colour", "colour", "color", "brand", "gender", "price")
TITLE_COLUMNS = ("title", "name", "product_name")
IMAGE_ERROR_TEXT = {
    "unsupported": "That file is not a photo we can read. Use a JPEG, PNG, WebP, GIF, BMP or TIFF image.",
    "too_large": "That photo is too large.",
    "too_many_pixels": "That photo has too many pixels.",
    "empty": "That file is empty.",
    "corrupt": "That photo is damaged or incomplete; try another one.",
}


SWATCH_FACETS = ("base_colour", "colour", "color")  # "same style in: ● ● ●" on a product page, the first the catalogue has
MAX_SWATCHES = 8
def product_title(product_id: str, metadata: dict[str, Any]) -> str:
    for column in TITLE_COLUMNS:
        if metadata.get(column):
            return str(metadata[column])
    return str(metadata.get("article_type") or metadata.get("category") or product_id)


def key_facts(metadata: dict[str, Any], limit: int = 3) -> list[tuple[str, str]]:
    return [(c, str(metadata[c])) for c in KEY_COLUMNS if metadata.get(c) not in (None, "")][:limit]


def card(product_id: str, metadata: dict[str, Any], score: float | None = None, tags: dict[str, dict[str, Any]] | None = None,
         evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    quoted = quote(product_id, safe="")
    return {"id": product_id, "title": product_title(product_id, metadata), "facts": key_facts(metadata), "score": score,
            "tags": tag_chips(tags, limit=3), "thumb": f"/products/{quoted}/thumbnail", "url": f"/product/{quoted}",
            "guesses": changed_guesses(evidence, tags)}


def changed_guesses(evidence: dict[str, Any] | None, tags: dict[str, dict[str, Any]] | None) -> list[dict[str, Any]]:
    """"Like this, but…" results that carry the asked value only as a guess (the tagger's runner-up,
    or its likeliest value below the threshold, which shows no tag): the value and how likely it is,
    so a card tagged "blue" under "…but red" says why it is there (a label or a shown tag of the
    value is the card's own fact or tag)."""
    if not evidence or not isinstance(evidence.get("changed_probability"), dict):
        return []
    changed, tags = evidence.get("changed") or {}, tags or {}
    guesses = []
    for facet, probability in evidence["changed_probability"].items():
        value = str(changed.get(facet, ""))
        own = str((tags.get(facet) or {}).get("value", "")).lower()
        if isinstance(probability, (int, float)) and probability < 1.0 and own != value.lower():
            guesses.append({"facet": facet, "value": value, "probability": float(probability)})
    return guesses


def tag_chips(tags: dict[str, dict[str, Any]] | None, limit: int | None = None) -> list[dict[str, Any]]:
    """Predicted tags, most confident first, for display apart from the shop's own metadata."""
    chips = [{"name": name, "value": t["value"], "confidence": t["confidence"], "source": t["source"]}
             for name, t in (tags or {}).items() if t.get("value") is not None]
    chips.sort(key=lambda c: -c["confidence"])
    return chips[:limit] if limit else chips


class LoginRequired(Exception):
    """A page needs a key the browser has not given: show the sign-in form."""

    def __init__(self, target: str, reason: str):
        super().__init__(reason)
        self.target, self.reason = target, reason


def _page_access(policy: AccessPolicy, scope: str) -> Any:
    def dependency(request: Request) -> None:
        try:
            policy.authorize(request.cookies.get(SESSION_COOKIE), scope, view=True)  # pages change nothing
        except AuthError as exc:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise LoginRequired(target, str(exc)) from exc

    return Depends(dependency)


def _local_target(target: str) -> str:
    """Only same-site paths are followed after sign-in (no open redirect)."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


def mount_web(app: FastAPI, engine: Engine, policy: AccessPolicy) -> None:
    """Add the pages and their static files to the API app."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["max_bytes"] = engine.settings.max_image_bytes
    reader, administrator = _page_access(policy, "read"), _page_access(policy, "admin")
    router = APIRouter(include_in_schema=False)

    async def login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        if request.url.path.startswith("/ui/"):  # a fragment fetched by app.js: say it, do not redirect
            return templates.TemplateResponse(request, "_error.html", {"message": "Sign in first.", "products": 0}, status_code=401)
        return RedirectResponse(f"/login?next={quote(exc.target, safe='')}", status_code=303)

    app.add_exception_handler(LoginRequired, login_required)

    @router.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next_: str = Query("/", alias="next", max_length=2000)) -> HTMLResponse:
        reason = "This page needs an API key." if policy.keys_configured() else "No API keys are configured on this server yet."
        return templates.TemplateResponse(request, "login.html", {"next": _local_target(next_), "reason": reason, "products": 0})

    @router.post("/login", response_class=HTMLResponse)
    def login(request: Request, key: str = Form(..., max_length=200), next_: str = Form("/", alias="next", max_length=2000)) -> Response:
        if policy.keys.verify(key) is None:
            return templates.TemplateResponse(request, "login.html", {"next": _local_target(next_), "reason": "Sign in with an API key.",
                                                                      "error": "That key is unknown or revoked.", "products": 0}, status_code=401)
        response = RedirectResponse(_local_target(next_), status_code=303)
        response.set_cookie(SESSION_COOKIE, key, max_age=8 * 3600, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
        return response

    @router.get("/logout")
    def logout() -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"products": len(engine), **context}, status_code=status_code)

    def results(request: Request, hits: list[Hit], started: float, heading: str) -> HTMLResponse:
        cards = [card(h.id, h.metadata, h.score, h.tags) for h in hits]
        return page(request, "_results.html", cards=cards, heading=heading, took_ms=(time.perf_counter() - started) * 1000, read_as=read_as(hits))

    def look_page(request: Request, found: Look, started: float) -> HTMLResponse:
        garments = [{**g.region.to_dict(outline=True), "cards": [card(h.id, h.metadata, h.score, h.tags) for h in g.hits]}
                    for g in found.garments]
        return page(request, "_look.html", garments=garments, width=found.width, height=found.height,
                    took_ms=(time.perf_counter() - started) * 1000)

    def error(request: Request, message: str, status: int) -> HTMLResponse:
        return page(request, "_error.html", status_code=status, message=message)

    @router.get("/", response_class=HTMLResponse, dependencies=[reader])
    def search_page(request: Request, q: str = Query("", max_length=MAX_TEXT), where: list[str] = Query([], max_length=50)) -> HTMLResponse:
        found = None
        if q.strip():  # words sent by the form without script: the results come with the page
            started = time.perf_counter()
            try:
                found = bytes(results(request, engine.search_text(q, k=24, where=where), started, f"Results for “{q}”").body).decode()
            except ValueError as exc:  # a filter or words nothing can read: said on the page
                found = bytes(error(request, str(exc), 422).body).decode()
        return page(request, "search.html", facets=engine.facets(), q=q, found=found)

    @router.get("/ui/search/text", response_class=HTMLResponse, dependencies=[reader])
    def ui_search_text(request: Request, q: str = Query(..., max_length=MAX_TEXT), k: int = Query(24, ge=1, le=200),
                       where: list[str] = Query([], max_length=50)) -> HTMLResponse:
        started = time.perf_counter()
        try:
            hits = engine.search_text(q, k=k, where=where)
        except ValueError as exc:
            return error(request, str(exc), 422)
        return results(request, hits, started, f"Results for “{q}”")

    @router.post("/ui/search", response_class=HTMLResponse, dependencies=[reader])
    async def ui_search(request: Request, image: UploadFile = File(...), text: str = Form("", max_length=MAX_TEXT), k: int = Query(24, ge=1, le=200),
                        where: list[str] = Query([], max_length=50),
                        whole: bool = Query(False, description="search the photo as sent (a crop): no garment finding")) -> HTMLResponse:
        started = time.perf_counter()
        if len(engine) == 0:
            return error(request, "The catalogue is empty: ingest products first (lookalike ingest products.csv).", 409)
        try:
            data = await read_upload(image, engine.settings.max_image_bytes)
            if text.strip():  # "this, but …": the photo with words
                hits = await run_in_threadpool(lambda: engine.search_text(text, k=k, where=where, image=data))
                return results(request, hits, started, f"Like your photo: “{text}”")
            if not whole and engine.looks.finder() is not None:
                found = await run_in_threadpool(lambda: engine.look(data, k, where, person_only=True))
                if found.garments:
                    return look_page(request, found, started)
            hits = await run_in_threadpool(engine.search, data, k, where)
        except ImageError as exc:
            limit_mb = engine.settings.max_image_bytes / 1024 / 1024
            text = IMAGE_ERROR_TEXT.get(exc.kind, exc.message)
            if exc.kind == "too_large":
                text += f" The limit is {limit_mb:.0f} MB."
            return error(request, text, IMAGE_STATUS.get(exc.kind, 400))
        except ValueError as exc:  # a bad filter, or words nothing can read
            return error(request, str(exc), 422)
        return results(request, hits, started, "Results")

    @router.get("/ui/similar/{product_id:path}", response_class=HTMLResponse, dependencies=[reader])
    def ui_similar(request: Request, product_id: str, k: int = Query(24, ge=1, le=200), where: list[str] = Query([], max_length=50)) -> HTMLResponse:
        started = time.perf_counter()
        try:
            hits = engine.similar(product_id, k=k, where=where)
            title = product_title(product_id, engine.get(product_id).metadata)
        except NotFoundError as exc:
            return error(request, str(exc), 404)
        except FilterError as exc:
            return error(request, str(exc), 422)
        return results(request, hits, started, f"More like “{title}”")

    @router.get("/product/{product_id:path}", response_class=HTMLResponse, dependencies=[reader])
    def product_page(request: Request, product_id: str, exclude: Optional[str] = Query(None, max_length=200, description="hide similar items sharing this column's value"),
                     change: Optional[str] = Query(None, max_length=400, description="facet=value: like this, but with this value")) -> HTMLResponse:
        try:
            product = engine.get(product_id)
        except NotFoundError as exc:
            return page(request, "message.html", status_code=404, title="Not found", message=str(exc))
        problem = None
        try:
            hits = engine.query(ProductQuery(product_id, k=12, hide_sharing=(exclude,) if exclude else (), change=(change,) if change else ()))
        except FilterError as exc:  # a swatch link for a value that no longer exists, or a hand-made one
            problem, hits = str(exc), []
        similar = [card(h.id, h.metadata, h.score, h.tags, h.evidence) for h in hits]
        columns = [f["name"] for f in engine.facets() if f["kind"] == "values"]
        facet, swatches = _swatches(engine, product_id)
        return page(request, "product.html", status_code=422 if problem else 200, product=card(product.id, product.metadata),
                    metadata=sorted(product.metadata.items()), tags=tag_chips(product.tags), similar=similar, exclude=exclude,
                    exclude_columns=columns, source=product.image, swatch_facet=facet, swatches=swatches, change=change, problem=problem)

    @router.get("/browse", response_class=HTMLResponse, dependencies=[reader])
    def browse_page(request: Request, page_number: int = Query(1, ge=1, le=1_000_000, alias="page"), where: list[str] = Query([], max_length=50), fragment: bool = False) -> HTMLResponse:
        per_page = 48
        try:
            total, products = engine.browse(where, (page_number - 1) * per_page, per_page)
        except FilterError as exc:
            return error(request, str(exc), 422)
        pages = max(1, -(-total // per_page))
        context: dict[str, Any] = {"cards": [card(p.id, p.metadata, tags=p.tags) for p in products], "total": total, "page": page_number, "pages": pages}
        if fragment:
            return page(request, "_grid.html", **context)
        return page(request, "browse.html", facets=engine.facets(), **context)

    @router.get("/admin", response_class=HTMLResponse, dependencies=[administrator])
    def admin_page(request: Request) -> HTMLResponse:
        return page(request, "admin.html", **_admin_status(engine))

    @router.get("/ui/admin/status", response_class=HTMLResponse, dependencies=[administrator])
    def admin_status(request: Request) -> HTMLResponse:
        return page(request, "_status.html", **_admin_status(engine))

    app.include_router(router)
    forms = FormGuard(policy)
    app.include_router(duplicates_router(engine, page, administrator, forms))
    app.include_router(labels_router(engine, page, administrator, forms))
    app.include_router(judging_router(engine, page, _page_access(policy, "judge"), administrator, forms))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")


def read_as(hits: list[Hit]) -> str:
    """How a text query was read ("category=Dress, colour=red"), from the first hit's evidence."""
    query = (hits[0].evidence or {}).get("query") if hits else None
    if not query:
        return ""
    wanted = ", ".join(f"{f.replace('_', ' ')}: {v}" for f, v in query["wanted"].items())
    unwanted = ", ".join(f"not {v}" for v in query["negative"])
    return "; ".join(p for p in (wanted, unwanted) if p)


def _swatches(engine: Engine, product_id: str) -> tuple[str | None, list[dict[str, Any]]]:
    """The product's colour facet and the other values it takes among products like it."""
    names = set(engine.text.facet_names())
    facet = next((f for f in SWATCH_FACETS if f in names), None)
    if facet is None:
        return None, []
    values = [v for v in engine.text.change_values(product_id, facet) if not v["current"]][:MAX_SWATCHES]
    # the dot's colour comes from app.css by name (an inline style would break the Content-Security-Policy)
    return facet, [{**v, "colour": "-".join(v["value"].lower().split()), "href": "?change=" + quote(f"{facet}={v['value']}", safe="")}
                   for v in values]


def _admin_status(engine: Engine) -> dict[str, Any]:
    status = engine.ingest_status()
    runs = status["recent_runs"]
    return {"stats": engine.stats(), "status": status, "runs": runs, "skipped": engine.store.skipped(runs[0]["run_id"], 500) if runs else []}
