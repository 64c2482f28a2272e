"""Per-example attack losses: cross-entropy, the CW margin and the DLR loss (larger = more adversarial)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "margin", "dlr")


def _true_and_best_other(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return true, others.amax(dim=1)


def attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-example loss to maximise; an example is misclassified where margin > 0."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "margin":
        true, other = _true_and_best_other(logits, y)
        return other - true
    if loss == "dlr":
        true, other = _true_and_best_other(logits, y)
        ordered = logits.sort(dim=1, descending=True).values
        return (other - true) / (ordered[:, 0] - ordered[:, 2] + 1e-12)
    raise ValueError(f"loss={loss!r} is not valid; valid: {', '.join(LOSSES)}")
