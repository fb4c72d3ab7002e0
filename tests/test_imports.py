"""Imports run one way: no loop among ``coffer``'s modules, and the layers keep their order.

Method: every module under ``coffer/`` is parsed with :mod:`ast`, and every import of a ``coffer``
module that can run is an edge — at module level or inside a function (a lazy import is still a
dependency, it only runs later). An import under ``if TYPE_CHECKING:`` never runs: it lets a part
that is handed its host (the node's ``Api``, the router's ``Router``) name the host's type, and is
not an edge. Relative imports are resolved, and
``from package import name`` points at the submodule when ``name`` is one. A loop is a strongly
connected component of more than one module, or a module importing itself; the test names its
modules and the lines that close it. The core's own rule (no I/O, only ``coffer.core``) is checked
by ``tests/core/test_purity.py``.
"""

import ast
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pytest

import coffer

package_directory = Path(coffer.__file__).parent


def module_files(directory: Path = package_directory) -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name, not ``__init__``)."""
    found = {}
    for path in sorted(directory.rglob("*.py")):
        parts = path.relative_to(directory.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _known(name: str, modules: Mapping[str, Path]) -> str:
    """The longest prefix of ``name`` that is one of ``modules`` (``a.b.attribute`` → ``a.b``)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runnable_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` but those in the body of an ``if TYPE_CHECKING:``."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        if _type_checking_only(node):
            assert isinstance(node, ast.If)
            pending.extend(node.orelse)
            pending.append(node.test)
        else:
            pending.extend(ast.iter_child_nodes(node))


def imports_of(module: str, path: Path, modules: Mapping[str, Path]) -> set[tuple[str, int]]:
    """The ``coffer`` modules ``module`` imports anywhere in its file, each with a line that does."""
    root = module.split(".")[0]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in _runnable_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root:
                    found.add((_known(alias.name, modules), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            if source.split(".")[0] != root:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add((submodule if submodule in modules else _known(source, modules), node.lineno))
    return found


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[tuple[str, int]]]:
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def import_loops(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The loops of ``graph`` (module → modules it imports): its strongly connected components of
    more than one module, and the modules that import themselves. Tarjan's algorithm, iterative
    (no recursion limit on a deep chain)."""
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = lowest[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in graph:
                    continue
                if target not in index:
                    index[target] = lowest[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    lowest[node] = min(lowest[node], index[target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    lowest[parent] = min(lowest[parent], lowest[node])
                if lowest[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph[node]:
                        loops.append(sorted(component))
    return loops


# ----------------------------------------------------------------------------- the finder itself


def test_the_loop_finder_finds_loops_and_only_loops() -> None:
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},  # a → b → c → a
        "d": {"e"},
        "e": set(),
        "f": {"f"},  # a module importing itself
        "g": {"d", "outside"},  # an edge out of the graph is not a loop
    }
    assert sorted(import_loops(graph)) == [["a", "b", "c"], ["f"]]
    assert import_loops({"x": {"y"}, "y": {"z"}, "z": set()}) == []


def test_a_long_chain_is_no_loop() -> None:
    graph = {f"m{number}": {f"m{number + 1}"} for number in range(5000)}
    graph["m5000"] = set()
    assert import_loops(graph) == []
    graph["m5000"] = {"m0"}
    assert len(import_loops(graph)[0]) == 5001


def test_lazy_and_relative_imports_are_edges_type_only_ones_are_not(tmp_path: Path) -> None:
    package = tmp_path / "coffer"
    (package / "server").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "server" / "__init__.py").write_text("")
    (package / "cli.py").write_text("from coffer.server import app\n")
    (package / "server" / "app.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import feed\n"
        "if TYPE_CHECKING:\n    from coffer.cli import Thing\nelse:\n    import coffer.server.feed\n"
    )
    (package / "server" / "feed.py").write_text("def main():\n    from ..cli import main\n    main()\n")
    modules = module_files(package)
    graph = import_graph(modules)
    assert {target for target, _ in graph["coffer.server.app"]} == {"coffer.server.feed"}
    assert {target for target, _ in graph["coffer.server.feed"]} == {"coffer.cli"}
    edges = {module: {target for target, _ in targets} for module, targets in graph.items()}
    assert import_loops(edges) == [["coffer.cli", "coffer.server.app", "coffer.server.feed"]]


# ----------------------------------------------------------------------------- coffer's own graph

modules = module_files()
graph = import_graph(modules)


def _edges(source: str) -> set[str]:
    return {target for target, _ in graph[source]}


def test_the_scan_sees_coffer() -> None:
    assert {"coffer.cli", "coffer.replica", "coffer.server.app", "coffer.query.query_app", "coffer.core.state_machine"} <= set(modules)
    assert "coffer.server.app" in _edges("coffer.server.serve")


def test_no_import_loop() -> None:
    loops = import_loops({module: _edges(module) for module in graph})
    described = []
    for loop in loops:
        members = set(loop)
        lines = [
            f"    {source}:{line} imports {target}"
            for source in loop
            for target, line in sorted(graph[source], key=lambda edge: edge[1])
            if target in members
        ]
        described.append(f"  loop of {len(loop)}: {', '.join(loop)}\n" + "\n".join(lines))
    assert not loops, "imports must run one way; these modules import each other:\n" + "\n".join(described)


# Lower layers never import higher ones: (importer prefix, prefix it must not import, why).
forbidden_layers = [
    ("coffer.http", "coffer.server", "the HTTP kit serves both servers; it knows neither"),
    ("coffer.http", "coffer.query", "the HTTP kit serves both servers; it knows neither"),
    ("coffer.history", "coffer.server", "the node's history store is below the servers"),
    ("coffer.history", "coffer.query", "the node's history store is below the read side"),
    ("coffer.replica", "coffer.query", "the replica writes history; the read side reads it"),
    ("coffer.replica", "coffer.server", "the server drives the replica, never the reverse"),
    ("coffer.log", "coffer.server", "the command log is below the servers"),
    ("coffer.query", "coffer.server", "the read side never imports the HTTP server"),
    ("coffer.query", "coffer.cli", "commands register from the main command downward"),
    ("coffer.server", "coffer.cli", "commands register from the main command downward"),
    ("coffer.flows", "coffer.cli", "commands register from the main command downward"),
    ("coffer.notify", "coffer.cli", "commands register from the main command downward"),
    ("coffer.txn", "coffer.cli", "commands register from the main command downward"),
    ("coffer.cluster", "coffer.cli", "commands register from the main command downward"),
]

# The one module of the read side that starts a process: it wires the query app into the node's
# HTTP serving (socket, TLS, keys file, connection limits), as ``coffer serve`` does for the node.
layer_exceptions = {("coffer.query.cli", "coffer.server")}


def _within(module: str, prefix: str) -> bool:
    return module == prefix.rstrip(".") or module.startswith(prefix if prefix.endswith(".") else prefix + ".")


def test_the_layering_rules_name_modules_that_exist() -> None:
    for importer, _, _ in forbidden_layers:
        assert any(_within(module, importer) for module in modules), importer


@pytest.mark.parametrize(("importer", "imported", "reason"), forbidden_layers, ids=lambda value: str(value))
def test_lower_layers_never_import_higher_ones(importer: str, imported: str, reason: str) -> None:
    wrong = [
        f"{source}:{line} imports {target}"
        for source in sorted(modules)
        if _within(source, importer)
        for target, line in sorted(graph[source], key=lambda edge: edge[1])
        if _within(target, imported)
        and not _within(target, importer)
        and not any(_within(source, a) and _within(target, b) for a, b in layer_exceptions)
    ]
    assert not wrong, f"{reason}:\n" + "\n".join(wrong)
