"""Configuration as data: YAML files under conf/ composed with `key=value` overrides, validated on load.

`python -m bench.run grid=NAME executor=local n_examples=50 defences.at.epochs=5 local.max_parallel=2`
- top-level keys (RUN_DEFAULTS) set run options;
- `defences.<key>.<setting>`, `attacks.<key>.<setting>` change a grid entry wherever it is used;
- `scenarios.<name>.<field>` changes a scenario; `eval.<setting>` the evaluation protocol;
- `<executor>.<option>` sets an option of the chosen executor (conf/executor/<executor>.yaml lists them).
Values are parsed as YAML scalars or flow collections (`seeds=[0,1]`); nothing is ever evaluated as code.
Every unknown key or name is an error that lists the valid ones.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attacks.registry import closest_hint
from bench.conffiles import ConfigError, available, grid_name, load_conf, yaml_where
from bench.options import DECISIONS, EVAL_DEFAULTS, EvalOptions, RunOptions
from bench.scenarios import Scenario, scenario_from_dict
from bench.validation import (
    SettingError,
    as_int,
    as_seeds,
    check_dataclass_values,
    check_eval_setting,
    check_like_default,
    check_run_option,
)

RUN_DEFAULTS: dict[str, Any] = RunOptions().to_dict()  # the defaults live in bench.options.RunOptions
GRID_KEYS = {"description", "n_examples", "seeds", "eval", "defences", "attacks", "blocks", "include", "report"}
BLOCK_KEYS = {"name", "scenarios", "defences", "attacks", "n_examples", "seeds", "eval"}
GRID_SCALARS = ("n_examples", "seeds", "eval", "description", "report")  # an include's value unless the grid's


def scenario_fields(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A scenario file's fields; `based_on: <scenario>` takes that scenario's fields first, each field given here
    replacing the base's whole (a variant of a scenario under another threat model keeps one home for the rest)."""
    raw = load_conf("scenario", name)
    base = raw.pop("based_on", None)
    if base is None:
        return raw
    if not isinstance(base, str) or base in (*_seen, name):
        raise ConfigError(f"scenario {name}: based_on={base!r} must name another scenario, without a cycle "
                          f"({' -> '.join((*_seen, name, str(base)))})")
    return {**scenario_fields(base, (*_seen, name)), **raw}


def load_scenario(name: str, overrides: dict[str, Any] | None = None) -> Scenario:
    raw = scenario_fields(name)
    for key, value in (overrides or {}).items():
        set_path(raw, key.split("."), value, where=f"scenario {name}", create=True)
    try:
        check_dataclass_values(Scenario, raw, owner=f"scenarios.{name}")
        if "dataset" in raw:
            from bench.data import dataset_info

            dataset_info(raw["dataset"])
        return scenario_from_dict(name, raw)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"scenario {name}: {error}" if not str(error).startswith(("scenario", "scenarios"))
                          else str(error)) from error


