"""Training AToP's purifier: pre-training with L_org, then fine-tuning per Algorithm 1 (the AToP paper §3.2).

Both phases share one loop. Per batch: (fine-tuning only) x' = FGSM(eps) against the frozen classifier;
x_hat = g(t(x')) with fresh random transforms; for the GAN purifier one discriminator step on
(real = target, fake = x_hat), then one purifier step on L_org = gan_weight * L_adv + l1_weight * L1 (AE:
L_org = MAE loss), plus lambda * CE(f(x_hat), y) when fine-tuning. The classifier is frozen throughout
(eval mode, no gradient to its weights). Each phase re-seeds per epoch and saves a checkpoint per epoch
under its own phase name ("atop-pretrain", "atop-finetune"), so a killed run resumes where it stopped.
"""

from __future__ import annotations

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
from defences.fitting import frozen

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
    with frozen(defence.classifier):
        for epoch in range(start_epoch, settings.epochs):
            record = train_epoch(defence, images, labels, ctx, epoch, settings, state["optimiser"],
                                 state.get("d_optimiser"))
            history.append(record)
            ctx.save_epoch(settings.label, epoch, history, **state)
            progress.update(**{k: v for k, v in record.items() if k != "epoch"})
    defence.purifier.eval()
    if defence.discriminator is not None:
        defence.discriminator.eval()
    return {"epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr, "history": history,
            "seconds": time.monotonic() - started, "resumed_from_epoch": start_epoch}


def train_epoch(defence: PurifyingDefence, images: torch.Tensor, labels: torch.Tensor, ctx: FitContext, epoch: int,
                settings: Phase, optimiser: torch.optim.Optimizer,
                d_optimiser: torch.optim.Optimizer | None) -> dict[str, float]:
    """One epoch over a fresh permutation (seeded from the phase and epoch); returns the mean loss terms."""
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
        terms = train_step(defence, x, y, settings.fgsm, optimiser, d_optimiser)
        for name, value in terms.items():
            totals[name] = totals.get(name, 0.0) + value * len(y)
        seen += len(y)
    return {"epoch": epoch, **{name: value / seen for name, value in totals.items()}}


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
    loss, org_terms = org_loss(defence, purified, target, regenerated)
    terms |= org_terms
    if fgsm is not None:
        logits = defence.classifier(purified)
        cls = classification_loss(logits, y)
        loss = loss + params.cls_weight * cls
        terms |= {"ce": cls.item(), "purified_adv_acc": (logits.argmax(1) == y).float().mean().item()}
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    terms["loss"] = loss.item()
    return terms
