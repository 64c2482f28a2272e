"""Scenario files: every one loads, and threat models match the papers; real-format data runs end to end."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from bench.conffiles import available
from bench.config import compose, load_scenario
from bench.records import load_records
from bench.run import run

PAPER_EPS = {"cifar10": 8 / 255, "cifar100": 8 / 255, "tinyimagenet": 8 / 255, "imagenette": 8 / 255,
             "mnist": 0.3, "fashion_mnist": 0.3}


@pytest.mark.parametrize("name", available("scenario"))
def test_every_scenario_loads_with_the_papers_threat_model(name):
    scenario = load_scenario(name)
    task = scenario.task()
    assert task.num_classes >= 10 and task.channels in (1, 3)
    if scenario.norm == "Linf" and scenario.dataset in PAPER_EPS:
        assert scenario.eps == pytest.approx(PAPER_EPS[scenario.dataset], abs=1e-9)
    if name == "digits":
        assert (scenario.norm, scenario.eps, task.height) == ("Linf", 0.15, 32)


def test_bad_scenario_fields_are_explained(tmp_path, tiny_grid):
    with pytest.raises(ValueError, match="unknown key.*'epz'.*Did you mean 'eps'"):
        run(compose(tiny_grid() + ["scenarios.digits.epz=0.1"]))
    with pytest.raises(ValueError, match="valid forms: train:<arch>, file:<path>, robustbench:<name>"):
        run(compose(tiny_grid() + ["scenarios.digits.classifier=hub:resnet"]))


def _write_cifar10(root, n_train=40, n_test=30):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", n_train // 5) for i in range(1, 6)] + [("test_batch", n_test)]:
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels.tolist(), b"batch_label": name.encode()}, handle)


def test_cifar10_scenario_runs_from_real_format_files(tmp_path, tiny_grid):
    _write_cifar10(tmp_path / "data")

    def cifar(grid):
        grid["n_examples"] = 10
        grid["defences"]["standard"].update(epochs=1, batch_size=20, collapse_factor=0.0)  # random pixels
        grid["blocks"][0].update(scenarios=["cifar10"], defences=["standard"], attacks=["fgsm"])

    args = tiny_grid(cifar) + [f"data_dir={tmp_path / 'data'}", "scenarios.cifar10.classifier=train:small_cnn",
                                "scenarios.cifar10.classifier_params={}"]
    summary = run(compose(args))
    assert summary["done"] == 1
    (record,) = load_records(tmp_path / "results" / "tiny_test" / "cells")
    assert record["n_examples"] == 10 and record["attack_settings"]["eps"] == pytest.approx(8 / 255)


def test_missing_dataset_fails_the_cell_with_instructions(tmp_path, tiny_grid):
    def cifar(grid):
        grid["blocks"][0].update(scenarios=["cifar10"], defences=["standard"], attacks=["fgsm"])

    summary = run(compose(tiny_grid(cifar) + [f"data_dir={tmp_path / 'empty'}"]))
    assert summary["failed"] == 1
    (record,) = load_records(tmp_path / "results" / "tiny_test" / "cells")
    assert "cifar-10-batches-py" in record["error"] and "cs.toronto.edu" in record["error"]
