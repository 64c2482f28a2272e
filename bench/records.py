"""Cell records: one JSON file per evaluation cell, typed, validated on every read, written atomically.

This module is the one owner of a grid's cells/ folder. A record is `done` (a result) or `failed` (the error
and where its log is): a failed cell is never a result. A file is a record only if it validates against the
schema (CellRecord, SCHEMA_VERSION) and carries the key its file name says; anything else in cells/ (a
truncated file, a stray or forged JSON) is moved to cells/quarantine/ with a warning naming it, and never
counts as done. A failed or stale record is moved to cells/history/ before its cell is computed again, so every
attempt stays on disk. `provenance_summary` says which commits and tree states the records come from.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from types import UnionType
from typing import Any, TypedDict, Union, get_args, get_origin, get_type_hints

from bench import layout
from bench.plan import EvalCell, Plan, TrainStage, cell_label
from bench.record_checks import deep_problems

LOG = logging.getLogger("bench.records")
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: records written before keys carried code and input fingerprints
REQUIRED_FIELDS = (
    "schema_version", "status", "key", "grid", "scenario", "defence", "defence_name", "attack", "attack_name",
    "attack_settings", "seed", "n_examples", "clean_acc", "clean_ci", "robust_acc", "robust_ci",
    "per_example", "wall_seconds", "git_commit", "packages",
)
FAILED_FIELDS = ("schema_version", "status", "key", "grid", "scenario", "defence", "attack", "seed", "error")


class CellRecord(TypedDict, total=False):
    """The record schema (version 2). Required: REQUIRED_FIELDS for `done`, FAILED_FIELDS for `failed`.

    Other fields (block, stage, eval_settings, counts, per-draw accuracies, `attack_report`,
    `randomness_audit`, ...) are optional and kept as they are; the types below are checked when present.
    """

    schema_version: int
    status: str                      # "done" | "failed"
    key: str                         # the cell's key: code, inputs and settings
    settings_key: str                # the cell's settings alone: the same for a stale result
    fingerprint: dict[str, dict[str, str]]  # {"code", "stage_code", "stage_inputs"}: file -> digest
    git_commit: str | None           # the commit (without a '-dirty' suffix since version 2)
    git_dirty: bool | None           # whether the working tree had uncommitted changes
    grid: str
    scenario: str
    defence: str
    defence_name: str
    attack: str
    attack_name: str
    attack_settings: dict[str, Any]
    seed: int
    n_examples: int
    clean_acc: float
    clean_ci: list[float]
    robust_acc: float
    robust_ci: list[float]
    per_example: dict[str, Any]
    has_purifier: bool               # the defence's declaration (absent in records written before it)
    through_bpda: bool               # the attack's declaration (absent in records written before it)
    wall_seconds: float
    packages: dict[str, str]
    error: str


def _runtime_types(hint: Any) -> tuple[type, ...]:
    """The JSON types a field's annotation admits: `dict[str, X]` -> dict, `str | None` -> (str, NoneType), and
    float -> (int, float) (JSON writes 1.0 as 1)."""
    if get_origin(hint) in (Union, UnionType):
        return tuple(kind for arg in get_args(hint) for kind in _runtime_types(arg))
    if hint is None or hint is type(None):
        return (type(None),)
    if hint is float:
        return (int, float)
    return (get_origin(hint) or hint,)


# the types each field must have when present, from CellRecord's annotations (one statement of the schema)
_TYPES: dict[str, tuple[type, ...]] = {name: _runtime_types(hint) for name, hint in get_type_hints(CellRecord).items()}


def validate_record(record: Any) -> list[str]:
    """Problems that keep a record from being one (empty when it is valid): missing fields, wrong types, then
    impossible or inconsistent values (bench.record_checks)."""
    if not isinstance(record, dict):
        return [f"not a JSON object but a {type(record).__name__}"]
    if record.get("schema_version") not in READABLE_VERSIONS:
        return [f"schema_version {record.get('schema_version')!r} is not one of {READABLE_VERSIONS}"]
    if record.get("status") not in ("done", "failed"):
        return [f"status {record.get('status')!r} is neither 'done' nor 'failed'"]
    required = REQUIRED_FIELDS if record["status"] == "done" else FAILED_FIELDS
    problems = [f"missing {name}" for name in required if name not in record]
    for name, types in _TYPES.items():
        value = record.get(name)
        if name in record and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            problems.append(f"{name} is a {type(value).__name__}")
    if record["status"] == "done" and not problems:
        problems += _result_problems(record)
    if problems:
        return problems
    try:
        return deep_problems(record)
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as error:  # a shape no check foresaw
        return [f"its content could not be checked: {type(error).__name__}: {error}"]


def _result_problems(record: dict[str, Any]) -> list[str]:
    index = record["per_example"].get("index")
    if not isinstance(index, list) or len(index) != record["n_examples"]:
        return [f"per_example.index does not hold n_examples={record['n_examples']} entries"]
    return []


# --- building records ------------------------------------------------------------------------------------

def cell_fields(cell: EvalCell) -> dict[str, Any]:
    """What every record of a cell says about the cell: which one it is (also a failed job's record)."""
    return {"schema_version": SCHEMA_VERSION, "key": cell.key, "grid": cell.grid, "block": cell.block,
            "scenario": cell.scenario, "defence": cell.defence_key, "defence_name": cell.defence_name,
            "stage": cell.stage_key, "attack": cell.attack_key, "attack_name": cell.attack_name,
            "attack_settings": cell.attack_params, "seed": cell.seed, "n_examples": cell.n_examples}


def run_fields(cell: EvalCell, stage: TrainStage, started: float) -> dict[str, Any]:
    """A cell's fields plus its settings and what computes it here (commit, packages, host, job, log)."""
    from bench.logs import job_log
    from bench.runtime import git_state, package_versions

    commit, dirty = git_state()
    return {
        **cell_fields(cell), "settings_key": cell.settings_key, "fingerprint": cell.fingerprint,
        "attack_budget": cell.attack_budget, "target": cell.attack_params.get("target"),
        "eps": cell.attack_params.get("eps"), "norm": cell.attack_params.get("norm"),
        "eval_settings": cell.eval.to_dict(), "git_commit": commit, "git_dirty": dirty,
        "packages": package_versions(), "defence_params": stage.params,
        "scenario_identity": stage.identity.get("scenario"), "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "log": job_log(), "started_at": started,
    }


def done_record(fields: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """A `done` record: `fields` (run_fields) and the result (accuracies, per-example draws, counts, ...)."""
    return {**fields, "status": "done", **result}


def failed_record(fields: dict[str, Any], error: str, **details: Any) -> dict[str, Any]:
    """A `failed` record: `fields` (run_fields, or cell_fields for a job that died without a word), the error
    (a traceback or what happened to the job) and details such as the log, the job id and finished_at."""
    return {**fields, "status": "failed", "error": error, **details}


def stage_failure(stage: TrainStage, error: str, **details: Any) -> dict[str, Any]:
    """A training stage's failed.json: which stage, the error, and details (log, job id, failed_at)."""
    return {"stage": stage.key, "label": stage.label, "error": error, **details}


# --- files (written with defences.atomic.write_json_atomic) ----------------------------------------------

def read_json(path: Path) -> Any:
    """A JSON file's content; None when it does not exist. Invalid JSON raises ValueError naming the file."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from error


def _move_aside(path: Path, folder_name: str) -> Path | None:
    folder = layout.aside_dir(path, folder_name)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = folder / f"{path.stem}.{stamp}{path.suffix}"
    counter = 1
    while target.exists():
        target, counter = folder / f"{path.stem}.{stamp}-{counter}{path.suffix}", counter + 1
    try:
        path.replace(target)
    except FileNotFoundError:  # another process moved it first
        return None
    return target


def archive(path: Path) -> Path | None:
    """Move a record into history/ under a new, unique name; returns the new path."""
    return _move_aside(path, layout.HISTORY)


def quarantine(path: Path, reason: str) -> Path | None:
    """Move a file that is not a valid record out of cells/, with a warning that names it and says why."""
    target = _move_aside(path, layout.QUARANTINE)
    if target is not None:
        LOG.warning("moved %s to %s: it is not a valid cell record (%s)", path, target, reason)
    return target


def read_record(path: Path, key: str | None = None) -> dict[str, Any] | None:
    """The valid record at `path` (None when there is none); an invalid file, or one whose key is not
    `key`, is quarantined."""
    try:
        record = read_json(path)
    except (ValueError, UnicodeDecodeError) as error:
        quarantine(path, str(error))
        return None
    except IsADirectoryError:
        return None
    if record is None:
        return None
    problems = validate_record(record)
    expected = key if key is not None else _key_in_name(path)
    if not problems and expected is not None and record.get("key") != expected:
        problems = [f"its key {record.get('key')!r} is not the {expected!r} its name or cell says"]
    if problems:
        quarantine(path, "; ".join(problems[:4]))
        return None
    return record


def _key_in_name(path: Path) -> str | None:
    """Record names end in .<key>.json (scenario.defence.attack.sSEED.KEY.json)."""
    parts = path.name.split(".")
    return parts[-2] if len(parts) >= 3 and parts[-1] == "json" else None


def record_status(path: Path, key: str | None = None) -> str | None:
    """'done' or 'failed' for a valid record with the right key; None otherwise (nothing, or quarantined)."""
    record = read_record(path, key)
    return None if record is None else record["status"]


def cell_state(plan: Plan, cell: EvalCell) -> str | None:
    """A planned cell's state from cells/: 'done' or 'failed' (its own record), 'stale' (no record of its own,
    but one of the same settings computed by other code or from other input files), or None (not run yet, or
    done before it saved the adversarial examples it is asked to save: it runs again to save them)."""
    path = layout.record_path(plan, cell)
    state = record_status(path, cell.key)
    if state == "done" and layout.points_missing(plan, cell):
        state = None
    if state is None and cell.settings_key and same_settings_records(path.parent, cell.record_name, cell.settings_key):
        return "stale"
    return state


def load_records(cells_dir: Path) -> list[dict[str, Any]]:
    """Every valid record in a grid's cells/ folder (not history/ or quarantine/); anything else there that is
    not a record being written, a partial result or a lock is quarantined."""
    found = []
    for path in sorted(Path(cells_dir).iterdir()) if Path(cells_dir).is_dir() else []:
        if not layout.is_record_candidate(path):
            continue
        if path.suffix != ".json":
            quarantine(path, "not a .json record")
            continue
        record = read_record(path)
        if record is not None:
            record["_path"] = str(path)
            found.append(record)
    return found


def same_settings_records(cells_dir: Path, record_name: str, settings_key: str) -> list[tuple[Path, dict]]:
    """Records of the same cell identity (scenario, defence, attack, seed and settings) in cells/, whatever
    their key: results of other code or inputs."""
    prefix = record_name.rsplit(".", 2)[0]
    matches = []
    for path in sorted(Path(cells_dir).glob(f"{prefix}.*.json")):
        if path.name == record_name:
            continue
        record = read_record(path)
        if record is not None and record.get("settings_key") == settings_key:
            matches.append((path, record))
    return matches


# --- provenance -------------------------------------------------------------------------------------------

def provenance_summary(records: list[dict[str, Any]], plan: Plan | None = None) -> dict[str, Any]:
    """Which commits and tree states the records come from, and which are stale (for a report's banner).

    {"commits": [{"commit": str | None, "dirty": bool | None, "records": int}, ...]  (most records first),
     "mixed_commits": bool,   # more than one commit among the records
     "dirty": [label, ...],   # records computed from a tree with uncommitted changes
     "unknown": [label, ...], # records without commit information (not in a git checkout)
     "stale": [{"record": label, "key": str, "current_key": str, "changed": [file, ...]}, ...]}

    A record is stale when `plan` (bench.planfile.read_plan reads one from plan.json) has a cell with its settings
    key but another key; `changed` names the code files and inputs whose digests differ.
    """
    counts: dict[tuple[str | None, bool | None], int] = {}
    dirty, unknown = [], []
    for record in records:
        commit, is_dirty = commit_and_dirty(record)
        counts[(commit, is_dirty)] = counts.get((commit, is_dirty), 0) + 1
        if is_dirty:
            dirty.append(_label(record))
        if commit is None:
            unknown.append(_label(record))
    commits = [{"commit": c, "dirty": d, "records": n}
               for (c, d), n in sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))]
    return {"commits": commits, "mixed_commits": len({c for c, _ in counts}) > 1, "dirty": dirty,
            "unknown": unknown, "stale": stale_records(records, plan) if plan is not None else []}


def commit_and_dirty(record: dict[str, Any]) -> tuple[str | None, bool | None]:
    """(commit, dirty) of a record, from version 2's fields or version 1's '-dirty' suffix."""
    commit = record.get("git_commit")
    dirty = record.get("git_dirty")
    if isinstance(commit, str) and commit.endswith("-dirty"):
        commit, dirty = commit[: -len("-dirty")], True
    elif commit is not None and dirty is None:
        dirty = False
    return commit, dirty


def stale_records(records: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    from bench.fingerprint import changes

    current = {cell.settings_key: cell for cell in plan.cells if cell.settings_key}
    stale = []
    for record in records:
        cell = current.get(record.get("settings_key"))
        if cell is None or cell.key == record.get("key"):
            continue
        old, new = record.get("fingerprint") or {}, cell.fingerprint
        changed = [name for part in ("code", "stage_code", "stage_inputs", "source")
                   for name in changes(old.get(part), new.get(part, {}))]
        stale.append({"record": _label(record), "key": record.get("key"), "current_key": cell.key,
                      "changed": sorted(set(changed)) or ["the stage it builds on"]})
    return stale


def _label(record: dict[str, Any]) -> str:
    return cell_label(record.get("scenario"), record.get("defence"), record.get("attack"), record.get("seed"))
