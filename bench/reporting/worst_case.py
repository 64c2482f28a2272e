"""The per-example worst case over every attack of a (scenario, defence, seed) at one threat model.

An example counts as robust only if it survives every attack: its correctness is the minimum over the
attacks' per-example headline values (`robust_correct`). For 0/1 values (deterministic defences, or the
majority / worst-of-K decisions) the minimum is the logical AND; for a stochastic defence under the
single-draw decision it is the rate of the attack the adversary would pick for that example. A stricter
figure, `acc_all_draws`, counts an example only if every draw of every attack was correct.
Records are combined at one norm and eps, example by example (aligned by `per_example.index`), on the test
examples every record has: blocks with different n_examples take nested subsets of one fixed permutation, so
the common examples are those of the smallest record. Records with no example in common with the others are
left out; anything left out is named, never dropped silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from bench.reporting.collect import CellResult
from bench.stats import wilson_interval


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


def _index(cell: CellResult) -> tuple[int, ...]:
    per_example = cell.record.get("per_example") or {}
    index = per_example.get("index")
    return tuple(index) if index is not None else tuple(range(len(cell.record.get("robust_correct") or [])))


def combine(cells: list[CellResult]) -> WorstCase:
    """The worst case over `cells` (one scenario, defence, seed, norm and eps); not-done cells are named."""
    first = cells[0]
    result = WorstCase(first.scenario, first.defence, first.seed, first.norm, first.eps)
    done = [c for c in cells if c.done and c.record.get("robust_correct") is not None]
    result.not_done = [f"{c.attack} ({c.status})" for c in cells if not c.done]
    result.not_done += [f"{c.attack} (no per-example data)" for c in cells
                        if c.done and c.record.get("robust_correct") is None]
    if not done:
        return result
    common = set.intersection(*(set(_index(c)) for c in done))
    if common:
        used = done
    else:  # disjoint test subsets: keep the records that share the most common one
        subsets = Counter(_index(c) for c in done)
        reference = max(subsets, key=subsets.__getitem__)  # ties go to the first seen
        used = [c for c in done if _index(c) == reference]
        result.other_subset = [c.attack for c in done if _index(c) != reference]
        common = set(reference)
    result.attacks = [c.attack for c in used]
    result.index = [i for i in _index(used[0]) if i in common]
    result.restricted = any(len(_index(c)) > len(result.index) for c in used)
    positions = [{example: p for p, example in enumerate(_index(c))} for c in used]
    result.correct = [min(float(c.record["robust_correct"][where[i]]) for c, where in zip(used, positions, strict=True))
                      for i in result.index]
    draws = [(c.record.get("per_example") or {}).get("robust_draws") for c in used]
    if all(d is not None for d in draws) and result.index:
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
