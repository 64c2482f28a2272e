"""The page's opening: per scenario, defence and seed, clean accuracy and the per-example worst case over every
attack, and how much each naive evaluation setting overstates that worst case.

Every number of a headline row comes from one set of test examples: the examples all of the defence's attacks
at the scenario's threat model share (`worst_case.align`), so clean and worst case have one n. The worst case
includes the clean judgements (robust only if also clean-correct) and, where the grid has it, the `adaptive`
attack (its own accuracy is shown beside it). Where `adaptive` runs beside other attacks, the row also checks the
recommended attack (`AdaptiveCheck`): how many examples the other attacks broke that `adaptive` did not, per
example and by the worst case's own rule (an example counts where another attack's judgement is below
adaptive's, clean judgements included); 0 is the goal. Where the judgements are single-draw rates of K draws
(stochastic defences under `decision: single`), an example counts only where the difference is significant for
that example: a one-sided Fisher exact test of adaptive's correct draws against another attack's at the
diagnostics' level `alpha` (0.01) divided by the number of other attacks (Bonferroni), and the count only where
it exceeds what that per-example level gives by chance on n examples (exact binomial tail <= alpha), so attacks
equally strong up to draw noise give 0; the expected single-draw shortfall is shown beside it.

Naive settings (a cell may be in several): classifier-only (`target: classifier`), CE-only (`loss: ce`, or an
AutoAttack whose components are all CE), single-pass (no EOT, `eot` <= 1, on a stochastic defence) and BPDA.
A setting's number is the per-example worst case over the defence's cells in it; its overstatement is that
minus the overall worst case on the same examples, with Newcombe's paired interval (bench.stats).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from attacks.diagnostics import Budget
from attacks.exact_tests import binomial_upper_tail, fisher_greater
from bench.reporting import fmt
from bench.reporting.collect import CellResult, GridResults
from bench.reporting.tables import Table
from bench.reporting.worst_case import WorstCase, combine, group_key, judged, minimum
from bench.stats import PairedComparison, paired_comparison, spread

ADAPTIVE = "adaptive"
ALPHA = Budget.alpha  # the diagnostics' significance level, for the per-example test of the adaptive check
EOT_SETTINGS = ("eot", "eot_iter", "eot_samples")


def attack_loss(cell: CellResult) -> str | None:
    """'ce', 'margin', 'dlr', ... from the attack's `loss`, or 'ce' for an AutoAttack of CE components only."""
    loss = cell.attack_params.get("loss")
    if loss is not None:
        return str(loss).lower()
    components = cell.attack_params.get("attacks")
    if isinstance(components, list) and components and all(str(a).endswith("-ce") for a in components):
        return "ce"
    return None


def stochastic(cell: CellResult) -> bool:
    record = cell.record or {}
    return bool(record.get("stochastic")) or int(record.get("draws") or 1) > 1


def eot_samples(cell: CellResult) -> int:
    return next((int(cell.attack_params[k]) for k in EOT_SETTINGS if fmt.is_number(cell.attack_params.get(k))), 1)


NAIVE_SETTINGS: dict[str, Callable[[CellResult], bool]] = {
    "classifier-only": lambda c: c.target == "classifier",
    "CE-only": lambda c: attack_loss(c) == "ce",
    "single-pass (no EOT)": lambda c: stochastic(c) and eot_samples(c) <= 1 and not c.attack_name.startswith(
        ADAPTIVE),
    "BPDA": lambda c: c.through_bpda,
}


@dataclass
class Overstatement:
    setting: str
    cells: list[CellResult]
    comparison: PairedComparison  # naive setting (first) against the worst case (second)


