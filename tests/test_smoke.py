"""Smoke mode: a paper grid block runs every stage and cell to a record, at minimal budgets, on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench import smoke
from bench.config import compose, load_grid
from bench.run import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_budgets_shrink_monotonically_so_budget_variants_stay_distinct():
    assert [smoke.shrink(n, 1) for n in (1, 10, 20, 100, 1000)] == [1, 1, 2, 2, 3]
    assert smoke.shrink(5000, 10) == 13 and smoke.shrink(8, 10) == 8
    budgets = [smoke.attack_budget({"name": "pgd", "steps": n})["steps"] for n in (10, 20, 1000)]
    assert len(set(budgets)) == 3
    assert smoke.attack_budget({"name": "randaa"})["eot"] == 2


def test_defence_budgets_use_only_the_defences_own_settings():
    carso = smoke.defence_budget("carso")
    assert carso["epochs"] == 1 and carso["warmup_epochs"] == 1 and carso["samples"] == 2
    assert "pretrain_epochs" not in carso and "collapse_factor" not in carso
    assert smoke.defence_budget("at")["attack_steps"] == 2 and "samples" not in smoke.defence_budget("at")


def test_smoke_mode_moves_results_and_artifacts_into_smoke_folders(tmp_path):
    config = compose(["grid=carso_table2", "smoke=true", f"results_dir={tmp_path / 'r'}",
                      f"artifacts_dir={tmp_path / 'a'}"])
    smoke.apply(config)
    assert config.results_dir() == tmp_path / "r" / "smoke" / "carso_table2"
    assert config.options["artifacts_dir"] == str(tmp_path / "a" / "smoke")
    assert config.grid["n_examples"] == smoke.SMOKE_EXAMPLES


def test_a_paper_grid_block_runs_every_cell_in_smoke_mode(tmp_path: Path):
    paper = load_grid("atop_table7")
    block = {"name": "table7_smoke_block", "scenarios": ["cifar10"], "defences": ["standard", "atop_rt3_noft"],
             "attacks": ["fgsm_e2e", "pgd10_e2e", "pgd20_e2e"]}
    grid = {"description": "one block of atop_table7", "n_examples": 512, "defences": paper["defences"],
            "attacks": paper["attacks"], "blocks": [block]}
    path = tmp_path / "table7_block.yaml"
    path.write_text(yaml.safe_dump(grid))
    code = main([f"grid={path}", "smoke=true", "threads=1", "report=false", "log_level=WARNING",
                 f"results_dir={tmp_path / 'results'}", f"artifacts_dir={tmp_path / 'artifacts'}",
                 f"data_dir={tmp_path / 'no_data'}", f"model_dir={tmp_path / 'no_models'}"])
    assert code == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "smoke" / "table7_block" / "cells")
               .glob("*.json")]
    assert len(records) == 6 and all(r["status"] == "done" for r in records)
    assert {r["n_examples"] for r in records} == {smoke.SMOKE_EXAMPLES}
    steps = sorted(r["attack_settings"]["steps"] for r in records
                   if r["attack_name"] == "pgd" and r["defence"] == "standard")
    assert steps == [1, 2]  # PGD-10 and PGD-20 at smoke budgets, still two cells


def test_a_smoke_value_that_is_not_a_boolean_is_refused_before_any_work(capsys):
    assert main(["grid=demo", "smoke=maybe", "dry_run=true"]) == 2
    assert "smoke='maybe' (str) is not a boolean; valid: true or false" in capsys.readouterr().err
