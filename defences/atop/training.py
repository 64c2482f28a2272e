"""Training AToP's purifier: pre-training with L_org, then fine-tuning per Algorithm 1 (the AToP paper §3.2).

Both phases share one loop. Per batch: (fine-tuning only) x' = FGSM(eps) against the frozen classifier;
x_hat = g(t(x')) with fresh random transforms; for the GAN purifier one discriminator step on
(real = target, fake = x_hat), then one purifier step on L_org = gan_weight * L_adv + l1_weight * L1 (AE:
L_org = MAE loss), plus lambda * CE(f(x_hat), y) when fine-tuning. The classifier is frozen throughout
(eval mode, no gradient to its weights). Each phase re-seeds per epoch and saves a checkpoint per epoch
under its own phase name ("atop-pretrain", "atop-finetune"), so a killed run resumes where it stopped.

A step that runs out of GPU memory is retried with the batch in micro-batches of half the size
(`micro_batched_step`, gradients accumulated: the effective batch is kept), from the RNG states, buffers
(spectral-norm vectors) and discriminator weights and optimiser state of before the failed try; the smaller size
holds for the rest of the phase, and the epochs' records and the summary list the retries (`oom_retries`).
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from attacks.gradient import FGSM
from defences.atop.losses import (
    classification_loss,
    discriminator_loss,
    generator_adversarial_loss,
    l1_loss,
    mae_loss,
)
from defences.atop.params import AToPParams
from defences.base import FitContext
from defences.fitting import batch_slices, frozen
from defences.memory import ShrinkingSize, Snapshot

PHASES = ("pretrain", "finetune")


class PurifyingDefence(Protocol):
    """What the loop needs of the AToP defence it trains (defences/atop/model.py: AToP)."""

    params: AToPParams
    classifier: nn.Module
    purifier: nn.Module
    discriminator: nn.Module | None

    def purify_with_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class Phase:
    """One training phase's settings: its checkpoint label, epochs, batch size, LR and (fine-tuning) FGSM."""

    label: str
    epochs: int
    batch_size: int
    lr: float
    fgsm: FGSM | None

    @classmethod
    def of(cls, params: AToPParams, phase: str) -> Phase:
        if phase not in PHASES:
            raise ValueError(f"phase={phase!r} is not valid; valid: {', '.join(PHASES)}")
        if phase == "finetune":
            return cls(f"atop-{phase}", params.finetune_epochs, params.finetune_batch_size, params.finetune_lr,
                       FGSM(eps=params.finetune_eps, norm=params.finetune_norm))
        return cls(f"atop-{phase}", params.pretrain_epochs, params.pretrain_batch_size, params.lr, None)


def adam(parameters: Any, lr: float, defence: PurifyingDefence) -> torch.optim.Adam:
    return torch.optim.Adam(parameters, lr=lr, betas=(defence.params.adam_beta1, defence.params.adam_beta2))


