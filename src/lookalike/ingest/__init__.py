"""Getting catalogues in: read rows → map (fetch, decode, embed) → write, on a swappable distributor.

* :mod:`.catalogue` — reading CSV, TSV, JSONL, Parquet or a folder of photos into validated rows;
* :mod:`.reader`, :mod:`.mapper`, :mod:`.writer` — the three stages;
* :mod:`.distributors` — serial, threads (default), a process pool, and Ray (:mod:`.ray_distributor`, the ``ray`` extra);
* :mod:`.pipeline` — one run, with prune and the run report;
* :mod:`.reindex` — re-embedding a store with another model, resumably.
"""

from .distributors import DISTRIBUTOR_NAMES, Distributor, DistributorError, ProcessDistributor, SerialDistributor, ThreadDistributor
from .mapper import MapperFactory
from .pipeline import IngestCancelled, IngestPipeline, IngestRequest, default_distributor, make_distributor
from .report import IngestReport, Skipped

__all__ = ["DISTRIBUTOR_NAMES", "Distributor", "DistributorError", "IngestCancelled", "IngestPipeline", "IngestReport", "IngestRequest", "MapperFactory", "ProcessDistributor",
           "SerialDistributor", "Skipped", "ThreadDistributor", "default_distributor", "make_distributor"]
