"""`python -m bench.status grid=NAME`: done / running / pending / failed for every stage and cell, with job ids.

Reads what a run left on disk: the plan (results/<grid>/.plan/plan.json), the job book the SLURM executor
keeps beside it (jobs.json: every submitted job per stage or cell), the artifacts and the cell records; asks
SLURM (squeue, then sacct) for the state of jobs that have not written a result yet. Also home of the job
book itself and of `collect_finished_jobs`, which gives jobs that died without a word (killed, out of time
or memory) a failed record pointing at their logs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import records
from bench.grid import EvalCell, Plan
from bench.jobs import read_plan, record_path
from bench.stages import DONE_FILE, FAILED_FILE
from defences.atomic import write_json_atomic

JOBS_FILE = "jobs.json"
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING"}
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD", "STOPPED"}
ACTIVE_STATES = RUNNING_STATES | QUEUED_STATES
_ARRAY_RANGE = re.compile(r"^(\d+)_\[([^\]]+)\]$")


# --- the job book: results/<grid>/.plan/jobs.json -------------------------------------------------------

class JobBook:
    """Every job submitted for a grid: per stage or cell key, its attempts (latest last), and the arrays."""

    def __init__(self, path: Path):
        self.path = Path(path)
        raw = records.read_json(self.path) or {}
        self.jobs: dict[str, list[dict[str, Any]]] = raw.get("jobs", {})
        self.arrays: list[dict[str, Any]] = raw.get("arrays", [])

    @classmethod
    def for_plan(cls, plan_path: Path) -> JobBook:
        return cls(Path(plan_path).parent / JOBS_FILE)

    def latest(self, key: str) -> dict[str, Any] | None:
        attempts = self.jobs.get(key)
        return attempts[-1] if attempts else None

    def add_array(self, array: dict[str, Any], tasks: dict[str, dict[str, Any]]) -> None:
        self.arrays.append(array)
        for key, job in tasks.items():
            self.jobs.setdefault(key, []).append(job)

    def save(self) -> None:
        write_json_atomic(self.path, {"arrays": self.arrays, "jobs": self.jobs})


# --- asking SLURM ----------------------------------------------------------------------------------------

def _run(command: list[str]) -> str | None:
    """stdout of a SLURM command, or None when the tool is missing or fails (no cluster here)."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _expand_job_id(job_id: str) -> list[str]:
    """'12_[0-3%2]' -> ['12_0', ..., '12_3']; a plain id is itself."""
    match = _ARRAY_RANGE.match(job_id)
    if not match:
        return [job_id]
    array, spec = match.group(1), match.group(2).split("%")[0]
    ids = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        ids.extend(f"{array}_{i}" for i in range(int(lo), int(hi or lo) + 1))
    return ids


