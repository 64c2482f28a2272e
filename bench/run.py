"""`python -m bench.run grid=NAME key=value ...`: plan a grid, run what is not done yet, render the report.

With no arguments it runs the embedded `demo` grid (scikit-learn's digits, a few minutes on a laptop CPU).
`dry_run=true` prints the plan (training stages, cells, what is done, each attack's budget) and stops.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from attacks.progress import format_seconds
from bench import layout, records
from bench.conffiles import ConfigError, available, error_line
from bench.config import RUN_DEFAULTS, RunConfig, compose
from bench.executors import REGISTRY as EXECUTORS
from bench.executors import Executor, make_executor
from bench.grid import expand
from bench.logs import configure_logging
from bench.options import ExecutorOptions
from bench.plan import Plan
from bench.planfile import write_plan
from bench.runtime import configure_threads
from bench.validation import SettingError

LOG = logging.getLogger("bench.run")
USAGE = f"""usage: python -m bench.run [grid=NAME] [executor=NAME] [key=value ...]

grids: {', '.join(available('grid'))}
executors: {', '.join(available('executor'))}
run options (defaults): {', '.join(f'{k}={v}' for k, v in RUN_DEFAULTS.items())}
also: defences.<key>.<setting>=V  attacks.<key>.<setting>=V  scenarios.<name>.<field>=V  eval.<setting>=V
      <executor>.<option>=V
