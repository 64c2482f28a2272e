"""APGD (Croce & Hein 2020) with batched EOT: the gradient engine of `aa`, `randaa`, `apgd_ce` and `apgd_dlr`.

The algorithm is the paper's (and pyautoattack's `APGDAttack.attack_single_run`, iterate for iterate on a
deterministic model with the same seed): a random start in the eps-ball, a first step of size 2 * eps, momentum
0.75 after it, and at the checkpoints p_j (the first after 22% of the steps, then each interval 3% shorter, down to
6%) the step size of an example is halved, and it restarts from its highest-loss point, when fewer than `rho` of the
steps since the last checkpoint increased its loss, or when its step size was not halved last time and its best
loss did not improve since. Norms Linf, L2 and L1; losses `ce`, `dlr` (untargeted) and `dlr-targeted` (the targeted
DLR of APGD-T, with `y_target`).

L1 is l1-APGD (Croce & Hein 2021, "Mind the box"; pyautoattack's `norm='L1'`): a Gaussian start projected onto the
L1 ball intersected with the [0, 1] box, and a sparse step without momentum: the sign of the gradient on the
coordinates of largest |gradient| (a fraction `topk` of them, 20% at first), scaled to L1 size `step_size`
(eps at first), then the exact projection onto the ball intersected with the box (attacks.l1). Every 4% of the
steps the sparsity adapts: `topk` becomes the support of the highest-loss point over 1.5 (a fraction of the
coordinates), and where that support shrank by more than 5% since the last check the step size returns to eps
and the example restarts from its highest-loss point; elsewhere the step size shrinks by 1.5 (not below eps / 10).
`l1_schedule` is AutoAttack's L1 schedule (`use_largereps`): the steps split 30/30/40% over radii 3 eps, 2 eps
and eps, each stage starting from the previous stage's highest-loss point projected into its ball; the candidates
are the last stage's.

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

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attacks.eot import default_max_batch, eot_passes
from attacks.l1 import project_l1

APGD_LOSSES = ("ce", "dlr", "dlr-targeted")
MOMENTUM = 0.75
FIRST_CHECKPOINT, CHECKPOINT_DECREASE, MIN_CHECKPOINT = 0.22, 0.03, 0.06
APGD_NORMS = ("Linf", "L2", "L1")
# l1-APGD: checkpoints every 4% of the steps, a first sparsity of 20%, a support shrinking by 5% counts as sparser,
# the new sparsity is the support / 1.5, the step size shrinks by 1.5 down to eps / 10
L1_CHECKPOINT, L1_FIRST_TOPK, L1_SPARSER = 0.04, 0.2, 0.95
L1_TOPK_DIVISOR, L1_STEP_DIVISOR, L1_MIN_STEP = 1.5, 1.5, 10.0
L1_SCHEDULE = ((3.0, 0.3), (2.0, 0.3), (1.0, 0.4))  # (radius / eps, share of the steps) of AutoAttack's L1 stages
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


def l1_checkpoint_interval(steps: int) -> int:
    return max(int(L1_CHECKPOINT * steps), 1)


def l1_schedule_steps(steps: int) -> list[int]:
    """The steps of each stage of the L1 schedule: 30% and 30% rounded up, the rest for the last."""
    first = [math.ceil(share * steps) for _, share in L1_SCHEDULE[:-1]]
    return [*first, steps - sum(first)]


def _flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.flatten(1)
    size = flat.abs().amax(1) if norm == "Linf" else (flat**2).sum(-1).sqrt()
    return size.view(-1, *([1] * (t.dim() - 1)))


def _normalise(t: torch.Tensor, norm: str) -> torch.Tensor:
    return t / (_flat_norm(t, norm) + 1e-12)


def random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """APGD's start: uniform in the Linf ball scaled to its surface, a Gaussian direction at L2 radius eps, or (L1)
    x plus Gaussian noise projected onto the L1 ball intersected with the box.

    Drawn on the CPU and moved, as pyautoattack does, so that a seed gives the same start on every device.
    """
    noise = 2 * torch.rand(x.shape) - 1 if norm == "Linf" else torch.randn(x.shape)
    if norm == "L1":
        return project_l1(x + noise.to(x.device, x.dtype), x, eps)
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


def support_size(delta: torch.Tensor) -> torch.Tensor:
    """The number of non-zero coordinates of each example's perturbation (its L0 size)."""
    return (delta != 0).flatten(1).sum(1)


