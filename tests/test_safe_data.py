"""CIFAR batches are read by a restricted unpickler: code hidden in a dataset file never runs, and damaged
files are errors that name them."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from bench.data import load_dataset
from bench.data.cifar import OFFICIAL_MD5, UnsafePickleError, read_plain_pickle, verify_official


def write_batch(path: Path, n: int, protocol: int = 2) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(n)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    batch = {b"batch_label": b"b", b"data": data, b"labels": labels,
             b"filenames": [f"{i}.png".encode() for i in range(n)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return data, labels


class _CreatesAFile:
    """A payload: unpickling it calls os.system, which would create `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_batches_load_for_every_pickle_protocol(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    parts = [write_batch(folder / f"data_batch_{i}", 3, protocol) for i in range(1, 6)]
    write_batch(folder / "test_batch", 2, protocol)
    train = load_dataset("cifar10", "train", root=tmp_path)
    expected = np.concatenate([data for data, _ in parts]).reshape(-1, 3, 32, 32)
    assert np.array_equal(train.images.numpy(), expected)
    assert train.labels.tolist() == [label for _, labels in parts for label in labels]


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        write_batch(folder / f"data_batch_{i}", 2)
    marker = tmp_path / "pwned"
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"payload": _CreatesAFile(marker)}
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"data_batch_3.*posix\.system|data_batch_3.*os\.system"):
        load_dataset("cifar10", "train", root=tmp_path)
    assert not marker.exists()


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": np.array([object()], dtype=object)}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        read_plain_pickle(path)


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_truncated_batch_is_an_error_naming_the_file(tmp_path, keep):
    folder = tmp_path / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        write_batch(folder / name, 4)
    damaged = folder / "data_batch_2"
    damaged.write_bytes(damaged.read_bytes()[: int(len(damaged.read_bytes()) * keep)])
    with pytest.raises(ValueError, match=r"data_batch_2.*(truncated or corrupt)"):
        load_dataset("cifar10", "train", root=tmp_path)


def test_official_file_with_a_wrong_checksum_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_batch(path, 2)
    verify_official(path, examples=2)  # not the official file: used, with a warning
    with pytest.raises(ValueError, match=r"test_batch is damaged or modified: MD5 .*40351d587109b95175f43aff81a1287e"):
        verify_official(path, examples=10000)
    import hashlib

    monkeypatch.setitem(OFFICIAL_MD5, "cifar-10-batches-py/test_batch", hashlib.md5(path.read_bytes()).hexdigest())
    verify_official(path, examples=10000)  # the right checksum passes
