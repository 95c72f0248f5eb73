"""lookalike: self-hosted visual search and tagging for fashion retail."""

__version__ = "0.1.0"

from .catalog import Catalog  # noqa: E402
from .engine import BusyError, Engine, NotFoundError  # noqa: E402
from .search import Hit, ImageQuery, ProductQuery, VectorQuery  # noqa: E402

__all__ = ["BusyError", "Catalog", "Engine", "Hit", "ImageQuery", "NotFoundError", "ProductQuery", "VectorQuery", "__version__"]