def load_grid(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A grid file with its `include`s merged: defence/attack maps united, blocks concatenated."""
    if name in _seen:
        raise ConfigError(f"grid include cycle: {' -> '.join(_seen + (name,))}")
    grid = load_conf("grid", name)
    unknown = sorted(set(grid) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"grid {name}: unknown key(s) {unknown}. {closest_hint(unknown[0], GRID_KEYS)}")
    _check_grid_shape(name, grid)
    merged: dict[str, Any] = {"defences": {}, "attacks": {}, "blocks": []}
    for included in grid.get("include", []):
        _merge_include(name, merged, load_grid(included, _seen + (name,)))
    for kind in ("defences", "attacks"):
        for key, spec in (grid.get(kind) or {}).items():
            if not isinstance(spec, dict) or "name" not in spec:
                raise ConfigError(f"grid {name}: {kind}.{key} must be a mapping with a 'name'")
            merged[kind][key] = spec
    merged["blocks"].extend(grid.get("blocks") or [])
    for key in GRID_SCALARS:
        if key in grid:
            merged[key] = grid[key]
    _check_merged_grid(name, merged)
    return merged


def _merge_include(name: str, merged: dict[str, Any], part: dict[str, Any]) -> None:
    """Merge an included grid into `merged`: entries must agree, blocks add up, the first scalar wins."""
    for kind in ("defences", "attacks"):
        for key, spec in part[kind].items():
            if key in merged[kind] and merged[kind][key] != spec:
                raise ConfigError(f"grid {name}: {kind} entry {key!r} is defined differently by two includes")
            merged[kind][key] = spec
    merged["blocks"].extend(part["blocks"])
    for key in GRID_SCALARS:
        if key in part and key not in merged:
            merged[key] = part[key]


def _check_merged_grid(name: str, merged: dict[str, Any]) -> None:
    """Every block's keys and the names it uses (the planner checks the report section against the report's
    layouts, which are above this layer)."""
    for index, block in enumerate(merged["blocks"]):
        unknown = sorted(set(block) - BLOCK_KEYS)
        if unknown:
            raise ConfigError(f"grid {name}: block {index} has unknown key(s) {unknown}. "
                              f"{closest_hint(unknown[0], BLOCK_KEYS)}")
        for kind in ("defences", "attacks"):
            for key in block.get(kind, []):
                if key not in merged[kind]:
                    raise ConfigError(f"grid {name}: block {block.get('name', index)} names {kind[:-1]} {key!r}, "
                                      f"which the grid does not define. {closest_hint(key, merged[kind])}")
        for scenario in block.get("scenarios", []):
            if scenario not in available("scenario"):
                raise ConfigError(f"grid {name}: unknown scenario {scenario!r}. "
                                  f"{closest_hint(scenario, available('scenario'))}")


def _check_grid_shape(name: str, grid: dict[str, Any]) -> None:
    for key, kind in (("defences", dict), ("attacks", dict), ("eval", dict), ("blocks", list), ("include", list)):
        if grid.get(key) is not None and not isinstance(grid[key], kind):
            raise ConfigError(f"grid {name}: {key} must be a {'mapping' if kind is dict else 'list'}, "
                              f"got {grid[key]!r}")
    for index, block in enumerate(grid.get("blocks") or []):
        if not isinstance(block, dict):
            raise ConfigError(f"grid {name}: block {index} must be a mapping, got {block!r}")
        if block.get("eval") is not None and not isinstance(block["eval"], dict):
            raise ConfigError(f"grid {name}: block {block.get('name', index)}: eval must be a mapping of "
                              f"settings, got {block['eval']!r}")


def set_path(target: dict[str, Any], path: list[str], value: Any, where: str, create: bool = False) -> None:
    node = target
    for depth, key in enumerate(path[:-1]):
        if key not in node or not isinstance(node[key], dict):
            if not create:
                raise ConfigError(f"{where}: no key {'.'.join(path[:depth + 1])!r}. {closest_hint(key, node)}")
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"cannot parse value {text!r}{yaml_where(error)}") from error


def parse_overrides(argv: list[str]) -> list[tuple[str, Any]]:
    pairs = []
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"argument {item!r} is not of the form key=value (e.g. grid=demo executor=local)")
        pairs.append((key.strip(), parse_value(value)))
    return pairs


@dataclass
class RunConfig:
    """A composed run: options, the merged grid, scenario overrides and the executor's conf, as data, with the
    typed run and eval options built from them at composition (`retype` builds them again after a change made
    in place, as smoke mode makes). The executor's options are typed by the executor's own class
    (bench.executors), which this layer does not know."""

    options: dict[str, Any]          # run options as composed (RunOptions keys; `run_options` types them)
    grid: dict[str, Any]
    executor_conf: dict[str, Any]    # the executor's conf file with overrides (its `Options` class types it)
    scenario_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_options: RunOptions = field(default_factory=RunOptions)
    eval_options: EvalOptions = field(default_factory=EvalOptions)

    @property
    def grid_name(self) -> str:
        """The grid's name: its conf name, or the stem of a grid file given by path."""
        return grid_name(str(self.options["grid"]))

    @property
    def eval_settings(self) -> dict[str, Any]:
        return {**EVAL_DEFAULTS, **(self.grid.get("eval") or {})}

    def retype(self) -> None:
        """Build the typed options from the composed data (a bad value is a ConfigError)."""
        self.run_options = _typed(RunOptions.from_dict, self.options)
        self.eval_options = _typed(EvalOptions.from_dict, self.eval_settings)

    def block_eval_options(self, block: dict[str, Any]) -> EvalOptions:
        """A block's evaluation protocol: the grid's, with the block's own `eval` settings over it."""
        return _typed(EvalOptions.from_dict, {**self.eval_settings, **(block.get("eval") or {})})

    def scenario(self, name: str) -> Scenario:
        return load_scenario(name, self.scenario_overrides.get(name))

    def results_dir(self) -> Path:
        return Path(self.options["results_dir"]) / self.grid_name


def _typed(build: Any, given: dict[str, Any]) -> Any:
    try:
        return build(given)
    except SettingError as error:
        raise ConfigError(str(error)) from error


def compose(argv: list[str]) -> RunConfig:
    """Options, grid, scenario overrides and executor options from `key=value` arguments, all checked."""
    return compose_pairs(parse_overrides(argv))


