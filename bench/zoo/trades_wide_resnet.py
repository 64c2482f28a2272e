"""WideResNet in the TRADES / Madry layout with RobustBench's module names (its `WideResNet`, e.g. "Standard").

This is not the DeepMind layout of bench/zoo/wide_resnet.py: the modules are named `conv1`,
`block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}`, `bn1`, `fc`; stride-2 convolutions pad
symmetrically (padding 1), and where a block changes width the activated input feeds both the first
convolution and the 1x1 `convShortcut` (where it does not, the raw input is the identity shortcut).
RobustBench's "Standard" (cifar10, a WRN-28-10 trained on clean data) uses it with no input
normalisation, so mean/std default to the identity here too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.zoo.normalization import NormalizedClassifier, Stats
from bench.zoo.wide_resnet import init_wide_resnet


class TradesBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        return (x if self.convShortcut is None else self.convShortcut(activated)) + out


class TradesBlockGroup(nn.Module):
    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*(TradesBlock(in_planes if i == 0 else out_planes, out_planes,
                                                 stride if i == 0 else 1) for i in range(num_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class TradesWideResNet(NormalizedClassifier):
    """WRN-depth-width in the TRADES layout; depth = 6n + 4."""

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, in_channels: int = 3,
                 mean: Stats = None, std: Stats = None):
        super().__init__(in_channels, mean, std)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (e.g. 28, 34), got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = TradesBlockGroup(n, widths[0], widths[1], 1)
        self.block2 = TradesBlockGroup(n, widths[1], widths[2], 2)
        self.block3 = TradesBlockGroup(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_wide_resnet(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(self.normalize(images)))))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
