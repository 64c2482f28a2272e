"""Evaluating one cell: one attack on one fitted defence over the cell's test subset, resumably.

Each finished batch is saved to the cell's partial file (bench.layout) and re-seeded per batch from the cell's
settings key, so a job killed and re-run produces the same record as an uninterrupted one. A batch that runs
out of GPU memory is retried with a chunk size halved (bench.oom; seeds: `piece_seed`), and the record lists
the retries. The record's format is bench.records'.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import attacks
from attacks.base import lp_norms
from attacks.progress import Progress
from attacks.protocol import batch_extras, predict_draws, record_accuracies, record_extras
from attacks.seeding import derive_seed, seed_everything
from bench import adversarials, layout, oom, records
from bench.locks import locked
from bench.plan import EvalCell, Plan
from bench.runtime import hardware_summary, resolve_device
from bench.scenarios import Scenario
from bench.training_stage import load_fitted_defence, load_split
from bench.transfer import TRANSFER, SavedPoints, replay_attack
from defences.atomic import write_json_atomic
from defences.base import Defence

LOG = logging.getLogger("bench.evaluate")


def evaluation_subset(scenario: Scenario, n_examples: int, data_dir: str | None,
                      smoke: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first n of a fixed permutation of the test split (same for every cell of the scenario)."""
    split = load_split(scenario, "test", data_dir, smoke)
    generator = torch.Generator().manual_seed(scenario.test_subset_seed)
    index = torch.randperm(len(split), generator=generator)[:n_examples].sort().values
    return index, split.float_images(index), split.labels[index]


def build_attack(cell: EvalCell) -> attacks.Attack:
    return attacks.build(cell.attack_name, **{k: v for k, v in cell.attack_params.items() if k != "name"})


def _batch_result(defence: Defence, attack: attacks.Attack, x: torch.Tensor, y: torch.Tensor, draws: int,
                  seed: int) -> dict[str, Any]:
    seed_everything(seed)
    clean_predictions = predict_draws(defence, x, draws)
    before = dict(getattr(attack, "counts", {"forward_examples": 0, "backward_examples": 0}))
    started = time.time()
    x_adv = attack(defence, x, y)
    attack_seconds = time.time() - started
    robust_predictions = predict_draws(defence, x_adv, draws)
    size = lp_norms(x_adv.double() - x.double(), attack.norm)  # exact for float32 points (the threat-model check's)
    return {"clean": (clean_predictions == y).T.int().tolist(), "robust": (robust_predictions == y).T.int().tolist(),
            "attack_seconds": attack_seconds,
            "forward_examples": attack.counts["forward_examples"] - before["forward_examples"],
            "backward_examples": attack.counts["backward_examples"] - before["backward_examples"],
            "perturbation": size.tolist(), "points": x_adv.detach(),
            **batch_extras(defence, attack, x, x_adv, clean_predictions, robust_predictions)}


def run_eval_cell(plan: Plan, cell: EvalCell) -> str:
    """Evaluate one cell and write its record; returns 'done', 'skipped' or 'failed' (a failed record).

    Holds the cell's lock while it works: a second process asking for the same cell waits, then finds it
    done. Once the new record is written, older records of the same settings (stale: other code or inputs)
    move to cells/history/."""
    record_path = layout.record_path(plan, cell)
    if cell_is_done(plan, cell):
        return "skipped"
    with locked(layout.lock_path(record_path), label=f"cell {cell.label}"):
        status = records.record_status(record_path, cell.key)
        if cell_is_done(plan, cell):
            return "skipped"
        if status is not None:
            records.archive(record_path)
        record = evaluate_cell(plan, cell, layout.partial_path(record_path))
        write_json_atomic(record_path, record)
        if record["status"] == "done":
            layout.partial_path(record_path).unlink(missing_ok=True)
            if cell.settings_key:
                for path, _ in records.same_settings_records(record_path.parent, cell.record_name,
                                                             cell.settings_key):
                    records.archive(path)
        return record["status"]


def cell_is_done(plan: Plan, cell: EvalCell) -> bool:
    """Whether a cell has its done record and, when it saves its adversarial examples, their file."""
    return records.record_status(layout.record_path(plan, cell), cell.key) == "done" and \
        not layout.points_missing(plan, cell)


def ensure_source(plan: Plan, cell: EvalCell) -> adversarials.SavedAdversarials:
    """A transfer cell's source points: the source cell is evaluated first when it is not done (its lock makes a
    job evaluating it at the same time finish it first); a source that fails fails this cell."""
    source = plan.cell(cell.source_key)
    if run_eval_cell(plan, source) not in ("done", "skipped") or not cell_is_done(plan, source):
        raise RuntimeError(f"the source cell {source.label} of this transfer cell has no result (see its record)")
    return adversarials.load(layout.adversarials_path(plan, source))


