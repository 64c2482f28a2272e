"""Tiny ImageNet (200 classes, 64x64 RGB) from the official folder tree; "test" is the labelled val set."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from bench.data.base import DatasetInfo, DatasetNotFoundError, ImageSplit
from bench.data.jpeg_cache import load_or_decode

FOLDER = "tiny-imagenet-200"
IMAGE_SIZE = 64

INFO = DatasetInfo(
    dataset="tinyimagenet",
    channels=3,
    height=IMAGE_SIZE,
    width=IMAGE_SIZE,
    num_classes=200,
    # The values used by the Tiny ImageNet robustness literature (e.g. Wang et al. 2023).
    mean=(0.4802, 0.4481, 0.3975),
    std=(0.2302, 0.2265, 0.2262),
    how_to_get="Download tiny-imagenet-200.zip from http://cs231n.stanford.edu/tiny-imagenet-200.zip and "
    "unzip it under the data root, giving <data root>/tiny-imagenet-200/ with wnids.txt, "
    "train/<wnid>/images/*.JPEG and val/images/*.JPEG plus val/val_annotations.txt (the official test set "
    "has no labels, so the val set serves as the test split). The first load decodes all JPEGs and "
    "caches them in <data root>/tiny-imagenet-200/.bench_cache_<split>.pt.",
    folders=(FOLDER,),
)


def _ensure_size(image: Image.Image) -> Image.Image:
    if image.size == (IMAGE_SIZE, IMAGE_SIZE):
        return image
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)


def _train_files(folder: Path, class_of: dict[str, int]) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for wnid in sorted(class_of):
        class_files = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
        files += class_files
        labels += [class_of[wnid]] * len(class_files)
    return files, labels


def _val_files(folder: Path, class_of: dict[str, int]) -> tuple[list[Path], list[int]]:
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DatasetNotFoundError(INFO, [folder], ["val/val_annotations.txt", "val/images/*.JPEG"])
    entries: list[tuple[str, int]] = []
    for line_number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in class_of:
            expected = "'filename<TAB>wnid<TAB>bbox' with a wnid from wnids.txt"
            raise ValueError(f"{annotations}:{line_number}: expected {expected}, got {line!r}")
        entries.append((fields[0], class_of[fields[1]]))
    entries.sort()
    return [folder / "val" / "images" / name for name, _ in entries], [label for _, label in entries]


def load(root: Path, split: str, use_cache: bool = True) -> ImageSplit:
    """uint8 images (N, 3, 64, 64); class index = position of the wnid in sorted(wnids.txt)."""
    folder = root / FOLDER
    wnids_path = folder / "wnids.txt"
    if not wnids_path.is_file():
        raise DatasetNotFoundError(INFO, [folder], ["wnids.txt", "train/<wnid>/images/*.JPEG", "val/"])
    wnids = sorted({line.strip() for line in wnids_path.read_text().splitlines() if line.strip()})
    class_of = {wnid: index for index, wnid in enumerate(wnids)}
    files, labels = _train_files(folder, class_of) if split == "train" else _val_files(folder, class_of)
    missing = [path for path in files if not path.is_file()]
    if not files or missing:
        what = f"{len(missing)} listed images are missing, e.g. {missing[0]}" if missing else "no images"
        raise DatasetNotFoundError(INFO, [folder], [f"{split} images ({what})"])
    return load_or_decode(files, labels, _ensure_size, folder / f".bench_cache_{split}.pt", use_cache)
