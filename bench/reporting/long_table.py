"""The long table: every planned cell (done, failed, partial or missing) and the per-example worst cases.

Rows follow the plan's order, grouped by (scenario, seed, defence); after each group's cells comes one
worst-case row per threat model at which the defence has two or more attacks.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.reporting import fmt
from bench.reporting.collect import CellResult, GridResults
from bench.reporting.tables import Table
from bench.reporting.worst_case import WorstCase, group_key, worst_cases

CSV_COLUMNS = [
    "row", "key", "block", "scenario", "defence", "defence_name", "attack", "attack_name", "target", "norm", "eps",
    "seed", "n", "draws", "decision", "status", "error", "clean_acc", "clean_ci_low", "clean_ci_high", "robust_acc",
    "robust_ci_low", "robust_ci_high", "robust_acc_single", "robust_acc_majority", "robust_acc_worst",
    "robust_acc_all_draws", "attack_seconds", "wall_seconds", "forward_examples", "backward_examples",
    "attacks_included", "attacks_not_included",
]
HEADER = ["scenario", "defence", "attack", "target", "threat", "seed", "n", "draws", "clean [95% CI]",
          "robust [95% CI]", "robust single / majority / worst-of-K", "status", "time (s)"]


def _threat(norm: str | None, eps: float | None) -> str:
    return f"{norm} {fmt.eps(eps)}" if norm else fmt.MISSING


def _cell_data(cell: CellResult) -> dict[str, Any]:
    record = cell.record or {}
    done = cell.done
    clean_ci = record.get("clean_ci") if done else None
    robust_ci = record.get("robust_ci") if done else None
    counts = record.get("counts") or {}
    return {
        "row": "cell", "key": cell.key, "block": cell.block, "scenario": cell.scenario, "defence": cell.defence,
        "defence_name": cell.defence_name, "attack": cell.attack, "attack_name": cell.attack_name,
        "target": cell.target, "norm": cell.norm, "eps": cell.eps, "seed": cell.seed, "n": cell.n,
        "draws": record.get("draws") if done else None, "decision": record.get("decision") if done else None,
        "status": cell.status, "error": cell.error_line() if cell.status == "failed" else None,
        "clean_acc": record.get("clean_acc") if done else None,
        "clean_ci_low": clean_ci[0] if clean_ci else None, "clean_ci_high": clean_ci[1] if clean_ci else None,
        "robust_acc": record.get("robust_acc") if done else None,
        "robust_ci_low": robust_ci[0] if robust_ci else None, "robust_ci_high": robust_ci[1] if robust_ci else None,
        "robust_acc_single": record.get("robust_acc_single") if done else None,
        "robust_acc_majority": record.get("robust_acc_majority") if done else None,
        "robust_acc_worst": record.get("robust_acc_worst") if done else None,
        "robust_acc_all_draws": None,
        "attack_seconds": record.get("attack_seconds") if done else None,
        "wall_seconds": record.get("wall_seconds"),
        "forward_examples": counts.get("forward_examples"), "backward_examples": counts.get("backward_examples"),
        "attacks_included": None, "attacks_not_included": None,
    }


def _worst_data(worst: WorstCase) -> dict[str, Any]:
    ci = worst.ci
    return {
        "row": "worst_case", "scenario": worst.scenario, "defence": worst.defence, "attack": "worst case",
        "norm": worst.norm, "eps": worst.eps, "seed": worst.seed, "n": worst.n or None,
        "status": "done" if worst.n else "missing", "robust_acc": worst.acc,
        "robust_ci_low": ci[0] if ci else None, "robust_ci_high": ci[1] if ci else None,
        "robust_acc_all_draws": worst.acc_all_draws, "attacks_included": " ".join(worst.attacks),
        "attacks_not_included": " ".join(worst.not_done + worst.other_subset),
    }


def _cell_row(cell: CellResult) -> list[str]:
    record = cell.record or {}
    done = cell.done
    draws = int(record.get("draws") or 1) if done else None
    rules = fmt.MISSING
    if done and draws and draws > 1:
        rules = " / ".join(fmt.accuracy(record.get(f"robust_acc_{rule}")) for rule in ("single", "majority", "worst"))
    return [cell.scenario, cell.defence, cell.attack, cell.target, _threat(cell.norm, cell.eps), str(cell.seed),
            str(cell.n), str(draws) if draws else fmt.MISSING,
            fmt.accuracy_ci(record.get("clean_acc"), record.get("clean_ci")) if done else fmt.MISSING,
            fmt.accuracy_ci(record.get("robust_acc"), record.get("robust_ci")) if done else fmt.MISSING,
            rules, cell.status_text(), fmt.seconds(record.get("wall_seconds"))]


def _worst_row(worst: WorstCase, stochastic: bool) -> list[str]:
    all_draws = f"all draws: {fmt.accuracy(worst.acc_all_draws)}" if stochastic and worst.n else fmt.MISSING
    return [worst.scenario, worst.defence, "worst case", fmt.MISSING, _threat(worst.norm, worst.eps),
            str(worst.seed), str(worst.n) if worst.n else fmt.MISSING, fmt.MISSING, fmt.MISSING,
            fmt.accuracy_ci(worst.acc, worst.ci), all_draws, worst.coverage_note(), fmt.MISSING]


def build(grid: GridResults) -> tuple[Table, pd.DataFrame]:
    """The long table as a Table (Markdown / LaTeX / HTML) and as a DataFrame (CSV)."""
    groups: dict[tuple, list[CellResult]] = {}
    for cell in grid.cells:
        groups.setdefault((cell.scenario, cell.seed, cell.defence), []).append(cell)
    worst_by_group = {(w.scenario, w.seed, w.defence, w.norm, None if w.eps is None else round(w.eps, 10)): w
                      for w in worst_cases(grid.cells)}
    rows, data, starts, tips = [], [], [], {}
    for (scenario, seed, defence), cells in groups.items():
        starts.append(len(rows))
        for cell in cells:
            tips[(len(rows), 2)] = tips[(len(rows), 9)] = cell.budget
            rows.append(_cell_row(cell))
            data.append(_cell_data(cell))
        for threat_key in dict.fromkeys(group_key(c)[3:] for c in cells):
            worst = worst_by_group.get((scenario, seed, defence, *threat_key))
            if worst is not None:
                tips[(len(rows), 9)] = "\n".join(c.budget for c in worst.cells)
                stochastic = any(int((c.record or {}).get("draws") or 1) > 1 for c in cells if c.done)
                rows.append(_worst_row(worst, stochastic))
                data.append(_worst_data(worst))
    counts = grid.counts()
    notes = [f"{len(grid.cells)} cells: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v),
             "clean / robust: the headline decision (single draw for deterministic defences) with its 95% Wilson "
             "interval; single / majority / worst-of-K: the three decisions over K draws (stochastic defences).",
             "worst case: per example, the minimum over the defence's attacks at that threat model (the AND for "
             "0/1 correctness), on the test examples the records share."]
    if grid.stray_records:
        notes.append(f"{len(grid.stray_records)} record(s) in cells/ belong to no cell of the current plan and "
                     "are not shown.")
    table = Table(title=f"Grid {grid.name}: every cell", columns=HEADER, rows=rows, notes=notes,
                  group_starts=starts, label="cells", left_columns=6, tooltips=tips)
    integers = {name: "Int64" for name in ("seed", "n", "draws", "forward_examples", "backward_examples")}
    return table, pd.DataFrame(data, columns=CSV_COLUMNS).astype(integers)