def evaluate_cell(plan: Plan, cell: EvalCell, partial_path: Path | None = None) -> dict[str, Any]:
    """One cell's record (bench.records' format): `done` with its results, or `failed` with the error.

    With `partial_path`, finished batches are saved there and batches found there are not computed again."""
    started = time.time()
    fields = records.run_fields(cell, plan.stages[cell.stage_key], started)
    try:
        result = _evaluate(plan, cell, partial_path, started)
    except Exception as error:  # a failed cell is recorded as failed, never as a result
        LOG.error("%s failed: %s", cell.label, error)
        retries = {"oom_retries": error.retries} if isinstance(error, oom.OutOfMemoryAtFloor) else {}
        return records.failed_record(fields, "".join(traceback.format_exception(error)),
                                     wall_seconds=time.time() - started, finished_at=time.time(), **retries)
    LOG.info("%s: clean %.3f robust %.3f (n=%d)", cell.label, result["clean_acc"], result["robust_acc"],
             result["n_examples"])
    return records.done_record(fields, result)


def _evaluate(plan: Plan, cell: EvalCell, partial_path: Path | None, started: float) -> dict[str, Any]:
    """The result fields of a done record (and the saved points file, for a cell that saves them)."""
    saved = ensure_source(plan, cell) if cell.attack_name == TRANSFER else None
    device = resolve_device(plan.options.device)
    defence = load_fitted_defence(plan, cell.stage_key, device)
    index, images, labels = evaluation_subset(plan.scenario(cell.scenario), cell.n_examples, plan.options.data_dir,
                                              plan.options.smoke)
    attack = build_attack(cell) if saved is None else \
        replay_attack(saved, cell.attack_params["source"], index, images, labels, cell.attack_params["eps"],
                      cell.attack_params["norm"])
    draws = cell.eval.draws_for(defence.stochastic)
    points_dir = layout.adversarials_partial_dir(layout.adversarials_path(plan, cell)) \
        if cell.eval.save_adversarials else None
    batches = _attack_batches(cell, defence, attack, images, labels, draws, device, partial_path, points_dir)
    # the components' declared facts the report reads (bench/reporting/decomposition.py)
    declared = {"has_purifier": bool(defence.has_purifier), "through_bpda": bool(type(attack).through_bpda)}
    result = {**result_fields(batches, index.tolist(), labels, defence.stochastic, draws, cell.eval.decision),
              **declared, "wall_seconds": time.time() - started, "hardware": hardware_summary(device),
              "finished_at": time.time()}
    if points_dir is not None:
        _save_points(plan, cell, points_dir, images, result)
    return result


def _save_points(plan: Plan, cell: EvalCell, points_dir: Path, images: torch.Tensor, result: dict[str, Any]) -> None:
    """The cell's saved adversarial examples from its batches' points; the partial folder is then removed."""
    n_batches = (len(images) + cell.eval.batch_size - 1) // cell.eval.batch_size
    metadata = {"key": cell.key, "settings_key": cell.settings_key, "cell": cell.label,
                "norm": str(cell.attack_params.get("norm")), "eps": str(cell.attack_params.get("eps")),
                "clean_sha256": adversarials.images_digest(images)}
    adversarials.save(layout.adversarials_path(plan, cell), adversarials.gather_batches(points_dir, n_batches),
                      result, metadata)
    shutil.rmtree(points_dir, ignore_errors=True)


def result_fields(batches: list[dict[str, Any]], index: list[int], labels: torch.Tensor, stochastic: bool,
                  draws: int, decision: str) -> dict[str, Any]:
    """A done record's result fields from its batches' results (bench.records adds the cell's identity)."""
    clean = torch.tensor([row for b in batches for row in b["clean"]])
    robust = torch.tensor([row for b in batches for row in b["robust"]])
    return {
        "stochastic": stochastic, "draws": draws, "decision": decision,
        **record_accuracies(clean, robust, decision), **record_extras(batches), "n_examples": len(labels),
        "per_example": {"index": index, "label": labels.tolist(), "clean_draws": clean.tolist(),
                        "robust_draws": robust.tolist(),
                        "perturbation": [v for b in batches for v in b["perturbation"]]},
        "counts": {"forward_examples": sum(b["forward_examples"] for b in batches),
                   "backward_examples": sum(b["backward_examples"] for b in batches)},
        "attack_seconds": sum(b["attack_seconds"] for b in batches),
        **({"oom_retries": retries} if (retries := [r for b in batches for r in b.get("oom_retries", [])]) else {}),
    }


