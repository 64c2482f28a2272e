"""The dataset catalogue: names -> facts and loaders, and the one entry point `load_dataset`."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

from attacks.registry import UnknownNameError, closest_hint
from bench.data import cifar, digits, imagenette, mnist, tinyimagenet
from bench.data.base import SPLITS, DatasetInfo, ImageSplit

DATA_DIR_ENV = "BENCH_DATA_DIR"
DEFAULT_DATA_DIR = "./data"

# Each dataset once: its facts and its loader, which takes (root, split, **options) (the loader's keyword arguments).
_CATALOGUE: tuple[tuple[DatasetInfo, Callable[..., ImageSplit]], ...] = (
    (digits.INFO, digits.load),
    (mnist.MNIST_INFO, partial(mnist.load, mnist.MNIST_INFO)),
    (mnist.FASHION_MNIST_INFO, partial(mnist.load, mnist.FASHION_MNIST_INFO)),
    (cifar.CIFAR10_INFO, cifar.load_cifar10),
    (cifar.CIFAR100_INFO, cifar.load_cifar100),
    (tinyimagenet.INFO, tinyimagenet.load),
    (imagenette.INFO, imagenette.load),
)
DATASETS: dict[str, DatasetInfo] = {info.name: info for info, _ in _CATALOGUE}
_LOADERS: dict[str, Callable[..., ImageSplit]] = {info.name: load for info, load in _CATALOGUE}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownNameError(f"unknown dataset {name!r}. {closest_hint(name, DATASETS)}") from None


def default_root() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def load_dataset(name: str, split: str, root: str | Path | None = None, **options: object) -> ImageSplit:
    """Load one split ("train" or "test") of a catalogued dataset from `root` (never downloads).

    `root` defaults to $BENCH_DATA_DIR, else ./data. Options are dataset specific:
    mnist/fashion_mnist `pad_to_32`, imagenette `image_size`, tinyimagenet/imagenette `use_cache`.
    Missing files raise DatasetNotFoundError saying where they were looked for and how to get them.
    """
    dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for dataset {name!r}; valid splits: {', '.join(SPLITS)}")
    data_root = Path(root).expanduser() if root is not None else default_root()
    return _LOADERS[name](data_root, split, **options)
