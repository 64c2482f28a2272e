"""Reading classifier weights safely: safetensors, or torch checkpoints that `torch.load(weights_only=True)` accepts.

A general pickle can execute arbitrary code on load, so checkpoints from the internet are never unpickled in
full. Used by the source loader (loading.py) and the RobustBench checkpoints (robustbench.py).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
STATE_DICT_KEYS = ("state_dict", "model_state_dict")

_SECURITY_NOTE = (
    "Only .safetensors files or weights-only torch checkpoints (.pt/.pth/.ckpt holding tensors in plain "
    "dicts) are accepted, because unpickling an arbitrary checkpoint can execute code hidden in it. "
    "Re-save the weights with torch.save(model.state_dict(), path) or safetensors.torch.save_file."
)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors by name from a safetensors file or a weights-only torch checkpoint ("module." stripped)."""
    suffix = path.suffix.lower()
    if suffix not in (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES):
        raise ValueError(
            f"cannot read weights from {path}: unsupported extension {suffix or '(none)'!r}. {_SECURITY_NOTE}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import load_file

        return _strip_module_prefix(load_file(str(path), device="cpu"))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"refused to load {path}: it is not a weights-only checkpoint. {_SECURITY_NOTE}"
        ) from error
    return _strip_module_prefix(_extract_state_dict(checkpoint, path))


def load_weights(model: nn.Module, path: Path, arch: str) -> None:
    state_dict = read_state_dict(path)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ValueError(f"weights in {path} do not fit architecture {arch!r}: {error}") from error


def _extract_state_dict(checkpoint: object, path: Path) -> Mapping[str, Any]:
    if isinstance(checkpoint, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state_dict (a dict of tensors)")
    not_tensors = [key for key, value in checkpoint.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"{path} is not a plain state_dict: entries {not_tensors[:5]} are not tensors "
            f"(a training checkpoint should keep the weights under one of {STATE_DICT_KEYS})"
        )
    return checkpoint


def _strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # DataParallel / DistributedDataParallel save every key under "module.".
    return {key.removeprefix("module."): value for key, value in state_dict.items()}
