"""The members of `adaptive` (attacks/adaptive.py): which can run on a model, how each is built by its registry
name with a round's budget, and how it runs (from its own start or from given starting points), plus the
per-example worst case that the members' candidates compete for.

Members:
- `aa` / `randaa`: AutoAttack's cascade, standard or rand, built with adaptive's budgets and seed, so that it is
  exactly the `aa` (`randaa`) a user would run with the same settings;
- `apgd_ce`, `apgd_dlr`, `apgd_t`: APGD on CE, DLR, targeted DLR over the top-k classes (EOT on stochastic
  models); `fab_t`: targeted FAB (deterministic models only); `square`: the black-box Square attack;
- `pgd`: margin PGD on the defence's classifier alone (`target='classifier'`), judged by the whole defence: the
  transfer attack of purifier defences;
- `pgd_eot`, `bpda_eot`: margin PGD+EOT end to end and through BPDA (purifiers only); both start from each
  example's current worst point (a restart from the worst point, and for purifiers a start transferred from the
  classifier-only and BPDA candidates wherever those are the worst points so far), except PGD+EOT's first round
  on a stochastic model, which starts from the clean point (OWN_START_FIRST).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attacks.base import Attack, PassCounter, check_threat_model, no_weight_gradients

CASCADES = ("aa", "randaa")
FROM_WORST = ("pgd_eot", "bpda_eot")
# On stochastic models PGD+EOT first starts from the clean point, as the `pgd_eot` attack alone does (from the
# worst point randaa left, CARSO's demo model kept 0.180 robust against 0.092 from the clean point), and from the
# worst point in the escalations.
OWN_START_FIRST = ("pgd_eot",)
MADRY_SPAN = 2.5  # default PGD step: 2.5 * eps / steps, so that the steps together cover 2.5 eps
MIN_CLASSES = {"apgd_dlr": 3, "apgd_t": 4}  # DLR reads the 3rd largest logit, targeted DLR the 4th


@dataclass
class WorstCase:
    """Per example, the worst point found so far: its K-draw correct rate and mean margin."""

    point: torch.Tensor
    rate: torch.Tensor
    margin: torch.Tensor

    def offer(self, index: torch.Tensor, candidate: torch.Tensor, rate: torch.Tensor, margin: torch.Tensor) -> int:
        """Keep `candidate` for the examples `index` where it is worse for the model; returns how many."""
        better = (rate < self.rate[index]) | ((rate == self.rate[index]) & (margin > self.margin[index]))
        chosen = index[better]
        self.point[chosen], self.rate[chosen], self.margin[chosen] = candidate[better], rate[better], margin[better]
        return int(better.sum())


def skip_reasons(members: list[str], model: nn.Module, x: torch.Tensor, num_classes: int, norm: str) -> dict[str, str]:
    """Members that cannot run on this model and input, with the reason."""
    stochastic = bool(getattr(model, "stochastic", False))
    purifier = bool(getattr(model, "has_purifier", False))
    reasons = {name: f"{name} needs at least {classes} classes, the model has {num_classes}"
               for name, classes in MIN_CLASSES.items() if num_classes < classes}
    if stochastic:
        reasons["fab_t"] = "FAB-T needs a deterministic model (it trusts single forward passes)"
    if not purifier:
        reasons["bpda_eot"] = "the defence has no purifier (BPDA would be pgd_eot again)"
        reasons["pgd"] = "the defence has no purifier (a classifier-only attack would be the end-to-end one)"
    elif getattr(model, "classifier", None) is None:
        reasons["pgd"] = "the defence has no .classifier to transfer a classifier-only attack from"
    if norm in ("L2", "L1") and min(x.shape[-2:]) < 5:
        reasons["square"] = f"pyautoattack's {norm} Square needs images of at least 5x5, got {tuple(x.shape[-2:])}"
    return {m: r for m, r in reasons.items() if m in members}


def cascade_components(name: str, num_classes: int, square_ok: bool) -> tuple[list[str], list[str]]:
    """The components of AutoAttack `name` that can run here, and those left out (too few classes, small L2 image)."""
    from attacks.autoattack import RAND, STANDARD

    wanted = list(STANDARD if name == "aa" else RAND)
    unfit = {c for c in wanted if (c == "apgd-t" and num_classes < 4) or (c == "apgd-dlr" and num_classes < 3)
             or (c == "square" and not square_ok)}
    return [c for c in wanted if c not in unfit], [c for c in wanted if c in unfit]


def build_member(adaptive: Any, name: str, budget: dict[str, Any], seed: int, components: list[str],
                 target_rank: int | None = None) -> Attack:
    """Member `name` built through the registry with the round's `budget` (attacks/adaptive.py: round_budget);
    `target_rank`: APGD-T on that one target class (1 = the most likely other class) alone."""
    from attacks import build

    common = {"eps": adaptive.eps, "norm": adaptive.norm}
    apgd = {"apgd_steps": budget["apgd_steps"], "apgd_restarts": adaptive.apgd_restarts, "eot": budget["eot"],
            "seed": seed, "selection_draws": adaptive.selection_draws, "max_batch": adaptive.max_batch}
    if name == "randaa":
        return build(name, **common, **apgd, attacks=components)
    targets = {"target_classes": adaptive.target_classes}
    if name == "aa":
        return build(name, **common, **apgd, **targets, fab_steps=budget["fab_steps"],
                     square_queries=budget["square_queries"], attacks=components)
    if name in ("apgd_ce", "apgd_dlr"):
        return build(name, **common, **{**apgd, "apgd_restarts": adaptive.member_restarts})
    if name == "apgd_t":
        if target_rank is not None:
            return build(name, **common, **apgd, target_classes=target_rank, first_target=target_rank)
        return build(name, **common, **apgd, **targets)
    if name == "fab_t":
        return build(name, **common, **targets, fab_steps=budget["fab_steps"], seed=seed)
    if name == "square":
        return build(name, **common, square_queries=budget["square_queries"], seed=seed,
                     selection_draws=adaptive.selection_draws, square_eot=adaptive.square_eot,
                     max_batch=adaptive.max_batch)
    steps = {"steps": budget["pgd_steps"], "step_size": budget["pgd_step_size"], "loss": "margin",
             "selection_draws": adaptive.selection_draws}
    if name == "pgd":
        return build(name, **common, **steps, target="classifier")
    return build(name, **common, **steps, eot=budget["eot"], max_batch=adaptive.max_batch)


def run_member(member: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int | None,
               start: torch.Tensor | None = None) -> torch.Tensor:
    """Run `member` on the bare model (from `start` where given: PGD+EOT and BPDA+EOT), adding its pass counts to
    the counter of the calling attack. With a `seed` it runs seeded in a forked RNG; without one (the cascade) on
    the caller's RNG, exactly as the attack would run alone."""
    inner = model.model if isinstance(model, PassCounter) else model
    if seed is None:
        candidate = member(inner, x, y)
        counts = member.counts
    else:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            if start is None:
                candidate = member(inner, x, y)
                counts = member.counts
            else:
                counter = PassCounter(member.surface(inner))
                with no_weight_gradients(inner):
                    candidate = member.run(counter, x, y, start=start)[0].detach()
                check_threat_model(x, candidate, member.eps, member.norm)
                counts = {"forward_examples": counter.forward_examples,
                          "backward_examples": counter.backward_examples}
    if isinstance(model, PassCounter):
        model.forward_examples += counts["forward_examples"]
        model.backward_examples += counts["backward_examples"]
    return candidate
