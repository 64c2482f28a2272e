"""Fill a paper layout from a grid's cells and put the papers' numbers beside the measured ones.

Rows: one per scenario (and seed, when a grid has several; and variant, for variant layouts) that has at
least one attacked cell in the layout, each followed by the paper row(s) with the same setting (dataset,
classifier architecture and threat model) and the difference (measured - paper, and whether the paper's value
lies in the measured 95% interval). The papers' rows that no scenario of the grid matches go into a separate
paper-reference table, never between measured rows. Every measured number says its n and carries its cells'
attack budgets as the HTML cell's hover text.
A slot without a result says why: 'not in grid', 'ambiguous (...)', 'missing', 'partial (...)', 'failed'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench.reporting import fmt
from bench.reporting.collect import CellResult, GridResults
from bench.reporting.layouts import Column, Layout
from bench.reporting.paper_numbers import PaperRow, PaperTable, row_matches
from bench.reporting.tables import Table
from bench.reporting.worst_case import combine

NOT_IN_GRID = "not in grid"
_STATUS_ORDER = ("failed", "partial", "missing")


@dataclass
class Slot:
    status: str
    value: float | None = None
    ci: tuple[float, float] | None = None
    n: int | None = None
    cells: list[CellResult] = field(default_factory=list)
    note: str = ""

    def text(self) -> str:
        if self.status == "done":
            text = fmt.accuracy_ci(self.value, self.ci, self.n)
            return f"{text} ({self.note})" if self.note else text
        if self.status == "failed":
            return "failed"
        if self.status in ("partial", "ambiguous"):
            return f"{self.status} ({self.note})"
        return self.status


@dataclass
class MeasuredRow:
    scenario: str
    seed: int
    variant: str | None
    label: str
    slots: dict[str, Slot]
    paper_rows: list[PaperRow]


# --- matching cells to slots ---------------------------------------------------------------------------

def _value_matches(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, list):
        return any(_value_matches(actual, w) for w in wanted)
    if isinstance(wanted, bool) or isinstance(actual, bool):
        return isinstance(actual, bool) and isinstance(wanted, bool) and actual == wanted
    if fmt.is_number(wanted) and fmt.is_number(actual):
        return math.isclose(float(actual), float(wanted), rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(wanted, str) and isinstance(actual, str):
        return actual.lower() == wanted.lower()
    return actual == wanted


def defence_matches(selector: dict[str, Any], cell: CellResult) -> bool:
    for name, wanted in selector.items():
        if name == "key":
            actual = cell.defence
        elif name == "name":
            actual = cell.defence_name
        elif name in cell.defence_params:
            actual = cell.defence_params[name]
        else:
            return False
        if not _value_matches(actual, wanted):
            return False
    return True


def attack_matches(selector: dict[str, Any], cell: CellResult) -> bool:
    for name, wanted in selector.items():
        if name == "key":
            actual = cell.attack
        elif name == "name":
            actual = cell.attack_name
        elif name == "target":
            actual = cell.target
        elif name in cell.attack_params:
            actual = cell.attack_params[name]
        else:
            return False
        if not _value_matches(actual, wanted):
            return False
    return True


def threat_of(layout: Layout, grid: GridResults, scenario: str) -> tuple[str | None, float | None]:
    if layout.norm is not None:
        return layout.norm, layout.eps
    info = grid.scenario_info(scenario)
    if info.get("norm") is not None:
        return info["norm"], info.get("eps")
    attacked = [c for c in grid.cells if c.scenario == scenario and c.eps is not None]
    return (attacked[0].norm, attacked[0].eps) if attacked else (None, None)


def _at_threat(cell: CellResult, threat: tuple[str | None, float | None]) -> bool:
    norm, eps = threat
    return norm is None or (cell.norm == norm and cell.eps is not None and math.isclose(cell.eps, eps, abs_tol=1e-6))


def _not_done(cells: list[CellResult]) -> Slot:
    for status in _STATUS_ORDER:
        chosen = [c for c in cells if c.status == status]
        if chosen:
            note = chosen[0].status_text().split("(", 1)[-1].rstrip(")") if status == "partial" else ""
            return Slot(status, cells=chosen, note=note)
    return Slot("missing", cells=cells)


def _from_record(cell: CellResult, prefix: str) -> Slot:
    record = cell.record
    return Slot("done", record[f"{prefix}_acc"], tuple(record[f"{prefix}_ci"]), int(record["n_examples"]), [cell])


def resolve(column: Column, defence: dict[str, Any] | None, cells: list[CellResult],
            threat: tuple[str | None, float | None]) -> Slot:
    """The slot of `column` among one scenario's and seed's `cells`."""
    if defence is None:
        return Slot(NOT_IN_GRID)
    mine = [c for c in cells if defence_matches(defence, c)]
    keys = list(dict.fromkeys(c.defence for c in mine))
    if not keys:
        return Slot(NOT_IN_GRID)
    if len(keys) > 1:
        return Slot("ambiguous", note=", ".join(keys))
    if column.attack is not None:
        mine = [c for c in mine if attack_matches(column.attack, c)]
    if column.metric != "clean" and not column.explicit_attack:
        mine = [c for c in mine if _at_threat(c, threat)]
    if not mine:
        return Slot(NOT_IN_GRID)
    if column.metric == "worst":
        return _worst(mine)
    attack_keys = list(dict.fromkeys(c.attack for c in mine))
    if column.metric == "robust" and len(attack_keys) > 1:
        return _loss_partners(mine) or Slot("ambiguous", note=", ".join(attack_keys))
    done = [c for c in mine if c.done]
    if not done:
        return _not_done(mine)
    if column.metric == "robust":
        return _from_record(max(done, key=lambda c: c.n), "robust")
    # clean accuracy: prefer a record at the threat model, then the most draws, then plan order
    ranked = sorted(done, key=lambda c: (not _at_threat(c, threat), -int(c.record.get("draws") or 1)))
    return _from_record(ranked[0], "clean")


def _loss_partners(cells: list[CellResult]) -> Slot | None:
    """Cells of one attack that differ only in `loss`: the paper's setting (CE, or no loss given) fills the slot
    and the other losses' accuracies are named beside it; None when the cells differ in anything else."""
    def rest(cell: CellResult) -> tuple:
        return (cell.defence, tuple(sorted((k, repr(v)) for k, v in cell.attack_params.items() if k != "loss")))

    if len({rest(c) for c in cells}) != 1:
        return None
    paper = [c for c in cells if str(c.attack_params.get("loss", "ce")).lower() == "ce"]
    if len(paper) != 1:
        return None
    slot = _from_record(paper[0], "robust") if paper[0].done else _not_done(paper)
    others = [f"{c.attack_params.get('loss')}: {fmt.accuracy(c.record['robust_acc']) if c.done else c.status}"
              for c in cells if c is not paper[0]]
    slot.note, slot.cells = "paper's loss, CE; " + ", ".join(others), cells
    return slot


