"""The conf/ folder: reading its YAML files (grids, scenarios, executors) and the error a bad one raises.

The lowest module of configuration: bench.config composes these files with overrides, bench.options types the
executors' files; neither needs the other to read a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from attacks.registry import closest_hint

CONF_DIR = Path(__file__).resolve().parent / "conf"
KINDS = ("grid", "scenario", "executor")


class ConfigError(ValueError):
    """A configuration problem, stated with what was wrong and what is valid."""


def error_line(error: BaseException) -> str:
    """An error as the one `error: ...` line the command-line tools print (never a traceback)."""
    return "error: " + " ".join(str(error).split())


def available(kind: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / kind).glob("*.yaml"))


def is_conf_file(name: str) -> bool:
    """Whether a conf name is a path to a YAML file (a user's own grid, say) rather than a name under conf/."""
    return name.endswith((".yaml", ".yml"))


def grid_name(grid: str) -> str:
    """A grid's name (its results folder): its conf name, or the stem of a grid file given by path."""
    return Path(grid).stem if is_conf_file(grid) else grid


def load_conf(kind: str, name: str) -> dict[str, Any]:
    """conf/<kind>/<name>.yaml, or, for a name ending in .yaml/.yml, that file (a user's own grid, say)."""
    path = Path(name) if is_conf_file(name) else CONF_DIR / kind / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown {kind} {name!r}. {closest_hint(name, available(kind))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML{yaml_where(error)}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read it: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping, found {type(data).__name__}")
    return data


def yaml_where(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None)
    return f"{where}: {problem}" if problem else where
