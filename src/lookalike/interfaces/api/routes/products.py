"""Products: page through, read, thumbnail, insert or update, delete."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, File, Form, Path, Query, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ....images import is_url
from ....validation import validate_id
from ...errors import parse_metadata_field, read_upload
from ..context import ApiContext
from ..schemas import MAX_OFFSET, ProductOut, thumb_url


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["products"])
    engine, settings, scopes = ctx.engine, ctx.settings, ctx.scopes

    def product_out(product_id: str) -> ProductOut:
        p = engine.get(product_id)
        return ProductOut(id=p.id, image=p.image, metadata=p.metadata, tags=p.tags, updated_at=p.updated_at, thumbnail_url=thumb_url(p.id))  # type: ignore[arg-type]

    @api.get("/products", summary="Page through the catalogue", dependencies=[scopes.read])
    def products(offset: int = Query(0, ge=0, le=MAX_OFFSET), limit_: int = Query(50, ge=1, le=500, alias="limit")) -> dict[str, Any]:
        page = engine.store.page(offset, limit_)
        return {"total": engine.store.count(), "offset": offset,
                "products": [{"id": p.id, "metadata": p.metadata, "thumbnail_url": thumb_url(p.id)} for p in page]}

    @api.get("/products/{product_id:path}/thumbnail", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}},
             dependencies=[scopes.read])
    def thumbnail(product_id: str = Path(..., max_length=500)) -> Response:
        cache = "public, max-age=3600" if settings.public_read or not scopes.policy.keys_configured() else "private, max-age=3600"
        return Response(engine.thumbnail(product_id), media_type="image/jpeg", headers={"Cache-Control": cache})

    @api.get("/products/{product_id:path}", response_model=ProductOut, dependencies=[scopes.read])
    def get_product(product_id: str = Path(..., max_length=500)) -> ProductOut:
        return product_out(product_id)

    @api.put("/products/{product_id:path}", response_model=ProductOut, summary="Insert or update one product", dependencies=[scopes.write])
    async def put_product(
        product_id: str = Path(..., max_length=500),
        image: Optional[UploadFile] = File(None, description="New image (required for a new product unless image_url is given)"),
        image_url: Optional[str] = Form(None, max_length=4096, description="Public http(s) URL to fetch the image from"),
        metadata: Optional[str] = Form(None, max_length=settings.max_metadata_bytes * 2,
                                       description='JSON object of scalars, e.g. {"title": "Red dress", "price": 49.9}; omitted keeps the stored metadata'),
    ) -> ProductOut:
        product_id = validate_id(product_id)  # before reading the upload: a bad id is a 422 at once
        parsed = parse_metadata_field(metadata)
        source: bytes | str | None = None
        if image is not None and (image.filename or image.size):
            source = await read_upload(image, ctx.image_limit)
        elif image_url:
            if not is_url(image_url):
                raise ValueError("image_url must be an http(s) URL")
            source = image_url
        await run_in_threadpool(engine.upsert, product_id, source, parsed)
        return product_out(product_id)

    @api.delete("/products/{product_id:path}", dependencies=[scopes.write])
    def delete_product(product_id: str = Path(..., max_length=500)) -> dict[str, str]:
        engine.delete(product_id)
        return {"deleted": product_id}

    return api
