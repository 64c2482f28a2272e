"""The per-example worst case over every attack of a (scenario, defence, seed) at one threat model.

An example counts as robust only if it is clean-correct and survives every attack: its correctness is the
minimum over the attacks' per-example headline values (`robust_correct`) and their clean judgements
(`clean_correct`), so the worst case never exceeds clean accuracy on any example. For 0/1 values
(deterministic defences, or the majority / worst-of-K decisions) the minimum is the logical AND; for a
stochastic defence under the single-draw decision it is the rate of the attack the adversary would pick for
that example. A stricter figure, `acc_all_draws`, counts an example only if every draw of every attack was correct.
Records are combined at one norm and eps, example by example (aligned by `per_example.index`), on the test
examples every record has: blocks with different n_examples take nested subsets of one fixed permutation, so
the common examples are those of the smallest record. Records with no example in common with the others are
left out; anything left out is named, never dropped silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from attacks.stats import wilson_interval
from bench.reporting.collect import CellResult


@dataclass
class WorstCase:
    scenario: str
    defence: str
    seed: int
    norm: str | None
    eps: float | None
    attacks: list[str] = field(default_factory=list)
    not_done: list[str] = field(default_factory=list)
    other_subset: list[str] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    correct: list[float] = field(default_factory=list)
    clean: list[float] = field(default_factory=list)  # per example: the mean of the cells' clean judgements
    cells: list[CellResult] = field(default_factory=list)  # the cells it is over
    acc_all_draws: float | None = None
    restricted: bool = False  # some record has examples outside the common ones

    @property
    def n(self) -> int:
        return len(self.correct)

    @property
    def acc(self) -> float | None:
        return sum(self.correct) / self.n if self.n else None

    @property
    def ci(self) -> tuple[float, float] | None:
        return wilson_interval(sum(self.correct), self.n) if self.n else None

    @property
    def clean_acc(self) -> float | None:
        return sum(self.clean) / self.n if self.n and self.clean else None

    @property
    def clean_ci(self) -> tuple[float, float] | None:
        return wilson_interval(sum(self.clean), self.n) if self.n and self.clean else None

    @property
    def ci_all_draws(self) -> tuple[float, float] | None:
        return wilson_interval(self.acc_all_draws * self.n, self.n) if self.n else None

    def coverage_note(self) -> str:
        """Which attacks it covers and which it could not include, in words."""
        parts = [f"over {', '.join(self.attacks) or 'no finished attack'}"]
        if self.restricted:
            parts[0] += f" on the {self.n} examples they share"
        if self.not_done:
            parts.append(f"not included (not done): {', '.join(self.not_done)}")
        if self.other_subset:
            parts.append(f"not included (other test subset): {', '.join(self.other_subset)}")
        return "; ".join(parts)


def example_index(cell: CellResult) -> tuple[int, ...]:
    per_example = cell.record.get("per_example") or {}
    index = per_example.get("index")
    return tuple(index) if index is not None else tuple(range(len(cell.record.get("robust_correct") or [])))


def has_per_example(cell: CellResult) -> bool:
    return cell.done and cell.record.get("robust_correct") is not None


def align(done: list[CellResult]) -> tuple[list[CellResult], list[int], list[CellResult]]:
    """The cells that share test examples, those examples (in the first cell's order), and the cells left out.

    Nested subsets (blocks with different n_examples) share the smaller one; cells with no example in common
    with the others are left out, keeping the subset most cells have (ties: the first seen).
    """
    if not done:
        return [], [], []
    common = set.intersection(*(set(example_index(c)) for c in done))
    if common:
        used, left_out = done, []
    else:
        subsets = Counter(example_index(c) for c in done)
        reference = max(subsets, key=subsets.__getitem__)
        used = [c for c in done if example_index(c) == reference]
        left_out = [c for c in done if example_index(c) != reference]
        common = set(reference)
    return used, [i for i in example_index(used[0]) if i in common], left_out


def values(cell: CellResult, index: list[int], name: str) -> list[float] | None:
    """A per-example record field (`robust_correct`, `clean_correct`) at the test examples `index`."""
    data = cell.record.get(name)
    if data is None:
        return None
    where = {example: p for p, example in enumerate(example_index(cell))}
    return [float(data[where[i]]) for i in index]


def judged(cell: CellResult, index: list[int]) -> list[float]:
    """Per example, robust correctness capped by the clean judgement (robust only if also clean-correct)."""
    robust = values(cell, index, "robust_correct")
    clean = values(cell, index, "clean_correct")
    return robust if clean is None else [min(r, c) for r, c in zip(robust, clean, strict=True)]


def minimum(cells: list[CellResult], index: list[int]) -> list[float]:
    """The per-example worst case over `cells` (clean judgements included) at the test examples `index`."""
    columns = [judged(c, index) for c in cells]
    return [min(column[i] for column in columns) for i in range(len(index))]


def combine(cells: list[CellResult]) -> WorstCase:
    """The worst case over `cells` (one scenario, defence, seed, norm and eps); not-done cells are named."""
    first = cells[0]
    result = WorstCase(first.scenario, first.defence, first.seed, first.norm, first.eps)
    done = [c for c in cells if has_per_example(c)]
    result.not_done = [f"{c.attack} ({c.status})" for c in cells if not c.done]
    result.not_done += [f"{c.attack} (no per-example data)" for c in cells if c.done and not has_per_example(c)]
    if not done:
        return result
    used, result.index, left_out = align(done)
    result.other_subset = [c.attack for c in left_out]
    result.cells, result.attacks = used, [c.attack for c in used]
    result.restricted = any(len(example_index(c)) > len(result.index) for c in used)
    result.correct = minimum(used, result.index)
    cleans = [values(c, result.index, "clean_correct") for c in used]
    cleans = [column for column in cleans if column is not None]
    if cleans:
        result.clean = [sum(column[i] for column in cleans) / len(cleans) for i in range(len(result.index))]
    draws = [(c.record.get("per_example") or {}).get("robust_draws") for c in used]
    if all(d is not None for d in draws) and result.index:
        positions = [{example: p for p, example in enumerate(example_index(c))} for c in used]
        survived = [all(all(d[where[i]]) for d, where in zip(draws, positions, strict=True)) for i in result.index]
        result.acc_all_draws = sum(survived) / len(survived)
    return result


def group_key(cell: CellResult) -> tuple:
    return (cell.scenario, cell.defence, cell.seed, cell.norm, None if cell.eps is None else round(cell.eps, 10))


def worst_cases(cells: list[CellResult], min_attacks: int = 2) -> list[WorstCase]:
    """One worst case per (scenario, defence, seed, norm, eps) with at least `min_attacks` planned attacks."""
    groups: dict[tuple, list[CellResult]] = {}
    for cell in cells:
        groups.setdefault(group_key(cell), []).append(cell)
    return [combine(group) for group in groups.values() if len(group) >= min_attacks]
