"""Every third-party package the project imports is declared in pyproject.toml, and every declared one is imported.

Import names map to distributions through the installed metadata (`yaml` is pyyaml, `sklearn` scikit-learn), so a
module that imports an undeclared package, or a dependency nothing imports any more, fails here.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = {"attacks", "defences", "bench", "tests"}


# imported by name, not by an import statement: robustbench only while bench/zoo/robustbench.py aliases `autoattack`
IMPORTED_BY_NAME = {"robustbench": ROOT / "bench" / "zoo" / "robustbench.py"}


def optional_imports(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside `try: ... except ImportError`: optional (a benchmark's reference row)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            lines.update(inner.lineno for stmt in node.body for inner in ast.walk(stmt)
                         if isinstance(inner, ast.Import | ast.ImportFrom))
    return lines


def imported_top_level_names(folders: list[str]) -> set[str]:
    names: set[str] = set()
    # the tests import each other (conftest, test_x) as top-level modules
    local = {path.stem for path in (ROOT / "tests").rglob("*.py")} if "tests" in folders else set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            optional = optional_imports(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import) and node.lineno not in optional:
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                      and node.lineno not in optional):
                    names.add(node.module.split(".")[0])
    names -= local
    names |= {name for name, path in IMPORTED_BY_NAME.items()
              if path.relative_to(ROOT).parts[0] in folders and f'"{name}.' in path.read_text()}
    return names - set(sys.stdlib_module_names) - PROJECT_PACKAGES - {"__future__"}


def distributions_of(import_names: set[str]) -> set[str]:
    mapping = importlib.metadata.packages_distributions()
    return {canonical(dist) for name in import_names for dist in mapping.get(name, [name])}


def canonical(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {name: {canonical(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    return {canonical(r) for r in project["dependencies"]}, extras


def test_what_the_packages_import_is_a_declared_dependency():
    core, extras = declared()
    used = distributions_of(imported_top_level_names(["attacks", "defences", "bench"]))
    undeclared = used - core - extras["robustbench"] - extras["dev"]
    assert not undeclared, f"imported but not declared in pyproject.toml: {sorted(undeclared)}"


def test_every_declared_dependency_is_imported():
    core, extras = declared()
    used = distributions_of(imported_top_level_names(["attacks", "defences", "bench", "tests"]))
    # pytest and ruff run as tools; setuptools only pins what robustbench imports (pkg_resources)
    tools = {"pytest", "ruff", "setuptools"}
    unused = (core | extras["dev"] | extras["robustbench"]) - used - tools
    assert not unused, f"declared in pyproject.toml but imported nowhere: {sorted(unused)}"


def test_the_tests_import_only_declared_packages():
    core, extras = declared()
    used = distributions_of(imported_top_level_names(["tests"]))
    undeclared = used - core - extras["dev"] - extras["robustbench"]
    assert not undeclared, f"the tests import undeclared packages: {sorted(undeclared)}"
