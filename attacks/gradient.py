"""First-order white-box attacks: FGSM, PGD and CW-k (PGD on the margin loss); Linf, L2 and L1, random start, restarts.

Under L1 a step moves the fraction `l1_top` of the coordinates (default 5%, at least one) of largest |gradient|
that the box lets move, along the gradient restricted to them at unit L1 norm (attacks.l1: l1_top = 0 is the
single steepest coordinate, the exact L1 steepest ascent), and every iterate is projected exactly onto the L1 ball
intersected with the box.

Stochastic models (`model.stochastic`): nothing is decided from one noisy forward pass. PGD keeps each
restart's final iterate (no per-step `keep_best`), and restarts compete by their K-draw score
(`selection_draws` fresh passes, attacks.protocol.score_points: fewest correct draws, ties by the larger mean
margin); only points that every one of the K draws already misclassifies are left out of later restarts.
FGSM takes one gradient step and selects nothing. Deterministic models keep the cheap one-pass path.
The judge is the model evaluated, not the one differentiated: with `target: classifier` on a stochastic defence
the iterates are crafted on the (deterministic) classifier but judged by K draws of the whole defence, since a
point that barely fools the classifier is the worst one to transfer through the defence's randomness.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attacks.base import Attack, Budget, PassCounter, lp_norms, project
from attacks.l1 import l1_random_start, l1_steepest_ascent
from attacks.losses import attack_loss, check_loss
from attacks.protocol import score_points

L1_TOP = 0.05  # the fraction of the coordinates an L1 step moves, when `l1_top` is None


def random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """A uniformly random point of the eps-ball around x (Linf: the cube; L2, L1: the ball), then the box."""
    if norm == "L1":
        return l1_random_start(x, eps)
    if norm == "Linf":
        delta = torch.empty_like(x).uniform_(-eps, eps)
    else:
        direction = torch.randn_like(x)
        direction = direction / lp_norms(direction, "L2").clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        radius = eps * torch.rand(x.shape[0], device=x.device) ** (1.0 / x[0].numel())
        delta = direction * radius.view(-1, *([1] * (x.dim() - 1)))
    return (x + delta).clamp(0.0, 1.0)


def steepest_ascent(grad: torch.Tensor, norm: str, x_adv: torch.Tensor | None = None,
                    l1_top: float | None = None) -> torch.Tensor:
    """The unit-norm direction of steepest ascent: sign for Linf, normalised gradient for L2; for L1 the sparse
    direction of attacks.l1 at the point `x_adv` (which the box limits) on the fraction `l1_top` of coordinates."""
    if norm == "L1":
        if x_adv is None:
            raise ValueError("the L1 steepest-ascent direction needs the current point (x_adv): the box limits it")
        return l1_steepest_ascent(grad, x_adv, L1_TOP if l1_top is None else l1_top)
    if norm == "Linf":
        return grad.sign()
    return grad / lp_norms(grad, "L2").clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed per-example loss w.r.t. x, and the logits it came from."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    grad, = torch.autograd.grad(attack_loss(logits, y, loss).sum(), x)
    return grad, logits.detach()


def is_stochastic(model: nn.Module) -> bool:
    return bool(getattr(model, "stochastic", False))


class BestPoints:
    """Per example, the candidate that the fewest of K draws classify correctly, ties by the larger mean margin
    (the rule of the AutoAttack driver). Starts empty: the first candidate offered is always taken."""

    def __init__(self, x: torch.Tensor):
        self.x = x.clone()
        self.rate = torch.full((x.shape[0],), float("inf"), device=x.device)
        self.margin = torch.full((x.shape[0],), float("-inf"), device=x.device)

    def offer(self, index: torch.Tensor, candidate: torch.Tensor, rate: torch.Tensor, margin: torch.Tensor) -> None:
        """Candidates for the examples `index` with their K-draw correct rates and mean margins."""
        better = (rate < self.rate[index]) | ((rate == self.rate[index]) & (margin > self.margin[index]))
        chosen = index[better]
        self.x[chosen], self.rate[chosen], self.margin[chosen] = candidate[better], rate[better], margin[better]


def check_selection_draws(draws: int) -> None:
    if draws < 1:
        raise ValueError(f"selection_draws must be >= 1, got {draws}")


def check_l1_top(norm: str, l1_top: float | None) -> None:
    """`l1_top` (the fraction of coordinates an L1 step moves) is for norm L1 only, and lies in [0, 1]."""
    if l1_top is None:
        return
    if norm != "L1":
        raise ValueError(f"l1_top={l1_top} applies to norm L1 only (the attack's norm is {norm}); leave it null")
    if not 0.0 <= l1_top <= 1.0:
        raise ValueError(f"l1_top must be in [0, 1] (a fraction of the coordinates; 0 = one coordinate), got {l1_top}")


class JudgedByWholeDefence(Attack):
    """An attack whose points are judged by the whole defence even when it differentiates only a part of it
    (`target` other than end_to_end on a stochastic defence): `perturb` asks `judge_for(model)` for the judge,
    and the judge's passes are added to the attack's counts."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        judge = PassCounter(model) if self.target != "end_to_end" and is_stochastic(model) else None
        self.__dict__["judge"] = judge
        try:
            return super().__call__(model, x, y)
        finally:
            del self.__dict__["judge"]
            if judge is not None and "counts" in self.__dict__:
                self.counts["forward_examples"] += judge.forward_examples

    def judge_for(self, model: nn.Module) -> nn.Module:
        """The whole defence while `__call__` runs on part of a stochastic one, else the model differentiated."""
        return self.__dict__.get("judge") or model