def _attack_batches(cell: EvalCell, defence: Defence, attack: attacks.Attack, images: torch.Tensor,
                    labels: torch.Tensor, draws: int, device: torch.device, partial_path: Path | None,
                    points_dir: Path | None = None) -> list[dict[str, Any]]:
    """A cell's batches, resumed from and saved to its partial file when it has one; with `points_dir`, each
    batch's points are kept there (a batch done without its points file is computed again)."""
    partial = _read_partial(partial_path, cell) if partial_path else {"key": cell.key, "batches": {}}
    if points_dir is not None:
        kept = adversarials.saved_batches(points_dir)
        partial["batches"] = {b: v for b, v in partial["batches"].items() if b.isdigit() and int(b) in kept}
    save = (lambda: write_json_atomic(partial_path, partial)) if partial_path else None
    keep = (lambda batch, points: adversarials.save_batch(points_dir, batch, points)) if points_dir else None
    return attack_batches(defence, attack, images, labels, draws, device, batch_size=cell.eval.batch_size,
                          seed=cell.seed, settings_key=cell.settings_key, label=cell.label,
                          done=partial["batches"], after_batch=save, keep_points=keep)


def attack_batches(defence: torch.nn.Module, attack: attacks.Attack, images: torch.Tensor, labels: torch.Tensor,
                   draws: int, device: torch.device, *, batch_size: int, seed: int, settings_key: str, label: str,
                   done: dict[str, Any] | None = None, after_batch: Callable[[], None] | None = None,
                   keep_points: Callable[[int, torch.Tensor], None] | None = None) -> list[dict[str, Any]]:
    """Every batch's results in order (a batch retried in smaller pieces after running out of GPU memory gives
    one result per piece). Batches already in `done` (by index as a string) are kept; `keep_points(batch,
    points)` gets each new batch's final points (on the CPU), then `after_batch` runs (the runner saves
    there). Seeds: `piece_seed`; out of memory: bench.oom."""
    done = {} if done is None else done
    n_batches = (len(labels) + batch_size - 1) // batch_size
    progress = Progress(label, n_batches, LOG, every_s=20.0, unit="batches")
    progress.done = len(done)
    with oom.ChunkSizes(defence, attack, batch_size, device).restored() as sizes:
        for batch in range(n_batches):
            if str(batch) in done:
                continue
            pieces = _batch_pieces(defence, attack, images, labels, draws, device, batch, batch_size, sizes,
                                   (seed, settings_key, label))
            points = [piece.pop("points") for piece in pieces]  # never into `done` (a JSON file)
            if keep_points is not None:
                keep_points(batch, torch.cat(points).cpu())
            done[str(batch)] = pieces[0] if len(pieces) == 1 else {"pieces": pieces}
            if after_batch is not None:
                after_batch()
            progress.update()
    return [piece for b in range(n_batches) for piece in done[str(b)].get("pieces", [done[str(b)]])]


def piece_seed(seed: int, settings_key: str, offset: int, size: int) -> int:
    """The seed of the examples [offset, offset + size) evaluated as one batch: derive_seed(seed, settings_key,
    offset // size). A whole batch b of the cell's batch size B is seeded with index b; a piece of size s of a
    batch retried after running out of memory gets the seed that batch offset // s of a run with batch size s
    gets, so where s divides the piece's offset (B a multiple of s, as in halving a power of two) the piece's
    results are exactly those of an unretried run with batch size s."""
    return derive_seed(seed, settings_key, offset // size)


def _batch_pieces(defence: torch.nn.Module, attack: attacks.Attack, images: torch.Tensor, labels: torch.Tensor,
                  draws: int, device: torch.device, batch: int, batch_size: int, sizes: oom.ChunkSizes,
                  seeding: tuple[int, str, str]) -> list[dict[str, Any]]:
    """Batch `batch`'s results, one per piece: the whole batch, or pieces of the evaluation batch size that
    out-of-memory retries left (each retry is in the `oom_retries` of the piece that then succeeded)."""
    seed, settings_key, label = seeding
    start, end = batch * batch_size, min((batch + 1) * batch_size, len(labels))
    pieces: list[dict[str, Any]] = []
    first_retry = len(sizes.retries)  # the retries before a piece succeeds are recorded in it
    while start < end:
        size = sizes.eval_batch
        stop = min(end, (start // size + 1) * size)
        try:
            piece_attack = attack.at(start) if isinstance(attack, SavedPoints) else attack
            result = _batch_result(defence, piece_attack, images[start:stop].to(device),
                                   labels[start:stop].to(device), draws, piece_seed(seed, settings_key, start, size))
        except torch.OutOfMemoryError as error:  # handled below, once the error and its frames are released
            message = str(error)
        else:
            retries = sizes.retries[first_retry:]
            pieces.append({**result, "oom_retries": retries} if retries else result)
            start, first_retry = stop, len(sizes.retries)
            continue
        oom.after_out_of_memory(sizes, {"batch": batch, "offset": start, "examples": stop - start}, message, label)
    return pieces


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
