"""A run killed in the middle of training, and one killed in the middle of evaluation, finish from their
checkpoints when run again, with records identical in content to an uninterrupted run's.

The killed runs are real `python -m bench.run` processes, SIGKILLed (no chance to clean up) as soon as the
first per-epoch checkpoint, then the first per-batch partial file, is on disk. The last resume runs in this
process with a spy on the per-batch evaluation, to show that no finished batch is computed again.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bench.evaluate
from attacks.seeding import derive_seed
from bench.records import load_records, read_json
from bench.run import main as run_main

REPO = Path(__file__).resolve().parent.parent
# fields that say when, where and how fast a record was made, not what it found
VOLATILE = {"started_at", "finished_at", "wall_seconds", "attack_seconds", "host", "log", "slurm_job_id",
            "hardware", "git_commit", "_path"}


def grid_args(root: Path) -> list[str]:
    return ["grid=tiny", "executor=debug", "report=false", f"results_dir={root / 'results'}",
            f"artifacts_dir={root / 'artifacts'}"]


def comparable(records: list[dict]) -> dict[str, dict]:
    return {r["key"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in records}


def run_until_killed(root: Path, condition: Callable[[], bool], timeout_s: float = 900) -> bool:
    """Start bench.run in a subprocess and SIGKILL it once `condition()` holds; False if it ended first."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "killed-runs.log").open("a") as log:
        process = subprocess.Popen([sys.executable, "-m", "bench.run", *grid_args(root)], cwd=REPO, stdout=log,
                                   stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        try:
            while process.poll() is None and time.monotonic() < deadline:
                if condition():
                    process.kill()
                    process.wait()
                    return True
                time.sleep(0.02)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return False


def partial_files(root: Path) -> list[Path]:
    return sorted((root / "results" / "tiny" / "cells").glob("*.partial"))


@pytest.mark.slow
def test_killed_training_and_evaluation_resume_to_identical_records(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert run_main(grid_args(reference)) == 0
    expected = comparable(load_records(reference / "results" / "tiny" / "cells"))
    assert len(expected) == 4 and {r["status"] for r in expected.values()} == {"done"}

    # 1. kill during the first stage, right after its first epoch was saved
    checkpoints = lambda: sorted((interrupted / "artifacts").glob("digits/standard-*/progress-standard.pt"))  # noqa: E731
    assert run_until_killed(interrupted, lambda: bool(checkpoints())), "the run ended before it could be killed"
    stage_dir = checkpoints()[0].parent
    assert not (stage_dir / "defence.json").exists(), "killed too late: the stage had finished"
    saved_epoch = torch.load(checkpoints()[0], weights_only=True)["epoch"]

    # 2. run again: training resumes after the saved epoch; kill once a cell has saved a batch
    def batch_saved() -> bool:
        return any(len((read_json(p) or {"batches": {}})["batches"]) >= 1 for p in partial_files(interrupted))

    for _ in range(3):  # a fast cell may finish between the look and the kill: then try the next one
        assert run_until_killed(interrupted, batch_saved), "the run ended before it could be killed"
        if partial_files(interrupted):
            break
    fit_summary = read_json(stage_dir / "defence.json")["fit_summary"]
    assert fit_summary["resumed_from_epoch"] == saved_epoch + 1
    (partial,) = partial_files(interrupted)
    done_batches = sorted(int(b) for b in read_json(partial)["batches"])
    killed_key = partial.name.split(".")[-3]
    assert 1 <= len(done_batches) < 4

    # 3. finish in this process, watching which batches get computed
    computed: list[int] = []
    real_batch_result = bench.evaluate._batch_result

    def spy(defence, attack, x, y, draws, seed):
        computed.append(seed)
        return real_batch_result(defence, attack, x, y, draws, seed)

    monkeypatch.setattr(bench.evaluate, "_batch_result", spy)
    assert run_main(grid_args(interrupted)) == 0
    got = load_records(interrupted / "results" / "tiny" / "cells")
    killed = next(r for r in got if r["key"] == killed_key)  # batch b is seeded from the cell's settings key
    killed_seed, killed_settings = killed["seed"], killed["settings_key"]
    assert not {derive_seed(killed_seed, killed_settings, b) for b in done_batches} & set(computed)
    assert {derive_seed(killed_seed, killed_settings, b) for b in range(4) if b not in done_batches} <= set(computed)

    # the same records, each written once, and the same weights
    assert comparable(got) == expected
    assert not (interrupted / "results" / "tiny" / "cells" / "history").exists()
    assert not partial_files(interrupted)
    for folder in (reference / "artifacts" / "digits").iterdir():
        mine = load_file(str(interrupted / "artifacts" / "digits" / folder.name / "defence.safetensors"))
        theirs = load_file(str(folder / "defence.safetensors"))
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
