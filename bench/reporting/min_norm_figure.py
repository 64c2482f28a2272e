"""The report's minimum-norm section: each minimum-norm cell's curve (robust accuracy against eps) drawn per
scenario and norm, the fixed-eps cells of the same defence as points on it, and a table of every comparison with
the count of examples a fixed-eps attack broke where the curve says robust (bench.reporting.min_norm_curve)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.reporting import fmt  # noqa: E402
from bench.reporting.figures import FigureFile, save  # noqa: E402
from bench.reporting.min_norm_curve import MinNormCurve  # noqa: E402
from bench.reporting.tables import Table  # noqa: E402


def _label(item: MinNormCurve, many_seeds: bool) -> str:
    cell = item.cell
    return f"{cell.defence}/{cell.attack}" + (f" (seed {cell.seed})" if many_seeds else "")


def _draw(ax: plt.Axes, items: list[MinNormCurve], many_seeds: bool) -> None:
    for number, item in enumerate(items):
        colour = f"C{number % 10}"
        xs, ys = [p[0] for p in item.points], [p[1] for p in item.points]
        ax.step(xs, ys, where="post", color=colour, label=_label(item, many_seeds))
        for found in item.disagreements:
            weak = found.broken > 0
            ax.plot([found.eps], [found.fixed_acc], marker="x" if weak else "o", color=colour,
                    markersize=8 if weak else 5, linestyle="none")
            text = f"{found.fixed.attack}: {found.broken} weak" if weak else found.fixed.attack
            ax.annotate(text, (found.eps, found.fixed_acc), fontsize=7, color=colour, xytext=(4, -10),
                        textcoords="offset points")


def curve_figure(items: list[MinNormCurve], folder: Path) -> FigureFile:
    figure = FigureFile("min_norm_curves", "Minimum-norm robustness curves",
                        "Robust accuracy against eps from each minimum-norm cell (an example is broken at eps once "
                        "its smallest adversarial point found, judged by the record's K draws, is within eps); "
                        "dots: the fixed-eps cells of the same defence on the same examples; crosses ('N weak'): "
                        "a fixed-eps attack broke N examples the curve says are robust there.")
    if not items:
        figure.reason = "the grid has no finished minimum-norm cell (attack fmn)"
        return figure
    panels: dict[tuple[str, str], list[MinNormCurve]] = {}
    for item in items:
        panels.setdefault((item.cell.scenario, str(item.cell.norm)), []).append(item)
    many_seeds = len({item.cell.seed for item in items}) > 1
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, ((scenario, norm), members) in zip(axes[0], panels.items(), strict=True):
        _draw(ax, members, many_seeds)
        ax.set(title=f"{scenario} ({norm})", xlabel=f"eps ({norm})", ylabel="robust accuracy", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.png, figure.pdf = save(fig, folder, figure.name)
    return figure


COLUMNS = ["scenario", "defence", "seed", "curve", "fixed-eps attack", "eps", "n", "curve at eps",
           "fixed-eps attack at eps", "broken by the fixed-eps attack, robust on the curve"]


def comparison_table(items: list[MinNormCurve]) -> Table | None:
    """One row per (curve, fixed-eps cell) comparison; None where the grid has no minimum-norm cell."""
    if not items:
        return None
    rows, tips = [], {}
    for item in items:
        for found in item.disagreements:
            tips[(len(rows), 3)], tips[(len(rows), 4)] = item.cell.budget, found.fixed.budget
            rows.append([item.cell.scenario, item.cell.defence, str(item.cell.seed), item.cell.attack,
                         found.fixed.attack, fmt.eps(found.eps), str(found.n), fmt.accuracy(found.curve_acc),
                         fmt.accuracy(found.fixed_acc), f"{found.broken} of {found.n}"])
    notes = ["curve at eps: robust accuracy from the minimum-norm cell at that eps, on the examples both cells have; "
             "an example is broken there when its smallest adversarial point found is within eps and the record's "
             "K draws judge it broken (the record's decision rule).",
             "broken by the fixed-eps attack, robust on the curve: examples the fixed-eps cell judges wrong (0) "
             "where the curve judges them right (1) at the same eps; more than 0 shows the minimum-norm attack is "
             "weak at that eps (its curve overstates the robust accuracy there)."]
    if not rows:
        notes.append("No fixed-eps cell of the same scenario, defence, seed and norm lies within a curve's range.")
    return Table("Minimum-norm curves against fixed-eps cells", COLUMNS, rows, notes=notes, label="min_norm",
                 left_columns=5, tooltips=tips)
