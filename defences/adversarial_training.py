"""`at`: PGD adversarial training (Madry et al. 2018), or a pre-trained robust classifier used as it is.

Training examples are PGD-k adversarial examples (default k = 10, step eps/4, random start) against the
current model, in the scenario's threat model. An optional linear eps warm-up over the first epochs
stabilises small-data runs, which otherwise sometimes collapse to chance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attacks.gradient import PGD
from defences.base import Defence, FitContext
from defences.standard import StandardParams, StandardTraining
from defences.training import train_classifier


@dataclass
class AdversarialTrainingParams(StandardParams):
    attack_steps: int = 10
    attack_step_size: float | None = None  # None: eps / 4
    random_start: bool = True
    eps: float | None = None  # None: the scenario's eps
    eps_warmup_epochs: int = 0


class AdversarialTraining(Defence):
    """Adversarially trained classifier (Madry PGD-AT)."""

    Params = AdversarialTrainingParams
    smoke_budget = {**StandardTraining.smoke_budget, "attack_steps": 2, "eps_warmup_epochs": 0}
    cost_kind = "at"

    def training_eps(self, epoch: int) -> float:
        eps = self.params.eps if self.params.eps is not None else self.task.eps
        warmup = self.params.eps_warmup_epochs
        return eps * min(1.0, (epoch + 1) / warmup) if warmup > 0 else eps

    def fit(self, train: Any, ctx: FitContext) -> dict[str, Any]:
        if not self.params.should_train(ctx.classifier_pretrained):
            return {"trained": False, "note": "pre-trained classifier used as it is"}

        def perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
            eps = self.training_eps(epoch)
            step = self.params.attack_step_size if self.params.attack_step_size is not None else eps / 4
            attack = PGD(eps=eps, norm=self.task.norm, steps=self.params.attack_steps, step_size=step,
                         random_start=self.params.random_start, keep_best=False)
            return attack(model, x, y)

        summary = train_classifier(self.classifier, train, self.params, ctx, perturb=perturb, label="at")
        return {"trained": True, **summary}
