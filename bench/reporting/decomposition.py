"""Purifier decomposition for the defences with a purifier (`Defence.has_purifier`: CARSO, AToP): the same defence
attacked on its classifier alone, through BPDA (`Attack.through_bpda`) and end to end, side by side on the same
test examples, with the randomness audit of its records. Both facts are read from the records (for records
written before they carried them, from the classes the registries give for the recorded names).

Each column is the per-example worst case over the defence's cells of that kind (clean judgements included),
on the examples of its headline row, so the columns differ only in how the attack reached the defence. The
randomness audit is a record's `randomness_audit` ({"clean": {...}, "adversarial": {...}}: per-draw disagreement
rates and, for CARSO, the latent KL); whatever keys are present are shown, "not measured" when none.
"""

from __future__ import annotations

from typing import Any

from bench.reporting import fmt
from bench.reporting.collect import CellResult
from bench.reporting.headline import Headline, budgets
from bench.reporting.tables import Table
from bench.reporting.worst_case import minimum

NOT_MEASURED = "not measured"
KINDS = {
    "classifier-only": lambda c: c.target == "classifier",
    "BPDA": lambda c: c.target != "classifier" and c.through_bpda,
    "end-to-end": lambda c: c.target != "classifier" and not c.through_bpda,
}
COLUMNS = ["scenario", "defence", "seed", "n", "clean", *KINDS, "worst case", "randomness audit: clean",
           "randomness audit: adversarial"]


def is_purifier(item: Headline) -> bool:
    """Whether the headline's defence has a purifier (as its records say: `Defence.has_purifier`)."""
    return any(c.has_purifier for c in item.worst.cells)


def _audit(cells: list[CellResult]) -> dict[str, Any]:
    """The randomness audit of the defence's records: the adaptive cell's where it has one, else the first."""
    audited = [c for c in cells if isinstance(c.record.get("randomness_audit"), dict)]
    audited.sort(key=lambda c: c.attack_name != "adaptive")
    return audited[0].record["randomness_audit"] if audited else {}


def _audit_text(part: Any) -> str:
    if not isinstance(part, dict) or not part:
        return NOT_MEASURED
    shown = []
    for key, value in part.items():
        shown.append(f"{key} {value:.3f}" if fmt.is_number(value) else f"{key} {value}")
    return "; ".join(shown)


def decomposition_table(items: list[Headline]) -> Table | None:
    """One row per purifier defence (scenario, seed); None when the grid has no purifier defence."""
    rows, tips = [], {}
    for item in [i for i in items if is_purifier(i) and i.worst.n]:
        worst = item.worst
        row = [worst.scenario, worst.defence, str(worst.seed), str(worst.n),
               fmt.accuracy_ci(worst.clean_acc, worst.clean_ci)]
        for column, applies in enumerate(KINDS.values(), start=5):
            members = [c for c in worst.cells if applies(c)]
            if members:
                values = minimum(members, worst.index)
                row.append(f"{fmt.accuracy(sum(values) / worst.n)} ({', '.join(c.attack for c in members)})")
                tips[(len(rows), column)] = budgets(members)
            else:
                row.append("not run")
        audit = _audit(worst.cells)
        row += [fmt.accuracy_ci(worst.acc, worst.ci), _audit_text(audit.get("clean")),
                _audit_text(audit.get("adversarial"))]
        rows.append(row)
    if not rows:
        return None
    notes = ["Each column: the per-example worst case over the defence's cells of that kind, on the headline row's "
             "n examples (attacks named in brackets; hover for budgets). classifier-only: crafted on the "
             "classifier alone and evaluated through the defence; BPDA: the purifier's gradient replaced by the "
             "identity; end-to-end: gradients through the whole defence.",
             "Randomness audit: per-draw disagreement of the defence's predictions (and, for CARSO, the latent KL) "
             "on clean and adversarial inputs, from the records; it says whether K draws and EOT matter."]
    return Table("Purifier decomposition: classifier-only, BPDA and end-to-end attacks side by side",
                 COLUMNS, rows, notes=notes, label="decomposition", left_columns=4, tooltips=tips)
