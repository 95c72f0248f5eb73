"""The map stage on Ray: a local Ray started for the run, or the user's cluster (``pip install 'lookalike[ray]'``).

The driver reads the catalogue and writes the store, as with every distributor; Ray runs the map
stage.  Each worker is a Ray actor that builds its own mapper (its model session, its HTTP client)
once, from the picklable factory (small: the model's settings, not its session) sent with the actor,
so a restarted actor always has it.  Partitions go to the actors round
robin with a few in flight each, and come back in input order, so rowids are the same as a local
ingest's.  An actor that dies (a node lost, a process killed) is restarted and its partitions are
run again: the map stage is pure and the writes are idempotent upserts, so nothing is lost or
written twice.  Nothing is read by Ray tasks: the driver feeds the actors, so an actor pool as
large as the CPUs cannot starve a reader of CPUs (Ray Data's read tasks can be).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from typing import Any, Iterable, Iterator

from .distributors import DistributorError, P, WorkerFactory

log = logging.getLogger("lookalike.ingest.ray")

HEARTBEAT = 0.5         # seconds without a result before yielding None (the caller checks for cancellation)
IN_FLIGHT_PER_WORKER = 2


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise DistributorError("the ray distributor needs Ray: pip install 'lookalike[ray]'") from exc
    return ray


class _MapperActor:
    """One worker: builds its mapper once, maps partitions until killed."""

    def __init__(self, factory: WorkerFactory):
        self.mapper = factory()

    def map(self, partition: Any) -> Any:
        return self.mapper(partition)

    def close(self) -> None:
        self.mapper.close()


class RayDistributor:
    """``workers`` Ray actors of ``cpus_per_worker`` CPUs each.  ``address`` None starts a local
    Ray for the run (with this machine's CPUs) and stops it after; ``"auto"`` or ``"ray://host:10001"``
    joins a running cluster.  An already initialised Ray (a notebook, a test) is used as it is."""

    def __init__(self, workers: int | None = None, address: str | None = None, cpus_per_worker: float = 1.0,
                 max_restarts: int = 3):
        if workers is not None and workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers, self.address, self.cpus_per_worker, self.max_restarts = workers, address, cpus_per_worker, max_restarts

    def _start(self, ray: Any) -> bool:
        """Initialise Ray unless it is; returns whether this run started it (and so stops it)."""
        if ray.is_initialized():
            return False
        try:
            if self.address:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                # "local": a new instance of our own, even where ``ray start`` left a cluster that a bare init would join.
                ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except Exception as exc:
            where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray"
            raise DistributorError(f"cannot start the ray distributor on {where}: {exc}") from exc
        return True

    def _pool_size(self, ray: Any) -> int:
        if self.workers:
            return self.workers
        cpus = float(ray.cluster_resources().get("CPU", 1))
        if not self.address:  # one machine: leave a core to the driver's reading and writing
            cpus = max(1.0, cpus - 1)
        return max(1, int(cpus // self.cpus_per_worker))

    def map(self, factory: WorkerFactory, partitions: Iterable[P]) -> Iterator[P | None]:
        ray = _ray()
        started = self._start(ray)
        actors: list[Any] = []
        try:
            actor_class = ray.remote(num_cpus=self.cpus_per_worker, max_restarts=self.max_restarts,
                                     max_task_retries=self.max_restarts)(_MapperActor)
            actors = [actor_class.remote(factory) for _ in range(self._pool_size(ray))]
            log.info("ray: %d workers of %s CPU", len(actors), self.cpus_per_worker)
            yield from self._feed(ray, actors, partitions)
        finally:
            with contextlib.suppress(Exception):  # let mappers release what they hold (HTTP clients), briefly
                ray.get([actor.close.remote() for actor in actors], timeout=5)
            for actor in actors:
                with contextlib.suppress(Exception):  # already gone with its node
                    ray.kill(actor)
            if started:
                ray.shutdown()

    @staticmethod
    def _feed(ray: Any, actors: list[Any], partitions: Iterable[P]) -> Iterator[P | None]:
        """Round robin with a bounded number in flight; results in input order."""
        running: deque[Any] = deque()
        source = iter(partitions)
        turn = 0
        exhausted = False
        while True:
            while not exhausted and len(running) < IN_FLIGHT_PER_WORKER * len(actors):
                partition = next(source, None)
                if partition is None:
                    exhausted = True
                    break
                running.append(actors[turn % len(actors)].map.remote(partition))
                turn += 1
            if not running:
                return
            ready, _ = ray.wait([running[0]], timeout=HEARTBEAT)
            if not ready:
                yield None
                continue
            yield ray.get(running.popleft())
