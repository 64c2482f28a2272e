"""PGD with expectation over transformation (PGD+EOT) for stochastic defences, with batched EOT samples.

`pgd_eot` follows Lee & Kim (2023): 200 steps of size 0.007, 20 EOT samples per step, the gradient of the
sum of the per-sample cross-entropies, a sign step (Linf), no random start, and the final iterate as the
result. Every setting is a field.

`keep_best` selects an iterate: on a deterministic model by the EOT samples the step computed anyway; on a
stochastic model by `selection_draws` fresh passes per iterate (attacks.protocol.score_points: fewest correct
draws, ties by the larger mean margin), never by the one noisy pass that also gave the gradient.

Batched EOT: the EOT copies of a batch are stacked into one forward/backward pass (`x.repeat(k, ...)`),
chunked so that no pass holds more than `max_batch` examples. On a GPU large chunks are the win; on a
couple of CPU cores smaller ones are often faster, hence the device-dependent default. Stacking copies
assumes the defence draws its randomness per example (as every defence here does); `attacks.diagnose`
flags a defence whose copies in one batch come out identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attacks.base import Attack, Budget, project
from attacks.gradient import (
    BestPoints,
    check_l1_top,
    check_selection_draws,
    is_stochastic,
    random_start,
    steepest_ascent,
)
from attacks.losses import attack_loss, check_loss
from attacks.protocol import score_points

# Examples per forward/backward pass when `max_batch` is not given: on a GPU, up to 8192 (all EOT copies of a
# batch at once where they fit); on a CPU, the batch itself (one EOT copy per pass, as a loop would): with 2
# cores, stacking copies into larger passes ran 2-3x slower (bench/benchmarks/pgd_eot_speed.py).
CUDA_MAX_BATCH = 8192
LEE_KIM_STEP = 0.007
LEE_KIM_EPS = 8 / 255


def default_max_batch(device: torch.device, batch: int) -> int:
    return max(CUDA_MAX_BATCH, batch) if device.type == "cuda" else max(batch, 1)


@dataclass
class EOTStep:
    """One EOT gradient estimate: the summed input gradient, and what each sample saw ([eot, B] each)."""

    grad: torch.Tensor
    correct: torch.Tensor
    loss: torch.Tensor


def eot_passes(batch: int, eot: int, max_batch: int) -> list[tuple[slice, slice]]:
    """The forward passes of a batched EOT estimate: (examples, EOT samples) per pass, <= max_batch in all."""
    if eot < 1 or max_batch < 1:
        raise ValueError(f"eot and max_batch must be >= 1, got eot={eot}, max_batch={max_batch}")
    example_chunk = max(1, min(batch, max_batch))
    copies_per_pass = max(1, max_batch // example_chunk)
    return [(slice(lo, min(lo + example_chunk, batch)), slice(done, min(done + copies_per_pass, eot)))
            for lo in range(0, batch, example_chunk) for done in range(0, eot, copies_per_pass)]


def eot_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eot: int, loss: str = "ce",
                 max_batch: int | None = None) -> EOTStep:
    """Gradient w.r.t. x of the per-example loss summed over `eot` independent forward passes.

    Copies are laid out copy-major (`x.repeat(k, ...)`) and sent in chunks of at most `max_batch` examples
    (whole copies of an example chunk per pass; a batch larger than max_batch is split by examples).
    """
    grad = torch.zeros_like(x)
    correct = torch.zeros(eot, x.shape[0], dtype=torch.bool, device=x.device)
    losses = torch.zeros(eot, x.shape[0], device=x.device)
    ones = [1] * (x.dim() - 1)
    leaf, leaf_range = None, None
    for examples, samples in eot_passes(x.shape[0], eot, max_batch or default_max_batch(x.device, x.shape[0])):
        if leaf_range != examples:  # one leaf per example chunk, shared by its EOT passes
            leaf, leaf_range = x[examples].detach().requires_grad_(True), examples
        with torch.enable_grad():
            copies = samples.stop - samples.start
            labels = y[examples] if copies == 1 else y[examples].repeat(copies)
            logits = model(leaf if copies == 1 else leaf.repeat(copies, *ones))
            per_sample = attack_loss(logits, labels, loss)
            step_grad, = torch.autograd.grad(per_sample.sum(), leaf)
        grad[examples] += step_grad
        correct[samples, examples] = (logits.detach().argmax(1) == labels).view(-1, leaf.shape[0])
        losses[samples, examples] = per_sample.detach().view(-1, leaf.shape[0])
    return EOTStep(grad=grad, correct=correct, loss=losses)


@dataclass
class EOTPGD(Attack):
    """PGD+EOT (Lee & Kim 2023 defaults). `step_size=None`: 0.007 under Linf; under L2 and L1 the same fraction of
    eps (0.007 / (8/255) * eps); under L1 a step moves the fraction `l1_top` of the coordinates (None: 5%, as in
    attacks.gradient). With `keep_best` each example keeps its best iterate instead of the final one (the
    paper uses the final one): judged by the EOT samples on a deterministic model, by `selection_draws` fresh
    passes per iterate on a stochastic one. `loss`: ce (the paper's), margin or dlr.
    `max_batch=None` is the device default (`default_max_batch`): all copies at once on a GPU (up to 8192
    examples per pass), one EOT copy of the batch per pass on a CPU.
    """

    steps: int = 200
    step_size: float | None = None
    eot: int = 20
    random_start: bool = False
    loss: str = "ce"
    keep_best: bool = False
    max_batch: int | None = None
    selection_draws: int = 8
    l1_top: float | None = None

    code_version = "2"
    smoke_budget = {"steps": Budget(1), "eot": Budget(1), "selection_draws": 2}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_loss(self.loss)
        check_selection_draws(self.selection_draws)
        check_l1_top(self.norm, self.l1_top)
        if self.steps < 1 or self.eot < 1:
            raise ValueError(f"steps and eot must be >= 1, got steps={self.steps}, eot={self.eot}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 (or null for the device default), got {self.max_batch}")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"step_size must be > 0 (or null for the default), got {self.step_size}")

    @property
    def alpha(self) -> float:
        if self.step_size is not None:
            return self.step_size
        return LEE_KIM_STEP if self.norm == "Linf" else LEE_KIM_STEP / LEE_KIM_EPS * self.eps

    def passes_per_image(self) -> float:
        return float(self.steps * self.eot)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.run(model, x, y)[0]

    def start(self, x: torch.Tensor, start: torch.Tensor | None) -> torch.Tensor:
        """The first iterate: `start` (a point of the threat model, e.g. another attack's result) where given."""
        if start is not None:
            return project(start.detach().clone(), x, self.eps, self.norm)
        return random_start(x, self.eps, self.norm) if self.random_start else x.clone()

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The attack's result and its trace: [steps, B] fraction of EOT samples correct at each iterate.
        `start`: the first iterate per example instead of the clean (or random) point."""
        if self.keep_best and is_stochastic(model):
            return self._run_scored(model, x, y, start)
        x_adv = self.start(x, start)
        trace = torch.zeros(self.steps, x.shape[0], device=x.device)
        best, best_rate = x_adv.clone(), torch.full((x.shape[0],), 2.0, device=x.device)
        for step in range(self.steps):
            estimate = eot_gradient(model, x_adv, y, self.eot, self.loss, self.max_batch)
            rate = estimate.correct.float().mean(0)
            trace[step] = rate
            if self.keep_best:
                better = rate < best_rate
                best[better], best_rate[better] = x_adv[better], rate[better]
            x_adv = self._step(x, x_adv, estimate.grad)
        if self.keep_best:
            with torch.no_grad():
                final_rate = eot_correct_rate(model, x_adv, y, self.eot, self.max_batch)
            better = final_rate < best_rate
            best[better] = x_adv[better]
            return best, trace
        return x_adv, trace

    def _step(self, x: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        direction = steepest_ascent(grad, self.norm, x_adv, self.l1_top)
        return project(x_adv + self.alpha * direction, x, self.eps, self.norm)

    def _run_scored(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    start: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """keep_best on a stochastic model: every iterate (and the final one) scored by fresh K-draw passes."""
        x_adv = self.start(x, start)
        trace = torch.zeros(self.steps, x.shape[0], device=x.device)
        best, everyone = BestPoints(x_adv), torch.arange(x.shape[0], device=x.device)
        for step in range(self.steps):
            estimate = eot_gradient(model, x_adv, y, self.eot, self.loss, self.max_batch)
            trace[step] = estimate.correct.float().mean(0)
            best.offer(everyone, x_adv, *score_points(model, x_adv, y, self.selection_draws, self.max_batch))
            x_adv = self._step(x, x_adv, estimate.grad)
        best.offer(everyone, x_adv, *score_points(model, x_adv, y, self.selection_draws, self.max_batch))
        return best.x, trace


@torch.no_grad()
def eot_correct_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eot: int,
                           max_batch: int | None = None) -> torch.Tensor:
    """Fraction of `eot` batched forward passes that classify each example correctly (no gradient)."""
    hits = torch.zeros(x.shape[0], device=x.device)
    ones = [1] * (x.dim() - 1)
    for examples, samples in eot_passes(x.shape[0], eot, max_batch or default_max_batch(x.device, x.shape[0])):
        copies = samples.stop - samples.start
        logits = model(x[examples].repeat(copies, *ones))
        hits[examples] += (logits.argmax(1) == y[examples].repeat(copies)).view(copies, -1).float().sum(0)
    return hits / eot
