"""Training CARSO's purifier with the classifier frozen (the CARSO paper §4.4, §5.1, Tables 12 and 14).

- Adversarially-balanced batches: each shuffled batch has fraction * B (rounded half up) perturbed examples, split
  evenly between FGSM eps/2, PGD eps/2, FGSM eps and PGD eps (the remainder of the division by four goes
  one each to the kinds in that order), all untargeted on cross-entropy against the classifier alone, in
  pixel space. The target of the reconstruction is always the clean image; the input encoder sees the
  (possibly perturbed) image the classifier saw, as in a denoising VAE.
- Loss: pixel- and channel-wise binary cross-entropy summed per example, plus beta * KL(q(z|x,c) || N(0,I))
  summed per example, averaged over the batch. beta is 0 before `kl_start_epoch`, rises linearly to
  `kl_weight` at `kl_end_epoch` (epochs counted from 0).
- RAdam inside Lookahead (the slow weights are kept at the end). The LR is set once per epoch: linear
  warm-up from `initial_lr` to `plateau_lr` over `warmup_epochs`, a plateau of `plateau_epochs`, then a
  linear anneal to `final_lr` over `anneal_epochs` (where the run ends before the anneal does, as in
  Table 14's scenario (b), the LR stops part-way).
- `micro_batch` splits each batch into chunks whose gradients are accumulated (the paper trained on 8 GPUs;
  on one, batch 5120 of WRN-28-10 representations does not fit); BatchNorm then sees micro-batches, as it
  saw per-GPU batches there. The perturbed rows are shuffled into the batch first, so every micro-batch mixes
  clean and perturbed examples.
- Out of GPU memory in a step, the step is retried with `micro_batch` halved (None counts as the largest batch;
  floor 2, as BatchNorm needs two examples) from the same RNG states and BatchNorm statistics
  (defences.memory), keeping the effective batch, so the retried step is the one an unretried run with the
  smaller micro-batch takes; the smaller size holds for the rest of the run, and each epoch's record lists
  its retries (`oom_retries`, also in the summary).
- Resumable: every epoch saves the purifier, the optimiser and the history through FitContext, and every
  epoch re-seeds all RNGs from (seed, epoch), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from attacks.gradient import FGSM, PGD
from defences.base import FitContext, Task
from defences.carso.lookahead import Lookahead
from defences.carso.params import CarsoParams
from defences.carso.purifier import Purifier
from defences.carso.representation import capture
from defences.fitting import batch_slices, frozen
from defences.memory import ShrinkingSize, Snapshot

if TYPE_CHECKING:
    from attacks.progress import Progress

# (attack, fraction of eps) in the order of §4.4; kind 0 is "clean"
ATTACK_KINDS = (("fgsm", 0.5), ("pgd", 0.5), ("fgsm", 1.0), ("pgd", 1.0))
PHASE = "carso"


def balanced_counts(batch_size: int, fraction: float) -> list[int]:
    """Examples per attack kind (in ATTACK_KINDS order) for a batch of `batch_size`."""
    total = math.floor(fraction * batch_size + 0.5)  # round half up (Python's round() goes to even)
    base, remainder = divmod(total, len(ATTACK_KINDS))
    return [base + (1 if kind < remainder else 0) for kind in range(len(ATTACK_KINDS))]


def training_budget(params: CarsoParams, task: Task) -> float:
    """The full training eps in pixel space (see params.py for the two conventions)."""
    eps = params.train_eps if params.train_eps is not None else task.eps
    if params.training_budget == "public_code":
        eps = eps / (sum(task.std) / len(task.std))
    return eps


def balanced_batch(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, counts: Sequence[int], eps: float,
                   params: CarsoParams, norm: str = "Linf",
                   micro_batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, kinds): the first sum(counts) examples perturbed by kind, the rest clean (kind 0).

    The batch comes shuffled, so its first examples are a random subset. Attacks run on at most `micro_batch`
    (default `params.micro_batch`) examples at a time.
    """
    inputs, kinds = x.clone(), torch.zeros(len(x), dtype=torch.long, device=x.device)
    chunk = micro_batch or params.micro_batch or len(x)
    start = 0
    for kind, ((name, scale), count) in enumerate(zip(ATTACK_KINDS, counts, strict=True), start=1):
        budget = eps * scale
        if name == "fgsm":
            attack = FGSM(eps=budget, norm=norm)
        else:
            attack = PGD(eps=budget, norm=norm, steps=params.pgd_steps, step_size=params.pgd_step_size,
                         random_start=params.pgd_random_start, keep_best=False)
        for lo in range(start, start + count, chunk):
            rows = slice(lo, min(lo + chunk, start + count))
            inputs[rows] = attack(classifier, x[rows], y[rows])
        kinds[start:start + count] = kind
        start += count
    return inputs, kinds