@dataclass
class AdaptiveCheck:
    """On a headline's examples, what the other attacks broke that `adaptive` did not, by the worst case's rule.

    For 0/1 judgements (deterministic defences, majority or worst-of-K decisions) `missed` counts the examples
    where the other attacks' worst case is 0 and adaptive's 1 (`exact`). For single-draw rates of K draws it counts
    the examples where adaptive's correct draws exceed some other attack's by a one-sided Fisher exact test at
    `alpha` / (other attacks), and only where that many exceed what equally strong attacks would give (`chance`
    <= alpha; else 0); `expected` is then the single-draw shortfall (adaptive's rate minus the lower of it
    and the others' worst case, summed) over the `examples` where the others are lower at all."""

    n: int
    missed: float
    examples: int
    by_attack: dict[str, float]
    adaptive_acc: float
    others_acc: float  # the per-example worst case over the other attacks alone
    exact: bool
    expected: float | None = None
    chance: float | None = None  # rates: P(at least that many per-example differences | equally strong attacks)
    alpha: float = ALPHA

    def text(self) -> str:
        """'0 of 50', '3 of 50 (aa 2, pgd_eot 1)', or for rates '1 of 50 beyond noise (pgd_eot 1; per-example
        Fisher test at 0.01; expected single-draw shortfall 3.75 over 17 example(s))'."""
        missed = [f"{attack} {round(amount)}" for attack, amount in self.by_attack.items() if amount > 0]
        if self.exact:
            return f"{round(self.missed)} of {self.n}" + (f" ({', '.join(missed)})" if missed else "")
        detail = ([", ".join(missed)] if missed else []) + [
            f"per-example Fisher test at {self.alpha:g}, chance p = {self.chance:.2g}",
            f"expected single-draw shortfall {self.expected:.2f} over {self.examples} example(s)"]
        return f"{round(self.missed)} of {self.n} beyond noise ({'; '.join(detail)})"


def _shortfall(mine: list[float], theirs: list[float]) -> float:
    return sum(a - min(a, t) for a, t in zip(mine, theirs, strict=True))


def _draws(cell: CellResult) -> int:
    return max(1, int((cell.record or {}).get("draws") or 1))


def beyond_noise(mine: list[float], draws: int, columns: dict[str, tuple[list[float], int]],
                 alpha: float = ALPHA) -> tuple[int, dict[str, int], float]:
    """Examples where adaptive's single-draw rate (of `draws`) is above some other attack's (`columns`: attack ->
    (rates, its draws)) by a one-sided Fisher exact test at level alpha / len(columns), the count per attack, and
    the chance of that many such examples if every attack were equally strong (Binomial(n, level) upper tail: the
    per-example test's false-alarm rate is at most its level). Counts that chance explains (tail > alpha) are 0."""
    level = alpha / max(1, len(columns))
    by_attack, flagged = dict.fromkeys(columns, 0), 0
    for i, rate in enumerate(mine):
        hits = [attack for attack, (column, theirs) in columns.items() if column[i] < rate and fisher_greater(
            round(rate * draws), draws, round(column[i] * theirs), theirs) <= level]
        for attack in hits:
            by_attack[attack] += 1
        flagged += bool(hits)
    chance = binomial_upper_tail(flagged, len(mine), level)
    if chance > alpha:
        return 0, dict.fromkeys(columns, 0), chance
    return flagged, by_attack, chance


def adaptive_check(worst: WorstCase, adaptive: CellResult | None) -> AdaptiveCheck | None:
    """None where there is no adaptive cell, no other attack or no shared example."""
    others = [c for c in worst.cells if c is not adaptive]
    if adaptive is None or not others or not worst.n:
        return None
    mine = judged(adaptive, worst.index)
    theirs = minimum(others, worst.index)
    columns = {c.attack: judged(c, worst.index) for c in others}
    exact = all(v in (0.0, 1.0) for v in (*mine, *(v for column in columns.values() for v in column)))
    lower = sum(t < a for t, a in zip(theirs, mine, strict=True))
    common = {"n": worst.n, "examples": lower, "adaptive_acc": sum(mine) / worst.n,
              "others_acc": sum(theirs) / worst.n}
    if exact:
        return AdaptiveCheck(missed=_shortfall(mine, theirs), by_attack={a: _shortfall(mine, c) for a, c in
                                                                         columns.items()}, exact=True, **common)
    significant, by_attack, chance = beyond_noise(mine, _draws(adaptive), {c.attack: (columns[c.attack], _draws(c))
                                                                            for c in others})
    return AdaptiveCheck(missed=significant, by_attack=by_attack, exact=False, expected=_shortfall(mine, theirs),
                         chance=chance, **common)


