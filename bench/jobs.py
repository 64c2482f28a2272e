"""Job entry points: what an executor runs, given only the plan file's path and a key.

The plan (results/<grid>/.plan/plan.json) holds every stage and cell; a job re-reads it, so job pickles
stay tiny and a requeued job needs nothing but its arguments.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable

from bench.grid import EvalCell, Plan, TrainStage
from bench.runtime import configure_threads


def write_plan(plan: Plan, results_dir: Path) -> Path:
    """Write the plan under a name of its content (what this run's jobs read: a concurrent run with other
    settings cannot change it under them) and as plan.json (the latest, for bench.status and bench.report)."""
    from bench.grid import content_key
    from defences.atomic import write_json_atomic

    data = plan.to_json()
    path = results_dir / ".plan" / f"plan-{content_key(data)}.json"
    write_json_atomic(path, data)
    write_json_atomic(results_dir / ".plan" / "plan.json", data)
    return path


def read_plan(plan_path: str | Path) -> Plan:
    raw = json.loads(Path(plan_path).read_text())
    return Plan(grid=raw["grid"], options=raw["options"],
                stages={k: TrainStage(**v) for k, v in raw["stages"].items()},
                cells=[EvalCell(**c) for c in raw["cells"]])


PARENT_ENV = "BENCH_PARENT_PID"


def end_with_parent(poll_s: float = 1.0) -> None:
    """In a job of the local executor: exit when the bench.run that started it has gone (killed, say), so
    no orphan keeps computing; its locks are then taken over as a dead owner's by the next run."""
    import os
    import socket
    import threading

    host, _, parent = os.environ.get(PARENT_ENV, "").rpartition(":")
    if host != socket.gethostname() or not parent.isdigit() or int(parent) == os.getpid():
        return  # not started by a local executor on this machine

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            try:
                os.kill(int(parent), 0)
            except ProcessLookupError:
                logging.getLogger("bench.jobs").error("bench.run (pid %s) has gone; ending this job", parent)
                os._exit(143)
            except PermissionError:
                pass

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def configure_logging(level: str = "INFO") -> None:
    _note_job_log()
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True)


def _note_job_log() -> None:
    """Inside a submitit job, remember its log file so that failed records can point at it."""
    import os

    try:
        import submitit

        environment = submitit.JobEnvironment()
        # stderr: where logging and tracebacks go (stdout holds submitit's own few lines)
        os.environ["BENCH_JOB_LOG"] = str(environment.paths.stderr).replace("%j", str(environment.job_id))
    except RuntimeError:  # not inside a submitit job
        pass


@dataclass
class StageJob(Checkpointable):
    """Fit one training stage (a callable so that executors can pickle it by value: two strings).

    Checkpointable: when SLURM signals a timeout or preemption, submitit requeues the same call; the
    stage then resumes from its last per-epoch progress file (and a cell from its per-batch partial file).
    """

    plan_path: str
    stage_key: str

    def __call__(self) -> str:
        end_with_parent()
        from bench.stages import run_training_stage

        plan = read_plan(self.plan_path)
        configure_logging(plan.options.get("log_level", "INFO"))
        configure_threads(plan.options.get("threads"))
        return run_training_stage(plan.stages, self.stage_key, plan.options)


@dataclass
class CellJob(Checkpointable):
    """Evaluate one cell and write its record (Checkpointable like StageJob)."""

    plan_path: str
    cell_key: str

    def __call__(self) -> str:
        end_with_parent()
        from bench.stages import run_eval_cell

        plan = read_plan(self.plan_path)
        configure_logging(plan.options.get("log_level", "INFO"))
        configure_threads(plan.options.get("threads"))
        cell = next(c for c in plan.cells if c.key == self.cell_key)
        return run_eval_cell(plan.stages, cell, plan.options, record_path(plan, cell))


def record_path(plan: Plan, cell: EvalCell) -> Path:
    return Path(plan.options["results_dir"]) / plan.grid / "cells" / cell.record_name


def job_summary(outcomes: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[str(outcome)] = counts.get(str(outcome), 0) + 1
    return counts
