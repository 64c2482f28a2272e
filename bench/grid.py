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

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import attacks
import defences
from attacks.base import NORMS
from attacks.registry import UnknownNameError
from bench import layout
from bench.conffiles import ConfigError
from bench.config import RunConfig
from bench.fingerprint import cell_code, stage_code, stage_inputs
from bench.options import EvalOptions
from bench.plan import EvalCell, Plan, TrainStage, content_key, scenario_fields
from bench.reporting.layouts import validate_report_config
from bench.scenarios import Scenario
from bench.transfer import TRANSFER
from bench.validation import check_dataclass_values


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


def _code_of(fingerprint: Callable[[type], dict[str, str]], cls: type, where: str) -> dict[str, str]:
    """`fingerprint(cls)`; a member it declares that does not resolve is the grid entry's error."""
    try:
        return fingerprint(cls)
    except (UnknownNameError, TypeError) as error:
        raise ConfigError(_located(where, error)) from error


def _located(where: str, error: Exception) -> str:
    message = str(error)
    return message if message.startswith(where) else f"{where}: {message}"


class _Planner:
    """Expands one composed grid: stages are shared between cells (one per scenario, defence entry and seed)."""

    def __init__(self, config: RunConfig):
        self.config, self.grid = config, config.grid
        self.options = config.run_options
        self.eval_options = config.eval_options
        self.scenarios: dict[str, Scenario] = {}
        self.stages: dict[str, TrainStage] = {}
        self.cells: dict[str, EvalCell] = {}
        self.transfers: list[tuple] = []  # transfer cells' arguments, planned after every other cell

    def scenario(self, name: str) -> Scenario:
        if name not in self.scenarios:
            self.scenarios[name] = self.config.scenario(name)
        return self.scenarios[name]

    def stage_for(self, scenario_name: str, defence_key: str, seed: int, chain: tuple[str, ...] = ()) -> TrainStage:
        if defence_key in chain:
            raise ConfigError(f"defence base cycle: {' -> '.join(chain + (defence_key,))}")
        spec = self.grid["defences"][defence_key]
        scenario = self.scenario(scenario_name)
        name, params = _resolve_defence(spec, scenario.defence_defaults, f"defences.{defence_key}")
        base = None
        if spec.get("base"):
            if spec["base"] not in self.grid["defences"]:
                raise ConfigError(f"defences.{defence_key}.base={spec['base']!r} is not a defence of this grid")
            base = self.stage_for(scenario_name, spec["base"], seed, chain + (defence_key,))
        cls = defences.REGISTRY.get_class(name)
        identity = {"scenario": scenario.identity(), "defence": name, "params": params, "seed": seed,
                    "code_version": cls.code_version, "base": base.settings_key if base else None}
        code = _code_of(stage_code, cls, f"defences.{defence_key}")
        fingerprint = {"stage_code": {**(base.fingerprint["stage_code"] if base else {}), **code},
                       "stage_inputs": {**(base.fingerprint["stage_inputs"] if base else {}),
                                        **stage_inputs(scenario, self.config.options)}}
        key = content_key({**identity, "base": base.key if base else None, **fingerprint})
        if key not in self.stages:
            folder = layout.stage_artifact_dir(self.options.artifacts_dir, scenario_name, defence_key, seed, key)
            self.stages[key] = TrainStage(key=key, scenario=scenario_name, defence_key=defence_key, defence_name=name,
                                          params=params, seed=seed, base_stage=base.key if base else None,
                                          artifact_dir=str(folder), identity=identity,
                                          settings_key=content_key(identity), fingerprint=fingerprint)
        return self.stages[key]

    def add_cell(self, block_name: str, stage: TrainStage, attack_key: str, n_examples: int,
                 eval_options: EvalOptions | None = None) -> None:
        eval_options = eval_options or self.eval_options
        scenario = self.scenario(stage.scenario)
        attack_name, attack = _resolve_attack(self.grid["attacks"][attack_key], scenario.norm, scenario.eps,
                                              f"attacks.{attack_key}")
        identity = {"stage": stage.settings_key, "attack": attack.settings(),
                    "attack_code_version": type(attack).code_version, "eval": eval_options.identity(),
                    "n_examples": n_examples, "seed": stage.seed, "test_subset_seed": scenario.test_subset_seed}
        fingerprint = {"code": _code_of(cell_code, type(attack), f"attacks.{attack_key}"), **stage.fingerprint}
        key = content_key({**identity, "stage": stage.key, "code": fingerprint["code"]})
        if key in self.cells:
            if eval_options.save_adversarials:  # one of the blocks planning the same cell saves its points
                self.cells[key].eval = eval_options
            return
        self.cells[key] = EvalCell(
            key=key, grid=self.config.grid_name, block=block_name, scenario=stage.scenario,
            defence_key=stage.defence_key, defence_name=stage.defence_name, stage_key=stage.key,
            attack_key=attack_key, attack_name=attack_name, attack_params=attack.settings(),
            attack_budget=attack.budget(), seed=stage.seed, n_examples=n_examples, eval=eval_options,
            record_name=f"{stage.scenario}.{stage.defence_key}.{attack_key}.s{stage.seed}.{key}.json",
            settings_key=content_key(identity), fingerprint=fingerprint)

    def add_block(self, index: int, block: dict[str, Any]) -> None:
        block_name = block.get("name", f"block{index}")
        n_examples = int(block.get("n_examples", self.grid.get("n_examples", 1000)))
        for scenario_name in block.get("scenarios", []):
            self.scenario(scenario_name)
            for seed in block.get("seeds", self.grid.get("seeds", [0])):
                for defence_key in block.get("defences", []):
                    stage = self.stage_for(scenario_name, defence_key, int(seed))
                    for attack_key in block.get("attacks", []):
                        cell = (block_name, stage, attack_key, n_examples, self.config.block_eval_options(block))
                        if self.grid["attacks"][attack_key].get("name") == TRANSFER:
                            self.transfers.append(cell)  # planned once every cell it may read from is
                        else:
                            self.add_cell(*cell)

    def add_transfer_cell(self, block_name: str, stage: TrainStage, attack_key: str, n_examples: int,
                          eval_options: EvalOptions) -> None:
        """A cell evaluating the points another cell saved (bench.transfer_plan resolves and checks it)."""
        from bench.transfer_plan import transfer_parts

        source, attack, identity, fingerprint = transfer_parts(self, stage, attack_key, n_examples, eval_options)
        key = content_key({**identity, "stage": stage.key, "code": fingerprint["code"], "source": source.key})
        self.cells.setdefault(key, EvalCell(
            key=key, grid=self.config.grid_name, block=block_name, scenario=stage.scenario,
            defence_key=stage.defence_key, defence_name=stage.defence_name, stage_key=stage.key,
            attack_key=attack_key, attack_name=attack.registry_name, attack_params=attack.settings(),
            attack_budget=attack.budget(), seed=stage.seed, n_examples=n_examples, eval=eval_options,
            record_name=f"{stage.scenario}.{stage.defence_key}.{attack_key}.s{stage.seed}.{key}.json",
            settings_key=content_key(identity), fingerprint=fingerprint, source_key=source.key))

    def plan(self) -> Plan:
        for index, block in enumerate(self.grid["blocks"]):
            self.add_block(index, block)
        for transfer in self.transfers:
            self.add_transfer_cell(*transfer)
        if not self.cells:
            raise ConfigError(f"grid {self.config.grid_name} expands to no cells: every block needs scenarios, "
                              "defences and attacks")
        return Plan(grid=self.config.grid_name, options=self.options, stages=self.stages,
                    cells=list(self.cells.values()),
                    scenarios={name: scenario_fields(s) for name, s in self.scenarios.items()})


def expand(config: RunConfig) -> Plan:
    """The plan of a composed grid: its training stages and evaluation cells, keyed by content (its report
    section checked against the report's layouts too)."""
    _check_report_section(config)
    return _Planner(config).plan()


def _check_report_section(config: RunConfig) -> None:
    if config.grid.get("report"):
        try:
            validate_report_config(config.grid["report"])
        except ValueError as error:
            raise ConfigError(f"grid {config.options['grid']}: report section: {error}") from error
