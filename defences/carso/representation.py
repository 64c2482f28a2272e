"""The classifier's internal representation: forward-hook capture of named layers, and default layer lists.

`capture(classifier, x, layers)` runs the classifier once with forward hooks on the named submodules and
returns their outputs in the order given (the hooks are removed afterwards, also on error). The outputs
keep their autograd graph, so gradients flow from the purifier back to the input when an attack needs
them; wrap the call in `torch.no_grad()` where they do not (purifier training).

Default layers (`default_layers`, used when the `layers` parameter is None), found by inspecting the model:
- WideResNet in the DeepMind/RobustBench layout (`layer.{g}.block.{b}.conv_{0,1}`): the paper's list
  (the CARSO paper Table 5): conv_0 and conv_1 of every block plus the shortcuts of `layer.1.block.0` and
  `layer.2.block.0`; for WRN-28-10 exactly the 26 layers of Table 5.
- PreAct ResNet-18 (`layer{1..4}.{0,1}.conv{1,2}`): the earlier preprint's subset for that model
  (the CARSO preprint Table 7), duplicates removed.
- Anything else (the small CNN of the digits/MNIST scenarios): the whole representation, as the preprint
  does for its small classifiers: the output of every Conv2d and Linear layer, logits included.
"""

from __future__ import annotations

import re

import torch
from torch import nn

WRN_CONV = re.compile(r"^layer\.(\d+)\.block\.(\d+)\.conv_[01]$")
WRN_SHORTCUTS = ("layer.1.block.0.shortcut", "layer.2.block.0.shortcut")
PREACT_RESNET18_LAYERS = (
    "layer1.1.conv2", "layer2.0.conv2", "layer2.0.shortcut.0", "layer3.0.conv2", "layer3.0.shortcut.0",
    "layer3.1.conv2", "layer4.0.conv2", "layer4.0.shortcut.0", "layer4.1.conv2", "linear",
)


def default_layers(classifier: nn.Module) -> list[str]:
    """The representation layers used when none are configured (see the module docstring)."""
    names = [name for name, _ in classifier.named_modules()]
    present = set(names)
    wrn = sorted(
        (int(m.group(1)), int(m.group(2)), name) for name in names if (m := WRN_CONV.match(name))
    )
    if wrn:
        layers = [name for _, _, name in wrn]
        for shortcut in WRN_SHORTCUTS:
            if shortcut in present:
                # keep the paper's order: a group's block-0 shortcut right after that block's conv_1
                layers.insert(layers.index(shortcut.replace("shortcut", "conv_1")) + 1, shortcut)
        return layers
    if all(name in present for name in PREACT_RESNET18_LAYERS):
        return list(PREACT_RESNET18_LAYERS)
    return [name for name, module in classifier.named_modules() if isinstance(module, nn.Conv2d | nn.Linear)]


def resolve_modules(classifier: nn.Module, layers: list[str]) -> list[nn.Module]:
    """The submodules named by `layers`; an unknown name is an error that lists some valid ones."""
    if not layers:
        raise ValueError("the list of representation layers is empty; give at least one layer name")
    if len(set(layers)) != len(layers):
        raise ValueError(f"representation layers are listed more than once: {layers}")
    modules = dict(classifier.named_modules())
    unknown = [name for name in layers if name not in modules]
    if unknown:
        examples = [name for name in modules if name][:12]
        raise ValueError(f"classifier {type(classifier).__name__} has no layer(s) {unknown}; its layers include "
                         f"{examples} (use dotted names as in named_modules())")
    return [modules[name] for name in layers]


def capture(classifier: nn.Module, x: torch.Tensor, layers: list[str]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(outputs of the named layers in order, classifier output) for one forward pass on x."""
    modules = resolve_modules(classifier, layers)
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def hook_for(position: int):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {layers[position]!r} returned {type(output).__name__}, not a tensor")
            captured[position] = output
        return hook

    try:
        for position, module in enumerate(modules):
            handles.append(module.register_forward_hook(hook_for(position)))
        output = classifier(x)
    finally:
        for handle in handles:
            handle.remove()
    missing = [layers[i] for i in range(len(layers)) if i not in captured]
    if missing:
        raise RuntimeError(f"layer(s) {missing} were not called in the classifier's forward pass")
    return [captured[i] for i in range(len(layers))], output
