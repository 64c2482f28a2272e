"""Synthetic stand-ins for a dataset's split: images of its shape and labels over its classes, by seed.

Used by smoke mode (bench/smoke.py) when the real files are absent: the code paths see the same tensor
shapes, dtypes and class counts as with the real data, so a smoke run checks wiring, not accuracy.
Images are uint8 like the real loaders' output; labels cycle through every class so each class appears.
"""

from __future__ import annotations

import zlib

import torch

from bench.data.base import ImageSplit


def synthetic_split(name: str, split: str, count: int, shape: tuple[int, int, int], num_classes: int) -> ImageSplit:
    """`count` uint8 images of `shape` (C, H, W) and int64 labels 0, 1, ..., seeded by (name, split)."""
    if count < 1:
        raise ValueError(f"synthetic {name}/{split}: count must be >= 1, got {count}")
    seed = zlib.crc32(f"{name}/{split}".encode())
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, *shape), generator=generator, dtype=torch.uint8)
    labels = torch.arange(count, dtype=torch.int64) % num_classes
    return ImageSplit(images=images, labels=labels)
