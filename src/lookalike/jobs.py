"""Background jobs of one store (ingest, re-index, tagging; later exports), one status shape.

Jobs that write take the store's job slot, one at a time: two ingests interleaving batches, or
an ingest during a re-index switch, would race on what "current" means.  A job's status is
``{"kind", "running", "stage", "done", "total", "outcome", "error", "started_at", "finished_at"}``;
the server's status routes and the admin page read it, the CLI draws its progress bars from
the same ``progress(stage, done, total)`` calls.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

log = logging.getLogger("lookalike.jobs")


class BusyError(RuntimeError):
    """Another job is already running on this store."""


@dataclass
class JobStatus:
    kind: str
    label: str | None = None  # what the job works on (a catalogue, a model)
    running: bool = True
    stage: str | None = None
    done: int = 0
    total: int | None = None
    outcome: Any = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def progress(self, stage: str, done: int, total: int | None) -> None:
        self.stage, self.done, self.total = stage, done, total

    def set_outcome(self, outcome: Any) -> None:
        self.outcome = outcome

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JobBoard:
    def __init__(self) -> None:
        self._slot = threading.Lock()
        self.latest: dict[str, JobStatus] = {}
        self._pending: dict[str, JobStatus] = {}  # started in the background, slot not taken yet

    def running(self) -> bool:
        return self._slot.locked()

    @contextmanager
    def exclusive(self, kind: str, label: str | None = None) -> Iterator[JobStatus]:
        """Hold the store's job slot for one job (BusyError when taken); its status is recorded under ``kind``."""
        if not self._slot.acquire(blocking=False):
            raise BusyError(f"an ingest or re-index is already running on this store (cannot start {kind})")
        status = self._pending.pop(kind, None) or JobStatus(kind)
        status.label = label or status.label
        self.latest[kind] = status
        try:
            yield status
        except BaseException as exc:
            status.error = str(exc) or type(exc).__name__
            raise
        finally:
            status.running, status.finished_at = False, time.time()
            self._slot.release()

    def start(self, kind: str, run: Callable[[], Any], cleanup: Callable[[], None] | None = None, label: str | None = None) -> dict[str, Any]:
        """Run a job on a background thread; ``run`` takes the slot itself (through the engine
        call it makes), so the check here only answers "busy" early for the common case."""
        if self.running():
            if cleanup is not None:
                cleanup()
            raise BusyError(f"an ingest or re-index is already running on this store (cannot start {kind})")
        status = self._pending[kind] = self.latest[kind] = JobStatus(kind, label)  # "running" from the first status call

        def body() -> None:
            try:
                run()
            except Exception as exc:  # recorded in the job's status; the server keeps serving
                status.error = status.error or str(exc) or type(exc).__name__
                log.exception("background %s failed", kind)
            finally:
                self._pending.pop(kind, None)
                status.running = False
                if cleanup is not None:
                    cleanup()

        threading.Thread(target=body, name=f"lookalike-{kind}", daemon=True).start()
        return {"started": True, "status_url": f"/{kind}/status"}

    def ingest_status(self, recent_runs: list[dict[str, Any]]) -> dict[str, Any]:
        """The shape of ``GET /ingest/status``: whether a job runs, the current (or last) ingest's
        live report with its total, and the store's recent runs."""
        job = self.latest.get("ingest")
        current = None if job is None or job.outcome is None else {**job.outcome.to_dict(), "total": job.total}
        return {"running": self.running(), "current": current, "recent_runs": recent_runs}

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job holds the slot (closing a store); False on timeout."""
        if self._slot.acquire(timeout=timeout):
            self._slot.release()
            return True
        return False
