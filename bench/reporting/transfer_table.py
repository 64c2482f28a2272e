"""The transfer table: adversarial examples crafted on one defence (a cell that saved them) and evaluated on
others (the grid's `transfer` cells), source defence by target defence.

Each row is a source cell (scenario/defence/attack, seed); its first value is that cell's own robust accuracy
(the examples judged on the defence they were crafted on), then one column per target defence: the robust
accuracy of the transfer cell evaluating the same examples there, K-draw judged like every cell (95% Wilson
interval, the record's decision rule). Rendered only where a grid has transfer cells.
"""

from __future__ import annotations

from bench.reporting import fmt
from bench.reporting.collect import CellResult, GridResults
from bench.reporting.tables import Table
from bench.transfer import TRANSFER


def _value(cell: CellResult | None) -> str:
    if cell is None:
        return "not in grid"
    if not cell.done:
        return cell.status_text()
    return fmt.accuracy_ci(cell.record["robust_acc"], cell.record.get("robust_ci"))


def transfer_table(grid: GridResults) -> Table | None:
    """Source cells by target defences; None when the grid has no transfer cell."""
    transfers = [c for c in grid.cells if c.attack_name == TRANSFER]
    if not transfers:
        return None
    targets = list(dict.fromkeys(c.defence for c in transfers))
    sources = list(dict.fromkeys((str(c.attack_params.get("source")), c.seed, c.n_examples) for c in transfers))
    by_label = {(f"{c.scenario}/{c.defence}/{c.attack}", c.seed, c.n_examples): c for c in grid.cells
                if c.attack_name != TRANSFER}
    rows = []
    for source, seed, n in sources:
        found = {c.defence: c for c in transfers
                 if (str(c.attack_params.get("source")), c.seed, c.n_examples) == (source, seed, n)}
        rows.append([source, str(seed), str(n), _value(by_label.get((source, seed, n))),
                     *[_value(found.get(target)) for target in targets]])
    notes = ["Rows: the cell that crafted and saved the examples (eval.save_adversarials); 'on its own defence' is "
             "that cell's robust accuracy. Columns: the defence the same examples are evaluated on (its transfer "
             "cell), robust accuracy with its 95% Wilson interval, K draws for stochastic defences.",
             "A target column of the source's own defence replays the examples on the defence they were crafted "
             "on: on a deterministic defence it equals the first column."]
    return Table("Transfer: examples crafted on one defence, evaluated on another",
                 ["source (scenario/defence/attack)", "seed", "n", "on its own defence",
                  *[f"on {target}" for target in targets]], rows, notes=notes, label="transfer", left_columns=3)
