"""Shared fixtures: a tiny grid on the digits data that trains and attacks in seconds, and pretended source edits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

THREADS_VARIABLE = "BENCH_TEST_THREADS"


def _threads_from_environment() -> int | None:
    """BENCH_TEST_THREADS=N runs every test under N torch CPU threads, the tests that pick one thread for speed
    included: results must not depend on the thread count, and this is how that is checked."""
    value = os.environ.get(THREADS_VARIABLE, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(f"{THREADS_VARIABLE} must be a positive integer (torch CPU threads), got {value!r}")
    return int(value)


FORCED_THREADS = _threads_from_environment()


def torch_threads_for_tests(default: int = 1) -> int:
    """The torch thread count a test or fixture should use: BENCH_TEST_THREADS where set, else `default`."""
    return FORCED_THREADS or default


torch.set_num_threads(FORCED_THREADS or min(2, torch.get_num_threads()))


def pytest_report_header() -> str:
    return f"torch threads: {torch.get_num_threads()} ({THREADS_VARIABLE}={FORCED_THREADS or 'unset'})"


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny models (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): one thread is as
    fast alone and far faster on a shared, oversubscribed CPU (BENCH_TEST_THREADS overrides it). The previous
    count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads_for_tests())
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
    torch.set_num_threads(torch_threads_for_tests())
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


@pytest.fixture(scope="session")
def robustbench_package():
    """robustbench's (model_zoo, model_zoo.enums, utils) modules, imported as the harness imports them; skips where
    the `robustbench` extra is not installed, except on CI (CI=true), which installs it: there it is an error."""
    from bench.zoo.robustbench import robustbench_modules

    try:
        return robustbench_modules("robustbench.model_zoo", "robustbench.model_zoo.enums", "robustbench.utils")
    except ImportError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"the robustbench extra is not installed here: {' '.join(str(error).split())}")
