"""Read a grid's results folder: the current plan, its cell records, unfinished work and diagnostics.

The plan (results/<grid>/.plan/plan.json, read by bench.planfile.read_plan) says which cells the grid has;
each planned cell is `done` or `failed` (it has a record), `partial` (an evaluation stopped part-way: some
batches saved) or `missing`.
Records in cells/ that the current plan does not name (an older plan's) are kept aside, never mixed in.
Without a plan, every record is a cell (its defence parameters and scenario identity then come from the
record's `defence_params` / `scenario_identity`, where it has them). cells/history/ is not read.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import layout
from bench.conffiles import ConfigError
from bench.config import load_grid
from bench.plan import EvalCell, Plan, TrainStage, cell_label
from bench.planfile import read_plan
from bench.records import load_records, read_json, validate_record

LOG = logging.getLogger("bench.report")
STATUSES = ("done", "failed", "partial", "missing")


@dataclass
class CellResult:
    """One planned cell and what is known about it; `record` is None unless the cell has a record."""

    key: str
    scenario: str
    defence: str
    defence_name: str
    attack: str
    attack_name: str
    attack_params: dict[str, Any]
    seed: int
    n_examples: int
    block: str
    status: str
    record: dict[str, Any] | None = None
    defence_params: dict[str, Any] = field(default_factory=dict)
    scenario_info: dict[str, Any] = field(default_factory=dict)
    eval_settings: dict[str, Any] = field(default_factory=dict)
    record_name: str | None = None
    batches_saved: int | None = None
    batches_total: int | None = None
    attack_budget: str = ""

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def eps(self) -> float | None:
        value = self.attack_params.get("eps")
        return None if value is None else float(value)

    @property
    def norm(self) -> str | None:
        return self.attack_params.get("norm")

    @property
    def target(self) -> str:
        return str(self.attack_params.get("target") or "end_to_end")

    @property
    def label(self) -> str:
        return cell_label(self.scenario, self.defence, self.attack, self.seed)

    @property
    def has_purifier(self) -> bool:
        """Whether the defence has a purifier (`Defence.has_purifier`), as its record says."""
        import defences

        return _declared(self.record, "has_purifier", defences.REGISTRY, self.defence_name)

    @property
    def through_bpda(self) -> bool:
        """Whether the attack reached the defence through BPDA (`Attack.through_bpda`), as its record says."""
        import attacks

        return _declared(self.record, "through_bpda", attacks.REGISTRY, self.attack_name)

    @property
    def n(self) -> int:
        return int(self.record["n_examples"]) if self.done else int(self.n_examples)

    @property
    def budget(self) -> str:
        """The attack's settings in one line (the record's, else the plan's, else from its parameters)."""
        text = str((self.record or {}).get("attack_budget") or self.attack_budget or "")
        if not text:
            text = ", ".join(f"{k}={v}" for k, v in sorted(self.attack_params.items()) if k != "name")
        return f"{self.attack} ({self.attack_name}, {self.target}): {text}"

    def status_text(self) -> str:
        """The cell's state in words: 'done', 'failed: <last error line>', 'partial (2/3 batches)', 'missing'."""
        if self.status == "failed":
            return f"failed: {self.error_line()}"
        if self.status == "partial":
            return f"partial ({self.batches_saved}/{self.batches_total or '?'} batches)"
        return self.status

    def error_line(self) -> str:
        lines = [line for line in str((self.record or {}).get("error") or "").strip().splitlines() if line.strip()]
        return lines[-1].strip() if lines else "no error message"


def _declared(record: dict[str, Any] | None, name: str, registry: Any, component: str) -> bool:
    """A component's declared fact as its record states it; for a record written before the field (or a cell
    without one), the class attribute of the component the registry gives for that name (False if none)."""
    recorded = (record or {}).get(name)
    if isinstance(recorded, bool):
        return recorded
    try:
        cls = registry.get_class(component)
    except (ImportError, TypeError, ValueError):
        return False
    return bool(getattr(cls, name, False))


@dataclass
class GridResults:
    """Everything the report renders from: cells in plan order, stray records, diagnostics, report config."""

    name: str
    results_dir: Path
    cells: list[CellResult]
    has_plan: bool
    stray_records: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    report_config: dict[str, Any] = field(default_factory=dict)
    config_note: str = ""

    def counts(self) -> dict[str, int]:
        return {status: sum(c.status == status for c in self.cells) for status in STATUSES}

    def scenarios(self) -> list[str]:
        return list(dict.fromkeys(c.scenario for c in self.cells))

    def seeds(self, scenario: str) -> list[int]:
        return list(dict.fromkeys(c.seed for c in self.cells if c.scenario == scenario))

    def scenario_info(self, scenario: str) -> dict[str, Any]:
        for cell in self.cells:
            if cell.scenario == scenario and cell.scenario_info:
                return cell.scenario_info
        return {}


