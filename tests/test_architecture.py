"""The layers keep their direction, and no module imports itself back in a circle.

Every module of ``engine``, ``policies``, ``actors``, ``headstart`` and ``bench`` is parsed (no
import runs); every import counts, also those inside functions: only those under
``if TYPE_CHECKING:`` are exempt (they never run). The rules, from the bottom up:

- ``engine`` and ``policies`` import nothing of ``actors``, ``headstart`` or ``bench``;
- in ``headstart``, the adapters (NATS) import nothing of ``headstart`` but the adapters and
  the settings; no lower layer (adapters, reports, privacy, web, settings, client,
  feature_flags) imports the composition root (``headstart.runtime``) or the CLI;
- only the composition root imports ``actors`` (and ``bench``, and the CLI);
- only the CLI imports ``bench`` (and ``bench`` itself);
- no import cycles.
"""

from __future__ import annotations

import ast
import functools
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "policies", "actors", "headstart", "bench")
CLI = ("headstart.cli", "headstart.__main__")
RUNTIME = "headstart.runtime"
LOWER_HEADSTART = tuple(
    f"headstart.{name}"
    for name in ("adapters", "reports", "privacy", "web", "settings", "client", "feature_flags")
)


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        path = MODULES()[self.importer].relative_to(ROOT)
        return f"{self.importer} -> {self.imported} ({path}:{self.line})"


def within(module: str, *prefixes: str) -> bool:
    """Whether ``module`` is one of ``prefixes`` or inside one of them."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@functools.cache
def MODULES() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def runtime_nodes(tree: ast.Module) -> Iterator[ast.AST]:
    """Every node but those under ``if TYPE_CHECKING:`` (its ``else`` runs, so it counts)."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def imports_of(module: str, source: str, is_package: bool, known: set[str]) -> Iterator[tuple[str, int]]:
    """(project module imported, line) for every import in ``source`` that runs.

    >>> src = '''
    ... from typing import TYPE_CHECKING
    ... import engine.events
    ... from . import keys
    ... if TYPE_CHECKING:
    ...     from engine.pii import PiiSealer
    ... def f():
    ...     from engine.errors import ConfigError
    ... '''
    >>> known = {"engine", "engine.events", "engine.keys", "engine.pii", "engine.errors", "engine.x"}
    >>> sorted(imports_of("engine.x", src, False, known))
    [('engine.errors', 8), ('engine.events', 3), ('engine.keys', 4)]
    """
    for node in runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # ``from package import module`` imports the module; ``from module import name`` the module.
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
            ]
        else:
            continue
        for name in names:
            target = name
            while target and target not in known:  # ``import a.b.c`` of a function or class c
                target = target.rpartition(".")[0]
            if target and target != module:
                yield target, node.lineno


@functools.cache
def IMPORTS() -> tuple[Import, ...]:
    known = set(MODULES())
    found = set()
    for module, path in MODULES().items():
        for imported, line in imports_of(module, path.read_text(), path.name == "__init__.py", known):
            found.add(Import(module, imported, line))
    return tuple(sorted(found, key=lambda i: (i.importer, i.imported, i.line)))


def violations(forbidden: Callable[[Import], bool]) -> list[Import]:
    return [i for i in IMPORTS() if forbidden(i)]


def report(rule: str, bad: list[Import]) -> str:
    return f"{rule}:\n" + "\n".join(f"  {i}" for i in bad)


def cycles() -> list[tuple[list[str], set[str]]]:
    """The strongly connected components of more than one module (Tarjan), each with one cycle
    through them: the import chain to read."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES()}
    for i in IMPORTS():
        graph[i.importer].add(i.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [(_cycle_in(graph, component), component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    return sorted(component)


def _explain(cycle: list[str]) -> str:
    lines = {(i.importer, i.imported): i for i in IMPORTS()}
    return "\n".join(f"    {lines[a, b]}" for a, b in itertools.pairwise(cycle))


def test_every_package_is_parsed() -> None:
    modules = MODULES()
    assert {"engine.events", "actors.shard", "headstart.cli", "bench.common", "policies.base"} <= set(modules)
    assert any(i.importer == "headstart.cli" and i.imported.startswith("bench") for i in IMPORTS())


def test_no_import_cycles() -> None:
    found = cycles()
    assert not found, "import cycles (imports inside functions count too):\n" + "\n".join(
        f"  {' -> '.join(c)}   (modules in this knot: {', '.join(sorted(knot))})\n{_explain(c)}"
        for c, knot in found
    )


def test_engine_and_policies_import_no_upper_layer() -> None:
    upper = ("actors", "headstart", "bench")
    bad = violations(lambda i: within(i.importer, "engine", "policies") and within(i.imported, *upper))
    assert not bad, report("engine/ and policies/ must not import actors/, headstart/ or bench/", bad)


def test_only_the_composition_root_imports_actors() -> None:
    bad = violations(
        lambda i: within(i.imported, "actors") and not within(i.importer, "actors", RUNTIME, "bench", *CLI)
    )
    assert not bad, report("outside bench/ and the CLI, only headstart/runtime imports actors/", bad)


def test_only_the_cli_imports_bench() -> None:
    bad = violations(lambda i: within(i.imported, "bench") and not within(i.importer, "bench", *CLI))
    assert not bad, report("only the CLI (and bench/ itself) imports bench/", bad)


def test_lower_headstart_layers_import_neither_runtime_nor_cli() -> None:
    bad = violations(lambda i: within(i.importer, *LOWER_HEADSTART) and within(i.imported, RUNTIME, *CLI))
    assert not bad, report(
        "adapters, reports, privacy, web, settings, client and feature_flags must not import "
        "headstart.runtime or the CLI",
        bad,
    )


def test_adapters_import_only_adapters_and_settings_of_headstart() -> None:
    bad = violations(
        lambda i: (
            within(i.importer, "headstart.adapters")
            and within(i.imported, "headstart")
            and i.imported != "headstart"  # the package itself holds only ``__version__``
            and not within(i.imported, "headstart.adapters", "headstart.settings")
        )
    )
    assert not bad, report("headstart/adapters imports nothing of headstart but adapters and settings", bad)
