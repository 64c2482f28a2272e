"""Classifier zoo: architectures that take [0, 1] images and normalise inside, and loading them by source."""

from bench.zoo.architectures import ARCHITECTURES, build_architecture
from bench.zoo.loading import load_classifier
from bench.zoo.normalization import NormalizedClassifier
from bench.zoo.preact_resnet import PreActResNet18
from bench.zoo.small_cnn import SmallCNN
from bench.zoo.wide_resnet import WideResNet

__all__ = [
    "ARCHITECTURES",
    "NormalizedClassifier",
    "PreActResNet18",
    "SmallCNN",
    "WideResNet",
    "build_architecture",
    "load_classifier",
]
