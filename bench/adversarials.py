"""Saved adversarial examples: a cell's final points and per-example judgements, in one safetensors file.

A cell evaluated with `eval.save_adversarials=true` writes, beside its record (bench.layout.adversarials_path,
named by the cell key), the tensors
- `points` [n, C, H, W] float32: the attack's output for each example, the very points the record judged;
- `index` [n] int64 (positions in the test split), `label` [n] int64;
- `clean_draws`, `robust_draws` [n, draws] uint8: the record's per-example draw matrices (1: that forward pass
  classified the example correctly), from which bench.records' accuracies are computed;
and string metadata: the cell's key, label, norm, eps, draws, decision, stochastic, n_examples, clean_acc,
robust_acc and `clean_sha256` (the digest of the clean images, so that a reader can check it holds the same
examples). While the cell runs, each finished batch's points are kept in a partial folder (a resumed run keeps
them). Files are written atomically (a unique temporary file renamed into place); one already at the path is
moved to history/ with a warning, never overwritten. safetensors holds tensors and strings only: loading one
runs no code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from defences.atomic import unique_temp

LOG = logging.getLogger("bench.adversarials")
HISTORY = "history"
TENSORS = ("points", "index", "label", "clean_draws", "robust_draws")


@dataclass(frozen=True)
class SavedAdversarials:
    """A cell's saved points, the examples they belong to and how the cell judged them."""

    points: torch.Tensor
    index: torch.Tensor
    labels: torch.Tensor
    clean_draws: torch.Tensor
    robust_draws: torch.Tensor
    metadata: dict[str, str]

    @property
    def draws(self) -> int:
        return int(self.robust_draws.shape[1])


def images_digest(images: torch.Tensor) -> str:
    """SHA-256 of a float32 image tensor's bytes: equal exactly when the images are bit for bit the same."""
    return hashlib.sha256(images.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


def write_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file through a unique temporary file renamed into place; an existing file at `path`
    is first moved to history/ (with a warning), never silently replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        set_aside(path)
    tmp = unique_temp(path)
    try:
        data = save_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def set_aside(path: Path) -> Path:
    """Move a saved file or folder to history/ beside it, under a name stamped with the time."""
    target = path.parent / HISTORY / f"{path.name}.{time.time_ns()}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(target))
    LOG.warning("moved %s to %s instead of overwriting it", path, target)
    return target


def batch_file(folder: Path, batch: int) -> Path:
    return folder / f"batch-{batch}.safetensors"


def save_batch(folder: Path, batch: int, points: torch.Tensor) -> None:
    """Keep one finished batch's points until the cell is done (bench.evaluate resumes from them)."""
    write_atomic(batch_file(folder, batch), {"points": points})


def saved_batches(folder: Path) -> set[int]:
    """The batches whose points an interrupted run of the cell saved."""
    if not folder.is_dir():
        return set()
    return {int(p.stem.split("-")[1]) for p in folder.glob("batch-*.safetensors") if p.stem.split("-")[1].isdigit()}


def gather_batches(folder: Path, n_batches: int) -> torch.Tensor:
    """Every batch's saved points, in order."""
    return torch.cat([load_file(str(batch_file(folder, b)))["points"] for b in range(n_batches)])


def save(path: Path, points: torch.Tensor, result: dict[str, Any], metadata: dict[str, str]) -> None:
    """The cell's file from its points and its done record's result fields (per_example, accuracies)."""
    per_example = result["per_example"]
    tensors = {"points": points.float(), "index": torch.tensor(per_example["index"], dtype=torch.int64),
               "label": torch.tensor(per_example["label"], dtype=torch.int64),
               "clean_draws": torch.tensor(per_example["clean_draws"], dtype=torch.uint8),
               "robust_draws": torch.tensor(per_example["robust_draws"], dtype=torch.uint8)}
    judged = {name: str(result[name]) for name in ("clean_acc", "robust_acc", "draws", "decision", "stochastic",
                                                   "n_examples")}
    write_atomic(path, tensors, {**metadata, **judged})


def load(path: str | Path) -> SavedAdversarials:
    """A saved file, checked to hold every tensor with consistent shapes (ValueError says what is wrong)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no saved adversarial examples at {path}")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    missing = [name for name in TENSORS if name not in tensors]
    if missing:
        raise ValueError(f"{path} lacks the tensor(s) {missing}: not saved adversarial examples")
    n = tensors["points"].shape[0]
    sizes = {name: tensors[name].shape[0] for name in TENSORS}
    if set(sizes.values()) != {n} or tensors["clean_draws"].dim() != 2 or tensors["robust_draws"].dim() != 2:
        raise ValueError(f"{path}: inconsistent tensor shapes {sizes}")
    return SavedAdversarials(points=tensors["points"], index=tensors["index"], labels=tensors["label"],
                             clean_draws=tensors["clean_draws"], robust_draws=tensors["robust_draws"],
                             metadata=metadata)
