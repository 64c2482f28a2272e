"""Dataset loaders read small files written in each dataset's real on-disk format, and fail helpfully."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bench.data.jpeg_cache as jpeg_cache
from bench.data import (
    DATASETS,
    DatasetInfo,
    DatasetNotFoundError,
    ImageSplit,
    dataset_info,
    load_dataset,
)

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- writers of the real formats


def write_idx(path: Path, array: np.ndarray, gz: bool, magic: int | None = None) -> None:
    magic = magic if magic is not None else (0x08 << 8) | array.ndim
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist(folder: Path, n_train: int = 5, n_test: int = 3, gz: bool = False) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_x": RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": RNG.integers(0, 10, n_train, dtype=np.uint8),
        "test_x": RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": RNG.integers(0, 10, n_test, dtype=np.uint8),
    }
    write_idx(folder / "train-images-idx3-ubyte", arrays["train_x"], gz)
    write_idx(folder / "train-labels-idx1-ubyte", arrays["train_y"], gz)
    write_idx(folder / "t10k-images-idx3-ubyte", arrays["test_x"], gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", arrays["test_y"], gz)
    return arrays


def write_cifar_batch(
    path: Path, n: int, label_key: bytes, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = RNG.integers(0, num_classes, n)
    batch = {
        b"batch_label": b"testing batch",
        b"data": data,
        label_key: labels.tolist(),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = (labels // 5).tolist()
    with open(path, "wb") as handle:
        pickle.dump(batch, handle)
    return data, labels


def write_jpeg(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="JPEG", quality=95)


COLOURS = {"n02": (200, 30, 30), "n01": (30, 200, 30), "n03": (30, 30, 200)}


def write_tinyimagenet(root: Path) -> Path:
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("n02\nn01\nn03\n")  # deliberately unsorted
    for wnid, colour in COLOURS.items():
        for i in range(2):
            write_jpeg(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", colour)
    val = [("val_1.JPEG", "n03"), ("val_0.JPEG", "n02"), ("val_2.JPEG", "n01")]
    for name, wnid in val:
        write_jpeg(folder / "val" / "images" / name, COLOURS[wnid])
    lines = [f"{name}\t{wnid}\t0\t0\t63\t63" for name, wnid in val]
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


# ---------------------------------------------------------------- catalogue and ImageSplit


def test_catalogue_lists_the_seven_datasets_with_consistent_stats():
    assert set(DATASETS) == {
        "digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "tinyimagenet", "imagenette"
    }  # fmt: skip
    for name, info in DATASETS.items():
        assert info.name == name and dataset_info(name) is info
        assert len(info.mean) == len(info.std) == info.channels
        assert all(0 < s < 1 for s in info.std) and info.how_to_get
    assert DATASETS["cifar10"].mean == (0.4914, 0.4822, 0.4465)
    assert DATASETS["cifar10"].std == (0.2471, 0.2435, 0.2616)
    assert DATASETS["cifar100"].num_classes == 100 and DATASETS["tinyimagenet"].num_classes == 200


def test_dataset_info_rejects_mismatched_stats():
    with pytest.raises(ValueError, match="per channel"):
        DatasetInfo("x", 3, 8, 8, 10, (0.5,), (0.5,), "nowhere", ())


def test_unknown_dataset_names_valid_ones_and_closest_match():
    with pytest.raises(ValueError, match="Did you mean 'cifar10'") as error:
        dataset_info("cifar1O")
    assert "fashion_mnist" in str(error.value) and "tinyimagenet" in str(error.value)
    with pytest.raises(ValueError, match="Did you mean 'mnist'"):
        load_dataset("mnsit", "train")


def test_bad_split_lists_valid_splits():
    with pytest.raises(ValueError, match="valid splits: train, test"):
        load_dataset("digits", "val")


def test_image_split_float_images_and_subset():
    images = torch.tensor([0, 51, 255, 102], dtype=torch.uint8).view(4, 1, 1, 1)
    split = ImageSplit(images=images, labels=torch.tensor([3, 1, 4, 1]))
    assert len(split) == 4
    floats = split.float_images()
    assert floats.dtype == torch.float32
    torch.testing.assert_close(floats.flatten(), torch.tensor([0.0, 0.2, 1.0, 0.4]))
    torch.testing.assert_close(split.float_images(torch.tensor([2])).flatten(), torch.tensor([1.0]))
    torch.testing.assert_close(split.float_images(slice(1, 3)).flatten(), torch.tensor([0.2, 1.0]))
    part = split.subset([3, 0])
    assert part.labels.tolist() == [1, 3] and part.images.flatten().tolist() == [102, 0]
    assert split.images.flatten().tolist() == [0, 51, 255, 102]  # the float view did not alter the split


def test_image_split_validates_its_tensors():
    with pytest.raises(ValueError, match="int64"):
        ImageSplit(images=torch.zeros(2, 1, 4, 4), labels=torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        ImageSplit(images=torch.zeros(2, 1, 4, 4), labels=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="uint8 or float32"):
        ImageSplit(
            images=torch.zeros(2, 1, 4, 4, dtype=torch.float64), labels=torch.zeros(2, dtype=torch.int64)
        )


# ---------------------------------------------------------------- digits


def test_digits_split_shapes_range_and_stratification():
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.images.shape == (1437, 1, 32, 32) and test.images.shape == (360, 1, 32, 32)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert float(train.images.min()) >= 0.0 and float(train.images.max()) <= 1.0
    assert float(train.images.max()) > 0.9  # really scaled by 1/16, not by 1/255
    all_counts = np.bincount(load_digits().target, minlength=10)
    train_counts = np.bincount(train.labels.numpy(), minlength=10)
    test_counts = np.bincount(test.labels.numpy(), minlength=10)
    assert (train_counts + test_counts == all_counts).all()
    assert np.abs(test_counts - 0.2 * all_counts).max() <= 1  # every class keeps its 20 % share


def test_digits_is_deterministic_and_matches_its_stats():
    first, second = load_dataset("digits", "train"), load_dataset("digits", "train")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    info = dataset_info("digits")
    assert float(first.images.mean()) == pytest.approx(info.mean[0], abs=1e-4)
    assert float(first.images.std()) == pytest.approx(info.std[0], abs=1e-4)


# ---------------------------------------------------------------- MNIST / Fashion-MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_plain_and_gzipped_idx_losslessly(tmp_path, gz):
    arrays = write_mnist(tmp_path / "mnist", gz=gz)
    train = load_dataset("mnist", "train", root=tmp_path)
    test = load_dataset("mnist", "test", root=tmp_path)
    assert train.images.shape == (5, 1, 28, 28) and train.images.dtype == torch.uint8
    assert np.array_equal(train.images[:, 0].numpy(), arrays["train_x"])
    assert train.labels.tolist() == arrays["train_y"].tolist() and train.labels.dtype == torch.int64
    assert np.array_equal(test.images[:, 0].numpy(), arrays["test_x"])
    assert test.labels.tolist() == arrays["test_y"].tolist()


def test_fashion_mnist_reads_torchvision_layout_and_pads(tmp_path):
    arrays = write_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    padded = load_dataset("fashion_mnist", "train", root=tmp_path, pad_to_32=True)
    assert padded.images.shape == (5, 1, 32, 32)
    assert np.array_equal(padded.images[:, 0, 2:30, 2:30].numpy(), arrays["train_x"])
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert int(padded.images[:, 0][:, border].max()) == 0


def test_root_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    arrays = write_mnist(tmp_path / "mnist")
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path))
    assert load_dataset("mnist", "test").labels.tolist() == arrays["test_y"].tolist()


def test_corrupt_idx_magic_is_rejected(tmp_path):
    write_mnist(tmp_path / "mnist")
    images = RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte", images, gz=False, magic=0x00000801)
    with pytest.raises(ValueError, match="magic number 0x00000801, expected 0x00000803"):
        load_dataset("mnist", "train", root=tmp_path)


def test_truncated_idx_is_rejected(tmp_path):
    write_mnist(tmp_path / "mnist")
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="header says"):
        load_dataset("mnist", "test", root=tmp_path)


def test_missing_mnist_names_both_layouts_and_how_to_get(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("mnist", "train", root=tmp_path)
    message = str(error.value)
    assert str(tmp_path / "mnist") in message and str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and dataset_info("mnist").how_to_get in message
    assert isinstance(error.value, FileNotFoundError)


# ---------------------------------------------------------------- CIFAR


def test_cifar10_concatenates_the_five_batches_losslessly(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    parts = [write_cifar_batch(folder / f"data_batch_{i}", 2, b"labels", 10) for i in range(1, 6)]
    test_data, test_labels = write_cifar_batch(folder / "test_batch", 3, b"labels", 10)
    train = load_dataset("cifar10", "train", root=tmp_path)
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    expected = np.concatenate([p[0] for p in parts]).reshape(10, 3, 32, 32)
    assert np.array_equal(train.images.numpy(), expected)
    assert train.labels.tolist() == np.concatenate([p[1] for p in parts]).tolist()
    # row layout: 1024 red values, then green, then blue, each row-major
    assert int(train.images[0, 1, 0, 5]) == int(parts[0][0][0, 1024 + 5])
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert np.array_equal(test.images.numpy().reshape(3, -1), test_data)
    assert test.labels.tolist() == test_labels.tolist()


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data, labels = write_cifar_batch(folder / "train", 4, b"fine_labels", 100)
    write_cifar_batch(folder / "test", 2, b"fine_labels", 100)
    train = load_dataset("cifar100", "train", root=tmp_path)
    assert train.labels.tolist() == labels.tolist()
    assert np.array_equal(train.images.numpy().reshape(4, -1), data)


def test_missing_cifar_names_the_folder_and_files(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("cifar10", "test", root=tmp_path)
    message = str(error.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "test_batch" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message


# ---------------------------------------------------------------- Tiny ImageNet


def test_tinyimagenet_labels_follow_sorted_wnids(tmp_path):
    write_tinyimagenet(tmp_path)
    train = load_dataset("tinyimagenet", "train", root=tmp_path, use_cache=False)
    assert train.images.shape == (6, 3, 64, 64) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2]  # n01, n02, n03
    mean_colours = train.float_images().mean(dim=(2, 3)) * 255
    expected = torch.tensor(
        [COLOURS[w] for w in ("n01", "n01", "n02", "n02", "n03", "n03")], dtype=torch.float32
    )
    torch.testing.assert_close(mean_colours, expected, atol=4.0, rtol=0)
    test = load_dataset("tinyimagenet", "test", root=tmp_path, use_cache=False)
    assert test.labels.tolist() == [1, 2, 0]  # val_0 n02, val_1 n03, val_2 n01
    torch.testing.assert_close(test.float_images()[1].mean(dim=(1, 2)) * 255, expected[4], atol=4.0, rtol=0)


def test_tinyimagenet_cache_round_trip_and_invalidation(tmp_path, monkeypatch):
    folder = write_tinyimagenet(tmp_path)
    first = load_dataset("tinyimagenet", "train", root=tmp_path)
    cache = folder / ".bench_cache_train.pt"
    assert cache.is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as patch:
        patch.setattr(jpeg_cache, "decode_files", no_decoding)
        cached = load_dataset("tinyimagenet", "train", root=tmp_path)
    assert torch.equal(cached.images, first.images) and torch.equal(cached.labels, first.labels)

    write_jpeg(folder / "train" / "n03" / "images" / "n03_9.JPEG", COLOURS["n03"])
    rebuilt = load_dataset("tinyimagenet", "train", root=tmp_path)  # file count changed -> decode again
    assert len(rebuilt) == 7 and rebuilt.labels.tolist()[-1] == 2


def test_missing_tinyimagenet_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("tinyimagenet", "train", root=tmp_path)
    message = str(error.value)
    assert str(tmp_path / "tiny-imagenet-200") in message and "wnids.txt" in message
    assert "tiny-imagenet-200.zip" in message


def test_tinyimagenet_rejects_annotations_with_unknown_wnids(tmp_path):
    folder = write_tinyimagenet(tmp_path)
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="val_annotations.txt:1"):
        load_dataset("tinyimagenet", "test", root=tmp_path, use_cache=False)


# ---------------------------------------------------------------- Imagenette


def write_imagenette(root: Path, folder_name: str = "imagenette2-160") -> Path:
    folder = root / folder_name
    for split, count in (("train", 2), ("val", 1)):
        for wnid, colour in COLOURS.items():
            for i in range(count):
                write_jpeg(folder / split / wnid / f"{wnid}_{i}.JPEG", colour, size=(90, 60))
    return folder


def test_imagenette_resizes_crops_and_maps_sorted_wnids(tmp_path):
    folder = write_imagenette(tmp_path, "imagenette2-320")
    # A striped image: the centre crop of the resized image must keep only the middle (green) band.
    stripes = Image.new("RGB", (90, 60), (255, 0, 0))
    stripes.paste((0, 255, 0), (15, 0, 75, 60))
    stripes.save(folder / "val" / "n01" / "n01_0.JPEG", format="JPEG", quality=95)
    train = load_dataset("imagenette", "train", root=tmp_path, image_size=32, use_cache=False)
    assert train.images.shape == (6, 3, 32, 32) and train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    test = load_dataset("imagenette", "test", root=tmp_path, image_size=32, use_cache=False)
    assert test.labels.tolist() == [0, 1, 2]
    crop = test.images[0].to(torch.float32)
    assert float(crop[0, :, 2:-2].max()) < 40 and float(crop[1, :, 2:-2].min()) > 215
    torch.testing.assert_close(
        test.float_images()[2].mean(dim=(1, 2)) * 255,
        torch.tensor(COLOURS["n03"], dtype=torch.float32),
        atol=4.0,
        rtol=0,
    )


def test_imagenette_cache_is_keyed_by_image_size(tmp_path):
    folder = write_imagenette(tmp_path)
    small = load_dataset("imagenette", "test", root=tmp_path, image_size=16)
    default = load_dataset("imagenette", "test", root=tmp_path)
    assert small.images.shape[-1] == 16 and default.images.shape[-1] == 64
    assert (folder / ".bench_cache_test_16.pt").is_file() and (folder / ".bench_cache_test_64.pt").is_file()


def test_missing_imagenette_lists_every_folder_tried(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("imagenette", "train", root=tmp_path)
    message = str(error.value)
    for name in ("imagenette2-160", "imagenette2-320", "imagenette2"):
        assert str(tmp_path / name) in message
    assert "https://github.com/fastai/imagenette" in message
