"""`python -m bench.status grid=NAME`: done / running / pending / failed for every stage and cell, with job ids.

Reads what a run left on disk (where bench.layout says): the plan, the artifacts and the cell records; each
executor says what it knows of the jobs (`Executor.job_views`: SLURM's job book, with the states SLURM gives
the jobs that have not written a result yet).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench import layout, records
from bench.executors import REGISTRY as EXECUTORS
from bench.executors.base import JobView
from bench.plan import Plan
from bench.planfile import read_plan

# --- the status table -------------------------------------------------------------------------------------

def status_rows(plan: Plan, jobs: dict[str, JobView]) -> list[dict[str, Any]]:
    """One row per stage and cell: kind, label, state (done/running/pending/failed/stale), job id, log; `jobs`
    is the executor's latest job per stage or cell key."""
    rows = []
    items = [("train", key, stage.label, layout.stage_file_state(stage.artifact_dir))
             for key, stage in plan.stages.items()]
    items += [("eval", cell.key, cell.label, records.cell_state(plan, cell)) for cell in plan.cells]
    for kind, key, label, found in items:
        job = jobs.get(key)
        word = job.word if job else "ended"
        # a job at work overrides an earlier attempt's failure; a queued one leaves a stale record stale
        state = word if word != "ended" else found or "pending"
        if state == "pending" and found == "stale":
            state = "stale"
        rows.append({"kind": kind, "key": key, "label": label, "state": state,
                     "error": _last_error_line(plan, kind, key) if state == "failed" else "",
                     "job_id": job.job_id if job else None, "job_state": job.state if job else None,
                     "attempts": job.attempts if job else 0, "log": job.log if job else None})
    return rows


def _last_error_line(plan: Plan, kind: str, key: str) -> str:
    if kind == "train":
        failure = records.read_json(layout.stage_failed_path(plan.stages[key].artifact_dir))
    else:
        failure = records.read_json(layout.record_path(plan, plan.cell(key)))
    lines = str((failure or {}).get("error", "")).strip().splitlines()
    return lines[-1].strip() if lines else ""


def format_status(plan: Plan, rows: list[dict[str, Any]], show_logs: bool = False) -> str:
    lines = [f"grid {plan.grid}: {len(plan.stages)} training stages, {len(plan.cells)} evaluation cells"]
    width = max(len(row["label"]) for row in rows)
    for row in rows:
        job = f"job {row['job_id']} ({row['job_state'] or '?'})" if row["job_id"] else "no job"
        if row["attempts"] > 1:
            job += f", attempt {row['attempts']}"
        line = f"  {row['kind']:<5} {row['label']:<{width}}  {row['state']:<8} {job}"
        if row.get("error"):
            line += f"\n        error: {row['error'][:160]}"
        if show_logs and row["log"] and row["state"] in ("failed", "running"):
            line += f"\n        log: {row['log']}"
        lines.append(line)
    for kind in ("train", "eval"):
        counts: dict[str, int] = {}
        for row in rows:
            if row["kind"] == kind:
                counts[row["state"]] = counts.get(row["state"], 0) + 1
        name = "stages" if kind == "train" else "cells"
        lines.append(f"{name}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return "\n".join(lines)


USAGE = """usage: python -m bench.status [grid=NAME|grid=FILE.yaml] [results_dir=PATH] [logs=true|false]
                                [artifacts_dir=PATH] [key=value ...]

State (done / running / pending / failed / stale) of every training stage and cell of a grid, with job ids.
Reads the plan the last `bench.run` wrote under results_dir/<grid>/.plan/; without one (a committed or copied
results folder), plans the grid from its config and the other key=value arguments, as bench.run would.
Paths are taken as given here, never from where the results were first written."""


def main(argv: list[str] | None = None) -> int:
    from bench.conffiles import ConfigError, error_line

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    try:
        plan, plan_path, show_logs = load_status_plan(argv)
    except ConfigError as error:
        print(error_line(error), file=sys.stderr)
        return 2
    jobs, notes = executor_jobs(plan, plan_path)
    print(format_status(plan, status_rows(plan, jobs), show_logs=show_logs))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def executor_jobs(plan: Plan, plan_path: Path) -> tuple[dict[str, JobView], list[str]]:
    """What each executor knows of the plan's jobs (runs of one grid may have used several executors)."""
    jobs: dict[str, JobView] = {}
    notes = []
    for name in EXECUTORS.names():
        found, note = EXECUTORS.resolve(name).job_views(plan, plan_path)
        jobs.update(found)
        notes += [note] if note else []
    return jobs, notes


def load_status_plan(argv: list[str]) -> tuple[Plan, Path, bool]:
    """The plan to report on, with the results and artifacts folders given here (not those stored in it)."""
    from bench.conffiles import ConfigError
    from bench.config import compose
    from bench.grid import expand
    from bench.validation import SettingError, as_bool

    logs = [a.partition("=")[2] for a in argv if a.startswith("logs=")]
    rest = [a for a in argv if not a.startswith("logs=")]
    try:
        show_logs = as_bool("logs", {"true": True, "false": False}.get(logs[-1].lower(), logs[-1])) if logs else False
    except SettingError as error:
        raise ConfigError(str(error)) from error
    config = compose(rest)  # checks every argument, grid files included
    plan_path = layout.latest_plan_path(config.results_dir())
    only_paths = all(a.partition("=")[0] in ("grid", "results_dir", "artifacts_dir") for a in rest)
    if plan_path.exists() and only_paths:
        plan = read_plan(plan_path)
        if any(a.startswith("artifacts_dir=") for a in rest):
            _rebase(plan, config.run_options.artifacts_dir)
    else:
        plan = expand(config)
    plan.options = plan.options.replace(results_dir=config.run_options.results_dir)
    if plan.grid != config.grid_name:
        raise ConfigError(f"{plan_path} holds grid {plan.grid!r}, not {config.grid_name!r}")
    return plan, plan_path, show_logs


def _rebase(plan: Plan, artifacts_dir: str) -> None:
    """Point the plan's artifact folders at the artifacts_dir given here (after a move, or a relative path
    resolved from another working directory)."""
    stored = Path(plan.options.artifacts_dir or "artifacts")
    for stage in plan.stages.values():
        folder = Path(stage.artifact_dir)
        try:
            relative = folder.relative_to(stored)
        except ValueError:
            relative = Path(*folder.parts[-2:])
        stage.artifact_dir = str(Path(artifacts_dir) / relative)


if __name__ == "__main__":
    sys.exit(main())
