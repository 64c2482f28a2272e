"""A training stage: fit one defence on one scenario's training split and save it, resumably; and load a
fitted one back (with the stages it builds on) for evaluation.

Training saves per epoch through FitContext, so a job killed and re-run resumes. A stage is done when its
artifact folder holds what bench.layout calls the done file; a failure leaves the failed file instead.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import torch

import defences
from attacks.seeding import derive_seed, seed_everything
from bench import layout, records
from bench.locks import locked
from bench.logs import job_log
from bench.options import RunOptions
from bench.plan import Plan, TrainStage
from bench.runtime import git_state, hardware_summary, package_versions, resolve_device
from bench.scenarios import Scenario
from defences.atomic import write_json_atomic
from defences.base import Defence, FitContext

LOG = logging.getLogger("bench.training_stage")


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


def make_classifier(scenario: Scenario, options: RunOptions) -> tuple[torch.nn.Module, dict[str, Any]]:
    from bench.zoo import load_classifier

    if options.smoke and scenario.classifier_is_pretrained:
        from bench import smoke

        return smoke.make_classifier(scenario)
    task = scenario.task()
    return load_classifier(
        scenario.classifier, in_channels=task.channels, num_classes=task.num_classes, image_size=task.height,
        mean=task.mean, std=task.std, arch=scenario.classifier_arch, arch_params=scenario.classifier_params,
        model_dir=options.model_dir, dataset=scenario.robustbench_dataset, threat_model=scenario.norm)


def load_fitted_defence(plan: Plan, key: str, device: torch.device) -> Defence:
    """Rebuild a fitted defence from its artifact (and its base stage's, recursively)."""
    stage = plan.stages[key]
    if not layout.stage_is_done(stage.artifact_dir):
        reason = records.read_json(layout.stage_failed_path(stage.artifact_dir))
        detail = f": it failed with {reason['error'].splitlines()[-1]!r} (log: {reason.get('log')})" if reason else \
            ": it has not run yet"
        raise StageNotReady(f"training stage {stage.label} ({key}) has no finished artifact at "
                            f"{stage.artifact_dir}{detail}")
    scenario = plan.scenario(stage.scenario)
    base = load_fitted_defence(plan, stage.base_stage, device) if stage.base_stage else None
    classifier = base.classifier if base is not None else make_classifier(scenario, plan.options)[0]
    defence = defences.build(stage.defence_name, classifier=classifier, task=scenario.task(), base=base,
                             **stage.params)
    defence.load(Path(stage.artifact_dir))
    return defence.to(device).eval()


# --- fitting ---------------------------------------------------------------------------------------------

def run_training_stage(plan: Plan, key: str) -> str:
    """Fit and save one defence unless its artifact exists; returns 'done', 'skipped' or raises.

    Holds the stage's lock while it works: a second process asking for the same stage waits, then finds
    it done."""
    stage = plan.stages[key]
    if layout.stage_is_done(stage.artifact_dir):
        return "skipped"
    with locked(layout.lock_path(Path(stage.artifact_dir)), label=f"training stage {stage.label}"):
        if layout.stage_is_done(stage.artifact_dir):
            return "skipped"
        return _fit_stage(plan, stage)


def _fit_stage(plan: Plan, stage: TrainStage) -> str:
    device = resolve_device(plan.options.device)
    started = time.time()
    failed_path = layout.stage_failed_path(stage.artifact_dir)
    failed_path.unlink(missing_ok=True)
    try:
        seed_everything(derive_seed(stage.seed, "init", stage.settings_key))
        defence, provenance = _build_unfitted(plan, stage, device)
        folder = Path(stage.artifact_dir)
        ctx = FitContext(device=device, seed=stage.seed, workdir=folder, log=LOG,
                         classifier_pretrained=bool(provenance.get("pretrained")))
        LOG.info("training %s (%s) on %s", stage.label, stage.defence_name, hardware_summary(device))
        train = load_split(plan.scenario(stage.scenario), "train", plan.options.data_dir, plan.options.smoke)
        summary = defence.fit(train, ctx)
        defence.save(folder, _stage_metadata(stage, provenance, summary, started, device))
        for leftover in layout.stage_progress_files(folder):
            leftover.unlink()
        LOG.info("trained %s in %.1f s", stage.label, time.time() - started)
        return "done"
    except Exception as error:
        write_json_atomic(failed_path, records.stage_failure(
            stage, "".join(traceback.format_exception(error)), log=job_log(), failed_at=time.time()))
        raise


def _build_unfitted(plan: Plan, stage: TrainStage, device: torch.device) -> tuple[Defence, dict[str, Any]]:
    """The stage's defence before fitting, on its base stage's fitted defence or a fresh classifier."""
    scenario = plan.scenario(stage.scenario)
    base = load_fitted_defence(plan, stage.base_stage, device) if stage.base_stage else None
    if base is not None:
        classifier, provenance = base.classifier, {"source": f"stage:{stage.base_stage}", "pretrained": True}
    else:
        classifier, provenance = make_classifier(scenario, plan.options)
    defence = defences.build(stage.defence_name, classifier=classifier, task=scenario.task(), base=base,
                             **stage.params)
    return defence.to(device), provenance


def _stage_metadata(stage: TrainStage, provenance: dict[str, Any], summary: Any, started: float,
                    device: torch.device) -> dict[str, Any]:
    commit, dirty = git_state()
    return {"stage": stage.key, "label": stage.label, "defence_name": stage.defence_name, "params": stage.params,
            "identity": stage.identity, "settings_key": stage.settings_key, "fingerprint": stage.fingerprint,
            "classifier": provenance, "fit_summary": summary, "started_at": started,
            "seconds": time.time() - started, "git_commit": commit, "git_dirty": dirty,
            "packages": package_versions(), "hardware": hardware_summary(device)}
