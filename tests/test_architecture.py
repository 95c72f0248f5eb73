"""The layout stays as docs/architecture.md draws it: no import cycles, no subsystem takes the engine, a thin facade."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_cycles_and_no_subsystem_takes_the_engine(capsys):
    spec = importlib.util.spec_from_file_location("check_imports", ROOT / "scripts" / "check_imports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main() == 0, capsys.readouterr().out
    edges = module.graph()
    assert "lookalike.vectors.exact" in edges and "lookalike.search.searcher" in edges  # the checker sees the packages


def test_a_cycle_would_be_found():
    spec = importlib.util.spec_from_file_location("check_imports", ROOT / "scripts" / "check_imports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert module.engine_users({"lookalike.ingest.x": {"lookalike.engine"}, "lookalike.interfaces.cli": {"lookalike.engine"}}) \
        == ["lookalike.ingest.x"]


def test_the_engine_is_a_facade_of_two_pages():
    # Each capability adds a few one-line delegations here (shop the look added three); the work
    # itself lives in its package.  Past this budget, move a capability behind a service object.
    assert len((ROOT / "src" / "lookalike" / "engine.py").read_text().splitlines()) <= 220
