"""Diagnostics for an evaluation that gradient masking or a weak attack could fool (Carlini et al. 2019;
"indicators of attack failure"): `diagnose(model, x, y, eps, norm, **budget) -> DiagnosticReport`.

Every flag is named, raised or not, and carries the evidence behind it. A flag is raised only when its evidence
is significant: the examples that bear it are counted, the count is tested where chance could explain it
(exact binomial tests, attacks/exact_tests.py) at level `alpha`, and it must reach `min_count`
(attacks/diagnostic_evidence.py: the evidence names the test, its p-value, alpha, the counts and the minimum):
- `zero_or_nonfinite_gradients`: input gradients of the margin loss or of cross-entropy that are exactly
  zero while the model is not flat in the eps-ball (a quantising or otherwise non-differentiable layer; a
  saturated aggregation, such as CARSO's double exponential, that leaves cross-entropy's gradient exactly 0),
  or not finite, on at least `min_count` points and `min_fraction` of them;
- `loss_masking_ce_vs_margin`: the white-box attack on cross-entropy and on the margin (or DLR) loss, same
  budget and examples, disagree by the exact McNemar test on their per-example outcomes and beyond their
  Wilson 95% intervals: the loss that leaves accuracy higher is masked;
- `not_below_chance_at_large_eps`: the white-box attack leaves accuracy above chance (1 / classes) at
  `eps_max` (0.95 under Linf, as in CARSO's Table 3 sanity check), by a one-sided binomial test against chance;
- `still_falling_with_steps` / `still_falling_with_eot`: doubling the steps (or EOT samples, for stochastic
  models) breaks examples the budget did not: newly broken against newly robust examples by a one-sided sign
  test, and the accuracy drops by more than `tolerance`: the attack has not converged;
- `black_box_beats_white_box`: Square breaks examples the white-box attack did not: black-box-only against
  white-box-only breaks by a one-sided sign test (on a stochastic model Square-EOT, each query judged by the mean
  margin of `square_eot` draws at the same forward budget: plain Square judged by single noisy passes is the
  weak black-box attack a masked defence would pass);
- `silent_success`: the white-box run would have broken more examples had it kept its best iterate (most EOT
  samples wrong; on a stochastic model each iterate scored by fresh draws) instead of the final one: examples
  only the kept iterate breaks against examples only the final one breaks, by a one-sided sign test;
- `unstable_deterministic_predictions`: a model that claims to be deterministic changes its logits across
  passes beyond float noise, on at least `min_count` examples;
- `identical_copies_in_batch`: a stochastic model gives copies of one input in one batch identical outputs
  while passes differ (its randomness is drawn per batch), which makes batched EOT degenerate.

The white-box attack is PGD+EOT (attacks/eot.py) on the cell's `loss` (the curves and the convergence checks)
and on the other loss family (ce vs margin/dlr, for the masking check), without random start, step size
2.5 * eps / steps (so the steps-doubling check halves the step), K-draw correctness (attacks/protocol.py) for
every accuracy; an example counts as broken where its majority over the K draws is wrong.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from attacks.base import NORMS, require_at_least_one
from attacks.diagnostic_evidence import (
    Flag,
    Rule,
    discordant,
    gradient_flag,
    paired_flag,
    stability_flags,
    verdict,
    with_gradient_path,
)
from attacks.eot import EOTPGD
from attacks.exact_tests import binomial_upper_tail, mcnemar_exact
from attacks.losses import check_loss
from attacks.progress import Progress
from attacks.protocol import evaluate_correctness, summarise_draws
from attacks.square import square_steps
from attacks.stats import wilson_interval

LOG = logging.getLogger("attacks.diagnostics")
FLAGS = (
    "zero_or_nonfinite_gradients", "loss_masking_ce_vs_margin", "not_below_chance_at_large_eps",
    "still_falling_with_steps", "still_falling_with_eot", "black_box_beats_white_box", "silent_success",
    "unstable_deterministic_predictions", "identical_copies_in_batch",
)
__all__ = ["FLAGS", "Budget", "DiagnosticReport", "Flag", "check_loss_masking", "diagnose", "eps_grid",
           "gradient_flag"]


@dataclass
class Budget:
    """What the diagnostics spend. None means: eot 1 / draws 1 / square_eot 1 for deterministic models, 10 / 8 / 4
    otherwise;
    eps_max 0.95 under Linf, 0.95 * sqrt(input size) under L2 and 0.95 * input size under L1; step size
    2.5 * eps / steps. `loss` is the evaluated attack's (ce, margin or dlr); the masking check adds the other
    family. A flag needs its test significant at `alpha` and at least `min_count` evidence-bearing examples (for
    zero gradients also `min_fraction` of n); the still-falling checks also an accuracy drop above `tolerance`."""

    steps: int = 20
    step_size: float | None = None
    eot: int | None = None
    draws: int | None = None
    square_queries: int = 1000  # forward passes per example (attacks.square)
    square_eot: int | None = None
    eps_max: float | None = None
    eps_points: int = 6
    tolerance: float = 0.02
    max_batch: int | None = None
    seed: int = 0
    loss: str = "ce"
    alpha: float = 0.01
    min_count: int = 5
    min_fraction: float = 0.05

    def __post_init__(self) -> None:
        check_loss(self.loss)
        require_at_least_one(self, ("steps", "square_queries", "eps_points", "min_count"))
        require_at_least_one(self, ("eot", "draws", "square_eot"), optional=True)
        if self.square_eot is not None:
            square_steps(self.square_queries, self.square_eot)
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {self.tolerance}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0 <= self.min_fraction <= 1:
            raise ValueError(f"min_fraction must be in [0, 1], got {self.min_fraction}")

    @property
    def rule(self) -> Rule:
        return Rule(self.alpha, self.min_count, self.min_fraction)


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
            brief = {k: v for k, v in flag.evidence.items() if not isinstance(v, list) and k != "test"}
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
        self.cache: dict[tuple[float, int, int, str, bool], dict[str, torch.Tensor]] = {}

    def step_size(self, eps: float, steps: int) -> float:
        if self.budget.step_size is not None:  # given for the main eps and steps: scaled with both
            return self.budget.step_size * (eps / self.main_eps) * (self.budget.steps / steps)
        return 2.5 * eps / steps

    def run(self, eps: float, steps: int, eot: int, loss: str | None = None,
            keep_best: bool = False) -> dict[str, torch.Tensor]:
        """The attack's result, trace, [K, B] correctness and per-example majority; `keep_best`: each example's
        best iterate instead of the final one (scored by `draws` fresh passes on a stochastic model)."""
        loss = loss or self.budget.loss
        key = (round(eps, 12), steps, eot, loss, keep_best)
        if key not in self.cache:
            torch.manual_seed(self.budget.seed)
            if eps > 0:
                attack = EOTPGD(eps=eps, norm=self.norm, steps=steps, step_size=self.step_size(eps, steps),
                                eot=eot, random_start=False, loss=loss, max_batch=self.budget.max_batch,
                                keep_best=keep_best, selection_draws=self.draws)
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


def eps_grid(eps: float, eps_max: float, points: int) -> list[float]:
    """0, then `points` values from eps/2 to eps_max, geometric, always including eps itself."""
    if eps_max <= eps:
        return [0.0, eps]
    low = eps / 2
    values = [low * (eps_max / low) ** (i / (points - 1)) for i in range(points)] if points > 1 else [eps_max]
    return sorted({0.0, eps, *[round(v, 6) for v in values]})


def _loss_masking_flag(runner: _Runner, eps: float, steps: int, eot: int, n: int) -> Flag:
    """CE against the margin family (the cell's margin or DLR loss, else margin), same points and budget: the
    exact McNemar test on the examples only one of them breaks, and their Wilson 95% intervals disjoint."""
    other = runner.budget.loss if runner.budget.loss != "ce" else "margin"
    accuracy = {"ce": runner.accuracy(eps, steps, eot, "ce"), other: runner.accuracy(eps, steps, eot, other)}
    intervals = {loss: wilson_interval(acc * n, n) for loss, acc in accuracy.items()}
    disjoint = intervals["ce"][0] > intervals[other][1] or intervals[other][0] > intervals["ce"][1]
    ce_holds, other_holds = discordant(runner.run(eps, steps, eot, "ce")["majority"],
                                       runner.run(eps, steps, eot, other)["majority"])
    counts = {"only_margin_breaks": int(ce_holds.sum()), "only_ce_breaks": int(other_holds.sum())}
    masked = "ce" if counts["only_margin_breaks"] > counts["only_ce_breaks"] else other
    raised, evidence = verdict(
        runner.budget.rule, "two-sided exact McNemar test: examples only the margin-family loss breaks vs only CE",
        max(counts.values()), counts, mcnemar_exact(*counts.values()), intervals_disjoint=disjoint)
    evidence |= {"ce_accuracy": accuracy["ce"], "ce_interval": list(intervals["ce"]), "margin_loss": other,
                 "margin_accuracy": accuracy[other], "margin_interval": list(intervals[other]), "n": n,
                 "eps": eps, "steps": steps, "eot": eot, "masked_loss": masked if raised else None}
    return Flag(raised=raised, evidence=evidence)


def _check_inputs(eps: float, norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not supported; valid: {', '.join(NORMS)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")


def _eot_and_draws(settings: Budget, stochastic: bool) -> tuple[int, int]:
    return settings.eot or (10 if stochastic else 1), settings.draws or (8 if stochastic else 1)


def _square_eot(settings: Budget, stochastic: bool) -> int:
    return settings.square_eot or (min(4, settings.square_queries) if stochastic else 1)


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
    `budget` sets the fields of `Budget` (steps, step_size, eot, draws, square_queries, square_eot, eps_max,
    eps_points, tolerance, max_batch, seed, loss)."""
    _check_inputs(eps, norm)
    settings = Budget(**budget)
    started = time.time()
    x, y = x.detach(), y.detach()
    stochastic = bool(getattr(model, "stochastic", False)) if stochastic is None else stochastic
    eot, draws = _eot_and_draws(settings, stochastic)
    square_eot = _square_eot(settings, stochastic)
    eps_max = settings.eps_max or 0.95 * {"Linf": 1.0, "L2": math.sqrt(x[0].numel()), "L1": x[0].numel()}[norm]
    model, connected, num_classes = with_gradient_path(model, x, stochastic)
    report = DiagnosticReport(n=x.shape[0], eps=eps, norm=norm, stochastic=stochastic, num_classes=num_classes,
                              budget={**asdict(settings), "eot": eot, "draws": draws, "eps_max": eps_max,
                                      "square_eot": square_eot})
    grid = eps_grid(eps, eps_max, settings.eps_points)
    step_counts = sorted({max(1, settings.steps // 2), settings.steps, 2 * settings.steps})
    eot_counts = sorted({max(1, eot // 2), eot, 2 * eot}) if stochastic else [eot]
    runs = len(grid) + len(step_counts) + len(eot_counts) + 3  # + the other loss, Square, the kept-best run
    progress = Progress("diagnose", runs, LOG, every_s=20.0, unit="runs")
    runner = _Runner(model, x, y, norm, settings, eot, draws, eps, progress)

    torch.manual_seed(settings.seed)
    report.flags["zero_or_nonfinite_gradients"] = gradient_flag(model, x, y, eps, norm, eot, settings.max_batch,
                                                                settings.rule)
    report.flags["zero_or_nonfinite_gradients"].evidence["autograd_path_to_input"] = connected
    report.flags["loss_masking_ce_vs_margin"] = _loss_masking_flag(runner, eps, settings.steps, eot, x.shape[0])
    _eps_check(runner, report, grid)
    _steps_check(runner, report, step_counts)
    _eot_check(runner, report, eot_counts)
    main = runner.run(eps, settings.steps, eot)
    report.flags["black_box_beats_white_box"] = _black_box_flag(runner, main, square_eot)
    report.flags["silent_success"] = _silent_success_flag(runner, main)
    report.flags.update(stability_flags(model, x, stochastic, max(draws, 4), settings.rule))
    report.flags = {name: report.flags[name] for name in FLAGS}
    report.seconds = time.time() - started
    return report


def _eps_check(runner: _Runner, report: DiagnosticReport, grid: list[float]) -> None:
    """The accuracy-vs-eps curve and `not_below_chance_at_large_eps` at its largest eps: the examples still
    correct there (single-draw rates summed, rounded down: conservative for a stochastic model) against chance
    by a one-sided binomial test."""
    eps_acc = [runner.accuracy(e, runner.budget.steps, runner.eot) for e in grid]
    report.curves["eps"] = {"x": grid, "acc": eps_acc}
    chance, n = 1.0 / report.num_classes, report.n
    correct = math.floor(eps_acc[-1] * n + 1e-6)
    raised, evidence = verdict(runner.budget.rule, "one-sided exact binomial test: examples correct at eps_max "
                               "against chance (1 / classes)", correct, {"correct": correct, "n": n},
                               binomial_upper_tail(correct, n, chance))
    report.flags["not_below_chance_at_large_eps"] = Flag(
        raised, {**evidence, "eps_max": grid[-1], "accuracy": eps_acc[-1], "chance": chance})


def _doubling_flag(runner: _Runner, what: str, base: dict[str, torch.Tensor], doubled: dict[str, torch.Tensor],
                   settings: dict[str, Any]) -> Flag:
    """Examples the doubled budget breaks that the budget did not, against the reverse (one-sided sign test),
    and the single-draw accuracy drop above `tolerance`."""
    rates = [summarise_draws(run["correct"])["single"].mean().item() for run in (base, doubled)]
    drop, tolerance = rates[0] - rates[1], runner.budget.tolerance
    newly_broken, newly_robust = discordant(base["majority"], doubled["majority"])
    raised, evidence = paired_flag(
        runner.budget.rule, f"one-sided exact sign test: examples newly broken with {what} doubled vs newly robust",
        newly_broken, newly_robust, "newly_broken", "newly_robust", drop_above_tolerance=drop > tolerance)
    return Flag(raised, {**evidence, **settings, "accuracy": rates[0], "accuracy_doubled": rates[1], "drop": drop,
                         "tolerance": tolerance})


def _steps_check(runner: _Runner, report: DiagnosticReport, step_counts: list[int]) -> None:
    """The accuracy-vs-steps curve and `still_falling_with_steps` (the budget's steps against twice as many)."""
    eps, steps, eot = runner.main_eps, runner.budget.steps, runner.eot
    report.curves["steps"] = {"x": [float(s) for s in step_counts],
                              "acc": [runner.accuracy(eps, s, eot) for s in step_counts]}
    report.flags["still_falling_with_steps"] = _doubling_flag(
        runner, "steps", runner.run(eps, steps, eot), runner.run(eps, 2 * steps, eot),
        {"steps": steps, "doubled_steps": 2 * steps})


def _eot_check(runner: _Runner, report: DiagnosticReport, eot_counts: list[int]) -> None:
    """For stochastic models, the accuracy-vs-EOT curve and `still_falling_with_eot` (EOT samples doubled)."""
    if not report.stochastic:
        report.flags["still_falling_with_eot"] = Flag(False, {"note": "deterministic model: EOT does not apply"})
        report.curves["eot"] = {"x": [], "acc": []}
        return
    eps, steps, eot = runner.main_eps, runner.budget.steps, runner.eot
    report.curves["eot"] = {"x": [float(e) for e in eot_counts],
                            "acc": [runner.accuracy(eps, steps, e) for e in eot_counts]}
    report.flags["still_falling_with_eot"] = _doubling_flag(
        runner, "EOT samples", runner.run(eps, steps, eot), runner.run(eps, steps, 2 * eot),
        {"eot": eot, "doubled_eot": 2 * eot})


def _black_box_flag(runner: _Runner, main: dict[str, torch.Tensor], square_eot: int) -> Flag:
    """`black_box_beats_white_box`: Square (same eps, K-draw selection; Square-EOT with `square_eot` draws per
    query on a stochastic model) breaks more examples that the white-box run did not than the white-box run breaks
    examples Square did not (one-sided sign test)."""
    from attacks.autoattack import Square

    settings = runner.budget
    torch.manual_seed(settings.seed)
    square = Square(eps=runner.main_eps, norm=runner.norm, square_queries=settings.square_queries,
                    selection_draws=runner.draws, square_eot=square_eot, seed=settings.seed)
    square_adv = square.perturb(runner.model, runner.x, runner.y)
    square_majority = summarise_draws(evaluate_correctness(runner.model, square_adv, runner.y, runner.draws))[
        "majority"]
    runner.progress.update(attack="square")
    black_only, white_only = discordant(main["majority"], square_majority)
    raised, evidence = paired_flag(
        settings.rule, "one-sided exact sign test: examples only the black-box attack breaks vs only the white-box",
        black_only, white_only, "black_box_only", "white_box_only")
    return Flag(raised, {**evidence, "white_box_accuracy": main["majority"].mean().item(),
                         "black_box_accuracy": square_majority.mean().item(),
                         "square_queries": settings.square_queries, "square_eot": square_eot,
                         "points_only_black_box_breaks": int(black_only.sum())})


def _silent_success_flag(runner: _Runner, main: dict[str, torch.Tensor]) -> Flag:
    """`silent_success`: the same white-box run keeping each example's best iterate breaks examples its final
    iterate does not, more often than the reverse (one-sided sign test; both judged by fresh K-draw passes)."""
    kept = runner.run(runner.main_eps, runner.budget.steps, runner.eot, keep_best=True)
    only_kept, only_final = discordant(main["majority"], kept["majority"])
    raised, evidence = paired_flag(
        runner.budget.rule, "one-sided exact sign test: examples only the kept best iterate breaks vs only the "
        "final iterate", only_kept, only_final, "only_best_iterate_breaks", "only_final_iterate_breaks")
    return Flag(raised, {**evidence, "points": int(only_kept.sum()), "n": main["majority"].shape[0],
                         "final_accuracy": summarise_draws(main["correct"])["single"].mean().item(),
                         "accuracy_if_best_iterate_kept": summarise_draws(kept["correct"])["single"].mean().item()})
