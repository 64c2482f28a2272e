"""Minimum-norm robustness curves: robust accuracy at every radius from one minimum-norm cell (`fmn`), and where
the fixed-eps cells of the same scenario, defence and seed contradict it.

A minimum-norm cell returns, per example, the smallest adversarial point its attack found (the clean point where
it found none) and the record judges that point with the harness's K draws. At radius r an example therefore
counts as its record judges it (robust capped by clean, under the record's decision) where the point's size
(`per_example.perturbation`) is at most r, and as its clean judgement where it is larger: a point judged robust
by the K draws never breaks the example at any radius. The curve is an upper bound on the robust accuracy at each
radius, exactly as a fixed-eps attack's number is at its eps.

Disagreements: a fixed-eps cell at the curve's norm and an eps within its range, on the same test examples, that
breaks an example the curve says is robust at that eps shows the minimum-norm attack is weak there. An example
counts when the fixed cell's judgement is 0 (wrong) and the curve's is 1 (right), so the single-draw rule counts
only examples wrong on every draw of one and right on every draw of the other; the count is what was observed,
never a significance claim.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks.base import within_budget
from bench.reporting.collect import CellResult, GridResults
from bench.reporting.worst_case import align, example_index, has_per_example, judged, values

MIN_NORM_KEY = "min_norm"  # what a minimum-norm attack's report holds per example (attacks/min_norm.py)


def is_min_norm(cell: CellResult) -> bool:
    """A done record of a minimum-norm attack with per-example sizes and judgements."""
    if not has_per_example(cell) or "perturbation" not in (cell.record.get("per_example") or {}):
        return False
    reports = cell.record.get("attack_report")
    return isinstance(reports, list) and bool(reports) and all(
        isinstance(report, dict) and MIN_NORM_KEY in report for report in reports)


def sizes(cell: CellResult, index: list[int]) -> list[float]:
    where = {example: p for p, example in enumerate(example_index(cell))}
    perturbation = cell.record["per_example"]["perturbation"]
    return [float(perturbation[where[i]]) for i in index]


def _columns(cell: CellResult, index: list[int]) -> list[tuple[float, float, float]]:
    """Per example: (judgement of its point, clean judgement, size of its point)."""
    robust, clean = judged(cell, index), values(cell, index, "clean_correct") or judged(cell, index)
    return list(zip(robust, clean, sizes(cell, index), strict=True))


def _at(columns: list[tuple[float, float, float]], radius: float) -> list[float]:
    return [robust if within_budget(size, radius) else clean for robust, clean, size in columns]


def curve_values(cell: CellResult, index: list[int], radius: float) -> list[float]:
    """Per example (at the test examples `index`), the curve's judgement at `radius`."""
    return _at(_columns(cell, index), radius)


def radii(cell: CellResult, points: int = 41) -> list[float]:
    """The radii the curve is drawn at: `points` evenly from 0 to the cell's eps, and every example's size."""
    top = float(cell.eps or 0.0)
    grid = [top * i / (points - 1) for i in range(points)]
    found = [s for s in cell.record["per_example"]["perturbation"] if 0 < s <= top]
    return sorted(set(grid) | set(found))


def curve(cell: CellResult) -> list[tuple[float, float]]:
    """(radius, robust accuracy) over `radii(cell)`, on the cell's own examples."""
    index = list(example_index(cell))
    columns = _columns(cell, index)
    return [(r, sum(_at(columns, r)) / len(index)) for r in radii(cell)] if index else []


@dataclass
class Disagreement:
    """A fixed-eps cell against the curve on the examples both have: `broken` of `n` examples the fixed cell broke
    while the curve says they are robust at its eps."""

    fixed: CellResult
    eps: float
    n: int
    broken: int
    curve_acc: float
    fixed_acc: float


def disagreement(curve_cell: CellResult, fixed: CellResult) -> Disagreement | None:
    """None where the cells do not compare: another norm, an eps beyond the curve, no shared example."""
    if fixed is curve_cell or not has_per_example(fixed) or fixed.norm != curve_cell.norm or fixed.eps is None \
            or not 0 <= fixed.eps <= (curve_cell.eps or 0.0) * (1 + 1e-9):
        return None
    used, index, _ = align([curve_cell, fixed])
    if len(used) < 2 or not index:
        return None
    ours, theirs = curve_values(curve_cell, index, fixed.eps), judged(fixed, index)
    broken = sum(1 for a, b in zip(ours, theirs, strict=True) if a == 1.0 and b == 0.0)
    return Disagreement(fixed, fixed.eps, len(index), broken, sum(ours) / len(index), sum(theirs) / len(index))


@dataclass
class MinNormCurve:
    cell: CellResult
    points: list[tuple[float, float]]
    disagreements: list[Disagreement]


def curves(grid: GridResults) -> list[MinNormCurve]:
    """Every minimum-norm cell's curve with its comparisons to the fixed-eps cells of its scenario, defence, seed."""
    found = []
    for cell in grid.cells:
        if not is_min_norm(cell):
            continue
        peers = [c for c in grid.cells if (c.scenario, c.defence, c.seed) == (cell.scenario, cell.defence, cell.seed)
                 and not is_min_norm(c)]
        compared = [d for peer in peers if (d := disagreement(cell, peer)) is not None]
        found.append(MinNormCurve(cell, curve(cell), sorted(compared, key=lambda d: (d.eps, d.fixed.attack))))
    return found
