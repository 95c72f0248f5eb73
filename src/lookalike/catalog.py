"""A store opened without its vectors: products, thumbnails, deletes and store facts.

``lookalike get``, ``delete`` and ``info`` need none of the in-memory index, the model or
the filter columns, so they open a :class:`Catalog`: one SQLite connection, in milliseconds
whatever the catalogue size.  :class:`~lookalike.engine.Engine` extends it with the serving
model and its index.  Deletes are tombstoned in the store, so a server serving the same store
catches up on its next request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Self

from .config import Settings, load_settings
from .images import ImageLimits, ImageSource, content_hash, decode, display_name, load_image, read_bytes, thumbnail_jpeg
from .models import Encoder
from .models.artefacts import ModelError, load_model, resolve_model_path
from .search.searcher import NotFoundError
from .security.urls import Downloader
from .storage import Product, ProductStore, ProductWrite
from .validation import validate_id, validate_metadata
from .vectors.codes import describe_codes
from .vectors.faiss_ivf import snapshot_info


class Catalog:
    """Products of one store, without vectors."""

    def __init__(self, directory: Path, settings: Settings, read_only: bool = False):
        self.directory, self.settings = directory, settings
        self.store = ProductStore(directory, read_only=read_only)
        self.limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels, settings.url_timeout, settings.allow_private_urls)
        # One download pool for requests served here (uploads by URL, search by URL); ingest
        # runs get their own, so neither can starve the other.
        self.downloader = Downloader(settings.max_image_bytes, settings.url_timeout, settings.allow_private_urls, settings.max_downloads,
                                     slot_wait=0.5)
        self._closed = False

    @classmethod
    def open(cls, path: str | Path | None = None, settings: Settings | None = None, *, read_only: bool = False, **overrides: Any) -> Catalog:
        settings = (settings or load_settings()).replace(**overrides)
        directory = Path(path or settings.store).expanduser()
        return cls(directory, settings.replace(store=str(directory)), read_only=read_only)

    def close(self, wait: float = 30.0) -> None:
        if self._closed:
            return
        self.downloader.close()
        self.store.close()
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def encoder_name(self, asked: str | None, default: str) -> str:
        """The encoder to serve: ``asked``, else the ``encoder`` setting, else the store's own, else ``default``."""
        recorded = self.store.get_meta("encoder")
        return asked or self.settings.encoder or (recorded.split("@")[0] if recorded else default)

    def read_image(self, image: ImageSource, draft_size: int | None = None) -> Any:
        """A request's image (path, URL, bytes or PIL image) within the limits, on this store's download pool."""
        return load_image(image, self.limits, draft_size=draft_size, downloader=self.downloader)

    # ---- reading --------------------------------------------------------------------------------
    def get(self, product_id: str) -> Product:
        product = self.store.get(str(product_id))
        if product is None:
            raise NotFoundError(str(product_id))
        return product

    def thumbnail(self, product_id: str) -> bytes:
        data = self.store.thumbnail(self.get(product_id).rowid)
        if data is None:
            raise NotFoundError(product_id)
        return data

    def store_facts(self) -> dict[str, Any]:
        """What the database alone says about the store (the engine adds what its loaded model and index know)."""
        return {"store": str(self.directory), "products": self.store.count(), "kept_vectors": self.store.kept_encoders(),
                "reindexing": None, "generation": self.store.generation, "store_bytes": self.store.size_bytes(),
                "read_only": self.store.read_only, "unreadable_rows": self.store.unreadable_rows}

    def stats(self) -> dict[str, Any]:
        """Store facts read from the database and model files, without loading vectors."""
        encoder = self.store.get_meta("encoder")
        model = self._trained_model(encoder)
        quantizer = None if model is None else model.quantizer
        return {**self.store_facts(), "vectors": self.store.count_vectors(), "encoder": encoder,
                "dim": int(self.store.get_meta("dim") or 0) or None, "quantized_bits": None if quantizer is None else quantizer.bits,
                "index": self._index_description(encoder, quantizer)}

    def _trained_model(self, identity: str | None) -> Any:
        if not identity:
            return None
        path = resolve_model_path(identity.split("@")[0], self.directory, allow_paths=False)
        try:
            return None if path is None else load_model(path)
        except ModelError:
            return None

    def _index_description(self, encoder: str | None, quantizer: Any) -> str:
        """What the engine will search with, as its backend's ``describe()`` would say, from files alone."""
        if quantizer is not None and self.settings.code_search != "off":
            return describe_codes(quantizer.bytes_per_code, self.settings.code_search)
        snapshot = snapshot_info(self.directory / "index", encoder or "")
        return str(snapshot["factory"]) if snapshot else "flat (exact)"

    # ---- writing ---------------------------------------------------------------------------------
    def delete_many(self, product_ids: Iterable[str]) -> int:
        """Delete products; unknown ids are ignored. Returns how many were deleted."""
        return len(self.store.delete(product_ids))

    def delete(self, product_id: str) -> None:
        if self.delete_many([product_id]) == 0:
            raise NotFoundError(product_id)

    def product_write(self, product_id: str, image: ImageSource | None, metadata: dict[str, Any] | None, encoder: Encoder) -> ProductWrite:
        """One product's write, validated before anything is read: a refused product changes nothing.
        A new product needs an image; ``metadata`` None keeps the stored metadata."""
        product_id = validate_id(product_id)
        if metadata is not None:
            metadata = validate_metadata(metadata, self.settings.metadata_limits())
        existing = self.store.get(product_id)
        if image is None and existing is None:
            raise ValueError(f"product {product_id!r} is new, so it needs an image")
        new_metadata = dict(existing.metadata if existing and metadata is None else metadata or {})
        if image is None:
            return ProductWrite(product_id, existing.image if existing else None, None, new_metadata)
        if isinstance(image, (bytes, str, Path)):
            data = read_bytes(image, self.limits, self.downloader)
            picture = decode(data, self.limits, draft_size=encoder.input_size, name=f"image of {product_id!r}")
            image_hash, reference = content_hash(data), (None if isinstance(image, bytes) else display_name(image))
        else:
            picture, image_hash, reference = load_image(image), None, None
        vectors, kept = encoder.embed_keeping(encoder.preprocess(picture)[None])
        return ProductWrite(product_id, reference, image_hash, new_metadata, vectors[0], thumbnail_jpeg(picture, self.settings.thumbnail_size),
                            {model: rows[0] for model, rows in kept.items()})

