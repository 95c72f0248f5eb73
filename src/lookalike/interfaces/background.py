"""Background jobs that both front ends start (the HTTP API and the web pages): one module, so a
page does not reach into the API's routes, and both refuse a second run the same way."""

from __future__ import annotations

from typing import Any

from ..duplicates import DuplicateOptions, save_latest
from ..engine import Engine
from ..jobs import BusyError
from ..tagging.tagger import TaggerError

MAX_ID = 200  # characters of a product id accepted from a form or a request body


def start_duplicate_search(engine: Engine, options: DuplicateOptions) -> dict[str, Any]:
    """The duplicate search as a background job (one at a time), its report kept in STORE/duplicates."""
    engine.searcher.matching_rowids(options.where)  # a bad filter is refused now, not in the job
    running = engine.jobs.latest.get("duplicates")
    if running is not None and running.running:
        raise BusyError("a duplicate search is already running; GET /duplicates/status")

    def run() -> None:
        status = engine.jobs.latest["duplicates"]
        status.set_outcome(save_latest(engine.duplicates.find(options, progress=status.progress), engine.directory / "duplicates"))

    return dict(engine.jobs.start("duplicates", run, label="catalogue"))


def start_retrain(engine: Engine) -> dict[str, Any]:
    """Retraining as a background job (one at a time); the new set serves as soon as it is saved."""
    running = engine.jobs.latest.get("tag-train")
    if running is not None and running.running:
        raise BusyError("the taggers are already retraining; GET /jobs or the label review page shows progress")
    if engine.taggers is None:
        raise TaggerError("no trained taggers to retrain: run `lookalike tag train` first")

    def run() -> None:
        status = engine.jobs.latest["tag-train"]
        taggers = engine.tagging.retrain(progress=status.progress)
        status.set_outcome({"taggers": taggers.name, "columns": sorted(taggers.report.get("columns", {}))})

    return dict(engine.jobs.start("tag-train", run, label="retrain"))
