"""Architecture names -> constructors with one calling convention, and `build_architecture`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from attacks.registry import UnknownNameError, closest_hint
from bench.zoo.normalization import Stats
from bench.zoo.preact_resnet import PreActResNet18
from bench.zoo.small_cnn import SmallCNN
from bench.zoo.trades_wide_resnet import TradesWideResNet
from bench.zoo.wide_resnet import WideResNet

Constructor = Callable[..., nn.Module]


def _small_cnn(
    *, in_channels: int, num_classes: int, image_size: int, mean: Stats, std: Stats, **params: Any
):
    return SmallCNN(in_channels, num_classes, image_size, mean=mean, std=std, **params)


def _preact_resnet18(*, in_channels: int, num_classes: int, image_size: int, mean: Stats, std: Stats,
                     shortcut_from: str = "activated"):
    del image_size  # global average pooling adapts to the input size
    return PreActResNet18(in_channels, num_classes, mean=mean, std=std, shortcut_from=shortcut_from)


def _trades_wide_resnet(*, in_channels: int, num_classes: int, image_size: int, mean: Stats, std: Stats,
                        depth: int = 28, width: int = 10):
    del image_size  # global average pooling adapts to the input size
    return TradesWideResNet(depth, width, num_classes, in_channels, mean=mean, std=std)


def _wide_resnet(depth: int, width: int) -> Constructor:
    def build(
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        mean: Stats,
        std: Stats,
        activation: str = "relu",
    ) -> nn.Module:
        del image_size  # global average pooling adapts to the input size
        return WideResNet(depth, width, num_classes, in_channels, activation=activation, mean=mean, std=std)

    return build


ARCHITECTURES: dict[str, Constructor] = {
    "small_cnn": _small_cnn,
    "preact_resnet18": _preact_resnet18,
    "wide_resnet_28_10": _wide_resnet(28, 10),
    "wide_resnet_34_10": _wide_resnet(34, 10),
    "wide_resnet_70_16": _wide_resnet(70, 16),
    "trades_wide_resnet": _trades_wide_resnet,  # RobustBench's `WideResNet` names (e.g. "Standard")
}


def build_architecture(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    mean: Stats = None,
    std: Stats = None,
    **params: Any,
) -> nn.Module:
    """A freshly initialised model; `params` are architecture specific (e.g. WRN `activation`)."""
    try:
        constructor = ARCHITECTURES[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown architecture {name!r}. {closest_hint(name, ARCHITECTURES)}"
        ) from None
    try:
        return constructor(
            in_channels=in_channels,
            num_classes=num_classes,
            image_size=image_size,
            mean=mean,
            std=std,
            **params,
        )
    except TypeError as error:
        raise ValueError(f"bad parameters {sorted(params)} for architecture {name!r}: {error}") from error
