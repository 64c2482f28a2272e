"""The harness's rooms: typed options carried by the plan (and read back from older plans), executor options
with one home for their defaults, the results layout and the record builders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import layout, records
from bench.conffiles import ConfigError, load_conf
from bench.config import compose
from bench.executors import REGISTRY as EXECUTORS
from bench.executors import make_executor
from bench.executors.slurm import SlurmOptions
from bench.grid import expand
from bench.options import EvalOptions, RunOptions
from bench.plan import Plan
from bench.planfile import read_plan, write_plan
from bench.validation import SettingError


@pytest.fixture()
def plan(tiny_grid) -> Plan:
    return expand(compose([*tiny_grid(), "scenarios.digits.eps=0.2", "eval.draws=2"]))


def test_plan_json_round_trips_typed_options_and_resolved_scenarios(plan: Plan, tmp_path: Path) -> None:
    path = write_plan(plan, tmp_path / "grid")
    assert path.parent == layout.plan_dir(tmp_path / "grid") and layout.latest_plan_path(tmp_path / "grid").exists()
    read = read_plan(path)
    assert isinstance(read.options, RunOptions) and read.options == plan.options
    assert read.options.device == "cpu" and read.options.log_level == "WARNING"
    assert read.cells == plan.cells and read.stages == plan.stages
    assert all(isinstance(cell.eval, EvalOptions) and cell.eval.draws == 2 for cell in read.cells)
    # the job sees the scenario as planned (the override applied), without reading its conf file again
    assert read.scenario("digits").eps == 0.2 != load_conf("scenario", "digits")["eps"]
    assert {cell.stage_key for cell in read.cells} == set(read.stages)


def test_a_plan_of_the_previous_format_is_read(plan: Plan, tmp_path: Path) -> None:
    """Format 1: no "format", cells name their stage `stage`, options carry the scenario overrides."""
    current = plan.to_json()
    old = {"grid": current["grid"], "stages": current["stages"],
           "options": {**current["options"], "scenario_overrides": {"digits": {"eps": 0.2}}},
           "cells": [{("stage" if k == "stage_key" else k): v for k, v in cell.items()} for cell in current["cells"]]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(old))
    read = read_plan(path)
    assert read.cells == plan.cells and read.scenarios == plan.scenarios and read.options == plan.options


def test_run_options_are_checked_once_with_the_usual_messages() -> None:
    with pytest.raises(SettingError, match=r"threads=-1 is out of range; valid: an integer >= 0"):
        RunOptions.from_dict({"threads": -1})
    with pytest.raises(SettingError, match="unknown option 'thread'.*threads"):
        RunOptions.from_dict({"thread": 1})
    with pytest.raises(SettingError, match="eval.decision='best'"):
        EvalOptions.from_dict({"decision": "best"})
    assert RunOptions.from_dict({"seeds": "0,2"}).seeds == [0, 2]
    assert EvalOptions(draws=1, stochastic_draws=5).draws_for(True) == 5


def test_executor_option_defaults_have_one_home_the_conf_file() -> None:
    conf = load_conf("executor", "slurm")
    assert SlurmOptions.from_dict({}).to_dict() == conf  # array_parallelism included
    assert SlurmOptions.from_dict({"array_parallelism": 3}).array_parallelism == 3
    with pytest.raises(SettingError, match="array_paralelism.*array_parallelism"):
        SlurmOptions.from_dict({"array_paralelism": 3})
    with pytest.raises(SettingError, match="poll_s='soon'"):
        SlurmOptions.from_dict({"poll_s": "soon"})
    executor = make_executor("slurm", {"array_parallelism": 5}, {"wait": False})
    assert executor.options.array_parallelism == 5 and executor.options.profile == conf["profile"]
    assert executor.run_options.wait is False


def test_every_executor_has_options_a_run_and_a_describe(plan: Plan) -> None:
    for name in EXECUTORS.names():
        executor = make_executor(name, {}, plan.options)
        described = executor.describe(plan, [], [c.key for c in plan.cells])
        assert described is None or described.startswith("SLURM submission"), (name, described)


def test_a_bad_executor_option_is_an_error_line_before_work(tiny_grid) -> None:
    with pytest.raises(ConfigError, match="slurm.poll_s='x'"):
        compose([*tiny_grid(), "executor=slurm", "slurm.poll_s=x"])


def test_stage_state_from_its_artifact_folder(tmp_path: Path) -> None:
    folder = layout.stage_artifact_dir(tmp_path, "digits", "at", 0, "abc")
    assert layout.stage_file_state(folder) is None
    layout.stage_failed_path(folder).parent.mkdir(parents=True)
    layout.stage_failed_path(folder).write_text("{}")
    assert layout.stage_file_state(folder) == "failed"
    layout.stage_done_path(folder).write_text("{}")
    assert layout.stage_file_state(folder) == "done" and layout.stage_is_done(folder)


def test_failed_records_of_both_builders_validate(plan: Plan) -> None:
    cell = plan.cells[0]
    died = records.failed_record(records.cell_fields(cell), "SLURM job 7 ended in state TIMEOUT", log="x.err")
    crashed = records.failed_record(records.run_fields(cell, plan.stages[cell.stage_key], 0.0), "Traceback ...")
    for record in (died, crashed):
        assert records.validate_record(record) == [] and record["status"] == "failed"
        assert record["stage"] == cell.stage_key and record["key"] == cell.key
    assert crashed["eval_settings"] == cell.eval.to_dict() and crashed["settings_key"] == cell.settings_key
    done = records.done_record(records.cell_fields(cell), {"clean_acc": 1.0})
    assert records.validate_record(done)[0].startswith("missing")  # a result needs its result fields


def test_an_unreadable_plan_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"format": 2, "grid": "g", "options": {}, "stages": {}}))
    with pytest.raises(ConfigError, match="plan.json is not a plan this version of bench can read.*'scenarios'"):
        read_plan(path)