def purifier_step(purifier: Purifier, classifier: nn.Module, layers: list[str], inputs: torch.Tensor,
                  target: torch.Tensor, beta: float, micro_batch: int | None) -> dict[str, float]:
    """Accumulate the gradient of the batch's VAE loss, `micro_batch` examples at a time (batch means)."""
    batch = len(target)
    totals = {"loss": 0.0, "bce": 0.0, "kl": 0.0}
    purifier.train()
    for rows in batch_slices(batch, micro_batch or batch):
        with torch.no_grad():
            representation, _ = capture(classifier, inputs[rows], layers)
        logits, mu, logvar = purifier(inputs[rows], representation)
        weight = (rows.stop - rows.start) / batch
        loss, bce, kl = vae_loss(logits, target[rows], mu, logvar, beta)
        (loss * weight).backward()
        for name, value in (("loss", loss), ("bce", bce), ("kl", kl)):
            totals[name] += value.item() * weight
    return totals


def learning_rate(params: CarsoParams, epoch: int) -> float:
    """The LR of epoch `epoch` (0-based): warm-up, plateau, linear anneal."""
    if epoch < params.warmup_epochs:
        return params.initial_lr + (params.plateau_lr - params.initial_lr) * epoch / params.warmup_epochs
    into_anneal = epoch - params.warmup_epochs - params.plateau_epochs
    if into_anneal <= 0:
        return params.plateau_lr
    progress = min(1.0, into_anneal / max(params.anneal_epochs, 1))
    return params.plateau_lr + (params.final_lr - params.plateau_lr) * progress


def kl_beta(params: CarsoParams, epoch: int) -> float:
    """Weight of the KL term at epoch `epoch` (0-based)."""
    if epoch >= params.kl_end_epoch:
        return params.kl_weight
    if epoch <= params.kl_start_epoch:
        return 0.0
    return params.kl_weight * (epoch - params.kl_start_epoch) / (params.kl_end_epoch - params.kl_start_epoch)


def posterior_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per example KL(N(mu, exp(logvar)) || N(0, I)), summed over the latent dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def vae_loss(logits: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, bce, kl), each a per-example sum averaged over the batch; logits are pre-sigmoid."""
    batch = target.shape[0]
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / batch
    kl = posterior_kl(mu, logvar).sum() / batch
    return bce + beta * kl, bce, kl


def make_optimiser(purifier: Purifier, params: CarsoParams) -> Lookahead:
    inner = torch.optim.RAdam(purifier.parameters(), lr=params.initial_lr, betas=tuple(params.radam_betas),
                              eps=params.radam_eps, weight_decay=0.0)
    return Lookahead(inner, steps=params.lookahead_steps, alpha=params.lookahead_alpha)


class RepresentationDefence(Protocol):
    """What the loop needs of the CARSO defence it trains (defences/carso/model.py: Carso)."""

    params: CarsoParams
    task: Task
    classifier: nn.Module
    purifier: Purifier
    layers: list[str]


def train_purifier(defence: RepresentationDefence, train: Any, ctx: FitContext) -> dict[str, Any]:
    """Fit the defence's purifier on `train` (an ImageSplit) against its frozen classifier; returns a summary."""
    params = defence.params
    optimiser = make_optimiser(defence.purifier, params)
    batches = batch_slices(len(train.labels), params.batch_size)
    eps = training_budget(params, defence.task)
    history, start_epoch = ctx.resume(PHASE, params.epochs, purifier=defence.purifier, optimiser=optimiser)
    progress = ctx.progress("carso purifier", (params.epochs - start_epoch) * len(batches), every_s=30.0,
                            unit="batches")
    started = time.monotonic()
    # no micro_batch: the largest batch (batch_slices merges a last single example into the batch before it, so a
    # batch can hold batch_size + 1), so that an unretried step runs each batch whole, as without the retries
    micro = ShrinkingSize("micro_batch", params.micro_batch or max(s.stop - s.start for s in batches), floor=2,
                          log=ctx.log)
    with frozen(defence.classifier):
        for epoch in range(start_epoch, params.epochs):
            record = train_epoch(defence, train, ctx, epoch, optimiser, batches, eps, progress, micro)
            history.append(record)
            ctx.save_epoch(PHASE, epoch, history, purifier=defence.purifier, optimiser=optimiser)
            ctx.log.info("carso epoch %d/%d: loss %.4g (bce %.4g, kl %.4g, beta %.3g), lr %.3g", epoch + 1,
                         params.epochs, record["loss"], record["bce"], record["kl"], record["kl_beta"], record["lr"])
    optimiser.use_slow_weights()  # also after a resume that found every epoch done (state loaded above)
    defence.purifier.eval()
    return {"epochs": params.epochs, "history": history, "train_seconds": time.monotonic() - started,
            "resumed_from_epoch": start_epoch, "training_eps": eps, "steps_per_epoch": len(batches),
            **({"oom_retries": retries} if (retries := [r for h in history for r in h.get("oom_retries", [])])
               else {})}