def _worst(cells: list[CellResult]) -> Slot:
    worst = combine(cells)
    if not worst.n:
        return _not_done(cells)
    left_out = len(worst.not_done) + len(worst.other_subset)
    note = f"{len(worst.attacks)} of {len(worst.attacks) + left_out} attacks" if left_out else ""
    return Slot("done", worst.acc, worst.ci, worst.n, [c for c in cells if c.attack in worst.attacks], note)


# --- rows ------------------------------------------------------------------------------------------------

def _paper_rows_for(layout: Layout, papers: dict[str, PaperTable], grid: GridResults, scenario: str,
                    variant: str | None) -> tuple[list[PaperRow], str]:
    tables = [papers[t] for t in layout.paper_tables if t in papers]
    info = dict(grid.scenario_info(scenario))
    if layout.norm is not None:
        info.update(norm=layout.norm, eps=layout.eps)
    if scenario in layout.paper_rows:
        named = layout.paper_rows[scenario]
        rows = [r for t in tables for r in t.rows.values() if (r.id in named or r.ref in named)
                and (variant is None or r.id == variant)]
        unknown = [n for n in named if not any(n in (r.id, r.ref) for t in tables for r in t.rows.values())]
        other = [r.ref for r in rows if not row_matches(r.match, info)]
        notes = []
        if unknown:
            notes.append(f"paper row(s) {unknown} named in report.{layout.name}.paper_rows do not exist")
        if other:
            notes.append(f"paper row(s) {other} named in report.{layout.name}.paper_rows have another dataset, "
                         "architecture or threat model, so they are shown apart, not beside the measured row")
        return [r for r in rows if r.ref not in other], f"{scenario}: " + "; ".join(notes) if notes else ""
    candidates = [r for t in tables for r in t.rows.values() if (variant is None or r.id == variant)
                  and row_matches(r.match, info)]
    if len(candidates) > 1:
        refs = ", ".join(r.ref for r in candidates)
        return [], (f"{scenario}: several paper rows have this setting ({refs}); name one in "
                    f"report.{layout.name}.paper_rows")
    return candidates, ""


