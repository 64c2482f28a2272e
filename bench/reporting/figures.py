"""Figures from records and diagnostics (matplotlib, Agg), each saved as PNG and PDF.

- robust_vs_eps: per scenario and norm, each defence's accuracy against eps: the clean accuracy at eps 0
  and the per-example worst case over its attacks at every eps the grid has, with 95% intervals, drawn only
  for defences measured at three or more eps (two points make a straight line that says nothing about the
  curve); the diagnostics' eps sweeps dashed; chance (1 / classes) dotted.
- heatmap: (scenario, defence, seed) x (clean, every attack, worst case) robust accuracy; missing and failed
  cells are drawn and labelled as such.
- robust_vs_steps / robust_vs_eot: accuracy against attack steps and EOT samples, from the diagnostics'
  curves and from records of the same attack that differ only in that setting.
Figures with no data are not drawn; `FigureFile.reason` says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

from bench.reporting import fmt  # noqa: E402
from bench.reporting.collect import CellResult, GridResults  # noqa: E402
from bench.reporting.worst_case import combine, group_key  # noqa: E402

MIN_CURVE_POINTS = 3
SWEEP_SETTINGS = {"steps": ("steps",), "eot": ("eot", "eot_iter", "eot_samples")}


@dataclass
class FigureFile:
    name: str
    title: str
    caption: str
    png: Path | None = None
    pdf: Path | None = None
    reason: str = ""

    @property
    def drawn(self) -> bool:
        return self.png is not None


def save(fig: plt.Figure, folder: Path, name: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    png, pdf = folder / f"{name}.png", folder / f"{name}.pdf"
    fig.savefig(png, dpi=110, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(pdf, bbox_inches="tight", metadata={"CreationDate": None, "Creator": None, "Producer": None})
    plt.close(fig)
    return png, pdf


def _classes(cells: list[CellResult]) -> int | None:
    labels = [label for c in cells if c.done for label in (c.record.get("per_example") or {}).get("label", [])]
    return max(labels) + 1 if labels else None


def _defence_label(cell: CellResult, seeds: list[int]) -> str:
    return cell.defence if len(seeds) == 1 else f"{cell.defence} (seed {cell.seed})"


# --- accuracy against eps ----------------------------------------------------------------------------------

def _eps_points(cells: list[CellResult]) -> list[tuple[float, float, tuple[float, float] | None]]:
    """(eps, accuracy, interval): clean at 0, then the worst case over the attacks at each eps."""
    done = [c for c in cells if c.done]
    if not done:
        return []
    clean_source = max(done, key=lambda c: int(c.record.get("draws") or 1))
    points = [(0.0, clean_source.record["clean_acc"], tuple(clean_source.record["clean_ci"]))]
    by_eps: dict[float, list[CellResult]] = {}
    for cell in cells:
        if cell.eps is not None:
            by_eps.setdefault(round(cell.eps, 10), []).append(cell)
    for eps in sorted(by_eps):
        worst = combine(by_eps[eps])
        if worst.n:
            points.append((eps, worst.acc, worst.ci))
    return points


def robust_vs_eps(grid: GridResults, folder: Path) -> FigureFile:
    figure = FigureFile("robust_vs_eps", "Accuracy against eps",
                        "Clean accuracy at eps 0 and the per-example worst case over each defence's attacks at "
                        "every eps in the grid (95% intervals); dashed: the diagnostics' eps sweeps; dotted: chance.")
    panels: dict[tuple[str, str], dict[str, list]] = {}
    for scenario in grid.scenarios():
        seeds = grid.seeds(scenario)
        cells = [c for c in grid.cells if c.scenario == scenario and c.norm]
        for norm in dict.fromkeys(c.norm for c in cells):
            lines: dict[str, list] = {}
            for cell in cells:
                if cell.norm == norm:
                    lines.setdefault(_defence_label(cell, seeds), []).append(cell)
            points = {label: _eps_points(group) for label, group in lines.items()}
            panels[(scenario, norm)] = {k: v for k, v in points.items() if len(v) >= MIN_CURVE_POINTS}
    curves = _diagnostic_curves(grid, "eps")
    for (scenario, norm), lines in list(panels.items()):
        if not any(points for points in lines.values()) and not any(k[0] == scenario for k in curves):
            del panels[(scenario, norm)]
    if not panels:
        figure.reason = (f"no defence is measured at {MIN_CURVE_POINTS} or more eps values (clean counts as eps 0) "
                         "and no diagnostics eps sweep exists (python -m bench.diagnose)")
        return figure
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, ((scenario, norm), lines) in zip(axes[0], panels.items(), strict=True):
        for index, (label, points) in enumerate(lines.items()):
            if not points:
                continue
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            errors = np.array([[y - (ci or (y, y))[0] for _, y, ci in points],
                               [(ci or (y, y))[1] - y for _, y, ci in points]])
            ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, color=f"C{index % 10}", label=label)
        for index, ((curve_scenario, curve_label), curve) in enumerate(curves.items()):
            if curve_scenario == scenario and curve.get("norm") in (None, norm):
                ax.plot(curve["x"], curve["acc"], linestyle="--", marker=".", color=f"C{(index + 5) % 10}",
                        label=f"{curve_label} (diagnostics)")
        classes = _classes([c for c in grid.cells if c.scenario == scenario])
        if classes:
            ax.axhline(1.0 / classes, color="grey", linestyle=":", linewidth=1, label=f"chance (1/{classes})")
        ax.set(title=f"{scenario} ({norm})", xlabel=f"eps ({norm})", ylabel="accuracy", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.png, figure.pdf = save(fig, folder, figure.name)
    return figure


# --- heatmap -----------------------------------------------------------------------------------------------

def heatmap(grid: GridResults, folder: Path) -> FigureFile:
    figure = FigureFile("heatmap", "Defence x attack robust accuracy",
                        "Robust accuracy of every (scenario, defence, seed) under every attack, with the clean "
                        "accuracy and the per-example worst case; grey cells are missing, failed or partial.")
    if not grid.cells:
        figure.reason = "the grid has no cells"
        return figure
    rows: dict[tuple[str, str, int], list[CellResult]] = {}
    for cell in grid.cells:
        rows.setdefault((cell.scenario, cell.defence, cell.seed), []).append(cell)
    attack_columns = list(dict.fromkeys(c.attack for c in grid.cells))
    columns = ["clean", *attack_columns, "worst case"]
    values = np.full((len(rows), len(columns)), np.nan)
    texts = [[""] * len(columns) for _ in rows]
    many_seeds = len({c.seed for c in grid.cells}) > 1
    labels = []
    for i, ((scenario, defence, seed), cells) in enumerate(rows.items()):
        labels.append(f"{scenario}/{defence}" + (f" (seed {seed})" if many_seeds else ""))
        _fill_heatmap_row(cells, attack_columns, values[i], texts[i])
    fig, ax = plt.subplots(figsize=(1.3 * len(columns) + 2.5, 0.6 * len(rows) + 1.6))
    _draw_heatmap(ax, fig, values, texts, columns, labels)
    ax.set_title(f"grid {grid.name}")
    figure.png, figure.pdf = save(fig, folder, figure.name)
    return figure


def _fill_heatmap_row(cells: list[CellResult], attack_columns: list[str], values: np.ndarray,
                      texts: list[str]) -> None:
    """One heatmap row in place: clean accuracy, each attack's robust accuracy (or status), the worst case."""
    done = [c for c in cells if c.done]
    if done:
        values[0] = done[0].record["clean_acc"]
        texts[0] = f"{values[0]:.2f}"
    for cell in cells:
        j = 1 + attack_columns.index(cell.attack)
        if cell.done:
            values[j] = cell.record["robust_acc"]
            texts[j] = f"{values[j]:.2f}\nn={cell.n}"
        else:
            texts[j] = cell.status
    by_threat: dict[tuple, list[CellResult]] = {}
    for cell in cells:
        by_threat.setdefault(group_key(cell), []).append(cell)
    worst = [combine(group) for group in by_threat.values()]
    worst = [w for w in worst if w.n]
    if len(worst) == 1:
        values[-1] = worst[0].acc
        left_out = len(worst[0].not_done) + len(worst[0].other_subset)
        coverage = f"\n({len(worst[0].attacks)} of {len(worst[0].attacks) + left_out})" if left_out else ""
        texts[-1] = f"{worst[0].acc:.2f}\nn={worst[0].n}{coverage}"
    elif len(worst) > 1:
        texts[-1] = "several eps"


