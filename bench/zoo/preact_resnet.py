"""Pre-activation ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks").

The CIFAR variant used throughout the adversarial-training literature (e.g. Rice et al. 2020,
"Overfitting in adversarially robust deep learning"): a 3x3 stem without pooling, four stages of two
pre-activation basic blocks (64, 128, 256, 512 channels; stride 2 from the second stage on), a final
BatchNorm-ReLU, global average pooling and a linear layer. Adaptive pooling lets 32x32 and 64x64
inputs share the architecture.

Where a block changes shape, its 1x1 projection shortcut sees either the block's activated input
(`shortcut_from="activated"`, the default: Rice et al.'s code, and RobustBench's `PreActBlockV2` /
`out_shortcut=True`) or its raw input (`shortcut_from="input"`: RobustBench's plain `PreActBlock`, the one its
`PreActResNet(PreActBlock, ..., bn_before_fc=True)` CIFAR-10 entries use). The two have the same 107
parameters and differ only there: RobustBench weights loaded with the wrong one give logits off by a few
hundredths, which is the mismatch this option fixes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.zoo.normalization import NormalizedClassifier, Stats

STAGE_CHANNELS = (64, 128, 256, 512)
SHORTCUT_SOURCES = ("activated", "input")


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3; a 1x1 projection shortcut (of `shortcut_from`) when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut_from: str = "activated"):
        super().__init__()
        self.shortcut_from_input = shortcut_from == "input"
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        projected_input = x if self.shortcut_from_input else activated
        residual = x if self.shortcut is None else self.shortcut(projected_input)
        out = self.conv1(activated)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + residual


class PreActResNet18(NormalizedClassifier):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, mean: Stats = None, std: Stats = None,
                 shortcut_from: str = "activated"):
        super().__init__(in_channels, mean, std)
        if shortcut_from not in SHORTCUT_SOURCES:
            raise ValueError(f"shortcut_from={shortcut_from!r} is not valid; valid: {', '.join(SHORTCUT_SOURCES)}")
        self.shortcut_from = shortcut_from
        self.conv1 = nn.Conv2d(in_channels, STAGE_CHANNELS[0], kernel_size=3, stride=1, padding=1, bias=False)
        stages = []
        in_planes = STAGE_CHANNELS[0]
        for index, planes in enumerate(STAGE_CHANNELS):
            stride = 1 if index == 0 else 2
            stages.append(
                nn.Sequential(PreActBlock(in_planes, planes, stride, shortcut_from),
                              PreActBlock(planes, planes, 1, shortcut_from))
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(STAGE_CHANNELS[-1])
        self.linear = nn.Linear(STAGE_CHANNELS[-1], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(images))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)
