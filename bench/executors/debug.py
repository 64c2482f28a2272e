"""In-process executor: stages and cells run one after another in this Python process (easy to debug)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bench.jobs import CellJob, StageJob

LOG = logging.getLogger("bench.executors")


class DebugExecutor:
    def __init__(self, options: dict[str, Any], run_options: dict[str, Any]):
        self.options, self.run_options = options, run_options

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
