"""`robustbench:<name>` without the robustbench package: its checkpoint files read into this zoo's architectures.

RobustBench keeps a model's weights at `<model_dir>/<dataset>/<threat_model>/<name>.pt` (e.g.
`models/cifar10/Linf/Cui2023Decoupled_WRN-28-10.pt`); its `load_model` takes `checkpoint["state_dict"]`
when present and strips the `module.` and `model.` prefixes. The same file is read here with
`torch.load(weights_only=True)` into the architecture that RobustBench's model zoo builds for that name
(robustbench/model_zoo/cifar10.py, cifar100.py), with the statistics it normalises with:

- Cui2023Decoupled_WRN-28-10 (cifar10/100, Linf): DMWideResNet(28, 10, SiLU, CIFAR mean/std) ->
  wide_resnet_28_10 with activation silu;
- Standard (cifar10, Linf/L2): WideResNet(depth=28, widen_factor=10), no normalisation -> trades_wide_resnet.

Every other name of RobustBench's zoo goes through the robustbench package (`pip install -e '.[robustbench]'`):
its `load_model` builds the architecture and reads the same file (torch >= 2.6 reads it weights-only). robustbench
1.1.1 imports `pkg_resources` (the extra pins setuptools < 81) and, for its evaluation code, the GitHub AutoAttack
package as `autoattack`, which PyPI does not carry: `robustbench_modules` serves that name from pyautoattack (the
same code, published under another name) while robustbench imports, and removes the alias afterwards. The native
path needs none of this.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
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


@contextlib.contextmanager
def _autoattack_from_pyautoattack() -> Iterator[None]:
    """`autoattack` and its submodules served by the already imported pyautoattack ones, for the duration of the
    block; names already in sys.modules (a real AutoAttack, say) are left alone, and only the added ones removed."""
    try:
        real = importlib.util.find_spec("autoattack") is not None
    except ValueError:  # in sys.modules without a spec
        real = True
    if real:
        yield
        return
    import pyautoattack.state  # noqa: F401  (robustbench imports autoattack.state)

    aliases = {"autoattack" + name.removeprefix("pyautoattack"): module for name, module in list(sys.modules.items())
               if name == "pyautoattack" or name.startswith("pyautoattack.")}
    added = {name: module for name, module in aliases.items() if name not in sys.modules}
    sys.modules.update(added)
    try:
        yield
    finally:
        for name, module in added.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def robustbench_modules(*names: str) -> list[ModuleType]:
    """The robustbench modules `names` (e.g. "robustbench.utils"), imported with `autoattack` supplied from
    pyautoattack; an ImportError says how to install the extra."""
    try:
        with _autoattack_from_pyautoattack(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            return [importlib.import_module(name) for name in names]
    except ImportError as error:
        raise ImportError(
            f"the robustbench package does not import ({error}). Install the extra with "
            f"pip install -c bench/constraints.txt -e '.[robustbench]' (robustbench 1.1.1, setuptools<81 for its "
            f"pkg_resources import; a stale top-level robustbench/ left by torchattacks' wheel shadows the real one: "
            f"pip uninstall torchattacks robustbench, then install the extra again)."
        ) from error


def load_with_package(name: str, model_dir: str | Path, dataset: str, threat_model: str) -> nn.Module:
    """Any other RobustBench model, through the robustbench package (which downloads the file when it is
    missing; offline, put it at `checkpoint_path(...)` first)."""
    try:
        utils, = robustbench_modules("robustbench.utils")
    except ImportError as error:
        native = sorted({f"{key[2]} ({key[0]}, {key[1]})" for key in ENTRIES})
        raise ImportError(f"robustbench:{name} ({dataset}, {threat_model}) is not one of the models loaded natively "
                          f"({native}), and {error}") from error
    return utils.load_model(model_name=name, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)


def load_robustbench(name: str, model_dir: str | Path, dataset: str, threat_model: str) -> nn.Module:
    if native_entry(name, dataset, threat_model) is not None:
        return load_native(name, model_dir, dataset, threat_model)
    return load_with_package(name, model_dir, dataset, threat_model)
