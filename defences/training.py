"""The classifier training loop shared by clean training and PGD adversarial training.

Deterministic by seed (every epoch re-seeds from (seed, epoch)), resumable from its last finished epoch,
with a learning-rate schedule evaluated per iteration, standard augmentation for natural images, and a
collapse check: a run whose clean training accuracy ends near chance raises TrainingCollapsed instead of
silently producing a useless classifier. A step that runs out of GPU memory is retried from the same RNG state
and BatchNorm statistics with the batch split in micro-batches of half the size (the adversarial examples made
and the gradient accumulated micro-batch by micro-batch, so the effective batch is kept; BatchNorm then sees
micro-batches), down to 2 examples; the smaller size holds for the rest of the run, and the epochs' records
and the summary list the retries (`oom_retries`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from defences.base import FitContext
from defences.fitting import accuracy, batch_slices
from defences.memory import ShrinkingSize, Snapshot

SCHEDULES = ("piecewise", "onecycle", "cosine", "constant")
OPTIMISERS = ("sgd", "adam")
AUGMENTATIONS = ("auto", "none", "crop_flip")


class TrainingCollapsed(RuntimeError):
    """Training ended with clean accuracy near chance: the recipe diverged for this seed."""


@dataclass
class TrainingSettings:
    """Optimisation settings of a classifier training run (the defaults follow Rice et al. 2020 for CIFAR)."""

    epochs: int = 200
    batch_size: int = 128
    optimiser: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "piecewise"
    warmup_epochs: float = 0.0
    augment: str = "auto"
    collapse_factor: float = 1.5

    def validate(self) -> None:
        for name, value, valid in (("optimiser", self.optimiser, OPTIMISERS), ("schedule", self.schedule, SCHEDULES),
                                   ("augment", self.augment, AUGMENTATIONS)):
            if value not in valid:
                raise ValueError(f"{name}={value!r} is not valid; valid: {', '.join(valid)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")


def learning_rate(settings: TrainingSettings, progress: float) -> float:
    """LR at `progress` epochs (fractional) into training."""
    if settings.warmup_epochs > 0 and progress < settings.warmup_epochs:
        return settings.lr * progress / settings.warmup_epochs
    fraction = progress / settings.epochs
    if settings.schedule == "constant":
        return settings.lr
    if settings.schedule == "piecewise":
        return settings.lr * (0.1 if fraction >= 0.5 else 1.0) * (0.1 if fraction >= 0.75 else 1.0)
    if settings.schedule == "cosine":
        return 0.5 * settings.lr * (1 + math.cos(math.pi * min(fraction, 1.0)))
    # one-cycle: linear up to the peak at 40% of training, then linearly down to zero
    return settings.lr * (fraction / 0.4 if fraction < 0.4 else max(0.0, (1 - fraction) / 0.6))


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel reflection padding and random horizontal flip, per example."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)
    cols = torch.where(flip.to(x.device)[:, None], cols.flip(1), cols)
    batch_index = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def make_optimiser(model: nn.Module, settings: TrainingSettings) -> torch.optim.Optimizer:
    if settings.optimiser == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                               weight_decay=settings.weight_decay, nesterov=settings.momentum > 0)
    return torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


Perturber = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


def uses_augmentation(settings: TrainingSettings, images: torch.Tensor) -> bool:
    """crop_flip, or auto on natural images (three channels, at least 32 pixels wide)."""
    return settings.augment == "crop_flip" or (
        settings.augment == "auto" and images.shape[1] == 3 and images.shape[-1] >= 32)


def train_classifier(model: nn.Module, train: Any, settings: TrainingSettings, ctx: FitContext,
                     perturb: Perturber | None = None, label: str = "train") -> dict[str, Any]:
    """Train `model` on `train` (an ImageSplit); `perturb(model, x, y, epoch)` makes adversarial batches."""
    settings.validate()
    model.to(ctx.device)
    optimiser = make_optimiser(model, settings)
    images, labels = train.float_images(), train.labels
    history, start_epoch = ctx.resume(label, settings.epochs, model=model, optimiser=optimiser)
    progress = ctx.progress(label, settings.epochs, every_s=15.0, unit="epochs", done=start_epoch)
    started = time.monotonic()
    micro = ShrinkingSize("micro_batch", settings.batch_size, floor=2, log=ctx.log)
    for epoch in range(start_epoch, settings.epochs):
        record = train_epoch(model, optimiser, images, labels, settings, ctx, epoch, perturb, micro)
        history.append(record)
        ctx.save_epoch(label, epoch, history, model=model, optimiser=optimiser)
        progress.update(loss=record["loss"], acc=record["batch_accuracy"])
    clean_train_accuracy = accuracy(model, images, labels, ctx.device)
    check_collapse(clean_train_accuracy, labels, settings, label)
    retries = [r for h in history for r in h.get("oom_retries", [])]
    return {"epochs": settings.epochs, "history": history, "clean_train_accuracy": clean_train_accuracy,
            "train_seconds": time.monotonic() - started, "resumed_from_epoch": start_epoch,
            **({"oom_retries": retries} if retries else {})}


def train_epoch(model: nn.Module, optimiser: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
                settings: TrainingSettings, ctx: FitContext, epoch: int, perturb: Perturber | None,
                micro: ShrinkingSize | None = None) -> dict[str, Any]:
    """One epoch over a fresh permutation (seeded from the epoch); returns its mean loss and batch accuracy.
    A step out of GPU memory is retried with `micro` halved (see the module's docstring)."""
    micro = micro or ShrinkingSize("micro_batch", settings.batch_size, floor=2, log=ctx.log)
    first_retry = len(micro.retries)
    generator = ctx.seed_epoch(epoch)
    order = torch.randperm(len(labels), generator=generator)
    steps_per_epoch = math.ceil(len(labels) / settings.batch_size)
    augment = uses_augmentation(settings, images)
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for step in range(steps_per_epoch):
        index = order[step * settings.batch_size:(step + 1) * settings.batch_size]
        x, y = images[index], labels[index]
        if augment:
            x = augment_batch(x, generator)
        x, y = x.to(ctx.device), y.to(ctx.device)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(settings, epoch + step / steps_per_epoch)
        snapshot = Snapshot.take([model])
        logits, loss = micro.retry(functools.partial(training_step, model, optimiser, x, y, epoch, perturb),
                                   {"epoch": epoch, "step": step}, snapshot.restore)
        loss_sum += loss * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return {"epoch": epoch, "loss": loss_sum / seen, "batch_accuracy": correct / seen,
            **({"oom_retries": micro.retries[first_retry:]} if len(micro.retries) > first_retry else {})}


def training_step(model: nn.Module, optimiser: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, epoch: int,
                  perturb: Perturber | None, micro_batch: int) -> tuple[torch.Tensor, float]:
    """The batch's adversarial examples (with `perturb`, model in eval mode) and one optimisation step, both
    `micro_batch` examples at a time; returns the logits and the loss."""
    if perturb is not None:
        model.eval()
        x = torch.cat([perturb(model, x[rows], y[rows], epoch) for rows in batch_slices(len(y), micro_batch)])
        model.train()
    return optimisation_step(model, optimiser, x, y, micro_batch)


def optimisation_step(model: nn.Module, optimiser: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                      micro_batch: int | None = None) -> tuple[torch.Tensor, float]:
    """One cross-entropy step on (x, y), the gradient of the batch mean accumulated over micro-batches of
    `micro_batch` examples (None: the whole batch at once); returns the logits and the loss."""
    optimiser.zero_grad(set_to_none=True)
    logits, total = [], 0.0
    for rows in batch_slices(len(y), micro_batch or len(y)):
        out = model(x[rows])
        loss = F.cross_entropy(out, y[rows]) * ((rows.stop - rows.start) / len(y))
        loss.backward()
        logits.append(out.detach())
        total += loss.item()
    optimiser.step()
    return torch.cat(logits), total


def check_collapse(clean_train_accuracy: float, labels: torch.Tensor, settings: TrainingSettings,
                   label: str) -> None:
    """Raise TrainingCollapsed when the clean training accuracy is below `collapse_factor` x chance."""
    chance = 1.0 / (int(labels.max().item()) + 1)
    if clean_train_accuracy < settings.collapse_factor * chance:
        raise TrainingCollapsed(
            f"{label}: clean training accuracy {clean_train_accuracy:.3f} is below {settings.collapse_factor} x chance "
            f"({chance:.3f}) after {settings.epochs} epochs; lower the LR, add warm-up, or reduce eps")
