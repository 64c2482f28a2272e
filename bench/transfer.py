"""Transfer cells: the adversarial examples another cell saved, judged on this cell's defence.

A grid attack entry `{name: transfer, from: <scenario>/<defence>/<attack>}` evaluates the final points that
cell (the one of the same seed and test subset, run with `eval.save_adversarials=true`) saved
(bench.adversarials) against the transfer cell's own defence, with the harness's K-draw judgement: the
evaluation is the runner's own (bench.evaluate), the attack replaying the saved point of each example in place
of an attack's output. The planner (bench.grid) resolves `from`; this module checks, when the cell runs,
that the saved examples are this cell's (same indices, labels and clean images, bit for bit) and replays them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import nn

from attacks.base import Attack
from bench.adversarials import SavedAdversarials, images_digest

TRANSFER = "transfer"


@dataclass
class SavedPoints(Attack):
    """Replays saved points: example i of the evaluation subset gets point i (`at(offset)` for a batch that
    starts at example `offset`). The threat-model check of Attack.__call__ holds them to the source's ball."""

    registry_name: ClassVar[str] = TRANSFER
    source: str = ""  # the source cell, <scenario>/<defence>/<attack>
    points: torch.Tensor = field(default_factory=lambda: torch.zeros(0), repr=False)
    offset: int = 0

    def at(self, offset: int) -> SavedPoints:
        return replace(self, offset=offset)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        chosen = self.points[self.offset:self.offset + x.shape[0]]
        if chosen.shape != x.shape:
            raise ValueError(f"the saved points of {self.source} have no example for positions "
                             f"{self.offset}..{self.offset + x.shape[0] - 1} of shape {tuple(x.shape[1:])}")
        return chosen.to(device=x.device, dtype=x.dtype)

    def settings(self) -> dict:
        return {"name": TRANSFER, "eps": self.eps, "norm": self.norm, "target": self.target, "source": self.source}

    def budget(self) -> str:
        return f"{self.norm} eps={self.eps:.4g}, the points saved by {self.source}"


def replay_attack(saved: SavedAdversarials, source: str, index: torch.Tensor, images: torch.Tensor,
                  labels: torch.Tensor, eps: float, norm: str) -> SavedPoints:
    """The replaying attack, once the saved examples are checked to be these ones (ValueError otherwise)."""
    if saved.index.tolist() != index.tolist():
        raise ValueError(f"the examples {source} saved are not this cell's: test-split indices differ "
                         f"({len(saved.index)} saved, {len(index)} here)")
    if saved.labels.tolist() != labels.tolist():
        raise ValueError(f"the examples {source} saved carry other labels than this cell's")
    if saved.metadata.get("clean_sha256") != images_digest(images):
        raise ValueError(f"the clean images {source} saved its points for differ from this cell's (another "
                         "dataset, preprocessing or image size)")
    if tuple(saved.points.shape) != tuple(images.shape):
        raise ValueError(f"the points {source} saved have shape {tuple(saved.points.shape)}, this cell's "
                         f"examples {tuple(images.shape)}")
    return SavedPoints(eps=eps, norm=norm, source=source, points=saved.points)
