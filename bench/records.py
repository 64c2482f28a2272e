"""Cell records: one JSON file per evaluation cell, written atomically, never silently overwritten.

A record is `done` (a result) or `failed` (the error and where its log is): a failed cell is never a result.
Re-running a grid skips `done` cells; a `failed` record is moved to cells/history/ before its cell is retried,
so every attempt stays on disk.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
REQUIRED_FIELDS = (
    "schema_version", "status", "key", "grid", "scenario", "defence", "defence_name", "attack", "attack_name",
    "attack_settings", "seed", "n_examples", "clean_acc", "clean_ci", "robust_acc", "robust_ci",
    "per_example", "wall_seconds", "git_commit", "packages",
)
FAILED_FIELDS = ("schema_version", "status", "key", "grid", "scenario", "defence", "attack", "seed", "error")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file, fsync it, then rename over `path`: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def record_status(path: Path) -> str | None:
    record = read_json(path)
    return None if record is None else record.get("status")


def archive(path: Path) -> Path:
    """Move a record into history/ under a new, unique name; returns the new path."""
    history = path.parent / "history"
    history.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = history / f"{path.stem}.{stamp}{path.suffix}"
    counter = 1
    while target.exists():
        target = history / f"{path.stem}.{stamp}-{counter}{path.suffix}"
        counter += 1
    path.replace(target)
    return target


def validate_record(record: dict[str, Any]) -> list[str]:
    """Names of required fields missing from a record (empty when it is well formed)."""
    required = REQUIRED_FIELDS if record.get("status") == "done" else FAILED_FIELDS
    return [name for name in required if name not in record]


def load_records(cells_dir: Path) -> list[dict[str, Any]]:
    """Every record in a grid's cells/ folder (not history/), skipping files being written."""
    records = []
    for path in sorted(cells_dir.glob("*.json")):
        if path.name.startswith("."):
            continue
        record = read_json(path)
        if record is not None:
            record["_path"] = str(path)
            records.append(record)
    return records
