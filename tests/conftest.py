"""Shared fixtures: a tiny grid on the digits data that trains and attacks in seconds, and pretended source edits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

torch.set_num_threads(min(2, torch.get_num_threads()))

@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny models (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): one thread is as
    fast alone and far faster on a shared, oversubscribed CPU. The previous count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits8_data():
    """scikit-learn's digits at 8x8, (train_x, train_y, test_x, test_y), for the attack tests that fit a tiny CNN
    (each takes the first N test points it needs)."""
    from bench.benchmarks.toys import digits8

    train_x, train_y = digits8("train")
    test_x, test_y = digits8("test")
    return train_x, train_y, test_x, test_y


@pytest.fixture(scope="session")
def digits8_cnn():
    """The tiny CNN the attack-agreement tests attack: seeded, fitted on all 1437 digits at 8x8 (10 epochs, one
    thread), fitted once per session. Tests must not change it (deep-copy it first)."""
    from bench.benchmarks.toys import TinyCNN, digits8, fit_classifier

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train_x, train_y = digits8("train")
    model = fit_classifier(TinyCNN(), train_x, train_y, epochs=10, seed=0)
    torch.set_num_threads(threads)
    return model


TINY_GRID = {
    "description": "test grid",
    "n_examples": 24,
    "seeds": [0],
    "eval": {"batch_size": 12},
    "defences": {
        "standard": {"name": "standard", "epochs": 2},
        "at": {"name": "at", "epochs": 2, "attack_steps": 2, "collapse_factor": 0.0},
    },
    "attacks": {
        "fgsm": {"name": "fgsm"},
        "pgd": {"name": "pgd", "steps": 3},
    },
    "blocks": [{"name": "b", "scenarios": ["digits"], "defences": ["standard", "at"], "attacks": ["fgsm", "pgd"]}],
}


@pytest.fixture
def tiny_grid(tmp_path: Path):
    """Write a grid file (optionally changed by `edit`) and return run arguments that keep all output in tmp."""

    def make(edit=None, name: str = "tiny_test") -> list[str]:
        grid = yaml.safe_load(yaml.safe_dump(TINY_GRID))
        if edit:
            edit(grid)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(grid))
        return [f"grid={path}", f"results_dir={tmp_path / 'results'}", f"artifacts_dir={tmp_path / 'artifacts'}",
                "device=cpu", "log_level=WARNING"]

    return make


@pytest.fixture
def edited_source(monkeypatch):
    """Pretend that some files' source changed (a comment appended), for the fingerprints only."""
    from bench import fingerprint

    edited: set[str] = set()
    original = fingerprint._read_source

    def read(path: str) -> bytes:
        text = original(path)
        return text + b"\n# changed\n" if any(path.endswith(name) for name in edited) else text

    monkeypatch.setattr(fingerprint, "_read_source", read)
    fingerprint._code_closure.cache_clear()
    yield lambda *names: (edited.update(names), fingerprint._code_closure.cache_clear())
    fingerprint._code_closure.cache_clear()
