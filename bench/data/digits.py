"""scikit-learn's bundled 8x8 handwritten digits, upsampled to 32x32: a dataset that needs no download."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from bench.data.base import DatasetInfo, ImageSplit

IMAGE_SIZE = 32

# Measured on the 1437 training images after the /16 scaling and upsampling below;
# tests/test_data_loaders.py recomputes them.
INFO = DatasetInfo(
    dataset="digits",
    channels=1,
    height=IMAGE_SIZE,
    width=IMAGE_SIZE,
    num_classes=10,
    mean=(0.3054,),
    std=(0.3237,),
    how_to_get="Nothing to download: the 1797 8x8 digit images ship with scikit-learn "
    "(sklearn.datasets.load_digits); no data root is used.",
    folders=(),  # scikit-learn's bundled files: covered by the package versions in each record
)


def load(root: Path, split: str) -> ImageSplit:
    """A fixed stratified 80/20 split (1437 train / 360 test), float32 in [0, 1], shape (N, 1, 32, 32)."""
    del root  # bundled with scikit-learn
    digits = load_digits()
    train_x, test_x, train_y, test_y = train_test_split(
        digits.images, digits.target, test_size=0.2, stratify=digits.target, random_state=0
    )
    images, labels = (train_x, train_y) if split == "train" else (test_x, test_y)
    small = torch.from_numpy(images).to(torch.float32).div_(16.0).unsqueeze(1)
    upsampled = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return ImageSplit(images=upsampled.clamp_(0.0, 1.0).contiguous(), labels=torch.from_numpy(labels).long())
