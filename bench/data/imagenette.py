"""Imagenette (10 easy ImageNet classes) from fast.ai's folder tree, resized and centre-cropped square."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from PIL import Image

from bench.data.base import DatasetInfo, DatasetNotFoundError, ImageSplit
from bench.data.jpeg_cache import load_or_decode

# Checked in this order; the 160 px version is the smallest download and enough for 64 px images.
FOLDERS = ("imagenette2-160", "imagenette2-320", "imagenette2")
DEFAULT_IMAGE_SIZE = 64

INFO = DatasetInfo(
    dataset="imagenette",
    channels=3,
    height=DEFAULT_IMAGE_SIZE,
    width=DEFAULT_IMAGE_SIZE,
    num_classes=10,
    # Imagenette is a subset of ImageNet; the standard ImageNet statistics are used.
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    how_to_get="Download imagenette2-160.tgz (or imagenette2-320.tgz / imagenette2.tgz) from "
    "https://github.com/fastai/imagenette and extract it under the data root, giving "
    "<data root>/imagenette2-160/ with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (val serves as the test "
    "split). Images are resized to image_size (default 64) and cached in "
    "<folder>/.bench_cache_<split>_<image_size>.pt on first load.",
    folders=FOLDERS,
)


def resize_and_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size` (bilinear, antialiased when shrinking), then crop the centre."""
    width, height = image.size
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    resized = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def _find_folder(root: Path) -> Path:
    for name in FOLDERS:
        if (root / name / "train").is_dir():
            return root / name
    expected = ["train/<wnid>/*.JPEG", "val/<wnid>/*.JPEG"]
    raise DatasetNotFoundError(INFO, [root / name for name in FOLDERS], expected)


def load(root: Path, split: str, image_size: int = DEFAULT_IMAGE_SIZE, use_cache: bool = True) -> ImageSplit:
    """uint8 images (N, 3, image_size, image_size); classes are the wnid folders of train/, sorted."""
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    folder = _find_folder(root)
    wnids = sorted(path.name for path in (folder / "train").iterdir() if path.is_dir())
    split_folder = folder / ("train" if split == "train" else "val")
    files: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        class_files = sorted((split_folder / wnid).glob("*.JPEG"))
        files += class_files
        labels += [label] * len(class_files)
    if not files:
        raise DatasetNotFoundError(INFO, [split_folder], [f"{split_folder.name}/<wnid>/*.JPEG for {wnids}"])
    cache = folder / f".bench_cache_{split}_{image_size}.pt"
    return load_or_decode(files, labels, partial(resize_and_center_crop, size=image_size), cache, use_cache)
