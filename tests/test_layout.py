"""The package's rooms and the doors between them, checked by reading the source (no imports run).

Every ``em_spark`` module is parsed with ``ast``; module-level and function-level imports of
``em_spark.*`` (relative ones resolved) make a graph that must have no cycle, imports under
``if TYPE_CHECKING:`` included: a cycle that only type hints close is still two rooms that
need each other (when engine.state named engine.loop's FitSettings that way, FitSettings
moved to engine.settings). No module takes a
private name (``from x import _y``) from another ``em_spark`` module, and the layers keep to
their direction: models (numpy) <- engine (Spark) <- api <- app (commands); storage on its own.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import pytest

import em_spark

PACKAGE = Path(em_spark.__file__).parent


def _modules() -> dict[str, Path]:
    found = {"em_spark": PACKAGE / "__init__.py"}
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="em_spark."):
        relative = info.name.split(".")[1:]
        path = PACKAGE.joinpath(*relative)
        found[info.name] = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every em_spark import, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name.split(".")[0] == "em_spark"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "em_spark":
                continue
            names = [alias.name for alias in node.names]
            # ``from em_spark.app import metrics`` imports the module em_spark.app.metrics.
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            # Only the submodule, as ``import em_spark.storage.s3`` would: a package's own
            # __init__ runs first for any import beneath it, which is not an edge of the graph.
            taken = [n for n in names if f"{target}.{n}" not in MODULES]
            if taken or not submodules:
                found.append((target, taken, node.lineno))
            found += [(sub, [], node.lineno) for sub in submodules]
    return found


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, imports in IMPORTS.items():
        for target, _, _ in imports:
            if target in MODULES and target != name:
                graph[name].add(target)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = grey
        stack.append(node)
        for nxt in sorted(graph[node]):
            if color[nxt] == grey:
                return [*stack[stack.index(nxt) :], nxt]
            if color[nxt] == white:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        color[node] = black
        return None

    for start in sorted(graph):
        if color[start] == white:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_the_walk_sees_every_part_of_the_package():
    for name in (
        "em_spark.cli",
        "em_spark.app.common",
        "em_spark.app.nightly",
        "em_spark.engine.loop",
        "em_spark.models.base",
        "em_spark.storage.registry",
        "em_spark.api.base",
        "em_spark.stats",
    ):
        assert name in MODULES
    assert all(path.exists() for path in MODULES.values())


def test_no_import_cycle_anywhere_in_the_package():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_closed_only_by_type_hints_counts(tmp_path):
    (tmp_path / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from em_spark.b import B\n"
    )
    assert _imports("em_spark.a", tmp_path / "a.py") == [("em_spark.b", ["B"], 3)]


def test_the_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_a_private_name_from_another():
    private = [
        f"{name}:{line} imports {n} from {target}"
        for name, imports in IMPORTS.items()
        for target, names, line in imports
        for n in names
        if n.startswith("_") and not n.startswith("__") and target != name
    ]
    assert not private, "\n".join(private)


def _outside(prefix: str, forbidden: tuple[str, ...], third_party: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for name, path in MODULES.items():
        if name != prefix and not name.startswith(prefix + "."):
            continue
        for target, _, line in IMPORTS[name]:
            if any(target == f or target.startswith(f + ".") for f in forbidden):
                bad.append(f"{name}:{line} imports {target}")
        for node in ast.walk(ast.parse(path.read_text())):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            bad += [f"{name}:{node.lineno} imports {m}" for m in modules if m.split(".")[0] in third_party]
    return bad


@pytest.mark.parametrize(
    ("layer", "forbidden", "third_party"),
    [
        ("em_spark.models", ("em_spark.engine", "em_spark.api", "em_spark.app", "em_spark.cli"), ("pyspark",)),
        (
            "em_spark.storage",
            ("em_spark.models", "em_spark.api", "em_spark.app", "em_spark.engine", "em_spark.cli"),
            (),
        ),
        ("em_spark.engine", ("em_spark.app", "em_spark.api", "em_spark.cli"), ()),
        ("em_spark.api", ("em_spark.app", "em_spark.cli"), ()),
    ],
)
def test_each_layer_imports_only_the_layers_below_it(layer, forbidden, third_party):
    bad = _outside(layer, forbidden, third_party)
    assert not bad, "\n".join(bad)
