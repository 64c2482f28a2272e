"""GPU-hours of a plan's evaluation cells from measured costs (a `python -m bench.benchmarks.gpu` JSON file).

`slurm.calibration=gpu_calibration.json` makes the SLURM dry run print this estimate beside the profile's
time limits. A cell costs n_examples x (per-image seconds of its defence kind under its attack) x (its
budget relative to the calibrated one):
- defence kinds: `carso` (CARSO and subclasses, e.g. the published one), `atop`, and `at` for anything else
  (a classifier alone, AT or standard);
- attacks calibrated directly (`aa`, `randaa`, `pgd_eot`, `adaptive`): scaled by the largest ratio of a
  step-like budget (steps, APGD/FAB steps, Square queries) to the calibrated default, times the EOT ratio;
- other attacks are priced in units of one forward+backward pass of one image through the defence, the
  unit cost taken from the calibrated PGD+EOT (its full-budget cost / (steps x EOT)): PGD and CW
  steps x restarts, FGSM 1, BPDA+EOT steps x EOT, APGD steps x EOT x restarts, Square queries / 3
  (forward passes only), a transfer cell 0 (it replays saved points).
Training stages are not calibrated: their hours stay the profile's time limits.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from bench.conffiles import ConfigError

CALIBRATED_ATTACKS = ("aa", "randaa", "pgd_eot", "adaptive")
STEP_FIELDS = ("steps", "apgd_steps", "fab_steps", "square_queries")


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


def defence_kind(defence_name: str) -> str:
    import defences
    from defences.atop.model import AToP
    from defences.carso.model import Carso

    cls = defences.REGISTRY.get_class(defence_name)
    return "carso" if issubclass(cls, Carso) else "atop" if issubclass(cls, AToP) else "at"


def _defaults(attack_name: str) -> dict[str, Any]:
    import attacks

    return {f.name: f.default for f in fields(attacks.REGISTRY.get_class(attack_name))}


def budget_ratio(attack_name: str, settings: dict[str, Any]) -> float:
    """The cell's budget over the calibrated (default) one of a directly calibrated attack."""
    defaults = _defaults(attack_name)
    ratios = [settings[k] / defaults[k] for k in STEP_FIELDS if isinstance(defaults.get(k), int) and k in settings
              and defaults[k] > 0]
    eot = settings.get("eot", 1) / defaults["eot"] if defaults.get("eot") else 1.0
    return (max(ratios) if ratios else 1.0) * eot


def pass_units(attack_name: str, s: dict[str, Any]) -> float | None:
    """Forward+backward passes per image of an attack priced by the PGD+EOT unit; None if unknown."""
    if attack_name in ("pgd", "cw"):
        return s["steps"] * s.get("restarts", 1)
    if attack_name == "fgsm":
        return 1.0
    if attack_name == "bpda_eot":
        return s["steps"] * s["eot"]
    if attack_name in ("apgd_ce", "apgd_dlr"):
        return s["apgd_steps"] * s.get("eot", 1) * s.get("apgd_restarts", 1)
    if attack_name == "square":
        return s["square_queries"] / 3
    if attack_name == "transfer":  # replays saved points: no attack pass, only the judgement's forward passes
        return 0.0
    return None


def per_image_seconds(calibration: dict[str, Any], kind: str, attack_name: str,
                      settings: dict[str, Any]) -> float | None:
    measured = calibration["per_image_seconds"]
    if attack_name in CALIBRATED_ATTACKS:
        base = measured.get(f"{kind}/{attack_name}")
        return None if base is None else base * budget_ratio(attack_name, settings)
    pgd_eot = measured.get(f"{kind}/pgd_eot")
    units = pass_units(attack_name, settings)
    if pgd_eot is None or units is None:
        return None
    defaults = _defaults("pgd_eot")
    return pgd_eot / (defaults["steps"] * defaults["eot"]) * units


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
