"""AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square) through pyautoattack, with every budget exposed.

The defaults are the standard version's (100 iterations, 9 target classes, 5000 Square queries). Target
class counts are capped at (classes - 1): pyautoattack raises IndexError otherwise on datasets with
fewer than 10 classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from attacks.base import Attack

AA_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


@dataclass
class AutoAttackStandard(Attack):
    """AutoAttack version='standard' (Croce & Hein 2020)."""

    attacks: list[str] = field(default_factory=lambda: list(AA_ATTACKS))
    apgd_steps: int = 100
    apgd_restarts: int = 1
    target_classes: int = 9
    fab_steps: int = 100
    fab_restarts: int = 1
    square_queries: int = 5000
    seed: int = 0
    batch_size: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [a for a in self.attacks if a not in AA_ATTACKS]
        if unknown:
            raise ValueError(f"unknown AutoAttack component(s) {unknown}; valid: {', '.join(AA_ATTACKS)}")

    def build_autoattack(self, model: nn.Module, device: torch.device, num_classes: int):
        from pyautoattack import AutoAttack

        logging.getLogger("auto-attack").setLevel(logging.WARNING)
        adversary = AutoAttack(model, norm=self.norm, eps=self.eps, version="custom", attacks=list(self.attacks),
                               device=device, seed=self.seed)
        targets = min(self.target_classes, num_classes - 1)
        adversary.apgd.n_iter, adversary.apgd.n_restarts = self.apgd_steps, self.apgd_restarts
        adversary.apgd_targeted.n_iter, adversary.apgd_targeted.n_restarts = self.apgd_steps, 1
        adversary.apgd_targeted.n_target_classes = targets
        adversary.fab.n_iter, adversary.fab.n_restarts = self.fab_steps, self.fab_restarts
        adversary.fab.n_target_classes = targets
        adversary.square.n_queries = self.square_queries
        return adversary

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
        adversary = self.build_autoattack(model, x.device, num_classes)
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=self.batch_size)
        return x_adv
