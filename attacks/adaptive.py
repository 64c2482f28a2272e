"""`adaptive`: the harness's recommended evaluation, per example the worst case over a loss-diverse ensemble.

Members (each built through the public registry, `attacks.build`):
- `apgd_ce`, `apgd_dlr`: APGD on cross-entropy and on DLR, with EOT over the defence's randomness;
- `pgd_eot`: PGD+EOT on the margin loss (it keeps its gradient where a saturated CE underflows to zero);
- `bpda_eot`: BPDA+EOT on the margin loss, only for defences with a purifier (`has_purifier`);
- `square`: the black-box Square attack, which no gradient masking can stop.
A member that cannot run on the model (DLR needs 3 classes, BPDA a purifier, pyautoattack's L2 Square
images of at least 5x5) is skipped and the reason recorded.

Every candidate is scored by `selection_draws` fresh forward passes (1 for a deterministic model) and each
example keeps the candidate that the fewest draws classify correctly, ties broken by the larger mean margin;
examples no draw classifies correctly are not attacked further. After each round the kept points are
re-scored with fresh draws (a minimum over noisy scores would flatter the attack), and their mean is the
round's worst-case accuracy.

Escalation: after the base round, the round is repeated with the step budgets (APGD and PGD steps, Square
queries) and, for stochastic models, the EOT samples doubled, while the previous round lowered the worst-case
accuracy by more than `tolerance`, at most `max_escalations` times. Each round attacks only the examples still
correct on some draw and keeps the better of its candidates and the previous rounds' ones.

`last_report` (set by every call) holds the settings, the members run and skipped, and the escalation path;
the harness stores it per batch in the record's `attack_report`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attacks.base import Attack, PassCounter, require_at_least_one
from attacks.protocol import score_points
from attacks.seeding import derive_seed

MEMBERS = ("apgd_ce", "apgd_dlr", "pgd_eot", "bpda_eot", "square")
MADRY_SPAN = 2.5  # default PGD step: 2.5 * eps / steps, so that the steps together cover 2.5 eps


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


@dataclass
class Adaptive(Attack):
    """Worst case per example over APGD-CE/DLR+EOT, margin PGD+EOT, BPDA+EOT and Square, with escalation.

    Defaults are full strength (AutoAttack's 100 APGD steps and 5000 Square queries, EOT 20); `eot` applies to
    stochastic models only (deterministic ones use 1 and never escalate it). `pgd_step_size=None` is
    2.5 * eps / steps for the round's step count. Grids scale the budgets down where time is short.
    """

    registry_members = MEMBERS  # what build_member builds: the code fingerprint follows these names
    members: list[str] = field(default_factory=lambda: list(MEMBERS))
    apgd_steps: int = 100
    apgd_restarts: int = 1
    pgd_steps: int = 100
    pgd_step_size: float | None = None
    eot: int = 20
    square_queries: int = 5000
    selection_draws: int = 8
    tolerance: float = 0.01
    max_escalations: int = 2
    seed: int | None = None
    max_batch: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target != "end_to_end":
            raise ValueError(f"adaptive attacks the whole defence; target={self.target!r} is not valid, use "
                             "target='end_to_end' (or a single attack with target='classifier')")
        unknown = [m for m in self.members if m not in MEMBERS]
        if unknown or not self.members or len(set(self.members)) != len(self.members):
            raise ValueError(f"members={self.members!r} is not valid: give distinct names from {', '.join(MEMBERS)}")
        require_at_least_one(self, ("apgd_steps", "apgd_restarts", "pgd_steps", "eot", "square_queries",
                                    "selection_draws"))
        if self.max_escalations < 0 or not self.tolerance >= 0:
            raise ValueError(f"max_escalations and tolerance must be >= 0, got max_escalations="
                             f"{self.max_escalations}, tolerance={self.tolerance}")
        if self.pgd_step_size is not None and not self.pgd_step_size > 0:
            raise ValueError(f"pgd_step_size must be > 0 (or null for 2.5 * eps / steps), got {self.pgd_step_size}")

    # --- budgets and members -----------------------------------------------------------------------
    def round_budget(self, round_: int, stochastic: bool) -> dict[str, Any]:
        """The budget of round `round_` (0 = base): step budgets and, for stochastic models, EOT times 2^round."""
        factor = 2**round_
        pgd_steps = self.pgd_steps * factor
        return {"apgd_steps": self.apgd_steps * factor, "pgd_steps": pgd_steps,
                "pgd_step_size": self.pgd_step_size or MADRY_SPAN * self.eps / pgd_steps,
                "square_queries": self.square_queries * factor, "eot": self.eot * factor if stochastic else 1}

    def skip_reasons(self, model: nn.Module, x: torch.Tensor, num_classes: int) -> dict[str, str]:
        """Members that cannot run on this model and input, with the reason."""
        reasons = {}
        if num_classes < 3:
            reasons["apgd_dlr"] = f"DLR needs at least 3 classes, the model has {num_classes}"
        if not getattr(model, "has_purifier", False):
            reasons["bpda_eot"] = "the defence has no purifier (BPDA would be pgd_eot again)"
        if self.norm == "L2" and min(x.shape[-2:]) < 5:
            reasons["square"] = f"pyautoattack's L2 Square needs images of at least 5x5, got {tuple(x.shape[-2:])}"
        return {m: r for m, r in reasons.items() if m in self.members}

    def build_member(self, name: str, budget: dict[str, Any], seed: int, draws: int) -> Attack:
        from attacks import build

        common = {"eps": self.eps, "norm": self.norm}
        if name in ("apgd_ce", "apgd_dlr"):
            return build(name, **common, apgd_steps=budget["apgd_steps"], apgd_restarts=self.apgd_restarts,
                         eot=budget["eot"], seed=seed, selection_draws=draws)
        if name == "square":
            return build(name, **common, square_queries=budget["square_queries"], seed=seed, selection_draws=draws)
        return build(name, **common, steps=budget["pgd_steps"], step_size=budget["pgd_step_size"],
                     eot=budget["eot"], loss="margin", max_batch=self.max_batch)

    # --- the attack --------------------------------------------------------------------------------
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per example the worst point found; sets `last_report`, a JSON-able dict:

        - `attack` ("adaptive"), `stochastic`, `draws` (K of the scoring), `n` (examples), `tolerance`,
          `max_escalations`;
        - `members`: the members run, in order; `skipped`: {member: why it could not run};
        - `clean_accuracy`: the K-draw correct rate of the unperturbed inputs, averaged;
        - `path`: one entry per round, {`round` (0 = base), `budget` ({apgd_steps, pgd_steps, pgd_step_size,
          square_queries, eot}), `members` ({member: {`attacked`: examples it ran on, `kept`: examples whose
          worst point it supplied, `selection_accuracy`: mean selection score after it, `seconds`}}),
          `accuracy` (the worst case after the round, re-scored with fresh draws), `seconds`};
        - `stopped`: why escalation stopped; `accuracy`: the final round's accuracy.
        """
        self.last_report: dict[str, Any] | None = None
        stochastic = bool(getattr(model, "stochastic", False))
        draws = self.selection_draws if stochastic else 1
        base_seed = self.seed if self.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
        skipped = self.skip_reasons(model, x, num_classes)
        active = [m for m in self.members if m not in skipped]
        if not active:  # robust accuracy would silently equal clean accuracy
            raise ValueError(f"no member of adaptive can run on this model: {skipped}")
        worst = WorstCase(x.clone(), *score_points(model, x, y, draws))
        report: dict[str, Any] = {
            "attack": "adaptive", "stochastic": stochastic, "draws": draws, "n": int(x.shape[0]),
            "members": active, "skipped": skipped, "tolerance": self.tolerance,
            "max_escalations": self.max_escalations, "clean_accuracy": worst.rate.mean().item(), "path": []}
        previous = report["clean_accuracy"]
        for round_ in range(self.max_escalations + 1):
            entry = self._round(model, x, y, worst, active, self.round_budget(round_, stochastic), draws,
                                derive_seed(base_seed, "adaptive", round_))
            entry["round"] = round_
            worst.rate, worst.margin = score_points(model, worst.point, y, draws)  # fresh draws: unbiased
            entry["accuracy"] = worst.rate.mean().item()
            report["path"].append(entry)
            report["stopped"] = self._stop_reason(round_, previous, entry["accuracy"], worst.rate)
            previous = entry["accuracy"]
            if report["stopped"]:
                break
        report["accuracy"] = previous
        self.last_report = report
        return worst.point

    def _stop_reason(self, round_: int, before: float, after: float, rate: torch.Tensor) -> str | None:
        if not bool((rate > 0).any()):
            return "nothing left to attack"
        if round_ >= 1 and before - after <= self.tolerance:
            return f"converged: accuracy fell by {before - after:.4g} <= tolerance"
        if round_ == self.max_escalations:
            return "max_escalations reached"
        return None

    def _round(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, worst: WorstCase, active: list[str],
               budget: dict[str, Any], draws: int, round_seed: int) -> dict[str, Any]:
        """Every active member once, each on the examples still correct on some draw; updates `worst`."""
        started, members = time.time(), {}
        for name in active:
            todo = (worst.rate > 0).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            member_started = time.time()
            seed = derive_seed(round_seed, name) % 2**31
            candidate = self._run_member(self.build_member(name, budget, seed, draws), model, x[todo], y[todo], seed)
            kept = worst.offer(todo, candidate, *score_points(model, candidate, y[todo], draws))
            members[name] = {"attacked": int(todo.numel()), "kept": kept,
                             "selection_accuracy": worst.rate.mean().item(), "seconds": time.time() - member_started}
        return {"budget": budget, "members": members, "seconds": time.time() - started}

    @staticmethod
    def _run_member(member: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
        """Run `member` on the bare model, adding its pass counts to this attack's counter."""
        inner = model.model if isinstance(model, PassCounter) else model
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            candidate = member(inner, x, y)
        if isinstance(model, PassCounter):
            model.forward_examples += member.counts["forward_examples"]
            model.backward_examples += member.counts["backward_examples"]
        return candidate
