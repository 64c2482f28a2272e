"""The Defence interface every defence implements, the task it is built for, and its fitting context.

A defence is an `nn.Module` from images in [0, 1] to logits (or log-probabilities), differentiable end
to end. It wraps a classifier; defences with a purifier also expose `purify` and `classify` so that an
attack can replace the purifier's gradient by the identity (BPDA) or target the classifier alone.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bench.records import unique_temp, write_json_atomic
from bench.registry import coerce_params
from bench.runtime import derive_seed, seed_everything

LOG = logging.getLogger("bench.defences")


@dataclass(frozen=True)
class Task:
    """What a defence needs to know about its scenario: data shape, classes, statistics, threat model."""

    dataset: str
    channels: int
    height: int
    width: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    norm: str
    eps: float

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


@dataclass
class FitContext:
    """Where and how a defence is fitted: device, seed, a work folder for resumable checkpoints, a logger."""

    device: torch.device
    seed: int
    workdir: Path
    log: logging.Logger = field(default_factory=lambda: LOG)

    classifier_pretrained: bool = False

    def checkpoint_path(self, phase: str = "train") -> Path:
        return self.workdir / f"progress-{phase}.pt"

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


class Defence(nn.Module):
    """Base class. Subclasses set `Params` (a dataclass of settings with the paper's defaults)."""

    code_version: ClassVar[str] = "1"
    stochastic: ClassVar[bool] = False
    has_purifier: ClassVar[bool] = False
    saves_classifier: ClassVar[bool] = True

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
        """Weights as safetensors, then metadata as JSON (written last: its presence marks completion). Each
        goes to a unique temporary file renamed into place, so a reader never sees half a file."""
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / "defence.safetensors"
        tmp = unique_temp(weights)
        try:
            save_file(self.checkpoint_state(), str(tmp))
            tmp.replace(weights)
        finally:
            tmp.unlink(missing_ok=True)
        write_json_atomic(folder / "defence.json", metadata)

    def load(self, folder: Path) -> None:
        state = load_file(str(folder / "defence.safetensors"))
        missing, unexpected = self.load_state_dict(state, strict=False)
        if not self.saves_classifier:
            missing = [k for k in missing if not k.startswith("classifier.")]
        if missing or unexpected:
            raise RuntimeError(
                f"checkpoint {folder} does not match {type(self).__name__}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
