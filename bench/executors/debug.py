"""In-process executor: stages and cells run one after another in this Python process (easy to debug)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from bench.executors.base import Executor
from bench.jobs import CellJob, StageJob
from bench.options import ExecutorOptions

LOG = logging.getLogger("bench.executors")


@dataclass(frozen=True)
class DebugOptions(ExecutorOptions):
    conf_name: ClassVar[str] = "debug"


class DebugExecutor(Executor):
    """In-process executor: stages and cells run one after another in this Python process (easy to debug)."""

    Options = DebugOptions

    def run(self, plan_path: Path, stage_levels: list[list[str]], cells: list[str]) -> dict[str, Any]:
        outcomes: dict[str, Any] = {}
        for level in stage_levels:
            for key in level:
                try:
                    outcomes[key] = StageJob(str(plan_path), key)()
                except Exception as error:  # recorded in the stage's failed.json; its cells fail with a pointer
                    LOG.error("training stage %s failed: %s", key, error)
                    outcomes[key] = "failed"
        for key in cells:
            outcomes[key] = CellJob(str(plan_path), key)()
        return outcomes
