"""`python -m bench.diagnose grid=NAME cell=<key | scenario/defence/attack> [n=100] [seed=S] [budget...]`:
run `attacks.diagnose` on one cell's fitted defence and test subset, and write
results/<grid>/diagnostics/<scenario>.<defence>.<attack>.s<seed>.json.

The diagnostics attack what the cell's attack attacks (the whole defence, its classifier alone for
`target: classifier`, the identity-gradient view for `bpda_eot`), at the cell's eps and norm, with the cell's
loss (ce for attacks without one, such as aa and randaa; the masking check adds the other loss family) and
steps / EOT / max_batch unless given here, and K = the grid's eval draws. Budget keys: steps, step_size, eot,
draws, square_queries, square_eot, eps_max, eps_points, tolerance, max_batch, loss, and the flags' thresholds
alpha (0.01), min_count (5), min_fraction (0.05), checked before any work. Any other key=value is a bench.run setting
(results_dir, artifacts_dir, device, defences.<key>.<setting>, ...). A missing training stage is an error
unless `train_missing=true`, which fits it first (as bench.run would).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import attacks
from attacks.diagnostics import Budget
from attacks.losses import LOSSES
from attacks.seeding import seed_everything
from bench import layout
from bench.conffiles import ConfigError
from bench.config import compose, parse_overrides
from bench.grid import expand
from bench.logs import configure_logging
from bench.plan import EvalCell, Plan
from bench.runtime import git_commit, package_versions, resolve_device
from defences.atomic import write_json_atomic

LOG = logging.getLogger("bench.diagnose")
BUDGET_KEYS = {f.name for f in dataclasses.fields(Budget)} - {"seed"}
OWN_KEYS = {"cell", "n", "seed", "train_missing"}
USAGE = __doc__


def find_cell(plan: Plan, spec: str, seed: int | None) -> EvalCell:
    """A cell by key (or a unique key prefix) or by scenario/defence/attack (and seed when several)."""
    by_key = [c for c in plan.cells if c.key.startswith(spec)]
    if by_key and len(spec) >= 6:
        matches = by_key
    else:
        parts = spec.split("/")
        if len(parts) != 3:
            raise ConfigError(f"cell={spec!r} is neither a cell key nor scenario/defence/attack. Cells: "
                              + ", ".join(sorted({f'{c.scenario}/{c.defence_key}/{c.attack_key}' for c in plan.cells})))
        matches = [c for c in plan.cells if (c.scenario, c.defence_key, c.attack_key) == tuple(parts)]
    if seed is not None:
        matches = [c for c in matches if c.seed == seed]
    if not matches:
        raise ConfigError(f"no cell of grid {plan.grid} matches cell={spec!r}" + (f" seed={seed}" if seed is not None
                          else "") + ". Cells: " + ", ".join(c.label for c in plan.cells))
    if len({(c.scenario, c.defence_key, c.attack_key, c.seed) for c in matches}) > 1:
        raise ConfigError(f"cell={spec!r} matches several cells ({', '.join(c.label for c in matches)}); "
                          "give seed=S or the cell key")
    return matches[0]


def cell_budget(cell: EvalCell, stochastic: bool, draws: int, given: dict[str, Any],
                loss: str = "ce") -> dict[str, Any]:
    """The diagnostics budget: the cell attack's loss / steps / EOT / max_batch, the grid's draws, then `given`."""
    params = cell.attack_params
    budget: dict[str, Any] = {"draws": draws, "seed": cell.seed, "loss": loss}
    steps = params.get("steps", params.get("apgd_steps"))
    if steps:
        budget["steps"] = int(steps)
    if stochastic and params.get("eot", 1) > 1:
        budget["eot"] = int(params["eot"])
    if params.get("max_batch"):
        budget["max_batch"] = int(params["max_batch"])
    return {**budget, **given}


def split_arguments(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(this tool's own settings, budget settings, bench.run settings) from `key=value` arguments."""
    own: dict[str, Any] = {}
    budget: dict[str, Any] = {}
    rest: list[str] = []
    for item, (key, value) in zip(argv, parse_overrides(argv), strict=True):
        if key in OWN_KEYS:
            own[key] = value
        elif key in BUDGET_KEYS:
            budget[key] = value
        else:
            rest.append(item)
    if "cell" not in own:
        raise ConfigError("name the cell: cell=<key> or cell=<scenario>/<defence>/<attack>")
    if "loss" in budget and budget["loss"] not in LOSSES:
        raise ConfigError(f"loss={budget['loss']!r} is not valid; valid: {', '.join(LOSSES)}")
    try:
        Budget(**budget)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"invalid diagnostics budget: {error}") from None
    return own, budget, rest


def ensure_fitted(plan: Plan, cell: EvalCell, train_missing: bool) -> None:
    """Fit the cell's missing training stages when asked to; otherwise a missing one is an error."""
    from bench.training_stage import run_training_stage

    missing = [key for key in plan.stage_chain(cell.stage_key)
               if not layout.stage_is_done(plan.stages[key].artifact_dir)]
    if missing and not train_missing:
        raise ConfigError(f"the training stage of {cell.label} ({plan.stages[cell.stage_key].artifact_dir}) is not "
                          f"fitted yet: run `python -m bench.run grid={plan.grid}` first, or add train_missing=true")
    for key in reversed(missing):
        LOG.info("fitting missing training stage %s", plan.stages[key].label)
        run_training_stage(plan, key)


def diagnose_cell(plan: Plan, cell: EvalCell, n: int, budget: dict[str, Any]) -> dict[str, Any]:
    """Run attacks.diagnose on the cell's fitted defence and first n test examples; the JSON document."""
    from bench.evaluate import build_attack, evaluation_subset
    from bench.training_stage import load_fitted_defence

    device = resolve_device(plan.options.device)
    defence = load_fitted_defence(plan, cell.stage_key, device)
    _, images, labels = evaluation_subset(plan.scenario(cell.scenario), n, plan.options.data_dir)
    attack = build_attack(cell)
    surface = attack.surface(defence)
    stochastic = bool(getattr(surface, "stochastic", False))
    settings = cell_budget(cell, stochastic, cell.eval.draws_for(stochastic), budget,
                           loss=getattr(attack, "loss", "ce"))
    LOG.info("diagnosing %s on n=%d with %s", cell.label, len(labels), settings)
    seed_everything(cell.seed)
    report = attacks.diagnose(surface, images.to(device), labels.to(device), attack.eps, attack.norm,
                              stochastic=stochastic, **settings)
    print(report.summary(), flush=True)
    LOG.info("raised: %s", ", ".join(report.raised) or "none")
    return {"scenario": cell.scenario, "defence": cell.defence_key, "attack": cell.attack_key, "seed": cell.seed,
            **report.to_json(), "grid": plan.grid, "cell": cell.key, "defence_name": cell.defence_name,
            "attack_name": cell.attack_name, "target": attack.target, "created_at": time.time(),
            "git_commit": git_commit(), "packages": package_versions()}


def run(argv: list[str]) -> Path:
    own, budget, rest = split_arguments(argv)
    config = compose(rest)
    plan = expand(config)
    cell = find_cell(plan, str(own["cell"]), None if own.get("seed") is None else int(own["seed"]))
    ensure_fitted(plan, cell, bool(own.get("train_missing")))
    document = diagnose_cell(plan, cell, int(own.get("n", 100)), budget)
    path = layout.diagnostics_path(config.results_dir(), cell)
    write_json_atomic(path, document)
    LOG.info("wrote %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    try:
        configure_logging("INFO")
        run(argv)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
