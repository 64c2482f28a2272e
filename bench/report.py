"""`python -m bench.report grid=NAME`: render a grid's tables from its cell records alone.

Writes results/<grid>/summary.md and summary.csv: one row per cell of the current plan (missing and failed
cells included as such, never dropped), with n and 95% Wilson intervals.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from bench.records import load_records


def _interval(ci: list[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def cell_rows(results_dir: Path) -> list[dict[str, Any]]:
    """One row per planned cell (or per record when there is no plan), status included."""
    by_key = {r["key"]: r for r in load_records(results_dir / "cells")}
    plan_path = results_dir / ".plan" / "plan.json"
    planned = json.loads(plan_path.read_text())["cells"] if plan_path.exists() else list(by_key.values())
    rows = []
    for cell in planned:
        record = by_key.get(cell["key"], {})
        status = record.get("status", "missing")
        rows.append({
            "scenario": cell["scenario"], "defence": cell.get("defence_key", cell.get("defence")),
            "attack": cell.get("attack_key", cell.get("attack")),
            "target": (cell.get("attack_params") or cell.get("attack_settings") or {}).get("target", ""),
            "eps": (cell.get("attack_params") or cell.get("attack_settings") or {}).get("eps"),
            "seed": cell["seed"], "n": record.get("n_examples", cell.get("n_examples")), "status": status,
            "clean_acc": record.get("clean_acc"), "clean_ci": _interval(record.get("clean_ci")),
            "robust_acc": record.get("robust_acc"), "robust_ci": _interval(record.get("robust_ci")),
            "draws": record.get("draws"), "seconds": record.get("wall_seconds"),
            "error": (record.get("error") or "").strip().splitlines()[-1] if status == "failed" else "",
        })
    return rows


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    headers = ["scenario", "defence", "attack", "target", "eps", "n", "clean acc [95% CI]",
               "robust acc [95% CI]", "status", "time (s)"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in frame.to_dict("records"):
        clean = f"{_fmt(row['clean_acc'])} {row['clean_ci']}".strip()
        robust = f"{_fmt(row['robust_acc'])} {row['robust_ci']}".strip()
        status = row["status"] if row["status"] != "failed" else f"failed: {row['error'][:80]}"
        lines.append("| " + " | ".join([row["scenario"], row["defence"], row["attack"], row["target"] or "",
                                          _fmt(row["eps"], 4), _fmt(row["n"]), clean, robust, status,
                                          _fmt(row["seconds"], 1)]) + " |")
    return "\n".join(lines) + "\n"


def render(results_dir: Path) -> list[Path]:
    results_dir = Path(results_dir)
    rows = cell_rows(results_dir)
    frame = pd.DataFrame(rows)
    written = []
    csv_path = results_dir / "summary.csv"
    frame.to_csv(csv_path, index=False)
    written.append(csv_path)
    md_path = results_dir / "summary.md"
    md_path.write_text(f"# Grid `{results_dir.name}`: every cell\n\n" + markdown_table(frame))
    written.append(md_path)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = {"grid": "demo", "results_dir": "results"}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in options:
            print(f"error: {item!r}: valid arguments are grid=NAME and results_dir=PATH", file=sys.stderr)
            return 2
        options[key] = value
    results_dir = Path(options["results_dir"]) / options["grid"]
    if not results_dir.exists():
        print(f"error: no results at {results_dir}; run `python -m bench.run grid={options['grid']}` first",
              file=sys.stderr)
        return 2
    for path in render(results_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
