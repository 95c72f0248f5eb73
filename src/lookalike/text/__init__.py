"""Text search and "like this, but…": shoppers' words against photos and titles, and facet changes.

* :mod:`.encoder` — MiniLM sentence vectors (``lookalike[text]``) on ONNX Runtime, shared by the process;
* :mod:`.bridge` — :class:`TextImageBridge`: linear heads learned from the shop's (title, photo) pairs;
* :mod:`.vocabulary` — reading facet values and negations out of a query;
* :mod:`.facets` — a shop column and its predicted tag as one facet;
* :mod:`.gallery` — per product: its photo in the shared space and its title vector, kept in step;
* :mod:`.matrix` — those per-product vectors as 7-bit integers, every product scored in one integer product;
* :mod:`.service` — :class:`TextService`: text queries, hybrid queries and ``--change``.
"""

from .bridge import BridgeOptions, TextImageBridge
from .encoder import TextError, text_extra_installed
from .service import TextService

__all__ = ["BridgeOptions", "TextError", "TextImageBridge", "TextService", "text_extra_installed"]
