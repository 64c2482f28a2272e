"""What every executor is: typed options, `run` (the work, level by level), `describe` (for dry runs) and the
hooks bench.run and bench.status call around the work.

An executor subclasses `Executor`, names its options class (`Options`, a bench.options.ExecutorOptions, kept in
the executor's own module) and implements `run`; it overrides `describe` when a dry run has more to say than the
plan (the SLURM arrays, tasks and resources a submission would make, say). The hooks are class methods, since
they run where no executor is built (bench.status, the device check before planning):
- `check_device`: a device this machine lacks is an error before any work, unless the work runs elsewhere;
- `collect_finished`: before a run, give jobs an earlier run submitted that died without a word their record;
- `job_views`: what the executor knows of each stage's and cell's latest job, for the status table.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from bench.conffiles import ConfigError
from bench.options import ExecutorOptions, RunOptions
from bench.plan import Plan
from bench.runtime import resolve_device


@dataclass(frozen=True)
class JobView:
    """The latest job of a stage or cell as its executor knows it."""

    job_id: str
    state: str | None   # the scheduler's own word (RUNNING, PENDING, TIMEOUT, ...); None when it knows nothing
    word: str           # 'running', 'pending' or 'ended' (then what the job left on disk decides)
    attempts: int       # jobs submitted for this stage or cell so far
    log: str | None     # the job's log file


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

    @classmethod
    def check_device(cls, run_options: RunOptions) -> None:
        """Refuse (ConfigError) a device this machine lacks: the work runs here."""
        try:
            resolve_device(run_options.device)
        except ValueError as error:
            raise ConfigError(str(error)) from error

    @classmethod
    def collect_finished(cls, plan: Plan) -> None:
        """Settle the jobs an earlier run of this executor left behind (nothing to do for jobs that end with
        the run that started them)."""
        return None

    @classmethod
    def job_views(cls, plan: Plan, plan_path: Path) -> tuple[dict[str, JobView], str | None]:
        """Stage or cell key -> its latest job, and a note for the status table (None: nothing to say)."""
        return {}, None
