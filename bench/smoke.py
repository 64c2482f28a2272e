"""Smoke mode (`smoke=true`): every stage and cell of a grid, real architectures and code paths, minimal budgets.

What changes, and only this (everything else — architectures, defences, attacks, the runner, the
records, the report — is the real thing):

- **Folders**: results under `<results_dir>/smoke/<grid>`, training artifacts under `<artifacts_dir>/smoke`,
  so smoke records never mix with real ones.
- **Data**: each split is cut to `SMOKE_IMAGES` (8) images; when the dataset's files are absent, synthetic
  images of the scenario's shape and class count take their place (bench/data/synthetic.py).
- **Classifiers**: `robustbench:` and `file:` sources become the same architecture with random weights
  (RobustBench names map to architectures in bench/zoo/robustbench.py); `train:` ones are trained as usual
  (for one epoch).
- **Evaluation**: `n_examples` 4, one batch, K = 2 draws for stochastic defences.
- **Budgets**, declared by each defence and attack on its own class (`smoke_budget`: a setting -> its smoke
  value, or `attacks.base.Budget(floor)` for a budget that shrinks logarithmically, `n -> floor + ceil(log10 n)
  - 1` above the floor; settings not named keep their values) and applied through its settings (grid entry
  overrides, so the cell records show them). The built-in ones: defences train 1 epoch on batches of 4 (CARSO:
  micro-batches of 2, one warm-up epoch at its 5e-9 initial LR, 2 reconstructions, PGD-2; AT: PGD-2; AToP: 1
  pre-training and 1 fine-tuning epoch; the collapse check off, since one epoch on 8 images is not a training
  run; published CARSO weights that are absent replaced by random ones); attack steps, APGD/FAB steps and EOT
  shrink from floor 1 (10/20/100/1000 steps become 1/2/2/3, EOT 20 becomes 2), Square queries from floor 10, so
  grid entries that differ only in budget (PGD-10/20/1000) stay distinct cells; restarts 1, 2 target classes,
  2 selection draws.
- **A component that declares nothing** (`smoke_budget` None) gets DEFAULT_BUDGETS, the harness's conventional
  budget names, where its settings have them (attacks: `steps` and `eot` shrunk from floor 1, `restarts` 1,
  `selection_draws` 2; defences: `epochs` 1, `batch_size` 4, no warm-up, the collapse check off). Any other
  integer setting makes smoke mode refuse the grid before any work, naming those settings and the declaration
  to add: whether an integer is a budget (iterations, queries: to shrink) or a size (a width, a kernel: to keep)
  cannot be told from its name, and a guess that missed would run that budget full-size in a mode meant to
  take minutes. A subclass inherits its parent's declaration.

Smoke results say nothing about robustness; they say every planned cell runs to a record.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from attacks.base import Budget
from bench import layout
from bench.conffiles import ConfigError

SMOKE_IMAGES = 8
SMOKE_EXAMPLES = 4
SMOKE_EVAL = {"batch_size": SMOKE_EXAMPLES, "stochastic_draws": 2, "draws": 1}
# The smoke budget of a component that declares none (see the module docstring).
DEFAULT_BUDGETS: dict[str, dict[str, Any]] = {
    "attack": {"steps": Budget(1), "eot": Budget(1), "restarts": 1, "selection_draws": 2},
    # defences.training.TrainingSettings' names too: a user defence that trains with it gets the built-ins' budget
    "defence": {"epochs": 1, "batch_size": 4, "warmup_epochs": 0, "collapse_factor": 0.0},
}


class SmokeBudgetError(ConfigError):
    """A component's smoke budget is missing where it is needed, or names settings the component lacks."""


def shrink(value: int, floor: int) -> int:
    """A budget `value` cut to `floor + ceil(log10 value) - 1` when above `floor` (monotone: order is kept)."""
    if value <= floor:
        return value
    return min(value, floor + math.ceil(math.log10(value)) - 1)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _table(kind: str, cls: type, defaults: dict[str, Any], owner: str) -> dict[str, Any]:
    """The component's declared smoke budget, or the default after checking that it covers every integer setting."""
    declared = cls.smoke_budget
    if declared is not None:
        unknown = sorted(set(declared) - set(defaults))
        if unknown:
            raise SmokeBudgetError(f"{owner}: {cls.__module__}:{cls.__qualname__}.smoke_budget names "
                                   f"{', '.join(unknown)}, which are not among its settings ({', '.join(defaults)})")
        return dict(declared)
    table = DEFAULT_BUDGETS[kind]
    uncovered = [f"{name}={value}" for name, value in defaults.items() if _is_integer(value) and name not in table]
    if uncovered:
        path = f"{cls.__module__}:{cls.__qualname__}"
        raise SmokeBudgetError(
            f"smoke mode: {owner if path in owner else f'{owner} ({path})'} declares no smoke budget and has integer "
            f"settings the default ({', '.join(table)}) does not cover: {', '.join(uncovered)}. Declare "
            f"`smoke_budget` on the class: a mapping from each budget setting to its smoke value or "
            f"attacks.base.Budget(floor) (e.g. {{'{uncovered[0].partition('=')[0]}': Budget(1)}}); settings it "
            "does not name keep their values ({} when none is a budget)")
    return table


