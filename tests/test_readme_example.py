"""The README's worked example of a user defence runs as written (with smaller budgets)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from bench.config import compose
from bench.run import run

README = Path(__file__).resolve().parent.parent / "README.md"


def _block(text: str, language: str, after: str) -> str:
    start = text.index(after)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    assert match, f"no {language} block after {after!r} in the README"
    return match.group(1)


def test_worked_example_defence_trains_and_is_attacked(tmp_path, monkeypatch):
    text = README.read_text()
    (tmp_path / "my_defences.py").write_text(_block(text, "python", "A worked example"))
    grid = tmp_path / "my_grid.yaml"
    grid.write_text(_block(text, "yaml", "and a grid `my_grid.yaml`"))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_defences", None)
    summary = run(compose([
        f"grid={grid}", f"results_dir={tmp_path / 'results'}", f"artifacts_dir={tmp_path / 'artifacts'}",
        "n_examples=12", "defences.at.epochs=1", "defences.at.attack_steps=2", "defences.at.collapse_factor=0",
        "defences.median.epochs=1", "defences.median.collapse_factor=0", "attacks.pgd.steps=2",
        "attacks.bpda.steps=2", "log_level=WARNING", "device=cpu", "report=false",
    ]))
    assert summary["done"] == 4 and summary["failed"] == 0
