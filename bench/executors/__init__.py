"""Executors run a plan's pending stages (level by level) and then its pending cells.

`debug` runs everything in this process; `local` runs each stage and cell as a submitit local job (a
subprocess, `max_parallel` at a time); `slurm` submits SLURM array jobs. Pick one with `executor=NAME`.
Each is a bench.executors.base.Executor.
"""

from __future__ import annotations

from typing import Any

from attacks.registry import Registry
from bench.executors.base import Executor
from bench.options import ExecutorOptions, RunOptions

REGISTRY = Registry("executor", {
    "debug": "bench.executors.debug:DebugExecutor",
    "local": "bench.executors.local:LocalExecutor",
    "slurm": "bench.executors.slurm:SlurmExecutor",
}, entry_point_group="bench.executors")


def make_executor(name: str, options: ExecutorOptions | dict[str, Any],
                  run_options: RunOptions | dict[str, Any]) -> Executor:
    return REGISTRY.resolve(name)(options=options, run_options=run_options)
