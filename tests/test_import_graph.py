"""flirdata's modules import one another without a circle, counting imports inside functions too.

The graph is read from the source (an ``ast`` walk of ``flirdata/``), not from running it, so
an import a rarely taken path makes counts as well as one at the top of a module. An edge
``a -> b`` means running ``a`` may execute ``b``: ``import x.y.z`` and ``from x.y import z`` execute
the packages ``x`` and ``x.y`` too (their ``__init__``), so those are edges as well, except to a
package the importing module sits in (Python has started it before the module). Imports under
``if TYPE_CHECKING:`` never run and are left out.

``python tests/test_import_graph.py`` prints the graph: each module, then the flirdata modules it
imports (``*`` marks one imported only inside a function).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "flirdata"

# module -> {imported module: True if imported at the top level (else only inside a function)}
Graph = dict[str, dict[str, bool]]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(nodes: list[ast.AST], top: bool = True) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement that may run, with whether it sits at the module's top level."""
    for node in nodes:
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from _imports(list(node.orelse), top)  # the body never runs
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, top
        else:
            inside = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from _imports(list(ast.iter_child_nodes(node)), inside)


def _targets(node: ast.Import | ast.ImportFrom, here: str, is_package: bool, modules: set[str]) -> Iterator[str]:
    """The flirdata modules one import statement names (a ``from`` import of a submodule names it too)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:  # relative: from the importing module's package
        package = here if is_package else here.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    yield base
    for alias in node.names:
        if f"{base}.{alias.name}" in modules:
            yield f"{base}.{alias.name}"


def _with_packages(name: str, here: str) -> Iterator[str]:
    """``name`` and the packages above it that importing it executes (not those ``here`` sits in)."""
    parts = name.split(".")
    for k in range(1, len(parts) + 1):
        prefix = ".".join(parts[:k])
        if not here.startswith(prefix + "."):
            yield prefix


def import_graph() -> Graph:
    """Each flirdata module -> the flirdata modules it may execute (see the module docstring)."""
    paths = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    modules = set(paths)
    graph: Graph = {}
    for here, path in paths.items():
        edges: dict[str, bool] = {}
        tree = ast.parse(path.read_text(), str(path))
        for node, top in _imports(tree.body):
            for target in _targets(node, here, path.name == "__init__.py", modules):
                for name in _with_packages(target, here):
                    if name in modules and name != here:
                        edges[name] = edges.get(name, False) or top
        graph[here] = edges
    return graph


def find_cycle(graph: Graph) -> list[str] | None:
    """One circle of imports (``[a, b, ..., a]``), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph.get(node, {})):
            if state.get(child) == 1:
                return [*path[path.index(child) :], child]
            if child not in state and (found := visit(child)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_module_of_flirdata_imports_itself_through_others() -> None:
    graph = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or ())


def test_a_circle_is_found() -> None:
    """The check can fail: a circle, also through a function-level import or a package, is reported."""
    assert find_cycle({"a": {"b": True}, "b": {"c": False}, "c": {"a": True}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": True}, "b": {}}) is None
    tree = ast.parse("def f():\n    from flirdata.backends import _shm\n")
    (node, top), *_ = _imports(tree.body)
    targets = set(_targets(node, "flirdata.cache", False, {"flirdata.backends", "flirdata.backends._shm"}))
    assert not top and targets == {"flirdata.backends", "flirdata.backends._shm"}
    # importing a submodule runs its package's __init__ (not the one the importer sits in)
    assert list(_with_packages("flirdata.backends._shm", "flirdata.cache")) == [
        "flirdata.backends",
        "flirdata.backends._shm",
    ]


def main() -> None:
    graph = import_graph()
    for module, edges in sorted(graph.items()):
        shown = [name + ("" if top else "*") for name, top in sorted(edges.items())]
        print(f"{module} -> {', '.join(shown) or '(none)'}")
    cycle = find_cycle(graph)
    print("circle: " + (" -> ".join(cycle) if cycle else "none"))
    sys.exit(1 if cycle else 0)


if __name__ == "__main__":
    main()
