"""Expand a composed grid into training stages and evaluation cells, each with a content-hash key.

A training stage is one fitted defence per (scenario, defence entry, seed); a defence with `base: <key>`
(CARSO on top of the AT classifier, say) depends on that entry's stage. An evaluation cell is one
(scenario, defence, attack, seed, n_examples) and loads its stage's artifact. Keys hash everything that
changes a result: resolved settings (defaults included), the scenario's identity, the code versions of
the defence and attack, the evaluation protocol, the keys of the stages it builds on, and the fingerprints
of the code and input files that compute it (bench.fingerprint says which). The `settings_key` leaves the
fingerprints out: an older result with the same settings key but another key is *stale*. Random seeds
derive from the settings key, so a change of code that keeps behaviour (a refactor) reproduces every number
exactly under its new key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import attacks
import defences
from attacks.base import NORMS
from attacks.registry import UnknownNameError
from bench.config import ConfigError, RunConfig
from bench.fingerprint import cell_code, stage_code, stage_inputs
from bench.validation import check_dataclass_values


def content_key(payload: Any, length: int = 16) -> str:
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass
class TrainStage:
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
    key: str
    grid: str
    block: str
    scenario: str
    defence_key: str
    defence_name: str
    stage: str
    attack_key: str
    attack_name: str
    attack_params: dict[str, Any]
    attack_budget: str
    seed: int
    n_examples: int
    eval: dict[str, Any]
    record_name: str
    settings_key: str = ""  # the key without the code and input fingerprints: same settings, any code
    fingerprint: dict[str, dict[str, str]] = field(repr=False, default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.scenario}/{self.defence_key}/{self.attack_key}/seed{self.seed}"


@dataclass
class Plan:
    grid: str
    options: dict[str, Any]
    stages: dict[str, TrainStage]
    cells: list[EvalCell]

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
        return {"grid": self.grid, "options": self.options,
                "stages": {k: asdict(s) for k, s in self.stages.items()},
                "cells": [asdict(c) for c in self.cells]}


def _resolve_defence(spec: dict[str, Any], scenario_defaults: dict[str, Any], where: str) -> tuple[str, dict]:
    name = spec["name"]
    given = {k: v for k, v in spec.items() if k not in ("name", "base")}
    try:
        cls = defences.REGISTRY.get_class(name)
        settings = {**scenario_defaults.get(name, {}), **given}
        check_dataclass_values(cls.Params, settings, owner=where)
        built = cls.make_params(settings)
        if callable(getattr(built, "validate", None)):  # checks a class keeps for fit time, run now
            built.validate()
        params = asdict(built)
    except (UnknownNameError, ValueError, TypeError, ImportError) as error:
        raise ConfigError(_located(where, error)) from error
    return name, params


def _resolve_attack(spec: dict[str, Any], scenario_norm: str, scenario_eps: float, where: str):
    name = spec["name"]
    given = {k: v for k, v in spec.items() if k != "name"}
    given.setdefault("norm", scenario_norm)
    if given["norm"] not in NORMS:
        raise ConfigError(f"{where}.norm={given['norm']!r} is not valid; valid: {', '.join(NORMS)}")
    if "eps" not in given:
        if given["norm"] != scenario_norm:
            raise ConfigError(f"{where}: the attack's norm {given['norm']} differs from the scenario's "
                              f"{scenario_norm}: give its eps explicitly")
        given["eps"] = scenario_eps
    try:
        check_dataclass_values(attacks.REGISTRY.get_class(name), given, owner=where)
        attack = attacks.build(name, **given)
    except (UnknownNameError, ValueError, TypeError, ImportError) as error:
        raise ConfigError(_located(where, error)) from error
    return name, attack


def _located(where: str, error: Exception) -> str:
    message = str(error)
    return message if message.startswith(where) else f"{where}: {message}"


def expand(config: RunConfig) -> Plan:
    grid, options = config.grid, config.options
    artifacts = Path(options["artifacts_dir"])
    stages: dict[str, TrainStage] = {}
    cells: dict[str, EvalCell] = {}
    eval_settings = config.eval_settings

    def stage_for(scenario_name: str, defence_key: str, seed: int, chain: tuple[str, ...] = ()) -> TrainStage:
        if defence_key in chain:
            raise ConfigError(f"defence base cycle: {' -> '.join(chain + (defence_key,))}")
        spec = grid["defences"][defence_key]
        scenario = config.scenario(scenario_name)
        name, params = _resolve_defence(spec, scenario.defence_defaults, f"defences.{defence_key}")
        base = None
        if spec.get("base"):
            if spec["base"] not in grid["defences"]:
                raise ConfigError(f"defences.{defence_key}.base={spec['base']!r} is not a defence of this grid")
            base = stage_for(scenario_name, spec["base"], seed, chain + (defence_key,))
        cls = defences.REGISTRY.get_class(name)
        identity = {"scenario": scenario.identity(), "defence": name, "params": params, "seed": seed,
                    "code_version": cls.code_version, "base": base.settings_key if base else None}
        fingerprint = {"stage_code": {**(base.fingerprint["stage_code"] if base else {}), **stage_code(cls)},
                       "stage_inputs": {**(base.fingerprint["stage_inputs"] if base else {}),
                                        **stage_inputs(scenario, options)}}
        key = content_key({**identity, "base": base.key if base else None, **fingerprint})
        if key not in stages:
            stages[key] = TrainStage(key=key, scenario=scenario_name, defence_key=defence_key, defence_name=name,
                                     params=params, seed=seed, base_stage=base.key if base else None,
                                     artifact_dir=str(artifacts / scenario_name / f"{defence_key}-s{seed}-{key}"),
                                     identity=identity, settings_key=content_key(identity),
                                     fingerprint=fingerprint)
        return stages[key]

    for index, block in enumerate(grid["blocks"]):
        block_name = block.get("name", f"block{index}")
        n_examples = int(block.get("n_examples", grid.get("n_examples", 1000)))
        seeds = block.get("seeds", grid.get("seeds", [0]))
        for scenario_name in block.get("scenarios", []):
            scenario = config.scenario(scenario_name)
            for seed in seeds:
                for defence_key in block.get("defences", []):
                    stage = stage_for(scenario_name, defence_key, int(seed))
                    for attack_key in block.get("attacks", []):
                        attack_name, attack = _resolve_attack(grid["attacks"][attack_key], scenario.norm,
                                                              scenario.eps, f"attacks.{attack_key}")
                        identity = {"stage": stage.settings_key, "attack": attack.settings(),
                                    "attack_code_version": type(attack).code_version, "eval": eval_settings,
                                    "n_examples": n_examples, "seed": int(seed),
                                    "test_subset_seed": scenario.test_subset_seed}
                        fingerprint = {"code": cell_code(type(attack)), **stage.fingerprint}
                        key = content_key({**identity, "stage": stage.key, "code": fingerprint["code"]})
                        if key in cells:
                            continue
                        cells[key] = EvalCell(
                            key=key, grid=config.grid_name, block=block_name, scenario=scenario_name,
                            defence_key=defence_key, defence_name=stage.defence_name, stage=stage.key,
                            attack_key=attack_key, attack_name=attack_name, attack_params=attack.settings(),
                            attack_budget=attack.budget(), seed=int(seed), n_examples=n_examples,
                            eval=dict(eval_settings),
                            record_name=f"{scenario_name}.{defence_key}.{attack_key}.s{seed}.{key}.json",
                            settings_key=content_key(identity), fingerprint=fingerprint)
    if not cells:
        raise ConfigError(f"grid {config.grid_name} expands to no cells: every block needs scenarios, defences "
                          "and attacks")
    return Plan(grid=config.grid_name, options=dict(options), stages=stages, cells=list(cells.values()))
