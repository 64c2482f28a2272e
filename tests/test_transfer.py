"""Saved adversarial examples and transfer cells, end to end on a tiny digits grid.

The saved points are the ones the record judged (perturbation sizes bit for bit, robust draws re-judged exactly on
the deterministic defences, statistically on a stochastic one); transfer cells evaluate them on other defences,
go stale when their source changes, and a bad `from` is refused before any work.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_GRID  # as pytest imports it (see tests/test_bad_inputs.py)

from attacks.base import lp_norms
from attacks.protocol import predict_draws
from bench import api, layout
from bench.conffiles import ConfigError
from bench.config import compose
from bench.evaluate import evaluation_subset
from bench.planfile import read_plan
from bench.records import load_records
from bench.run import plan_state, prepare, run, stale_reasons
from bench.training_stage import load_fitted_defence

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def transfer_grid(grid: dict) -> None:
    """Two sources (PGD on each defence, saving its points) and every source-target transfer cell."""
    grid["attacks"]["from_standard"] = {"name": "transfer", "from": "digits/standard/pgd"}
    grid["attacks"]["from_at"] = {"name": "transfer", "from": "digits/at/pgd"}
    grid["blocks"] = [
        {"name": "transfer", "scenarios": ["digits"], "defences": ["standard", "at"],
         "attacks": ["from_standard", "from_at"]},
        {"name": "sources", "scenarios": ["digits"], "defences": ["standard", "at"], "attacks": ["pgd"],
         "eval": {"save_adversarials": True}},
    ]


def write_grid(folder: Path, edit, name: str = "transfer_test") -> list[str]:
    grid = yaml.safe_load(yaml.safe_dump(TINY_GRID))
    edit(grid)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid))
    return [f"grid={path}", f"results_dir={folder / 'results'}", f"artifacts_dir={folder / 'artifacts'}",
            "device=cpu", "log_level=WARNING"]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """The transfer grid, run once: (its arguments, its records by label, its grid folder)."""
    folder = tmp_path_factory.mktemp("transfer")
    argv = write_grid(folder, transfer_grid)
    summary = run(compose(argv))
    assert summary["done"] == 6 and summary["failed"] == 0
    grid_folder = folder / "results" / "transfer_test"
    records = {f"{r['defence']}/{r['attack']}": r for r in load_records(grid_folder / "cells")}
    return argv, records, grid_folder


def test_saved_points_are_the_judged_ones_and_rejudge_exactly(ran):
    argv, records, grid_folder = ran
    plan = read_plan(layout.latest_plan_path(grid_folder))
    for defence in ("standard", "at"):
        record = records[f"{defence}/pgd"]
        saved = api.load_adversarials(grid_folder, cell=f"digits/{defence}/pgd")
        per_example = record["per_example"]
        assert saved.index.tolist() == per_example["index"] and saved.labels.tolist() == per_example["label"]
        assert saved.clean_draws.tolist() == per_example["clean_draws"]
        assert saved.robust_draws.tolist() == per_example["robust_draws"]
        assert saved.metadata["key"] == record["key"] and float(saved.metadata["robust_acc"]) == record["robust_acc"]
        index, images, labels = evaluation_subset(plan.scenario("digits"), record["n_examples"], None)
        # the sizes the record computed from the attack's output, bit for bit from the reloaded points
        assert lp_norms(saved.points - images, "Linf").tolist() == per_example["perturbation"]
        assert max(per_example["perturbation"]) <= record["eps"] + 1e-6
        cell = next(c for c in plan.cells if c.key == record["key"])
        model = load_fitted_defence(plan, cell.stage_key, torch.device("cpu"))
        batch = cell.eval.batch_size  # the evaluation's own batches: the same shapes run the same kernels
        rejudged = torch.cat([predict_draws(model, saved.points[i:i + batch], 1) for i in range(0, 24, batch)], 1)
        assert (rejudged == labels).T.int().tolist() == per_example["robust_draws"]
        assert api.load_adversarials(layout.cells_dir(grid_folder) / cell.record_name).index.tolist() == index.tolist()


def test_transfer_cells_judge_the_saved_points_on_each_defence(ran):
    _, records, grid_folder = ran
    for target in ("standard", "at"):
        for source in ("standard", "at"):
            record = records[f"{target}/from_{source}"]
            assert record["attack_name"] == "transfer" and record["attack_settings"]["source"] == f"digits/{source}/pgd"
            assert record["counts"] == {"forward_examples": 0, "backward_examples": 0}
            assert record["per_example"]["perturbation"] == records[f"{source}/pgd"]["per_example"]["perturbation"]
            if source == target:  # the examples replayed on the defence they were crafted on
                assert record["per_example"]["robust_draws"] == records[f"{source}/pgd"]["per_example"]["robust_draws"]
    table = (grid_folder / "tables" / "transfer.md").read_text()
    for source in ("standard", "at"):
        row = next(line for line in table.splitlines() if line.startswith(f"| digits/{source}/pgd "))
        shown = [f"{records[f'{source}/pgd']['robust_acc']:.3f}"] + \
                [f"{records[f'{target}/from_{source}']['robust_acc']:.3f}" for target in ("standard", "at")]
        assert [cell.split()[0] for cell in row.strip("| ").split(" | ")[3:]] == shown


def test_a_changed_source_makes_its_transfer_cells_stale(ran, edited_source):
    argv, records, _ = ran
    # other settings of the source: the source is a new cell, its transfer cells stale
    plan = prepare(compose(argv + ["attacks.pgd.steps=2", "dry_run=true"]))
    _, cell_state = plan_state(plan)
    states = {f"{c.defence_key}/{c.attack_key}": cell_state[c.key] for c in plan.cells}
    assert states == {"standard/pgd": "pending", "at/pgd": "pending", **{
        f"{t}/from_{s}": "stale" for t in ("standard", "at") for s in ("standard", "at")}}
    reasons = stale_reasons(plan, cell_state)
    assert any("source cell digits/at/pgd/seed0" in r for reason in reasons.values() for r in reason)
    # other code of the source's attack: the source and its transfer cells are stale
    edited_source("attacks/gradient.py")
    plan = prepare(compose(argv + ["dry_run=true"]))
    _, cell_state = plan_state(plan)
    assert set(cell_state.values()) == {"stale"}


@pytest.mark.parametrize("change, message", [
    (lambda g: g["attacks"]["from_at"].update({"from": "digits/at/nope"}), r"from='digits/at/nope' is not a cell"),
    (lambda g: g["attacks"]["from_at"].update({"from": "at/pgd"}), r"is not a cell of this grid"),
    (lambda g: g["blocks"][1].pop("eval"), r"does not save its adversarial examples"),
    (lambda g: g["blocks"][0].update({"n_examples": 12}), r"the examples must be the same"),
    (lambda g: g["attacks"]["from_at"].update({"eps": 0.3}), r"takes only 'from'"),
    (lambda g: g["attacks"].update({"again": {"name": "transfer", "from": "digits/at/from_standard"}})
     or g["blocks"][0]["attacks"].append("again"), r"is itself a transfer cell"),
])
def test_a_bad_source_is_refused_before_any_work(tmp_path, change, message):
    def edit(grid):
        transfer_grid(grid)
        change(grid)

    with pytest.raises(ConfigError, match=message):
        run(compose(write_grid(tmp_path, edit)))
    assert not (tmp_path / "results").exists() and not (tmp_path / "artifacts").exists()


NOISY_PLUGIN = '''
import torch
from defences.standard import StandardTraining

class NoisyStandard(StandardTraining):
    """The standard classifier behind Gaussian input noise: a stochastic defence."""
    stochastic = True
    def purify(self, x):
        return (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
'''


def test_stochastic_judgement_of_saved_points_agrees_statistically(tmp_path, monkeypatch):
    """On a stochastic defence each example's robust draws are Bernoulli(p_i) draws: the transfer cell's fresh
    K draws of the saved points and the source's recorded K draws must agree in total within 5 sigma."""
    (tmp_path / "noisy_plugin.py").write_text(textwrap.dedent(NOISY_PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("noisy_plugin", None)

    def edit(grid):
        grid["defences"] = {"noisy": {"name": "noisy_plugin:NoisyStandard", "epochs": 1}}
        grid["attacks"]["again"] = {"name": "transfer", "from": "digits/noisy/pgd"}
        grid["blocks"] = [{"name": "b", "scenarios": ["digits"], "defences": ["noisy"], "attacks": ["pgd", "again"],
                           "eval": {"save_adversarials": True}}]

    summary = run(compose(write_grid(tmp_path, edit) + ["report=false"]))
    assert summary["done"] == 2
    records = {r["attack"]: r for r in load_records(tmp_path / "results" / "transfer_test" / "cells")}
    recorded = torch.tensor(records["pgd"]["per_example"]["robust_draws"], dtype=torch.float64)
    fresh = torch.tensor(records["again"]["per_example"]["robust_draws"], dtype=torch.float64)
    assert records["again"]["draws"] == records["pgd"]["draws"] == 8
    saved = api.load_adversarials(tmp_path / "results" / "transfer_test", cell="digits/noisy/pgd")
    assert saved.robust_draws.tolist() == recorded.int().tolist()
    pooled = (recorded.mean(1) + fresh.mean(1)) / 2
    variance = (2 * 8 * pooled * (1 - pooled)).sum().item()
    difference = (recorded.sum() - fresh.sum()).item()
    assert variance > 0  # the noise makes the draws disagree: the comparison can fail
    assert abs(difference) <= 5 * variance ** 0.5


def test_an_interrupted_cell_resumes_with_the_points_it_saved(ran, tmp_path, monkeypatch):
    from bench import evaluate
    from bench.plan import Plan

    _, records, grid_folder = ran
    planned = read_plan(layout.latest_plan_path(grid_folder))
    plan = Plan(grid=planned.grid, options=planned.options.replace(results_dir=str(tmp_path)),
                stages=planned.stages, cells=planned.cells, scenarios=planned.scenarios)
    cell = next(c for c in plan.cells if c.key == records["at/pgd"]["key"])
    real, writes = evaluate.write_json_atomic, []

    def killed_after_the_first_batch(path, data):
        real(path, data)
        writes.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "write_json_atomic", killed_after_the_first_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate.run_eval_cell(plan, cell)
    points = layout.adversarials_path(plan, cell)
    assert [p.name for p in layout.adversarials_partial_dir(points).iterdir()] == ["batch-0.safetensors"]
    monkeypatch.setattr(evaluate, "write_json_atomic", real)
    assert evaluate.run_eval_cell(plan, cell) == "done"
    resumed, original = api.load_adversarials(points), api.load_adversarials(grid_folder, cell="digits/at/pgd")
    assert torch.equal(resumed.points, original.points) and resumed.robust_draws.tolist() == \
        original.robust_draws.tolist()
    assert not layout.adversarials_partial_dir(points).exists()


def test_a_saved_file_is_set_aside_never_overwritten(tmp_path):
    from bench import adversarials

    path = tmp_path / "points.safetensors"
    adversarials.write_atomic(path, {"points": torch.zeros(2)})
    adversarials.write_atomic(path, {"points": torch.ones(2)})
    kept = list((tmp_path / adversarials.HISTORY).iterdir())
    assert len(kept) == 1 and kept[0].name.startswith("points.safetensors.")
    from safetensors.torch import load_file

    assert load_file(str(kept[0]))["points"].tolist() == [0, 0] and load_file(str(path))["points"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="lacks the tensor"):
        adversarials.load(path)
