"""MNIST and Fashion-MNIST from their original IDX files (plain or gzipped), 28x28 grey images."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.data.base import DatasetInfo, DatasetNotFoundError, ImageSplit

IDX_UBYTE = 0x08
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (count, rows, cols)
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (count)

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_LAYOUT_HELP = (
    "Place the four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte (plain or .gz) in <data root>/{folder}/; torchvision's layout "
    "<data root>/{tv_folder}/raw/ (as torchvision.datasets.{tv_class}(download=True) writes it) is also read."
)

MNIST_INFO = DatasetInfo(
    dataset="mnist",
    channels=1,
    height=28,
    width=28,
    num_classes=10,
    mean=(0.1307,),
    std=(0.3081,),
    how_to_get="Download the four files from https://yann.lecun.com/exdb/mnist/ (or a mirror such as "
    "https://ossci-datasets.s3.amazonaws.com/mnist/). "
    + _LAYOUT_HELP.format(folder="mnist", tv_folder="MNIST", tv_class="MNIST"),
    folders=("mnist", "MNIST/raw"),  # its own layout, then torchvision's
)

FASHION_MNIST_INFO = DatasetInfo(
    dataset="fashion_mnist",
    channels=1,
    height=28,
    width=28,
    num_classes=10,
    mean=(0.2860,),
    std=(0.3530,),
    how_to_get="Download the four files from https://github.com/zalandoresearch/fashion-mnist "
    "(data/fashion/). "
    + _LAYOUT_HELP.format(folder="fashion_mnist", tv_folder="FashionMNIST", tv_class="FashionMNIST"),
    folders=("fashion_mnist", "FashionMNIST/raw"),
)


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzipped if the name ends in .gz), checking its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4:
        raise ValueError(f"{path} is too short to be an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise ValueError(
            f"{path} has IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(unsigned bytes, {expected_magic & 0xFF} dimensions); the file is corrupt or not this IDX file"
        )
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_size = header_size + int(np.prod(dims))
    if len(raw) != expected_size:
        raise ValueError(f"{path}: header says {dims} ({expected_size} bytes in all), file has {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate(info: DatasetInfo, root: Path, split: str) -> tuple[Path, Path]:
    folders = tuple(root / folder for folder in info.folders)
    names = FILES[split]
    for folder in folders:
        found = [_find(folder, name) for name in names]
        if all(found):
            return found[0], found[1]
    raise DatasetNotFoundError(info, folders, [f"{name}[.gz]" for name in names])


def load(info: DatasetInfo, root: Path, split: str, pad_to_32: bool = False) -> ImageSplit:
    """uint8 images (N, 1, 28, 28), or (N, 1, 32, 32) zero-padded when `pad_to_32`."""
    images_path, labels_path = _locate(info, root, split)
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    tensor = torch.from_numpy(images.copy()).unsqueeze(1)
    if pad_to_32:
        tensor = F.pad(tensor, (2, 2, 2, 2))
    return ImageSplit(images=tensor, labels=torch.from_numpy(labels.astype(np.int64)))
