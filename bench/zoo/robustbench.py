"""`robustbench:<name>` without the robustbench package: its checkpoint files read into this zoo's architectures.

RobustBench keeps a model's weights at `<model_dir>/<dataset>/<threat_model>/<name>.pt` (e.g.
`models/cifar10/Linf/Cui2023Decoupled_WRN-28-10.pt`); its `load_model` takes `checkpoint["state_dict"]`
when present and strips the `module.` and `model.` prefixes. The same file is read here with
`torch.load(weights_only=True)` into the architecture that RobustBench's model zoo builds for that name
(robustbench/model_zoo/cifar10.py, cifar100.py), with the statistics it normalises with:

- Cui2023Decoupled_WRN-28-10 (cifar10/100, Linf): DMWideResNet(28, 10, SiLU, CIFAR mean/std) ->
  wide_resnet_28_10 with activation silu;
- Standard (cifar10, Linf/L2): WideResNet(depth=28, widen_factor=10), no normalisation -> trades_wide_resnet.

Other names fall back to the robustbench package when it imports (`pip install -e '.[robustbench]'`,
which pins a setuptools that still ships pkg_resources). The robustbench 1.1.1 wheel needs
`pkg_resources`, which setuptools >= 81 no longer ships, and torchattacks' wheel installs an old
`robustbench/` of its own that can shadow the real one: the native path needs neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.zoo.architectures import build_architecture

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
STRIPPED_PREFIXES = ("module.", "model.")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


@dataclass(frozen=True)
class Entry:
    arch: str
    params: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] | None = None  # None: the model does not normalise its input
    std: tuple[float, ...] | None = None


ENTRIES: dict[tuple[str, str, str], Entry] = {
    ("cifar10", "Linf", "Cui2023Decoupled_WRN-28-10"): Entry("wide_resnet_28_10", {"activation": "silu"},
                                                             CIFAR10_MEAN, CIFAR10_STD),
    ("cifar100", "Linf", "Cui2023Decoupled_WRN-28-10"): Entry("wide_resnet_28_10", {"activation": "silu"},
                                                              CIFAR100_MEAN, CIFAR100_STD),
    ("cifar10", "Linf", "Standard"): Entry("trades_wide_resnet"),
    ("cifar10", "L2", "Standard"): Entry("trades_wide_resnet"),
}


def native_entry(name: str, dataset: str, threat_model: str = "Linf") -> Entry | None:
    return ENTRIES.get((dataset, threat_model, name))


def robustbench_architecture(name: str, dataset: str, threat_model: str = "Linf") -> tuple[str, dict[str, Any]]:
    """(architecture name, its parameters) of a RobustBench model this zoo can build."""
    entry = native_entry(name, dataset, threat_model) or native_entry(name, dataset, "Linf")
    if entry is None:
        raise ValueError(f"no native architecture for robustbench:{name} ({dataset}, {threat_model}); "
                         f"known: {sorted({key[2] for key in ENTRIES})}")
    return entry.arch, dict(entry.params)


def checkpoint_path(model_dir: str | Path, dataset: str, threat_model: str, name: str) -> Path:
    return Path(model_dir).expanduser() / dataset / threat_model / f"{name}.pt"


def missing_checkpoint_message(path: Path, name: str, dataset: str, threat_model: str) -> str:
    return (f"RobustBench checkpoint for robustbench:{name} not found: expected the file {path.name} in the folder "
            f"{path.parent}. Get it on a machine with internet access with robustbench's own loader, which "
            f"downloads it to that layout: python -c \"from robustbench.utils import load_model; "
            f"load_model('{name}', model_dir='<model_dir>', dataset='{dataset}', threat_model='{threat_model}')\" "
            f"(or download the file listed for {name} in robustbench/model_zoo/{dataset}.py), then copy "
            f"<model_dir>/{dataset}/{threat_model}/{name}.pt here, or set model_dir=<folder holding {dataset}/>.")


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """RobustBench's checkpoint as a plain state dict: `state_dict` unwrapped, `module.`/`model.` stripped."""
    from bench.zoo.weights import read_state_dict

    state = read_state_dict(path)  # weights-only; unwraps "state_dict", strips "module."
    for prefix in STRIPPED_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key.removeprefix(prefix): value for key, value in state.items()}
    return state


def load_native(name: str, model_dir: str | Path, dataset: str, threat_model: str) -> nn.Module:
    """The RobustBench model `name` built here and filled from its checkpoint, strictly, in eval mode."""
    entry = native_entry(name, dataset, threat_model)
    if entry is None:
        raise KeyError(name)
    path = checkpoint_path(model_dir, dataset, threat_model, name)
    if not path.is_file():
        raise FileNotFoundError(missing_checkpoint_message(path, name, dataset, threat_model))
    model = build_architecture(entry.arch, in_channels=3, num_classes=NUM_CLASSES[dataset], image_size=32,
                               mean=entry.mean, std=entry.std, **entry.params)
    state = read_checkpoint(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit robustbench:{name} as {entry.arch} {entry.params}: {error}") from error
    return model.eval()


def load_with_package(name: str, model_dir: str | Path, dataset: str, threat_model: str) -> nn.Module:
    """Any other RobustBench model, through the robustbench package (downloads when the file is missing)."""
    try:
        from robustbench.utils import load_model
    except ImportError as error:
        native = sorted({f"{key[2]} ({key[0]}, {key[1]})" for key in ENTRIES})
        raise ImportError(
            f"robustbench:{name} ({dataset}, {threat_model}) is not one of the models loaded natively ({native}), "
            f"and the robustbench package does not import ({error}). Install it with "
            f"pip install -e '.[robustbench]' (which pins setuptools<81 for its pkg_resources import; if "
            f"torchattacks' bundled 'robustbench' folder shadows it, reinstall robustbench after torchattacks)."
        ) from error
    return load_model(model_name=name, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)


def load_robustbench(name: str, model_dir: str | Path, dataset: str, threat_model: str) -> nn.Module:
    if native_entry(name, dataset, threat_model) is not None:
        return load_native(name, model_dir, dataset, threat_model)
    return load_with_package(name, model_dir, dataset, threat_model)
