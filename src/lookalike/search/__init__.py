"""Search: query objects, the searcher that answers them, metadata filters, and the serving index.

* :mod:`.queries` — :class:`ImageQuery`, :class:`ProductQuery` (with modifiers), :class:`VectorQuery`, :class:`TextQuery`;
* :mod:`.searcher` — :class:`Searcher`: one serving model's recipe from query to hits;
* :mod:`.exact` — :class:`ExactFirst`: a fine-tuned model's photo search puts the exact product first;
* :mod:`.filters` — ``where`` clauses and the in-memory filter columns;
* :mod:`.live` — :class:`ServingIndex`: the store's vectors and columns in memory, kept in step.
"""

from .exact import ExactFirst
from .filters import FilterError, parse_where
from .live import ServingIndex
from .queries import ImageQuery, ProductQuery, Query, TextQuery, VectorQuery
from .searcher import Hit, NotFoundError, Searcher

__all__ = ["ExactFirst", "FilterError", "Hit", "ImageQuery", "NotFoundError", "ProductQuery", "Query", "Searcher", "ServingIndex", "TextQuery", "VectorQuery",
           "parse_where"]
