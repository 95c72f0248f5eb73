#!/usr/bin/env python3
"""Fail when modules of src/lookalike import each other in a cycle, or a capability takes the Engine.

Every import counts, at module level or inside a function: a cycle hidden in a function is
still a cycle in the design.  ``from a.b import c`` depends on module ``a.b.c`` when there is
one, else on package ``a.b`` (whose ``__init__`` defines ``c``); parent packages run first but
are not counted, as in import-linter.  Run: python scripts/check_imports.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "lookalike"
# Who may import the engine: the facade's package root and the interfaces (CLI, API, web),
# and evaluation, which opens stores on suites as a client does.
ENGINE_USERS = ("lookalike", "lookalike.interfaces", "lookalike.evaluation", "lookalike.engine")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            if target.split(".")[0] != PACKAGE:
                continue
            parts = target.split(".")
            for i in range(len(parts), 0, -1):  # the module itself, or the package that defines the name
                candidate = ".".join(parts[:i])
                if candidate in known:
                    if candidate != name:
                        found.add(candidate)
                    break
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in (ROOT / PACKAGE).rglob("*.py")}
    known = set(files)
    return {name: imports_of(path, name, known) for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _may_use_engine(module: str) -> bool:
    return module in ("lookalike", "lookalike.engine") or any(module == u or module.startswith(u + ".") for u in ENGINE_USERS[1:])


def engine_users(edges: dict[str, set[str]]) -> list[str]:
    return sorted(m for m, deps in edges.items() if "lookalike.engine" in deps and not _may_use_engine(m))


def main() -> int:
    edges = graph()
    problems = [f"import cycle: {' <-> '.join(c)}" for c in cycles(edges)]
    problems += [f"{m} imports the engine: give it a narrow protocol instead" for m in engine_users(edges)]
    for line in problems:
        print(line)
    print(f"{len(edges)} modules, {sum(len(d) for d in edges.values())} imports: "
          + ("no cycles, no subsystem takes the engine" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