def org_loss(defence: PurifyingDefence, purified: torch.Tensor, target: torch.Tensor, regenerated: torch.Tensor,
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """The purifier's L_org (its generator side for the GAN) and its terms as numbers."""
    params = defence.params
    if defence.discriminator is None:
        loss = mae_loss(purified, target, regenerated, params.mae_visible_weight)
        return loss, {"mae": loss.item()}
    adversarial = generator_adversarial_loss(defence.discriminator(purified), params.gan_loss)
    reconstruction = l1_loss(purified, target)
    loss = params.gan_weight * adversarial + params.l1_weight * reconstruction
    return loss, {"g_adv": adversarial.item(), "l1": reconstruction.item()}


def trainable_state(defence: PurifyingDefence, lr: float) -> dict[str, Any]:
    """The purifier and its optimiser, and for the GAN the discriminator and its optimiser (checkpoint names)."""
    state: dict[str, Any] = {"purifier": defence.purifier,
                             "optimiser": adam(defence.purifier.parameters(), lr, defence)}
    if defence.discriminator is not None:
        state |= {"discriminator": defence.discriminator,
                  "d_optimiser": adam(defence.discriminator.parameters(), defence.params.discriminator_lr, defence)}
    return state


def train_purifier(defence: PurifyingDefence, train: Any, ctx: FitContext, phase: str) -> dict[str, Any]:
    """Run one phase ("pretrain" or "finetune") on `train` (an ImageSplit); returns its summary."""
    settings = Phase.of(defence.params, phase)
    state = trainable_state(defence, settings.lr)
    history, start_epoch = ctx.resume(settings.label, settings.epochs, **state)
    progress = ctx.progress(settings.label, settings.epochs, every_s=15.0, unit="epochs", done=start_epoch)
    images, labels = train.float_images(), train.labels
    started = time.monotonic()
    micro = ShrinkingSize("micro_batch", settings.batch_size, log=ctx.log)
    with frozen(defence.classifier):
        for epoch in range(start_epoch, settings.epochs):
            record = train_epoch(defence, images, labels, ctx, epoch, settings, state["optimiser"],
                                 state.get("d_optimiser"), micro)
            history.append(record)
            ctx.save_epoch(settings.label, epoch, history, **state)
            progress.update(**{k: v for k, v in record.items() if k != "epoch"})
    defence.purifier.eval()
    if defence.discriminator is not None:
        defence.discriminator.eval()
    retries = [r for h in history for r in h.get("oom_retries", [])]
    return {"epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr, "history": history,
            "seconds": time.monotonic() - started, "resumed_from_epoch": start_epoch,
            **({"oom_retries": retries} if retries else {})}


def train_epoch(defence: PurifyingDefence, images: torch.Tensor, labels: torch.Tensor, ctx: FitContext, epoch: int,
                settings: Phase, optimiser: torch.optim.Optimizer, d_optimiser: torch.optim.Optimizer | None,
                micro: ShrinkingSize | None = None) -> dict[str, Any]:
    """One epoch over a fresh permutation (seeded from the phase and epoch); returns the mean loss terms. A step
    out of GPU memory is retried with `micro` halved (see the module's docstring)."""
    micro = micro or ShrinkingSize("micro_batch", settings.batch_size, log=ctx.log)
    first_retry = len(micro.retries)
    generator = ctx.seed_epoch(epoch, settings.label)
    order = torch.randperm(len(labels), generator=generator)
    defence.purifier.train()
    if defence.discriminator is not None:
        defence.discriminator.train()
    totals: dict[str, float] = {}
    seen = 0
    for start in range(0, len(labels), settings.batch_size):
        index = order[start:start + settings.batch_size]
        x, y = images[index].to(ctx.device), labels[index].to(ctx.device)
        restore = before_step(defence, d_optimiser)
        step = functools.partial(step_in_micro_batches, defence, x, y, settings.fgsm, optimiser, d_optimiser)
        terms = micro.retry(step, {"epoch": epoch, "batch": start // settings.batch_size}, restore)
        for name, value in terms.items():
            totals[name] = totals.get(name, 0.0) + value * len(y)
        seen += len(y)
    return {"epoch": epoch, **{name: value / seen for name, value in totals.items()},
            **({"oom_retries": micro.retries[first_retry:]} if len(micro.retries) > first_retry else {})}


def before_step(defence: PurifyingDefence, d_optimiser: torch.optim.Optimizer | None) -> Any:
    """A function that puts back what a failed step may have changed: the RNG states, the purifier's and the
    discriminator's buffers, and the discriminator's weights and optimiser state (its step comes first)."""
    modules = [defence.purifier] + ([defence.discriminator] if defence.discriminator is not None else [])
    snapshot = Snapshot.take(modules)
    saved = None
    if defence.discriminator is not None and d_optimiser is not None:
        saved = copy.deepcopy((defence.discriminator.state_dict(), d_optimiser.state_dict()))

    def restore() -> None:
        snapshot.restore()
        if saved is not None:
            defence.discriminator.load_state_dict(saved[0])
            d_optimiser.load_state_dict(saved[1])

    return restore


def step_in_micro_batches(defence: PurifyingDefence, x: torch.Tensor, y: torch.Tensor, fgsm: FGSM | None,
                          optimiser: torch.optim.Optimizer, d_optimiser: torch.optim.Optimizer | None,
                          micro_batch: int) -> dict[str, float]:
    """train_step on the whole batch, or micro_batched_step when `micro_batch` is smaller than the batch."""
    if micro_batch >= len(y):
        return train_step(defence, x, y, fgsm, optimiser, d_optimiser)
    return micro_batched_step(defence, x, y, fgsm, optimiser, d_optimiser, micro_batch)


def micro_batched_step(defence: PurifyingDefence, x: torch.Tensor, y: torch.Tensor, fgsm: FGSM | None,
                       optimiser: torch.optim.Optimizer, d_optimiser: torch.optim.Optimizer | None,
                       micro_batch: int) -> dict[str, float]:
    """train_step with the batch in micro-batches, each loss weighted by its share of the batch. The GAN's
    discriminator step comes first, on every micro-batch's purified images (purified without a graph); each
    micro-batch is then purified again from the RNG state it started from (the same random transforms) for
    the purifier's step against the updated discriminator."""
    params, parts = defence.params, batch_slices(len(y), micro_batch)
    inputs = []
    for rows in parts:
        x_in = fgsm(defence.classifier, x[rows], y[rows]) if fgsm is not None else x[rows]
        target = x_in if fgsm is not None and params.finetune_target == "adversarial" else x[rows]
        inputs.append((rows, x_in, target))
    terms: dict[str, float] = {}
    states = []  # the RNG state each micro-batch's purification starts from
    if defence.discriminator is not None:
        d_optimiser.zero_grad(set_to_none=True)
        for rows, x_in, target in inputs:
            states.append(Snapshot.take([]))
            with torch.no_grad():
                purified, _ = defence.purify_with_mask(x_in)
            d_loss = discriminator_loss(defence.discriminator(target), defence.discriminator(purified),
                                        params.gan_loss) * ((rows.stop - rows.start) / len(y))
            d_loss.backward()
            terms["d_loss"] = terms.get("d_loss", 0.0) + d_loss.item()
        d_optimiser.step()
    optimiser.zero_grad(set_to_none=True)
    for i, (rows, x_in, target) in enumerate(inputs):
        if states:
            states[i].restore()
        weight = (rows.stop - rows.start) / len(y)
        purified, regenerated = defence.purify_with_mask(x_in)
        loss, part = purifier_loss(defence, purified, regenerated, target, y[rows], fgsm is not None)
        (loss * weight).backward()
        for name, value in part.items():
            terms[name] = terms.get(name, 0.0) + value * weight
    optimiser.step()
    return terms


def train_step(defence: PurifyingDefence, x: torch.Tensor, y: torch.Tensor, fgsm: FGSM | None,
               optimiser: torch.optim.Optimizer, d_optimiser: torch.optim.Optimizer | None) -> dict[str, float]:
    """One discriminator step (GAN only) and one purifier step; returns the loss terms of the batch."""
    params = defence.params
    terms: dict[str, float] = {}
    if fgsm is not None:
        x_in = fgsm(defence.classifier, x, y)
        target = x_in if params.finetune_target == "adversarial" else x
    else:
        x_in = target = x
    purified, regenerated = defence.purify_with_mask(x_in)
    if defence.discriminator is not None:
        d_loss = discriminator_loss(defence.discriminator(target), defence.discriminator(purified.detach()),
                                    params.gan_loss)
        d_optimiser.zero_grad(set_to_none=True)
        d_loss.backward()
        d_optimiser.step()
        terms["d_loss"] = d_loss.item()
    loss, purifier_terms = purifier_loss(defence, purified, regenerated, target, y, fgsm is not None)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return terms | purifier_terms


def purifier_loss(defence: PurifyingDefence, purified: torch.Tensor, regenerated: torch.Tensor,
                  target: torch.Tensor, y: torch.Tensor, fine_tuning: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """The purifier's loss, L_org plus (fine-tuning) lambda * CE(f(x_hat), y), and its terms as numbers."""
    loss, terms = org_loss(defence, purified, target, regenerated)
    if fine_tuning:
        logits = defence.classifier(purified)
        cls = classification_loss(logits, y)
        loss = loss + defence.params.cls_weight * cls
        terms |= {"ce": cls.item(), "purified_adv_acc": (logits.argmax(1) == y).float().mean().item()}
    return loss, terms | {"loss": loss.item()}
