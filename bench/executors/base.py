"""What every executor is: typed options, `run` (the work, level by level) and `describe` (for dry runs).

An executor subclasses `Executor`, names its options class (`Options`, a bench.options.ExecutorOptions) and
implements `run`; it overrides `describe` when a dry run has more to say than the plan (the SLURM arrays, tasks
and resources a submission would make, say).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from bench.options import ExecutorOptions, RunOptions
from bench.plan import Plan


class Executor(ABC):
    """Runs a plan's pending training stages (each level after the previous one), then its pending cells."""

    Options: ClassVar[type[ExecutorOptions]] = ExecutorOptions

    def __init__(self, options: ExecutorOptions | dict[str, Any] | None = None,
                 run_options: RunOptions | dict[str, Any] | None = None):
        self.options = options if isinstance(options, self.Options) else self.Options.from_dict(options or {})
        self.run_options = run_options if isinstance(run_options, RunOptions) else \
            RunOptions.from_dict(run_options or {})

    @abstractmethod
    def run(self, plan_path: Path, stage_levels: list[list[str]], cells: list[str]) -> dict[str, Any]:
        """Run the stages (each level after the previous one) and then the cells; return their outcomes."""

    def describe(self, plan: Plan, stage_levels: list[list[str]], cells: list[str]) -> str | None:
        """What running this work would do beyond the plan itself (None: nothing to add)."""
        return None
