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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from attacks.gradient import FGSM
from bench.progress import Progress
from defences.atop.losses import (
    classification_loss,
    discriminator_loss,
    generator_adversarial_loss,
    l1_loss,
    mae_loss,
)
from defences.base import FitContext

if TYPE_CHECKING:
    from defences.atop.model import AToP

PHASES = ("pretrain", "finetune")


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Eval mode and no weight gradients for `module` inside the block; both restored afterwards."""
    flags = [p.requires_grad for p in module.parameters()]
    was_training = module.training
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(module.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)
        module.train(was_training)


def adam(parameters: Any, lr: float, defence: AToP) -> torch.optim.Adam:
    return torch.optim.Adam(parameters, lr=lr, betas=(defence.params.adam_beta1, defence.params.adam_beta2))


def org_loss(defence: AToP, purified: torch.Tensor, target: torch.Tensor, regenerated: torch.Tensor,
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


def train_purifier(defence: AToP, train: Any, ctx: FitContext, phase: str) -> dict[str, Any]:
    """Run one phase ("pretrain" or "finetune") on `train` (an ImageSplit); returns its summary."""
    if phase not in PHASES:
        raise ValueError(f"phase={phase!r} is not valid; valid: {', '.join(PHASES)}")
    params, device = defence.params, ctx.device
    finetuning = phase == "finetune"
    epochs = params.finetune_epochs if finetuning else params.pretrain_epochs
    batch_size = params.finetune_batch_size if finetuning else params.pretrain_batch_size
    lr = params.finetune_lr if finetuning else params.lr
    label = f"atop-{phase}"
    purifier, discriminator, classifier = defence.purifier, defence.discriminator, defence.classifier
    optimiser = adam(purifier.parameters(), lr, defence)
    d_optimiser = adam(discriminator.parameters(), params.discriminator_lr, defence) if discriminator else None
    fgsm = FGSM(eps=params.finetune_eps, norm=params.finetune_norm) if finetuning else None

    images, labels = train.float_images(), train.labels
    steps = (len(labels) + batch_size - 1) // batch_size
    history: list[dict[str, float]] = []
    start_epoch = 0
    if (saved := ctx.load_checkpoint(label)) is not None:
        purifier.load_state_dict(saved["purifier"])
        optimiser.load_state_dict(saved["optimiser"])
        if discriminator is not None:
            discriminator.load_state_dict(saved["discriminator"])
            d_optimiser.load_state_dict(saved["d_optimiser"])
        history, start_epoch = list(saved["history"]), int(saved["epoch"]) + 1
        ctx.log.info("%s: resuming after epoch %d of %d", label, start_epoch, epochs)
    progress = Progress(label, epochs, ctx.log, every_s=15.0, unit="epochs")
    progress.done = start_epoch
    started = time.monotonic()
    with frozen(classifier):
        for epoch in range(start_epoch, epochs):
            generator = ctx.seed_epoch(epoch, label)
            order = torch.randperm(len(labels), generator=generator)
            purifier.train()
            if discriminator is not None:
                discriminator.train()
            totals: dict[str, float] = {}
            seen = 0
            for step in range(steps):
                index = order[step * batch_size:(step + 1) * batch_size]
                x, y = images[index].to(device), labels[index].to(device)
                terms = train_step(defence, x, y, fgsm, optimiser, d_optimiser)
                for name, value in terms.items():
                    totals[name] = totals.get(name, 0.0) + value * len(y)
                seen += len(y)
            record = {"epoch": epoch, **{name: value / seen for name, value in totals.items()}}
            history.append(record)
            state = {"epoch": epoch, "purifier": purifier.state_dict(), "optimiser": optimiser.state_dict(),
                     "history": history}
            if discriminator is not None:
                state |= {"discriminator": discriminator.state_dict(), "d_optimiser": d_optimiser.state_dict()}
            ctx.save_checkpoint(state, phase=label)
            progress.update(**{k: v for k, v in record.items() if k != "epoch"})
    purifier.eval()
    if discriminator is not None:
        discriminator.eval()
    return {"epochs": epochs, "batch_size": batch_size, "lr": lr, "history": history,
            "seconds": time.monotonic() - started, "resumed_from_epoch": start_epoch}


def train_step(defence: AToP, x: torch.Tensor, y: torch.Tensor, fgsm: FGSM | None, optimiser: torch.optim.Optimizer,
               d_optimiser: torch.optim.Optimizer | None) -> dict[str, float]:
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


@torch.no_grad()
def purified_accuracy(defence: AToP, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                      batch_size: int = 256) -> float:
    """Accuracy of f(g(t(x))) with one random transform per image (a quick fitting diagnostic)."""
    defence.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        x = images[start:start + batch_size].to(device)
        correct += (defence(x).argmax(1).cpu() == labels[start:start + batch_size]).sum().item()
    return correct / max(len(labels), 1)
