"""The base of every zoo classifier: inputs in [0, 1], per-channel normalisation inside the model.

`mean` and `std` are registered buffers of shape (1, C, 1, 1), so they follow `.to(device)`, but they
are non-persistent: they are not written to `state_dict()`. RobustBench's DMWideResNet does the same
(non-persistent buffers in some releases, plain attributes in the current one), so the DeepMind-style
checkpoints it serves, loaded there with strict=True, have no such keys and ours must not demand them.
The very first RobustBench releases registered them as persistent (C, 1, 1) buffers; a state dict that
carries `mean`/`std` is still accepted and its values are used, being the statistics its weights were
trained with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

Stats = Sequence[float] | float | None

_NORMALIZATION_KEYS = ("mean", "std")


def _as_buffer(values: Stats, channels: int, default: float, name: str) -> torch.Tensor:
    if values is None:
        values = [default] * channels
    elif isinstance(values, int | float):
        values = [float(values)] * channels
    tensor = torch.as_tensor(list(values), dtype=torch.float32).flatten()
    if tensor.numel() != channels:
        raise ValueError(f"{name} has {tensor.numel()} values but the model has {channels} input channels")
    return tensor.view(1, channels, 1, 1)


class NormalizedClassifier(nn.Module):
    """A classifier whose forward pass starts with (x - mean) / std; the default is the identity."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, in_channels: int, mean: Stats = None, std: Stats = None):
        super().__init__()
        std_buffer = _as_buffer(std, in_channels, 1.0, "std")
        if bool((std_buffer <= 0).any()):
            raise ValueError(f"std must be positive, got {std_buffer.flatten().tolist()}")
        self.register_buffer("mean", _as_buffer(mean, in_channels, 0.0, "mean"), persistent=False)
        self.register_buffer("std", std_buffer, persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        for name in _NORMALIZATION_KEYS:
            value = state_dict.pop(prefix + name, None)
            if value is None:
                continue
            buffer = getattr(self, name)
            if value.numel() != buffer.numel():
                error_msgs.append(f"{prefix}{name}: {value.numel()} values for {buffer.numel()} channels")
                continue
            with torch.no_grad():
                buffer.copy_(value.reshape(buffer.shape))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
