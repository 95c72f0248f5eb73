"""Evaluation suites and configurations, read from YAML.

A suite names labelled data sets by path and the tasks to run on them; a configuration
names engine settings (encoder, index type and parameters).  Paths in a suite are relative
to the suite file, so a suite travels with its data.  See ``docs/evaluation.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import Settings

TASK_TYPES = ("retrieval", "pairs", "views", "street_to_shop", "shop_the_look", "classification", "tagging", "learned_codes", "text_search")
ALTERATIONS = ("crop", "shift", "blur", "jpeg", "brightness", "flip", "background")


class SuiteError(ValueError):
    """A suite or configuration file is malformed; the message names the file and the field."""


@dataclass
class DatasetSpec:
    name: str
    catalogue: Path
    id_column: str | None = None
    image_column: str | None = None
    where: list[str] = field(default_factory=list)  # rows to keep, filter syntax of lookalike search
    garments: bool = False  # also find the garments of the data set's outfit shots (ingest's garments stage; minutes on a big set)


@dataclass
class TaskSpec:
    name: str
    type: str
    dataset: str
    options: dict[str, Any] = field(default_factory=dict)

    def path(self, key: str, base: Path) -> Path:
        value = self.options.get(key)
        if not value:
            raise SuiteError(f"task {self.name!r}: needs {key!r}")
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p).resolve()


@dataclass
class Suite:
    name: str
    path: Path
    datasets: dict[str, DatasetSpec]
    tasks: list[TaskSpec]
    seed: int = 0
    bootstrap: int = 1000
    map_points: int = 1000

    @property
    def base(self) -> Path:
        return self.path.parent


@dataclass
class EvalConfig:
    """One engine configuration to evaluate: a name plus settings overrides."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)

    def apply(self, base: Settings) -> Settings:
        return base.replace(**self.settings)


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SuiteError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: expected a mapping at the top level")
    return data


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


SWITCHES = ("development", "street_training")  # task options that turn a mode on or off


def load_suite(path: str | Path) -> Suite:
    path = Path(path).resolve()
    data = _load_yaml(path)
    raw_sets = data.get("datasets")
    if not isinstance(raw_sets, dict) or not raw_sets:
        raise SuiteError(f"{path}: 'datasets' must map names to data sets")
    datasets = {}
    for name, spec in raw_sets.items():
        if not isinstance(spec, dict) or "catalogue" not in spec:
            raise SuiteError(f"{path}: data set {name!r} needs a 'catalogue' path")
        where = spec.get("where", [])
        datasets[name] = DatasetSpec(name, _resolve(path.parent, spec["catalogue"]), spec.get("id_column"), spec.get("image_column"),
                                     [where] if isinstance(where, str) else list(where), bool(spec.get("garments", False)))
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise SuiteError(f"{path}: 'tasks' must be a non-empty list")
    tasks = []
    for i, raw in enumerate(raw_tasks, 1):
        if not isinstance(raw, dict):
            raise SuiteError(f"{path}: task {i} is not a mapping")
        kind, dataset = raw.get("type"), raw.get("dataset")
        name = str(raw.get("name") or f"{kind} {i}")
        if kind not in TASK_TYPES:
            raise SuiteError(f"{path}: task {name!r} has type {kind!r}; use one of {', '.join(TASK_TYPES)}")
        if dataset not in datasets:
            raise SuiteError(f"{path}: task {name!r} uses data set {dataset!r}, which the suite does not define")
        options = {k: v for k, v in raw.items() if k not in ("name", "type", "dataset")}
        for switch in SWITCHES:  # a quoted "false" or a 1 must not turn on a mode that trains for minutes
            if switch in options and not isinstance(options[switch], bool):
                raise SuiteError(f"{path}: task {name!r}: {switch} must be true or false, got {options[switch]!r}")
        if kind == "views":
            bad = set(options.get("alterations", ALTERATIONS)) - set(ALTERATIONS)
            if bad:
                raise SuiteError(f"{path}: task {name!r}: unknown alteration(s) {', '.join(sorted(bad))}; use {', '.join(ALTERATIONS)}")
        if kind in ("retrieval",) and not options.get("relevance"):
            raise SuiteError(f"{path}: task {name!r} needs 'relevance': the column(s) that must match")
        if kind == "tagging" and not (options.get("columns") or options.get("hierarchy")):
            raise SuiteError(f"{path}: task {name!r} needs 'columns' (labelled columns to tag) or 'hierarchy'")
        if kind == "learned_codes" and options.get("boxes") and not options.get("column"):
            raise SuiteError(f"{path}: task {name!r} uses street boxes, so it needs 'column' (what street labels map to)")
        if kind in ("classification", "street_to_shop", "shop_the_look") and not options.get("column"):
            raise SuiteError(f"{path}: task {name!r} needs 'column'")
        if kind == "shop_the_look":
            missing = [k for k in ("annotations", "labels", "boxes", "label_map") if not options.get(k)]
            if missing:
                raise SuiteError(f"{path}: task {name!r} needs {', '.join(map(repr, missing))} (street photos with masks, "
                                 "what mask values mean, garment boxes, and street labels -> catalogue values)")
        tasks.append(TaskSpec(name, str(kind), str(dataset), options))
    return Suite(str(data.get("name") or path.stem), path, datasets, tasks, int(data.get("seed", 0)),
                 int(data.get("bootstrap", 1000)), int(data.get("map_points", 1000)))


def load_config(path: str | Path) -> EvalConfig:
    path = Path(path)
    data = _load_yaml(path)
    name = str(data.pop("name", path.stem))
    known = set(Settings.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise SuiteError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return EvalConfig(name, data)