@dataclass
class Headline:
    worst: WorstCase
    adaptive: CellResult | None
    overstatements: list[Overstatement]
    adaptive_check: AdaptiveCheck | None = None

    @property
    def defence(self) -> str:
        return self.worst.defence


def headline_threat(grid: GridResults, scenario: str, cells: list[CellResult]) -> tuple:
    """The scenario's own threat model where the defence has cells at it, else the one most of its cells use."""
    info = grid.scenario_info(scenario)
    keys = [group_key(c)[3:] for c in cells if c.eps is not None]
    if info.get("eps") is not None:
        own = (info.get("norm"), round(float(info["eps"]), 10))
        if own in keys:
            return own
    return max(dict.fromkeys(keys), key=keys.count) if keys else (None, None)


def _overstatements(worst: WorstCase) -> list[Overstatement]:
    found = []
    for setting, applies in NAIVE_SETTINGS.items():
        members = [c for c in worst.cells if applies(c)]
        if members and worst.n:
            naive = minimum(members, worst.index)
            found.append(Overstatement(setting, members, paired_comparison(naive, worst.correct)))
    return found


def headlines(grid: GridResults) -> list[Headline]:
    """One headline per (scenario, defence, seed), in grid order, at the headline threat model."""
    groups: dict[tuple, list[CellResult]] = {}
    for cell in grid.cells:
        groups.setdefault((cell.scenario, cell.defence, cell.seed), []).append(cell)
    found = []
    for (scenario, _, _), cells in groups.items():
        threat = headline_threat(grid, scenario, cells)
        at_threat = [c for c in cells if group_key(c)[3:] == threat]
        if not at_threat:
            continue
        worst = combine(at_threat)
        adaptive = next((c for c in worst.cells if c.attack_name == ADAPTIVE), None)
        found.append(Headline(worst, adaptive, _overstatements(worst), adaptive_check(worst, adaptive)))
    return found


def adaptive_sentence(items: list[Headline]) -> str:
    """The headline's word on the recommended attack: where `adaptive` missed examples other attacks broke, and
    on which defences it missed none; empty where no defence runs it beside other attacks."""
    checked = [item for item in items if item.adaptive_check is not None]
    if not checked:
        return ""
    label = [f"{i.worst.scenario}/{i.defence} seed {i.worst.seed}" for i in checked]
    missed = [f"{name}: {i.adaptive_check.text()}" for name, i in zip(label, checked, strict=True)
              if i.adaptive_check.missed > 0]
    clean = [name for name, i in zip(label, checked, strict=True)
             if i.adaptive_check.missed <= 0 and i.adaptive_check.exact]
    within_noise = [name for name, i in zip(label, checked, strict=True)
                    if i.adaptive_check.missed <= 0 and not i.adaptive_check.exact]
    parts = []
    if missed:
        parts.append("Examples other attacks broke that adaptive did not: " + "; ".join(missed) + ".")
    if clean:
        parts.append("adaptive broke every example another attack broke on " + ", ".join(clean) + ".")
    if within_noise:
        parts.append("Other attacks broke no example significantly more often than adaptive (per-example Fisher "
                     "tests over the draws) on " + ", ".join(within_noise) + ".")
    return " ".join(parts)


# --- tables ---------------------------------------------------------------------------------------------

HEADLINE_COLUMNS = ["scenario", "defence", "seed", "threat", "n", "clean [95% CI]", "worst case [95% CI]",
                    "adaptive alone", "broken by others, not by adaptive", "attacks in the worst case",
                    "not included", "worst case over training seeds"]


def budgets(cells: list[CellResult]) -> str:
    return "\n".join(c.budget for c in cells)


def training_seeds(items: list[Headline]) -> dict[tuple[str, str], list[WorstCase]]:
    """Per (scenario, defence), the headline worst cases of its training seeds (a cell's seed is its stage's)."""
    groups: dict[tuple[str, str], list[WorstCase]] = {}
    for item in items:
        if item.worst.n:
            groups.setdefault((item.worst.scenario, item.defence), []).append(item.worst)
    return groups


