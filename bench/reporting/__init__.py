"""The parts of `bench.report`: what a grid's results folder holds, turned into tables, figures and a page.

- collect: the plan, the cell records (done / failed / missing / partial), diagnostics -> `GridResults`
- provenance: the records' commits, dirty trees and stale records -> the warnings the page opens with
- worst_case: the per-example worst case over a defence's attacks (clean judgements included)
- headline: the opening table (clean and worst case on one subset) and what naive settings overstate
- comparisons: paired comparisons between defences (Newcombe interval, McNemar p) and CE against margin
- decomposition: CARSO / AToP attacked on the classifier, through BPDA and end to end, with the randomness audit
- long_table: one row per cell (plus worst-case rows) as a DataFrame and a `Table`
- paper_numbers / layouts: the papers' tables, filled from the records, the papers' numbers beside them
- tables: one `Table` model rendered as Markdown, LaTeX (booktabs) and HTML
- figures, summary_figures: matplotlib figures (PNG + PDF)
- min_norm_curve / min_norm_figure: minimum-norm cells' robust accuracy at every eps, against the fixed-eps cells
- sections: one section of the report, rendered into summary.md and index.html alike
- html_page: the self-contained index.html
"""

from bench.reporting.collect import CellResult, GridResults, collect
from bench.reporting.tables import Table

__all__ = ["CellResult", "GridResults", "Table", "collect"]
