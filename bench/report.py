"""`python -m bench.report grid=NAME [results_dir=results]`: render a grid's results from its records alone.

Writes into results/<grid>/ (results/README.md describes every file):
  summary.md            every table in Markdown, and the status of every cell
  summary.csv           one row per cell (and per worst case), numbers in separate columns
  tables/<name>.md|.tex the paper layouts and the cells table (LaTeX with booktabs); tables/<layout>.csv tidy data
  figures/<name>.png|.pdf
  index.html            one self-contained page: tables, figures, diagnostics, each cell's settings and provenance
Missing, partial and failed cells are shown as such, never dropped. `bench.run` calls `render` at the end.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from bench.progress import format_seconds
from bench.reporting import long_table, paper_tables
from bench.reporting.collect import GridResults, collect
from bench.reporting.figures import FigureFile, render_figures
from bench.reporting.html_page import write_page
from bench.reporting.layouts import ReportConfigError, configured_layouts
from bench.reporting.paper_numbers import PaperNumbersError, load_paper_numbers
from bench.reporting.tables import Table, to_latex, to_markdown

LOG = logging.getLogger("bench.report")


def _write(path: Path, text: str, written: list[Path]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    written.append(path)


def _remove_stale(folder: Path, suffixes: tuple[str, ...], keep: list[Path]) -> None:
    """Delete this renderer's earlier outputs that this rendering did not write (a layout no longer shown)."""
    if folder.exists():
        for path in folder.iterdir():
            if path.suffix in suffixes and path not in keep:
                path.unlink()


def _summary_markdown(grid: GridResults, layouts: list[Table], cells: Table, figures: list[FigureFile],
                      skipped: list[str]) -> str:
    counts = grid.counts()
    lines = [f"# Grid `{grid.name}`", "",
             f"{len(grid.cells)} cells: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ".",
             "Rendered from the records in `cells/`; open `index.html` for figures, diagnostics and each cell's "
             "settings and provenance.", ""]
    lines += [f"- failed: {c.label}: {c.error_line()}" for c in grid.cells if c.status == "failed"]
    lines += [f"- {c.status}: {c.label}" for c in grid.cells if c.status in ("missing", "partial")]
    lines.append("")
    if layouts:
        lines += ["## Paper layouts", ""]
        lines += [to_markdown(table) for table in layouts]
    if skipped:
        lines += [f"Paper layouts with no cell in this grid (not rendered): {', '.join(skipped)}.", ""]
    lines += ["## Every cell", "", to_markdown(cells), "## Figures", ""]
    for figure in figures:
        if figure.drawn:
            lines.append(f"![{figure.title}](figures/{figure.png.name}) ")
            lines.append(f"*{figure.title}.* {figure.caption} ([PDF](figures/{figure.pdf.name}))")
        else:
            lines.append(f"- {figure.title}: not drawn ({figure.reason}).")
        lines.append("")
    return "\n".join(lines)


def render(results_dir: Path, report_config: dict[str, Any] | None = None) -> list[Path]:
    """Render every table, figure and the HTML page of one grid's results folder; returns the files written.

    `report_config` is a grid's `report:` section (default: read from the plan's grid file).
    """
    started = time.monotonic()
    results_dir = Path(results_dir)
    grid = collect(results_dir, report_config)
    papers = load_paper_numbers()
    written: list[Path] = []
    tables_dir, figures_dir = results_dir / "tables", results_dir / "figures"

    layout_tables: list[tuple[Table, list[str]]] = []
    skipped: list[str] = []
    for layout, named in configured_layouts(grid.report_config):
        table, tidy, has_cells = paper_tables.build(layout, grid, papers)
        if not has_cells and not named:
            skipped.append(layout.name)
            continue
        files = []
        for suffix, text in ((".md", to_markdown(table)), (".tex", to_latex(table)),
                             (".csv", tidy.to_csv(index=False))):
            _write(tables_dir / f"{layout.name}{suffix}", text, written)
            files.append(f"tables/{layout.name}{suffix}")
        layout_tables.append((table, files))

    cells_table, cells_frame = long_table.build(grid)
    _write(tables_dir / "cells.md", to_markdown(cells_table), written)
    _write(tables_dir / "cells.tex", to_latex(cells_table), written)
    _write(results_dir / "summary.csv", cells_frame.to_csv(index=False), written)
    _remove_stale(tables_dir, (".md", ".tex", ".csv"), written)

    figures = render_figures(grid, figures_dir)
    drawn = [path for f in figures if f.drawn for path in (f.png, f.pdf)]
    written += drawn
    _remove_stale(figures_dir, (".png", ".pdf"), drawn)

    _write(results_dir / "summary.md",
           _summary_markdown(grid, [t for t, _ in layout_tables], cells_table, figures, skipped), written)
    page = write_page(grid, layout_tables, (cells_table, ["tables/cells.md", "tables/cells.tex", "summary.csv"]),
                      figures, skipped, results_dir / "index.html")
    written.append(page)
    counts = grid.counts()
    LOG.info("report for grid %s: %d cells (%s), %d paper layouts, %d figures in %s", grid.name, len(grid.cells),
             ", ".join(f"{v} {k}" for k, v in counts.items() if v), len(layout_tables),
             sum(f.drawn for f in figures), format_seconds(time.monotonic() - started))
    return written


USAGE = """usage: python -m bench.report [grid=NAME|grid=FILE.yaml] [results_dir=PATH]

Re-renders the tables, figures and index.html of results_dir/<grid>/ from its cell records alone."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    options = {"grid": "demo", "results_dir": "results"}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in options:
            print(f"error: {item!r}: valid arguments are grid=NAME and results_dir=PATH", file=sys.stderr)
            return 2
        options[key] = value
    grid = Path(options["grid"]).stem if options["grid"].endswith((".yaml", ".yml")) else options["grid"]
    results_dir = Path(options["results_dir"]) / grid
    if not results_dir.exists():
        print(f"error: no results at {results_dir}; run `python -m bench.run grid={options['grid']}` first",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        paths = render(results_dir)
    except (ReportConfigError, PaperNumbersError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
