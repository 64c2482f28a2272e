"""Per-example attack losses: cross-entropy, the CW margin and the DLR loss (larger = more adversarial)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "margin", "dlr")
# DLR divides by (largest - third largest logit): it needs a third class.
MIN_CLASSES = {"ce": 2, "margin": 2, "dlr": 3}


def check_loss(loss: str, key: str = "loss") -> str:
    """`loss` itself, or a ValueError naming the key, the value and the valid losses."""
    if loss not in LOSSES:
        raise ValueError(f"{key}={loss!r} is not valid; valid: {', '.join(LOSSES)}")
    return loss


def _true_and_best_other(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return true, others.amax(dim=1)


def attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-example loss to maximise; an example is misclassified where margin > 0."""
    check_loss(loss)
    if logits.shape[1] < MIN_CLASSES[loss]:
        raise ValueError(f"loss={loss!r} needs at least {MIN_CLASSES[loss]} classes, the model has "
                         f"{logits.shape[1]}; use loss='margin' or 'ce'")
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    true, other = _true_and_best_other(logits, y)
    if loss == "margin":
        return other - true
    ordered = logits.sort(dim=1, descending=True).values
    return (other - true) / (ordered[:, 0] - ordered[:, 2] + 1e-12)
