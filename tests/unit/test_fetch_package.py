"""The fetch package's shape (issue 29): its modules import one way, never a private name of
another, and none grows past 600 lines. Read from the source with ast, nothing imported."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = "modelservice_runtime.fetch"
ROOT = Path(__file__).resolve().parents[2] / "runtime" / "modelservice_runtime" / "fetch"
MODULES = {p.stem: p for p in ROOT.glob("*.py")}


def imports(path: Path) -> list[tuple[str, str]]:
    """(module of this package, name) for each `from modelservice_runtime.fetch[.m] import
    name`; a bare package import names the module itself."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
            sub = node.module[len(PACKAGE) + 1 :]  # type: ignore[index]
            for alias in node.names:
                found.append((sub, alias.name) if sub else (alias.name, ""))
    return found


def test_the_modules_import_each_other_without_a_cycle() -> None:
    graph = {
        name: {module for module, _ in imports(path)}
        for name, path in MODULES.items()
        if name != "__init__"  # it re-exports: every module is below it
    }
    order = list(graphlib.TopologicalSorter(graph).static_order())  # CycleError on a cycle
    assert set(graph) <= set(order)


def test_no_module_imports_a_private_name_of_another() -> None:
    private = [
        f"{name}: {module}.{imported}"
        for name, path in MODULES.items()
        for module, imported in imports(path)
        if imported.startswith("_") or module.startswith("_")
    ]
    assert private == []


def test_no_module_is_over_600_lines() -> None:
    sizes = {name: len(p.read_text().splitlines()) for name, p in MODULES.items()}
    assert {name: n for name, n in sizes.items() if n > 600} == {}