def training_step(defence: RepresentationDefence, x: torch.Tensor, y: torch.Tensor, counts: list[int],
                  eps_beta: tuple[float, float], optimiser: Lookahead, generator: torch.Generator,
                  micro_batch: int) -> tuple[float, dict[str, float]]:
    """One batch's perturbed inputs and accumulated gradient (the caller steps the optimiser), `micro_batch`
    examples at a time; (seconds spent attacking, the batch's losses)."""
    eps, beta = eps_beta
    optimiser.zero_grad(set_to_none=True)
    tick = time.monotonic()
    inputs, _ = balanced_batch(defence.classifier, x, y, counts, eps, defence.params, defence.task.norm, micro_batch)
    seconds = time.monotonic() - tick
    # spread the perturbed rows over the micro-batches (BatchNorm sees mixed batches, as in §4.4)
    mixed = torch.randperm(len(y), generator=generator).to(x.device)
    return seconds, purifier_step(defence.purifier, defence.classifier, defence.layers, inputs[mixed], x[mixed], beta,
                                  micro_batch)


def train_epoch(defence: RepresentationDefence, train: Any, ctx: FitContext, epoch: int, optimiser: Lookahead,
                batches: list[slice], eps: float, progress: Progress, micro: ShrinkingSize) -> dict[str, Any]:
    """One epoch over a fresh permutation (seeded from the epoch) at its LR and KL weight; returns its record.
    A step out of GPU memory is retried with `micro` halved (see the module's docstring)."""
    params = defence.params
    generator = ctx.seed_epoch(epoch, PHASE)
    order = torch.randperm(len(train.labels), generator=generator)
    lr, beta = learning_rate(params, epoch), kl_beta(params, epoch)
    for group in optimiser.param_groups:
        group["lr"] = lr
    totals = {"loss": 0.0, "bce": 0.0, "kl": 0.0}
    attack_seconds, seen, epoch_started = 0.0, 0, time.monotonic()
    adversarial, first_retry = [0] * len(ATTACK_KINDS), len(micro.retries)
    for number, rows in enumerate(batches):
        index = order[rows]
        x, y = train.float_images(index).to(ctx.device), train.labels[index].to(ctx.device)
        counts = balanced_counts(len(y), params.adversarial_fraction)
        snapshot = Snapshot.take([defence.purifier], [generator])
        step = functools.partial(training_step, defence, x, y, counts, (eps, beta), optimiser, generator)
        seconds, losses = micro.retry(step, {"epoch": epoch, "batch": number}, snapshot.restore)
        attack_seconds += seconds
        optimiser.step()
        for name, value in losses.items():
            totals[name] += value * len(y)
        adversarial = [a + c for a, c in zip(adversarial, counts, strict=True)]
        seen += len(y)
        progress.update(epoch=epoch, loss=losses["loss"])
    return {"epoch": epoch, "lr": lr, "kl_beta": beta, **{k: v / seen for k, v in totals.items()},
            "adversarial_per_kind": adversarial, "attack_seconds": attack_seconds,
            "seconds": time.monotonic() - epoch_started,
            **({"oom_retries": micro.retries[first_retry:]} if len(micro.retries) > first_retry else {})}
