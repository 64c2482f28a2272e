"""Plan data: the training stages, evaluation cells and plan a grid expands to, and plan.json's format.

bench.grid computes these (with their content-hash keys); everything that runs, records, schedules or reports a
plan reads them from here. A `TrainStage` is one defence fitted on one scenario with one seed; an `EvalCell` is
one attack on one fitted stage with one seed and test subset; a `Plan` holds a run's options, its resolved
scenarios, its stages and cells. `Plan.to_json` / `Plan.from_json` are plan.json's format (bench.planfile
reads the files, and upgrades those of format 1).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.options import EvalOptions, RunOptions
from bench.scenarios import Scenario, scenario_from_dict


def cell_label(scenario: Any, defence: Any, attack: Any, seed: Any) -> str:
    """How a cell is named to people (the plan, the status table, the report, a record's provenance)."""
    return f"{scenario}/{defence}/{attack}/seed{seed}"


def content_key(payload: Any, length: int = 16) -> str:
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass
class TrainStage:
    """One defence fitted on one scenario with one seed (a training stage): its artifact lives in artifact_dir."""

    key: str
    scenario: str
    defence_key: str
    defence_name: str
    params: dict[str, Any]
    seed: int
    base_stage: str | None
    artifact_dir: str
    identity: dict[str, Any] = field(repr=False, default_factory=dict)
    settings_key: str = ""  # the key without the code and input fingerprints: same settings, any code
    fingerprint: dict[str, dict[str, str]] = field(repr=False, default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.scenario}/{self.defence_key}/seed{self.seed}"


@dataclass
class EvalCell:
    """One attack on one fitted defence (the training stage `stage_key`) with one seed and test subset."""

    key: str
    grid: str
    block: str
    scenario: str
    defence_key: str
    defence_name: str
    stage_key: str
    attack_key: str
    attack_name: str
    attack_params: dict[str, Any]
    attack_budget: str
    seed: int
    n_examples: int
    eval: EvalOptions
    record_name: str
    settings_key: str = ""  # the key without the code and input fingerprints: same settings, any code
    fingerprint: dict[str, dict[str, str]] = field(repr=False, default_factory=dict)
    source_key: str | None = None  # a transfer cell's: the cell whose saved points it evaluates (bench.transfer)

    @property
    def label(self) -> str:
        return cell_label(self.scenario, self.defence_key, self.attack_key, self.seed)


PLAN_FORMAT = 2  # 2: typed options, resolved scenarios, cells' `stage_key` (1: `stage`, scenario overrides)


@dataclass
class Plan:
    """Everything a run does: its options, the resolved scenarios, the training stages and the cells."""

    grid: str
    options: RunOptions
    stages: dict[str, TrainStage]
    cells: list[EvalCell]
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> resolved fields

    def scenario(self, name: str) -> Scenario:
        """A scenario as it was resolved when the grid was planned (overrides applied)."""
        return scenario_from_dict(name, self.scenarios[name])

    def cell(self, key: str) -> EvalCell:
        return next(c for c in self.cells if c.key == key)

    def stage_chain(self, key: str | None) -> list[str]:
        """A stage's key followed by the keys of the stages it builds on, nearest first."""
        chain = []
        while key is not None:
            chain.append(key)
            key = self.stages[key].base_stage
        return chain

    def stage_levels(self) -> list[list[TrainStage]]:
        """Stages grouped so that every stage comes after the stage it builds on."""
        levels: list[list[TrainStage]] = []
        depth: dict[str, int] = {}

        def level_of(key: str) -> int:
            if key not in depth:
                base = self.stages[key].base_stage
                depth[key] = 0 if base is None else level_of(base) + 1
            return depth[key]

        for key in self.stages:
            level = level_of(key)
            while len(levels) <= level:
                levels.append([])
            levels[level].append(self.stages[key])
        return levels

    def to_json(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "grid": self.grid, "options": self.options.to_dict(),
                "scenarios": self.scenarios, "stages": {k: asdict(s) for k, s in self.stages.items()},
                "cells": [asdict(c) for c in self.cells]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Plan:
        """A plan from plan.json's content in this format (bench.planfile.read_plan upgrades older ones)."""
        if raw.get("format") != PLAN_FORMAT:
            raise ValueError(f"plan format {raw.get('format', 1)!r} is not {PLAN_FORMAT}")
        return cls(grid=raw["grid"], options=RunOptions.from_dict(raw["options"]), scenarios=raw["scenarios"],
                   stages={k: TrainStage(**v) for k, v in raw["stages"].items()},
                   cells=[EvalCell(**{**c, "eval": EvalOptions.from_dict(c["eval"])}) for c in raw["cells"]])


def scenario_fields(scenario: Scenario) -> dict[str, Any]:
    """A resolved scenario as plan.json stores it (scenario_from_dict reads it back)."""
    return {k: v for k, v in asdict(scenario).items() if k != "name"}
