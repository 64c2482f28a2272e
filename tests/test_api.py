"""The Python API (bench/api.py): the README's example runs, records equal the runner's, errors equal the CLI's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bench.api import command_line, evaluate, load_results, run_grid
from bench.conffiles import ConfigError, error_line
from bench.config import compose
from bench.evaluate import evaluation_subset
from bench.fingerprint import CELL_ROOTS, STAGE_ROOTS, code_closure
from bench.grid import expand
from bench.run import main as run_main
from bench.training_stage import load_fitted_defence

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parent.parent
DEMO_CELLS = ROOT / "results" / "demo" / "cells"
# Fields of a record that depend on when and where it was computed, or on how the defence was named.
NOT_RESULTS = {"attack_seconds", "wall_seconds", "started_at", "finished_at", "hardware", "host", "defence_name",
               "defence_params"}
NOISY_DEFENCE = '''
from dataclasses import dataclass

import torch

from defences.base import Defence


class Noisy(Defence):
    stochastic = True
    has_purifier = True

    @dataclass
    class Params:
        sigma: float = 0.3

    def purify(self, x):
        return (x + self.params.sigma * torch.randn_like(x)).clamp(0, 1)
'''


def test_readme_python_api_example_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    start = text.index("## Python API")
    block = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert block, "no python block in the README's Python API section"
    script = tmp_path / "api_example.py"
    script.write_text(block.group(1))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "BENCH_HASH_CACHE": str(tmp_path / "hashes.json")}
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "carso" in done.stdout and "Linf eps=0.15" in done.stdout
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before  # the example wrote nothing into the repository


def _copy_record(source: Path, folder: Path, **changes) -> dict:
    record = {**json.loads(source.read_text()), **changes}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / source.name).write_text(json.dumps(record))
    return record


def test_load_results_reads_two_grids_and_skips_bad_files(tmp_path):
    demo = sorted(DEMO_CELLS.glob("*.json"))[:3]
    first = [_copy_record(path, tmp_path / "root" / "demo" / "cells") for path in demo[:2]]
    other = _copy_record(demo[2], tmp_path / "root" / "nested" / "other" / "cells", grid="other")
    cells = tmp_path / "root" / "demo" / "cells"
    (cells / "truncated.abc.json").write_text('{"schema_version": 2, "status": "do')
    (cells / "incomplete.abd.json").write_text(json.dumps({"schema_version": 2, "status": "done", "key": "abd"}))
    _copy_record(demo[2], cells / "history")  # an archived attempt: not a current record

    with pytest.warns(UserWarning) as caught:
        frame = load_results(tmp_path / "root")
    assert sorted(str(w.message).split(":")[0] for w in caught) == sorted(
        f"skipped {cells / name}" for name in ("truncated.abc.json", "incomplete.abd.json"))
    assert len(frame) == 3 and sorted(frame["grid"]) == ["demo", "demo", "other"]
    by_key = frame.set_index("key")
    for record in [*first, other]:
        row = by_key.loc[record["key"]]
        assert (row["scenario"], row["defence"], row["attack"], row["seed"], row["n"]) == (
            record["scenario"], record["defence"], record["attack"], record["seed"], record["n_examples"])
        assert (row["clean_acc"], row["robust_acc"]) == (record["clean_acc"], record["robust_acc"])
        assert [row["robust_ci_low"], row["robust_ci_high"]] == record["robust_ci"]
        assert row["stochastic"] == record["stochastic"] and row["status"] == "done"
        assert row["git_commit"] == record["git_commit"]
    assert (cells / "truncated.abc.json").exists() and not (cells / "quarantine").exists()  # nothing moved
    with pytest.warns(UserWarning, match="skipped"):
        assert len(load_results(tmp_path / "root" / "demo")) == 2  # one grid folder
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_results(tmp_path / "nowhere")


def _grid_options(tmp_path: Path) -> tuple[Path, dict]:
    """A grid with a deterministic and a stochastic defence (a user module), a few seconds on a CPU."""
    (tmp_path / "api_test_defences.py").write_text(NOISY_DEFENCE)
    grid = tmp_path / "api_grid.yaml"
    grid.write_text(yaml.safe_dump({
        "n_examples": 24, "seeds": [3], "eval": {"batch_size": 12, "stochastic_draws": 3},
        "defences": {"standard": {"name": "standard", "epochs": 1},
                     "noisy": {"name": "api_test_defences:Noisy", "sigma": 0.3}},
        "attacks": {"pgd": {"name": "pgd", "steps": 2}},
        "blocks": [{"scenarios": ["digits"], "defences": ["standard", "noisy"], "attacks": ["pgd"]}]}))
    return grid, {"results_dir": tmp_path / "results", "artifacts_dir": tmp_path / "artifacts", "device": "cpu",
                  "log_level": "WARNING", "report": False}


def test_evaluate_reproduces_the_grid_cells_records(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("api_test_defences", None)
    grid, options = _grid_options(tmp_path)
    frame = run_grid(grid, **options)
    assert frame.attrs["summary"]["done"] == 2 and set(frame["grid"]) == {"api_grid"}
    records = {json.loads(Path(p).read_text())["key"]: json.loads(Path(p).read_text()) for p in frame["path"]}

    config = compose(command_line(grid, options))
    plan = expand(config)
    for cell in plan.cells:
        record = records[cell.key]
        defence = load_fitted_defence(plan, cell.stage_key, torch.device("cpu"))
        index, images, labels = evaluation_subset(config.scenario(cell.scenario), cell.n_examples, None)
        settings = {k: v for k, v in cell.attack_params.items() if k != "name"}
        result = evaluate(defence, cell.attack_name, images, labels, seed=cell.seed, settings_key=cell.settings_key,
                          index=index.tolist(), batch_size=12, stochastic_draws=3, **settings)
        result = json.loads(json.dumps(result, default=str))  # as a record file holds it
        compared = set(result) - NOT_RESULTS
        assert {"per_example", "robust_acc", "robust_ci", "clean_ci", "counts", "attack_budget",
                "attack_settings", "draws", "robust_correct"} <= compared
        assert {name: result[name] for name in compared} == {name: record[name] for name in compared}
        assert ("randomness_audit" in result) == (cell.defence_key == "noisy")
    assert records[next(c.key for c in plan.cells if c.defence_key == "noisy")]["draws"] == 3


@pytest.mark.parametrize("change, message", [
    ({"attacks.pgd.stepz": 3}, "stepz"),
    ({"n_examples": 0}, "n_examples"),
    ({"eval.decision": "best"}, "decision"),
])
def test_run_grid_raises_the_command_lines_error_before_any_work(tmp_path, capsys, change, message):
    grid, options = _grid_options(tmp_path)
    options = {**options, **change}
    with pytest.raises(ConfigError, match=message) as raised:
        run_grid(grid, **options)
    assert run_main(command_line(grid, options)) == 2
    assert capsys.readouterr().err.strip() == error_line(raised.value)
    assert not (tmp_path / "results").exists() and not (tmp_path / "artifacts").exists()


def test_run_grid_unknown_grid_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown grid 'demoo'.*Did you mean 'demo'"):
        run_grid("demoo", results_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_evaluate_checks_its_inputs():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    with pytest.raises(ConfigError, match=r"eval.decision='best' \(str\) is not valid; valid: single, majority, worst"):
        evaluate(model, "fgsm", x, y, decision="best")
    with pytest.raises(TypeError, match="already built"):
        from attacks import build

        evaluate(model, build("fgsm", eps=0.1), x, y, eps=0.2)
    with pytest.raises(ValueError, match="same examples"):
        evaluate(model, "fgsm", x, y[:3])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate(model, "fgsm", x * 3, y)


def test_evaluate_a_plain_module_counts_passes_and_keeps_robust_below_clean():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(10, 1, 2, 2), torch.randint(0, 3, (10,))
    record = evaluate(model, "fgsm", x, y, eps=0.1, batch_size=4)
    clean, robust = record["clean_correct"], record["robust_correct"]
    assert record["clean_acc"] == pytest.approx(sum(clean) / 10)
    assert record["robust_acc"] == pytest.approx(sum(robust) / 10)
    assert all(r <= c for r, c in zip(robust, clean, strict=True))
    assert record["counts"]["backward_examples"] == 10 and record["draws"] == 1 and not record["stochastic"]
    assert record["per_example"]["index"] == list(range(10))
    assert max(record["per_example"]["perturbation"]) <= 0.1 + 1e-6
    assert "randomness_audit" not in record


def test_the_api_is_outside_every_results_code_closure():
    """bench/api.py calls the runner but computes no grid result: editing it must not make a record stale. (It
    is not imported by bench/__init__.py, which every closure holds as the parent package.)"""
    closure = code_closure((*STAGE_ROOTS, *CELL_ROOTS, "defences.carso", "defences.atop", "attacks.adaptive"))
    assert "bench/__init__.py" in closure and "bench/api.py" not in closure


def test_run_grid_dry_run_returns_an_empty_frame_and_the_plan_size(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("api_test_defences", None)
    grid, options = _grid_options(tmp_path)
    frame = run_grid(grid, dry_run=True, **options)
    assert frame.empty and list(frame.columns)[:3] == ["grid", "scenario", "defence"]
    assert frame.attrs["summary"] == {"dry_run": True, "cells": 2}