def measured_rows(layout: Layout, grid: GridResults, papers: dict[str, PaperTable]) -> tuple[list[MeasuredRow],
                                                                                              list[str]]:
    rows, notes = [], []
    for scenario in grid.scenarios():
        seeds = grid.seeds(scenario)
        threat = threat_of(layout, grid, scenario)
        for seed in seeds:
            cells = [c for c in grid.cells if c.scenario == scenario and c.seed == seed]
            base = scenario if len(seeds) == 1 else f"{scenario} (seed {seed})"
            for variant in layout.variants or (None,):
                slots = {column.label: resolve(column, column.defence or (variant.defence if variant else None),
                                               cells, threat) for column in layout.columns}
                attacked = [slots[c.label] for c in layout.columns if c.metric == "robust"]
                if all(s.status == NOT_IN_GRID for s in attacked or slots.values()):
                    continue  # a row needs one of the layout's attacks: clean or worst case alone do not place it
                paper_rows, note = _paper_rows_for(layout, papers, grid, scenario, variant.id if variant else None)
                if note and note not in notes:
                    notes.append(note)
                label = f"{base} · {variant.label}" if variant else base
                rows.append(MeasuredRow(scenario, seed, variant.id if variant else None, label, slots, paper_rows))
    return rows, notes


# --- rendering --------------------------------------------------------------------------------------------

def _paper_value(row: PaperRow, column: Column):
    return row.values.get(column.paper) if column.paper else None


def _difference(slot: Slot, row: PaperRow, column: Column) -> str:
    reported = _paper_value(row, column)
    if reported is None or slot.status != "done" or slot.value is None:
        return fmt.MISSING
    return reported.difference(slot.value, slot.ci)


def _describe(selector: dict[str, Any] | None) -> str:
    shown = {k: " or ".join(map(str, v)) if isinstance(v, list) else v for k, v in selector.items()}
    return "{" + ", ".join(f"{k}: {v}" for k, v in shown.items()) + "}"


def _column_note(column: Column, rows: list[MeasuredRow]) -> str:
    used = list(dict.fromkeys(f"{c.defence} × {c.attack}" if column.metric == "robust" else c.defence
                              for row in rows for c in row.slots[column.label].cells))
    what = {"clean": "clean accuracy of", "robust": "robust accuracy of",
            "worst": "per-example worst case over every attack (at this threat model) of"}[column.metric]
    if used:
        return f"{column.label}: {what} {', '.join(used)}"
    wanted = "the row's defence" if column.defence is None else f"defence {_describe(column.defence)}"
    wanted += f", attack {_describe(column.attack)}" if column.attack else ""
    return f"{column.label}: {what} a cell this grid does not have ({wanted})"


@dataclass
class LayoutTables:
    """A layout filled from the grid (measured rows, each with the paper rows of its own setting only), the
    papers' rows that no measured row matches as a separate reference table, and the tidy data."""

    measured: Table
    reference: Table | None
    tidy: pd.DataFrame
    has_cells: bool


def _slot_tip(slot: Slot) -> str:
    return "\n".join(c.budget for c in slot.cells) if slot.cells else ""


def build(layout: Layout, grid: GridResults, papers: dict[str, PaperTable]) -> LayoutTables:
    """The layout's measured table, its paper-reference table (None if every paper row is matched) and tidy data."""
    rows, match_notes = measured_rows(layout, grid, papers)
    labels = [c.label for c in layout.columns]
    table_rows: list[list[str]] = []
    starts: list[int] = []
    tips: dict[tuple[int, int], str] = {}
    tidy: list[dict[str, Any]] = []
    shown: set[str] = set()
    for row in rows:
        starts.append(len(table_rows))
        for column, label in enumerate(labels, start=2):
            if _slot_tip(row.slots[label]):
                tips[(len(table_rows), column)] = _slot_tip(row.slots[label])
        table_rows.append([row.label, "measured", *(row.slots[c].text() for c in labels)])
        for paper_row in row.paper_rows:
            shown.add(paper_row.ref)
            table_rows.append([paper_row.label, f"paper: {paper_row.source}",
                               *(_paper_text(paper_row, c) for c in layout.columns)])
            table_rows.append(["", "measured − paper", *(_difference(row.slots[c.label], paper_row, c)
                                                         for c in layout.columns)])
        tidy += _tidy_rows(layout, row)
    unmatched = [r for t in layout.paper_tables if t in papers for r in papers[t].rows.values() if r.ref not in shown]
    for paper_row in unmatched:
        tidy += _tidy_paper_only(layout, paper_row)
    notes = _notes(layout, grid, papers, rows, match_notes)
    if unmatched:
        notes.append("The papers' rows for other settings (dataset, architecture or threat model) are in the "
                     "separate paper-reference table below, not beside these measured rows.")
    table = Table(title=layout.title, columns=["setting", "line", *labels], rows=table_rows, notes=notes,
                  group_starts=starts, label=layout.name, left_columns=2, tooltips=tips)
    frame = pd.DataFrame(tidy, columns=TIDY_COLUMNS).astype({"seed": "Int64", "n": "Int64"})
    return LayoutTables(table, reference_table(layout, papers, unmatched), frame, bool(rows))


