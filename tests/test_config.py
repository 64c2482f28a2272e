"""Config composition: overrides, validation errors that list valid names, stable content keys."""

from __future__ import annotations

import pytest

from bench.conffiles import ConfigError
from bench.config import compose
from bench.grid import expand


def test_demo_grid_expands_with_shared_training_stages():
    plan = expand(compose([]))
    assert plan.grid == "demo"
    assert {c.defence_key for c in plan.cells} >= {"standard", "at"}
    # every attack cell of a defence shares that defence's one training stage
    stages_of = {}
    for cell in plan.cells:
        stages_of.setdefault((cell.scenario, cell.defence_key, cell.seed), set()).add(cell.stage_key)
    assert all(len(stages) == 1 for stages in stages_of.values())
    assert len(plan.stages) >= len(stages_of)


@pytest.mark.parametrize("argv, fragment", [
    (["grid=dmeo"], "Did you mean 'demo'"),
    (["executor=locl"], "Did you mean 'local'"),
    (["n_exampels=5"], "Did you mean 'n_examples'"),
    (["defences.att.epochs=3"], "Did you mean 'at'"),
    (["eval.drawz=3"], "Did you mean 'draws'"),
    (["scenarios.digit.eps=0.1"], "Did you mean 'digits'"),
    (["local.max_paralel=2", "executor=local"], "Did you mean 'max_parallel'"),
    (["grid"], "not of the form key=value"),
    (["eval.decision=best"], "valid: single, majority, worst"),
])
def test_bad_overrides_say_what_is_valid(argv, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        compose(argv)


def test_unknown_defence_setting_is_reported_at_expansion(tiny_grid):
    argv = tiny_grid(lambda g: g["defences"]["at"].update(epochz=3))
    with pytest.raises(ConfigError, match="unknown setting.*'epochz'.*Did you mean 'epochs'"):
        expand(compose(argv))


def test_unknown_attack_name_lists_registry(tiny_grid):
    argv = tiny_grid(lambda g: g["attacks"]["pgd"].update(name="pgdd"))
    with pytest.raises(ConfigError, match="unknown attack 'pgdd'.*Did you mean 'pgd'"):
        expand(compose(argv))


def test_overrides_reach_stage_params_and_change_keys(tiny_grid):
    base = expand(compose(tiny_grid()))
    again = expand(compose(tiny_grid()))
    assert [c.key for c in base.cells] == [c.key for c in again.cells]  # keys are stable
    changed = expand(compose(tiny_grid() + ["defences.at.epochs=3"]))
    at_stage = next(s for s in changed.stages.values() if s.defence_key == "at")
    assert at_stage.params["epochs"] == 3
    std_keys = {c.key for c in base.cells if c.defence_key == "standard"}
    assert std_keys == {c.key for c in changed.cells if c.defence_key == "standard"}
    assert not ({c.key for c in base.cells if c.defence_key == "at"} & {c.key for c in changed.cells})


def test_scenario_override_changes_attack_eps(tiny_grid):
    plan = expand(compose(tiny_grid() + ["scenarios.digits.eps=0.05"]))
    assert all(c.attack_params["eps"] == 0.05 for c in plan.cells)
    assert all(s.identity["scenario"]["eps"] == 0.05 for s in plan.stages.values())


def test_n_examples_and_seeds_overrides(tiny_grid):
    plan = expand(compose(tiny_grid() + ["n_examples=7", "seeds=[0,1]"]))
    assert {c.n_examples for c in plan.cells} == {7}
    assert {c.seed for c in plan.cells} == {0, 1}
    assert len(plan.stages) == 4


def test_values_are_data_never_code(tiny_grid):
    # a plain string, never evaluated: refused by the setting's own check, quoted as it was given
    with pytest.raises(ConfigError, match=r"schedule=\"__import__\('os'\)\.system\('false'\)\" is not valid"):
        expand(compose(tiny_grid() + ["defences.at.schedule=__import__('os').system('false')"]))


def test_a_bad_report_section_is_refused_when_the_grid_is_planned(tiny_grid, tmp_path, capsys):
    """Composition reads the section as data; planning checks it against the report's layouts, before any work."""
    from bench.run import main as run_main

    arguments = tiny_grid(lambda grid: grid.update(report={"carso_tabel2": {}}))
    config = compose(arguments)
    with pytest.raises(ConfigError, match=r"report section: .*unknown layout\(s\) \['carso_tabel2'\].*carso_table2"):
        expand(config)
    assert run_main(arguments) == 2
    assert "report section" in capsys.readouterr().err
    assert not (tmp_path / "results").exists() and not (tmp_path / "artifacts").exists()


def test_the_api_composes_the_same_run_from_pairs_as_the_command_line(tiny_grid, tmp_path):
    from bench.api import command_line
    from bench.config import compose_pairs

    options = {"results_dir": tmp_path / "r", "seeds": (0, 1), "attacks.fgsm.eps": 0.25, "eval.draws": 2}
    grid = tiny_grid()[0].partition("=")[2]
    from_pairs = compose_pairs([("grid", grid), ("results_dir", str(tmp_path / "r")), ("seeds", [0, 1]),
                                ("attacks.fgsm.eps", 0.25), ("eval.draws", 2)])
    from_argv = compose(command_line(grid, options))
    assert from_pairs == from_argv and from_pairs.run_options.seeds == [0, 1]
    assert from_pairs.eval_options.draws == 2 and from_pairs.grid["attacks"]["fgsm"]["eps"] == 0.25
