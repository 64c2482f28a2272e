"""Job entry points: what an executor runs, given only the plan file's path and a key.

The plan (bench.layout: results/<grid>/.plan/plan-<key>.json) holds every stage and cell with the run's typed
options and resolved scenarios; a job re-reads it, so job pickles stay tiny and a requeued job needs nothing
but its arguments.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from submitit.helpers import Checkpointable

from bench.logs import configure_logging
from bench.plan import Plan
from bench.planfile import read_plan
from bench.runtime import configure_threads

PARENT_ENV = "BENCH_PARENT_PID"


def end_with_parent(poll_s: float = 1.0) -> None:
    """In a job of the local executor: exit when the bench.run that started it has gone (killed, say), so
    no orphan keeps computing; its locks are then taken over as a dead owner's by the next run."""
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


def _start_job(plan_path: str) -> Plan:
    """What every job does first: watch its parent, read the plan, set up logging and threads from it."""
    end_with_parent()
    plan = read_plan(plan_path)
    configure_logging(plan.options.log_level)
    configure_threads(plan.options.threads)
    return plan


@dataclass
class StageJob(Checkpointable):
    """Fit one training stage (a callable so that executors can pickle it by value: two strings).

    Checkpointable: when SLURM signals a timeout or preemption, submitit requeues the same call; the
    stage then resumes from its last per-epoch progress file (and a cell from its per-batch partial file).
    """

    plan_path: str
    stage_key: str

    def __call__(self) -> str:
        from bench.training_stage import run_training_stage

        return run_training_stage(_start_job(self.plan_path), self.stage_key)


@dataclass
class CellJob(Checkpointable):
    """Evaluate one cell and write its record (Checkpointable like StageJob)."""

    plan_path: str
    cell_key: str

    def __call__(self) -> str:
        from bench.evaluate import run_eval_cell

        plan = _start_job(self.plan_path)
        return run_eval_cell(plan, plan.cell(self.cell_key))

