"""bench/layout.py owns every path of the results, artifacts and job folders, checked from the source.

Outside layout.py no module of `bench` may spell one of its folder or file names as a path: as an operand of
`/`, as an argument of `Path(...)`, `.with_name`, `.glob`, `.joinpath`, as the start of a relative path string
(`"cells/..."`, `f"figures/{name}"`), as a module constant named like a folder or file (`CELLS_FOLDER =
"cells"`), or as a name pattern of their own (`progress-*.pt`, the job id placeholder `%j`); a file name of the
layout (`"summary.csv"`) is a path wherever it stands. Docstrings, comments and prose are not paths and are not
read. The names a lower layer owns (defences.base's `defence.json` and `progress-{phase}.pt`) stay there;
layout.py takes them from it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from bench import layout

ROOT = Path(__file__).resolve().parent.parent
NAMES = {layout.PLAN_DIR, layout.LATEST_PLAN, layout.JOB_BOOK, layout.CELLS, layout.HISTORY, layout.QUARANTINE,
         layout.DIAGNOSTICS, layout.STAGE_DONE, layout.STAGE_FAILED, layout.SMOKE, layout.TABLES, layout.FIGURES,
         layout.SUMMARY_MD, layout.SUMMARY_CSV, layout.REPORT_PAGE}
FOLDERS = {layout.PLAN_DIR, layout.CELLS, layout.HISTORY, layout.QUARANTINE, layout.DIAGNOSTICS, layout.SMOKE,
           layout.TABLES, layout.FIGURES}
FILES = {name for name in NAMES if "." in name.strip(".")}  # plan.json, summary.md, ...: paths wherever they are
OWN_PATTERNS = ("progress-", layout.JOB_ID_PLACEHOLDER)
PATH_CALLS = {"Path", "PurePath", "joinpath", "with_name", "glob", "rglob"}
PATHLIKE_CONSTANT = ("FOLDER", "DIR", "FILE", "PATH")


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _text(node: ast.AST) -> str | None:
    """A string constant, or the literal start of an f-string."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return None


def _spelled(node: ast.AST, docstrings: set[int]) -> list[str]:
    """The layout names `node` spells as a path (empty for anything else)."""
    found: list[str | None] = []
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        found += [_text(side) for side in (node.left, node.right)]
    elif isinstance(node, ast.Call):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        found += [_text(arg) for arg in node.args] if name in PATH_CALLS else []
    elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.endswith(PATHLIKE_CONSTANT)
                                              for t in node.targets):
        found.append(_text(node.value))
    hits = [text for text in found if text in NAMES]
    text = _text(node) if isinstance(node, (ast.Constant, ast.JoinedStr)) and id(node) not in docstrings else None
    relative = text is not None and "/" in text and text.split("/")[0] in FOLDERS
    if text and (any(pattern in text for pattern in OWN_PATTERNS) or relative or text in FILES):
        hits.append(text)
    return hits


def spelled_paths(root: Path) -> list[str]:
    """`file:line: 'name'` for every layout path spelled in root/bench outside bench/layout.py."""
    problems = []
    for path in sorted((root / "bench").rglob("*.py")):
        if path.relative_to(root).as_posix() == "bench/layout.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        docstrings = _docstrings(tree)
        found = {(node.lineno, text) for node in ast.walk(tree) for text in _spelled(node, docstrings)}
        problems += [f"{path.relative_to(root).as_posix()}:{line}: {text!r}" for line, text in sorted(found)]
    return problems


def test_every_results_artifacts_and_jobs_path_comes_from_layout():
    problems = spelled_paths(ROOT)
    assert not problems, "paths spelled outside bench/layout.py (ask bench.layout for them):\n" + "\n".join(problems)


def test_the_check_finds_each_kind_of_spelled_path_and_nothing_else(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "layout.py").write_text('CELLS = "cells"\nx = root / "cells"\n')  # layout may
    (tmp_path / "bench" / "bad.py").write_text(
        '"""Writes cells/ and summary.md (a docstring: prose)."""\n'
        'SMOKE_FOLDER = "smoke"\n'
        'a = folder / "diagnostics" / name\n'
        'b = Path("summary.md")\n'
        'c = folder.glob("progress-*.pt")\n'
        'd = f"figures/{name}.png"\n'
        'e = root / grid / "%j"\n'
        'f = out.with_name("index.html")\n'
        'g = [*files, "summary.csv"]\n')
    (tmp_path / "bench" / "fine.py").write_text(
        'label = "cells"\n'                          # a table's label, not a path
        'text = f"{n} record(s) in cells/ belong to no cell"\n'
        'note = "the records in <code>cells/</code>"\n'
        'rows = {"smoke": "random weights"}\n'
        'PROFILE_DIR = "profiles"\n'
        'g = folder / layout.CELLS\n')
    assert spelled_paths(tmp_path) == [
        "bench/bad.py:2: 'smoke'", "bench/bad.py:3: 'diagnostics'", "bench/bad.py:4: 'summary.md'",
        "bench/bad.py:5: 'progress-*.pt'", "bench/bad.py:6: 'figures/'", "bench/bad.py:7: '%j'",
        "bench/bad.py:8: 'index.html'", "bench/bad.py:9: 'summary.csv'"]
