"""No function over MAX_LINES lines outside the tests (the developer guide's "functions under ~50 lines").

A function's length runs from its `def` line to its last line, docstring and nested functions included; a
nested function is also measured on its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("attacks", "defences", "bench")
MAX_LINES = 50


def long_functions(root: Path, max_lines: int = MAX_LINES) -> list[str]:
    """'file:line name (N lines)' for every function of the project's packages longer than `max_lines`."""
    offenders = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = node.end_lineno - node.lineno + 1
                    if length > max_lines:
                        offenders.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return offenders


def test_no_function_over_the_limit():
    offenders = long_functions(ROOT)
    assert not offenders, f"functions over {MAX_LINES} lines:\n" + "\n".join(offenders)


def test_the_measure_counts_def_to_last_line(tmp_path):
    (tmp_path / "bench").mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES - 1))
    (tmp_path / "bench" / "mod.py").write_text(f"def fits():\n{body}\n\ndef too_long():\n{body}    return 0\n")
    assert long_functions(tmp_path) == [f"bench/mod.py:{MAX_LINES + 3} too_long ({MAX_LINES + 1} lines)"]
