"""`python -m bench.report grid=NAME [results_dir=results]`: render a grid's results from its records alone.

Writes into results/<grid>/ (results/README.md describes every file):
  summary.md            every table in Markdown, headline first, and the status of every cell
  summary.csv           one row per cell (and per worst case), numbers in separate columns
  tables/<name>.md|.tex the headline, overstatement, paired comparisons, CE vs margin, purifier decomposition,
                        seeds, minimum-norm curves against fixed-eps cells, the paper layouts (and their
                        paper-reference tables) and the cells table (LaTeX with booktabs); tables/<layout>.csv
                        tidy data
  figures/<name>.png|.pdf
  index.html            one self-contained page: provenance warnings, the headline table and the overstatement
                        figure first, then comparisons, paper layouts, every cell, figures, diagnostics, and each
                        cell's settings and provenance (attack budgets on hover)
Missing, partial and failed cells are shown as such, never dropped. `bench.run` calls `render` at the end.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from attacks.progress import format_seconds
from bench import layout
from bench.conffiles import ConfigError, grid_name
from bench.reporting import comparisons, decomposition, headline, long_table, paper_tables, provenance, summary_figures
from bench.reporting.collect import GridResults, collect
from bench.reporting.figures import FigureFile, render_figures
from bench.reporting.html_page import write_page
from bench.reporting.layouts import ReportConfigError, configured_layouts
from bench.reporting.min_norm_curve import curves as min_norm_curves
from bench.reporting.min_norm_figure import comparison_table, curve_figure
from bench.reporting.paper_numbers import PaperNumbersError, load_paper_numbers
from bench.reporting.sections import Section
from bench.reporting.tables import Table, to_latex, to_markdown
from bench.reporting.transfer_table import transfer_table

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


def _markdown_figures(figures: list[FigureFile]) -> list[str]:
    lines = []
    for figure in figures:
        if figure.drawn:
            lines.append(f"![{figure.title}]({layout.FIGURES}/{figure.png.name}) ")
            lines.append(f"*{figure.title}.* {figure.caption} ([PDF]({layout.FIGURES}/{figure.pdf.name}))")
        else:
            lines.append(f"- {figure.title}: not drawn ({figure.reason}).")
        lines.append("")
    return lines


def _summary_markdown(grid: GridResults, banner: list[str], sections: list[Section]) -> str:
    counts = grid.counts()
    lines = [f"# Grid `{grid.name}`", "",
             f"{len(grid.cells)} cells: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ". "
             f"Rendered from the records in `{layout.CELLS}/`; open `{layout.REPORT_PAGE}` for hover-over attack "
             "budgets, diagnostics "
             "and each cell's settings and provenance.", ""]
    lines += [f"> **Provenance warning:** {warning}" for warning in banner]
    lines.append("")
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.text:
            lines += [section.text, ""]
        if section.figures_first:
            lines += _markdown_figures(section.figures)
        lines += [to_markdown(table) for table, _ in section.tables]
        if not section.figures_first:
            lines += _markdown_figures(section.figures)
    lines += [f"- failed: {c.label}: {c.error_line()}" for c in grid.cells if c.status == "failed"]
    lines += [f"- {c.status}: {c.label}" for c in grid.cells if c.status in ("missing", "partial")]
    return "\n".join(lines) + "\n"


def _write_table(table: Table, tables_dir: Path, name: str, written: list[Path], tidy=None) -> list[str]:
    files = []
    outputs = [(".md", to_markdown(table)), (".tex", to_latex(table))]
    if tidy is not None:
        outputs.append((".csv", tidy.to_csv(index=False)))
    for suffix, text in outputs:
        _write(tables_dir / f"{name}{suffix}", text, written)
        files.append(f"{layout.TABLES}/{name}{suffix}")
    return files


def _headline_sections(grid: GridResults, figures_dir: Path, tables_dir: Path,
                       written: list[Path]) -> tuple[list[Section], list[FigureFile]]:
    items = headline.headlines(grid)
    pairs = comparisons.defence_pairs(grid, items)
    figures = [summary_figures.overstatement(items, figures_dir), summary_figures.paired_differences(pairs,
                                                                                                     figures_dir)]
    seeds = headline.seed_table(items)
    seed_figure = summary_figures.seed_spread(items, figures_dir) if seeds is not None else None
    loss_pairs = comparisons.loss_pairs(grid)
    table_files = {}
    for name, table in (("headline", headline.headline_table(items)),
                        ("overstatement", headline.overstatement_table(items)),
                        ("paired", comparisons.pairs_table(pairs)),
                        ("ce_margin", comparisons.loss_table(loss_pairs) if loss_pairs else None),
                        ("decomposition", decomposition.decomposition_table(items)), ("seeds", seeds)):
        if table is not None:
            table_files[name] = (table, _write_table(table, tables_dir, name, written))
    masked = [f"Gradient masked for CE on {p.ce.scenario}/{p.ce.defence}: {p.evidence()}." for p in loss_pairs
              if p.masked]
    text = " ".join([*masked, headline.adaptive_sentence(items), headline.seed_sentence(items)]).strip()
    sections = [Section("headline-section", "Headline", text=text,
                        tables=[table_files["headline"]]),
                Section("overstatement-section", "What naive evaluation overstates", figures=[figures[0]],
                        tables=[table_files["overstatement"]], figures_first=True),
                Section("paired-section", "Paired comparisons", tables=[table_files["paired"]],
                        figures=[figures[1]])]
    if "ce_margin" in table_files:
        sections.append(Section("ce-margin-section", "CE against margin losses",
                                tables=[table_files["ce_margin"]]))
    if "decomposition" in table_files:
        sections.append(Section("decomposition-section", "Purifier decomposition",
                                tables=[table_files["decomposition"]]))
    if seed_figure is not None:
        sections.append(Section("seeds-section", "Spread across seeds", tables=[table_files["seeds"]],
                                figures=[seed_figure]))
    return sections, figures + ([seed_figure] if seed_figure else [])


def _layout_section(grid: GridResults, tables_dir: Path, written: list[Path]) -> Section:
    papers = load_paper_numbers()
    section = Section("paper-tables", "Paper layouts",
                      text="Measured rows sit beside a paper's row only when dataset, classifier architecture and "
                           "threat model match; the papers' other rows are in separate paper-reference tables.")
    skipped: list[str] = []
    references: set[str] = set()  # a paper table's reference rows are shown once (two layouts may share it)
    for paper_layout, named in configured_layouts(grid.report_config):
        built = paper_tables.build(paper_layout, grid, papers)
        if not built.has_cells and not named:
            skipped.append(paper_layout.name)
            continue
        section.tables.append((built.measured, _write_table(built.measured, tables_dir, paper_layout.name, written,
                                                            built.tidy)))
        if built.reference is not None and to_markdown(built.reference) not in references:
            references.add(to_markdown(built.reference))
            name = f"{paper_layout.name}_paper_reference"
            section.tables.append((built.reference, _write_table(built.reference, tables_dir, name, written)))
    if skipped:
        section.text += f" Paper layouts with no cell in this grid (not rendered): {', '.join(skipped)}."
    if not section.tables:
        section.text = "No paper layout applies to this grid. " + section.text
    return section


def _min_norm_section(grid: GridResults, figures_dir: Path, tables_dir: Path,
                      written: list[Path]) -> tuple[Section | None, FigureFile | None]:
    """The minimum-norm curves and their comparisons with the fixed-eps cells, where the grid has such a cell."""
    items = min_norm_curves(grid)
    table = comparison_table(items)
    if table is None:
        return None, None
    figure = curve_figure(items, figures_dir)
    files = _write_table(table, tables_dir, "min_norm", written)
    return Section("min-norm-section", "Minimum-norm curves", tables=[(table, files)], figures=[figure],
                   figures_first=True), figure


def render(results_dir: Path, report_config: dict[str, Any] | None = None) -> list[Path]:
    """Render every table, figure and the HTML page of one grid's results folder; returns the files written.

    `report_config` is a grid's `report:` section (default: read from the plan's grid file).
    """
    started = time.monotonic()
    results_dir = Path(results_dir)
    grid = collect(results_dir, report_config)
    written: list[Path] = []
    tables_dir, figures_dir = layout.report_tables_dir(results_dir), layout.report_figures_dir(results_dir)

    sections, headline_figures = _headline_sections(grid, figures_dir, tables_dir, written)
    if (transfers := transfer_table(grid)) is not None:
        sections.append(Section("transfer-section", "Transfer between defences",
                                tables=[(transfers, _write_table(transfers, tables_dir, "transfer", written))]))
    min_norm_section, min_norm_plot = _min_norm_section(grid, figures_dir, tables_dir, written)
    if min_norm_section is not None:
        sections.append(min_norm_section)
        headline_figures.append(min_norm_plot)
    sections.append(_layout_section(grid, tables_dir, written))
    cells_table, cells_frame = long_table.build(grid)
    _write(layout.summary_csv_path(results_dir), cells_frame.to_csv(index=False), written)
    cell_files = _write_table(cells_table, tables_dir, "cells", written) + [layout.SUMMARY_CSV]
    sections.append(Section("cells-table", "Every cell", tables=[(cells_table, cell_files)]))
    _remove_stale(tables_dir, (".md", ".tex", ".csv"), written)

    figures = render_figures(grid, figures_dir)
    sections.append(Section("figures", "More figures", figures=figures))
    drawn = [path for f in figures + headline_figures if f.drawn for path in (f.png, f.pdf)]
    written += drawn
    _remove_stale(figures_dir, (".png", ".pdf"), drawn)

    banner, summary = provenance.warnings(grid)
    _write(layout.summary_md_path(results_dir), _summary_markdown(grid, banner, sections), written)
    page = layout.report_page_path(results_dir)
    written.append(write_page(grid, sections, banner, provenance.describe(summary), page))
    counts = grid.counts()
    LOG.info("report for grid %s: %d cells (%s), %d tables, %d figures in %s", grid.name, len(grid.cells),
             ", ".join(f"{v} {k}" for k, v in counts.items() if v), sum(len(s.tables) for s in sections),
             sum(f.drawn for f in figures + headline_figures), format_seconds(time.monotonic() - started))
    return written


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print("usage: " + __doc__.replace("`", "", 2))
        return 0
    options = {"grid": "demo", "results_dir": "results"}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in options:
            print(f"error: {item!r}: valid arguments are grid=NAME and results_dir=PATH", file=sys.stderr)
            return 2
        options[key] = value
    results_dir = layout.grid_dir(options["results_dir"], grid_name(options["grid"]))
    if not results_dir.exists():
        print(f"error: no results at {results_dir}; run `python -m bench.run grid={options['grid']}` first",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        paths = render(results_dir)
    except (ReportConfigError, PaperNumbersError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
