"""Small models with known answers: for the attack and protocol tests and the speed benchmarks (one home for both).

- `LinearClassifier` and `exact_robust_correct`: a linear model's exact robust correctness under Linf and L2
  (closed form, for inputs far enough from the box that the box does not bind) and under L1 with the box
  (`l1_robust_slack`: per class a fractional knapsack, solved greedily);
- `noisy_linear_toy`, `noisy_linear_accuracy`, `noisy_linear_optimum`: a two-class linear model behind Gaussian
  input noise, whose expected (single-draw) accuracy at any point, and its minimum over the eps-ball, are closed
  forms;
- `digits8` and `TinyCNN` / `fit_classifier`: scikit-learn's 8x8 digits and a classifier trained on them in
  seconds;
- `NoisyDefence` (Gaussian noise in front of a classifier: stochastic, per-example randomness),
  `QuantisingDefence` (rounds pixels to a few levels: a purifier whose gradient is zero, i.e. gradient
  masking), `BernoulliModel` (correct with a known probability on every draw).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from defences.base import Defence, Task


class LinearClassifier(nn.Module):
    """logits = W x + b on the flattened input."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def robust_radius(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                  norm: str) -> torch.Tensor:
    """The smallest perturbation size (in `norm`) that changes a linear model's correct prediction, ignoring
    the [0, 1] box; 0 for points already misclassified.

    For class j the margin m_j = (w_y - w_j) x + b_y - b_j falls fastest along the dual-norm direction, by
    eps * ||w_y - w_j||_dual (L1 for Linf, L2 for L2); the point flips at min_j m_j / ||w_y - w_j||_dual.
    """
    flat = x.flatten(1)
    diffs = weight[y][:, None, :] - weight[None, :, :]            # (B, C, D): w_y - w_j
    margins = torch.einsum("bcd,bd->bc", diffs, flat) + (bias[y][:, None] - bias[None, :])
    dual = diffs.abs().sum(-1) if norm == "Linf" else diffs.norm(dim=-1)
    radius = margins / dual.clamp_min(1e-12)
    radius[torch.arange(x.shape[0]), y] = float("inf")
    return radius.amin(1).clamp_min(0.0)


