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
- **Budgets**, set through the defences' and attacks' own settings (grid entry overrides, so the cell
  records show them): defences train 1 epoch on batches of 4 (CARSO: micro-batches of 2, one warm-up
  epoch at its 5e-9 initial LR, 2 reconstructions, PGD-2; AT: PGD-2; AToP: 1 pre-training and 1
  fine-tuning epoch; the collapse check off, since one epoch on 8 images is not a training run; published
  CARSO weights that are absent replaced by random ones).
  Attack budgets shrink logarithmically, `n -> floor + ceil(log10 n) - 1` above a floor (steps, APGD/FAB
  steps and EOT: floor 1, so 10/20/100/1000 steps become 1/2/2/3 and EOT 20 becomes 2; Square queries: 10),
  so grid entries that differ only in budget (PGD-10/20/1000) stay distinct cells; restarts 1,
  2 target classes, 2 selection draws.

Smoke results say nothing about robustness; they say every planned cell runs to a record.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import fields
from typing import Any

from bench import layout

SMOKE_IMAGES = 8
SMOKE_EXAMPLES = 4
SMOKE_EVAL = {"batch_size": SMOKE_EXAMPLES, "stochastic_draws": 2, "draws": 1}

# Defence settings applied wherever the defence's Params dataclass has the field.
DEFENCE_BUDGET: dict[str, Any] = {
    "epochs": 1, "batch_size": 4, "micro_batch": 2, "attack_steps": 2, "eps_warmup_epochs": 0,
    "warmup_epochs": 0, "collapse_factor": 0.0, "pgd_steps": 2, "plateau_epochs": 0, "anneal_epochs": 0,
    "kl_start_epoch": 0, "kl_end_epoch": 1, "samples": 2, "check_examples": 4, "pretrain_epochs": 1,
    "pretrain_batch_size": 4, "finetune_epochs": 1, "finetune_batch_size": 4,
    "random_if_missing": True,  # published weights (defences/carso/official.py) absent: random ones
}
# Per-defence exceptions: CARSO's summed-BCE RAdam diverges without its warm-up epoch (defences/carso/params.py).
DEFENCE_BUDGET_BY_NAME: dict[str, dict[str, Any]] = {"carso": {"warmup_epochs": 1}}

# Attack settings: (floor, shrink logarithmically) or a fixed value.
ATTACK_STEPS_FLOOR = {"steps": 1, "apgd_steps": 1, "fab_steps": 1, "eot": 1, "square_queries": 10}
ATTACK_FIXED: dict[str, Any] = {"restarts": 1, "apgd_restarts": 1, "fab_restarts": 1, "target_classes": 2,
                                "selection_draws": 2}


def shrink(value: int, floor: int) -> int:
    """A budget `value` cut to `floor + ceil(log10 value) - 1` when above `floor` (monotone: order is kept)."""
    if value <= floor:
        return value
    return min(value, floor + math.ceil(math.log10(value)) - 1)


def defence_budget(name: str) -> dict[str, Any]:
    """The smoke settings of defence `name`: those of DEFENCE_BUDGET its Params dataclass has."""
    import defences

    valid = {f.name for f in fields(defences.REGISTRY.get_class(name).Params)}
    budget = {**DEFENCE_BUDGET, **DEFENCE_BUDGET_BY_NAME.get(name, {})}
    return {key: value for key, value in budget.items() if key in valid}


def attack_budget(spec: dict[str, Any]) -> dict[str, Any]:
    """The smoke settings of a grid attack entry: its resolved budgets shrunk (see the module docstring)."""
    import attacks

    cls = attacks.REGISTRY.get_class(spec["name"])
    defaults = {f.name: f.default for f in fields(cls)}
    out: dict[str, Any] = {}
    for key, floor in ATTACK_STEPS_FLOOR.items():
        value = spec.get(key, defaults.get(key))
        if isinstance(value, int) and not isinstance(value, bool):
            out[key] = shrink(value, floor)
    out.update({key: value for key, value in ATTACK_FIXED.items() if key in defaults})
    return out


def apply(config: Any) -> None:
    """Turn a composed RunConfig into its smoke version, in place (folders, sizes, budgets)."""
    options, grid = config.options, config.grid
    options["results_dir"] = str(layout.smoke_dir(options["results_dir"]))
    options["artifacts_dir"] = str(layout.smoke_dir(options["artifacts_dir"]))
    grid["n_examples"] = SMOKE_EXAMPLES
    grid["eval"] = {**(grid.get("eval") or {}), **SMOKE_EVAL}
    for block in grid["blocks"]:
        block.pop("n_examples", None)
    for kind, budget in (("defences", defence_budget_of), ("attacks", attack_budget)):
        for spec in grid[kind].values():
            # an unknown name is left as it is: the planner reports it with the valid names
            with contextlib.suppress(LookupError, ImportError, TypeError, ValueError):
                spec.update(budget(spec))


def defence_budget_of(spec: dict[str, Any]) -> dict[str, Any]:
    return defence_budget(spec["name"])


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
