"""`adaptive`: the harness's recommended evaluation, per example the worst case over AutoAttack and further members.

It first runs exactly AutoAttack's cascade: `aa` (APGD-CE, APGD-T, FAB-T, Square) on a deterministic model,
`randaa` (APGD-CE, APGD-DLR with EOT) on a stochastic one, with the same components, budgets, order and seed
derivation as that attack given the same settings and `seed`. Its result is every example's first candidate, so
per example adaptive's result is never less successful than AutoAttack's (on a deterministic model exactly; on a
stochastic one up to the selection draws' noise). Then the further members run, cheapest first, each only on the
examples still correct on some draw (attacks/adaptive_members.py):
- deterministic models: APGD-CE and APGD-DLR with `member_restarts` random restarts (AutoAttack's one start per
  component misses points a restart finds), then margin PGD from each example's worst point (a restart from it);
- stochastic models: for purifier defences margin PGD on the classifier alone (the transfer attack) and BPDA+EOT
  from the worst point so far; margin PGD+EOT from the worst point (for purifiers a start transferred from the
  classifier-only and BPDA candidates wherever they are the worst so far; in the first round from the clean point,
  as `pgd_eot` alone, and from the worst point in the escalations); APGD-T with EOT, one target class at a
  time (most likely first) while the last target broke examples beyond re-scoring noise; Square last, as
  Square-EOT (attacks/square.py: each query judged by the mean margin of `square_eot` draws; `square_queries`
  counts forward passes, so it takes square_queries // square_eot steps).
A member that cannot run (too few classes, no purifier, FAB on a stochastic model, L2 Square on small images) is
skipped and the reason recorded.

Every candidate is scored by `selection_draws` fresh passes (1 for a deterministic model) and each example keeps
the candidate that the fewest draws classify correctly, ties broken by the larger mean margin. After each round
the kept points are re-scored with fresh draws (a minimum over noisy scores would flatter the attack). On
stochastic models PGD+EOT also attacks the examples every selection draw already misclassifies (from their worst
point, which it replaces only with a larger margin): K draws all wrong do not make a point wrong on later draws.
Last, an example whose point differs from the cascade's gets the cascade's back where, under 4 x `selection_draws`
common draws (the same draws of the defence's randomness for both points), more draws classify it correctly.

Escalation: after the members' round, only the members that broke examples are run again, on the survivors, with
twice the steps, queries and (stochastic models) EOT, PGD+EOT and BPDA+EOT from each example's current worst
point, while the last round broke examples beyond re-scoring noise (attacks/adaptive_stop.py: at least `min_new`
newly broken and, on stochastic models, an exact one-sided binomial test at level `alpha`), at most
`max_escalations` times.

`last_report` (set by every call) holds the settings, the members run and skipped, and every round; the harness
stores it per batch in the record's `attack_report`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attacks.adaptive_members import (
    CASCADES,
    FROM_WORST,
    MADRY_SPAN,
    OWN_START_FIRST,
    WorstCase,
    build_member,
    cascade_components,
    run_member,
    skip_reasons,
)
from attacks.adaptive_stop import RoundEvidence, keep_unless_better, paired_rescore
from attacks.base import Attack, Budget, require_at_least_one
from attacks.protocol import score_points
from attacks.seeding import derive_seed
from attacks.square import square_steps

MEMBERS = ("aa", "randaa", "apgd_ce", "apgd_dlr", "apgd_t", "fab_t", "pgd", "pgd_eot", "bpda_eot", "square")
DETERMINISTIC_MEMBERS = ("aa", "apgd_ce", "apgd_dlr", "pgd_eot")
STOCHASTIC_MEMBERS = ("randaa", "pgd", "bpda_eot", "pgd_eot", "apgd_t", "square")
FINAL_CHECK_DRAWS = 4  # the final paired check against the cascade's points: 4x the selection draws


@dataclass
class Adaptive(Attack):
    """AutoAttack's cascade, then further members on its survivors, with escalation while it still pays.

    Defaults are full strength (AutoAttack's 100 APGD and FAB steps, 9 target classes, 5000 Square queries,
    EOT 20; 100 PGD steps); `eot` applies to stochastic models only. `members=None` is DETERMINISTIC_MEMBERS or
    STOCHASTIC_MEMBERS by the model; a list runs those, in order. `pgd_step_size=None` is 2.5 * eps / steps.
    `member_restarts`: random restarts of the further APGD-CE and APGD-DLR members (the cascade keeps
    `apgd_restarts`, AutoAttack's 1), each restart only on the examples still standing.
    """

    registry_members = MEMBERS  # what build_member builds: the code fingerprint follows these names
    smoke_budget = {"apgd_steps": Budget(1), "fab_steps": Budget(1), "pgd_steps": Budget(1), "eot": Budget(1),
                    "square_queries": Budget(10),
                    "apgd_restarts": 1, "member_restarts": 1, "target_classes": 2, "selection_draws": 2}
    members: list[str] | None = None
    apgd_steps: int = 100
    apgd_restarts: int = 1
    member_restarts: int = 2
    target_classes: int = 9
    fab_steps: int = 100
    pgd_steps: int = 100
    pgd_step_size: float | None = None
    eot: int = 20
    square_queries: int = 5000  # forward passes per example (attacks.square), doubled with each escalation
    square_eot: int = 4  # on stochastic models, the draws that judge each Square query (Square-EOT)
    selection_draws: int = 8
    max_escalations: int = 2
    min_new: int = 1
    alpha: float = 0.05
    seed: int | None = None
    max_batch: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target != "end_to_end":
            raise ValueError(f"adaptive attacks the whole defence; target={self.target!r} is not valid, use "
                             "target='end_to_end' (or a single attack with target='classifier')")
        if self.members is not None:
            unknown = [m for m in self.members if m not in MEMBERS]
            if unknown or not self.members or len(set(self.members)) != len(self.members):
                raise ValueError(f"members={self.members!r} is not valid: give distinct names from "
                                 f"{', '.join(MEMBERS)} (or null for the defaults)")
        require_at_least_one(self, ("apgd_steps", "apgd_restarts", "member_restarts", "target_classes", "fab_steps",
                                    "pgd_steps", "eot", "square_queries", "square_eot", "selection_draws", "min_new"))
        require_at_least_one(self, ("max_batch",), optional=True)
        if self.members is not None and sum(m in CASCADES for m in self.members) > 1:
            raise ValueError(f"members={self.members!r}: give at most one AutoAttack cascade ({' or '.join(CASCADES)})")
        if self.members is None or "square" in self.members:
            square_steps(self.square_queries, self.square_eot)
        if self.max_escalations < 0:
            raise ValueError(f"max_escalations must be >= 0, got {self.max_escalations}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha (the stopping rule's significance level) must be in (0, 1), got {self.alpha}")
        if self.pgd_step_size is not None and not self.pgd_step_size > 0:
            raise ValueError(f"pgd_step_size must be > 0 (or null for 2.5 * eps / steps), got {self.pgd_step_size}")

    def round_budget(self, escalation: int, stochastic: bool) -> dict[str, Any]:
        """The budget of escalation `escalation` (0 = the cascade's and the members' first round): times 2^it."""
        factor = 2**escalation
        pgd_steps = self.pgd_steps * factor
        return {"apgd_steps": self.apgd_steps * factor, "fab_steps": self.fab_steps * factor, "pgd_steps": pgd_steps,
                "pgd_step_size": self.pgd_step_size or MADRY_SPAN * self.eps / pgd_steps,
                "square_queries": self.square_queries * factor, "eot": self.eot * factor if stochastic else 1}

    def plan(self, model: nn.Module, x: torch.Tensor, num_classes: int) -> dict[str, Any]:
        """The members to run (in order), those skipped with the reason, and the cascade's components."""
        stochastic = bool(getattr(model, "stochastic", False))
        wanted = list(self.members or (STOCHASTIC_MEMBERS if stochastic else DETERMINISTIC_MEMBERS))
        skipped = skip_reasons(wanted, model, x, num_classes, self.norm)
        components = {}
        for name in (m for m in wanted if m in CASCADES):
            components[name], left_out = cascade_components(name, num_classes, "square" not in skip_reasons(
                ["square"], model, x, num_classes, self.norm))
            if left_out:
                skipped[f"{name}:{','.join(left_out)}"] = (f"too few classes ({num_classes}) or L2 Square on small "
                                                           "images")
        active = [m for m in wanted if m not in skipped]
        if not active:  # robust accuracy would silently equal clean accuracy
            raise ValueError(f"no member of adaptive can run on this model: {skipped}")
        return {"active": active, "skipped": skipped, "components": components}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per example the worst point found; sets `last_report`, a JSON-able dict:

        - `attack` ("adaptive"), `stochastic`, `draws` (K of the scoring), `n`, `seed`, `min_new`, `alpha`,
          `max_escalations`; `members`: the members run, in order; `skipped`: {member: why it could not run};
          `cascade`: {aa or randaa: its components}; `clean_accuracy`: the K-draw correct rate, averaged;
        - `path`: one entry per round, {`round`, `kind` (cascade, members or escalation), `budget`, `members`
          ({member: {`attacked`, `kept` (examples whose worst point it supplied), `broke` (of those, the examples
          whose selection score fell), `start` (own or worst), `selection_accuracy`, `seconds`}}), `accuracy`
          (re-scored with fresh draws), `changed`, `newly_broken`, `worsened`, `p_value` (the stopping rule's
          evidence: attacks/adaptive_stop.py), `seconds`};
        - `stopped`: why it stopped; `final_check`: {`draws`, `compared`, `restored`}: the examples whose point
          differs from the cascade's, and those given back the cascade's point because under `draws` common
          draws the later point was more often correct; `accuracy`: the result's rate under them.
        """
        self.last_report = None
        stochastic = bool(getattr(model, "stochastic", False))
        draws = self.selection_draws if stochastic else 1
        base_seed = self.seed if self.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), torch.no_grad():
            num_classes = model(x[:1]).shape[1]  # forked: the cascade sees the caller's RNG as AutoAttack would
        plan = self.plan(model, x, num_classes)
        report: dict[str, Any] = {
            "attack": "adaptive", "stochastic": stochastic, "draws": draws, "n": int(x.shape[0]), "seed": base_seed,
            "members": plan["active"], "skipped": plan["skipped"], "cascade": plan["components"],
            "min_new": self.min_new, "alpha": self.alpha, "max_escalations": self.max_escalations, "path": []}
        reference = self._cascade(model, x, y, plan, base_seed, stochastic, report)
        worst = WorstCase(reference.clone(), *score_points(model, reference, y, draws))
        clean_rate = score_points(model, x, y, draws)[0]
        report["clean_accuracy"] = clean_rate.mean().item()
        context = (model, x, y, worst, draws, base_seed, stochastic, num_classes, clean_rate > 0)
        names = [m for m in plan["active"] if m not in CASCADES]
        for escalation in range(self.max_escalations + 1):
            evidence, names = self._round(context, "escalation" if escalation else "members", names, escalation,
                                          report)
            report["stopped"] = self._stop_reason(evidence, names, worst, escalation, stochastic)
            if report["stopped"]:
                break
        final_seed = derive_seed(base_seed, "adaptive-final") % 2**31
        points, rate, report["final_check"] = keep_unless_better(model, y, reference, worst.point,
                                                                 FINAL_CHECK_DRAWS * draws, final_seed)
        report["final_check"]["draws"] = FINAL_CHECK_DRAWS * draws
        report["accuracy"] = rate.mean().item()
        self.last_report = report
        return points

    def _cascade(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, plan: dict[str, Any], base_seed: int,
                 stochastic: bool, report: dict[str, Any]) -> torch.Tensor:
        """AutoAttack's result (x itself without a cascade member): run first, on the caller's RNG, with the
        cascade's own seed derivation from `base_seed`, exactly as `aa` / `randaa` alone with seed=base_seed."""
        name = next((m for m in plan["active"] if m in CASCADES), None)
        if name is None:
            return x.clone()
        started, budget = time.time(), self.round_budget(0, stochastic)
        result = run_member(build_member(self, name, budget, base_seed, plan["components"][name]), model, x, y, None)
        draws = self.selection_draws if stochastic else 1
        rate = score_points(model, result, y, draws)[0]
        changed = int((result != x).flatten(1).any(1).sum())
        report["path"].append({"round": 0, "kind": "cascade", "budget": budget,
                               "members": {name: {"attacked": int(x.shape[0]), "kept": changed, "start": "own"}},
                               "accuracy": rate.mean().item(), "changed": changed, "seconds": time.time() - started})
        return result

    def _stop_reason(self, evidence: RoundEvidence | None, found: list[str], worst: WorstCase, escalation: int,
                     stochastic: bool) -> str | None:
        if not bool((worst.rate > 0).any()):
            return "nothing left to attack"
        if evidence is None:
            return "no further member to run"
        if not evidence.productive(self.min_new, self.alpha, stochastic):
            return (f"converged: {evidence.broken} newly broken, {evidence.worsened} worsened (p = "
                    f"{evidence.p_value:.3g}), within re-scoring noise or below min_new = {self.min_new}")
        if not found:
            return "no member broke an example"
        if escalation == self.max_escalations:
            return "max_escalations reached"
        return None

    def _round(self, context: tuple, kind: str, names: list[str], escalation: int,
               report: dict[str, Any]) -> tuple[RoundEvidence | None, list[str]]:
        """`names` in order, each on the examples still correct on some draw; updates the worst case, re-scores it
        with fresh common draws and appends the round to `report`. Returns its evidence and the members that
        broke examples."""
        model, x, y, worst, draws, base_seed, stochastic, _, clean_correct = context
        if not names:
            return None, []
        started, members, before = time.time(), {}, worst.point.clone()
        round_ = len(report["path"])
        budget = self.round_budget(escalation, stochastic)
        for name in names:
            # on a stochastic model K draws all wrong is not "broken for good": PGD+EOT from the worst point pushes
            # every clean-correct example further (a point at no correct draw is replaced only by a larger margin)
            consolidate = stochastic and name == "pgd_eot"
            todo = ((clean_correct | (worst.rate > 0)) if consolidate else worst.rate > 0).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            seed = derive_seed(base_seed, "adaptive", round_, name) % 2**31
            if name == "apgd_t":
                members[name] = self._offer_targets(context, name, todo, budget, seed)
            else:
                from_worst = name in FROM_WORST and not (stochastic and escalation == 0 and name in OWN_START_FIRST)
                members[name] = self._offer(context, name, todo, budget, seed, from_worst=from_worst)
        rate, margin, evidence = paired_rescore(model, y, before, worst.point, draws,
                                                derive_seed(base_seed, "adaptive-rescore", round_) % 2**31)
        worst.rate, worst.margin = rate, margin
        report["path"].append({"round": round_, "kind": kind, "budget": budget, "members": members,
                               "accuracy": rate.mean().item(), **evidence.as_dict(), "seconds": time.time() - started})
        return evidence, [m for m, entry in members.items() if entry["broke"] > 0]

    def _offer_targets(self, context: tuple, name: str, todo: torch.Tensor, budget: dict[str, Any],
                       seed: int) -> dict[str, Any]:
        """APGD-T one target class at a time, most likely first, each on the examples still standing, while the
        last target broke examples beyond re-scoring noise (the stopping rule, on that target's changes)."""
        model, x, y, worst, draws, _, stochastic, num_classes, _ = context
        started, entry, targets = time.time(), {"attacked": int(todo.numel()), "kept": 0, "broke": 0}, []
        for rank in range(1, max(1, min(self.target_classes, num_classes - 1)) + 1):
            todo = (worst.rate > 0).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            before = worst.point[todo].clone()
            result = self._offer(context, name, todo, budget, derive_seed(seed, rank) % 2**31, rank)
            _, _, evidence = paired_rescore(model, y[todo], before, worst.point[todo], draws,
                                            derive_seed(seed, rank, "rescore") % 2**31)
            entry["kept"], entry["broke"] = entry["kept"] + result["kept"], entry["broke"] + result["broke"]
            targets.append({"target": rank, "attacked": result["attacked"], **evidence.as_dict()})
            if not evidence.productive(self.min_new, self.alpha, stochastic):
                break
        return {**entry, "targets": targets, "start": "own", "selection_accuracy": worst.rate.mean().item(),
                "seconds": time.time() - started}

    def _offer(self, context: tuple, name: str, todo: torch.Tensor, budget: dict[str, Any],
               seed: int, target_rank: int | None = None, from_worst: bool = False) -> dict[str, Any]:
        """Run member `name` on the examples `todo` (from their worst points where `from_worst`) and offer its
        candidates to the worst case."""
        model, x, y, worst, draws = context[:5]
        started = time.time()
        member = build_member(self, name, budget, seed, [], target_rank)
        candidate = run_member(member, model, x[todo], y[todo], seed, worst.point[todo] if from_worst else None)
        rate_before = worst.rate[todo].clone()
        rate, margin = score_points(model, candidate, y[todo], draws)
        kept = worst.offer(todo, candidate, rate, margin)
        return {"attacked": int(todo.numel()), "kept": kept, "broke": int((worst.rate[todo] < rate_before).sum()),
                "start": "worst" if from_worst else "own", "selection_accuracy": worst.rate.mean().item(),
                "seconds": time.time() - started}