def _draw_heatmap(ax: Any, fig: Any, values: np.ndarray, texts: list[list[str]], columns: list[str],
                  labels: list[str]) -> None:
    ax.imshow(np.ones_like(values), cmap="Greys", vmin=0, vmax=5, aspect="auto")  # grey under empty cells
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            finite = not math.isnan(values[i, j])
            colour = ("white" if values[i, j] < 0.6 else "black") if finite else (
                "darkred" if texts[i][j] == "failed" else "black")
            ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    fig.colorbar(image, ax=ax, label="accuracy")


# --- sweeps: steps and EOT -----------------------------------------------------------------------------------

def _diagnostic_curves(grid: GridResults, kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    curves = {}
    for report in grid.diagnostics:
        curve = (report.get("curves") or {}).get(kind) or {}
        xs, accs = curve.get("x") or [], curve.get("acc") or []
        if len(xs) >= MIN_CURVE_POINTS and len(xs) == len(accs):
            label = f"{report.get('defence', '?')}/{report.get('attack', '?')}"
            curves[(str(report.get("scenario", "?")), label)] = {"x": xs, "acc": accs, "norm": report.get("norm")}
    return curves


def _record_sweeps(grid: GridResults, kind: str) -> dict[tuple[str, str], list[tuple[float, float, Any]]]:
    """Done records of one attack that differ only in the swept setting (steps or EOT samples)."""
    groups: dict[tuple, list[tuple[float, CellResult]]] = {}
    for cell in grid.cells:
        setting = next((s for s in SWEEP_SETTINGS[kind] if s in cell.attack_params), None)
        if not cell.done or setting is None or not fmt.is_number(cell.attack_params[setting]):
            continue
        rest = tuple(sorted((k, repr(v)) for k, v in cell.attack_params.items() if k != setting))
        key = (cell.scenario, cell.defence, cell.seed, cell.attack_name, rest)
        groups.setdefault(key, []).append((float(cell.attack_params[setting]), cell))
    sweeps = {}
    for (scenario, defence, seed, attack_name, _), members in groups.items():
        if len({x for x, _ in members}) >= MIN_CURVE_POINTS:
            members.sort(key=lambda item: item[0])
            label = f"{defence}/{attack_name}" + (f" (seed {seed})" if len(grid.seeds(scenario)) > 1 else "")
            sweeps[(scenario, label)] = [(x, c.record["robust_acc"], c.record["robust_ci"]) for x, c in members]
    return sweeps


def sweep(grid: GridResults, folder: Path, kind: str) -> FigureFile:
    what = {"steps": "attack steps", "eot": "EOT samples"}[kind]
    figure = FigureFile(f"robust_vs_{kind}", f"Accuracy against {what}",
                        f"Robust accuracy against the number of {what}: solid from records of one attack that "
                        f"differ only in {what} (95% intervals), dashed from the diagnostics. A curve still "
                        "falling at its right end means the attack had not converged.")
    records, curves = _record_sweeps(grid, kind), _diagnostic_curves(grid, kind)
    if not records and not curves:
        figure.reason = (f"no diagnostics curve for {what} and no records of one attack at several {what} "
                         f"(run python -m bench.diagnose for a cell)")
        return figure
    scenarios = list(dict.fromkeys([k[0] for k in records] + [k[0] for k in curves]))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5.2 * len(scenarios), 3.8), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        index = 0
        for (curve_scenario, label), points in records.items():
            if curve_scenario == scenario:
                xs, ys = [p[0] for p in points], [p[1] for p in points]
                errors = np.array([[y - ci[0] for _, y, ci in points], [ci[1] - y for _, y, ci in points]])
                ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, color=f"C{index % 10}", label=label)
                index += 1
        for (curve_scenario, label), curve in curves.items():
            if curve_scenario == scenario:
                ax.plot(curve["x"], curve["acc"], linestyle="--", marker=".", color=f"C{index % 10}",
                        label=f"{label} (diagnostics)")
                index += 1
        if all(x > 0 for line in ax.get_lines() for x in np.atleast_1d(line.get_xdata())):
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set(title=scenario, xlabel=what, ylabel="robust accuracy", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.png, figure.pdf = save(fig, folder, figure.name)
    return figure


def render_figures(grid: GridResults, folder: Path) -> list[FigureFile]:
    return [robust_vs_eps(grid, folder), heatmap(grid, folder), sweep(grid, folder, "steps"),
            sweep(grid, folder, "eot")]
