"""The project's layers, checked from the source: `attacks` < `defences` < `bench`, and no import cycles.

Every import counts for the layers: module-level ones, imports inside functions (lazy) and under
`if TYPE_CHECKING:`. The rules (issue 14): `attacks` imports nothing from `bench` or `defences` and, outside the
standard library, only torch, numpy and the reference attack packages; `defences` imports nothing from `bench`;
the file-level import graph of the project's own modules has no cycle; within `bench`, configuration is data: its
modules (BENCH_CONFIGURATION) import nothing of `bench` above them, not even inside a function (the
executors, the report layouts and the planner are above them). For cycles, imports under
`if TYPE_CHECKING:` do not count: they name types for annotations and never execute, which is how Python code
lets a base class mention the plan it runs without importing the planner.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("attacks", "defences", "bench")
FORBIDDEN = {"attacks": {"bench", "defences"}, "defences": {"bench"}}
ATTACKS_THIRD_PARTY = {"torch", "numpy", "pyautoattack", "autoattack", "torchattacks"}
# bench's configuration layer, and what of bench beside itself it may import: the dataset catalogue its scenarios
# name
BENCH_CONFIGURATION = ("bench.validation", "bench.conffiles", "bench.options", "bench.scenarios", "bench.config")
CONFIGURATION_MAY_USE = ("bench.data",)


def project_modules(root: Path) -> dict[str, Path]:
    """{dotted module name: file} for every module of the project's packages under `root`."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _typing_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`)."""
    found = set()
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
        if name == "TYPE_CHECKING":
            found |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return found


def imports(module: str, path: Path, typing_only: bool = True) -> list[tuple[str, list[str]]]:
    """Every import in `module`'s source, anywhere in it, as (absolute module, names taken from it):
    `import a.b` gives ("a.b", []), `from .c import d` inside package a gives ("a.c", ["d"]). With
    typing_only=False, imports under `if TYPE_CHECKING:` are left out."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = set() if typing_only else _typing_only(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.append((base, [alias.name for alias in node.names]))
    return found


def import_graph(root: Path, typing_only: bool = True) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between the project's module files, the top-level names each module imports); typing_only=False
    leaves out imports under `if TYPE_CHECKING:`."""
    modules = project_modules(root)
    edges: dict[str, set[str]] = {}
    tops: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges[module], tops[module] = set(), set()
        for base, names in imports(module, path, typing_only):
            tops[module].add(base.split(".")[0])
            # `from a import b` imports the file a/b.py when there is one, else the attribute b of a
            targets = [f"{base}.{name}" if f"{base}.{name}" in modules else base for name in names] or [base]
            edges[module] |= {target for target in targets if target in modules and target != module}
    return edges, tops


def layer_violations(root: Path) -> list[str]:
    _, tops = import_graph(root)
    problems = []
    for module, imported in sorted(tops.items()):
        layer = module.split(".")[0]
        problems += [f"{module} imports {bad}" for bad in sorted(imported & FORBIDDEN.get(layer, set()))]
        if layer == "attacks":
            foreign = {name for name in imported - set(PACKAGES) - ATTACKS_THIRD_PARTY - {"__future__"}
                       if name not in sys.stdlib_module_names}
            problems += [f"{module} imports {name} (attacks may use torch, numpy and {sorted(ATTACKS_THIRD_PARTY)})"
                         for name in sorted(foreign)]
    return problems


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def configuration_violations(root: Path) -> list[str]:
    """Imports of bench modules above the configuration layer from inside it, module-level or lazy."""
    modules = project_modules(root)
    allowed = BENCH_CONFIGURATION + CONFIGURATION_MAY_USE
    problems = []
    for module in BENCH_CONFIGURATION:
        if module not in modules:
            continue
        tree = ast.parse(modules[module].read_text())
        lazy = {id(inner) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                for inner in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level:  # `from bench import x` imports bench.x
                base = node.module or ""
                found = [(base if base != "bench" else f"bench.{alias.name}", f"{base}.{alias.name}")
                         for alias in node.names]
            elif isinstance(node, ast.Import):
                found = [(alias.name, alias.name) for alias in node.names]
            else:
                continue
            problems += [f"{module} imports {shown}{' (lazily)' if id(node) in lazy else ''}"
                         for shown, target in found
                         if target.split(".")[0] == "bench" and not _within(target, allowed)]
    return sorted(set(problems))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(edges):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(edges[start]))]
        state[start] = 1
        while stack:
            following = next(stack[-1], None)
            if following is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(following) == 1:
                return path[path.index(following):] + [following]
            elif not state.get(following):
                state[following] = 1
                path.append(following)
                stack.append(iter(sorted(edges.get(following, ()))))
    return None


