"""Core types shared by the dataset loaders: dataset facts, an in-memory split and the not-found error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from defences.base import ImageData

SPLITS = ("train", "test")

IndexLike = torch.Tensor | slice | Sequence[int]


@dataclass(frozen=True)
class DatasetInfo(ImageData):
    """Static facts about a dataset: its images (defences.base.ImageData: shape, classes, per-channel mean/std of
    the [0, 1] training images), how to get its files and the folders under the data root they live in (the
    stage keys hash those folders, bench/fingerprint.py; () for a dataset with no files there)."""

    how_to_get: str
    folders: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.dataset


@dataclass
class ImageSplit:
    """Images (N, C, H, W), uint8 in 0..255 or float32 in [0, 1], and their int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.images.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"images must be uint8 or float32, got {self.images.dtype}")
        if self.labels.dim() != 1 or self.labels.dtype != torch.int64:
            shape = tuple(self.labels.shape)
            raise ValueError(f"labels must be a 1-D int64 tensor, got {self.labels.dtype} of shape {shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def float_images(self, index: IndexLike | None = None) -> torch.Tensor:
        """The selected images as float32 in [0, 1], shape (n, C, H, W)."""
        images = self.images if index is None else self.images[_as_index(index)]
        if images.dtype == torch.uint8:
            return images.to(torch.float32).div_(255.0)
        return images.to(torch.float32)

    def subset(self, index: IndexLike) -> ImageSplit:
        index = _as_index(index)
        return ImageSplit(images=self.images[index], labels=self.labels[index])


def _as_index(index: IndexLike) -> torch.Tensor | slice:
    if isinstance(index, slice | torch.Tensor):
        return index
    return torch.as_tensor(list(index), dtype=torch.int64)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where the loader looked; the message says where, what and how to get them.

    The harness never downloads datasets itself, so this error is the user's instruction sheet.
    """

    def __init__(self, info: DatasetInfo, looked_in: Sequence[Path], expected: Sequence[str]):
        self.dataset = info.name
        self.looked_in = [Path(p) for p in looked_in]
        self.expected = list(expected)
        places = " or ".join(str(p) for p in self.looked_in)
        message = (
            f"Dataset {info.name!r} not found. Looked in: {places}. "
            f"Expected there: {', '.join(self.expected)}. How to get it: {info.how_to_get}"
        )
        super().__init__(message)
