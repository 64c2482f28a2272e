"""Plan files: write a run's plan where its jobs and bench.status / bench.report find it, and read it back.

plan.json's format is bench.grid.Plan.to_json / from_json (which also reads plans of the previous format);
where the files go is bench.layout's.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import layout
from bench.conffiles import ConfigError
from bench.grid import Plan, content_key
from defences.atomic import write_json_atomic


def write_plan(plan: Plan, results_dir: Path) -> Path:
    """Write the plan under a name of its content (what this run's jobs read: a concurrent run with other
    settings cannot change it under them) and as plan.json (the latest, for bench.status and bench.report).
    `results_dir` is the grid's folder (results/<grid>)."""
    data = plan.to_json()
    path = layout.plan_snapshot_path(results_dir, content_key(data))
    write_json_atomic(path, data)
    write_json_atomic(layout.latest_plan_path(results_dir), data)
    return path


def read_plan(plan_path: str | Path) -> Plan:
    """The plan in a plan file (this format or the previous one); anything else is a ConfigError saying so."""
    try:
        return Plan.from_json(json.loads(Path(plan_path).read_text()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(f"{plan_path} is not a plan this version of bench can read ({type(error).__name__}: "
                          f"{error}); run `python -m bench.run` for the grid again to rewrite it") from error
