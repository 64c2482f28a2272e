"""Every bad user input is refused before any work: exit code 2, one `error:` line naming the problem, no
traceback, nothing written and nothing lost in the results and artifacts folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_GRID  # as pytest imports it: robustbench's wheel installs a `tests` package of its own

from bench.run import main as run_main

REPO = Path(__file__).resolve().parent.parent

# (arguments, words the one-line message must contain)
BAD_RUN_ARGUMENTS: list[tuple[list[str], list[str]]] = [
    (["n_examples=-5"], ["n_examples", "-5", ">= 1"]),
    (["n_examples=abc"], ["n_examples", "'abc'", "integer"]),
    (["n_examples=0"], ["n_examples", "0", ">= 1"]),
    (["n_examples=1.5"], ["n_examples", "1.5", "integer"]),
    (["threads=abc"], ["threads", "'abc'", "integer"]),
    (["threads=-1"], ["threads", "-1", ">= 0"]),
    (["dry_run=maybe"], ["dry_run", "'maybe'", "true or false"]),
    (["wait=sometimes"], ["wait", "'sometimes'", "true or false"]),
    (["retry_failed=2"], ["retry_failed", "2", "true or false"]),
    (["report=perhaps"], ["report", "'perhaps'", "true or false"]),
    (["device=tpu"], ["device", "'tpu'", "cuda:N"]),
    (["log_level=LOUD"], ["log_level", "'LOUD'", "WARNING"]),
    (["seeds=-1"], ["seeds", "-1", "integer >= 0"]),
    (["seeds=[0,0]"], ["seeds", "repeats"]),
    (["seeds=a,b"], ["seeds", "'a,b'", "comma-separated"]),
    (["seeds=[]"], ["seeds", "empty"]),
    (["grid=no_such_grid"], ["grid", "'no_such_grid'", "Valid:"]),
    (["executor=no_such"], ["executor", "'no_such'", "Valid:"]),
    (["no_such_option=1"], ["'no_such_option'", "Valid:"]),
    (["results_dir="], ["results_dir", "non-empty"]),
    (["eval.draws=0"], ["eval.draws", "0", ">= 1"]),
    (["eval.batch_size=0"], ["eval.batch_size", "0", ">= 1"]),
    (["eval.stochastic_draws=-2"], ["eval.stochastic_draws", "-2", ">= 1"]),
    (["eval.decision=best"], ["eval.decision", "'best'", "majority"]),
    (["eval.no_such=1"], ["no_such", "batch_size"]),
    (["defences.at.epochs=abc"], ["defences.at.epochs", "'abc'", "int"]),
    (["defences.at.optimiser=adamw"], ["defences.at", "optimiser", "'adamw'", "sgd"]),
    (["defences.at.lr=-1"], ["defences.at.lr", "-1", ">= 0"]),
    (["defences.at.lr=.inf"], ["defences.at.lr", "inf", "finite"]),
    (["defences.at.no_such=1"], ["defences.at", "'no_such'", "Valid:"]),
    (["defences.no_such.epochs=1"], ["'no_such'", "Valid:"]),
    (["defences.at.batch_size=0"], ["defences.at.batch_size", "0", ">= 1"]),
    (["defences.at.random_start=maybe"], ["defences.at.random_start", "'maybe'", "bool"]),
    (["defences.at.schedule=weird"], ["schedule", "'weird'", "piecewise"]),
    (["attacks.pgd.steps=0"], ["attacks.pgd.steps", "0", ">= 1"]),
    (["attacks.pgd.steps=abc"], ["attacks.pgd.steps", "'abc'", "int"]),
    (["attacks.pgd.loss=no_such"], ["attacks.pgd", "loss", "'no_such'", "valid"]),
    (["attacks.pgd.eps=-0.1"], ["attacks.pgd.eps", "-0.1", ">= 0"]),
    (["attacks.fgsm.norm=L3"], ["attacks.fgsm", "'L3'", "Linf"]),
    (["attacks.pgd.no_such=1"], ["attacks.pgd", "'no_such'", "Valid:"]),
    (["attacks.pgd.steps=[1"], ["cannot parse value", "'[1'"]),
    (["scenarios.digits.eps=abc"], ["scenarios.digits.eps", "'abc'", "float"]),
    (["scenarios.digits.eps=0"], ["digits", "eps", "> 0"]),
    (["scenarios.digits.norm=L3"], ["digits", "norm", "'L3'", "Linf"]),
    (["scenarios.digits.dataset=no_such"], ["digits", "dataset", "'no_such'", "Valid:"]),
    (["scenarios.no_such.eps=0.1"], ["scenario", "'no_such'", "Valid:"]),
    (["scenarios.digits.classifier=oops"], ["digits", "classifier", "'oops'", "train:<arch>"]),
    (["scenarios.digits.test_subset_seed=x"], ["scenarios.digits.test_subset_seed", "'x'", "int"]),
    (["executor=local", "local.max_parallel=abc"], ["local.max_parallel", "'abc'", "integer"]),
    (["local.max_parallel=2"], ["'local.max_parallel'", "Valid:"]),
    (["noequals"], ["'noequals'", "key=value"]),
]


def bad_grid(edit) -> dict:
    grid = yaml.safe_load(yaml.safe_dump(TINY_GRID))
    edit(grid)
    return grid


# (grid file content: text, or a dict dumped as YAML; words the message must contain)
BAD_GRID_FILES: list[tuple[str | dict, list[str]]] = [
    ("defences:\n  at: {name: at\nattacks: [\n", ["bad_grid.yaml", "not valid YAML", "line 3"]),
    ("- just\n- a list\n", ["bad_grid.yaml", "mapping"]),
    (bad_grid(lambda g: g["blocks"][0].update(defences=["at", "carsoo"])), ["carsoo", "Valid:"]),
    (bad_grid(lambda g: g.update(defences=["at"])), ["defences", "mapping"]),
    (bad_grid(lambda g: g.update(n_examples=-3)), ["n_examples", "-3", ">= 1"]),
    (bad_grid(lambda g: g.update(colour="red")), ["'colour'", "Valid:"]),
    (bad_grid(lambda g: g["blocks"][0].update(seeds="x")), ["seeds", "'x'"]),
    (bad_grid(lambda g: g["eval"].update(batch_size="big")), ["eval.batch_size", "'big'", "integer"]),
    (bad_grid(lambda g: g["blocks"][0].update(scenarios=["digitz"])), ["'digitz'", "Valid:"]),
    # a bad setting on the second defence: nothing, not even the first defence, may train
    (bad_grid(lambda g: g["defences"]["at"].update(attack_steps=-2)), ["defences.at.attack_steps", "-2"]),
]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Path, list[str]]:
    """A results and an artifacts folder with something in them (that must survive untouched)."""
    cells = tmp_path / "out" / "results" / "tiny_test" / "cells"
    cells.mkdir(parents=True)
    (cells / "kept.json").write_text('{"status": "done"}')
    artifacts = tmp_path / "out" / "artifacts" / "digits" / "standard-s0-x"
    artifacts.mkdir(parents=True)
    (artifacts / "defence.json").write_text("{}")
    grid = tmp_path / "tiny_test.yaml"
    grid.write_text(yaml.safe_dump(TINY_GRID))
    args = [f"grid={grid}", f"results_dir={tmp_path / 'out' / 'results'}",
            f"artifacts_dir={tmp_path / 'out' / 'artifacts'}", "device=cpu", "log_level=WARNING"]
    return tmp_path / "out", args


def check_refused(capsys, rc: int, words: list[str], before: dict, root: Path) -> None:
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert snapshot(root) == before, "something was written or lost"


@pytest.mark.parametrize(("arguments", "words"), BAD_RUN_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_RUN_ARGUMENTS])
def test_bad_run_argument_is_refused_before_work(workspace, capsys, arguments, words):
    root, base = workspace
    before = snapshot(root)
    rc = run_main(base + arguments)
    check_refused(capsys, rc, words, before, root)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_missing_gpu_is_refused_before_work(workspace, capsys):
    root, base = workspace
    before = snapshot(root)
    check_refused(capsys, run_main(base + ["device=cuda"]), ["device", "'cuda'", "no GPU"], before, root)


@pytest.mark.parametrize(("content", "words"), BAD_GRID_FILES, ids=[str(i) for i in range(len(BAD_GRID_FILES))])
def test_bad_grid_file_is_refused_before_work(workspace, tmp_path, capsys, content, words):
    root, base = workspace
    path = tmp_path / "bad_grid.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    before = snapshot(root)
    rc = run_main([f"grid={path}"] + base[1:])
    check_refused(capsys, rc, words, before, root)


def test_seeds_as_comma_separated_string_are_accepted(workspace, capsys):
    _, base = workspace
    assert run_main(base + ["seeds=0,1", "dry_run=true"]) == 0
    out = capsys.readouterr().out
    assert "seed0" in out and "seed1" in out


@pytest.mark.parametrize("module", ["bench.run", "bench.report", "bench.status", "bench.diagnose"])
def test_help_exits_zero_with_usage(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"python -m {module}" in done.stdout


@pytest.mark.parametrize(("module", "arguments", "word"), [
    ("bench.run", ["n_examples=-5", "dry_run=true"], "n_examples"),
    ("bench.report", ["colour=red"], "'colour=red'"),
    ("bench.status", ["grid=no_such_grid"], "no_such_grid"),
])
def test_entry_points_fail_with_one_line_and_code_2(tmp_path, module, arguments, word):
    done = subprocess.run([sys.executable, "-m", module, *arguments, f"results_dir={tmp_path}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0], done.stderr
    assert list(tmp_path.iterdir()) == []
