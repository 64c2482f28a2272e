"""Decode lists of JPEG files into one uint8 tensor, cached on disk next to the dataset.

Decoding tens of thousands of JPEGs takes minutes, so the decoded tensors are saved once with
`torch.save` and read back with `torch.load(weights_only=True)` (tensors and ints only, no code).
A cache is reused only when it was built from the same number of files and the same options.
"""

from __future__ import annotations

import os
import socket
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.data.base import ImageSplit

Transform = Callable[[Image.Image], Image.Image]


def decode_image(path: Path, transform: Transform) -> np.ndarray:
    """One image as a (C, H, W) uint8 array, after RGB conversion and `transform`."""
    with Image.open(path) as image:
        rgb = transform(image.convert("RGB"))
        return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()


def decode_files(files: Sequence[Path], transform: Transform) -> torch.Tensor:
    if not files:
        raise ValueError("no image files to decode")
    first = decode_image(files[0], transform)
    images = np.empty((len(files), *first.shape), dtype=np.uint8)
    images[0] = first
    for i, path in enumerate(files[1:], start=1):
        decoded = decode_image(path, transform)
        if decoded.shape != first.shape:
            raise ValueError(f"{path} decodes to shape {decoded.shape}, expected {first.shape}")
        images[i] = decoded
    return torch.from_numpy(images)


def load_or_decode(
    files: Sequence[Path],
    labels: Sequence[int],
    transform: Transform,
    cache_path: Path,
    use_cache: bool = True,
) -> ImageSplit:
    """The decoded split, from `cache_path` when it matches the file count, else decoded and cached."""
    label_tensor = torch.as_tensor(list(labels), dtype=torch.int64)
    if use_cache:
        cached = _read_cache(cache_path, len(files))
        if cached is not None:
            return cached
    split = ImageSplit(images=decode_files(files, transform), labels=label_tensor)
    if use_cache:
        _write_cache(cache_path, split, len(files))
    return split


def _read_cache(cache_path: Path, file_count: int) -> ImageSplit | None:
    if not cache_path.is_file():
        return None
    try:
        payload = torch.load(cache_path, map_location="cpu", weights_only=True)
        if int(payload["file_count"]) != file_count:
            return None
        return ImageSplit(images=payload["images"], labels=payload["labels"])
    except Exception as error:  # a stale or truncated cache is rebuilt, never fatal
        warnings.warn(f"ignoring unreadable cache {cache_path}: {error}", stacklevel=3)
        return None


def _write_cache(cache_path: Path, split: ImageSplit, file_count: int) -> None:
    payload = {"images": split.images, "labels": split.labels, "file_count": file_count}
    unique = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    temporary = cache_path.with_name(f".{cache_path.name}.{unique}.tmp")
    try:
        torch.save(payload, temporary)
        os.replace(temporary, cache_path)  # atomic: a concurrent reader never sees half a file
    except OSError as error:
        temporary.unlink(missing_ok=True)
        warnings.warn(f"could not write cache {cache_path}: {error}", stacklevel=3)