def _scenario_info(identity: dict[str, Any]) -> dict[str, Any]:
    scenario = identity.get("scenario") or {}
    if not scenario:
        return {}
    classifier = str(scenario.get("classifier") or "")
    arch = scenario.get("classifier_arch") or (classifier.split(":", 1)[1] if classifier.startswith("train:") else None)
    return {"dataset": scenario.get("dataset"), "norm": scenario.get("norm"), "eps": scenario.get("eps"),
            "classifier": classifier, "arch": arch}


def _cell_from_plan(planned: EvalCell, stage: TrainStage | None) -> CellResult:
    return CellResult(
        key=planned.key, scenario=planned.scenario, defence=planned.defence_key, defence_name=planned.defence_name,
        attack=planned.attack_key, attack_name=planned.attack_name, attack_params=dict(planned.attack_params),
        seed=planned.seed, n_examples=planned.n_examples, block=planned.block, status="missing",
        defence_params=dict(stage.params) if stage else {},
        scenario_info=_scenario_info(stage.identity) if stage else {}, eval_settings=planned.eval.to_dict(),
        record_name=planned.record_name, attack_budget=planned.attack_budget)


def _cell_from_record(record: dict[str, Any]) -> CellResult:
    settings = dict(record.get("attack_settings") or {})
    for name in ("eps", "norm", "target"):
        if record.get(name) is not None:
            settings.setdefault(name, record[name])
    return CellResult(
        key=record["key"], scenario=record["scenario"], defence=record["defence"],
        defence_name=record.get("defence_name", record["defence"]), attack=record["attack"],
        attack_name=record.get("attack_name", record["attack"]), attack_params=settings, seed=int(record["seed"]),
        n_examples=int(record.get("n_examples") or 0), block=str(record.get("block", "")), status="missing",
        defence_params=dict(record.get("defence_params") or {}),
        scenario_info=_scenario_info({"scenario": record.get("scenario_identity") or {}}),
        eval_settings=dict(record.get("eval_settings") or {}),
        record_name=Path(record["_path"]).name if record.get("_path") else None)


def _attach(cell: CellResult, record: dict[str, Any] | None, cells_dir: Path) -> None:
    if record is not None and record.get("status") in ("done", "failed"):
        cell.record, cell.status = record, record["status"]
        missing = validate_record(record) if record["status"] == "done" else []
        if missing:  # a malformed result is not a result
            cell.status = "failed"
            cell.record = {**record, "error": f"the record {record.get('_path', '')} lacks the fields {missing}"}
        return
    partial = read_json(layout.partial_path(cells_dir / cell.record_name)) if cell.record_name else None
    if partial and partial.get("batches"):
        batch_size = int(cell.eval_settings.get("batch_size") or 0)
        cell.status, cell.batches_saved = "partial", len(partial["batches"])
        cell.batches_total = math.ceil(cell.n_examples / batch_size) if batch_size else None


def load_diagnostics(folder: Path) -> list[dict[str, Any]]:
    """results/<grid>/diagnostics/*.json, each with its file name under '_path'; unreadable files are skipped."""
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            LOG.warning("skipping diagnostics file %s: %s", path, error)
            continue
        if isinstance(data, dict):
            data["_path"] = path.name
            found.append(data)
    return found


def grid_report_config(plan: Plan | None) -> tuple[dict[str, Any], str]:
    """The `report:` section of the plan's grid file, read now (it only says how to lay out tables)."""
    if plan is None:
        return {}, ""
    name = plan.options.grid
    try:
        return dict(load_grid(name).get("report") or {}), ""
    except (ConfigError, OSError) as error:
        return {}, f"the grid file for {name!r} could not be read ({error}); paper layouts use their defaults"


def collect(results_dir: Path, report_config: dict[str, Any] | None = None) -> GridResults:
    """Read results/<grid>/: the plan's cells with their records, stray records, diagnostics, layout config."""
    results_dir = Path(results_dir)
    cells_dir = layout.cells_dir(results_dir)
    records = load_records(cells_dir) if cells_dir.exists() else []
    by_key = {r["key"]: r for r in records if "key" in r}
    plan_path = layout.latest_plan_path(results_dir)
    plan = read_plan(plan_path) if plan_path.exists() else None
    if plan is not None:
        cells = [_cell_from_plan(planned, plan.stages.get(planned.stage_key)) for planned in plan.cells]
        planned_keys = {c.key for c in cells}
        stray = [r for r in records if r.get("key") not in planned_keys]
    else:
        cells = [_cell_from_record(r) for r in records if {"key", "scenario", "defence", "attack", "seed"} <= set(r)]
        stray = []
    for cell in cells:
        _attach(cell, by_key.get(cell.key), cells_dir)
    if report_config is None:
        report_config, note = grid_report_config(plan)
    else:
        note = ""
    name = plan.grid if plan else results_dir.name
    return GridResults(name=name, results_dir=results_dir, cells=cells, has_plan=plan is not None,
                       stray_records=stray, diagnostics=load_diagnostics(layout.diagnostics_dir(results_dir)),
                       report_config=dict(report_config), config_note=note)
