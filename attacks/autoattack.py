"""AutoAttack and its parts through pyautoattack: `aa` (standard), `randaa` (for randomised defences),
`apgd_ce`, `apgd_dlr` and `square`, with every budget exposed.

pyautoattack's own driver (`AutoAttack.run_standard_evaluation`) is not used, for three known problems with
stochastic defences:
- it re-seeds the global RNG with one fixed seed before every component and batch, which freezes the
  defence's randomness (the same noise in every component and every batch) and leaves the global RNG in a
  fixed state afterwards. Here each component run gets its own seed, derived from `seed` or, by default, from
  the caller's RNG (which the harness seeds per batch), and runs inside `torch.random.fork_rng`, so the
  caller's RNG stream is untouched;
- it judges clean and adversarial correctness from one noisy forward pass, returns the clean x for points
  that looked misclassified once, and for points that looked robust once, even when the attack found a
  point of higher loss. Here every point still correct on some of `selection_draws` passes is attacked, and
  of all candidates (APGD's first misclassified iterate and its highest-loss iterate, Square's best point,
  FAB's result) each point keeps the one that the fewest draws classify correctly, ties broken by the
  larger mean margin. The harness then re-checks the result with K draws (attacks.protocol);
- it reads `n_iter` only at construction for APGD's step-size checkpoints; here the components are built
  with their final budgets.
For a deterministic model (one selection draw) this is AutoAttack's cascade exactly: each component runs on
the points that survived the previous ones and a point is done once misclassified. Target class counts are
capped at (classes - 1): pyautoattack raises IndexError otherwise on datasets with fewer than 10 classes.
The EOT loop inside APGD (`eot`) is pyautoattack's (sequential); batched EOT is `pgd_eot`'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from attacks.base import Attack, project
from attacks.protocol import score_points
from bench.runtime import derive_seed

AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
RAND = ("apgd-ce", "apgd-dlr")
LOG = logging.getLogger("auto-attack")


def _fork_rng(device: torch.device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


@dataclass
class AutoAttackBase(Attack):
    """The components in `attacks` run in order, each on the points no earlier component broke."""

    attacks: list[str] = field(default_factory=lambda: list(STANDARD))
    apgd_steps: int = 100
    apgd_restarts: int = 1
    eot: int = 1
    rho: float = 0.75
    target_classes: int = 9
    fab_steps: int = 100
    fab_restarts: int = 1
    square_queries: int = 5000
    square_p_init: float = 0.8
    seed: int | None = None
    selection_draws: int = 8
    batch_size: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [a for a in self.attacks if a not in AA_ATTACKS]
        if unknown or not self.attacks:
            raise ValueError(f"unknown AutoAttack component(s) {unknown or self.attacks}; "
                             f"valid: {', '.join(AA_ATTACKS)}")
        for name in ("apgd_steps", "apgd_restarts", "eot", "target_classes", "fab_steps", "fab_restarts",
                     "square_queries", "selection_draws", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    # --- the driver -----------------------------------------------------------------------------
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        draws = self.selection_draws if getattr(model, "stochastic", False) else 1
        base_seed = self.seed if self.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
        best = x.clone()
        best_rate, best_margin = score_points(model, x, y, draws, self.batch_size)
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
        self._check_applicable(x, num_classes)
        for name in self.attacks:
            for round_ in range(self._rounds(name, num_classes)):
                todo = (best_rate > 0).nonzero().squeeze(1)
                if todo.numel() == 0:
                    return best
                for lo in range(0, todo.numel(), self.batch_size):
                    idx = todo[lo:lo + self.batch_size]
                    with _fork_rng(x.device):
                        seed = derive_seed(base_seed, name, round_, lo) % 2**31
                        torch.manual_seed(seed)
                        candidates = self._run_component(name, round_, seed, model, x[idx], y[idx], num_classes)
                    for candidate in candidates:
                        candidate = project(candidate.detach().to(x.dtype), x[idx], self.eps, self.norm)
                        rate, margin = score_points(model, candidate, y[idx], draws, self.batch_size)
                        better = (rate < best_rate[idx]) | ((rate == best_rate[idx]) & (margin > best_margin[idx]))
                        chosen = idx[better]
                        best[chosen], best_rate[chosen], best_margin[chosen] = \
                            candidate[better], rate[better], margin[better]
                LOG.debug("%s round %d: %d of %d points still correct on some draw", name, round_,
                          int((best_rate > 0).sum()), x.shape[0])
        return best

    def _check_applicable(self, x: torch.Tensor, num_classes: int) -> None:
        """pyautoattack's components have input limits; say which instead of failing deep inside them."""
        needs = {"apgd-dlr": 3, "apgd-t": 4}  # DLR reads the 3rd largest logit, targeted DLR the 4th
        for name, classes in needs.items():
            if name in self.attacks and num_classes < classes:
                raise ValueError(f"{name} needs at least {classes} classes, the model has {num_classes}; "
                                 f"drop it from attacks (valid: {', '.join(AA_ATTACKS)})")
        if "square" in self.attacks and self.norm == "L2" and min(x.shape[-2:]) < 5:
            raise ValueError(f"pyautoattack's L2 Square needs images of at least 5x5, got {tuple(x.shape[-2:])}")

    def _rounds(self, name: str, num_classes: int) -> int:
        """APGD restarts and APGD-T target classes are rounds: each one attacks only the surviving points."""
        if name in ("apgd-ce", "apgd-dlr"):
            return self.apgd_restarts
        if name == "apgd-t":
            return self._targets(num_classes)
        return 1

    def _targets(self, num_classes: int) -> int:
        return max(1, min(self.target_classes, num_classes - 1))

    def _run_component(self, name: str, round_: int, seed: int, model: nn.Module, x: torch.Tensor,
                       y: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
        from pyautoattack.fab_pt import FABAttack_PT
        from pyautoattack.square import SquareAttack

        common = {"norm": self.norm, "eps": self.eps, "seed": seed, "device": x.device}
        if name in ("apgd-ce", "apgd-dlr", "apgd-t"):
            if name == "apgd-t":
                apgd = APGDAttack_targeted(model, n_iter=self.apgd_steps, n_restarts=1, eot_iter=self.eot,
                                           rho=self.rho, n_target_classes=self._targets(num_classes), logger=LOG,
                                           **common)
                with torch.no_grad():
                    apgd.y_target = model(x).sort(dim=1)[1][:, -(round_ + 2)]
            else:
                apgd = APGDAttack(model, n_iter=self.apgd_steps, n_restarts=1, loss=name.split("-")[1],
                                  eot_iter=self.eot, rho=self.rho, logger=LOG, **common)
            apgd.init_hyperparam(x)
            highest_loss, _, _, first_misclassified = apgd.attack_single_run(x, y)
            return [first_misclassified, highest_loss]
        if name in ("fab", "fab-t"):
            targeted = name == "fab-t"
            fab = FABAttack_PT(model, n_restarts=1 if targeted else self.fab_restarts, n_iter=self.fab_steps,
                               targeted=targeted, n_target_classes=self._targets(num_classes), verbose=False,
                               **common)
            return [fab.perturb(x, y)]
        square = SquareAttack(model, p_init=self.square_p_init, n_queries=self.square_queries, n_restarts=1,
                              verbose=False, resc_schedule=False, **common)
        square.init_hyperparam(x)
        _, best_point = square.attack_single_run(x, y)
        return [best_point]


@dataclass
class AutoAttackStandard(AutoAttackBase):
    """AutoAttack version='standard' (Croce & Hein 2020): APGD-CE, APGD-T (9 targets), FAB-T, Square 5000."""


@dataclass
class AutoAttackRand(AutoAttackBase):
    """AutoAttack version='rand', for randomised defences: APGD-CE + APGD-DLR, 100 steps, EOT 20."""

    attacks: list[str] = field(default_factory=lambda: list(RAND))
    eot: int = 20


@dataclass
class APGDCE(AutoAttackBase):
    """APGD on the cross-entropy loss alone (100 steps, 1 restart; `eot` > 1 for randomised defences)."""

    attacks: list[str] = field(default_factory=lambda: ["apgd-ce"])


@dataclass
class APGDDLR(AutoAttackBase):
    """APGD on the DLR loss alone (100 steps, 1 restart; needs at least 3 classes)."""

    attacks: list[str] = field(default_factory=lambda: ["apgd-dlr"])


@dataclass
class Square(AutoAttackBase):
    """Square Attack (Andriushchenko et al. 2020), the black-box reference: 5000 queries, p_init 0.8."""

    attacks: list[str] = field(default_factory=lambda: ["square"])