def budget_settings(kind: str, cls: type) -> list[str]:
    """The settings a component's smoke budget (declared, else the default) marks as budgets (`Budget`)."""
    table = DEFAULT_BUDGETS[kind] if cls.smoke_budget is None else cls.smoke_budget
    return [key for key, rule in table.items() if isinstance(rule, Budget)]


def smoke_settings(kind: str, cls: type, settings_class: type, given: dict[str, Any], owner: str) -> dict[str, Any]:
    """The smoke settings of a component (`kind` "attack" or "defence", its class and settings dataclass) given
    the grid entry's settings `given`: its smoke budget's values, and its Budget settings shrunk."""
    defaults = {f.name: f.default for f in fields(settings_class) if f.init}
    out: dict[str, Any] = {}
    for key, rule in _table(kind, cls, defaults, owner).items():
        if key not in defaults:
            continue
        if isinstance(rule, Budget):
            value = given.get(key, defaults[key])
            if _is_integer(value):
                out[key] = shrink(value, rule.floor)
        else:
            out[key] = rule
    return out


def defence_budget(name: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The smoke settings of defence `name` (a grid entry's `given` settings: those its budget shrinks)."""
    import defences

    cls = defences.REGISTRY.get_class(name)
    return smoke_settings("defence", cls, cls.Params, given or {}, f"defence {name!r}")


def attack_budget(spec: dict[str, Any]) -> dict[str, Any]:
    """The smoke settings of a grid attack entry: its resolved budgets shrunk (see the module docstring)."""
    import attacks

    cls = attacks.REGISTRY.get_class(spec["name"])
    return smoke_settings("attack", cls, cls, spec, f"attack {spec['name']!r}")


def apply(config: Any) -> None:
    """Turn a composed RunConfig into its smoke version, in place (folders, sizes, budgets)."""
    options, grid = config.options, config.grid
    options["results_dir"] = str(layout.smoke_dir(options["results_dir"]))
    options["artifacts_dir"] = str(layout.smoke_dir(options["artifacts_dir"]))
    grid["n_examples"] = SMOKE_EXAMPLES
    grid["eval"] = {**(grid.get("eval") or {}), **SMOKE_EVAL}
    for block in grid["blocks"]:
        block.pop("n_examples", None)
        for key in SMOKE_EVAL:
            (block.get("eval") or {}).pop(key, None)
    for kind, budget in (("defences", defence_budget_of), ("attacks", attack_budget)):
        for key, spec in grid[kind].items():
            try:
                smoke = budget(spec)
            except SmokeBudgetError as error:
                raise SmokeBudgetError(f"{kind}.{key}: {error}") from None
            except (LookupError, ImportError, TypeError, ValueError):
                continue  # an unknown name is left as it is: the planner reports it with the valid names
            spec.update(smoke)


def defence_budget_of(spec: dict[str, Any]) -> dict[str, Any]:
    return defence_budget(spec["name"], spec)


# --- the hooks of bench/training_stage.py ----------------------------------------------------------------

def load_split(scenario: Any, split: str, data_dir: str | None):
    """The first SMOKE_IMAGES images of the real split, or synthetic ones of its shape when it is absent."""
    from bench.data import load_dataset
    from bench.data.base import DatasetNotFoundError
    from bench.data.synthetic import synthetic_split

    try:
        real = load_dataset(scenario.dataset, split, root=data_dir, **scenario.dataset_options)
        return real.subset(range(min(SMOKE_IMAGES, len(real))))
    except DatasetNotFoundError:
        task = scenario.task()
        return synthetic_split(scenario.dataset, split, SMOKE_IMAGES, task.image_shape, task.num_classes)


def make_classifier(scenario: Any) -> tuple[Any, dict[str, Any]]:
    """A `file:`/`robustbench:` classifier's architecture with random weights (a `train:` one as usual)."""
    from bench.zoo import build_architecture
    from bench.zoo.robustbench import robustbench_architecture

    task = scenario.task()
    kind, _, target = scenario.classifier.partition(":")
    if kind == "robustbench":
        arch, params = robustbench_architecture(target, scenario.robustbench_dataset or "cifar10")
    else:
        arch, params = scenario.classifier_arch, dict(scenario.classifier_params)
    model = build_architecture(arch, in_channels=task.channels, num_classes=task.num_classes, image_size=task.height,
                               mean=task.mean, std=task.std, **params)
    provenance = {"source": scenario.classifier, "arch": arch, "pretrained": True,
                  "smoke": "same architecture, random weights"}
    return model.eval(), provenance
