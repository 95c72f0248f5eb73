"""What every command group shares: the root app, global options, consoles, error handling, output helpers."""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ... import __version__
from ...catalog import Catalog
from ...common.progress import Progress as ProgressSink
from ...config import ConfigError, Settings, load_settings
from ...detection import DetectorError
from ...engine import BusyError, Engine, NotFoundError
from ...evaluation.suite import SuiteError
from ...images import ImageError
from ...ingest import DISTRIBUTOR_NAMES, DistributorError
from ...ingest.catalogue import CatalogueError
from ...models import EncoderError, ModelError
from ...search import Hit
from ...search.filters import FilterError
from ...search.look import LookUnavailable
from ...storage import StoreError
from ...tagging import HierarchyError, RulesError, TaggerError
from ...training.features import TrainingDataError
from ...vectors import BackendError

app = typer.Typer(help="lookalike: visual search and tagging for fashion catalogues.", no_args_is_help=True, add_completion=False)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

USER_ERRORS = (PermissionError, ModelError, DetectorError, LookUnavailable, TrainingDataError, TaggerError, RulesError, HierarchyError, SuiteError, CatalogueError, ConfigError,
               EncoderError, FilterError, ImageError, BackendError, StoreError, NotFoundError, BusyError, DistributorError, ValueError)

DISTRIBUTOR_HELP = "Where images are decoded and embedded: threads (default), processes, serial, or ray (pip install 'lookalike[ray]')."


def distributor_settings(distributor: Optional[str], workers: Optional[int], ray_address: Optional[str]) -> dict[str, Any]:
    """The --distributor, --workers and --ray-address options as settings overrides (None: as configured)."""
    if distributor is not None and distributor not in DISTRIBUTOR_NAMES:
        fail(f"unknown distributor {distributor!r}; choose one of {', '.join(DISTRIBUTOR_NAMES)}")
    return {"distributor": distributor, "distributor_workers": workers, "ray_address": ray_address}


class State:
    store: Optional[str] = None
    config: Optional[str] = None

    def settings(self, **overrides: Any) -> Settings:
        return load_settings(self.config, store=self.store, **overrides)

    def engine(self, **overrides: Any) -> Engine:
        """The store with its serving model and vectors loaded (search, ingest, training)."""
        return Engine.open(settings=self.settings(**overrides))

    def catalog(self) -> Catalog:
        """The store without vectors (get, delete, info): opens in milliseconds at any size."""
        return Catalog.open(settings=self.settings())


state = State()


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def guarded(fn: Callable[[], Any]) -> Any:
    """Run a command body, turning expected errors into one clear line and a non-zero exit."""
    try:
        return fn()
    except USER_ERRORS as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; everything committed so far is kept and the next ingest resumes", 130)


@app.callback()
def main_options(
    store: Optional[str] = typer.Option(None, "--store", "-s", help="Store directory (default: $LOOKALIKE_STORE or ./lookalike-store)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="TOML settings file (default: $LOOKALIKE_CONFIG or ./lookalike.toml)."),
) -> None:
    """Global options, before the command: lookalike --store DIR COMMAND ..."""
    state.store, state.config = store, config


def print_hits(hits: list[Hit], as_json: bool, show: list[str]) -> None:
    if as_json:
        out.print_json(json.dumps([h.to_dict() for h in hits]))
        return
    if not hits:
        out.print("no results")
        return
    asked = _asked_values(hits)
    table = Table("#", "id", "score", *show, *[f"{facet}={value}: how likely" for facet, value in asked])
    for rank, hit in enumerate(hits, 1):
        likely = (hit.evidence or {}).get("changed_probability") or {}
        table.add_row(str(rank), hit.id, f"{hit.score:.4f}", *[str(hit.metadata.get(c, "")) for c in show],
                      *[f"{likely[facet]:.2f}" if isinstance(likely.get(facet), (int, float)) else "" for facet, _ in asked])
    out.print(table)


def _asked_values(hits: list[Hit]) -> list[tuple[str, str]]:
    """"Like this, but…" results: the asked (facet, value) pairs, shown with how likely each
    result has them (1 for a label; less where the value is a guess from the photo)."""
    changed = (hits[0].evidence or {}).get("changed") if hits else None
    return [(str(f), str(v)) for f, v in changed.items()] if isinstance(changed, dict) else []


def default_columns(hits: list[Hit]) -> list[str]:
    preferred = ["title", "article_type", "category", "base_colour", "colour", "brand", "price"]
    present = {k for h in hits for k in h.metadata}
    return [c for c in preferred if c in present][:4]


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


LINE_EVERY = 10.0  # seconds between progress lines of one stage when stderr is not a terminal


class LineProgress:
    """Progress as plain lines on stderr, for a script, a log file or ``--json`` (stdout stays
    JSON): a stage's first update, then at most one line per stage every ``every`` seconds, and
    its last.  The part of rich's ``Progress`` the commands use (``add_task``, ``update``)."""

    def __init__(self, console: Console, every: float = LINE_EVERY, unit: str = ""):
        self.console, self.every, self.unit = console, every, unit
        self.tasks: list[dict[str, Any]] = []

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        for task in self.tasks:  # a stage that ended between lines still says where it stopped
            if task["printed"] != task["completed"]:
                self._line(task)

    def add_task(self, description: str, total: int | None = None, **fields: Any) -> int:
        self.tasks.append({"description": description, "total": total, "completed": 0, "started": time.monotonic(),
                           "last": 0.0, "printed": None})
        return len(self.tasks) - 1

    def update(self, task_id: int, completed: int | None = None, total: int | None = None, description: str | None = None, **fields: Any) -> None:
        task = self.tasks[task_id]
        task["completed"] = task["completed"] if completed is None else completed
        task["total"] = task["total"] if total is None else total
        task["description"] = description or task["description"]
        finished = task["total"] is not None and task["completed"] >= task["total"]
        due = task["printed"] is None or finished or time.monotonic() - task["last"] >= self.every
        if due and task["printed"] != task["completed"]:
            self._line(task)

    def _line(self, task: dict[str, Any]) -> None:
        elapsed = time.monotonic() - task["started"]
        done, total = task["completed"], task["total"]
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{task['description']}: {done}" + (f"/{total} ({100 * done / total:.0f} %)" if total else "")]
        parts.append(f"{elapsed:.0f} s")
        if rate > 0 and (task["printed"] is not None or elapsed >= 1.0):  # a stage's first split second says nothing of its rate
            parts.append(f"{rate:.1f} {self.unit or 'items'}/s")
            if total and done < total:
                parts.append(f"~{(total - done) / rate:.0f} s left")
        self.console.print(", ".join(parts), highlight=False, markup=False, soft_wrap=True)
        task["last"], task["printed"] = time.monotonic(), done


def progress_bar(quiet: bool = False, unit: str = "") -> Any:
    """Where a long command reports progress, on stderr: a bar on a terminal, plain lines
    otherwise (a script, a log, ``--json``: long runs never go silent), nothing with ``--quiet``."""
    if not quiet and not err.is_terminal:
        return LineProgress(err, unit=unit)
    columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn("{task.fields[rate]} " + unit + "/s"))
    return Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=err, disable=quiet)


def say(message: str) -> None:
    """A training or tagging run's log line, on stderr (stdout holds results, JSON with --json)."""
    err.print(message, highlight=False, markup=False)


def bar_progress(bar: Any) -> ProgressSink:
    """A progress callable (:mod:`lookalike.common.progress`) drawing one bar per stage."""
    tasks: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int | None) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    return progress
