"""Helpers every defence's fit shares: the accuracy of a model on images, a frozen classifier, and the
micro-batches of a batch (`batch_slices`).

One accuracy loop for the classifier training check (defences/training.py), AToP's purified accuracy and
CARSO's training check.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from attacks.base import no_weight_gradients


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
             batch_size: int = 512) -> float:
    """Fraction of `images` that `model` (put in eval mode) classifies as `labels`, `batch_size` at a time.

    A stochastic model is run once per image, on consecutive batches in order, so its draws follow the RNG.
    """
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        x = images[start:start + batch_size].to(device)
        predicted = model(x).argmax(1).to(labels.device)
        correct += (predicted == labels[start:start + batch_size]).sum().item()
    return correct / max(len(labels), 1)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Eval mode and no weight gradients for `module` inside the block; both restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        with no_weight_gradients(module):
            yield
    finally:
        module.train(was_training)


def batch_slices(total: int, size: int) -> list[slice]:
    """Consecutive slices of at most `size` (one more where needed): a last slice of a single example is merged
    into the one before, because BatchNorm cannot train on one example."""
    bounds = list(range(0, total, size)) + [total]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    return [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
