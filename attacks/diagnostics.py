"""Diagnostics for an evaluation that gradient masking or a weak attack could fool (Carlini et al. 2019;
"indicators of attack failure"): `diagnose(model, x, y, eps, norm, **budget) -> DiagnosticReport`.

Every flag is named, raised or not, and carries the evidence behind it:
- `zero_or_nonfinite_gradients`: input gradients of the margin loss or of cross-entropy that are exactly
  zero or not finite (a quantising or otherwise non-differentiable layer; a saturated aggregation, such as
  CARSO's double exponential, that leaves cross-entropy's gradient exactly 0);
- `loss_masking_ce_vs_margin`: the white-box attack on cross-entropy and on the margin (or DLR) loss, same
  budget, disagree beyond their Wilson 95% intervals: the loss that leaves accuracy higher is masked;
- `not_below_chance_at_large_eps`: the white-box attack does not push accuracy below chance (1 / classes)
  as eps grows to `eps_max` (0.95 under Linf, as in CARSO's Table 3 sanity check);
- `still_falling_with_steps` / `still_falling_with_eot`: accuracy still drops by more than `tolerance` when
  the number of steps (or EOT samples, for stochastic models) doubles: the attack has not converged;
- `black_box_beats_white_box`: Square breaks points that the white-box attack did not;
- `silent_success`: an intermediate iterate was adversarial (most EOT samples wrong) but the final one is not;
- `unstable_deterministic_predictions`: a model that claims to be deterministic changes its predictions (or
  logits) across passes;
- `identical_copies_in_batch`: a stochastic model gives copies of one input in one batch identical outputs
  (its randomness is drawn per batch), which makes batched EOT degenerate.

The white-box attack is PGD+EOT (attacks/eot.py) on the cell's `loss` (the curves and the convergence checks)
and on the other loss family (ce vs margin/dlr, for the masking check), without random start, step size
2.5 * eps / steps (so the steps-doubling check halves the step), K-draw correctness (attacks/protocol.py) for
every accuracy.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from attacks.base import require_at_least_one
from attacks.eot import EOTPGD, eot_gradient
from attacks.losses import check_loss
from attacks.progress import Progress
from attacks.protocol import evaluate_correctness, summarise_draws
from attacks.stats import wilson_interval

LOG = logging.getLogger("attacks.diagnostics")
FLAGS = (
    "zero_or_nonfinite_gradients", "loss_masking_ce_vs_margin", "not_below_chance_at_large_eps",
    "still_falling_with_steps", "still_falling_with_eot", "black_box_beats_white_box", "silent_success",
    "unstable_deterministic_predictions", "identical_copies_in_batch",
)
MAX_LISTED = 20  # example indices listed in a flag's evidence


@dataclass
class Budget:
    """What the diagnostics spend. None means: eot 1 / draws 1 for deterministic models, 10 / 8 otherwise;
    eps_max 0.95 under Linf and 0.95 * sqrt(input size) under L2; step size 2.5 * eps / steps. `loss` is the
    evaluated attack's (ce, margin or dlr); the masking check adds the other family."""

    steps: int = 20
    step_size: float | None = None
    eot: int | None = None
    draws: int | None = None
    square_queries: int = 1000
    eps_max: float | None = None
    eps_points: int = 6
    tolerance: float = 0.02
    max_batch: int | None = None
    seed: int = 0
    loss: str = "ce"

    def __post_init__(self) -> None:
        check_loss(self.loss)
        require_at_least_one(self, ("steps", "square_queries", "eps_points"))
        require_at_least_one(self, ("eot", "draws"), optional=True)
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {self.tolerance}")


@dataclass
class Flag:
    raised: bool
    evidence: dict[str, Any]


