"""Distributors: where the map stage runs.  Swap one for another; the vectors are the same.

* :class:`SerialDistributor` — on the calling thread (debugging, tiny catalogues);
* :class:`ThreadDistributor` — thread pools, the default: decoding and ONNX Runtime release
  the GIL, so one worker embeds while the others fetch and decode (each counted in
  :data:`~lookalike.common.runtime.BATCH_WORKERS`, so their model runs take one thread each).  Local and URL partitions
  run on separate lanes; each lane returns results in input order (so rowids are reproducible),
  and a slow image host holds back only other URL rows;
* :class:`ProcessDistributor` — a process pool: the proof that the mapper crosses a process
  boundary, and the shape a cluster distributor follows: ship the picklable
  :class:`~lookalike.ingest.mapper.MapperFactory` once per worker, then partitions;
* :class:`~lookalike.ingest.ray_distributor.RayDistributor` — Ray actors on a local Ray or a
  cluster (the ``ray`` extra), imported only when chosen.

A distributor's ``map`` yields mapped partitions, and may yield ``None`` while nothing is ready,
so the caller can check for cancellation.  It runs any stage of that shape: a picklable factory
that builds a :class:`Worker` once per thread or process, and partitions that say their lane
(ingest's :class:`~lookalike.ingest.mapper.MapperFactory`, re-index's ``ReembedderFactory``).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

from ..common.runtime import BATCH_WORKERS
from .reader import LOCAL, REMOTE


class DistributorError(RuntimeError):
    """A distributor cannot start as configured (its extra is not installed, its cluster cannot be reached)."""


class Laned(Protocol):
    """A partition: ``lane`` is local or remote (URL rows wait on other people's servers)."""

    lane: str


P = TypeVar("P", bound=Laned)


class Worker(Protocol[P]):
    """Maps partitions for one thread or process; closed when the distributor is done."""

    def __call__(self, partition: P, /) -> P: ...

    def close(self) -> None: ...


WorkerFactory = Callable[[], Worker[Any]]  # picklable for process (and cluster) distributors


class Distributor(Protocol):
    def map(self, factory: WorkerFactory, partitions: Iterable[P]) -> Iterator[P | None]: ...


class SerialDistributor:
    def map(self, factory: WorkerFactory, partitions: Iterable[P]) -> Iterator[P | None]:
        worker = factory()
        try:
            for partition in partitions:
                yield worker(partition)
        finally:
            worker.close()


class _Lanes:
    """Feeds partitions to one pool per lane, keeping a bounded number in flight, and yields
    each lane's results in input order without making the lanes wait for each other."""

    HEARTBEAT = 0.5  # seconds without a result before yielding None

    def __init__(self, pools: dict[str, Executor], in_flight: dict[str, int], backlog: int = 10_000):
        self.pools, self.in_flight, self.backlog = pools, in_flight, backlog

    def run(self, task: Callable[[P], P], partitions: Iterable[P]) -> Iterator[P | None]:
        running: dict[str, deque[Future[P]]] = {lane: deque() for lane in self.pools}
        waiting: dict[str, deque[P]] = {lane: deque() for lane in self.pools}
        source = iter(partitions)
        exhausted = False
        while True:
            # Read ahead until the local lane is full (URL partitions queue without holding pixels).
            while not exhausted and len(running[LOCAL]) + len(waiting[LOCAL]) < self.in_flight[LOCAL] \
                    and sum(len(w) for w in waiting.values()) < self.backlog:
                partition = next(source, None)
                if partition is None:
                    exhausted = True
                    break
                waiting[partition.lane if partition.lane in self.pools else LOCAL].append(partition)
            for lane, pool in self.pools.items():
                while waiting[lane] and len(running[lane]) < self.in_flight[lane]:
                    running[lane].append(pool.submit(task, waiting[lane].popleft()))
            heads = [running[lane][0] for lane in self.pools if running[lane]]
            if not heads:
                if exhausted and not any(waiting.values()):
                    return
                continue
            done, _ = wait(heads, timeout=self.HEARTBEAT, return_when=FIRST_COMPLETED)
            if not done:
                yield None
            for lane in self.pools:
                while running[lane] and running[lane][0].done():
                    yield running[lane].popleft().result()


class ThreadDistributor:
    """``workers`` threads for local partitions, ``remote_workers`` for URL partitions; each
    thread builds its own mapper once."""

    def __init__(self, workers: int = 3, remote_workers: int = 4):
        self.workers, self.remote_workers = max(1, workers), max(1, remote_workers)

    def map(self, factory: WorkerFactory, partitions: Iterable[P]) -> Iterator[P | None]:
        local_state = threading.local()
        mappers: list[Worker[Any]] = []
        lock = threading.Lock()
        marks = contextlib.ExitStack()  # each mapper counts as a batch worker until the map ends

        def task(partition: P) -> P:
            mapper = getattr(local_state, "mapper", None)
            if mapper is None:
                mapper = local_state.mapper = factory()
                with lock:
                    mappers.append(mapper)
                    marks.enter_context(BATCH_WORKERS.mark())
            return mapper(partition)

        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="lookalike-map") as local, \
                    ThreadPoolExecutor(self.remote_workers, thread_name_prefix="lookalike-fetch") as remote:
                lanes = _Lanes({LOCAL: local, REMOTE: remote}, {LOCAL: 2 * self.workers, REMOTE: self.remote_workers})
                yield from lanes.run(task, partitions)
        finally:
            for mapper in mappers:
                mapper.close()
            marks.close()


_worker_mapper: Worker[Any] | None = None
_pool_marks = contextlib.ExitStack()  # held for the worker process's life


def _init_worker(factory: WorkerFactory, pool_size: int) -> None:
    """Build this process's mapper; every process of the pool counts as a batch worker in each,
    so its batches run on one thread each as a thread pool's mappers' do (see ``BatchWorkers``)."""
    global _worker_mapper
    for _ in range(pool_size):
        _pool_marks.enter_context(BATCH_WORKERS.mark())
    _worker_mapper = factory()


def _map_in_worker(partition: P) -> P:
    assert _worker_mapper is not None, "worker not initialised"
    return _worker_mapper(partition)


class ProcessDistributor:
    """A pool of ``workers`` processes, each with its own mapper (and its own model session),
    built from the pickled factory by the pool's initializer."""

    def __init__(self, workers: int = 2):
        self.workers = max(1, workers)

    def map(self, factory: WorkerFactory, partitions: Iterable[P]) -> Iterator[P | None]:
        with ProcessPoolExecutor(self.workers, initializer=_init_worker, initargs=(factory, self.workers)) as pool:
            lanes = _Lanes({LOCAL: pool, REMOTE: pool}, {LOCAL: 2 * self.workers, REMOTE: self.workers})
            yield from lanes.run(_map_in_worker, partitions)


DISTRIBUTOR_NAMES = ("threads", "processes", "serial", "ray")
