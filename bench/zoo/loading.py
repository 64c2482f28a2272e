"""Turn a classifier source string ("train:<arch>", "file:<path>", "robustbench:<name>") into a model.

Weights files are read only in formats that cannot run code when loaded: safetensors, or torch
checkpoints that `torch.load(weights_only=True)` accepts. A general pickle can execute arbitrary code
on load, so checkpoints from the internet are never unpickled in full.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.zoo.architectures import build_architecture
from bench.zoo.normalization import Stats

SOURCE_FORMS = ("train:<arch>", "file:<path>", "robustbench:<name>")
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
STATE_DICT_KEYS = ("state_dict", "model_state_dict")
DEFAULT_MODEL_DIR = "./models"

_SECURITY_NOTE = (
    "Only .safetensors files or weights-only torch checkpoints (.pt/.pth/.ckpt holding tensors in plain "
    "dicts) are accepted, because unpickling an arbitrary checkpoint can execute code hidden in it. "
    "Re-save the weights with torch.save(model.state_dict(), path) or safetensors.torch.save_file."
)


def load_classifier(
    source: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    mean: Stats = None,
    std: Stats = None,
    arch: str | None = None,
    arch_params: dict[str, Any] | None = None,
    model_dir: str | Path | None = None,
    dataset: str | None = None,
    threat_model: str = "Linf",
) -> tuple[nn.Module, dict[str, Any]]:
    """The model in eval mode and its provenance {"source", "arch", "pretrained", "path" or "name"}.

    - "train:<arch>": a freshly initialised architecture, for the caller to train.
    - "file:<path>": `arch` (+ `arch_params`) built with mean/std, then the weights at path loaded strictly.
    - "robustbench:<name>": RobustBench's checkpoint <model_dir>/<dataset>/<threat_model>/<name>.pt read into
      this zoo's architecture for that name (bench/zoo/robustbench.py; offline, no robustbench package), or,
      for names not mapped there, `robustbench.utils.load_model`. The model normalises internally, so
      in_channels/num_classes/image_size/mean/std are not used. `dataset` defaults to "cifar10".
    """
    kind, separator, target = source.partition(":")
    if not separator or not target:
        raise ValueError(f"classifier source {source!r} is not one of the forms {', '.join(SOURCE_FORMS)}")
    shape = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size,
             "mean": mean, "std": std}
    params = dict(arch_params or {})
    if kind == "train":
        model, provenance = _fresh_architecture(source, target, arch, shape, params)
    elif kind == "file":
        model, provenance = _architecture_from_file(source, target, arch, shape, params)
    elif kind == "robustbench":
        model = _load_robustbench(target, model_dir, dataset, threat_model)
        provenance = {"source": source, "arch": type(model).__name__, "pretrained": True, "name": target,
                      "dataset": dataset or "cifar10", "threat_model": threat_model}
    else:
        raise ValueError(
            f"unknown classifier source kind {kind!r} in {source!r}; valid forms: {', '.join(SOURCE_FORMS)}"
        )
    return model.eval(), provenance


def _fresh_architecture(source: str, target: str, arch: str | None, shape: dict[str, Any],
                        params: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """"train:<arch>": the architecture freshly initialised (`shape`: its size and statistics)."""
    if arch is not None and arch != target:
        raise ValueError(f"source {source!r} names architecture {target!r} but arch={arch!r} was given")
    return build_architecture(target, **shape, **params), {"source": source, "arch": target, "pretrained": False}


def _architecture_from_file(source: str, target: str, arch: str | None, shape: dict[str, Any],
                            params: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """"file:<path>": `arch` built with `shape`, then the weights at path loaded strictly."""
    if arch is None:
        raise ValueError(f"source {source!r} needs arch=<architecture name> to know what the weights fit")
    path = Path(target).expanduser()
    model = build_architecture(arch, **shape, **params)
    load_weights(model, path, arch)
    return model, {"source": source, "arch": arch, "pretrained": True, "path": str(path)}


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


def _load_robustbench(
    name: str, model_dir: str | Path | None, dataset: str | None, threat_model: str
) -> nn.Module:
    from bench.zoo.robustbench import load_robustbench

    return load_robustbench(name, model_dir or DEFAULT_MODEL_DIR, dataset or "cifar10", threat_model)
