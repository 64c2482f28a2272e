"""Turn a classifier source string ("train:<arch>", "file:<path>", "robustbench:<name>") into a model.

Weights files are read by bench/zoo/weights.py, only in formats that cannot run code when loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from bench.zoo.architectures import build_architecture
from bench.zoo.normalization import Stats
from bench.zoo.weights import load_weights

SOURCE_FORMS = ("train:<arch>", "file:<path>", "robustbench:<name>")
DEFAULT_MODEL_DIR = "./models"

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


def _load_robustbench(
    name: str, model_dir: str | Path | None, dataset: str | None, threat_model: str
) -> nn.Module:
    from bench.zoo.robustbench import load_robustbench

    return load_robustbench(name, model_dir or DEFAULT_MODEL_DIR, dataset or "cifar10", threat_model)