python -m bench.run list: every grid (what it is for), scenario, defence, attack and executor, one line each
"""


def plan_state(plan: Plan) -> tuple[dict[str, str], dict[str, str]]:
    """Status of every stage (done / failed / pending) and every cell (done / failed / stale / pending, as
    bench.records.cell_state says)."""
    stage_state = {key: layout.stage_file_state(stage.artifact_dir) or "pending"
                   for key, stage in plan.stages.items()}
    cell_state = {cell.key: records.cell_state(plan, cell) or "pending" for cell in plan.cells}
    return stage_state, cell_state


def stale_reasons(plan: Plan, cell_state: dict[str, str]) -> dict[str, list[str]]:
    """For each stale cell, the code files and inputs that changed since its older record was computed."""
    reasons = {}
    for cell in plan.cells:
        if cell_state[cell.key] != "stale":
            continue
        path = layout.record_path(plan, cell)
        older = [r for _, r in records.same_settings_records(path.parent, cell.record_name, cell.settings_key)]
        single = Plan(grid=plan.grid, options=plan.options, stages=plan.stages, cells=[cell],
                      scenarios=plan.scenarios)
        changed = {name for entry in records.stale_records(older, single) for name in entry["changed"]}
        reasons[cell.key] = sorted(changed)
    return reasons


def work_to_do(plan: Plan, stage_state: dict[str, str], cell_state: dict[str, str],
               retry_failed: bool) -> tuple[list[list[str]], list[str]]:
    """The cells still to evaluate and the stages they need (with their bases), level by level."""
    runnable = {"pending", "stale", "failed"} if retry_failed else {"pending", "stale"}
    cells = [c for c in plan.cells if cell_state[c.key] in runnable]
    needed = {key for cell in cells for key in plan.stage_chain(cell.stage_key)}
    levels = [[s.key for s in level if s.key in needed and stage_state[s.key] != "done"]
              for level in plan.stage_levels()]
    return [level for level in levels if level], [c.key for c in cells]


def describe_plan(plan: Plan, stage_state: dict[str, str], cell_state: dict[str, str]) -> str:
    lines = [f"grid {plan.grid}: {len(plan.stages)} training stages, {len(plan.cells)} evaluation cells"]
    for depth, level in enumerate(plan.stage_levels()):
        for stage in level:
            base = f" (on {plan.stages[stage.base_stage].defence_key})" if stage.base_stage else ""
            lines.append(f"  train[{depth}] {stage.label:<40} {stage.defence_name}{base}  [{stage_state[stage.key]}]")
    reasons = stale_reasons(plan, cell_state)
    for cell in plan.cells:
        lines.append(f"  eval  {cell.label:<40} n={cell.n_examples:<5} {cell.attack_name}: {cell.attack_budget}"
                     f"  [{cell_state[cell.key]}]")
        if cell.key in reasons:
            lines.append(f"        stale: an older record of these settings was computed with other "
                         f"{', '.join(reasons[cell.key])}")
    counts: dict[str, int] = {}
    for state in cell_state.values():
        counts[state] = counts.get(state, 0) + 1
    lines.append("cells: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    return "\n".join(lines)


def executor_options(config: RunConfig) -> ExecutorOptions:
    """The chosen executor's options, typed by the executor's own class from the composed conf (a bad value is
    a ConfigError, before any work)."""
    try:
        return EXECUTORS.resolve(config.run_options.executor).Options.from_dict(config.executor_conf)
    except SettingError as error:
        raise ConfigError(str(error)) from error


def prepare(config: RunConfig) -> Plan:
    """The plan of a composed run (its smoke version with smoke=true), its device checked."""
    if config.run_options.smoke:
        from bench import smoke

        smoke.apply(config)
        config.retype()
    EXECUTORS.resolve(config.run_options.executor).check_device(config.run_options)
    return expand(config)


def run(config: RunConfig) -> dict[str, Any]:
    """Plan a composed run, print the plan, run what is not done yet, render the report; returns a summary."""
    typed_executor_options = executor_options(config)
    plan = prepare(config)
    options, results_dir = plan.options, config.results_dir()
    if not options.dry_run:  # jobs of an earlier run that died without a word get their failed record
        EXECUTORS.resolve(options.executor).collect_finished(plan)
    stage_state, cell_state = plan_state(plan)
    print(describe_plan(plan, stage_state, cell_state), flush=True)
    executor = make_executor(options.executor, typed_executor_options, options)
    if options.dry_run:
        text = executor.describe(plan, *work_to_do(plan, stage_state, cell_state, options.retry_failed))
        if text:  # e.g. the SLURM arrays, tasks and resources it would submit
            print(text)
        return {"dry_run": True, "cells": len(plan.cells)}
    summary = run_plan(plan, executor, (stage_state, cell_state))
    if options.report and options.wait:
        from bench.report import render

        for path in render(results_dir):
            LOG.info("wrote %s", path)
    return summary


def run_plan(plan: Plan, executor: Executor | None = None,
             states: tuple[dict[str, str], dict[str, str]] | None = None) -> dict[str, Any]:
    """Write the plan and run its pending work with `executor` (by default the plan's own, with the options of
    its conf file); `states` is plan_state's answer when the caller has it. Returns a summary."""
    if executor is None:
        executor = make_executor(plan.options.executor, {}, plan.options)
    stage_state, cell_state = states or plan_state(plan)
    plan_path = write_plan(plan, layout.grid_dir(plan.options.results_dir, plan.grid))
    stage_levels, cells = work_to_do(plan, stage_state, cell_state, plan.options.retry_failed)
    if not cells:
        LOG.info("every cell of grid %s is already done; nothing to run", plan.grid)
    started = time.time()
    outcomes = executor.run(plan_path, stage_levels, cells) if cells else {}
    elapsed = time.time() - started
    _, cell_state = plan_state(plan)
    summary = {"ran": len(cells), "seconds": elapsed, "outcomes": outcomes,
               **{state: sum(s == state for s in cell_state.values()) for state in ("done", "failed", "pending")}}
    LOG.info("grid %s: %d cells run in %s; %d done, %d failed, %d pending", plan.grid, len(cells),
             format_seconds(elapsed), summary["done"], summary["failed"], summary["pending"])
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    if argv == ["list"]:
        from bench.catalog import main as list_everything

        return list_everything()
    try:
        config = compose(argv)
        configure_logging(config.run_options.log_level)
        configure_threads(config.run_options.threads)
        summary = run(config)
    except ConfigError as error:
        print(error_line(error), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1 if summary.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