def sparse_step(x: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor, step_size: torch.Tensor,
                topk: torch.Tensor, eps: float) -> torch.Tensor:
    """l1-APGD's step: sign(grad) on the coordinates whose |grad| reaches the (1 - topk) quantile of the example's
    |grad|, scaled to L1 size `step_size`, then projected onto the L1 ball intersected with the box."""
    size = grad.abs().flatten(1)
    features = size.shape[1]
    rank = ((1.0 - topk) * features).clamp(0, features - 1).long()
    threshold = size.sort(1).values.gather(1, rank[:, None]).view(-1, *[1] * (x.dim() - 1))
    signs = torch.sign(grad) * (grad.abs() >= threshold)
    return project_l1(x_adv + step_size * signs / (signs.abs().flatten(1).sum(1).view_as(threshold) + 1e-10), x, eps)


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
    l1_schedule: bool = False

    def __post_init__(self) -> None:
        if self.norm not in APGD_NORMS:
            raise ValueError(f"APGD norm={self.norm!r} is not valid; valid: {', '.join(APGD_NORMS)}")
        if self.l1_schedule and (self.norm != "L1" or self.steps < len(L1_SCHEDULE)):
            raise ValueError(f"APGD l1_schedule needs norm L1 and steps >= {len(L1_SCHEDULE)} (one per stage), got "
                             f"norm={self.norm!r}, steps={self.steps}")
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
        if self.l1_schedule:
            return self._run_l1_schedule(model, x, y, y_target)
        return self.run_from(model, x, y, random_start(x, self.eps, self.norm), y_target, given_start=False)

    def _run_l1_schedule(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         y_target: torch.Tensor | None) -> APGDRun:
        """AutoAttack's L1 schedule: stages of radius 3, 2 and 1 eps, each from the last one's highest-loss point."""
        point = x + torch.randn(x.shape).to(x.device, x.dtype)
        point = project_l1(point, x, L1_SCHEDULE[0][0] * self.eps)
        for (factor, _), steps in zip(L1_SCHEDULE, l1_schedule_steps(self.steps), strict=True):
            last = factor == L1_SCHEDULE[-1][0]
            stage = dataclasses.replace(self, eps=factor * self.eps, steps=steps, l1_schedule=False,
                                        stop_when_misclassified=self.stop_when_misclassified and last)
            run = stage.run_from(model, x, y, project_l1(point, x, stage.eps), y_target, given_start=True)
            point = run.highest_loss.x
        return run

    def run_from(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
                 y_target: torch.Tensor | None = None, given_start: bool = True) -> APGDRun:
        """Attack (x, y) from `x_adv`, a point of the threat model (`given_start`: not APGD's own random start,
        which under L1 sets the first sparsity from the start's support instead of 20%)."""
        x, x_adv = x.detach(), x_adv.detach().clamp(0.0, 1.0)
        out = {"highest_loss": x_adv.clone(), "least_correct": x_adv.clone()}
        out.update({name: torch.zeros(x.shape[0], device=x.device, dtype=x.dtype) for name in
                    ("best_loss", "best_rate", "best_margin", "adv_rate", "adv_margin")})
        s = self._initial_state(model, x, y, x_adv, y_target, given_start)
        s = self._retire_misclassified(s, out)
        if self.norm == "L1":
            interval = decrease = minimum = l1_checkpoint_interval(self.steps)
        else:
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

    def _initial_state(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
                       y_target: torch.Tensor | None, given_start: bool) -> dict[str, torch.Tensor]:
        """Every per-example quantity of a run at its start (a dict, so that finished examples can be dropped)."""
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
                 step_size=torch.full((x.shape[0], *[1] * (x.dim() - 1)), (1.0 if self.norm == "L1" else 2.0)
                                      * self.eps, device=x.device, dtype=x.dtype),
                 loss_steps=torch.zeros(x.shape[0], self.steps, device=x.device, dtype=x.dtype),
                 best_at_last_check=first.loss.clone(), reduced_at_last_check=torch.ones_like(first.loss))
        if self.norm == "L1":  # the sparsity (a fraction of the coordinates; float32 as in pyautoattack)
            features = x[0].numel()
            if given_start:
                support = support_size(x_adv - x)
                s.update(topk=support / features / L1_TOPK_DIVISOR, support_at_last_check=support.float())
            else:
                s.update(topk=torch.full((x.shape[0],), L1_FIRST_TOPK, device=x.device),
                         support_at_last_check=torch.full((x.shape[0],), float(features), device=x.device))
        return s

    def _step(self, model: nn.Module, s: dict[str, torch.Tensor], i: int) -> None:
        if self.norm == "L1":
            x_adv = sparse_step(s["x"], s["x_adv"], s["grad"], s["step_size"], s["topk"], self.eps)
        else:
            momentum = MOMENTUM if i > 0 else 1.0
            x_adv = momentum_step(s["x"], s["x_adv"], s["previous"], s["grad"], s["step_size"], self.eps,
                                  self.norm, momentum, (s["low"], s["high"]) if self.norm == "Linf" else None)
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
        if self.norm == "L1":
            self._l1_checkpoint(s)
            return
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

    def _l1_checkpoint(self, s: dict[str, torch.Tensor]) -> None:
        """Adapt the sparsity to the best point's support; where it got sparser, restart there at full step size."""
        support = support_size(s["x_best"] - s["x"])
        sparser = support / s["support_at_last_check"] < L1_SPARSER
        s["topk"] = support / s["x"][0].numel() / L1_TOPK_DIVISOR
        per_example = sparser.view(-1, *[1] * (s["x"].dim() - 1))
        s["step_size"] = torch.where(per_example, self.eps, s["step_size"] / L1_STEP_DIVISOR).clamp(
            self.eps / L1_MIN_STEP, self.eps)
        s["support_at_last_check"] = support.float()
        if sparser.any():
            s["x_adv"] = torch.where(per_example, s["x_best"], s["x_adv"])
            s["grad"] = torch.where(per_example, s["grad_best"], s["grad"])

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
