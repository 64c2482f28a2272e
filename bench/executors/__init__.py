"""Executors run a plan's pending stages (level by level) and then its pending cells.

`debug` runs everything in this process; `local` runs each stage and cell as a submitit local job (a
subprocess, `max_parallel` at a time); `slurm` submits SLURM array jobs. Pick one with `executor=NAME`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from attacks.registry import Registry


class Executor(Protocol):
    def run(self, plan_path: Path, stage_levels: list[list[str]], cells: list[str]) -> dict[str, Any]:
        """Run the stages (each level after the previous one) and then the cells; return their outcomes."""
        ...


REGISTRY = Registry("executor", {
    "debug": "bench.executors.debug:DebugExecutor",
    "local": "bench.executors.local:LocalExecutor",
    "slurm": "bench.executors.slurm:SlurmExecutor",
}, entry_point_group="bench.executors")


def make_executor(name: str, options: dict[str, Any], run_options: dict[str, Any]) -> Executor:
    return REGISTRY.resolve(name)(options=options, run_options=run_options)
