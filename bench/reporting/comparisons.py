"""Paired comparisons on the same test examples: defence against defence, and CE against margin losses.

- Defences: two defences of one scenario and seed, compared on the examples both were evaluated on, under the
  same attack entry (same grid key and settings) and on their worst cases: difference of accuracies with
  Newcombe's paired 95% interval and the exact McNemar p-value (bench.stats). Per-example values are the
  records' headline decision, capped by the clean judgement (worst_case.judged).
- CE vs margin: two cells of one defence whose attacks differ only in `loss` (ce against margin / dlr / cw).
  When their accuracies' 95% intervals do not overlap and CE is the higher, CE's gradient is masked: the
  report says "gradient masked for CE" with both accuracies, intervals and n.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from bench.reporting import fmt
from bench.reporting.collect import CellResult, GridResults
from bench.reporting.headline import Headline, attack_loss, budgets, difference_text, p_text
from bench.reporting.tables import Table
from bench.reporting.worst_case import example_index, has_per_example, judged
from bench.stats import PairedComparison, paired_comparison

MARGIN_LOSSES = ("margin", "dlr", "cw")


@dataclass
class DefencePair:
    scenario: str
    seed: int
    first: str
    second: str
    what: str  # an attack key, or "worst case"
    comparison: PairedComparison
    cells: list[CellResult]


def _shared(first_index: list[int], second_index: list[int]) -> list[int]:
    other = set(second_index)
    return [i for i in first_index if i in other]


def _compare_worst(a: Headline, b: Headline) -> DefencePair | None:
    shared = _shared(a.worst.index, b.worst.index)
    if not shared:
        return None
    where_a = {e: p for p, e in enumerate(a.worst.index)}
    where_b = {e: p for p, e in enumerate(b.worst.index)}
    result = paired_comparison([a.worst.correct[where_a[i]] for i in shared],
                               [b.worst.correct[where_b[i]] for i in shared])
    return DefencePair(a.worst.scenario, a.worst.seed, a.defence, b.defence, "worst case", result,
                       a.worst.cells + b.worst.cells)


def _same_attack(first: CellResult, second: CellResult) -> bool:
    return first.attack == second.attack and first.attack_params == second.attack_params


def _compare_cells(first: CellResult, second: CellResult) -> DefencePair | None:
    shared = _shared(list(example_index(first)), list(example_index(second)))
    if not shared:
        return None
    result = paired_comparison(judged(first, shared), judged(second, shared))
    return DefencePair(first.scenario, first.seed, first.defence, second.defence, first.attack, result,
                       [first, second])


def defence_pairs(grid: GridResults, items: list[Headline]) -> list[DefencePair]:
    """Every pair of defences of one scenario and seed: their worst cases, then each attack both ran."""
    pairs = []
    for a, b in combinations([h for h in items if h.worst.n], 2):
        if (a.worst.scenario, a.worst.seed) != (b.worst.scenario, b.worst.seed):
            continue
        same_threat = (a.worst.norm, a.worst.eps) == (b.worst.norm, b.worst.eps)
        worst = _compare_worst(a, b) if same_threat else None
        if worst is not None:
            pairs.append(worst)
        second_cells = [c for c in grid.cells if c.defence == b.defence and c.scenario == b.worst.scenario
                        and c.seed == b.worst.seed and has_per_example(c)]
        for first in grid.cells:
            if (first.defence, first.scenario, first.seed) != (a.defence, a.worst.scenario, a.worst.seed) \
                    or not has_per_example(first):
                continue
            second = next((c for c in second_cells if _same_attack(first, c)), None)
            found = _compare_cells(first, second) if second is not None else None
            if found is not None:
                pairs.append(found)
    return pairs


PAIR_COLUMNS = ["scenario", "seed", "A", "B", "under", "n", "A acc", "B acc", "A − B [95% CI]", "McNemar p"]


def pairs_table(pairs: list[DefencePair]) -> Table:
    rows, tips, starts = [], {}, []
    previous = None
    for pair in pairs:
        if (pair.scenario, pair.seed, pair.first, pair.second) != previous:
            starts.append(len(rows))
            previous = (pair.scenario, pair.seed, pair.first, pair.second)
        result = pair.comparison
        tips[(len(rows), 4)] = budgets(pair.cells)
        rows.append([pair.scenario, str(pair.seed), pair.first, pair.second, pair.what, str(result.n),
                     fmt.accuracy(result.first_acc), fmt.accuracy(result.second_acc), difference_text(result),
                     p_text(result)])
    notes = ["Two defences on the test examples both were evaluated on: under the same attack entry, and their "
             "per-example worst cases. A − B with Newcombe's paired 95% interval (method 10, Statistics in "
             "Medicine 1998) and the exact two-sided McNemar p-value (binomial test of the discordant examples).",
             "Stochastic defences: per-example values are the headline decision's rates; the 2x2 table then holds "
             "expected counts and the p-value uses them rounded ('expected counts')."]
    if not rows:
        notes.append("No two defences of this grid share test examples.")
    return Table("Paired comparisons between defences", PAIR_COLUMNS, rows, notes=notes, group_starts=starts,
                 label="paired", left_columns=5, tooltips=tips)


# --- CE against margin ------------------------------------------------------------------------------------

@dataclass
class LossPair:
    ce: CellResult
    other: CellResult
    masked: bool  # intervals disjoint, CE higher
    comparison: PairedComparison | None

    def evidence(self) -> str:
        def one(cell: CellResult) -> str:
            record = cell.record
            return (f"{cell.attack} (loss {attack_loss(cell)}): "
                    f"{fmt.accuracy_ci(record['robust_acc'], record['robust_ci'], cell.n)}")

        return f"{one(self.ce)} vs {one(self.other)}"


def _differ_only_in_loss(first: CellResult, second: CellResult) -> bool:
    def rest(cell: CellResult) -> dict:
        return {k: v for k, v in cell.attack_params.items() if k != "loss"}

    return first.attack_name == second.attack_name and rest(first) == rest(second)


def loss_pairs(grid: GridResults) -> list[LossPair]:
    """Cells of one (scenario, defence, seed) whose attacks differ only in the loss, CE against margin-type."""
    done = [c for c in grid.cells if c.done]
    found = []
    for ce in done:
        if attack_loss(ce) != "ce" or "loss" not in ce.attack_params:
            continue
        for other in done:
            if (other.scenario, other.defence, other.seed) != (ce.scenario, ce.defence, ce.seed) or \
                    attack_loss(other) not in MARGIN_LOSSES or not _differ_only_in_loss(ce, other):
                continue
            ce_low = ce.record["robust_ci"][0]
            other_high = other.record["robust_ci"][1]
            masked = ce_low > other_high and ce.record["robust_acc"] > other.record["robust_acc"]
            comparison = None
            if has_per_example(ce) and has_per_example(other):
                shared = _shared(list(example_index(ce)), list(example_index(other)))
                if shared:
                    comparison = paired_comparison(judged(ce, shared), judged(other, shared))
            found.append(LossPair(ce, other, masked, comparison))
    return found


LOSS_COLUMNS = ["scenario", "defence", "seed", "CE cell", "margin-type cell", "CE accuracy", "other accuracy",
                "paired difference [95% CI], p", "verdict"]


def loss_table(pairs: list[LossPair]) -> Table:
    rows, tips = [], {}
    for pair in pairs:
        ce, other = pair.ce, pair.other
        paired = fmt.MISSING
        if pair.comparison is not None:
            paired = f"{difference_text(pair.comparison)}, p {p_text(pair.comparison)} (n={pair.comparison.n})"
        tips[(len(rows), 3)], tips[(len(rows), 4)] = ce.budget, other.budget
        rows.append([ce.scenario, ce.defence, str(ce.seed), ce.attack, f"{other.attack} ({attack_loss(other)})",
                     fmt.accuracy_ci(ce.record["robust_acc"], ce.record["robust_ci"], ce.n),
                     fmt.accuracy_ci(other.record["robust_acc"], other.record["robust_ci"], other.n), paired,
                     "gradient masked for CE" if pair.masked else "agree within intervals"])
    notes = ["Cells of one defence whose attacks differ only in the loss. 'gradient masked for CE': the "
             "accuracies' 95% intervals do not overlap and CE leaves the defence more accurate, so its CE numbers "
             "(and CE-only attacks) overstate robustness."]
    return Table("CE against margin losses", LOSS_COLUMNS, rows, notes=notes, label="ce-margin", left_columns=5,
                 tooltips=tips)
