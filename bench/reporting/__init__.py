"""The parts of `bench.report`: what a grid's results folder holds, turned into tables, figures and a page.

- collect: the plan, the cell records (done / failed / missing / partial), diagnostics -> `GridResults`
- worst_case: the per-example worst case over a defence's attacks
- long_table: one row per cell (plus worst-case rows) as a DataFrame and a `Table`
- paper_numbers / layouts: the papers' tables, filled from the records, the papers' numbers beside them
- tables: one `Table` model rendered as Markdown, LaTeX (booktabs) and HTML
- figures: matplotlib figures (PNG + PDF)
- html_page: the self-contained index.html
"""

from bench.reporting.collect import CellResult, GridResults, collect
from bench.reporting.tables import Table

__all__ = ["CellResult", "GridResults", "Table", "collect"]