def seed_spread_text(worsts: list[WorstCase]) -> str:
    """'3 seeds: 0.250–0.750, sd 0.250' (min–max and sample sd of the worst case), or the one-seed warning."""
    if len(worsts) < 2:
        return "1 seed: training variance unmeasured"
    result = spread([w.acc for w in worsts])
    return f"{len(worsts)} seeds: {result.low:.3f}–{result.high:.3f}, sd {result.sd:.3f}"


def seed_sentence(items: list[Headline]) -> str:
    """The headline's word on training seeds: which defences were trained with one seed only."""
    groups = training_seeds(items)
    single = [f"{scenario}/{defence}" for (scenario, defence), worsts in groups.items() if len(worsts) < 2]
    if not single:
        return ""
    if len(single) == len(groups):
        seeds = sorted({w.seed for worsts in groups.values() for w in worsts})
        return (f"Every defence was trained with a single seed ({', '.join(map(str, seeds))}): training variance "
                "is unmeasured, and differences smaller than it cannot be told from it (list several `seeds` in the "
                "grid to measure it).")
    return (f"Trained with a single seed (training variance unmeasured): {', '.join(single)}; the others show the "
            "spread of their worst case over seeds beside each row.")


def _headline_row(item: Headline) -> list[str]:
    worst = item.worst
    adaptive = fmt.MISSING
    if item.adaptive is not None:
        adaptive_values = minimum([item.adaptive], worst.index)
        adaptive = fmt.accuracy(sum(adaptive_values) / worst.n)
    elif worst.n:
        adaptive = "not run"
    check = item.adaptive_check.text() if item.adaptive_check is not None else (
        "no other attack" if item.adaptive is not None and worst.n else adaptive)
    threat = f"{worst.norm} {fmt.eps(worst.eps)}" if worst.norm else fmt.MISSING
    left_out = worst.not_done + [f"{a} (other test subset)" for a in worst.other_subset]
    larger = [c for c in worst.cells if c.n > worst.n]
    if larger:
        sizes = ", ".join(f"{c.attack} n={c.n}" for c in larger)
        left_out.append(f"examples outside the shared {worst.n} ({sizes})")
    return [worst.scenario, worst.defence, str(worst.seed), threat, str(worst.n) if worst.n else fmt.MISSING,
            fmt.accuracy_ci(worst.clean_acc, worst.clean_ci), fmt.accuracy_ci(worst.acc, worst.ci), adaptive, check,
            ", ".join(worst.attacks) or "no finished attack", ", ".join(left_out) or fmt.MISSING]


def headline_table(items: list[Headline]) -> Table:
    rows, tips = [], {}
    seeds = training_seeds(items)
    for number, item in enumerate(items):
        over_seeds = seeds.get((item.worst.scenario, item.defence))
        rows.append([*_headline_row(item), seed_spread_text(over_seeds) if over_seeds else fmt.MISSING])
        tip = budgets(item.worst.cells)
        for column in (5, 6, 9):
            tips[(number, column)] = tip
        if item.adaptive is not None:
            tips[(number, 7)] = tips[(number, 8)] = item.adaptive.budget
    notes = ["clean and worst case on the same n test examples: those every attack of the defence at this threat "
             "model was run on (a block with a smaller n_examples restricts the others to its examples).",
             "worst case: per example, the minimum over the attacks' judgements and their clean judgements (an "
             "example counts as robust only if it is also classified correctly without attack), 95% Wilson "
             "interval; for stochastic defences each judgement is the record's headline decision over K draws.",
             "adaptive alone: the `adaptive` attack's accuracy on the same examples, where the grid runs it.",
             "broken by others, not by adaptive: per example, adaptive's judgement minus the lower of it and the "
             "other attacks' worst case (clean judgements included, as in the worst case), summed: for 0/1 "
             "judgements the examples other attacks broke and adaptive did not; for single-draw rates of K draws "
             "only the examples where adaptive's correct draws exceed another attack's by a one-sided Fisher exact "
             f"test at {ALPHA:g} / (other attacks), counted where more such examples than chance gives (exact "
             f"binomial tail <= {ALPHA:g}; draw noise alone gives 0), with the expected single-draw shortfall "
             "beside it; in brackets each attack's own share. 0 means the recommended attack alone reaches the "
             "worst case.",
             "worst case over training seeds: min–max and sample sd of the defence's headline worst case over its "
             "training seeds (each seed's row on its own examples); with one seed, the variance from training "
             "(seeds, floating-point differences between machines) is unmeasured and may exceed the interval.",
             "Hover a number (or see 'Cell settings' below) for every attack's budget."]
    return Table("Headline: clean accuracy and the per-example worst case over every attack", HEADLINE_COLUMNS,
                 rows, notes=notes, label="headline", left_columns=4, tooltips=tips)


