"""lookalike: self-hosted visual search and tagging for fashion retail."""

__version__ = "0.1.0"

from .engine import Engine, NotFoundError  # noqa: E402
from .search import Hit  # noqa: E402

__all__ = ["Engine", "Hit", "NotFoundError", "__version__"]
