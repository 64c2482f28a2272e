"""A small two-convolution CNN for MNIST-sized inputs: quick to train on a laptop CPU."""

from __future__ import annotations

import torch
from torch import nn

from bench.zoo.normalization import NormalizedClassifier, Stats
from bench.zoo.pooling import MaxPool2d


class SmallCNN(NormalizedClassifier):
    """conv3x3-ReLU-maxpool2, conv3x3-ReLU-maxpool2, Linear(hidden)-ReLU, Linear(num_classes)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 32,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
        mean: Stats = None,
        std: Stats = None,
    ):
        super().__init__(in_channels, mean, std)
        if image_size < 4:
            raise ValueError(f"image_size must be at least 4 (two 2x2 poolings), got {image_size}")
        first, second = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, first, kernel_size=3, padding=1),
            nn.ReLU(),
            MaxPool2d(2),  # nn.MaxPool2d's results, faster on a CPU (bench/zoo/pooling.py)
            nn.Conv2d(first, second, kernel_size=3, padding=1),
            nn.ReLU(),
            MaxPool2d(2),  # nn.MaxPool2d's results, faster on a CPU (bench/zoo/pooling.py)
        )
        pooled = image_size // 4  # each max-pool halves the side, flooring odd sizes
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(second * pooled * pooled, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(images)))
