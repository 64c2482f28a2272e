"""Plan files: write a run's plan where its jobs and bench.status / bench.report find it, and read it back.

plan.json's format is bench.plan.Plan.to_json / from_json; plans of the previous format are upgraded here;
where the files go is bench.layout's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import layout
from bench.conffiles import ConfigError
from bench.config import load_scenario
from bench.plan import PLAN_FORMAT, Plan, content_key, scenario_fields
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
        raw = json.loads(Path(plan_path).read_text())
        return Plan.from_json(_upgrade_format_1(raw) if raw.get("format", 1) == 1 else raw)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(f"{plan_path} is not a plan this version of bench can read ({type(error).__name__}: "
                          f"{error}); run `python -m bench.run` for the grid again to rewrite it") from error


def _upgrade_format_1(raw: dict[str, Any]) -> dict[str, Any]:
    """A format-1 plan in format 2: cells' `stage` -> `stage_key`, scenarios resolved from their conf files
    with the stored overrides, options without `scenario_overrides`."""
    options = dict(raw["options"])
    overrides = options.pop("scenario_overrides", None) or {}
    names = {stage["scenario"] for stage in raw["stages"].values()}
    scenarios = {name: scenario_fields(load_scenario(name, overrides.get(name))) for name in sorted(names)}
    cells = [{("stage_key" if k == "stage" else k): v for k, v in cell.items()} for cell in raw["cells"]]
    return {**raw, "format": PLAN_FORMAT, "options": options, "scenarios": scenarios, "cells": cells}
