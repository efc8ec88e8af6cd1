"""The house's structure (issue 13): the modules of walrusfs/ and nodes/ import each other without
circles, the protocol and the codec sit below the client, the filesystem and the nodes, the nodes
never import the client, and no module grows past ~500 lines without saying why at its top.

The graph is read statically (ast) from every import statement, including imports inside functions
and under ``if TYPE_CHECKING:``: a circle of type-only or deferred imports is still two modules that
each need the other.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("walrusfs", "nodes")
MAX_LINES = 500
LENGTH_REASON = "Length:"  # the line of a long module's docstring that says why it is long


# What each lower layer may import of walrusfs/ and nodes/ (besides itself).
LOWER_LAYERS = {
    "walrusfs.redstuff": (),
    "walrusfs.protocol": ("walrusfs.redstuff", "walrusfs.keys", "walrusfs.errors"),
    "walrusfs.paths": (),
}


def _module_files() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


@cache
def import_graph() -> dict[str, set[str]]:
    """module -> the modules of walrusfs/ and nodes/ it imports. ``from package import name`` counts
    as importing the submodule if ``name`` is one, else the package (its __init__)."""
    modules = _module_files()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                submodules = {f"{source}.{alias.name}" for alias in node.names} & modules.keys()
                imported |= submodules
                if len(submodules) < len(node.names):
                    imported.add(source)
        graph[name] = {module for module in imported if module in modules and module != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.add(frozenset(component))
    return found


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_cycle_finder_finds_a_circle_and_only_it() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == {frozenset({"a", "b", "c"})}
    assert cycles({"a": {"b"}, "b": set()}) == set()


def test_no_circle_in_the_import_graph() -> None:
    found = [sorted(cycle) for cycle in cycles(import_graph())]
    assert not found, f"modules importing each other in a circle: {found}"


def test_the_node_modules_import_each_other_without_a_circle() -> None:
    node_graph = {module: {m for m in edges if _within(m, "nodes")}
                  for module, edges in import_graph().items() if _within(module, "nodes")}
    assert cycles(node_graph) == set()
    for part in ("nodes.repair", "nodes.repair_api", "nodes.feed", "nodes.scrub"):
        assert "nodes.app" not in reachable(node_graph, part), f"{part} depends on the routing"
    above_core = {"nodes.app", "nodes.repair", "nodes.repair_api", "nodes.feed", "nodes.scrub"}
    assert not reachable(node_graph, "nodes.core") & above_core, "the core depends on what is built on it"


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for module in graph[todo.pop()] - seen:
            seen.add(module)
            todo.append(module)
    return seen


@pytest.mark.parametrize("layer", sorted(LOWER_LAYERS))
def test_the_protocol_and_the_codec_sit_below_everything_else(layer: str) -> None:
    allowed = (layer, *LOWER_LAYERS[layer])
    wrong = {f"{module} imports {imported}" for module, edges in import_graph().items() if _within(module, layer)
             for imported in edges if not any(_within(imported, prefix) for prefix in allowed)}
    assert not wrong, sorted(wrong)


def test_the_nodes_never_import_the_client_or_the_filesystem() -> None:
    wrong = {f"{module} imports {imported}" for module, edges in import_graph().items() if _within(module, "nodes")
             for imported in edges if _within(imported, "walrusfs.client") or _within(imported, "walrusfs.fs")}
    assert not wrong, sorted(wrong)


def test_a_module_over_500_lines_says_why_at_its_top() -> None:
    unexplained = []
    for name, (path, _) in _module_files().items():
        text = path.read_text()
        if text.count("\n") > MAX_LINES:
            docstring = ast.get_docstring(ast.parse(text)) or ""
            if not any(line.startswith(LENGTH_REASON) for line in docstring.splitlines()):
                unexplained.append(f"{name} ({text.count(chr(10))} lines)")
    assert not unexplained, (f"split these, or say why they are long in a '{LENGTH_REASON}' paragraph of "
                             f"their docstring: {unexplained}")


# The package initialisers import their submodules in an order; a module imported first, alone, must
# not find a partly initialised one (walrusfs.committee -> protocol -> auth -> committee was one).
FRESH = ["walrusfs.protocol", *(f"walrusfs.protocol.{path.stem}" for path in sorted(
    (ROOT / "walrusfs" / "protocol").glob("*.py")) if path.stem != "__init__"),
    "walrusfs.committee", "walrusfs.tls", "walrusfs.roots", "walrusfs.paths", "nodes.core", "nodes.app"]


@pytest.mark.parametrize("module", FRESH)
def test_each_lower_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert result.returncode == 0, f"{module} cannot be imported alone: {result.stderr[-2000:]}"
