"""Where a grid's records come from, and the warnings the page opens with when they cannot be reproduced together.

Warnings: records from several commits, from a dirty tree (a commit ending in `-dirty`: the code that produced
them is not in any commit), without a commit, and stale records (in cells/ but not cells of the current plan:
their keys no longer match the grid). `summarise` is the one place that reads the records' provenance fields,
reading each record's commit and tree state through `records.commit_and_dirty` (schema 2's `git_dirty` field, or
schema 1's `-dirty` suffix).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.records import commit_and_dirty
from bench.reporting.collect import GridResults

DIRTY_SUFFIX = "-dirty"


@dataclass
class Provenance:
    commits: Counter = field(default_factory=Counter)  # commit -> number of records
    without_commit: int = 0
    stale: int = 0

    @property
    def dirty(self) -> list[str]:
        return [c for c in self.commits if c.endswith(DIRTY_SUFFIX)]


def summarise(records: list[dict[str, Any]], stale: int = 0) -> Provenance:
    """Count the records' commits (done and failed records alike)."""
    result = Provenance(stale=stale)
    for record in records:
        commit, dirty = commit_and_dirty(record)
        if commit:
            result.commits[str(commit) + (DIRTY_SUFFIX if dirty else "")] += 1
        else:
            result.without_commit += 1
    return result


def _short(commit: str) -> str:
    dirty = commit.endswith(DIRTY_SUFFIX)
    base = commit[: -len(DIRTY_SUFFIX)] if dirty else commit
    return base[:10] + (DIRTY_SUFFIX if dirty else "")


def warnings(grid: GridResults) -> tuple[list[str], Provenance]:
    """The provenance warnings of a grid's records (empty when they all come from one clean commit)."""
    records = [c.record for c in grid.cells if c.record is not None]
    summary = summarise(records, stale=len(grid.stray_records))
    found = []
    if len(summary.commits) > 1:
        listed = ", ".join(f"{_short(c)} ({n})" for c, n in summary.commits.most_common())
        found.append(f"The records come from {len(summary.commits)} different commits: {listed}. Numbers from "
                     "different code may not be comparable.")
    if summary.dirty:
        count = sum(summary.commits[c] for c in summary.dirty)
        found.append(f"{count} record(s) come from a dirty working tree ({', '.join(map(_short, summary.dirty))}): "
                     "the code that produced them is in no commit, so they cannot be reproduced from what they cite.")
    if summary.without_commit:
        found.append(f"{summary.without_commit} record(s) name no git commit.")
    if summary.stale:
        found.append(f"{summary.stale} stale record(s) in cells/ belong to no cell of the current plan (their keys "
                     "no longer match the grid's code or settings); they are not shown.")
    return found, summary


def describe(summary: Provenance) -> str:
    """One line for the page's top when nothing is wrong."""
    if len(summary.commits) == 1:
        return f"All records come from commit {_short(next(iter(summary.commits)))}."
    return "No record yet."
