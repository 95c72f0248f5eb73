"""The embedded store: one SQLite database per store directory (see :mod:`.store`)."""

from .store import Product, ProductStore, ProductWrite, ReadOnlyStoreError, StoreError, StoreFullError, canonical_json, shown_tags

__all__ = ["Product", "ProductStore", "ProductWrite", "ReadOnlyStoreError", "StoreError", "StoreFullError", "canonical_json", "shown_tags"]
