"""The tiny grid through real sbatch array jobs on the local SLURM (slurm/local_cluster), checked against the
in-process executor's records, with a training job preempted half-way and requeued.

Needs the cluster: `bash slurm/local_cluster/install.sh && bash slurm/local_cluster/start.sh`, then
`pytest -m slurm`. The SLURM run is submitted with wait=false; a training task gets SIGUSR2 (SLURM's
timeout/preemption warning) after its first saved epoch, so submitit checkpoints and requeues it; a second
`bench.run` finds every job still queued or running, submits nothing, waits and collects.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.executors.slurm_jobbook import JobBook
from bench.executors.slurm_queue import query_job_states
from bench.records import load_records, read_json
from bench.run import main as run_main

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parent.parent
VOLATILE = {"started_at", "finished_at", "wall_seconds", "attack_seconds", "host", "log", "slurm_job_id",
            "hardware", "git_commit", "_path"}


# Long enough that the preemption signal, sent right after the first saved epoch, always lands mid-training
# (with 3 epochs an idle machine could finish the stage before the signal was handled).
LONGER_TRAINING = "defences.standard.epochs=40"


def comparable(records: list[dict]) -> dict[str, dict]:
    return {r["key"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in records}


@pytest.fixture(scope="module", autouse=True)
def local_cluster() -> None:
    ready = shutil.which("sinfo") and subprocess.run(
        ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True).stdout.strip()
    if not ready:
        pytest.fail("no SLURM cluster answers; run `bash slurm/local_cluster/install.sh && "
                    "bash slurm/local_cluster/start.sh` first")


def bench_run(root: Path, *extra: str, executor: str = "slurm") -> subprocess.CompletedProcess:
    args = ["grid=tiny", LONGER_TRAINING, f"executor={executor}", "report=false", f"results_dir={root / 'results'}",
            f"artifacts_dir={root / 'artifacts'}", f"slurm.jobs_dir={root / 'jobs'}", "slurm.poll_s=2", *extra]
    return subprocess.run([sys.executable, "-m", "bench.run", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


def test_tiny_grid_on_slurm_matches_the_local_run(tmp_path: Path) -> None:
    reference, on_slurm = tmp_path / "reference", tmp_path / "slurm"
    assert run_main(["grid=tiny", LONGER_TRAINING, "executor=debug", "report=false",
                     f"results_dir={reference / 'results'}", f"artifacts_dir={reference / 'artifacts'}"]) == 0
    expected = comparable(load_records(reference / "results" / "tiny" / "cells"))

    submitted = bench_run(on_slurm, "wait=false")
    assert submitted.returncode == 0, submitted.stderr
    plan_path = on_slurm / "results" / "tiny" / ".plan" / "plan.json"
    book = JobBook.for_plan(plan_path)
    assert [(a["kind"], a["tasks"], a["dependency"]) for a in book.arrays] == [
        ("train", 2, None), ("eval", 4, f"afterany:{book.arrays[0]['array_id']}")]

    # preempt the standard stage after its first saved epoch: SIGUSR2, as SLURM sends before a time limit
    checkpoints = lambda: sorted((on_slurm / "artifacts").glob("digits/standard-*/progress-standard.pt"))  # noqa: E731
    wait_for(lambda: bool(checkpoints()), 900, "the first training checkpoint")
    stage_key = checkpoints()[0].parent.name.rsplit("-", 1)[-1]
    job_id = book.latest(stage_key)["job_id"]
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    log = Path(book.latest(stage_key)["stderr"])
    wait_for(lambda: "Requeued job" in log.read_text(), 120, f"job {job_id} to be requeued")
    # SLURM holds a requeued job back for about two minutes (Reason=BeginTime); no need to wait for that here
    deadline = time.monotonic() + 60
    while query_job_states([job_id])[job_id] not in ("PENDING", "REQUEUED") and time.monotonic() < deadline:
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=False, capture_output=True)

    status = subprocess.run([sys.executable, "-m", "bench.status", "grid=tiny",
                             f"results_dir={on_slurm / 'results'}"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 0 and f"job {job_id}" in status.stdout, status.stdout + status.stderr

    collected = bench_run(on_slurm)  # everything is queued or running: nothing is submitted again
    assert collected.returncode == 0, collected.stderr
    assert len(JobBook.for_plan(plan_path).arrays) == 2

    records = load_records(on_slurm / "results" / "tiny" / "cells")
    assert comparable(records) == expected
    assert all(r["slurm_job_id"] for r in records)
    stage_dir = next((on_slurm / "artifacts").glob(f"digits/standard-*{stage_key}"))
    fit = read_json(stage_dir / "defence.json")["fit_summary"]
    assert fit["resumed_from_epoch"] >= 1  # the requeued job went on from its checkpoint
    book = JobBook.for_plan(plan_path)
    states = query_job_states([book.latest(key)["job_id"] for key in book.jobs])
    assert set(states.values()) == {"COMPLETED"}
    assert "Requeued job" in log.read_text() and "resuming after epoch" in log.read_text()
