"""The papers' reported numbers (bench/paper_numbers.yaml), validated on load, and matching them to scenarios.

Values become fractions (percent tables are divided by 100) with the relation the paper states: '=' for a
number, '<' for an upper bound ("<0.047"), '~' for an approximate value ("~0.0"). A paper row matches a
harness scenario with the same dataset, norm and eps (and, where the row names one, classifier architecture).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "paper_numbers.yaml"
RELATIONS = {"<": "<", "~": "≈"}
MATCH_FIELDS = ("dataset", "norm", "eps", "arch")


class PaperNumbersError(ValueError):
    """paper_numbers.yaml is malformed; the message says where and what is valid."""


@dataclass(frozen=True)
class PaperValue:
    value: float
    relation: str = "="
    text: str = ""

    def difference(self, measured: float, ci: tuple[float, float] | list[float] | None) -> str:
        """Measured minus reported, and whether the reported value lies in the measured 95% interval."""
        from bench.reporting.fmt import signed

        if self.relation == "<":
            return f"{'below' if measured < self.value else 'NOT below'} the bound {self.value:g}"
        inside = ci is not None and ci[0] <= self.value <= ci[1]
        return f"{signed(measured - self.value)} ({'in CI' if inside else 'outside CI'})"


@dataclass(frozen=True)
class PaperRow:
    table: str
    id: str
    label: str
    match: dict[str, Any]
    values: dict[str, PaperValue | None]
    source: str

    @property
    def ref(self) -> str:
        return f"{self.table}.{self.id}"


@dataclass(frozen=True)
class PaperTable:
    id: str
    paper: str
    table: str
    caption: str
    columns: tuple[str, ...]
    rows: dict[str, PaperRow]
    n_examples: int | None

    @property
    def source(self) -> str:
        return f"{self.paper}, {self.table}"


def _parse_value(raw: Any, scale: float, digits: int, where: str) -> PaperValue | None:
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise PaperNumbersError(f"{where}: {raw!r} is not a number")
    if isinstance(raw, int | float):
        value = float(raw) / scale
        return PaperValue(value, "=", f"{value:.{digits}f}")
    text = str(raw).strip()
    if text[:1] in RELATIONS:
        number = text[1:].strip()
        try:
            value = float(number) / scale
        except ValueError:
            pass
        else:
            shown = number if scale == 1 else f"{value:g}"
            return PaperValue(value, text[0], f"{RELATIONS[text[0]]} {shown}")
    raise PaperNumbersError(f"{where}: {raw!r} is not valid; valid: a number, null, '<NUMBER' or '~NUMBER'")


def _parse_table(table_id: str, raw: dict[str, Any], papers: dict[str, Any]) -> PaperTable:
    where = f"paper_numbers.yaml: tables.{table_id}"
    missing = [k for k in ("paper", "table", "columns", "rows") if k not in raw]
    if missing:
        raise PaperNumbersError(f"{where} lacks {missing}")
    if raw["paper"] not in papers:
        raise PaperNumbersError(f"{where}: paper {raw['paper']!r} is not in papers: ({', '.join(papers)})")
    scale = {"fraction": 1.0, "percent": 100.0}.get(raw.get("scale", "fraction"))
    if scale is None:
        raise PaperNumbersError(f"{where}: scale {raw['scale']!r} is not valid; valid: fraction, percent")
    digits = int(raw.get("digits", 4))
    paper_name = str(papers[raw["paper"]].get("short", raw["paper"]))
    columns = tuple(str(c) for c in raw["columns"])
    rows = {}
    for row_id, row in raw["rows"].items():
        row_where = f"{where}.rows.{row_id}"
        values = row.get("values") or {}
        unknown = sorted(set(values) - set(columns))
        absent = [c for c in columns if c not in values]
        if unknown or absent:
            raise PaperNumbersError(f"{row_where}: values must name every column exactly once; unknown {unknown}, "
                                    f"absent {absent}; columns: {list(columns)}")
        bad_match = sorted(set(row.get("match") or {}) - set(MATCH_FIELDS))
        if bad_match:
            raise PaperNumbersError(f"{row_where}: unknown match field(s) {bad_match}; valid: {MATCH_FIELDS}")
        rows[str(row_id)] = PaperRow(
            table=table_id, id=str(row_id), label=str(row.get("label", row_id)), match=dict(row.get("match") or {}),
            values={c: _parse_value(values[c], scale, digits, f"{row_where}.values.{c}") for c in columns},
            source=f"{paper_name}, {raw['table']}")
    return PaperTable(id=table_id, paper=paper_name, table=str(raw["table"]), caption=str(raw.get("caption", "")),
                      columns=columns, rows=rows, n_examples=raw.get("n_examples"))


def parse_paper_numbers(data: dict[str, Any]) -> dict[str, PaperTable]:
    if not isinstance(data, dict) or "tables" not in data or "papers" not in data:
        raise PaperNumbersError("paper_numbers.yaml must be a mapping with 'papers' and 'tables'")
    return {table_id: _parse_table(table_id, raw, data["papers"]) for table_id, raw in data["tables"].items()}


@lru_cache(maxsize=4)
def load_paper_numbers(path: Path = DEFAULT_PATH) -> dict[str, PaperTable]:
    return parse_paper_numbers(yaml.safe_load(Path(path).read_text()))


def _normalise_arch(text: str) -> str:
    text = re.sub(r"[^a-z0-9]", "", text.lower())
    return text.replace("wideresnet", "wrn").replace("preactresnet", "resnet")


def row_matches(match: dict[str, Any], scenario: dict[str, Any]) -> bool:
    """Whether a paper row's setting is the scenario's (dataset, norm, eps and, where given, architecture)."""
    if not match:
        return False
    if "dataset" in match and str(scenario.get("dataset") or "").lower() != str(match["dataset"]).lower():
        return False
    if "norm" in match and scenario.get("norm") != match["norm"]:
        return False
    if "eps" in match:
        eps = scenario.get("eps")
        if eps is None or not math.isclose(float(eps), float(match["eps"]), abs_tol=1e-4):
            return False
    if "arch" in match:
        known = _normalise_arch(str(scenario.get("arch") or "")) + "|" + _normalise_arch(
            str(scenario.get("classifier") or ""))
        if _normalise_arch(str(match["arch"])) not in known:
            return False
    return True