OVERSTATEMENT_COLUMNS = ["scenario", "defence", "seed", "naive setting", "cells", "naive accuracy",
                         "worst case", "overstatement [95% CI]", "McNemar p", "n"]


def overstatement_table(items: list[Headline]) -> Table:
    rows, tips = [], {}
    for item in items:
        for over in item.overstatements:
            result = over.comparison
            tips[(len(rows), 4)] = budgets(over.cells)
            rows.append([item.worst.scenario, item.defence, str(item.worst.seed), over.setting,
                         ", ".join(c.attack for c in over.cells), fmt.accuracy(result.first_acc),
                         fmt.accuracy(result.second_acc), difference_text(result), p_text(result), str(result.n)])
    notes = ["naive accuracy: the per-example worst case over the defence's cells in that setting only; "
             "overstatement: naive minus the overall worst case on the same examples, with Newcombe's paired 95% "
             "interval (method 10) and the exact McNemar p-value.",
             "classifier-only: crafted on the classifier alone; CE-only: cross-entropy loss only; single-pass: no "
             "EOT on a stochastic defence; BPDA: identity gradient through the purifier."]
    if not rows:
        notes.append("No cell of this grid uses a naive setting.")
    return Table("What naive evaluation overstates", OVERSTATEMENT_COLUMNS, rows, notes=notes,
                 label="overstatement", left_columns=5, tooltips=tips)


def difference_text(result: PairedComparison) -> str:
    return f"{fmt.signed(result.difference)} [{fmt.signed(result.ci[0])}, {fmt.signed(result.ci[1])}]"


def p_text(result: PairedComparison) -> str:
    text = "< 0.001" if result.p_value < 1e-3 else f"{result.p_value:.3f}"
    return text if result.exact else f"{text} (expected counts)"


# --- seeds ----------------------------------------------------------------------------------------------

SEED_COLUMNS = ["scenario", "defence", "seeds", "clean mean ± sd [min, max]", "worst case mean ± sd [min, max]"]


def _spread_text(values: list[float]) -> str:
    result = spread(values)
    return f"{result.mean:.3f} ± {result.sd:.3f} [{result.low:.3f}, {result.high:.3f}]"


def seed_table(items: list[Headline]) -> Table | None:
    """Mean and spread over seeds per (scenario, defence); None when no defence has several seeds."""
    groups: dict[tuple[str, str], list[WorstCase]] = {}
    for item in items:
        if item.worst.n:
            groups.setdefault((item.worst.scenario, item.defence), []).append(item.worst)
    rows = []
    for (scenario, defence), worsts in groups.items():
        if len(worsts) < 2:
            continue
        cleans = [w.clean_acc for w in worsts if w.clean_acc is not None]
        rows.append([scenario, defence, ", ".join(str(w.seed) for w in worsts),
                     _spread_text(cleans) if cleans else fmt.MISSING, _spread_text([w.acc for w in worsts])])
    if not rows:
        return None
    return Table("Spread across seeds", SEED_COLUMNS, rows, label="seeds", left_columns=3,
                 notes=["Over the seeds' headline rows (each on its own test examples); sd: sample standard "
                        "deviation."])
