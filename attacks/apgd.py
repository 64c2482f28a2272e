"""APGD (Croce & Hein 2020) with batched EOT: the gradient engine of `aa`, `randaa`, `apgd_ce` and `apgd_dlr`.

The algorithm is the paper's (and pyautoattack's `APGDAttack.attack_single_run`, iterate for iterate on a
deterministic model with the same seed): a random start in the eps-ball, a first step of size 2 * eps, momentum
0.75 after it, and at the checkpoints p_j (the first after 22% of the steps, then each interval 3% shorter, down to
6%) the step size of an example is halved, and it restarts from its highest-loss point, when fewer than `rho` of the
steps since the last checkpoint increased its loss, or when its step size was not halved last time and its best
loss did not improve since. Norms Linf and L2; losses `ce`, `dlr` (untargeted) and `dlr-targeted` (the targeted DLR
of APGD-T, with `y_target`).

Batched EOT: the `eot` copies of a batch go through the model in chunks of at most `max_batch` examples
(`attacks.eot.eot_passes`; None = `apgd_max_batch`: `attacks.eot.default_max_batch`, the device's default, raised on
a CPU for small inputs) in one forward/backward per chunk. The gradient is the mean over the copies (pyautoattack's
loop divides the sum by `eot` too), and the loss that drives the step-size control is the mean over the copies
(pyautoattack's loop keeps the last copy's; on a deterministic model both are the same, bit for bit, since the
mean is a running mean, exact where the copies agree). With `max_batch` = the
batch size each pass holds one copy: the loop.

Two candidates per example come back: `highest_loss` (the iterate of highest mean EOT loss) and `least_correct`
(the iterate whose EOT copies were least often correct, the latest one on ties; on a deterministic model the last
misclassified iterate, pyautoattack's `x_best_adv`), each with the fraction of EOT copies that classified it
correctly and their mean margin (best other logit minus the true one) there, so that a driver can choose between
candidates of a deterministic model without another forward pass.

`stop_when_misclassified` (deterministic models only; callers check): an example whose every EOT copy is
misclassified leaves the batch at once. The other examples' iterates are unchanged (each example's schedule is its
own), so a cascade that counts a point done once misclassified gets the same result for less work. On a stochastic
model one misclassified pass decides nothing, so every example runs every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attacks.eot import default_max_batch, eot_passes

APGD_LOSSES = ("ce", "dlr", "dlr-targeted")
MOMENTUM = 0.75
FIRST_CHECKPOINT, CHECKPOINT_DECREASE, MIN_CHECKPOINT = 0.22, 0.03, 0.06
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3): the DLR loss (larger = more adversarial)."""
    ordered, order = logits.sort(dim=1)
    true = logits.gather(1, y[:, None]).squeeze(1)
    top_is_true = (order[:, -1] == y).to(logits.dtype)
    best_other = ordered[:, -2] * top_is_true + ordered[:, -1] * (1.0 - top_is_true)
    return -(true - best_other) / (ordered[:, -1] - ordered[:, -3] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
    """-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2): APGD-T's targeted DLR loss."""
    ordered = logits.sort(dim=1).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    target = logits.gather(1, y_target[:, None]).squeeze(1)
    return -(true - target) / (ordered[:, -1] - 0.5 * (ordered[:, -3] + ordered[:, -4]) + 1e-12)


def _correct_and_margin(logits: torch.Tensor, y: torch.Tensor, margins: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether the top class is y, and the margin (0 unless `margins`), from one top-2 (cheaper than apart)."""
    if not margins:
        correct = (logits.argmax(1) == y).float()
        return correct, torch.zeros_like(correct)
    top_values, top_classes = logits.topk(2, dim=1)
    is_top = top_classes[:, 0] == y
    true = logits.gather(1, y[:, None]).squeeze(1)
    return is_top.float(), torch.where(is_top, top_values[:, 1], top_values[:, 0]) - true


def loss_function(loss: str, y_target: torch.Tensor | None) -> LossFn:
    if loss == "ce":
        return lambda logits, y: F.cross_entropy(logits, y, reduction="none")
    if loss == "dlr":
        return dlr_loss
    if loss == "dlr-targeted":
        if y_target is None:
            raise ValueError("loss='dlr-targeted' needs y_target")
        return lambda logits, y: targeted_dlr_loss(logits, y, y_target)
    raise ValueError(f"APGD loss={loss!r} is not valid; valid: {', '.join(APGD_LOSSES)}")


# On a CPU, EOT copies are stacked into one pass only while a pass holds at most this many input values: small
# inputs (8x8 digits: up to 1024 examples) ran ~15% faster stacked, 32x32 ones 1.6x slower (per-call overhead
# against cache misses; bench/benchmarks/speed.py). 2**16 values = 64 images of 32x32: the loop from there on.
CPU_VALUES_PER_PASS = 2**16


def apgd_max_batch(x: torch.Tensor) -> int:
    """The default examples per pass: attacks.eot's device default, on a CPU raised for small inputs."""
    batch = x.shape[0]
    if x.device.type == "cuda":
        return default_max_batch(x.device, batch)
    return max(batch, 1, CPU_VALUES_PER_PASS // max(1, math.prod(x.shape[1:])))


@dataclass
class EOTEstimate:
    """At one iterate, per example: mean input gradient, mean loss, fraction correct, mean margin over EOT copies."""

    grad: torch.Tensor
    loss: torch.Tensor
    correct_rate: torch.Tensor
    margin: torch.Tensor


def eot_estimate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eot: int, loss: str,
                 y_target: torch.Tensor | None = None, max_batch: int | None = None,
                 margins: bool = True) -> EOTEstimate:
    """The EOT copies of x (copy-major) in chunked forward/backward passes of at most `max_batch` examples.
    `margins=False` skips the margins (left at 0) where nobody reads them."""
    if eot == 1 and (max_batch is None or max_batch >= x.shape[0]):  # the device defaults hold a whole batch
        return _one_pass(model, x, y, 1, loss, y_target, margins)
    passes = eot_passes(x.shape[0], eot, max_batch or apgd_max_batch(x))
    if len(passes) == 1:  # one pass holds everything (all copies at once): no accumulation
        return _one_pass(model, x, y, eot, loss, y_target, margins)
    grad = torch.zeros_like(x)
    loss_mean, correct, margin_mean, seen = (torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
                                             for _ in range(4))
    for examples, samples in passes:
        whole = examples.start == 0 and examples.stop == x.shape[0]
        part = _one_pass(model, x if whole else x[examples], y if whole else y[examples],
                         samples.stop - samples.start, loss,
                         None if y_target is None else y_target if whole else y_target[examples], margins)
        copies = samples.stop - samples.start
        grad[examples] += part.grad * copies
        correct[examples] += part.correct_rate * copies
        seen[examples] += copies
        weight = copies / seen[examples]
        loss_mean[examples] += (part.loss - loss_mean[examples]) * weight
        margin_mean[examples] += (part.margin - margin_mean[examples]) * weight
    return EOTEstimate(grad / eot, loss_mean, correct / eot, margin_mean)


def _one_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, copies: int, loss: str,
              y_target: torch.Tensor | None, margins: bool) -> EOTEstimate:
    """`copies` EOT copies of x in one forward/backward pass: per example means over the copies."""
    leaf = x.detach().requires_grad_(True)
    labels = y if copies == 1 else y.repeat(copies)
    targets = y_target if y_target is None or copies == 1 else y_target.repeat(copies)
    with torch.enable_grad():
        logits = model(leaf if copies == 1 else leaf.repeat(copies, *[1] * (x.dim() - 1)))
        per_copy = loss_function(loss, targets)(logits, labels)
        grad, = torch.autograd.grad(per_copy.sum(), leaf)
    correct, margin_now = _correct_and_margin(logits.detach(), labels, margins)
    if correct.dtype != x.dtype:
        correct, margin_now = correct.to(x.dtype), margin_now.to(x.dtype)
    per_copy = per_copy.detach()
    if copies == 1:
        return EOTEstimate(grad, per_copy if per_copy.dtype == x.dtype else per_copy.to(x.dtype), correct, margin_now)
    return EOTEstimate(grad / copies, running_mean(per_copy.view(copies, -1)).to(x.dtype),
                       correct.view(copies, -1).mean(0), running_mean(margin_now.view(copies, -1)))


def running_mean(rows: torch.Tensor) -> torch.Tensor:
    """The mean over dim 0 as m += (row - m) / k: exactly the common value where all rows agree (a deterministic
    model's EOT copies), so the step-size control compares the same losses as without EOT; sum / k is not exact."""
    mean = rows[0].clone()
    for k in range(1, rows.shape[0]):
        mean += (rows[k] - mean) / (k + 1)
    return mean


@dataclass
class Candidate:
    """An APGD candidate per example: the point, the fraction of EOT copies correct there, their mean margin."""

    x: torch.Tensor
    correct_rate: torch.Tensor
    margin: torch.Tensor


@dataclass
class APGDRun:
    highest_loss: Candidate
    least_correct: Candidate
    best_loss: torch.Tensor


def checkpoint_lengths(steps: int) -> tuple[int, int, int]:
    """(first checkpoint interval, its decrease per checkpoint, its minimum), in steps."""
    return (max(int(FIRST_CHECKPOINT * steps), 1), max(int(CHECKPOINT_DECREASE * steps), 1),
            max(int(MIN_CHECKPOINT * steps), 1))


def _flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.flatten(1)
    size = flat.abs().amax(1) if norm == "Linf" else (flat**2).sum(-1).sqrt()
    return size.view(-1, *([1] * (t.dim() - 1)))


def _normalise(t: torch.Tensor, norm: str) -> torch.Tensor:
    return t / (_flat_norm(t, norm) + 1e-12)


def random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """APGD's start: uniform in the Linf ball scaled to its surface, or a Gaussian direction at L2 radius eps.

    Drawn on the CPU and moved, as pyautoattack does, so that a seed gives the same start on every device.
    """
    noise = 2 * torch.rand(x.shape) - 1 if norm == "Linf" else torch.randn(x.shape)
    return (x + eps * _normalise(noise.to(x.device, x.dtype), norm)).clamp(0.0, 1.0)


def _project_l2(x: torch.Tensor, point: torch.Tensor, eps: float) -> torch.Tensor:
    delta = point - x
    return (x + _normalise(delta, "L2") * torch.minimum(torch.full_like(x, eps), _flat_norm(delta, "L2"))).clamp(0, 1)


def momentum_step(x: torch.Tensor, x_adv: torch.Tensor, previous: torch.Tensor, grad: torch.Tensor,
                  step_size: torch.Tensor, eps: float, norm: str, momentum: float,
                  box: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """z = P(x_adv + eta * direction(grad)); x_new = P(x_adv + momentum (z - x_adv) + (1 - momentum)(x_adv - prev)).

    `box`: (x - eps, x + eps), for Linf, computed once per run by the caller (the same values as here)."""
    if norm == "Linf":
        low, high = box if box is not None else (x - eps, x + eps)
        # clamp(v, low, high) is min(max(v, low), high), element for element
        z = torch.clamp(x_adv + step_size * torch.sign(grad), low, high).clamp_(0.0, 1.0)
        blended = x_adv + (z - x_adv) * momentum + (x_adv - previous) * (1 - momentum)
        return torch.clamp(blended, low, high).clamp_(0.0, 1.0)
    z = _project_l2(x, x_adv + step_size * _normalise(grad, "L2"), eps)
    return _project_l2(x, x_adv + (z - x_adv) * momentum + (x_adv - previous) * (1 - momentum), eps)


@dataclass
class APGD:
    """One APGD run (no restarts: a driver runs restarts as rounds on the points still standing)."""

    eps: float
    norm: str = "Linf"
    steps: int = 100
    loss: str = "ce"
    eot: int = 1
    rho: float = 0.75
    max_batch: int | None = None
    stop_when_misclassified: bool = False
    margins: bool = True

    def __post_init__(self) -> None:
        if self.norm not in ("Linf", "L2"):
            raise ValueError(f"APGD norm={self.norm!r} is not valid; valid: Linf, L2")
        if self.loss not in APGD_LOSSES:
            raise ValueError(f"APGD loss={self.loss!r} is not valid; valid: {', '.join(APGD_LOSSES)}")
        if min(self.steps, self.eot) < 1 or (self.max_batch is not None and self.max_batch < 1):
            raise ValueError(f"APGD steps, eot and max_batch must be >= 1, got steps={self.steps}, "
                             f"eot={self.eot}, max_batch={self.max_batch}")

    def estimate(self, model: nn.Module, x_adv: torch.Tensor, s: dict[str, torch.Tensor]) -> EOTEstimate:
        return eot_estimate(model, x_adv, s["y"], self.eot, self.loss, s.get("y_target"), self.max_batch,
                            self.margins)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            y_target: torch.Tensor | None = None) -> APGDRun:
        """Attack (x, y) from a random start drawn from the torch RNG (seed it for a reproducible run)."""
        x = x.detach()
        x_adv = random_start(x, self.eps, self.norm)
        out = {"highest_loss": x_adv.clone(), "least_correct": x_adv.clone()}
        out.update({name: torch.zeros(x.shape[0], device=x.device, dtype=x.dtype) for name in
                    ("best_loss", "best_rate", "best_margin", "adv_rate", "adv_margin")})
        s = {"x": x, "y": y, "index": torch.arange(x.shape[0], device=x.device)}
        if self.norm == "Linf":
            s.update(low=x - self.eps, high=x + self.eps)
        if y_target is not None:
            s["y_target"] = y_target
        first = self.estimate(model, x_adv, s)
        s.update(x_adv=x_adv, previous=x_adv.clone(), grad=first.grad, grad_best=first.grad.clone(),
                 x_best=x_adv.clone(), loss_best=first.loss.clone(), best_rate=first.correct_rate.clone(),
                 best_margin=first.margin.clone(), least_correct=x_adv.clone(),
                 adv_rate=first.correct_rate.clone(), adv_margin=first.margin.clone(),
                 step_size=torch.full((x.shape[0], *[1] * (x.dim() - 1)), 2.0 * self.eps, device=x.device,
                                      dtype=x.dtype),
                 loss_steps=torch.zeros(x.shape[0], self.steps, device=x.device, dtype=x.dtype),
                 best_at_last_check=first.loss.clone(), reduced_at_last_check=torch.ones_like(first.loss))
        s = self._retire_misclassified(s, out)
        interval, decrease, minimum = checkpoint_lengths(self.steps)
        since_check = 0
        for i in range(self.steps):
            if s["x"].shape[0] == 0:
                break
            self._step(model, s, i)
            since_check += 1
            if since_check == interval:
                self._checkpoint(s, i, interval)
                interval, since_check = max(interval - decrease, minimum), 0
            s = self._retire_misclassified(s, out)
        self._write_out(s, out)
        return APGDRun(highest_loss=Candidate(out["highest_loss"], out["best_rate"], out["best_margin"]),
                       least_correct=Candidate(out["least_correct"], out["adv_rate"], out["adv_margin"]),
                       best_loss=out["best_loss"])

    def _step(self, model: nn.Module, s: dict[str, torch.Tensor], i: int) -> None:
        momentum = MOMENTUM if i > 0 else 1.0
        x_adv = momentum_step(s["x"], s["x_adv"], s["previous"], s["grad"], s["step_size"], self.eps, self.norm,
                              momentum, (s["low"], s["high"]) if self.norm == "Linf" else None)
        s["previous"], s["x_adv"] = s["x_adv"], x_adv
        now = self.estimate(model, x_adv, s)
        s["grad"] = now.grad
        # fewer correct copies, or as few and not all correct (the latest such iterate): rates lie in [0, 1]
        fewer = (now.correct_rate <= s["adv_rate"]) & (now.correct_rate < 1)
        per_example = (-1,) + (1,) * (x_adv.dim() - 1)  # selects whole examples (one op, no boolean indexing)
        s["least_correct"] = torch.where(fewer.view(per_example), x_adv, s["least_correct"])
        s["adv_rate"] = torch.where(fewer, now.correct_rate, s["adv_rate"])
        s["adv_margin"] = torch.where(fewer, now.margin, s["adv_margin"])
        s["loss_steps"][:, i] = now.loss
        higher = now.loss > s["loss_best"]
        s["x_best"] = torch.where(higher.view(per_example), x_adv, s["x_best"])
        s["grad_best"] = torch.where(higher.view(per_example), now.grad, s["grad_best"])
        for name, value in (("loss_best", now.loss), ("best_rate", now.correct_rate), ("best_margin", now.margin)):
            s[name] = torch.where(higher, value, s[name])

    def _checkpoint(self, s: dict[str, torch.Tensor], i: int, interval: int) -> None:
        """Halve the step and restart from the best point where the loss oscillated or stalled since last time."""
        history = s["loss_steps"]
        # pyautoattack reads one step before the first (index -1, i.e. a not yet written zero) at the first check
        increases = sum((history[:, i - c] > history[:, i - c - 1]).float() for c in range(interval))
        oscillating = (increases <= interval * self.rho).float()
        stalled = (1.0 - s["reduced_at_last_check"]) * (s["best_at_last_check"] >= s["loss_best"]).float()
        reduce = torch.max(oscillating, stalled)
        s["reduced_at_last_check"], s["best_at_last_check"] = reduce, s["loss_best"].clone()
        chosen = reduce > 0
        if chosen.any():
            s["step_size"][chosen] /= 2.0
            s["x_adv"] = s["x_adv"].clone()
            s["x_adv"][chosen] = s["x_best"][chosen]
            s["grad"][chosen] = s["grad_best"][chosen]

    def _retire_misclassified(self, s: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> dict:
        if not self.stop_when_misclassified:
            return s
        done = s["adv_rate"] == 0
        if not done.any():
            return s
        self._write_out({k: v[done] for k, v in s.items()}, out)
        keep = ~done
        return {k: v[keep] for k, v in s.items()}

    @staticmethod
    def _write_out(s: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
        index = s["index"]
        out["highest_loss"][index] = s["x_best"]
        out["least_correct"][index] = s["least_correct"]
        for name, source in (("best_loss", "loss_best"), ("best_rate", "best_rate"), ("best_margin", "best_margin"),
                             ("adv_rate", "adv_rate"), ("adv_margin", "adv_margin")):
            out[name][index] = s[source]
