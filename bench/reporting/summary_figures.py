"""The headline figures: what each naive setting overstates, paired differences between defences, and the
spread of the worst case across seeds. Each is drawn only from measured data, with its 95% intervals.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bench.reporting.comparisons import DefencePair  # noqa: E402
from bench.reporting.figures import FigureFile, save  # noqa: E402
from bench.reporting.headline import NAIVE_SETTINGS, Headline  # noqa: E402

COLOURS = {setting: f"C{number}" for number, setting in enumerate(NAIVE_SETTINGS)}


def _bars(ax: plt.Axes, labels: list[str], values: list[float], intervals: list[tuple[float, float]],
          colours: list[str]) -> None:
    positions = np.arange(len(labels))[::-1]
    errors = np.array([[v - lo for v, (lo, _) in zip(values, intervals, strict=True)],
                       [hi - v for v, (_, hi) in zip(values, intervals, strict=True)]])
    ax.barh(positions, values, color=colours, alpha=0.8)
    ax.errorbar(values, positions, xerr=errors, fmt="none", ecolor="black", capsize=3, linewidth=1)
    ax.set_yticks(positions, labels, fontsize=8)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.grid(axis="x", alpha=0.3)


def overstatement(items: list[Headline], folder: Path) -> FigureFile:
    figure = FigureFile("overstatement", "What naive evaluation overstates",
                        "Per defence, each naive setting's accuracy minus the per-example worst case over all its "
                        "attacks, on the same examples, with Newcombe's paired 95% intervals. 0: the naive setting "
                        "already finds the worst case.")
    bars = [(f"{i.worst.scenario}/{i.defence}" + (f" s{i.worst.seed}" if len({j.worst.seed for j in items}) > 1
                                                     else "") + f": {o.setting}", o)
            for i in items for o in i.overstatements]
    if not bars:
        figure.reason = "no defence has a cell in a naive setting (classifier-only, CE-only, single-pass, BPDA)"
        return figure
    fig, ax = plt.subplots(figsize=(8.5, 0.38 * len(bars) + 1.4))
    _bars(ax, [label for label, _ in bars], [o.comparison.difference for _, o in bars],
          [o.comparison.ci for _, o in bars], [COLOURS[o.setting] for _, o in bars])
    ax.set_xlabel("naive accuracy − worst-case accuracy (higher: more overstated)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.8) for c in COLOURS.values()]
    ax.legend(handles, list(COLOURS), fontsize=7, loc="lower right")
    figure.png, figure.pdf = save(fig, folder, figure.name)
    return figure


def paired_differences(pairs: list[DefencePair], folder: Path) -> FigureFile:
    figure = FigureFile("paired_differences", "Paired differences between defences",
                        "Worst-case accuracy of defence A minus defence B on the test examples both were evaluated "
                        "on, with Newcombe's paired 95% intervals. Green: A is more robust, red: B is, grey: the "
                        "interval includes 0 (no difference shown at this n).")
    worst = [p for p in pairs if p.what == "worst case"]
    if not worst:
        figure.reason = "no two defences share test examples"
        return figure
    fig, ax = plt.subplots(figsize=(8.5, 0.38 * len(worst) + 1.4))
    labels = [f"{p.scenario}: {p.first} − {p.second} (n={p.comparison.n})" for p in worst]
    colours = ["C2" if p.comparison.ci[0] > 0 else "C3" if p.comparison.ci[1] < 0 else "C7" for p in worst]
    _bars(ax, labels, [p.comparison.difference for p in worst], [p.comparison.ci for p in worst], colours)
    ax.set_xlabel("worst-case accuracy difference A − B")
    ax.set_xlim(-1.05, 1.05)
    figure.png, figure.pdf = save(fig, folder, figure.name)
    return figure


def seed_spread(items: list[Headline], folder: Path) -> FigureFile:
    figure = FigureFile("seed_spread", "Worst case across seeds",
                        "Each seed's per-example worst case (dots, with 95% intervals) and their mean (bar), per "
                        "scenario and defence.")
    groups: dict[str, list[Headline]] = {}
    for item in items:
        if item.worst.n:
            groups.setdefault(f"{item.worst.scenario}/{item.defence}", []).append(item)
    groups = {label: members for label, members in groups.items() if len(members) > 1}
    if not groups:
        figure.reason = "no defence was evaluated with several seeds"
        return figure
    fig, ax = plt.subplots(figsize=(1.2 * len(groups) + 3, 3.8))
    for x, members in enumerate(groups.values()):
        accs = [m.worst.acc for m in members]
        ax.bar(x, float(np.mean(accs)), color="C0", alpha=0.3, width=0.6)
        offsets = np.linspace(-0.2, 0.2, len(members))
        for offset, member in zip(offsets, members, strict=True):
            low, high = member.worst.ci
            ax.errorbar(x + offset, member.worst.acc, yerr=[[member.worst.acc - low], [high - member.worst.acc]],
                        fmt="o", color="C0", capsize=2, markersize=4)
    ax.set_xticks(range(len(groups)), list(groups), rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="worst-case accuracy", ylim=(-0.02, 1.02))
    ax.grid(axis="y", alpha=0.3)
    figure.png, figure.pdf = save(fig, folder, figure.name)
    return figure
