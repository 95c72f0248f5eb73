"""One progress protocol for every long job (ingest, re-index, training, tagging, evaluation).

A job calls ``progress(stage, done, total)`` as it goes: ``stage`` names what it is doing
("ingest", "re-embedding", "features"...), ``done`` counts finished items and ``total`` is the
expected count, or None when unknown.  The CLI draws bars from it, the server's job board keeps
the latest call as the job's status.
"""

from __future__ import annotations

from typing import Callable, Protocol


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int | None) -> None: ...


Log = Callable[[str], None]  # one line of narration for the user


def no_log(line: str) -> None:
    """The log sink for callers that do not listen."""


def fan_out(*sinks: Progress | None) -> Progress:
    """One progress callable that reports to several (a job's status and a CLI bar)."""
    live = [s for s in sinks if s is not None]

    def progress(stage: str, done: int, total: int | None) -> None:
        for sink in live:
            sink(stage, done, total)

    return progress
