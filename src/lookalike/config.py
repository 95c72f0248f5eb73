"""Settings, read from a TOML file and ``LOOKALIKE_*`` environment variables.

Precedence (lowest to highest): built-in defaults, the config file, the environment,
explicit keyword overrides (what the CLI passes).  One flat namespace keeps the file,
the environment and ``--help`` saying the same names.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .validation import MetadataLimits

ENV_PREFIX = "LOOKALIKE_"
DEFAULT_CONFIG_FILE = "lookalike.toml"


class ConfigError(ValueError):
    """A configuration file or variable is malformed."""


@dataclass(frozen=True)
class Settings:
    """Everything a deployment may want to tune, with defaults that run on a laptop."""

    store: str = "lookalike-store"
    encoder: str = ""  # empty: the store's own encoder, efficientnet-lite0-int8 for a new store (efficientnet-lite0: float)
    # "auto" picks exact search for small catalogues and an IVF index above ann_threshold;
    # "flat" forces exact search; anything else is a FAISS index factory string.
    index: str = "auto"
    # Where vectors live: "auto" (codes for a quantised model, exact for index="flat", else faiss),
    # or a registered backend name (lookalike.vectors.registry).
    vector_backend: str = "auto"
    ann_threshold: int = 20_000
    # vector_backend = "milvus" (pip install 'lookalike[milvus]'): a Milvus Lite file (relative: inside
    # the store) or a server "http://host:19530"; its token; a collection-name prefix; its vector index.
    milvus_uri: str = "vectors.milvus.db"
    milvus_token: str = ""
    milvus_collection: str = ""
    milvus_index: str = "AUTOINDEX"
    nprobe: int = 0  # IVF lists probed per query; 0: automatic (64, or 1 % of the lists when more)
    rerank_factor: int = 10
    # With a quantised model: search its codes by "adc" (float query) or "sdc" (coded query), or "off".
    code_search: str = "adc"
    threads: int = 2
    batch_size: int = 16
    loader_threads: int = 2
    # Where ingest and reindex decode and embed: "threads" (default), "processes", "serial", or "ray"
    # (pip install 'lookalike[ray]'; ray_address "" starts a local Ray, "auto" or "ray://host:10001" joins a cluster).
    distributor: str = "threads"
    distributor_workers: int = 0  # 0: as many as the machine (or cluster) has CPUs for
    ray_address: str = ""
    max_image_pixels: int = 40_000_000
    max_image_bytes: int = 20 * 1024 * 1024
    url_timeout: float = 10.0
    thumbnail_size: int = 256
    host: str = "127.0.0.1"
    port: int = 8000
    model_cache: str = ""  # empty: ~/.cache/lookalike/models
    detector: str = "auto"  # garment finder: auto (the store's newest trained one, else the packaged default), default, a name, or none
    detector_int8: bool = True  # run the garment finder's convolutions quantised (quality measured equal, a glance 1.4x quicker); false: float
    ingest_garments: bool = True  # after each ingest, find the garments of new outfit shots (as `lookalike garments` does), so look matches them by garment
    garment_search: str = "main"  # plain photo search: "main" searches the main garment of a photo with a person in it, "whole" the whole frame
    garment_groups: str = ""  # YAML file: {column: <catalogue column>, groups: {group: [values]}}: which products each garment group may match
    # a fine-tuned model's photo search: among its first N results, the product whose photo the
    # off-the-shelf backbone finds nearest goes first (the exact product of an altered photo); 0: off;
    # "auto": the serving model's own depth (50 for a frozen head, 200 for one trained with --unfreeze-head)
    exact_first_depth: str = "auto"
    facets: str = ""  # comma-separated columns shown as facets in the web app; empty: chosen automatically
    # ---- security and limits (see README "Security") ----
    public_read: bool = False  # with API keys configured: may anonymous clients search and read?
    allowed_hosts: str = ""  # Host header values the server answers (comma-separated); "" = loopback names, or any when bound elsewhere
    ingest_roots: str = ""  # folders (comma-separated) that POST /ingest may read; "" = none: upload the catalogue
    allow_private_urls: bool = False  # may image URLs point at loopback, private or link-local addresses?
    max_downloads: int = 4  # image URL downloads at once (server-wide); more wait briefly, then get 503
    max_decode_pixels: int = 80_000_000  # pixels being decoded at once across all requests and loaders
    max_metadata_keys: int = 100
    max_metadata_bytes: int = 65_536
    max_filter_columns: int = 128  # metadata keys that become filterable columns (12 bytes per product each)
    max_catalogue_bytes: int = 200 * 1024 * 1024  # an uploaded catalogue file
    max_prune_fraction: float = 0.5  # prune refuses to delete more than this share of the catalogue unless forced

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed; ``None`` values are ignored (an option not given).
        An unknown name is an error: ``replace(nprob=1)`` must not silently keep ``nprobe``."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
        clean = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **_coerce_all(clean))

    def metadata_limits(self) -> MetadataLimits:
        return MetadataLimits(max_keys=self.max_metadata_keys, max_bytes=self.max_metadata_bytes)

    def model_cache_dir(self) -> Path:
        if self.model_cache:
            return Path(self.model_cache).expanduser()
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lookalike" / "models"


def _coerce(name: str, value: Any) -> Any:
    """Convert a file or environment value to the field's declared type, or say which field is wrong."""
    field_types = {f.name: f.type for f in fields(Settings)}
    kind = field_types[name]
    try:
        if kind == "bool":
            return _boolean(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if isinstance(value, (list, tuple)):  # TOML lists for comma-separated settings
            return ",".join(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: expected {kind}, got {value!r}") from exc


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def split_list(value: str) -> list[str]:
    """The items of a comma-separated setting, blanks dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def _coerce_all(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _coerce(k, v) for k, v in values.items()}


def _from_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    section = data.get("lookalike", data)
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return section


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    out = {}
    for f in fields(Settings):
        key = ENV_PREFIX + f.name.upper()
        if key in environ and environ[key] != "":
            out[f.name] = environ[key]
    return out


def load_settings(config_file: str | Path | None = None, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, a config file, the environment and explicit overrides.

    The file is ``config_file``, else ``$LOOKALIKE_CONFIG``, else ``./lookalike.toml`` when present.
    """
    env = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        values.update(_from_file(p))
    elif Path(DEFAULT_CONFIG_FILE).is_file():
        values.update(_from_file(Path(DEFAULT_CONFIG_FILE)))
    values.update(_from_env(env))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings().replace(**values)