def reference_table(layout: Layout, papers: dict[str, PaperTable], rows: list[PaperRow]) -> Table | None:
    """The papers' rows that no measured row of this grid matches: their numbers only, clearly apart."""
    columns = [c for c in layout.columns if c.paper]
    if not rows or not columns:
        return None
    body = [[r.label, r.source, *(_paper_text(r, c) for c in columns)] for r in rows]
    notes = ["Paper reference only: these settings differ from every scenario of this grid (dataset, classifier "
             "architecture or threat model), so no measured number is compared with them."]
    notes += [f"Paper: {papers[t].source}: {papers[t].caption}" for t in layout.paper_tables if t in papers]
    return Table(f"Paper reference (not comparable with this grid's rows): {layout.title.split(' layout')[0]}",
                 ["paper setting", "source", *(c.label for c in columns)], body, notes=notes,
                 label=f"{layout.name}-paper", left_columns=2)


def _paper_text(row: PaperRow, column: Column) -> str:
    reported = _paper_value(row, column)
    return reported.text if reported is not None else fmt.MISSING


def _notes(layout: Layout, grid: GridResults, papers: dict[str, PaperTable], rows: list[MeasuredRow],
           match_notes: list[str]) -> list[str]:
    notes = []
    for table_id in layout.paper_tables:
        if table_id in papers:
            table = papers[table_id]
            size = f" (n={table.n_examples})" if table.n_examples else ""
            notes.append(f"Paper: {table.source}{size}: {table.caption}".rstrip(": "))
    notes.append("Measured: accuracy [95% Wilson interval] n=examples; for stochastic defences the headline "
                 "decision over K draws (see the cells table). Differences: measured - paper, and whether the "
                 "paper's value lies in the measured interval.")
    if layout.note:
        notes.append(layout.note)
    notes += [_column_note(c, rows) for c in layout.columns]
    if not rows:
        notes.append(f"No cell of grid {grid.name} fills this layout.")
    for scenario in dict.fromkeys(r.scenario for r in rows if not r.paper_rows):
        if not any(scenario in n for n in match_notes):
            info = grid.scenario_info(scenario)
            setting = ", ".join(f"{k} {fmt.eps(v) if k == 'eps' else v}" for k, v in info.items()
                                if k in ("dataset", "norm", "eps", "arch") and v is not None)
            notes.append(f"{scenario}: no paper row has this setting ({setting})")
    return notes + match_notes


TIDY_COLUMNS = ["layout", "setting", "scenario", "seed", "variant", "column", "status", "value", "ci_low",
                "ci_high", "n", "defences", "attacks", "record_keys", "paper_source", "paper_row", "paper_relation",
                "paper_value", "difference"]


def _tidy_rows(layout: Layout, row: MeasuredRow) -> list[dict[str, Any]]:
    out = []
    for column in layout.columns:
        slot = row.slots[column.label]
        base = {"layout": layout.name, "setting": row.label, "scenario": row.scenario, "seed": row.seed,
                "variant": row.variant, "column": column.label, "status": slot.status, "value": slot.value,
                "ci_low": slot.ci[0] if slot.ci else None, "ci_high": slot.ci[1] if slot.ci else None, "n": slot.n,
                "defences": " ".join(dict.fromkeys(c.defence for c in slot.cells)),
                "attacks": " ".join(dict.fromkeys(c.attack for c in slot.cells)),
                "record_keys": " ".join(c.key for c in slot.cells if c.done)}
        papers = [(r, _paper_value(r, column)) for r in row.paper_rows] or [(None, None)]
        for paper_row, reported in papers:
            difference = None
            if reported is not None and slot.value is not None and reported.relation != "<":
                difference = slot.value - reported.value
            out.append({**base, "paper_source": paper_row.source if paper_row else None,
                        "paper_row": paper_row.ref if paper_row else None,
                        "paper_relation": reported.relation if reported else None,
                        "paper_value": reported.value if reported else None, "difference": difference})
    return out


def _tidy_paper_only(layout: Layout, row: PaperRow) -> list[dict[str, Any]]:
    out = []
    for column in layout.columns:
        reported = _paper_value(row, column)
        if reported is None:
            continue
        out.append({"layout": layout.name, "setting": row.label, "column": column.label, "status": NOT_IN_GRID,
                    "paper_source": row.source, "paper_row": row.ref, "paper_relation": reported.relation,
                    "paper_value": reported.value})
    return out
