"""The Defence interface every defence implements, the task it is built for, and its fitting context.

A defence is an `nn.Module` from images in [0, 1] to logits (or log-probabilities), differentiable end
to end. It wraps a classifier; defences with a purifier also expose `purify` and `classify` so that an
attack can replace the purifier's gradient by the identity (BPDA) or target the classifier alone.

Training-loop convention (CARSO, AToP): a defence's training module exports
`train_purifier(defence, train, ctx, ...)`, which takes the whole defence (typed by a Protocol declared in the
training module, so that it never imports the model module) and trains its purifier in place against its frozen
classifier; the model module's `fit` calls it. Every loop re-seeds per epoch (`FitContext.seed_epoch`), resumes
and checkpoints through `FitContext.resume` / `save_epoch`, reports progress through `FitContext.progress` and
measures accuracy with `defences.fitting.accuracy`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from attacks.progress import Progress
from attacks.registry import coerce_params
from attacks.seeding import derive_seed, seed_everything
from defences.atomic import unique_temp, write_json_atomic

LOG = logging.getLogger("bench.defences")

WEIGHTS_FILE = "defence.safetensors"  # a fitted defence's folder: its weights,
PROGRESS_FILE = "progress-{phase}.pt"  # a fit's resumable checkpoint of one phase (FitContext.checkpoint_path)
METADATA_FILE = "defence.json"  # then its metadata, written last (its presence marks the fit complete)


@dataclass(frozen=True)
class ImageData:
    """The facts about a dataset's images a defence needs: shape, classes, per-channel statistics of [0, 1] images.

    The harness's dataset catalogue (`bench.data.DatasetInfo`) extends it with how to get the files.
    """

    dataset: str
    channels: int
    height: int
    width: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"{self.dataset}: mean/std need one value per channel ({self.channels})")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


@dataclass(frozen=True)
class Task(ImageData):
    """What a defence needs to know about its scenario: the images (ImageData) and the threat model."""

    norm: str
    eps: float

    @classmethod
    def of(cls, data: ImageData, norm: str, eps: float, image_size: int | None = None) -> Task:
        """The task of `data` under threat model (norm, eps), its images resized to `image_size` when given."""
        height, width = (image_size, image_size) if image_size else (data.height, data.width)
        return cls(dataset=data.dataset, channels=data.channels, height=height, width=width,
                   num_classes=data.num_classes, mean=tuple(data.mean), std=tuple(data.std), norm=norm,
                   eps=float(eps))


ProgressFactory = Callable[..., Progress]


@dataclass
class FitContext:
    """Where and how a defence is fitted: device, seed, a work folder for resumable checkpoints, a logger and
    the progress meter the training loops report to (`make_progress(label, total, logger, every_s=, unit=)`)."""

    device: torch.device
    seed: int
    workdir: Path
    log: logging.Logger = field(default_factory=lambda: LOG)

    classifier_pretrained: bool = False
    make_progress: ProgressFactory = Progress

    def progress(self, label: str, total: int, every_s: float, unit: str, done: int = 0) -> Progress:
        """A progress meter for `total` units, `done` of them already finished (a resumed run)."""
        meter = self.make_progress(label, total, self.log, every_s=every_s, unit=unit)
        meter.done = done
        return meter

    def checkpoint_path(self, phase: str = "train") -> Path:
        return self.workdir / PROGRESS_FILE.format(phase=phase)

    def seed_epoch(self, epoch: int, phase: str = "train") -> torch.Generator:
        """Re-seed every RNG at an epoch start so that a resumed run repeats an uninterrupted one."""
        seed = derive_seed(self.seed, phase, epoch)
        seed_everything(seed)
        return torch.Generator().manual_seed(seed)

    def save_checkpoint(self, state: dict[str, Any], phase: str = "train") -> None:
        """Atomically save training progress (tensors, numbers, strings and containers of them)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_path(phase)
        tmp = unique_temp(path)
        try:
            torch.save(state, tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, phase: str = "train") -> dict[str, Any] | None:
        path = self.checkpoint_path(phase)
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def resume(self, phase: str, epochs: int, **stateful: Any) -> tuple[list[dict[str, Any]], int]:
        """(history, first epoch to run): the `stateful` objects (modules, optimisers) are restored from the
        phase's checkpoint when there is one (saved by `save_epoch`); otherwise ([], 0)."""
        saved = self.load_checkpoint(phase)
        if saved is None:
            return [], 0
        for name, thing in stateful.items():
            thing.load_state_dict(saved[name])
        start_epoch = int(saved["epoch"]) + 1
        self.log.info("%s: resuming after epoch %d of %d", phase, start_epoch, epochs)
        return list(saved["history"]), start_epoch

    def save_epoch(self, phase: str, epoch: int, history: list[dict[str, Any]], **stateful: Any) -> None:
        """Checkpoint a finished epoch: the `stateful` objects' state dicts and the history so far."""
        state = {"epoch": epoch, **{name: thing.state_dict() for name, thing in stateful.items()},
                 "history": history}
        self.save_checkpoint(state, phase=phase)