@dataclass
class DiagnosticReport:
    n: int
    eps: float
    norm: str
    stochastic: bool
    num_classes: int
    budget: dict[str, Any]
    flags: dict[str, Flag] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def raised(self) -> list[str]:
        return [name for name, flag in self.flags.items() if flag.raised]

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "eps": self.eps, "norm": self.norm, "stochastic": self.stochastic,
                "num_classes": self.num_classes, "budget": self.budget, "seconds": self.seconds,
                "flags": {name: asdict(flag) for name, flag in self.flags.items()}, "curves": self.curves}

    def summary(self) -> str:
        lines = [f"diagnostics on n={self.n}, {self.norm} eps={self.eps:.4g}, "
                 f"{'stochastic' if self.stochastic else 'deterministic'} model, {self.seconds:.1f} s"]
        for name, flag in self.flags.items():
            brief = {k: v for k, v in flag.evidence.items() if not isinstance(v, list)}
            lines.append(f"  [{'RAISED' if flag.raised else 'ok'}] {name}: {brief}")
        for name, curve in self.curves.items():
            points = ", ".join(f"{x:.4g}:{a:.3f}" for x, a in zip(curve["x"], curve["acc"], strict=True))
            lines.append(f"  curve {name} (x:acc): {points}")
        return "\n".join(lines)


