"""GPU-hours of a plan's evaluation cells from measured costs (a `python -m bench.benchmarks.gpu` JSON file).

`slurm.calibration=gpu_calibration.json` makes the SLURM dry run print this estimate beside the profile's
time limits. A cell costs n_examples x (per-image seconds of its defence's cost kind under its attack), each
fact declared by the component:
- the defence's cost kind is its class's `cost_kind` (`carso`, `atop`, or `at` for a classifier alone: AT or
  standard); a defence that declares none is not priced (its cells are listed as not covered);
- an attack measured under that kind in the file (`<kind>/<attack>`: `aa`, `randaa`, `pgd_eot`, `adaptive`
  where bench.benchmarks.gpu measured them) costs that measurement times its budget relative to the measured
  (default) one: the largest ratio of a budget setting its class declares (`attacks.base.Budget` in its
  `smoke_budget`: steps, APGD/FAB steps, Square queries) to its default, times the EOT ratio;
- any other attack is priced by its own `Attack.passes_per_image()` (forward+backward passes of one image at
  its settings: PGD and CW steps x restarts, FGSM 1, BPDA+EOT steps x EOT, APGD steps x EOT x restarts, Square
  queries / 3; a transfer cell 0, it replays saved points) in units of one pass through the defence, the unit
  cost taken from the measured PGD+EOT (its cost / the passes of its default budget); an attack whose passes
  are not known in advance is not priced.
Training stages are not calibrated: their hours stay the profile's time limits.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from bench.conffiles import ConfigError
from bench.transfer import TRANSFER

REFERENCE_ATTACK = "pgd_eot"  # the measured attack whose cost per pass prices the others


def load_calibration(path: str | Path) -> dict[str, Any]:
    file = Path(path).expanduser()
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"slurm.calibration={str(path)!r}: cannot read a calibration JSON there ({error}); "
                          "write one with python -m bench.benchmarks.gpu --out <file>") from error
    if not isinstance(data, dict) or not isinstance(data.get("per_image_seconds"), dict):
        raise ConfigError(f"slurm.calibration={str(path)!r} has no 'per_image_seconds' mapping: not a file "
                          "written by python -m bench.benchmarks.gpu")
    return data


def defence_kind(defence_name: str) -> str | None:
    """The cost kind the defence's class declares (`Defence.cost_kind`); None: not priced."""
    import defences

    return defences.REGISTRY.get_class(defence_name).cost_kind


def _attack(attack_name: str, settings: dict[str, Any]) -> Any:
    import attacks

    return attacks.build(attack_name, **{k: v for k, v in settings.items() if k != "name"})


def budget_ratio(attack_name: str, settings: dict[str, Any]) -> float:
    """The cell's budget over the measured (default) one of a directly measured attack."""
    import attacks
    from bench.smoke import budget_settings

    cls = attacks.REGISTRY.get_class(attack_name)
    defaults = {f.name: f.default for f in fields(cls)}
    steps = [k for k in budget_settings("attack", cls) if k != "eot"]
    ratios = [settings[k] / defaults[k] for k in steps if isinstance(defaults.get(k), int) and k in settings
              and defaults[k] > 0]
    eot = settings.get("eot", 1) / defaults["eot"] if defaults.get("eot") else 1.0
    return (max(ratios) if ratios else 1.0) * eot


def pass_units(attack_name: str, settings: dict[str, Any]) -> float | None:
    """Forward+backward passes per image of an attack at `settings` (its `passes_per_image`); None if unknown.
    A transfer cell replays saved points: no attack pass, only the judgement's forward passes."""
    if attack_name == TRANSFER:
        return 0.0
    return _attack(attack_name, settings).passes_per_image()


def per_image_seconds(calibration: dict[str, Any], kind: str | None, attack_name: str,
                      settings: dict[str, Any]) -> float | None:
    if kind is None:
        return None
    measured = calibration["per_image_seconds"]
    direct = measured.get(f"{kind}/{attack_name}")
    if direct is not None:
        return direct * budget_ratio(attack_name, settings)
    reference = measured.get(f"{kind}/{REFERENCE_ATTACK}")
    units = pass_units(attack_name, settings)
    if reference is None or units is None:
        return None
    return reference / _attack(REFERENCE_ATTACK, {}).passes_per_image() * units


def estimate_eval_hours(plan: Any, cell_keys: list[str], calibration: dict[str, Any]) -> tuple[float, list[str]]:
    """(estimated GPU-hours of these cells, labels of cells the calibration does not cover)."""
    cells = {c.key: c for c in plan.cells}
    hours, uncovered = 0.0, []
    for key in cell_keys:
        cell = cells[key]
        seconds = per_image_seconds(calibration, defence_kind(cell.defence_name), cell.attack_name,
                                    cell.attack_params)
        if seconds is None:
            uncovered.append(cell.label)
        else:
            hours += cell.n_examples * seconds / 3600
    return hours, uncovered
