"""AutoAttack and its parts: `aa` (standard), `randaa` (for randomised defences), `apgd_ce`, `apgd_dlr`, `apgd_t`,
`fab_t` and `square`, with every budget exposed. APGD is the harness's own (attacks.apgd: pyautoattack's iterates on a
deterministic model, with batched EOT); FAB and Square are pyautoattack's.

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
  of all candidates (APGD's least-often-correct iterate and its highest-loss iterate, Square's best point,
  FAB's result) each point keeps the one that the fewest draws classify correctly, ties broken by the
  larger mean margin. Each candidate is scored with `selection_draws` passes, only where it differs from the
  point's other candidates of that run. The harness then re-checks the result with K draws (attacks.protocol);
- it reads `n_iter` only at construction for APGD's step-size checkpoints; here the components are built
  with their final budgets.
For a deterministic model this is AutoAttack's cascade exactly: each component runs on the points that
survived the previous ones and a point is done once misclassified. There, nothing is scored twice: one
scoring pass of the clean points, APGD's candidates come with their correctness and margin from its own
passes, a point leaves APGD as soon as it is misclassified (attacks.apgd: the others' iterates are unchanged),
and FAB's and Square's results take one pass each. Target class counts are capped at (classes - 1) (APGD-T and
FAB-T would otherwise index past the classes on datasets with fewer than 10). APGD-T's targets come from the
clean logits (mean of `selection_draws` passes), computed once.
On a stochastic model the Square component is Square-EOT (attacks/square.py) when `square_eot` (None: `eot`) is
above 1: each query judged by the mean margin of that many draws; `square_queries` counts forward passes.
EOT inside APGD (`eot`) is batched: the copies of a batch in chunked forward/backward passes of at most
`max_batch` examples (None: the device default of attacks.eot).

Under L1 the components are AutoAttack's L1 version (pyautoattack's `norm='L1'`, Croce & Hein 2021): APGD is
l1-APGD (attacks.apgd) with, by default, the L1 eps schedule (`apgd_l1_schedule`: radii 3, 2, 1 eps over 30/30/40%
of the steps), FAB-T and Square their L1 versions; `aa` takes AutoAttack's L1 standard budgets, 5 APGD-CE
restarts and 5 APGD-T target classes (FAB-T keeps 9), and `randaa` the rand version's (one restart, no
schedule, EOT 20). Settings left at None take these norm-dependent defaults; a value given explicitly is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from attacks.apgd import APGD
from attacks.base import Attack, Budget, project, require_at_least_one
from attacks.protocol import score_points
from attacks.seeding import derive_seed
from attacks.square import square_attack, square_steps

AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
RAND = ("apgd-ce", "apgd-dlr")
APGD_LOSS = {"apgd-ce": "ce", "apgd-dlr": "dlr", "apgd-t": "dlr-targeted"}
LOG = logging.getLogger("auto-attack")
# The settings whose default depends on the norm (None in the dataclass): outside L1, and under L1 where a class
# names no L1 value of its own (`l1_defaults`). fab_target_classes left at None follows target_classes (under L1,
# where target_classes is left at None too, it takes the class's L1 value: AutoAttack's L1 FAB-T keeps 9 targets).
NORM_DEFAULTS: dict[str, Any] = {"apgd_restarts": 1, "target_classes": 9, "apgd_l1_schedule": False}


def _fork_rng(device: torch.device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


@dataclass
class AutoAttackBase(Attack):
    """The components in `attacks` run in order, each on the points no earlier component broke."""

    smoke_budget = {"apgd_steps": Budget(1), "fab_steps": Budget(1), "eot": Budget(1), "square_queries": Budget(10),
                    "apgd_restarts": 1, "fab_restarts": 1, "target_classes": 2, "selection_draws": 2}
    l1_defaults: ClassVar[dict[str, Any]] = {"apgd_l1_schedule": True}

    attacks: list[str] = field(default_factory=lambda: list(STANDARD))
    apgd_steps: int = 100
    apgd_restarts: int | None = None
    eot: int = 1
    rho: float = 0.75
    target_classes: int | None = None
    fab_target_classes: int | None = None
    apgd_l1_schedule: bool | None = None
    fab_steps: int = 100
    fab_restarts: int = 1
    square_queries: int = 5000
    square_p_init: float = 0.8
    square_eot: int | None = None  # draws per Square query on a stochastic model (attacks.square); None: `eot`
    seed: int | None = None
    selection_draws: int = 8
    batch_size: int = 500
    max_batch: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 (or null for the device default), got {self.max_batch}")
        unknown = [a for a in self.attacks if a not in AA_ATTACKS]
        if unknown or not self.attacks:
            raise ValueError(f"unknown AutoAttack component(s) {unknown or self.attacks}; "
                             f"valid: {', '.join(AA_ATTACKS)}")
        self._resolve_norm_defaults()
        require_at_least_one(self, ("apgd_steps", "apgd_restarts", "eot", "target_classes", "fab_target_classes",
                                    "fab_steps", "fab_restarts", "square_queries", "selection_draws", "batch_size"))
        require_at_least_one(self, ("square_eot",), optional=True)
        if "square" in self.attacks:
            square_steps(self.square_queries, self.draws_per_square_query)
        uses_apgd = any(name.startswith("apgd") for name in self.attacks)
        if self.apgd_l1_schedule and uses_apgd and (self.norm != "L1" or self.apgd_steps < 3):
            raise ValueError(f"apgd_l1_schedule (AutoAttack's L1 eps schedule) needs norm L1 and apgd_steps >= 3, got "
                             f"norm={self.norm!r}, apgd_steps={self.apgd_steps}; set it to false or null otherwise")

    @property
    def draws_per_square_query(self) -> int:
        """The draws that judge each Square query on a stochastic model (a deterministic one needs one)."""
        return self.square_eot if self.square_eot is not None else self.eot

    def _resolve_norm_defaults(self) -> None:
        """Settings left at None take their norm's default (NORM_DEFAULTS, the class's `l1_defaults` under L1);
        the L1 schedule's default is off below 3 APGD steps (one per stage)."""
        l1 = self.l1_defaults if self.norm == "L1" else {}
        if self.apgd_l1_schedule is None and self.apgd_steps < 3:  # too few steps for a stage each: no schedule
            self.apgd_l1_schedule = False
        targets_given = self.target_classes is not None
        for name, default in NORM_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, l1.get(name, default))
        if self.fab_target_classes is None:  # a target_classes given explicitly counts for FAB-T too
            self.fab_target_classes = self.target_classes if targets_given else l1.get("fab_target_classes",
                                                                                        self.target_classes)

    # --- the driver -----------------------------------------------------------------------------
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        stochastic = bool(getattr(model, "stochastic", False))
        draws = self.selection_draws if stochastic else 1
        base_seed = self.seed if self.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
        best = x.clone()
        best_rate, best_margin = score_points(model, x, y, draws, self.batch_size)
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
        self._check_applicable(x, num_classes)
        class_order = self._class_order(model, x, draws) if "apgd-t" in self.attacks else None
        for name in self.attacks:
            for round_ in range(self._first_round(name), self._rounds(name, num_classes)):
                todo = (best_rate > 0).nonzero().squeeze(1)
                if todo.numel() == 0:
                    return best
                for lo in range(0, todo.numel(), self.batch_size):
                    idx = todo[lo:lo + self.batch_size]
                    y_target = None if class_order is None else class_order[idx, -(round_ + 2)]
                    with _fork_rng(x.device):
                        seed = derive_seed(base_seed, name, round_, lo) % 2**31
                        torch.manual_seed(seed)
                        candidates = self._run_component(name, seed, model, x[idx], y[idx], num_classes,
                                                         y_target, stochastic)
                    self._keep_better(model, x, y, idx, candidates, draws, (best, best_rate, best_margin))
                LOG.debug("%s round %d: %d of %d points still correct on some draw", name, round_,
                          int((best_rate > 0).sum()), x.shape[0])
        return best

    def _keep_better(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                     candidates: list[Candidate], draws: int, state: tuple[torch.Tensor, ...]) -> None:
        """Each point keeps the candidate the fewest draws classify correctly, ties to the larger mean margin.

        A candidate that comes with its own statistics (APGD on a deterministic model: its correctness and
        margin at that exact point) is not scored again; the others are scored with `draws` passes, each point
        only where the candidate differs from the ones already scored for it.
        """
        best, best_rate, best_margin = state
        scored: list[torch.Tensor] = []
        for candidate in candidates:
            point = candidate.x.detach().to(x.dtype)
            if candidate.correct_rate is not None:
                rate, margin, rows = candidate.correct_rate, candidate.margin, idx
                keep = torch.ones_like(idx, dtype=torch.bool)
            else:
                point = project(point, x[idx], self.eps, self.norm)
                keep = torch.ones_like(idx, dtype=torch.bool)
                for earlier in scored:
                    keep &= (point != earlier).flatten(1).any(1)
                scored.append(point)
                rows = idx[keep]
                if rows.numel() == 0:
                    continue
                rate, margin = score_points(model, point[keep], y[rows], draws, self.batch_size)
            better = (rate < best_rate[rows]) | ((rate == best_rate[rows]) & (margin > best_margin[rows]))
            chosen = rows[better]
            best[chosen], best_rate[chosen], best_margin[chosen] = point[keep][better], rate[better], margin[better]

    @torch.no_grad()
    def _class_order(self, model: nn.Module, x: torch.Tensor, draws: int) -> torch.Tensor:
        """Classes of each clean point by mean logit over `draws` passes, ascending: APGD-T's targets."""
        logits = sum(torch.cat([model(x[i:i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)])
                     for _ in range(draws))
        return logits.sort(dim=1)[1]

    def _check_applicable(self, x: torch.Tensor, num_classes: int) -> None:
        """The components have input limits; say which instead of failing deep inside them."""
        needs = {"apgd-dlr": 3, "apgd-t": 4}  # DLR reads the 3rd largest logit, targeted DLR the 4th
        for name, classes in needs.items():
            if name in self.attacks and num_classes < classes:
                raise ValueError(f"{name} needs at least {classes} classes, the model has {num_classes}; "
                                 f"drop it from attacks (valid: {', '.join(AA_ATTACKS)})")
        if "square" in self.attacks and self.norm in ("L2", "L1") and min(x.shape[-2:]) < 5:
            raise ValueError(f"pyautoattack's {self.norm} Square needs images of at least 5x5, got "
                             f"{tuple(x.shape[-2:])}")

    def _rounds(self, name: str, num_classes: int) -> int:
        """APGD restarts and APGD-T target classes are rounds: each one attacks only the surviving points."""
        if name in ("apgd-ce", "apgd-dlr"):
            return self.apgd_restarts
        if name == "apgd-t":
            return self._targets(num_classes)
        return 1

    def _first_round(self, name: str) -> int:
        return 0

    def _targets(self, num_classes: int, wanted: int | None = None) -> int:
        return max(1, min(self.target_classes if wanted is None else wanted, num_classes - 1))

    def _run_component(self, name: str, seed: int, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       num_classes: int, y_target: torch.Tensor | None, stochastic: bool) -> list[Candidate]:
        if name in ("apgd-ce", "apgd-dlr", "apgd-t"):
            apgd = APGD(eps=self.eps, norm=self.norm, steps=self.apgd_steps, loss=APGD_LOSS[name], eot=self.eot,
                        rho=self.rho, max_batch=self.max_batch, stop_when_misclassified=not stochastic,
                        margins=not stochastic, l1_schedule=bool(self.apgd_l1_schedule))
            run = apgd.run(model, x, y, y_target)
            if stochastic:  # EOT statistics of the attack's own passes decide nothing: the driver scores
                return [Candidate(run.least_correct.x), Candidate(run.highest_loss.x)]
            return [Candidate(run.least_correct.x, run.least_correct.correct_rate, run.least_correct.margin),
                    Candidate(run.highest_loss.x, run.highest_loss.correct_rate, run.highest_loss.margin)]
        from pyautoattack.fab_pt import FABAttack_PT

        common = {"norm": self.norm, "eps": self.eps, "seed": seed, "device": x.device}
        if name in ("fab", "fab-t"):
            targeted = name == "fab-t"
            fab = FABAttack_PT(model, n_restarts=1 if targeted else self.fab_restarts, n_iter=self.fab_steps,
                               targeted=targeted, n_target_classes=self._targets(num_classes, self.fab_target_classes),
                               verbose=False,
                               **common)
            return [Candidate(fab.perturb(x, y))]
        draws = self.draws_per_square_query if stochastic else 1
        settings = {"p_init": self.square_p_init, "n_queries": square_steps(self.square_queries, draws),
                    "n_restarts": 1, "verbose": False, "resc_schedule": False, **common}
        square = square_attack(model, draws, self.max_batch, **settings)
        square.init_hyperparam(x)
        _, best_point = square.attack_single_run(x, y)
        return [Candidate(best_point)]


@dataclass
class Candidate:
    """A component's proposal for each of its points; with its correct rate and margin where already known."""

    x: torch.Tensor
    correct_rate: torch.Tensor | None = None
    margin: torch.Tensor | None = None


@dataclass
class AutoAttackStandard(AutoAttackBase):
    """AutoAttack version='standard' (Croce & Hein 2020): APGD-CE, APGD-T (9 targets), FAB-T, Square 5000.

    Under L1 AutoAttack's L1 standard: 5 APGD-CE restarts, 5 APGD-T targets, both with the L1 eps schedule, FAB-T
    9 targets."""

    l1_defaults: ClassVar[dict[str, Any]] = {"apgd_restarts": 5, "target_classes": 5, "fab_target_classes": 9,
                                             "apgd_l1_schedule": True}


@dataclass
class AutoAttackRand(AutoAttackBase):
    """AutoAttack version='rand', for randomised defences: APGD-CE + APGD-DLR, 100 steps, EOT 20.

    Under L1 without the L1 eps schedule, as pyautoattack's rand version."""

    l1_defaults: ClassVar[dict[str, Any]] = {"apgd_l1_schedule": False}

    attacks: list[str] = field(default_factory=lambda: list(RAND))
    eot: int = 20


@dataclass
class APGDCE(AutoAttackBase):
    """APGD on the cross-entropy loss alone (100 steps, 1 restart; `eot` > 1 for randomised defences)."""

    attacks: list[str] = field(default_factory=lambda: ["apgd-ce"])

    def passes_per_image(self) -> float:
        return float(self.apgd_steps * self.eot * self.apgd_restarts)


@dataclass
class APGDDLR(AutoAttackBase):
    """APGD on the DLR loss alone (100 steps, 1 restart; needs at least 3 classes)."""

    attacks: list[str] = field(default_factory=lambda: ["apgd-dlr"])

    def passes_per_image(self) -> float:
        return float(self.apgd_steps * self.eot * self.apgd_restarts)


@dataclass
class APGDT(AutoAttackBase):
    """APGD-T alone: targeted DLR towards each of the `target_classes` most likely other classes in turn (capped
    at classes - 1), each target a round on the points still standing (needs at least 4 classes)."""

    attacks: list[str] = field(default_factory=lambda: ["apgd-t"])
    first_target: int = 1  # targets first_target..target_classes (in order of likelihood): one target alone as a run

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.first_target <= self.target_classes:
            raise ValueError(f"first_target must be in [1, target_classes = {self.target_classes}], got "
                             f"{self.first_target}")

    def _first_round(self, name: str) -> int:
        return self.first_target - 1


@dataclass
class FABT(AutoAttackBase):
    """FAB-T alone (pyautoattack's targeted FAB over the `target_classes` most likely other classes): for
    deterministic models (its steps follow one forward pass each)."""

    attacks: list[str] = field(default_factory=lambda: ["fab-t"])

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if getattr(model, "stochastic", False):
            raise ValueError("fab_t needs a deterministic model: FAB judges from one forward pass which points are "
                             "already misclassified and never attacks those; on a stochastic defence use apgd_t, "
                             "randaa or adaptive")
        return super().perturb(model, x, y)


@dataclass
class Square(AutoAttackBase):
    """Square Attack (Andriushchenko et al. 2020), the black-box reference: 5000 queries, p_init 0.8.

    `square_queries` counts forward passes per example. With `eot` (or `square_eot`) > 1 on a stochastic model it
    is Square-EOT (attacks.square): each of square_queries // eot steps judged by the mean margin of `eot` draws.
    """

    attacks: list[str] = field(default_factory=lambda: ["square"])

    def passes_per_image(self) -> float:
        return self.square_queries / 3  # forward passes only
