"""What one job does: fit a defence (a training stage) or evaluate one cell, resumably.

Both are driven by a JSON spec file (written by the planner), so that executor jobs carry only paths.
Training saves per epoch through FitContext; evaluation saves each finished batch to a partial file,
re-seeding per batch, so a job killed and re-run produces the same record as an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import torch

import attacks
import defences
from attacks.progress import Progress
from attacks.protocol import batch_extras, predict_draws, record_accuracies, record_extras
from attacks.seeding import derive_seed, seed_everything
from bench import records
from bench.config import load_scenario
from bench.grid import EvalCell, TrainStage
from bench.locks import locked
from bench.runtime import git_state, hardware_summary, package_versions, resolve_device
from bench.scenarios import Scenario
from defences.atomic import write_json_atomic
from defences.base import Defence, FitContext

LOG = logging.getLogger("bench.stages")
DONE_FILE = "defence.json"
FAILED_FILE = "failed.json"


class StageNotReady(RuntimeError):
    """A cell's training stage has no finished artifact (it failed, or has not run yet)."""


# --- data and models ------------------------------------------------------------------------------------

def load_split(scenario: Scenario, split: str, data_dir: str | None, smoke: bool = False):
    if smoke:
        from bench import smoke as smoke_mode

        return smoke_mode.load_split(scenario, split, data_dir)
    return _cached_split(scenario.dataset, split, data_dir, json.dumps(scenario.dataset_options, sort_keys=True))


@functools.lru_cache(maxsize=4)
def _cached_split(dataset: str, split: str, data_dir: str | None, options_json: str):
    from bench.data import load_dataset

    return load_dataset(dataset, split, root=data_dir, **json.loads(options_json))


