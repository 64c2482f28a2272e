"""`fmn`: a minimum-norm attack (the adaptive-radius scheme of Pintor et al. 2021, "Fast Minimum-norm Adversarial
Attacks through Adaptive Norm Constraints"), Linf, L2 and L1: per example the smallest adversarial perturbation it
finds, hence the robust accuracy at every radius up to `eps` from one run.

The search moves a perturbation inside a ball whose radius adapts per example: while no adversarial point has
been found the radius is the linear estimate of the distance to the decision boundary (current size + true-class
margin / dual norm of its gradient); then it shrinks by a factor (1 - gamma) at adversarial iterates (never above
the smallest adversarial size seen) and grows by (1 + gamma) at the others. Each step is a steepest-ascent step on
the margin loss (without the coordinates the box blocks) of size alpha x radius, projected onto the ball and the
[0, 1] box (under L1 the sparse direction of attacks.l1 on the fraction `l1_top` of the coordinates, default 5%,
and the exact projection onto the L1 ball and box of each example's radius); alpha and gamma decay on a cosine
schedule. The radius never exceeds `eps`, the largest radius of the curve: the attack spends its steps where the
curve is drawn, and it returns no point beyond it.

Judgement: nothing is decided by the search's own (possibly noisy) passes. Its candidates per example, the
smallest adversarial iterate it saw and its final iterate, are each moved along their own direction to the
smallest adversarial point by bisection (`line_search_steps`; stretched up to the eps-ball where the candidate
itself is not adversarial), every trial point judged by `selection_draws` fresh passes of the defence (one on a
deterministic model): a point is adversarial when fewer than half of those passes classify it correctly.
The smaller adversarial result of the two is returned; an example with none gets its clean point back (size 0).
The harness then judges the returned points with its K draws like every attack's, so an example counts as
broken at radius r only when its returned point has size <= r and the record's K draws break it (the curve is
drawn from the record's `per_example.perturbation` and draw matrices, bench/reporting/min_norm_curve.py).
`last_report` holds, per example, the size the attack's own judgement found adversarial (None: none found).

Stochastic models: `eot` passes are averaged for each step's margin and gradient. With `target: classifier` on a
stochastic defence the search runs on the classifier and the whole defence judges, as in `pgd`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from attacks.base import Budget, lp_norms, require_at_least_one
from attacks.gradient import JudgedByWholeDefence, check_l1_top, is_stochastic, steepest_ascent
from attacks.l1 import project_l1
from attacks.losses import attack_loss
from attacks.protocol import score_points

DUAL_NORMS = {"Linf": "L1", "L2": "L2", "L1": "Linf"}
ADVERSARIAL_RATE = 0.5  # a point is adversarial when fewer than this fraction of the judge's passes are correct


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def project_radius(delta: torch.Tensor, x: torch.Tensor, radius: torch.Tensor, norm: str) -> torch.Tensor:
    """`delta` projected onto the ball of per-example `radius` (in `norm`), then x + delta onto the [0, 1] box."""
    if norm == "L1":
        return project_l1(x + delta, x, radius) - x
    bound = _per_example(radius, delta)
    if norm == "Linf":
        delta = torch.maximum(torch.minimum(delta, bound), -bound)
    else:
        sizes = _per_example(lp_norms(delta, "L2").clamp_min(1e-12), delta)
        delta = delta * (bound / sizes).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0) - x


def dual_norms(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The dual norm of each example's gradient: L1 for Linf, L2 for L2, Linf for L1 (the rate the margin can fall
    at)."""
    return lp_norms(grad, DUAL_NORMS[norm])


def inward(grad: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """The gradient without the coordinates the [0, 1] box blocks (a pixel at 0 asked to decrease, at 1 to increase):
    neither the distance estimate nor the step counts on moves the box would undo (on 8x8 digits, with many pixels
    at 0 or 1, the L2 search without it leaves tens of points in a hundred unbroken that AutoAttack breaks)."""
    blocked = ((x_adv <= 0) & (grad < 0)) | ((x_adv >= 1) & (grad > 0))
    return grad.masked_fill(blocked, 0.0)


def cosine_decay(start: float, end: float, step: int, steps: int) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * step / steps))