def compose_pairs(pairs: list[tuple[str, Any]]) -> RunConfig:
    """A run from (key, value) pairs: the command line's keys with values as parsed (Python values); every
    key and value is checked, the typed options are built."""
    options = copy.deepcopy(RUN_DEFAULTS)
    try:
        for key, value in pairs:
            if key in ("grid", "executor"):
                options[key] = check_run_option(key, value if isinstance(value, str) else str(value))
        grid = load_grid(options["grid"])
        executor_conf = load_conf("executor", options["executor"])
        config = RunConfig(options=options, grid=grid, executor_conf=executor_conf)
        grid.setdefault("eval", {})
        for key, value in pairs:
            _apply_override(config, key, value)
        _check_grid_values(config)
        config.retype()
    except SettingError as error:
        raise ConfigError(str(error)) from error
    return config


def _apply_override(config: RunConfig, key: str, value: Any) -> None:
    options, grid, executor_options = config.options, config.grid, config.executor_conf
    head, _, rest = key.partition(".")
    if key in ("grid", "executor"):
        return
    if not rest and head in RUN_DEFAULTS:
        options[head] = check_run_option(head, value)
    elif head in ("defences", "attacks") and rest:
        entry, _, setting = rest.partition(".")
        if entry not in grid[head]:
            raise ConfigError(f"{key}: grid {options['grid']} has no {head[:-1]} {entry!r}. "
                              f"{closest_hint(entry, grid[head])}")
        if not setting:
            raise ConfigError(f"{key}: name a setting, e.g. {head}.{entry}.epochs=5")
        set_path(grid[head][entry], setting.split("."), value, where=key, create=True)
    elif head == "scenarios" and rest:
        scenario, _, field_path = rest.partition(".")
        if scenario not in available("scenario"):
            raise ConfigError(
                f"{key}: unknown scenario {scenario!r}. {closest_hint(scenario, available('scenario'))}")
        if not field_path:
            raise ConfigError(f"{key}: name a field, e.g. scenarios.{scenario}.eps=0.1")
        config.scenario_overrides.setdefault(scenario, {})[field_path] = value
    elif head == "eval" and rest:
        if rest not in EVAL_DEFAULTS:
            raise ConfigError(f"{key}: unknown eval setting {rest!r}. {closest_hint(rest, EVAL_DEFAULTS)}")
        grid["eval"][rest] = value
        for block in grid["blocks"]:  # the command line wins over a block's own setting
            (block.get("eval") or {}).pop(rest, None)
    elif head == options["executor"] and rest:
        if rest not in executor_options:
            raise ConfigError(f"{key}: executor {head} has no option {rest!r}. "
                              f"{closest_hint(rest, executor_options)}")
        executor_options[rest] = check_like_default(key, value, executor_options[rest])
    else:
        valid = sorted(RUN_DEFAULTS) + ["defences.<key>.<setting>", "attacks.<key>.<setting>",
                                        "scenarios.<name>.<field>", "eval.<setting>",
                                        f"{options['executor']}.<option>"]
        raise ConfigError(f"unknown key {key!r}. Valid: {', '.join(valid)}.{_hint(head)}")


def _check_grid_values(config: RunConfig) -> None:
    """Counts, seeds and eval settings of the grid (file and command line); the command line wins."""
    grid, options = config.grid, config.options
    if options["n_examples"] is not None:
        grid["n_examples"] = options["n_examples"]
        for block in grid["blocks"]:
            block.pop("n_examples", None)
    if options["seeds"] is not None:
        grid["seeds"] = options["seeds"]
        for block in grid["blocks"]:
            block.pop("seeds", None)
    where = f"grid {config.grid_name}"
    for index, scope in enumerate([grid, *grid["blocks"]]):
        label = where if index == 0 else f"{where} block {scope.get('name', index - 1)}"
        if "n_examples" in scope:
            as_int(f"{label}: n_examples", scope["n_examples"], minimum=1)
        if "seeds" in scope:
            scope["seeds"] = as_seeds(f"{label}: seeds", scope["seeds"])
        for kind in ("scenarios", "defences", "attacks"):
            if index and not isinstance(scope.get(kind, []), list):
                raise ConfigError(f"{label}: {kind} must be a list of names, got {scope[kind]!r}")
    if not isinstance(grid["eval"], dict):
        raise ConfigError(f"{where}: eval must be a mapping of settings, got {grid['eval']!r}")
    for index, scope in enumerate([grid, *grid["blocks"]]):
        label = where if index == 0 else f"{where} block {scope.get('name', index - 1)}"
        for key, value in (scope.get("eval") or {}).items():
            if key not in EVAL_DEFAULTS:
                raise ConfigError(f"{label}: unknown eval setting {key!r}. {closest_hint(key, EVAL_DEFAULTS)}")
            scope["eval"][key] = check_eval_setting(key, value, DECISIONS)


def _hint(head: str) -> str:
    match = closest_hint(head, list(RUN_DEFAULTS) + ["defences", "attacks", "scenarios", "eval"])
    return " " + match.split(". ", 1)[1] if ". " in match else ""
