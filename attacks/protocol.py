"""The evaluation protocol: correctness judged from K independent forward passes of a (stochastic) model.

For a deterministic model K = 1 is exact. For a stochastic one each draw is a fresh forward pass with the
defence's own randomness; the protocol reports, per example, the single-draw rate (the expected accuracy of
one random pass), the majority vote over the K draws and the worst case (wrong on any draw).

Draws are separate forward passes, never copies stacked into one batch: a defence that draws its randomness
once per batch (one mask for the whole batch, say) would otherwise give K identical "independent" draws.
Examples are chunked (`chunk_size`) to bound memory.
"""

from __future__ import annotations

import torch
from torch import nn

from attacks.losses import attack_loss

RULES = ("single", "majority", "worst")


def _chunks(n: int, chunk_size: int | None) -> list[slice]:
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (or None for one chunk), got {chunk_size}")
    step = chunk_size or max(n, 1)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


@torch.no_grad()
def evaluate_correctness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1,
                         chunk_size: int | None = None) -> torch.Tensor:
    """BoolTensor[draws, B]: whether each of `draws` independent forward passes classifies each x correctly."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]} labels")
    parts = _chunks(x.shape[0], chunk_size)
    rows = []
    for _ in range(draws):
        predictions = torch.cat([model(x[part]).argmax(1) for part in parts]) if parts else y.new_empty(0)
        rows.append(predictions == y)
    return torch.stack(rows)


@torch.no_grad()
def score_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1,
                 chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the fraction of `draws` passes that classify x correctly, and the mean margin loss.

    The margin (best other logit minus the true one, > 0 when wrong) breaks ties between candidate
    adversarial points with the same correct rate: the larger, the closer to flipping on a new draw.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    parts = _chunks(x.shape[0], chunk_size)
    correct = torch.zeros(x.shape[0], device=x.device)
    margin = torch.zeros(x.shape[0], device=x.device)
    for _ in range(draws):
        for part in parts:
            logits = model(x[part])
            correct[part] += (logits.argmax(1) == y[part]).float()
            margin[part] += attack_loss(logits.float(), y[part], "margin")
    return correct / draws, margin / draws


def summarise_draws(correct: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example single-draw rate, majority-vote and worst-of-K correctness from a [draws, B] matrix.

    Majority is a strict majority (a tie counts as wrong): with K = 2 and one correct draw of two the
    example is not robust.
    """
    if correct.dim() != 2:
        raise ValueError(f"expected a [draws, B] matrix, got shape {tuple(correct.shape)}")
    rate = correct.float().mean(0)
    return {"single": rate, "majority": (rate > 0.5).float(), "worst": correct.bool().all(0).float()}


def worst_case_over_attacks(per_attack: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-example worst case across several attacks of one (scenario, defence), from their [draws, B] matrices.

    An example counts as robust only if it is robust under every attack: the single-draw rate is the lowest
    rate over the attacks, majority and worst-of-K are ANDed. The matrices must cover the same examples in the
    same order (they may differ in their number of draws).
    """
    if not per_attack:
        raise ValueError("worst_case_over_attacks needs at least one attack's [draws, B] matrix")
    sizes = {m.shape[1] for m in per_attack}
    if len(sizes) != 1:
        raise ValueError(f"the attacks cover different numbers of examples: {sorted(sizes)}")
    summaries = [summarise_draws(m) for m in per_attack]
    return {rule: torch.stack([s[rule] for s in summaries]).amin(0) for rule in RULES}
