"""Models for the diagnostics bank (tests/test_diagnostics_bank.py): healthy ones, which no diagnostic flag may
call broken, and broken ones, each built to hide its gradients in one known way.

Healthy: linear models, MLPs and TinyCNNs (bench/benchmarks/toys.py), trained plainly or adversarially
(`fit_adversarially`: PGD examples at the attacked eps) on digits8 or on `prototype_task`, an easy synthetic
10-class task (class prototypes plus pixel noise). `healthy_model(name)` fits one of `HEALTHY` once per process.

Broken:
- `ScaledLogits`: log_softmax(scale * logits): the softmax saturates until cross-entropy's gradient is exactly 0;
- `NoisyVote`: a majority vote of the classifier over noisy copies (defences/carso's `vote` aggregation): its
  output is piecewise constant in the input, so every gradient is exactly 0;
- `SqueezingDefence`: a feature-squeezing purifier (bit-depth reduction, then a 3x3 median) behind
  purify/classify: non-differentiable, its gradient is 0;
- `NoisySqueezingDefence`: Gaussian noise, then that squeezing purifier: stochastic and non-differentiable (only a
  black-box attack that averages the noise, Square-EOT, sees through it);
- `DoubleExpEnsemble`: CARSO's double-exponential aggregation over noisy copies: cross-entropy saturates;
- QuantisingDefence (bench/benchmarks/toys.py): rounded input pixels.
Healthy and stochastic: NoisyDefence (bench/benchmarks/toys.py) and `NoisyEnsemble` with a mean of logits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import attacks
from bench.benchmarks.toys import TinyCNN, digits8, fit_classifier
from defences.base import Defence

ARCHITECTURES = ("linear", "mlp", "cnn")


def prototype_task(n: int, seed: int, spread: float = 0.35, noise: float = 0.05,
                   task_seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """n 8x8 images of 10 classes: the class's prototype (pixels uniform in 0.5 +- spread / 2, drawn from
    `task_seed`) plus Gaussian noise of sd `noise`, clipped to [0, 1]; labels cycle through the classes."""
    prototypes = 0.5 - spread / 2 + spread * torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(task_seed))
    labels = torch.arange(n) % 10
    pixels = noise * torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return (prototypes[labels] + pixels).clamp(0, 1), labels


def build(architecture: str, seed: int) -> nn.Module:
    """A fresh, seeded classifier of 8x8 one-channel inputs into 10 classes."""
    torch.manual_seed(seed)
    if architecture == "linear":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    if architecture == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    if architecture == "cnn":
        return TinyCNN(width=8)
    raise ValueError(f"architecture={architecture!r} is not valid; valid: {', '.join(ARCHITECTURES)}")


def fit_adversarially(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 3,
                      epochs: int = 8, seed: int = 0, lr: float = 0.01) -> nn.Module:
    """Adam on the cross-entropy of PGD examples (`steps` steps at `eps`, crafted on the current weights)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    attack = attacks.build("pgd", eps=eps, steps=steps)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], 64):
            index = order[start:start + 64]
            x_adv = attack(model.eval(), x[index], y[index])
            loss = F.cross_entropy(model.train()(x_adv), y[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


@dataclass(frozen=True)
class Healthy:
    """One healthy model of the bank: what it is trained on and how, and the eps it is diagnosed at."""

    architecture: str
    data: str  # digits8 or prototypes
    adversarial: bool
    seed: int
    eps: float

    @property
    def name(self) -> str:
        return f"{self.architecture}-{self.data}-{'at' if self.adversarial else 'plain'}-s{self.seed}"


HEALTHY = tuple(
    [Healthy(a, "digits8", False, s, 0.1) for a in ARCHITECTURES for s in (0, 1)]
    + [Healthy("cnn", "prototypes", False, 3, 0.05), Healthy("mlp", "prototypes", False, 3, 0.1)]
    + [Healthy(a, "digits8", True, 0, 0.1) for a in ARCHITECTURES] + [Healthy("cnn", "digits8", True, 1, 0.1)])


def task_data(data: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of digits8 or of the prototype task (2000 training images, 128 test images)."""
    if data == "digits8":
        return digits8(split)
    if data == "prototypes":
        return prototype_task(2000 if split == "train" else 128, seed=1 if split == "train" else 2)
    raise ValueError(f"data={data!r} is not valid; valid: digits8, prototypes")


@functools.cache
def healthy_model(spec: Healthy) -> nn.Module:
    """The bank's model `spec`, fitted on one thread the first time it is asked for (callers must not change it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = task_data(spec.data, "train")
        model = build(spec.architecture, spec.seed)
        if spec.adversarial:
            return fit_adversarially(model, x, y, spec.eps, epochs=5, seed=spec.seed)
        return fit_classifier(model, x, y, epochs=10, seed=spec.seed)
    finally:
        torch.set_num_threads(threads)


class ScaledLogits(nn.Module):
    """log_softmax(scale * logits): deterministic, same predictions; cross-entropy's gradient underflows to 0."""

    def __init__(self, classifier: nn.Module, scale: float = 1e5):
        super().__init__()
        self.classifier, self.scale = classifier, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.scale * self.classifier(x), dim=1)


class NoisyEnsemble(nn.Module):
    """The classifier on `copies` noisy copies of each input (fresh noise per copy and pass), then `aggregation`
    (defences/carso: double_exp, vote, logit_mean, ...)."""

    stochastic = True

    def __init__(self, classifier: nn.Module, aggregation: str, copies: int = 4, sigma: float = 0.05):
        super().__init__()
        self.classifier, self.aggregation, self.copies, self.sigma = classifier, aggregation, copies, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from defences.carso import aggregate

        noisy = x.repeat(self.copies, *([1] * (x.dim() - 1)))
        noisy = noisy + self.sigma * torch.randn_like(noisy)
        return aggregate(self.classifier(noisy).view(self.copies, x.shape[0], -1), self.aggregation)


class DoubleExpEnsemble(NoisyEnsemble):
    """CARSO's double-exponential aggregation over noisy copies."""

    def __init__(self, classifier: nn.Module, copies: int = 4, sigma: float = 0.05):
        super().__init__(classifier, "double_exp", copies, sigma)


class NoisyVote(NoisyEnsemble):
    """A majority vote over noisy copies: the log of each class's share of the votes (train the classifier on
    inputs with the same noise)."""

    def __init__(self, classifier: nn.Module, copies: int = 5, sigma: float = 0.3):
        super().__init__(classifier, "vote", copies, sigma)


class SqueezingDefence(Defence):
    """purify(x) = the 3x3 median (reflect-padded) of x rounded to `levels` grey levels: deterministic feature
    squeezing; the rounding makes its gradient exactly 0."""

    has_purifier = True

    @dataclass
    class Params:
        levels: int = 4

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.params.levels - 1
        squeezed = torch.round(x * steps) / steps
        patches = F.unfold(F.pad(squeezed, (1, 1, 1, 1), mode="reflect"), 3)  # (B, C * 9, H * W)
        median = patches.view(x.shape[0], x.shape[1], 9, -1).median(dim=2).values
        return median.view_as(x)


class NoisySqueezingDefence(SqueezingDefence):
    """purify(x) = SqueezingDefence's purifier of x + N(0, sigma^2) noise (fresh per example and pass), clipped to
    [0, 1]: a stochastic, non-differentiable purifier."""

    stochastic = True

    @dataclass
    class Params:
        levels: int = 4
        sigma: float = 0.1

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return super().purify((x + self.params.sigma * torch.randn_like(x)).clamp(0.0, 1.0))
