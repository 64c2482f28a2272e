"""Type and range checks for user settings, so that every bad input is refused before any work starts.

Two kinds of checks:
- run options and eval settings: a table of (kind, range) per key (`check_option`);
- defence and attack settings: the annotated field types of their dataclasses (`check_dataclass_values`),
  plus ranges that hold for every setting of a given name (counts >= 1, finite non-negative numbers).
Every message names the key, the value given and what is valid.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# Settings of these names count something: zero or less is never valid, whatever defines them.
AT_LEAST_ONE = {"batch_size", "steps", "samples", "max_batch", "restarts", "eot", "eot_iter", "micro_batch",
                "num_masks", "patches_per_side", "draws", "stochastic_draws", "epochs", "attack_steps",
                "pgd_steps", "n_queries", "square_queries", "selection_draws"}


class SettingError(ValueError):
    """A setting of the wrong type or out of range; the message names key, value and what is valid."""


def describe_value(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise SettingError(f"{key}={describe_value(value)} is not a boolean; valid: true or false")


def as_int(key: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingError(f"{key}={describe_value(value)} is not an integer"
                           + (f"; valid: an integer >= {minimum}" if minimum is not None else ""))
    if minimum is not None and value < minimum:
        raise SettingError(f"{key}={value} is out of range; valid: an integer >= {minimum}")
    return value


def as_seeds(key: str, value: Any) -> list[int]:
    """A seed, a list of seeds, or a comma-separated string of them (`seeds=0,1`)."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*,?\s*", value):
        value = [int(part) for part in value.split(",") if part.strip()]
    items = value if isinstance(value, list) else [value]
    if not items:
        raise SettingError(f"{key}=[] is empty; valid: a seed (integer >= 0), a list of them, or 0,1,2")
    try:
        seeds = [as_int(key, item, minimum=0) for item in items]
    except SettingError:
        raise SettingError(f"{key}={describe_value(value)} is not valid; valid: a seed (integer >= 0), "
                           f"a list of them ([0, 1]) or a comma-separated string (0,1)") from None
    if len(set(seeds)) != len(seeds):
        raise SettingError(f"{key}={seeds} repeats a seed; valid: distinct seeds")
    return seeds


def check_run_option(key: str, value: Any) -> Any:
    """A run option's value, checked (and normalised: `seeds` always a list); raises SettingError."""
    if key in ("dry_run", "wait", "retry_failed", "report", "smoke"):
        return as_bool(key, value)
    if key == "n_examples":
        return None if value is None else as_int(key, value, minimum=1)
    if key == "threads":
        return None if value is None else as_int(key, value, minimum=0)
    if key == "seeds":
        return None if value is None else as_seeds(key, value)
    if key == "device":
        if not isinstance(value, str) or not DEVICE_PATTERN.match(value):
            raise SettingError(f"device={describe_value(value)} is not a device; valid: auto, cpu, cuda, cuda:N, mps")
        return value
    if key == "log_level":
        if not isinstance(value, str) or value.upper() not in LOG_LEVELS:
            raise SettingError(f"log_level={describe_value(value)} is not valid; valid: {', '.join(LOG_LEVELS)}")
        return value.upper()
    if key in ("grid", "executor", "results_dir", "artifacts_dir", "model_dir"):
        if not isinstance(value, str) or not value.strip():
            raise SettingError(f"{key}={describe_value(value)} is not valid; valid: a non-empty name or path")
        return value
    if key == "data_dir":
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise SettingError(f"data_dir={describe_value(value)} is not valid; valid: a folder path")
        return value
    return value


def check_eval_setting(key: str, value: Any, decisions: tuple[str, ...]) -> Any:
    if key in ("batch_size", "draws", "stochastic_draws"):
        return as_int(f"eval.{key}", value, minimum=1)
    if key == "save_adversarials":
        return as_bool(f"eval.{key}", value)
    if key == "decision" and value not in decisions:
            raise SettingError(f"eval.decision={describe_value(value)} is not valid; valid: {', '.join(decisions)}")
    return value


def check_like_default(key: str, value: Any, default: Any) -> Any:
    """An executor option must have the type of its default (an int where the default is an int, ...)."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        return as_bool(key, value)
    if isinstance(default, int):
        return as_int(key, value, minimum=0 if default >= 0 else None)
    if isinstance(default, float):
        return _number(key, value)
    if isinstance(default, str) and not isinstance(value, str):
        raise SettingError(f"{key}={describe_value(value)} is not valid; valid: a string (like {default!r})")
    return value


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingError(f"{key}={describe_value(value)} is not a number")
    if not math.isfinite(value):
        raise SettingError(f"{key}={value} is not finite; valid: a finite number")
    return value


# --- dataclass settings (defence Params, attacks) -------------------------------------------------------

def check_dataclass_values(cls: type, given: dict[str, Any], owner: str) -> None:
    """Check every given setting against its annotated type and the ranges common to all settings."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable annotations (a user's class): leave the checks to the class itself
        return
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for name, value in given.items():
        if name not in defaults or name not in hints:
            continue
        key = f"{owner}.{name}"
        if not _matches(value, hints[name]):
            raise SettingError(f"{key}={describe_value(value)} has the wrong type; valid: {_type_name(hints[name])}")
        _check_range(key, name, value, defaults[name])


def _check_range(key: str, name: str, value: Any, default: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if not math.isfinite(value):
        raise SettingError(f"{key}={value} is not finite; valid: a finite number")
    if name in AT_LEAST_ONE and value < 1:
        raise SettingError(f"{key}={value} is out of range; valid: >= 1")
    negative_default = isinstance(default, int | float) and not isinstance(default, bool) and default < 0
    if value < 0 and not negative_default:
        raise SettingError(f"{key}={value} is negative; valid: >= 0")


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return not args or all(_matches(item, args[0]) for item in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    return True  # a type we do not know how to check: the class's own validation decides


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))
