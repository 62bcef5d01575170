"""The import graph of the package: no cycle, the optimizer stands alone, one namespace.

The graph is read from the source (AST), not from running imports: an import inside a function
is as much a dependency as one at the top, and a cycle is a design problem whether or not
Python happens to resolve it at run time. A module depends on the deepest module an import
names (``from a.b import c`` is ``a.b.c`` when that is a module, else ``a.b``), and on a module
whose full dotted name it holds as a string (the CLI imports its commands by name).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"][
    "setuptools"
]["package-dir"]
# the installed names of the repository's top-level folders; only mergesearch.* is importable
BARE_NAMES = {folder for folder in PACKAGE_DIRS.values() if folder != "mergesearch"}
OPTIMIZER = "mergesearch.search.optimize"
NOT_FOR_THE_OPTIMIZER = tuple(
    f"mergesearch.search.{room}" for room in ("report", "export", "cli", "demo")
)


def package_modules() -> dict[str, Path]:
    """Every module of the namespace, by dotted name, from the folders the packaging maps."""
    modules: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = [*package.split("."), *path.relative_to(REPO / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_names(path: Path, module: str) -> Iterator[tuple[str, int]]:
    """(dotted name, line) of everything ``path`` imports, lazy and relative imports included;
    ``from a import b`` yields ``a.b``, whether ``b`` is a module or a name inside ``a``."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                drop = node.level - 1 if is_package else node.level
                anchor = anchor[: len(anchor) - drop]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _ in imported_names(path, name):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in modules and node.value != name:
                graph[name].add(node.value)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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
    return found


def reachable(graph: dict[str, set[str]], start: list[str]) -> dict[str, str]:
    """Every module reachable from ``start``, mapped to the module that first imports it."""
    seen = {name: name for name in start}
    todo = list(start)
    while todo:
        node = todo.pop()
        for target in graph[node]:
            if target not in seen:
                seen[target] = node
                todo.append(target)
    return seen


def test_the_graph_sees_lazy_relative_and_by_name_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    names = {n for n, _ in imported_names(pkg / "a.py", "x.pkg.a")}
    assert names == {"x.pkg.b.g"}
    assert {n for n, _ in imported_names(pkg / "__init__.py", "x.pkg")} == {"x.pkg.a"}
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_mapped_folder_is_a_package_with_modules():
    modules = package_modules()
    for package in PACKAGE_DIRS:
        assert package in modules, f"{package} has no __init__.py"
    assert OPTIMIZER in modules
    assert all(room in modules for room in NOT_FOR_THE_OPTIMIZER)


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_optimizer_never_reaches_report_export_cli_or_demo():
    graph = import_graph()
    start = [name for name in graph if name == OPTIMIZER or name.startswith(OPTIMIZER + ".")]
    via = reachable(graph, start)
    bad = sorted(m for m in via if m.startswith(NOT_FOR_THE_OPTIMIZER))
    chains = []
    for module in bad:
        chain = [module]
        while via[chain[-1]] != chain[-1]:
            chain.append(via[chain[-1]])
        chains.append(" <- ".join(chain))
    assert not bad, "the optimizer imports:\n" + "\n".join(chains)


def _python_files() -> Iterator[Path]:
    for path in sorted(REPO.rglob("*.py")):
        parts = path.relative_to(REPO).parts
        if not any(p.startswith(".") or p in ("results", "build", "__pycache__") for p in parts):
            yield path


def test_no_module_imports_a_bare_top_level_name():
    """Installed, only ``mergesearch.*`` exists; ``import search`` would find another package
    (or nothing). Checked in tests and benchmarks too, which run against the install."""
    offenders = []
    for path in _python_files():
        for name, line in imported_names(path, "__main__"):
            if name.split(".")[0] in BARE_NAMES:
                offenders.append(f"{path.relative_to(REPO)}:{line}: {name}")
    assert not offenders, "\n".join(offenders)
