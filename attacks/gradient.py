"""First-order white-box attacks: FGSM, PGD and CW-k (PGD on the margin loss); Linf and L2, random start, restarts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attacks.base import Attack, lp_norms, project
from attacks.losses import LOSSES, attack_loss


def random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """A uniformly random point of the eps-ball around x (Linf: the cube; L2: the ball), then the box."""
    if norm == "Linf":
        delta = torch.empty_like(x).uniform_(-eps, eps)
    else:
        direction = torch.randn_like(x)
        direction = direction / lp_norms(direction, "L2").clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        radius = eps * torch.rand(x.shape[0], device=x.device) ** (1.0 / x[0].numel())
        delta = direction * radius.view(-1, *([1] * (x.dim() - 1)))
    return (x + delta).clamp(0.0, 1.0)


def steepest_ascent(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit-norm direction of steepest ascent: sign for Linf, normalised gradient for L2."""
    if norm == "Linf":
        return grad.sign()
    return grad / lp_norms(grad, "L2").clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed per-example loss w.r.t. x, and the logits it came from."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    grad, = torch.autograd.grad(attack_loss(logits, y, loss).sum(), x)
    return grad, logits.detach()


@dataclass
class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps (normalised step for L2)."""

    loss: str = "ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} is not valid; valid: {', '.join(LOSSES)}")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        grad, _ = input_gradient(model, x, y, self.loss)
        return project(x + self.eps * steepest_ascent(grad, self.norm), x, self.eps, self.norm)


@dataclass
class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018) with random start and restarts.

    step_size defaults to eps/4 (2.5 * eps / 10, Madry's ratio for 10 steps). With `keep_best`, an example
    keeps the first iterate that the model misclassified (a valid adversarial example found on the way);
    without it, the final iterate of each restart is used, as in the classic formulation.
    """

    steps: int = 10
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    loss: str = "ce"
    keep_best: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} is not valid; valid: {', '.join(LOSSES)}")
        if self.steps < 1 or self.restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1, got steps={self.steps}, restarts={self.restarts}")

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else self.eps / 4

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            todo = ~fooled
            if not todo.any():
                break
            x_r, y_r = x[todo], y[todo]
            x_adv = random_start(x_r, self.eps, self.norm) if self.random_start else x_r.clone()
            found = torch.zeros(x_r.shape[0], dtype=torch.bool, device=x.device)
            kept = x_adv.clone()
            for _ in range(self.steps):
                grad, logits = input_gradient(model, x_adv, y_r, self.loss)
                if self.keep_best:
                    newly = (logits.argmax(1) != y_r) & ~found
                    kept[newly], found = x_adv[newly], found | newly
                x_adv = project(x_adv + self.alpha * steepest_ascent(grad, self.norm), x_r, self.eps, self.norm)
            with torch.no_grad():
                final_wrong = model(x_adv).argmax(1) != y_r
            final = torch.where(found.view(-1, *([1] * (x.dim() - 1))), kept, x_adv)
            idx = todo.nonzero().squeeze(1)
            best[idx] = final
            fooled[idx] = found | final_wrong
        return best


@dataclass
class CW(PGD):
    """CW-k: PGD on the Carlini-Wagner margin loss (best other logit minus the true one), Linf or L2.

    The papers' "CW-100" under Linf: 100 steps. step_size defaults to eps/10 (a 100-step budget travels
    the ball ten times over); random start, restarts and keep_best as in `pgd`.
    """

    steps: int = 100
    loss: str = "margin"

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else self.eps / 10