def evaluation_subset(scenario: Scenario, n_examples: int, data_dir: str | None,
                      smoke: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first n of a fixed permutation of the test split (same for every cell of the scenario)."""
    split = load_split(scenario, "test", data_dir, smoke)
    generator = torch.Generator().manual_seed(scenario.test_subset_seed)
    index = torch.randperm(len(split), generator=generator)[:n_examples].sort().values
    return index, split.float_images(index), split.labels[index]


def make_classifier(scenario: Scenario, options: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    from bench.zoo import load_classifier

    if options.get("smoke") and scenario.classifier_is_pretrained:
        from bench import smoke

        return smoke.make_classifier(scenario)
    task = scenario.task()
    return load_classifier(
        scenario.classifier, in_channels=task.channels, num_classes=task.num_classes, image_size=task.height,
        mean=task.mean, std=task.std, arch=scenario.classifier_arch, arch_params=scenario.classifier_params,
        model_dir=options.get("model_dir"), dataset=scenario.robustbench_dataset, threat_model=scenario.norm)


def stage_scenario(stage: TrainStage | dict[str, Any], options: dict[str, Any]) -> Scenario:
    name = stage.scenario if isinstance(stage, TrainStage) else stage["scenario"]
    return load_scenario(name, options.get("scenario_overrides", {}).get(name))


def load_fitted_defence(stages: dict[str, TrainStage], key: str, options: dict[str, Any],
                        device: torch.device) -> Defence:
    """Rebuild a fitted defence from its artifact (and its base stage's, recursively)."""
    stage = stages[key]
    folder = Path(stage.artifact_dir)
    if not (folder / DONE_FILE).exists():
        reason = records.read_json(folder / FAILED_FILE)
        detail = f": it failed with {reason['error'].splitlines()[-1]!r} (log: {reason.get('log')})" if reason else \
            ": it has not run yet"
        raise StageNotReady(f"training stage {stage.label} ({key}) has no finished artifact at {folder}{detail}")
    scenario = stage_scenario(stage, options)
    base = load_fitted_defence(stages, stage.base_stage, options, device) if stage.base_stage else None
    classifier = base.classifier if base is not None else make_classifier(scenario, options)[0]
    defence = defences.build(stage.defence_name, classifier=classifier, task=scenario.task(), base=base,
                             **stage.params)
    defence.load(folder)
    return defence.to(device).eval()


# --- training stages ---------------------------------------------------------------------------------

def run_training_stage(stages: dict[str, TrainStage], key: str, options: dict[str, Any]) -> str:
    """Fit and save one defence unless its artifact exists; returns 'done', 'skipped' or raises.

    Holds the stage's lock while it works: a second process asking for the same stage waits, then finds
    it done."""
    stage = stages[key]
    folder = Path(stage.artifact_dir)
    if (folder / DONE_FILE).exists():
        return "skipped"
    with locked(folder.with_name(folder.name + ".lock"), label=f"training stage {stage.label}"):
        if (folder / DONE_FILE).exists():
            return "skipped"
        return _fit_stage(stages, stage, options)


def _fit_stage(stages: dict[str, TrainStage], stage: TrainStage, options: dict[str, Any]) -> str:
    key, folder = stage.key, Path(stage.artifact_dir)
    device = resolve_device(options.get("device", "auto"))
    started = time.time()
    (folder / FAILED_FILE).unlink(missing_ok=True)
    try:
        seed_everything(derive_seed(stage.seed, "init", stage.settings_key))
        scenario = stage_scenario(stage, options)
        base = load_fitted_defence(stages, stage.base_stage, options, device) if stage.base_stage else None
        if base is not None:
            classifier, provenance = base.classifier, {"source": f"stage:{stage.base_stage}", "pretrained": True}
        else:
            classifier, provenance = make_classifier(scenario, options)
        defence = defences.build(stage.defence_name, classifier=classifier, task=scenario.task(), base=base,
                                 **stage.params)
        defence.to(device)
        ctx = FitContext(device=device, seed=stage.seed, workdir=folder, log=LOG,
                         classifier_pretrained=bool(provenance.get("pretrained")))
        LOG.info("training %s (%s) on %s", stage.label, stage.defence_name, hardware_summary(device))
        train = load_split(scenario, "train", options.get("data_dir"), bool(options.get("smoke")))
        summary = defence.fit(train, ctx)
        commit, dirty = git_state()
        metadata = {"stage": key, "label": stage.label, "defence_name": stage.defence_name, "params": stage.params,
                    "identity": stage.identity, "settings_key": stage.settings_key,
                    "fingerprint": stage.fingerprint, "classifier": provenance, "fit_summary": summary,
                    "started_at": started, "seconds": time.time() - started, "git_commit": commit,
                    "git_dirty": dirty, "packages": package_versions(), "hardware": hardware_summary(device)}
        defence.save(folder, metadata)
        for leftover in folder.glob("progress-*.pt"):
            leftover.unlink()
        LOG.info("trained %s in %.1f s", stage.label, time.time() - started)
        return "done"
    except Exception as error:
        write_json_atomic(folder / FAILED_FILE, {
            "stage": key, "label": stage.label, "error": "".join(traceback.format_exception(error)),
            "log": os.environ.get("BENCH_JOB_LOG"), "failed_at": time.time()})
        raise


# --- evaluation cells ----------------------------------------------------------------------------------

def _batch_result(defence: Defence, attack: attacks.Attack, x: torch.Tensor, y: torch.Tensor, draws: int,
                  seed: int) -> dict[str, Any]:
    seed_everything(seed)
    clean_predictions = predict_draws(defence, x, draws)
    before = dict(getattr(attack, "counts", {"forward_examples": 0, "backward_examples": 0}))
    started = time.time()
    x_adv = attack(defence, x, y)
    attack_seconds = time.time() - started
    robust_predictions = predict_draws(defence, x_adv, draws)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if attack.norm == "Linf" else delta.norm(dim=1)
    return {"clean": (clean_predictions == y).T.int().tolist(), "robust": (robust_predictions == y).T.int().tolist(),
            "attack_seconds": attack_seconds,
            "forward_examples": attack.counts["forward_examples"] - before["forward_examples"],
            "backward_examples": attack.counts["backward_examples"] - before["backward_examples"],
            "perturbation": size.tolist(),
            **batch_extras(defence, attack, x, x_adv, clean_predictions, robust_predictions)}


def run_eval_cell(stages: dict[str, TrainStage], cell: EvalCell, options: dict[str, Any], record_path: Path) -> str:
    """Evaluate one cell and write its record; returns 'done', 'skipped' or 'failed' (a failed record).

    Holds the cell's lock while it works: a second process asking for the same cell waits, then finds it
    done. Once the new record is written, older records of the same settings (stale: other code or inputs)
    move to cells/history/."""
    if records.record_status(record_path, cell.key) == "done":
        return "skipped"
    with locked(record_path.with_name(record_path.name + ".lock"), label=f"cell {cell.label}"):
        status = records.record_status(record_path, cell.key)
        if status == "done":
            return "skipped"
        if status is not None:
            records.archive(record_path)
        outcome = _evaluate_cell(stages, cell, options, record_path)
        if outcome == "done" and cell.settings_key:
            for path, _ in records.same_settings_records(record_path.parent, cell.record_name, cell.settings_key):
                records.archive(path)
        return outcome


def _base_record(stages: dict[str, TrainStage], cell: EvalCell, started: float) -> dict[str, Any]:
    commit, dirty = git_state()
    return {
        "schema_version": records.SCHEMA_VERSION, "key": cell.key, "settings_key": cell.settings_key,
        "fingerprint": cell.fingerprint, "grid": cell.grid, "block": cell.block,
        "scenario": cell.scenario, "defence": cell.defence_key, "defence_name": cell.defence_name,
        "stage": cell.stage, "attack": cell.attack_key, "attack_name": cell.attack_name,
        "attack_settings": cell.attack_params, "attack_budget": cell.attack_budget,
        "target": cell.attack_params.get("target"), "eps": cell.attack_params.get("eps"),
        "norm": cell.attack_params.get("norm"), "seed": cell.seed, "n_examples": cell.n_examples,
        "eval_settings": cell.eval, "git_commit": commit, "git_dirty": dirty, "packages": package_versions(),
        "defence_params": stages[cell.stage].params,
        "scenario_identity": stages[cell.stage].identity.get("scenario"),
        "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "log": os.environ.get("BENCH_JOB_LOG"), "started_at": started,
    }


def _read_partial(path: Path, cell: EvalCell) -> dict[str, Any]:
    """Batches an interrupted run of this cell saved; a damaged or foreign partial file is set aside."""
    try:
        partial = records.read_json(path)
    except (ValueError, UnicodeDecodeError) as error:
        records.quarantine(path, str(error))
        return {"key": cell.key, "batches": {}}
    if partial is None:
        return {"key": cell.key, "batches": {}}
    if not isinstance(partial, dict) or partial.get("key", cell.key) != cell.key or \
            not isinstance(partial.get("batches"), dict):
        records.quarantine(path, "not this cell's partial result")
        return {"key": cell.key, "batches": {}}
    return partial


def _evaluate_cell(stages: dict[str, TrainStage], cell: EvalCell, options: dict[str, Any], record_path: Path) -> str:
    started = time.time()
    partial_path = record_path.with_name(record_path.name + ".partial")
    base_record = _base_record(stages, cell, started)
    try:
        device = resolve_device(options.get("device", "auto"))
        defence = load_fitted_defence(stages, cell.stage, options, device)
        scenario = stage_scenario(stages[cell.stage], options)
        index, images, labels = evaluation_subset(scenario, cell.n_examples, options.get("data_dir"),
                                                  bool(options.get("smoke")))
        draws = int(cell.eval["stochastic_draws"] if defence.stochastic else cell.eval["draws"])
        attack = attacks.build(cell.attack_name, **{k: v for k, v in cell.attack_params.items() if k != "name"})
        batch_size = int(cell.eval["batch_size"])
        partial = _read_partial(partial_path, cell)
        n_batches = (len(labels) + batch_size - 1) // batch_size
        progress = Progress(f"{cell.label}", n_batches, LOG, every_s=20.0, unit="batches")
        progress.done = len(partial["batches"])
        for batch in range(n_batches):
            if str(batch) in partial["batches"]:
                continue
            lo, hi = batch * batch_size, min((batch + 1) * batch_size, len(labels))
            result = _batch_result(defence, attack, images[lo:hi].to(device), labels[lo:hi].to(device), draws,
                                   derive_seed(cell.seed, cell.settings_key, batch))
            partial["batches"][str(batch)] = result
            write_json_atomic(partial_path, partial)
            progress.update()
        batches = [partial["batches"][str(b)] for b in range(n_batches)]
        clean = torch.tensor([row for b in batches for row in b["clean"]])
        robust = torch.tensor([row for b in batches for row in b["robust"]])
        decision = cell.eval.get("decision", "single")
        record = {
            **base_record, "status": "done", "stochastic": defence.stochastic, "draws": draws, "decision": decision,
            **record_accuracies(clean, robust, decision), **record_extras(batches),
            "n_examples": len(labels),
            "per_example": {"index": index.tolist(), "label": labels.tolist(), "clean_draws": clean.tolist(),
                            "robust_draws": robust.tolist(),
                            "perturbation": [v for b in batches for v in b["perturbation"]]},
            "counts": {"forward_examples": sum(b["forward_examples"] for b in batches),
                       "backward_examples": sum(b["backward_examples"] for b in batches)},
            "attack_seconds": sum(b["attack_seconds"] for b in batches),
            "wall_seconds": time.time() - started, "hardware": hardware_summary(device), "finished_at": time.time(),
        }
        write_json_atomic(record_path, record)
        partial_path.unlink(missing_ok=True)
        LOG.info("%s: clean %.3f robust %.3f (n=%d)", cell.label, record["clean_acc"], record["robust_acc"],
                 len(labels))
        return "done"
    except Exception as error:  # a failed cell is recorded as failed, never as a result
        LOG.error("%s failed: %s", cell.label, error)
        write_json_atomic(record_path, {
            **base_record, "status": "failed", "error": "".join(traceback.format_exception(error)),
            "wall_seconds": time.time() - started, "finished_at": time.time()})
        return "failed"
