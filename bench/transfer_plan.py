"""Planning transfer cells: a grid's `{name: transfer, from: <scenario>/<defence>/<attack>}` entries resolved to
the cell whose saved points they evaluate (bench.transfer runs them).

Every mistake is refused here, before any work: a `from` that names no cell of the grid (with the same seed
and number of examples), a source that does not save its points (`eval.save_adversarials`), a source that is
itself a transfer, or one whose examples cannot be the transfer cell's (another dataset or test subset).
A transfer cell's key includes its source cell's key, and its settings key the source's name only: a source
computed by other code or with other settings makes the transfer cell stale (`source` in its fingerprint).
"""

from __future__ import annotations

from typing import Any

from attacks.registry import closest_hint
from bench.conffiles import ConfigError
from bench.fingerprint import cell_code
from bench.options import EvalOptions
from bench.transfer import SavedPoints

TRANSFER_KEYS = {"name", "from"}


def source_cell(planner: Any, where: str, spec: dict[str, Any], stage: Any, n_examples: int) -> Any:
    """The cell a transfer entry reads from, checked (ConfigError naming what is wrong and what is valid)."""
    unknown = sorted(set(spec) - TRANSFER_KEYS)
    if unknown:
        raise ConfigError(f"{where}: a transfer entry takes only 'from' (and 'name'), not {unknown}")
    label = spec.get("from")
    if isinstance(label, str) and planner.grid["attacks"].get(label.rpartition("/")[2], {}).get("name") == \
            SavedPoints.registry_name:
        raise ConfigError(f"{where}.from={label} is itself a transfer cell: transfer the points of a cell that "
                          "runs an attack")
    named = {f"{c.scenario}/{c.defence_key}/{c.attack_key}": c for c in planner.cells.values()
             if c.attack_name != SavedPoints.registry_name}
    if not isinstance(label, str) or len(label.split("/")) != 3 or label not in named:
        raise ConfigError(f"{where}.from={label!r} is not a cell of this grid (<scenario>/<defence>/<attack>). "
                          f"{closest_hint(str(label), named)}")
    found = [c for c in planner.cells.values() if f"{c.scenario}/{c.defence_key}/{c.attack_key}" == label
             and c.seed == stage.seed]
    if not found:
        raise ConfigError(f"{where}.from={label}: the grid has no such cell with seed {stage.seed}")
    same = [c for c in found if c.n_examples == n_examples]
    if not same:
        raise ConfigError(f"{where}.from={label}: the examples must be the same, but that cell has n_examples="
                          f"{found[0].n_examples} and {stage.label}'s transfer cell {n_examples}")
    source = same[0]
    if not source.eval.save_adversarials:
        raise ConfigError(f"{where}.from={label}: that cell does not save its adversarial examples; give its "
                          "block `eval: {save_adversarials: true}` (or run with eval.save_adversarials=true)")
    _check_same_examples(planner, where, label, source, stage)
    return source


def _check_same_examples(planner: Any, where: str, label: str, source: Any, stage: Any) -> None:
    ours, theirs = planner.scenario(stage.scenario), planner.scenario(source.scenario)
    for name in ("dataset", "dataset_options", "test_subset_seed"):
        if getattr(ours, name) != getattr(theirs, name):
            raise ConfigError(f"{where}.from={label}: the examples must be the same, but scenario "
                              f"{source.scenario} has {name}={getattr(theirs, name)!r} and {stage.scenario} "
                              f"{getattr(ours, name)!r}")


def transfer_parts(planner: Any, stage: Any, attack_key: str, n_examples: int,
                   eval_options: EvalOptions) -> tuple[Any, SavedPoints, dict[str, Any], dict[str, Any]]:
    """(source cell, replaying attack, identity, fingerprint) of attack entry `attack_key`'s transfer cell on
    `stage` (a bench.grid.TrainStage; its source cell already planned); bench.grid makes the cell of them."""
    where = f"attacks.{attack_key}"
    source = source_cell(planner, where, planner.grid["attacks"][attack_key], stage, n_examples)
    label = f"{source.scenario}/{source.defence_key}/{source.attack_key}"
    attack = SavedPoints(eps=source.attack_params["eps"], norm=source.attack_params["norm"], source=label)
    identity = {"stage": stage.settings_key, "attack": attack.settings(), "eval": eval_options.identity(),
                "n_examples": n_examples, "seed": stage.seed,
                "test_subset_seed": planner.scenario(stage.scenario).test_subset_seed}
    fingerprint = {"code": cell_code(SavedPoints), **stage.fingerprint,
                   "source": {f"source cell {source.label}": source.key}}
    return source, attack, identity, fingerprint
