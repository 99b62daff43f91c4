"""The house's shape: no module imports one above it, and no modules import each other.

docs/architecture.md draws the layers; this reads every `import` in pilotfish/ and checks
the drawing still holds.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pilotfish"

LAYERS: dict[str, set[str]] = {
    # room: the rooms it may import (besides itself)
    "foundation": set(),
    "catalog": {"foundation"},
    "http": {"foundation", "catalog"},
    "registrar": {"foundation", "catalog", "stack"},
    "stack": {"foundation", "catalog", "http"},
    "ui": {"foundation", "catalog", "http", "stack"},
    "mesh": {"foundation", "catalog", "http", "stack", "lb"},
    "registry": {"foundation", "catalog", "http", "stack", "ui", "mesh"},
    "workers": {"foundation", "catalog", "stack"},
    "dns": {"foundation", "catalog", "http", "stack", "ui", "workers"},
    "lb": {"foundation", "catalog", "http", "stack", "ui", "workers"},
    "sidecar": {"foundation", "catalog", "http", "stack", "registrar", "ui", "mesh"},
    "command": {"foundation", "catalog", "http", "stack", "registrar", "registry", "dns",
                "lb", "sidecar", "ui", "mesh", "workers"},
}
FOUNDATION = {"pilotfish", "pilotfish.config", "pilotfish.loop", "pilotfish.metrics",
              "pilotfish.fds"}
COMMAND = {"pilotfish.cli", "pilotfish.__main__"}


def room(module: str) -> str:
    """The layer a module belongs to."""
    if module in FOUNDATION:
        return "foundation"
    if module in COMMAND:
        return "command"
    if module == "pilotfish.stack":
        return "stack"
    name = module.split(".")[1]
    assert name in LAYERS, f"{module}: a room docs/architecture.md does not draw"
    return name


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The pilotfish modules `name` imports (at run time or for type checking alike)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("pilotfish"):
                yield target


def graph() -> dict[str, set[str]]:
    """Module → the modules it imports."""
    known = modules()
    return {name: set(imports(name, path, known)) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or around a circle (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                other = stack.pop()
                group.append(other)
                if other == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_a_room_above_its_own() -> None:
    upward = sorted(f"{module} imports {target}"
                    for module, targets in graph().items() for target in targets
                    if room(target) != room(module)
                    and room(target) not in LAYERS[room(module)])
    assert upward == []


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


LIMIT = 450


@pytest.mark.parametrize("limit", [LIMIT])
def test_no_module_is_over_the_size_of_one_job(limit: int) -> None:
    long = []
    for path in PACKAGE.rglob("*.py"):
        name = str(path.relative_to(PACKAGE.parent))
        count = len(path.read_text().splitlines())
        if count > limit:
            long.append(f"{name}: {count} lines")
    assert sorted(long) == []
