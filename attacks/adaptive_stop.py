"""The stopping rule of `adaptive` (attacks/adaptive.py): did a round break examples beyond re-scoring noise?

At the end of a round, the examples whose worst point changed are re-scored twice with common random numbers:
their new point and their point from before the round, in two otherwise identical batches under the same seed,
so that both see the same draws of the defence's randomness (`paired_rescore`). An example is newly broken
where the new point's correct count over the draws is lower, worsened where it is higher.

If the round's members had found nothing real, every changed example's old and new point would be equally good,
and under common draws a lower and a higher count equally likely: the newly broken count is then Binomial(broken
+ worsened, 1/2). The round counts as productive when at least `min_new` examples were newly broken and, on a
stochastic model, the exact one-sided binomial p-value of that count is at most `alpha`. A deterministic model
has no re-scoring noise: every newly broken example is real, and only `min_new` applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attacks.exact_tests import sign_test
from attacks.protocol import score_points


@dataclass
class RoundEvidence:
    """What a round changed, judged under common draws: newly broken and worsened examples, and the p-value."""

    changed: int
    broken: int
    worsened: int
    p_value: float

    def productive(self, min_new: int, alpha: float, stochastic: bool) -> bool:
        return self.broken >= min_new and (not stochastic or self.p_value <= alpha)

    def as_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "newly_broken": self.broken, "worsened": self.worsened,
                "p_value": self.p_value}


def seeded_score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`score_points` under a fixed seed in a forked RNG: the same draws for any batch of the same shape."""
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        return score_points(model, x, y, draws)


def paired_rescore(model: nn.Module, y: torch.Tensor, before: torch.Tensor, after: torch.Tensor, draws: int,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor, RoundEvidence]:
    """Fresh scores of the points `after` (rate, margin) and the evidence of what changed since `before`."""
    rate, margin = seeded_score(model, after, y, draws, seed)
    changed = (after != before).flatten(1).any(1)
    if not bool(changed.any()):
        return rate, margin, RoundEvidence(0, 0, 0, 1.0)
    old_rate, _ = seeded_score(model, torch.where(changed.view(-1, *[1] * (after.dim() - 1)), before, after), y,
                               draws, seed)
    broken = int((rate < old_rate)[changed].sum())
    worsened = int((rate > old_rate)[changed].sum())
    return rate, margin, RoundEvidence(int(changed.sum()), broken, worsened,
                                       sign_test(broken, worsened))


def keep_unless_better(model: nn.Module, y: torch.Tensor, reference: torch.Tensor, chosen: torch.Tensor, draws: int,
                       seed: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """Per example `chosen` where, under common draws, no more draws classify it correctly than `reference`, else
    `reference`; with the kept points' correct rates under those draws and the counts compared and restored.

    The last guard of adaptive's superset: `reference` is AutoAttack's result, and a later member's point that
    won its selection by luck does not replace it where it is worse under these `draws` paired passes (on a tie
    the later point stays: it won the selection, and under these draws both are equally good)."""
    differ = (chosen != reference).flatten(1).any(1)
    if not bool(differ.any()):
        return chosen, seeded_score(model, chosen, y, draws, seed)[0], {"compared": 0, "restored": 0}
    chosen_rate, _ = seeded_score(model, chosen, y, draws, seed)
    reference_rate, _ = seeded_score(model, reference, y, draws, seed)
    restore = differ & (chosen_rate > reference_rate)
    shape = (-1, *[1] * (chosen.dim() - 1))
    points = torch.where(restore.view(shape), reference, chosen)
    rate = torch.where(restore, reference_rate, chosen_rate)
    return points, rate, {"compared": int(differ.sum()), "restored": int(restore.sum())}