def parse_state_table(text: str) -> dict[str, str]:
    """'JobID|State' lines (squeue -r or sacct -X -P output) -> task id -> state, array ranges expanded."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        job_id, sep, state = line.strip().partition("|")
        if not sep:
            continue
        for task in _expand_job_id(job_id.strip()):
            # 'CANCELLED by 0' -> 'CANCELLED'; an explicit task line overrides its array's range line
            if task not in states or "[" not in job_id:
                states[task] = state.split()[0] if state.split() else "UNKNOWN"
    return states


def query_job_states(job_ids: list[str]) -> dict[str, str]:
    """State of each job or array task id: squeue for jobs still queued or running, sacct for the rest."""
    if not job_ids:
        return {}
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    queued = parse_state_table(_run(["squeue", "--noheader", "--array", "--format=%i|%T",
                                     f"--jobs={','.join(arrays)}"]) or "")
    accounted = parse_state_table(_run(["sacct", "--allocations", "--noheader", "--parsable2",
                                        "--format=JobID,State", f"--jobs={','.join(arrays)}"]) or "")
    return {job_id: queued.get(job_id) or accounted.get(job_id) or "UNKNOWN" for job_id in job_ids}


def state_word(job_state: str | None) -> str:
    if job_state in RUNNING_STATES:
        return "running"
    if job_state in QUEUED_STATES:
        return "pending"
    return "ended"


# --- what is on disk --------------------------------------------------------------------------------------

def stage_file_state(plan: Plan, key: str) -> str | None:
    folder = Path(plan.stages[key].artifact_dir)
    if (folder / DONE_FILE).exists():
        return "done"
    return "failed" if (folder / FAILED_FILE).exists() else None


def cell_file_state(plan: Plan, cell: EvalCell) -> str | None:
    return records.record_status(record_path(plan, cell), cell.key)


def _stale(plan: Plan, cell: EvalCell) -> bool:
    """An older record of the same settings, computed by other code or from other inputs, is on disk."""
    path = record_path(plan, cell)
    return bool(cell.settings_key and records.same_settings_records(path.parent, cell.record_name, cell.settings_key))


def _death_note(job: dict[str, Any], job_state: str) -> str:
    return (f"SLURM job {job['job_id']} ended in state {job_state} without writing a result (killed, out of "
            f"time or memory, or lost with its node); see its log {job.get('stderr')} (and {job.get('stdout')})")


def collect_finished_jobs(plan: Plan, book: JobBook, states: dict[str, str] | None = None) -> dict[str, str]:
    """Give every ended job that left no result a failed record (cells) or failed.json (stages).

    Returns key -> 'done' / 'failed' / 'running' / 'pending' for every key that has a job in the book.
    """
    if states is None:
        states = query_job_states([job["job_id"] for job in map(book.latest, book.jobs) if job])
    cells = {cell.key: cell for cell in plan.cells}
    outcome: dict[str, str] = {}
    for key in book.jobs:
        job = book.latest(key)
        if job is None or (key not in plan.stages and key not in cells):
            continue
        job_state = states.get(job["job_id"], "UNKNOWN")
        word = state_word(job_state)
        if word != "ended":
            outcome[key] = word
            continue
        if key in plan.stages:
            found = stage_file_state(plan, key)
            if found is None:
                stage = plan.stages[key]
                write_json_atomic(Path(stage.artifact_dir) / FAILED_FILE, {
                    "stage": key, "label": stage.label, "error": _death_note(job, job_state),
                    "log": job.get("stderr"), "stdout": job.get("stdout"), "slurm_job_id": job["job_id"],
                    "slurm_state": job_state, "failed_at": time.time()})
        else:
            cell = cells[key]
            found = cell_file_state(plan, cell)
            if found is None:
                write_json_atomic(record_path(plan, cell), {
                    "schema_version": records.SCHEMA_VERSION, "status": "failed", "key": key, "grid": cell.grid,
                    "block": cell.block, "scenario": cell.scenario, "defence": cell.defence_key,
                    "defence_name": cell.defence_name, "stage": cell.stage, "attack": cell.attack_key,
                    "attack_name": cell.attack_name, "attack_settings": cell.attack_params, "seed": cell.seed,
                    "n_examples": cell.n_examples, "error": _death_note(job, job_state), "log": job.get("stderr"),
                    "stdout": job.get("stdout"), "slurm_job_id": job["job_id"], "slurm_state": job_state,
                    "finished_at": time.time()})
        outcome[key] = found or "failed"
    return outcome


# --- the status table -------------------------------------------------------------------------------------

def status_rows(plan: Plan, book: JobBook, states: dict[str, str]) -> list[dict[str, Any]]:
    """One row per stage and cell: kind, label, state (done/running/pending/failed), job id, log."""
    rows = []
    cells = {cell.key: cell for cell in plan.cells}
    items = [("train", key, plan.stages[key].label, stage_file_state(plan, key)) for key in plan.stages]
    items += [("eval", cell.key, cell.label, cell_file_state(plan, cell)) for cell in plan.cells]
    for kind, key, label, found in items:
        job = book.latest(key)
        job_state = states.get(job["job_id"]) if job else None
        word = state_word(job_state) if job else "ended"
        # a job at work overrides an earlier attempt's failure
        state = word if word != "ended" else found or "pending"
        if state == "pending" and kind == "eval" and _stale(plan, cells[key]):
            state = "stale"
        rows.append({"kind": kind, "key": key, "label": label, "state": state,
                     "error": _last_error_line(plan, kind, key) if state == "failed" else "",
                     "job_id": job["job_id"] if job else None, "job_state": job_state,
                     "attempts": len(book.jobs.get(key, [])), "log": job.get("stderr") if job else None})
    return rows


def _last_error_line(plan: Plan, kind: str, key: str) -> str:
    if kind == "train":
        failure = records.read_json(Path(plan.stages[key].artifact_dir) / FAILED_FILE)
    else:
        failure = records.read_json(record_path(plan, next(c for c in plan.cells if c.key == key)))
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
    from bench.config import ConfigError, error_line

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    try:
        plan, plan_path, show_logs = load_status_plan(argv)
    except ConfigError as error:
        print(error_line(error), file=sys.stderr)
        return 2
    book = JobBook(plan_path.parent / JOBS_FILE)
    latest = [job["job_id"] for job in map(book.latest, book.jobs) if job]
    states = query_job_states(latest)
    print(format_status(plan, status_rows(plan, book, states), show_logs=show_logs))
    if latest and all(state == "UNKNOWN" for state in states.values()):
        print(f"note: SLURM knows none of the {len(latest)} recorded jobs (no squeue/sacct here, or accounting "
              f"is off); states come from the files alone", file=sys.stderr)
    return 0


def load_status_plan(argv: list[str]) -> tuple[Plan, Path, bool]:
    """The plan to report on, with the results and artifacts folders given here (not those stored in it)."""
    from bench.config import ConfigError, compose
    from bench.grid import expand
    from bench.validation import SettingError, as_bool

    logs = [a.partition("=")[2] for a in argv if a.startswith("logs=")]
    rest = [a for a in argv if not a.startswith("logs=")]
    try:
        show_logs = as_bool("logs", {"true": True, "false": False}.get(logs[-1].lower(), logs[-1])) if logs else False
    except SettingError as error:
        raise ConfigError(str(error)) from error
    config = compose(rest)  # checks every argument, grid files included
    results_dir = config.results_dir()
    plan_path = results_dir / ".plan" / "plan.json"
    only_paths = all(a.partition("=")[0] in ("grid", "results_dir", "artifacts_dir") for a in rest)
    if plan_path.exists() and only_paths:
        plan = read_plan(plan_path)
        _rebase(plan, config.options, given_artifacts=any(a.startswith("artifacts_dir=") for a in rest))
    else:
        plan = expand(config)
    plan.options = {**plan.options, "results_dir": config.options["results_dir"]}
    if plan.grid != config.grid_name:
        raise ConfigError(f"{plan_path} holds grid {plan.grid!r}, not {config.grid_name!r}")
    return plan, plan_path, show_logs


def _rebase(plan: Plan, options: dict[str, Any], given_artifacts: bool) -> None:
    """Point the plan's artifact folders at the artifacts_dir given here (after a move, or a relative path
    resolved from another working directory)."""
    stored = Path(plan.options.get("artifacts_dir") or "artifacts")
    if not given_artifacts:
        return
    for stage in plan.stages.values():
        folder = Path(stage.artifact_dir)
        try:
            relative = folder.relative_to(stored)
        except ValueError:
            relative = Path(*folder.parts[-2:])
        stage.artifact_dir = str(Path(options["artifacts_dir"]) / relative)


if __name__ == "__main__":
    sys.exit(main())
