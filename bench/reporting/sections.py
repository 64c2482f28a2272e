"""One section of the report (a heading, a paragraph, tables with their files, figures), rendered into both
summary.md and index.html from the same objects so that the two always say the same thing in the same order."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.reporting.figures import FigureFile
from bench.reporting.tables import Table


@dataclass
class Section:
    anchor: str
    title: str
    text: str = ""  # plain text shown before the tables
    tables: list[tuple[Table, list[str]]] = field(default_factory=list)  # each table with its files (relative)
    figures: list[FigureFile] = field(default_factory=list)
    figures_first: bool = False
    html: str = ""  # HTML-only content after the tables (diagnostics, cell details)
