"""The harness: scenarios, grids of cells, executors, records, tables and figures.

The Python API (bench/api.py) is importable from here, loaded on first use so that `import bench` (and every
`python -m bench.*` tool) stays as light as before: `from bench import run_grid, evaluate, load_results`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate", "fit_defence", "load_results", "run_grid", "evaluation_examples"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from bench import api

        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
