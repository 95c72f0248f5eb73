"""lookalike: self-hosted visual search and tagging for fashion retail."""

__version__ = "0.1.0"

from .catalog import Catalog
from .engine import BusyError, Engine, NotFoundError
from .search import Hit, ImageQuery, ProductQuery, TextQuery, VectorQuery

__all__ = ["BusyError", "Catalog", "Engine", "Hit", "ImageQuery", "NotFoundError", "ProductQuery", "TextQuery", "VectorQuery", "__version__"]
