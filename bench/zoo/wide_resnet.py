"""WideResNet with DeepMind-style module names, so RobustBench "DM" checkpoints load key for key.

Structure (Gowal et al. 2020; `DMWideResNet` in RobustBench's
robustbench/model_zoo/architectures/dm_wide_resnet.py, which ports DeepMind's model_zoo.py):

    init_conv                      3x3 conv to 16 channels
    layer.{0,1,2}                  three groups, widths 16*width, 32*width, 64*width, strides 1, 2, 2
      .block.{0..n-1}              n = (depth - 4) / 6 pre-activation blocks:
        batchnorm_0, relu_0        the activation is applied to the block input
        conv_0                     3x3, stride of the group for block 0; padded by hand like TF "SAME":
                                   (1, 1, 1, 1) at stride 1, (0, 1, 0, 1) (right/bottom only) at stride 2
        batchnorm_1, relu_1, conv_1
        shortcut                   1x1 conv, only where the width changes (block 0 of each group); it sees
                                   the activated input, the identity shortcut sees the raw input
    batchnorm, relu                final pre-logit activation
    logits                         linear layer after global average pooling

Convolutions have no bias. Normalisation: DMWideResNet keeps mean/std out of its state dict (plain
(C, 1, 1) tensors, or non-persistent buffers in some releases; persistent only in the first ones); here
they are non-persistent buffers that also accept old-style keys (see bench/zoo/normalization.py).
DMWideResNet pools with avg_pool2d(8), which for 32x32 inputs equals the adaptive global pooling used
here; the adaptive form also serves 64x64 inputs, as in the Tiny ImageNet variant of Wang et al. 2023
(`ti_wideresnetwithswish`, which uses AdaptiveAvgPool2d and the same parameter names).

RobustBench findings (public sources read while writing this module):
- "Wang2023Better_WRN-28-10" (CIFAR-10/100, Linf) is a WRN-28-10 with SiLU ("swish") activations in
  this DM layout: the authors' code (wzekai99/DM-Improves-AT, `wideresnetwithswish`) builds exactly this
  module tree with nn.SiLU, and public scripts rebuild the RobustBench model as
  DMWideResNet(depth=28, width=10, activation_fn=nn.SiLU) and load its state dict strictly.
- "Cui2023Decoupled_WRN-28-10" (CIFAR-10/100, Linf) was trained in the same WRN-28-10 swish setup as
  Wang et al. (its README compares against their WRN-28-10 runs), so `WideResNet(28, 10,
  activation="silu")` is its architecture too. This is inferred from the training code lineage: the
  RobustBench zoo entry itself was not among the stored copies searched, so confirm by loading.
- Tiny ImageNet: RobustBench's benchmark datasets are only cifar10, cifar100 and imagenet, so
  `robustbench.utils.load_model` cannot serve a Tiny ImageNet model. Wang et al.'s code trains Tiny
  ImageNet WRN-28-10 models as `ti_wideresnetwithswish`: this layout with SiLU, adaptive pooling, 200
  classes, mean (0.4802, 0.4481, 0.3975), std (0.2302, 0.2265, 0.2262). Load such weights with `file:`,
  arch "wide_resnet_28_10" and activation "silu". Their `create_model` wraps the network in
  DataParallel(Sequential(...)), so raw training checkpoints have keys like "module.0.init_conv.weight";
  re-save them without the "0." level first.
- RobustBench's custom Swish autograd function computes x * sigmoid(x), i.e. nn.SiLU; "swish" and
  "silu" are synonyms here and parameter-free, so they do not affect state dict keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.zoo.normalization import NormalizedClassifier, Stats

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU}


def activation_class(name: str) -> type[nn.Module]:
    try:
        return ACTIVATIONS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}") from None


class WideBlock(nn.Module):
    """One pre-activation block with the DeepMind padding and shortcut conventions."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: type[nn.Module]):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"unsupported stride {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = activation()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = activation()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        if self.has_shortcut:
            self.shortcut = nn.Conv2d(
                in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False
            )
        self._same_padding = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu_0(self.batchnorm_0(x))
        out = self.conv_0(F.pad(activated, self._same_padding))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        residual = self.shortcut(activated) if self.has_shortcut else x
        return residual + out


class WideBlockGroup(nn.Module):
    def __init__(
        self, num_blocks: int, in_planes: int, out_planes: int, stride: int, activation: type[nn.Module]
    ):
        super().__init__()
        self.block = nn.Sequential(
            *(
                WideBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, activation
                )
                for i in range(num_blocks)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class WideResNet(NormalizedClassifier):
    """WRN-depth-width; depth must be 6n + 4 (28 -> 4 blocks per group, 34 -> 5, 70 -> 11)."""

    def __init__(
        self,
        depth: int = 28,
        width: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        activation: str = "relu",
        mean: Stats = None,
        std: Stats = None,
    ):
        super().__init__(in_channels, mean, std)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (e.g. 28, 34, 70), got {depth}")
        if width < 1:
            raise ValueError(f"WideResNet width must be positive, got {width}")
        act = activation_class(activation)
        num_blocks = (depth - 4) // 6
        widths = (16, 16 * width, 32 * width, 64 * width)
        self.depth, self.width, self.activation = depth, width, activation
        self.init_conv = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            WideBlockGroup(num_blocks, widths[0], widths[1], 1, act),
            WideBlockGroup(num_blocks, widths[1], widths[2], 2, act),
            WideBlockGroup(num_blocks, widths[2], widths[3], 2, act),
        )
        self.batchnorm = nn.BatchNorm2d(widths[3])
        self.relu = act()
        self.logits = nn.Linear(widths[3], num_classes)
        init_wide_resnet(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.layer(self.init_conv(self.normalize(images)))
        out = self.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


def init_wide_resnet(model: nn.Module) -> None:
    """He-normal convolutions (fan out) and zero linear biases, the WideResNet initialisation."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
