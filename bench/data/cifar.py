"""CIFAR-10 and CIFAR-100 from the official "python version" pickles, uint8 (N, 3, 32, 32)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from bench.data.base import DatasetInfo, DatasetNotFoundError, ImageSplit

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"

CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR100_FILES = {"train": ["train"], "test": ["test"]}

# The standard published statistics (as used by RobustBench and the DeepMind model zoo).
CIFAR10_INFO = DatasetInfo(
    name="cifar10",
    channels=3,
    height=32,
    width=32,
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2471, 0.2435, 0.2616),
    how_to_get="Download the 'CIFAR-10 python version' archive cifar-10-python.tar.gz from "
    "https://www.cs.toronto.edu/~kriz/cifar.html and extract it under the data root, giving "
    "<data root>/cifar-10-batches-py/ with data_batch_1 .. data_batch_5 and test_batch "
    "(torchvision.datasets.CIFAR10(root, download=True) writes the same folder).",
)

CIFAR100_INFO = DatasetInfo(
    name="cifar100",
    channels=3,
    height=32,
    width=32,
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    how_to_get="Download the 'CIFAR-100 python version' archive cifar-100-python.tar.gz from "
    "https://www.cs.toronto.edu/~kriz/cifar.html and extract it under the data root, giving "
    "<data root>/cifar-100-python/ with the files train and test "
    "(torchvision.datasets.CIFAR100(root, download=True) writes the same folder).",
)


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as handle:
        # The official files are Python 2 pickles of plain dicts; "bytes" keeps their str keys as bytes.
        batch = pickle.load(handle, encoding="bytes")
    data = _get(batch, "data", path)
    labels = _get(batch, label_key, path)
    return np.asarray(data, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


def _get(batch: dict, key: str, path: Path) -> object:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise ValueError(f"{path} has no {key!r} entry; keys: {sorted(map(str, batch))}")


def _load(info: DatasetInfo, folder: Path, names: list[str], label_key: str) -> ImageSplit:
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFoundError(info, [folder], names)
    parts = [_read_batch(folder / name, label_key) for name in names]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{folder}: expected rows of 3072 bytes, got data of shape {data.shape}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # each row: R plane, G plane, B plane
    return ImageSplit(images=images, labels=torch.from_numpy(labels))


def load_cifar10(root: Path, split: str) -> ImageSplit:
    return _load(CIFAR10_INFO, root / CIFAR10_FOLDER, CIFAR10_FILES[split], "labels")


def load_cifar100(root: Path, split: str) -> ImageSplit:
    return _load(CIFAR100_INFO, root / CIFAR100_FOLDER, CIFAR100_FILES[split], "fine_labels")