def l1_best_gain(direction: torch.Tensor, x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """max direction . d over ||d||_1 <= eps and 0 <= x + d <= 1, and the maximiser d; direction (..., D), x (..., D)
    broadcastable to it.

    A linear objective over the L1 ball cut by the box is a fractional knapsack: every unit of L1 budget spent on
    coordinate i gains |direction_i|, coordinate i takes at most its room in the direction's sign (1 - x_i rising,
    x_i falling), so the optimum fills the coordinates in decreasing |direction_i| until eps is spent: one
    coordinate where the box does not bind, several (all but the last at the box) where it does.
    """
    x = x.expand_as(direction)
    size = direction.abs()
    room = torch.where(direction > 0, 1 - x, x) * (size > 0)
    order = size.argsort(dim=-1, descending=True, stable=True)
    room_sorted = room.gather(-1, order)
    spent_before = room_sorted.cumsum(-1) - room_sorted
    amount_sorted = torch.minimum((eps - spent_before).clamp_min(0), room_sorted)
    amount = torch.zeros_like(amount_sorted).scatter(-1, order, amount_sorted)
    return (size * amount).sum(-1), direction.sign() * amount


def l1_robust_slack(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    eps: float) -> torch.Tensor:
    """Per point, min over classes j != y of the logit margin z_y - z_j left at the worst L1 perturbation of size
    <= eps inside the box (`l1_best_gain` of w_j - w_y): > 0 exactly when the point stays correct."""
    flat = x.flatten(1)
    diffs = weight[None, :, :] - weight[y][:, None, :]            # (B, C, D): w_j - w_y
    margins = -(torch.einsum("bcd,bd->bc", diffs, flat) + (bias[None, :] - bias[y][:, None]))
    gain, _ = l1_best_gain(diffs, flat[:, None, :], eps)
    slack = margins - gain
    slack[torch.arange(x.shape[0]), y] = float("inf")
    return slack.amin(1)


def exact_robust_correct(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float,
                         norm: str) -> torch.Tensor:
    """Whether each point stays correctly classified for every perturbation of size <= eps (Linf, L2: box not
    binding; L1: with the [0, 1] box)."""
    if norm == "L1":
        return l1_robust_slack(weight, bias, x, y, eps) > 0
    return robust_radius(weight, bias, x, y, norm) > eps


def noisy_linear_toy(n: int, sigma: float, seed: int = 0, block: int = 4,
                     side: int = 8) -> tuple[NoisyDefence, torch.Tensor, torch.Tensor]:
    """NoisyDefence(sigma) around a two-class linear model whose weight difference is +-1/2 on `block` x `block`
    squares of random sign (a pattern Square's square windows can find), and n inputs uniform in [0.3, 0.7]
    (inside the box for eps <= 0.3) labelled by the noise-free model."""
    generator = torch.Generator().manual_seed(seed)
    signs = torch.sign(torch.randn(1, 1, side // block, side // block, generator=generator))
    pattern = F.interpolate(signs, scale_factor=block).flatten() * 0.5
    model = LinearClassifier(torch.stack([pattern, -pattern]), torch.zeros(2))
    x = 0.3 + 0.4 * torch.rand(n, 1, side, side, generator=generator)
    with torch.no_grad():
        y = model(x).argmax(1)
    defence = NoisyDefence(model, toy_task(side=side, num_classes=2), NoisyDefence.Params(sigma=sigma)).eval()
    return defence, x, y


def _difference(defence: NoisyDefence, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weight, bias = defence.classifier.weight.detach(), defence.classifier.bias.detach()
    return weight[y] - weight[1 - y], bias[y] - bias[1 - y]


def noisy_linear_accuracy(defence: NoisyDefence, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per point, the exact probability that one draw of `noisy_linear_toy`'s defence classifies it correctly:
    the margin d.x + c plus noise is N(d.x + c, sigma^2 ||d||^2), so Phi((d.x + c) / (sigma ||d||))."""
    d, c = _difference(defence, y)
    margin = (x.flatten(1) * d).sum(1) + c
    return torch.special.ndtr(margin / (defence.params.sigma * d.norm(dim=1)))


def noisy_linear_optimum(defence: NoisyDefence, x: torch.Tensor, y: torch.Tensor, eps: float,
                         norm: str = "Linf") -> torch.Tensor:
    """Per point, the minimum of `noisy_linear_accuracy` over the eps-ball (the box not binding): the margin
    falls by at most eps ||d||_dual (L1 for Linf, L2 for L2)."""
    d, c = _difference(defence, y)
    dual = d.abs().sum(1) if norm == "Linf" else d.norm(dim=1)
    margin = (x.flatten(1) * d).sum(1) + c - eps * dual
    return torch.special.ndtr(margin / (defence.params.sigma * d.norm(dim=1)))


def digits8(split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits at their native 8x8, in [0, 1], shape (N, 1, 8, 8); the harness's 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} is not valid; valid: train, test")
    digits = load_digits()
    train_x, test_x, train_y, test_y = train_test_split(digits.images, digits.target, test_size=0.2,
                                                        stratify=digits.target, random_state=0)
    images, labels = (train_x, train_y) if split == "train" else (test_x, test_y)
    return torch.from_numpy(images).float().div(16.0).unsqueeze(1), torch.from_numpy(labels).long()


class TinyCNN(nn.Module):
    """conv3x3(8)-ReLU, conv3x3 stride 2 (16)-ReLU, linear: a plain classifier for 8x8 inputs."""

    def __init__(self, channels: int = 1, side: int = 8, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(2 * width * ((side + 1) // 2) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def fit_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 30, lr: float = 0.01,
                   batch_size: int = 64, seed: int = 0, transform: nn.Module | None = None,
                   attack: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> nn.Module:
    """Adam on cross-entropy (inputs through `transform` first when given; with `attack`, adversarial training on
    its examples, crafted on the model in eval mode); returns the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], batch_size):
            index = order[start:start + batch_size]
            inputs = x[index] if transform is None else transform(x[index])
            if attack is not None:
                inputs = attack(model.eval(), inputs, y[index])
                model.train()
            loss = F.cross_entropy(model(inputs), y[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


def toy_task(channels: int = 1, side: int = 8, num_classes: int = 10, norm: str = "Linf", eps: float = 0.1) -> Task:
    return Task(dataset="toy", channels=channels, height=side, width=side, num_classes=num_classes,
                mean=(0.0,) * channels, std=(1.0,) * channels, norm=norm, eps=eps)


class NoisyDefence(Defence):
    """purify(x) = x + sigma * N(0, I), fresh per example and per pass; classify = the classifier."""

    stochastic = True
    has_purifier = True

    @dataclass
    class Params:
        sigma: float = 0.25

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.params.sigma * torch.randn_like(x)


class QuantisingDefence(Defence):
    """purify(x) = round(x * (levels - 1)) / (levels - 1): deterministic, and its gradient is zero everywhere."""

    has_purifier = True

    @dataclass
    class Params:
        levels: int = 5

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.params.levels - 1
        return torch.round(x * steps) / steps


class BernoulliModel(nn.Module):
    """A stochastic model correct with probability q on each draw, independently per example and per pass.

    Inputs (B, 2) carry each example's q in column 0 and its label in column 1; a wrong draw predicts the
    next class.
    """

    stochastic = True

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, label = x[:, 0], x[:, 1].round().long()
        correct = torch.rand(x.shape[0], device=x.device) < q
        predicted = torch.where(correct, label, (label + 1) % self.num_classes)
        return F.one_hot(predicted, self.num_classes).float()