@dataclass
class FMN(JudgedByWholeDefence):
    """Fast minimum-norm attack with adaptive radius (see the module docstring); `eps` is the curve's largest radius.

    alpha_final defaults to alpha_init / 100, the paper's ratio; gamma from 0.05 to 0.001 as in the paper.
    """

    smoke_budget = {"steps": Budget(1), "eot": Budget(1), "selection_draws": 2, "line_search_steps": Budget(1)}

    steps: int = 100
    alpha_init: float = 1.0
    alpha_final: float | None = None
    gamma_init: float = 0.05
    gamma_final: float = 0.001
    eot: int = 1
    selection_draws: int = 8
    line_search_steps: int = 10
    l1_top: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least_one(self, ("steps", "eot", "selection_draws", "line_search_steps"))
        check_l1_top(self.norm, self.l1_top)
        if not self.alpha_init > 0 or (self.alpha_final is not None and not 0 < self.alpha_final <= self.alpha_init):
            raise ValueError(f"need alpha_init > 0 and 0 < alpha_final <= alpha_init (or null), got "
                             f"alpha_init={self.alpha_init}, alpha_final={self.alpha_final}")
        if not 0 < self.gamma_final <= self.gamma_init < 1:
            raise ValueError(f"need 0 < gamma_final <= gamma_init < 1, got gamma_init={self.gamma_init}, "
                             f"gamma_final={self.gamma_final}")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        judge = self.judge_for(model)
        draws = self.selection_draws if is_stochastic(judge) else 1
        best_seen, final = self._search(model, x, y)
        sizes = torch.full((x.shape[0],), float("inf"), device=x.device)
        result = x.clone()
        for delta in (best_seen, final):
            point, size = self._shrink(judge, x, y, delta, draws)
            better = size < sizes
            result[better], sizes[better] = point[better], size[better]
        self.last_report = {"min_norm": [None if math.isinf(s) else s for s in sizes.tolist()]}
        return result

    def _margin_and_gradient(self, model: nn.Module, x_adv: torch.Tensor,
                             y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The margin loss (> 0: misclassified) and its input gradient, each averaged over `eot` passes."""
        x_adv = x_adv.detach().requires_grad_(True)
        margin = sum(attack_loss(model(x_adv), y, "margin") for _ in range(self.eot)) / self.eot
        grad, = torch.autograd.grad(margin.sum(), x_adv)
        return margin.detach(), grad

    def _search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The adaptive-radius search: (the smallest iterate its own passes found adversarial, the final iterate)."""
        n = x.shape[0]
        delta = torch.zeros_like(x)
        best = torch.zeros_like(x)
        best_size = torch.full((n,), float("inf"), device=x.device)
        radius = torch.full((n,), float(self.eps), device=x.device)
        alpha_final = self.alpha_final if self.alpha_final is not None else self.alpha_init / 100
        for step in range(self.steps):
            alpha = cosine_decay(self.alpha_init, alpha_final, step, self.steps)
            gamma = cosine_decay(self.gamma_init, self.gamma_final, step, self.steps)
            margin, grad = self._margin_and_gradient(model, x + delta, y)
            grad = inward(grad, x + delta)
            sizes = lp_norms(delta, self.norm)
            adversarial = margin > 0
            improved = adversarial & (sizes < best_size)
            best[improved], best_size[improved] = delta[improved], sizes[improved]
            found = torch.isfinite(best_size)
            estimate = sizes + (-margin) / dual_norms(grad, self.norm).clamp_min(1e-12)
            grown = torch.where(found, radius * (1 + gamma), estimate)
            radius = torch.where(adversarial, torch.minimum(radius * (1 - gamma), best_size), grown)
            radius = radius.clamp(0.0, self.eps)
            step_size = _per_example(alpha * radius, x)
            direction = steepest_ascent(grad, self.norm, x + delta, self.l1_top)
            delta = project_radius(delta + step_size * direction, x, radius, self.norm)
        return best, delta

    def _adversarial(self, judge: nn.Module, points: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        rate, _ = score_points(judge, points, y, draws)
        return rate < ADVERSARIAL_RATE

    def _shrink(self, judge: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor,
                draws: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example the smallest t x delta the judge finds adversarial, by bisection, and its size; the clean
        point and size inf where even the longest t x delta within eps is not adversarial.

        The bracket is (0, 1] where delta itself is adversarial, else (1, longest]: an iterate that sits on the
        boundary of a stochastic defence (about half its draws correct) is stretched along its direction instead
        of being lost. Points beyond the box are clamped to it, which only shrinks them."""
        sizes = lp_norms(delta, self.norm)
        longest = torch.where(sizes > 0, self.eps / sizes.clamp_min(1e-12), torch.ones_like(sizes))
        first = longest.clamp(max=1.0)
        at_first = self._adversarial(judge, self._along(x, delta, first), y, draws)
        at_longest = self._adversarial(judge, self._along(x, delta, longest), y, draws)
        low, high = torch.where(at_first, 0.0, first), torch.where(at_first, first, longest)
        found = at_first | at_longest
        for _ in range(self.line_search_steps):
            middle = (low + high) / 2
            adversarial = self._adversarial(judge, self._along(x, delta, middle), y, draws)
            high, low = torch.where(adversarial, middle, high), torch.where(adversarial, low, middle)
        point = torch.where(_per_example(found, x), self._along(x, delta, high), x)
        size = torch.where(found, lp_norms(point - x, self.norm), torch.full_like(sizes, float("inf")))
        return point, size

    @staticmethod
    def _along(x: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return (x + _per_example(scale, x) * delta).clamp(0.0, 1.0)