def test_layers_import_only_downwards():
    problems = layer_violations(ROOT)
    assert not problems, "layer violations:\n" + "\n".join(problems)


def test_configuration_imports_nothing_above_it_even_lazily():
    problems = configuration_violations(ROOT)
    assert not problems, "configuration imports upward:\n" + "\n".join(problems)


def test_the_configuration_check_sees_lazy_upward_imports(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("")
    (tmp_path / "bench" / "config.py").write_text(
        "from bench.options import RunOptions\nfrom bench.data import dataset_info\n"
        "def executor_options():\n    from bench.executors import REGISTRY\n    import bench.reporting.layouts\n")
    (tmp_path / "bench" / "options.py").write_text("import bench.grid\nfrom bench import layout, validation\n")
    (tmp_path / "bench" / "grid.py").write_text("from bench.config import compose\n")  # above: may import it
    assert configuration_violations(tmp_path) == [
        "bench.config imports bench.executors (lazily)", "bench.config imports bench.reporting.layouts (lazily)",
        "bench.options imports bench.grid", "bench.options imports bench.layout"]


def test_no_import_cycle_between_files():
    edges, _ = import_graph(ROOT, typing_only=False)
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_packages():
    edges, _ = import_graph(ROOT, typing_only=False)
    packages = {p: set() for p in PACKAGES}
    for module, targets in edges.items():
        packages[module.split(".")[0]] |= {t.split(".")[0] for t in targets} - {module.split(".")[0]}
    cycle = find_cycle(packages)
    assert cycle is None, "package cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(("edges", "expected"), [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"d2"}, "d2": {"d"}}, ["d", "d2", "d"]),
])
def test_find_cycle_reports_the_cycle(edges, expected):
    assert find_cycle(edges) == expected


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    """A violation inside a function, and a relative import that closes a cycle, are both found."""
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("")
    (tmp_path / "defences").mkdir()
    (tmp_path / "defences" / "__init__.py").write_text("")
    (tmp_path / "attacks").mkdir()
    (tmp_path / "attacks" / "__init__.py").write_text("")
    (tmp_path / "attacks" / "one.py").write_text("def f():\n    from bench.records import read_json\n")
    (tmp_path / "defences" / "a.py").write_text("from .b import x\n")
    (tmp_path / "defences" / "b.py").write_text("from defences import a\nx = 1\n")
    assert layer_violations(tmp_path) == ["attacks.one imports bench"]
    assert find_cycle(import_graph(tmp_path)[0]) == ["defences.a", "defences.b", "defences.a"]


def test_typing_only_imports_count_for_layers_not_for_cycles(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    guarded = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from {} import {}\n"
    (tmp_path / "attacks" / "one.py").write_text(guarded.format("bench.grid", "Plan"))
    (tmp_path / "bench" / "grid.py").write_text("from bench.config import x\n")
    (tmp_path / "bench" / "config.py").write_text("x = 1\n" + guarded.format("bench.grid", "Plan"))
    assert layer_violations(tmp_path) == ["attacks.one imports bench"]
    cycle = find_cycle(import_graph(tmp_path)[0])
    assert cycle is not None and cycle[0] == cycle[-1] and sorted(cycle[:-1]) == ["bench.config", "bench.grid"]
    assert find_cycle(import_graph(tmp_path, typing_only=False)[0]) is None
