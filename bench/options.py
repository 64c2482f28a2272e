"""Typed options: how a grid runs (RunOptions), how a cell is evaluated (EvalOptions), and the base of each
executor's own options (ExecutorOptions; the subclasses live beside their executors in bench/executors/), each
checked once when built from user input (bench.validation says what is valid, in the same `key=value ...
valid: ...` words as everywhere else).

A plan stores its RunOptions (plan.json's "options") and each cell its EvalOptions (a cell's "eval"); jobs get
them from the plan, never from a dict read by string keys. The executor options' defaults have one home, the
executor's file under conf/executor/ (with a comment per option); the dataclasses here only type them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from bench.validation import SettingError, check_dataclass_values, check_eval_setting, check_run_option

DECISIONS = ("single", "majority", "worst")


def _unknown(owner: str, given: dict[str, Any], valid: list[str]) -> None:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        from attacks.registry import closest_hint

        raise SettingError(f"{owner}: unknown option {unknown[0]!r}. {closest_hint(unknown[0], valid)}")


@dataclass(frozen=True)
class RunOptions:
    """How a grid runs: what to plan, where results and artifacts go, which executor, device and threads."""

    grid: str = "demo"
    executor: str = "debug"
    dry_run: bool = False
    wait: bool = True
    results_dir: str = "results"
    artifacts_dir: str = "artifacts"
    data_dir: str | None = None
    model_dir: str = "models"
    device: str = "auto"
    log_level: str = "INFO"
    threads: int | None = None
    n_examples: int | None = None
    seeds: list[int] | None = None
    retry_failed: bool = True
    report: bool = True
    smoke: bool = False  # minimal budgets, synthetic data when absent, separate folders (bench/smoke.py)

    @classmethod
    def from_dict(cls, given: dict[str, Any]) -> RunOptions:
        """Checked options from a mapping (missing ones take their defaults); raises SettingError."""
        _unknown("run options", given, [f.name for f in dataclasses.fields(cls)])
        return cls(**{key: check_run_option(key, value) for key, value in given.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> RunOptions:
        return self.from_dict({**self.to_dict(), **changes})


@dataclass(frozen=True)
class EvalOptions:
    """The evaluation protocol of a cell (part of its settings key: change one, and the cell is another)."""

    batch_size: int = 100       # examples per attack batch (and per saved partial result)
    draws: int = 1              # forward passes per example for deterministic defences
    stochastic_draws: int = 8   # forward passes per example for stochastic defences (K)
    decision: str = "single"    # headline accuracy for stochastic defences: single | majority | worst
    save_adversarials: bool = False  # keep every example's final point (bench.adversarials); not in the key

    @classmethod
    def from_dict(cls, given: dict[str, Any]) -> EvalOptions:
        _unknown("eval", given, [f.name for f in dataclasses.fields(cls)])
        return cls(**{key: check_eval_setting(key, value, DECISIONS) for key, value in given.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The settings that change a result (a cell's key): all but `save_adversarials`, which only keeps the
        points the evaluation computes anyway (so turning it on reuses no other seeds, and older keys hold)."""
        return {k: v for k, v in self.to_dict().items() if k != "save_adversarials"}

    def draws_for(self, stochastic: bool) -> int:
        """Forward passes per example: K for a stochastic defence, `draws` for a deterministic one."""
        return int(self.stochastic_draws if stochastic else self.draws)


EVAL_DEFAULTS: dict[str, Any] = EvalOptions().to_dict()


@dataclass(frozen=True)
class ExecutorOptions:
    """Base of an executor's options. Subclasses name their conf file (`conf_name`) and type its keys; the
    defaults are that file's values (one home), filled in by `from_dict`."""

    conf_name: ClassVar[str] = ""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        from bench.conffiles import load_conf

        return load_conf("executor", cls.conf_name) if cls.conf_name else {}

    @classmethod
    def from_dict(cls, given: dict[str, Any] | None = None) -> ExecutorOptions:
        """Options from a mapping over the conf file's defaults, each checked against its field's type."""
        names = [f.name for f in dataclasses.fields(cls)]
        _unknown(f"executor {cls.conf_name}", given or {}, names)
        values = {**cls.defaults(), **(given or {})}
        check_dataclass_values(cls, values, owner=cls.conf_name)
        missing = [name for name in names if name not in values]
        if missing:
            raise SettingError(f"executor {cls.conf_name}: conf/executor/{cls.conf_name}.yaml lacks {missing}")
        return cls(**{name: values[name] for name in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