@dataclass
class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps (normalised step for L2).

    One gradient, no selection: the same on deterministic and stochastic models. Under L1 the step of size eps
    is shared by the fraction `l1_top` of the coordinates (None: 5%)."""

    smoke_budget = {}  # one step: nothing to shrink

    loss: str = "ce"
    l1_top: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_loss(self.loss)
        check_l1_top(self.norm, self.l1_top)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        grad, _ = input_gradient(model, x, y, self.loss)
        return project(x + self.eps * steepest_ascent(grad, self.norm, x, self.l1_top), x, self.eps, self.norm)

    def passes_per_image(self) -> float:
        return 1.0


@dataclass
class PGD(JudgedByWholeDefence):
    """Projected gradient descent (Madry et al. 2018) with random start and restarts.

    step_size defaults to eps/4 (2.5 * eps / 10, Madry's ratio for 10 steps). On a deterministic model, with
    `keep_best` an example keeps the first iterate that the model misclassified (a valid adversarial example
    found on the way) and later restarts skip it; without it, the final iterate of each restart is used, as in
    the classic formulation. On a stochastic model (see the module docstring) each restart's final iterate is
    kept and restarts compete by `selection_draws` fresh passes; `keep_best` does not apply there.
    Under L1 each step moves the fraction `l1_top` of the coordinates (None: 5%; see the module docstring).
    """

    code_version = "2"
    smoke_budget = {"steps": Budget(1), "restarts": 1, "selection_draws": 2}

    steps: int = 10
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    loss: str = "ce"
    keep_best: bool = True
    selection_draws: int = 8
    l1_top: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_loss(self.loss)
        if self.steps < 1 or self.restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1, got steps={self.steps}, restarts={self.restarts}")
        check_selection_draws(self.selection_draws)
        check_l1_top(self.norm, self.l1_top)

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else self.eps / 4

    def passes_per_image(self) -> float:
        return float(self.steps * self.restarts)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        judge = self.judge_for(model)
        if is_stochastic(judge):
            return self._perturb_stochastic(model, judge, x, y)
        return self._perturb_deterministic(model, x, y)

    def _restart(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 keep_best: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One run from a (random) start: the first misclassified iterate where `keep_best` found one, else the
        final iterate; and whether one was found."""
        x_adv = random_start(x, self.eps, self.norm) if self.random_start else x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        kept = x_adv.clone()
        for _ in range(self.steps):
            grad, logits = input_gradient(model, x_adv, y, self.loss)
            if keep_best:
                newly = (logits.argmax(1) != y) & ~found
                kept[newly], found = x_adv[newly], found | newly
            direction = steepest_ascent(grad, self.norm, x_adv, self.l1_top)
            x_adv = project(x_adv + self.alpha * direction, x, self.eps, self.norm)
        return torch.where(found.view(-1, *([1] * (x.dim() - 1))), kept, x_adv), found

    def _perturb_deterministic(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            todo = ~fooled
            if not todo.any():
                break
            final, found = self._restart(model, x[todo], y[todo], self.keep_best)
            with torch.no_grad():
                final_wrong = model(final).argmax(1) != y[todo]
            idx = todo.nonzero().squeeze(1)
            best[idx] = final
            fooled[idx] = found | final_wrong
        return best

    def _perturb_stochastic(self, model: nn.Module, judge: nn.Module, x: torch.Tensor,
                            y: torch.Tensor) -> torch.Tensor:
        """Crafted on `model`, every restart's final iterate judged by K draws of `judge` (the defence)."""
        if self.restarts == 1:  # nothing to select: the final iterate
            return self._restart(model, x, y, keep_best=False)[0]
        best = BestPoints(x)
        for _ in range(self.restarts):
            todo = (best.rate > 0).nonzero().squeeze(1)  # still correct on some of the K draws
            if todo.numel() == 0:
                break
            final, _ = self._restart(model, x[todo], y[todo], keep_best=False)
            best.offer(todo, final, *score_points(judge, final, y[todo], self.selection_draws))
        return best.x


@dataclass
class CW(PGD):
    """CW-k: PGD on the Carlini-Wagner margin loss (best other logit minus the true one), Linf or L2.

    The papers' "CW-100" under Linf: 100 steps. step_size defaults to eps/10 (a 100-step budget travels
    the ball ten times over); random start, restarts, keep_best and the stochastic rule as in `pgd`.
    """

    steps: int = 100
    loss: str = "margin"

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else self.eps / 10