class _Runner:
    """Runs the white-box attack at given settings, caching results (the same settings recur across curves)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, budget: Budget, eot: int,
                 draws: int, main_eps: float, progress: Progress):
        self.model, self.x, self.y, self.norm, self.budget = model, x, y, norm, budget
        self.eot, self.draws, self.main_eps, self.progress = eot, draws, main_eps, progress
        self.cache: dict[tuple[float, int, int, str], dict[str, torch.Tensor]] = {}

    def step_size(self, eps: float, steps: int) -> float:
        if self.budget.step_size is not None:  # given for the main eps and steps: scaled with both
            return self.budget.step_size * (eps / self.main_eps) * (self.budget.steps / steps)
        return 2.5 * eps / steps

    def run(self, eps: float, steps: int, eot: int, loss: str | None = None) -> dict[str, torch.Tensor]:
        loss = loss or self.budget.loss
        key = (round(eps, 12), steps, eot, loss)
        if key not in self.cache:
            torch.manual_seed(self.budget.seed)
            if eps > 0:
                attack = EOTPGD(eps=eps, norm=self.norm, steps=steps, step_size=self.step_size(eps, steps),
                                eot=eot, random_start=False, loss=loss, max_batch=self.budget.max_batch)
                x_adv, trace = attack.run(self.model, self.x, self.y)
            else:  # no budget: the clean points
                x_adv, trace = self.x, torch.ones(1, self.x.shape[0], device=self.x.device)
            correct = evaluate_correctness(self.model, x_adv, self.y, self.draws)
            self.cache[key] = {"x_adv": x_adv, "trace": trace, "correct": correct,
                               "majority": summarise_draws(correct)["majority"]}
            self.progress.update(eps=eps, steps=steps, eot=eot, loss=loss)
        return self.cache[key]

    def accuracy(self, eps: float, steps: int, eot: int, loss: str | None = None) -> float:
        return summarise_draws(self.run(eps, steps, eot, loss)["correct"])["single"].mean().item()


def _indices(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().flatten()[:MAX_LISTED].tolist()


def eps_grid(eps: float, eps_max: float, points: int) -> list[float]:
    """0, then `points` values from eps/2 to eps_max, geometric, always including eps itself."""
    if eps_max <= eps:
        return [0.0, eps]
    low = eps / 2
    values = [low * (eps_max / low) ** (i / (points - 1)) for i in range(points)] if points > 1 else [eps_max]
    return sorted({0.0, eps, *[round(v, 6) for v in values]})


def gradient_flag(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eot: int,
                   max_batch: int | None) -> Flag:
    """`zero_or_nonfinite_gradients`: raised where the EOT input gradient of the margin loss or of cross-entropy
    is exactly zero, or either is not finite, on any point."""
    margin = eot_gradient(model, x, y, eot, "margin", max_batch).grad.flatten(1)
    cross_entropy = eot_gradient(model, x, y, eot, "ce", max_batch).grad.flatten(1)
    zero_margin = (margin == 0).all(1)
    zero_ce = (cross_entropy == 0).all(1)
    nonfinite = ~torch.isfinite(margin).all(1) | ~torch.isfinite(cross_entropy).all(1)
    norms = margin.norm(dim=1)
    finite_norms = norms[torch.isfinite(norms)]
    failing = zero_margin | zero_ce | nonfinite
    evidence = {"zero_margin_gradient": int(zero_margin.sum()), "zero_ce_gradient": int(zero_ce.sum()),
                "nonfinite_gradient": int(nonfinite.sum()), "n": x.shape[0],
                "median_margin_gradient_l2": finite_norms.median().item() if finite_norms.numel() else float("nan"),
                "examples": _indices(failing)}
    return Flag(raised=bool(failing.any()), evidence=evidence)


def _loss_masking_flag(runner: _Runner, eps: float, steps: int, eot: int, n: int) -> Flag:
    """CE against the margin family (the cell's margin or DLR loss, else margin), same points and budget: raised
    when their Wilson 95% intervals do not overlap."""
    other = runner.budget.loss if runner.budget.loss != "ce" else "margin"
    accuracy = {"ce": runner.accuracy(eps, steps, eot, "ce"), other: runner.accuracy(eps, steps, eot, other)}
    intervals = {loss: wilson_interval(acc * n, n) for loss, acc in accuracy.items()}
    disjoint = intervals["ce"][0] > intervals[other][1] or intervals[other][0] > intervals["ce"][1]
    masked = "ce" if accuracy["ce"] > accuracy[other] else other
    evidence = {"ce_accuracy": accuracy["ce"], "ce_interval": list(intervals["ce"]), "margin_loss": other,
                "margin_accuracy": accuracy[other], "margin_interval": list(intervals[other]), "n": n,
                "eps": eps, "steps": steps, "eot": eot, "masked_loss": masked if disjoint else None}
    return Flag(raised=disjoint, evidence=evidence)


@torch.no_grad()
def _stability_flags(model: nn.Module, x: torch.Tensor, stochastic: bool, passes: int) -> dict[str, Flag]:
    flags: dict[str, Flag] = {}
    if not stochastic:
        outputs = torch.stack([model(x).float() for _ in range(passes)])
        predictions = outputs.argmax(-1)
        changed = (predictions != predictions[0]).any(0)
        scale = outputs.abs().amax().clamp_min(1e-12)
        spread = ((outputs - outputs[0]).abs().amax() / scale).item()
        flags["unstable_deterministic_predictions"] = Flag(
            raised=bool(changed.any()) or spread > 1e-4,
            evidence={"passes": passes, "changed_predictions": int(changed.sum()), "max_relative_logit_change": spread,
                      "examples": _indices(changed)})
        flags["identical_copies_in_batch"] = Flag(False, {"note": "deterministic model: not applicable"})
    else:
        flags["unstable_deterministic_predictions"] = Flag(False, {"note": "stochastic model: not applicable"})
        sample = x[: min(x.shape[0], 16)]
        outputs = model(sample.repeat(2, *([1] * (x.dim() - 1)))).float()
        first, second = outputs[: sample.shape[0]], outputs[sample.shape[0]:]
        identical = (first == second).all(1)
        flags["identical_copies_in_batch"] = Flag(
            raised=bool(identical.all()),
            evidence={"copies_compared": sample.shape[0], "identical": int(identical.sum())})
    return flags


def _check_inputs(eps: float, norm: str) -> None:
    if norm not in ("Linf", "L2"):
        raise ValueError(f"norm={norm!r} is not supported; valid: Linf, L2")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")


def _eot_and_draws(settings: Budget, stochastic: bool) -> tuple[int, int]:
    return settings.eot or (10 if stochastic else 1), settings.draws or (8 if stochastic else 1)


def check_loss_masking(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf",
                       stochastic: bool | None = None, **budget: Any) -> Flag:
    """The `loss_masking_ce_vs_margin` check alone (two white-box runs), with `diagnose`'s budget fields."""
    _check_inputs(eps, norm)
    settings = Budget(**budget)
    stochastic = bool(getattr(model, "stochastic", False)) if stochastic is None else stochastic
    eot, draws = _eot_and_draws(settings, stochastic)
    runner = _Runner(model, x.detach(), y.detach(), norm, settings, eot, draws, eps,
                     Progress("loss masking", 2, LOG, every_s=20.0, unit="runs"))
    return _loss_masking_flag(runner, eps, settings.steps, eot, x.shape[0])


def diagnose(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf",
             stochastic: bool | None = None, **budget: Any) -> DiagnosticReport:
    """Run every check on (x, y) at `eps`. `stochastic` defaults to the model's own `stochastic` attribute;
    `budget` sets the fields of `Budget` (steps, step_size, eot, draws, square_queries, eps_max, eps_points,
    tolerance, max_batch, seed, loss)."""
    _check_inputs(eps, norm)
    settings = Budget(**budget)
    started = time.time()
    x, y = x.detach(), y.detach()
    stochastic = bool(getattr(model, "stochastic", False)) if stochastic is None else stochastic
    eot, draws = _eot_and_draws(settings, stochastic)
    eps_max = settings.eps_max or (0.95 if norm == "Linf" else 0.95 * math.sqrt(x[0].numel()))
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    report = DiagnosticReport(n=x.shape[0], eps=eps, norm=norm, stochastic=stochastic, num_classes=num_classes,
                              budget={**asdict(settings), "eot": eot, "draws": draws, "eps_max": eps_max})
    grid = eps_grid(eps, eps_max, settings.eps_points)
    step_counts = sorted({max(1, settings.steps // 2), settings.steps, 2 * settings.steps})
    eot_counts = sorted({max(1, eot // 2), eot, 2 * eot}) if stochastic else [eot]
    progress = Progress("diagnose", len(grid) + len(step_counts) + len(eot_counts), LOG, every_s=20.0, unit="runs")
    runner = _Runner(model, x, y, norm, settings, eot, draws, eps, progress)

    torch.manual_seed(settings.seed)
    report.flags["zero_or_nonfinite_gradients"] = gradient_flag(model, x, y, eot, settings.max_batch)
    report.flags["loss_masking_ce_vs_margin"] = _loss_masking_flag(runner, eps, settings.steps, eot, x.shape[0])
    _eps_check(runner, report, grid)
    _steps_check(runner, report, step_counts)
    _eot_check(runner, report, eot_counts)
    main = runner.run(eps, settings.steps, eot)
    report.flags["black_box_beats_white_box"] = _black_box_flag(runner, main)
    report.flags["silent_success"] = _silent_success_flag(main)
    report.flags.update(_stability_flags(model, x, stochastic, passes=max(draws, 4)))
    report.flags = {name: report.flags[name] for name in FLAGS}
    report.seconds = time.time() - started
    return report


def _eps_check(runner: _Runner, report: DiagnosticReport, grid: list[float]) -> None:
    """The accuracy-vs-eps curve and `not_below_chance_at_large_eps` at its largest eps."""
    eps_acc = [runner.accuracy(e, runner.budget.steps, runner.eot) for e in grid]
    report.curves["eps"] = {"x": grid, "acc": eps_acc}
    chance = 1.0 / report.num_classes
    report.flags["not_below_chance_at_large_eps"] = Flag(
        raised=eps_acc[-1] > chance,
        evidence={"eps_max": grid[-1], "accuracy": eps_acc[-1], "chance": chance})


def _steps_check(runner: _Runner, report: DiagnosticReport, step_counts: list[int]) -> None:
    """The accuracy-vs-steps curve and `still_falling_with_steps` (the budget's steps against twice as many)."""
    eps, steps, eot, tolerance = runner.main_eps, runner.budget.steps, runner.eot, runner.budget.tolerance
    step_acc = [runner.accuracy(eps, s, eot) for s in step_counts]
    report.curves["steps"] = {"x": [float(s) for s in step_counts], "acc": step_acc}
    drop = runner.accuracy(eps, steps, eot) - runner.accuracy(eps, 2 * steps, eot)
    report.flags["still_falling_with_steps"] = Flag(
        raised=drop > tolerance,
        evidence={"steps": steps, "accuracy": runner.accuracy(eps, steps, eot), "doubled_steps": 2 * steps,
                  "accuracy_doubled": runner.accuracy(eps, 2 * steps, eot), "drop": drop, "tolerance": tolerance})


def _eot_check(runner: _Runner, report: DiagnosticReport, eot_counts: list[int]) -> None:
    """For stochastic models, the accuracy-vs-EOT curve and `still_falling_with_eot` (EOT samples doubled)."""
    if not report.stochastic:
        report.flags["still_falling_with_eot"] = Flag(False, {"note": "deterministic model: EOT does not apply"})
        report.curves["eot"] = {"x": [], "acc": []}
        return
    eps, steps, eot, tolerance = runner.main_eps, runner.budget.steps, runner.eot, runner.budget.tolerance
    eot_acc = [runner.accuracy(eps, steps, e) for e in eot_counts]
    eot_drop = runner.accuracy(eps, steps, eot) - runner.accuracy(eps, steps, 2 * eot)
    report.flags["still_falling_with_eot"] = Flag(
        raised=eot_drop > tolerance,
        evidence={"eot": eot, "accuracy": runner.accuracy(eps, steps, eot), "doubled_eot": 2 * eot,
                  "accuracy_doubled": runner.accuracy(eps, steps, 2 * eot), "drop": eot_drop,
                  "tolerance": tolerance})
    report.curves["eot"] = {"x": [float(e) for e in eot_counts], "acc": eot_acc}


def _black_box_flag(runner: _Runner, main: dict[str, torch.Tensor]) -> Flag:
    """`black_box_beats_white_box`: Square (same eps, K-draw selection) breaks points the white-box run did not."""
    from attacks.autoattack import Square

    settings = runner.budget
    torch.manual_seed(settings.seed)
    square = Square(eps=runner.main_eps, norm=runner.norm, square_queries=settings.square_queries,
                    selection_draws=runner.draws, seed=settings.seed)
    square_adv = square.perturb(runner.model, runner.x, runner.y)
    square_correct = evaluate_correctness(runner.model, square_adv, runner.y, runner.draws)
    square_majority = summarise_draws(square_correct)["majority"]
    runner.progress.update(attack="square")
    beaten = (main["majority"] > 0.5) & (square_majority < 0.5)
    return Flag(
        raised=bool(beaten.any()),
        evidence={"white_box_accuracy": main["majority"].mean().item(),
                  "black_box_accuracy": square_majority.mean().item(), "square_queries": settings.square_queries,
                  "points_only_black_box_breaks": int(beaten.sum()), "examples": _indices(beaten)})


def _silent_success_flag(main: dict[str, torch.Tensor]) -> Flag:
    """`silent_success`: an iterate of the white-box run was adversarial but its final point is not."""
    found_on_the_way = (main["trace"] < 0.5).any(0)
    silent = found_on_the_way & (main["majority"] > 0.5)
    return Flag(
        raised=bool(silent.any()),
        evidence={"points": int(silent.sum()), "n": main["majority"].shape[0],
                  "final_accuracy": main["majority"].mean().item(),
                  "accuracy_if_best_iterate_kept": (main["majority"] * ~found_on_the_way).mean().item(),
                  "examples": _indices(silent)})
