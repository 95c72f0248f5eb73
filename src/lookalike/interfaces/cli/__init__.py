"""The ``lookalike`` command line, one module per command group.

``common`` holds the root app and what every group shares; importing a group module registers
its commands on the root app.
"""

from . import catalogue, duplicates, evaluate, export, judging, keys, look, models, search, serve, tagging  # noqa: F401  (registers the commands)
from .common import app


def main() -> None:
    app()


__all__ = ["app", "main"]