class Defence(nn.Module):
    """Base class. Subclasses set `Params` (a dataclass of settings with the paper's defaults)."""

    code_version: ClassVar[str] = "1"
    stochastic: ClassVar[bool] = False
    has_purifier: ClassVar[bool] = False
    saves_classifier: ClassVar[bool] = True
    # The attack registry names this defence builds (`attacks.build`) to fit or to classify; its stage's code
    # fingerprint follows them.
    registry_members: ClassVar[tuple[str, ...]] = ()
    # Smoke mode's settings (bench/smoke.py): Params field -> its smoke value (or attacks.base.Budget(floor): shrunk
    # logarithmically); fields not named keep theirs. None: not declared, and smoke mode applies its default.
    smoke_budget: ClassVar[dict[str, Any] | None] = None
    # The calibrated cost family it is priced as (bench/executors/calibration.py; bench/benchmarks/gpu.py measures
    # "at": a classifier alone, "carso", "atop"); None: not priced, its cells are listed as not covered.
    cost_kind: ClassVar[str | None] = None

    @dataclass
    class Params:
        pass

    def __init__(self, classifier: nn.Module, task: Task, params: Any, base: Defence | None = None):
        super().__init__()
        self.classifier = classifier
        self.task = task
        self.params = params
        # Not a registered submodule: the base stage's weights belong to its own artifact, and registering it
        # would save (and require on load) a second copy of the shared classifier.
        object.__setattr__(self, "base", base)

    @classmethod
    def make_params(cls, given: dict[str, Any]) -> Any:
        return coerce_params(cls.Params, given, owner=f"defence {cls.__name__}")

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)

    # --- inference -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.purify(x))

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def bpda_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass BPDA attacks (attacks/bpda.py): this defence's output, with the purifier's gradient
        replaced by the identity. Defences whose forward is more than classify(purify(x)) override it."""
        from attacks.base import straight_through

        with torch.no_grad():
            purified = self.purify(x)
        return self.classify(straight_through(x, purified))

    # --- fitting ---------------------------------------------------------------------------------
    def fit(self, train: Any, ctx: FitContext) -> dict[str, Any]:
        """Fit the defence on the training split; returns a JSON-able summary (losses, accuracies, time)."""
        return {}

    # --- persistence -----------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """What is saved: everything, or without the classifier when it comes from elsewhere."""
        state = self.state_dict()
        if not self.saves_classifier:
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def save(self, folder: Path, metadata: dict[str, Any]) -> None:
        """Weights as safetensors (WEIGHTS_FILE), then metadata as JSON (METADATA_FILE, written last: its presence
        marks completion). Each goes to a unique temporary file renamed into place, so a reader never sees half a
        file."""
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / WEIGHTS_FILE
        tmp = unique_temp(weights)
        try:
            save_file(self.checkpoint_state(), str(tmp))
            tmp.replace(weights)
        finally:
            tmp.unlink(missing_ok=True)
        write_json_atomic(folder / METADATA_FILE, metadata)

    def load(self, folder: Path) -> None:
        state = load_file(str(folder / WEIGHTS_FILE))
        missing, unexpected = self.load_state_dict(state, strict=False)
        if not self.saves_classifier:
            missing = [k for k in missing if not k.startswith("classifier.")]
        if missing or unexpected:
            raise RuntimeError(
                f"checkpoint {folder} does not match {type(self).__name__}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
