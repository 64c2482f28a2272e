"""CIFAR-10 and CIFAR-100 from the official "python version" pickles, uint8 (N, 3, 32, 32).

The pickles are read by a restricted unpickler that can build nothing but plain containers, strings, bytes,
numbers and numpy arrays of plain dtypes: a file carrying any other object (code to run, say) is refused
before anything in it is called. Each file is checked against the published MD5 of the official release
(the checksums torchvision also lists); a file of the official size in examples whose checksum differs is
refused as corrupt, a file of another size is used with a warning that it is not the official one.
"""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data.base import DatasetInfo, DatasetNotFoundError, ImageSplit
from bench.hashing import file_digest

LOG = logging.getLogger("bench.data")

# Published MD5s of the official python-version files (https://www.cs.toronto.edu/~kriz/cifar.html).
OFFICIAL_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-10-batches-py/batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "cifar-100-python/meta": "7973b15100ade9c7d40fb424638fde48",
}
# Examples in each official file: the same count with another checksum means a damaged official file.
OFFICIAL_EXAMPLES = {"data_batch_1": 10000, "data_batch_2": 10000, "data_batch_3": 10000, "data_batch_4": 10000,
                     "data_batch_5": 10000, "test_batch": 10000, "train": 50000, "test": 10000}
# numpy's array pickling helpers (module renamed in numpy 2): they build arrays from bytes, nothing else.
_NUMPY_GLOBALS = {
    (module, name)
    for prefix in ("numpy.core", "numpy._core")
    for module, name in ((f"{prefix}.multiarray", "_reconstruct"), (f"{prefix}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype")}


class UnsafePickleError(pickle.UnpicklingError):
    """A dataset pickle asked for an object outside the allowed plain types (it was not loaded)."""


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, str, bytes, numbers and numpy arrays; refuses every other global."""

    def __init__(self, handle: io.BufferedReader, source: Path):
        super().__init__(handle, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes into protocol-2 pickles
            return _latin1_bytes
        if (module, name) in _NUMPY_GLOBALS:
            if name == "dtype":
                return _plain_dtype
            if name == "ndarray":
                return np.ndarray
            return _numpy_helper(name)
        raise UnsafePickleError(f"{self.source}: refused to load: the pickle asks for {module}.{name}, which a "
                                f"dataset file never needs (plain containers and numpy arrays only)")


def _numpy_helper(name: str) -> Any:
    try:  # numpy 2 moved its internals to numpy._core
        from numpy._core import multiarray, numeric
    except ImportError:
        from numpy.core import multiarray, numeric
    return {"_reconstruct": multiarray._reconstruct, "_frombuffer": numeric._frombuffer}[name]


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refused to load: an unexpected bytes encoding {encoding!r}")
    return text.encode("latin1")


def _plain_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise UnsafePickleError(f"refused to load: a numpy array of Python objects ({dtype})")
    return dtype


def read_plain_pickle(path: Path) -> Any:
    """A pickle of plain data, read safely; a damaged or unsafe file is an error that names it."""
    try:
        with open(path, "rb") as handle:
            return _PlainDataUnpickler(handle, path).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            MemoryError) as error:
        raise ValueError(f"{path} is not a readable CIFAR batch (truncated or corrupt?): "
                         f"{type(error).__name__}: {error}") from error


def verify_official(path: Path, examples: int) -> None:
    """Compare a file with its published MD5 (when it is one of the official files)."""
    name = f"{path.parent.name}/{path.name}"
    expected = OFFICIAL_MD5.get(name)
    if expected is None:
        return
    actual = file_digest(path, "md5")
    if actual == expected:
        return
    if examples == OFFICIAL_EXAMPLES.get(path.name):
        raise ValueError(f"{path} is damaged or modified: MD5 {actual}, the official file's is {expected}; "
                         f"extract the official archive again")
    LOG.warning("%s is not the official CIFAR file (%d examples, MD5 %s); using it as it is", path, examples,
                actual)

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"

CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR100_FILES = {"train": ["train"], "test": ["test"]}

# The standard published statistics (as used by RobustBench and the DeepMind model zoo).
CIFAR10_INFO = DatasetInfo(
    dataset="cifar10",
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
    folders=(CIFAR10_FOLDER,),
)

CIFAR100_INFO = DatasetInfo(
    dataset="cifar100",
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
    folders=(CIFAR100_FOLDER,),
)


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    # The official files are Python 2 pickles of plain dicts; "bytes" keeps their str keys as bytes.
    batch = read_plain_pickle(path)
    if not isinstance(batch, dict):
        raise ValueError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch (a dict)")
    try:
        data = np.asarray(_get(batch, "data", path), dtype=np.uint8)
        labels = np.asarray(_get(batch, label_key, path), dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: its data or labels are not arrays of numbers: {error}") from error
    if len(data) != len(labels):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels (truncated or corrupt?)")
    verify_official(path, len(labels))
    return data, labels


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
