"""The evaluation protocol: correctness judged from K independent forward passes of a (stochastic) model.

For a deterministic model K = 1 is exact. For a stochastic one each draw is a fresh forward pass with the
defence's own randomness; the protocol reports, per example, the single-draw rate (the expected accuracy of
one random pass), the majority vote over the K draws and the worst case (wrong on any draw).
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def evaluate_correctness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1,
                         chunk_size: int | None = None) -> torch.Tensor:
    """BoolTensor[draws, B]: whether each of `draws` independent forward passes classifies each x correctly."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    chunk = chunk_size or x.shape[0]
    rows = []
    for _ in range(draws):
        predictions = torch.cat([model(x[i:i + chunk]).argmax(1) for i in range(0, x.shape[0], chunk)])
        rows.append(predictions == y)
    return torch.stack(rows)


def summarise_draws(correct: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example single-draw rate, majority-vote and worst-of-K correctness from a [draws, B] matrix."""
    rate = correct.float().mean(0)
    return {"single": rate, "majority": (rate > 0.5).float(), "worst": correct.all(0).float()}
