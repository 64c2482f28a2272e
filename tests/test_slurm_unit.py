"""The SLURM executor's sbatch side, through submitit's mocked sbatch (no cluster needed).

Checks the generated sbatch text (array ranges, parallelism, dependencies, profile options), the grouping
of jobs into arrays and their chunking below MaxArraySize, the job pickles (a plan path and a key only),
the job book, in-flight jobs not being submitted twice, Ctrl-C, and the collection of silently dead jobs.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import pytest
import yaml
from submitit.slurm.test_slurm import mocked_slurm

import bench.executors.slurm as slurm_executor
from bench.conffiles import ConfigError
from bench.config import compose
from bench.executors.slurm_jobbook import JobBook, collect_finished_jobs, job_views
from bench.executors.slurm_queue import parse_state_table
from bench.grid import expand
from bench.jobs import CellJob, StageJob
from bench.layout import record_path, stage_failed_path
from bench.planfile import read_plan, write_plan
from bench.records import read_json
from bench.run import main as run_main
from bench.run import plan_state, work_to_do
from bench.status import format_status, status_rows

PROFILE = {
    "description": "unit-test cluster",
    "defaults": {"partition": "gpu", "account": "proj42", "qos": "normal", "gpus_per_node": 1, "cpus_per_task": 4,
                 "mem_gb": 16, "time_min": 120, "setup": ["module load cuda", "export OMP_NUM_THREADS=4"],
                 "sbatch": {"reservation": "bench_resv"}},
    "train": {"time_min": 600},
    "eval": {"time_min": 60},
    "rules": [{"match": {"kind": "eval", "attack_name": "pgd"}, "set": {"time_min": 90, "qos": "short"}}],
}


@pytest.fixture()
def planned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The tiny grid planned into tmp_path (nothing trained): plan path, plan, pending levels and cells."""
    monkeypatch.chdir(tmp_path)
    config = compose(["grid=tiny", f"results_dir={tmp_path / 'results'}", f"artifacts_dir={tmp_path / 'art'}"])
    plan = expand(config)
    plan_path = write_plan(plan, config.results_dir())
    levels, cells = work_to_do(plan, *plan_state(plan), retry_failed=True)
    profile_path = tmp_path / "unit.yaml"
    profile_path.write_text(yaml.safe_dump(PROFILE))
    monkeypatch.setattr(slurm_executor, "cluster_max_array_size", lambda: None)  # whatever cluster is here
    return plan_path, plan, levels, cells, profile_path


def make_executor(tmp_path: Path, profile_path: Path, **options) -> slurm_executor.SlurmExecutor:
    return slurm_executor.SlurmExecutor(
        options={"profile": str(profile_path), "jobs_dir": str(tmp_path / "jobs"), "array_parallelism": 3,
                 "max_array_size": None, "poll_s": 0.01, **options},
        run_options={"wait": False})


def sbatch_files(tmp_path: Path) -> dict[str, str]:
    """Submission scripts by job id (submitit names them <job id>_submission.sh)."""
    return {p.name.split("_submission")[0]: p.read_text()
            for p in sorted((tmp_path / "jobs").rglob("*_submission.sh"))}


def sbatch_options(text: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", text, re.MULTILINE))


def test_sbatch_text_arrays_dependencies_and_profile_options(planned, tmp_path: Path) -> None:
    plan_path, plan, levels, cells, profile_path = planned
    assert [len(level) for level in levels] == [2] and len(cells) == 4
    with mocked_slurm():
        outcome = make_executor(tmp_path, profile_path).run(plan_path, levels, cells)
    assert set(outcome.values()) == {"submitted"} and len(outcome) == 6
    scripts = sbatch_files(tmp_path)
    # mocked sbatch numbers jobs from 12: training array, then the fgsm cells, then the pgd cells (own rule)
    assert sorted(scripts) == ["12", "13", "14"]
    train, fgsm, pgd = (sbatch_options(scripts[i]) for i in ("12", "13", "14"))
    assert train["array"] == "0-1%2"  # two stages; parallelism 3 capped at the array's size
    assert fgsm["array"] == "0-1%2" and pgd["array"] == "0-1%2"
    assert "dependency" not in train
    assert fgsm["dependency"] == "afterany:12" and pgd["dependency"] == "afterany:12"
    assert train["time"] == "600" and fgsm["time"] == "60" and pgd["time"] == "90"
    assert pgd["qos"] == "short" and fgsm["qos"] == "normal" and train["qos"] == "normal"
    for options in (train, fgsm, pgd):
        assert options["partition"] == "gpu" and options["account"] == "proj42"
        assert options["gpus-per-node"] == "1" and options["cpus-per-task"] == "4"
        assert options["mem"] == "16384M" and options["reservation"] == "bench_resv"
        assert options["chdir"] == str(tmp_path) and options["signal"] == "USR2@90"
    assert "module load cuda\nexport OMP_NUM_THREADS=4" in scripts["12"]
    assert train["job-name"] == "bench-tiny-train0" and fgsm["job-name"] == "bench-tiny-eval1"


def test_job_pickles_carry_the_plan_path_and_a_key_only(planned, tmp_path: Path) -> None:
    plan_path, plan, levels, cells, profile_path = planned
    with mocked_slurm():
        make_executor(tmp_path, profile_path).run(plan_path, levels, cells)
    pickles = sorted((tmp_path / "jobs").rglob("*_submitted.pkl"))
    assert len(pickles) == 6
    for path in pickles:
        assert path.stat().st_size < 1024
        delayed = pickle.loads(path.read_bytes())
        job = delayed.function
        assert delayed.args == () and delayed.kwargs == {}
        if isinstance(job, StageJob):
            assert vars(job) == {"plan_path": str(plan_path.resolve()), "stage_key": job.stage_key}
            assert job.stage_key in plan.stages
        else:
            assert isinstance(job, CellJob)
            assert vars(job) == {"plan_path": str(plan_path.resolve()), "cell_key": job.cell_key}
            assert job.cell_key in {c.key for c in plan.cells}
        assert hasattr(job, "checkpoint")  # submitit requeues Checkpointable callables on timeout/preemption


def test_job_book_records_every_task(planned, tmp_path: Path) -> None:
    plan_path, plan, levels, cells, profile_path = planned
    with mocked_slurm():
        make_executor(tmp_path, profile_path).run(plan_path, levels, cells)
    book = JobBook.for_plan(plan_path)
    assert [a["array_id"] for a in book.arrays] == ["12", "13", "14"]
    assert sorted(book.latest(k)["job_id"] for k in levels[0]) == ["12_0", "12_1"]
    assert sorted(book.latest(k)["job_id"] for k in cells) == ["13_0", "13_1", "14_0", "14_1"]
    job = book.latest(levels[0][0])
    assert job["stderr"].endswith("12_0/12_0_0_log.err") and job["kind"] == "train"
    text = format_status(plan, status_rows(plan, job_views(book, {"12_0": "RUNNING", "12_1": "PENDING"})))
    assert "job 12_0 (RUNNING)" in text and "stages: 1 pending, 1 running" in text


def test_chunks_never_exceed_max_array_size(planned, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan_path, plan, levels, cells, profile_path = planned
    monkeypatch.setattr(slurm_executor, "cluster_max_array_size", lambda: 3)  # the cluster's limit wins...
    executor = make_executor(tmp_path, profile_path, max_array_size=50)
    assert executor.max_array_size() == 3
    executor = make_executor(tmp_path, profile_path, max_array_size=1)  # ...and so does a lower option
    assert executor.max_array_size() == 1
    profile = slurm_executor.ClusterProfile(name="flat", defaults={"time_min": 5})
    arrays = slurm_executor.plan_arrays(plan, levels, cells, profile, max_array_size=3)
    assert [(a.kind, a.level, len(a.keys)) for a in arrays] == [("train", 0, 2), ("eval", 1, 3), ("eval", 1, 1)]
    assert [k for a in arrays[1:] for k in a.keys] == cells  # every cell once, order kept
    with mocked_slurm():
        executor.run(plan_path, levels, cells)
    arrays_sbatch = [sbatch_options(t).get("array") for t in sbatch_files(tmp_path).values()]
    assert arrays_sbatch == [None] * 6  # arrays of one task are single jobs


def test_second_level_waits_for_the_first(planned, tmp_path: Path) -> None:
    plan_path, plan, levels, cells, profile_path = planned
    first, second = levels[0]
    with mocked_slurm():
        make_executor(tmp_path, profile_path).run(plan_path, [[first], [second]], cells)
    options = {job: sbatch_options(text) for job, text in sbatch_files(tmp_path).items()}
    assert "dependency" not in options["12"] and options["13"]["dependency"] == "afterany:12"
    assert options["14"]["dependency"] == "afterany:12:13"


def test_jobs_in_flight_are_not_submitted_again(planned, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan_path, plan, levels, cells, profile_path = planned
    with mocked_slurm():
        make_executor(tmp_path, profile_path).run(plan_path, levels, [])
    # the training array is still running when the user runs bench.run again
    monkeypatch.setattr(slurm_executor, "query_job_states",
                        lambda ids: {i: "RUNNING" for i in ids if i.startswith("12_")})
    with mocked_slurm() as mock:
        mock.job_count = 20
        outcome = make_executor(tmp_path, profile_path).run(plan_path, levels, cells)
    scripts = sbatch_files(tmp_path)
    assert sorted(scripts) == ["12", "20", "21"]
    assert sbatch_options(scripts["20"])["dependency"] == "afterany:12_0:12_1"
    assert len(outcome) == 6


class FakeTerminal:
    def isatty(self) -> bool:
        return True


def test_ctrl_c_while_waiting_offers_to_cancel(planned, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan_path, plan, levels, cells, profile_path = planned
    cancelled: list[list[str]] = []
    monkeypatch.setattr(slurm_executor, "query_job_states", lambda ids: {i: "PENDING" for i in ids})
    monkeypatch.setattr(slurm_executor.time, "sleep", lambda s: (_ for _ in ()).throw(KeyboardInterrupt))
    monkeypatch.setattr(slurm_executor.sys, "stdin", FakeTerminal())
    monkeypatch.setattr(slurm_executor.subprocess, "run", lambda cmd, check: cancelled.append(cmd))
    for answer, expected in (("y", [["scancel", "12", "13", "14"]]), ("n", [])):
        monkeypatch.setattr("builtins.input", lambda prompt, answer=answer: answer)
        cancelled.clear()
        executor = make_executor(tmp_path, profile_path)
        executor.wait = True
        with mocked_slurm(), pytest.raises(KeyboardInterrupt):
            executor.run(plan_path, levels, cells)
        assert cancelled == expected
        (plan_path.parent / "jobs.json").unlink()


def test_dead_jobs_get_failed_records_pointing_at_their_logs(planned, tmp_path: Path) -> None:
    plan_path, plan, levels, cells, profile_path = planned
    with mocked_slurm():
        make_executor(tmp_path, profile_path).run(plan_path, levels, cells)
    plan = read_plan(plan_path)
    book = JobBook.for_plan(plan_path)
    stage_key, cell = levels[0][0], next(c for c in plan.cells if c.key == cells[0])
    states = {book.latest(stage_key)["job_id"]: "TIMEOUT", book.latest(cell.key)["job_id"]: "CANCELLED",
              book.latest(cells[1])["job_id"]: "RUNNING"}
    outcome = collect_finished_jobs(plan, book, states)
    failed_stage = read_json(stage_failed_path(plan.stages[stage_key].artifact_dir))
    assert failed_stage["slurm_state"] == "TIMEOUT" and failed_stage["log"] == book.latest(stage_key)["stderr"]
    record = read_json(record_path(plan, cell))
    assert record["status"] == "failed" and record["slurm_state"] == "CANCELLED"
    assert record["log"] == book.latest(cell.key)["stderr"] and "CANCELLED" in record["error"]
    assert outcome[stage_key] == "failed" and outcome[cell.key] == "failed" and outcome[cells[1]] == "running"
    assert not record_path(plan, next(c for c in plan.cells if c.key == cells[1])).exists()
    text = format_status(plan, status_rows(plan, job_views(book, states)))
    assert f"failed   job {book.latest(cell.key)['job_id']} (CANCELLED)" in text
    assert "error: SLURM job 13_0 ended in state CANCELLED without writing a result" in text
    # a cell that wrote its own record keeps it: collecting never overwrites
    collect_finished_jobs(plan, book, {book.latest(cell.key)["job_id"]: "FAILED"})
    assert read_json(record_path(plan, cell))["slurm_state"] == "CANCELLED"


def test_parse_state_table_expands_array_ranges() -> None:
    text = "5_[0-3%2]|PENDING\n5_1|RUNNING\n6|CANCELLED by 0\n7_[2,4-5]|PENDING\n8_0|COMPLETED\n"
    assert parse_state_table(text) == {"5_0": "PENDING", "5_1": "RUNNING", "5_2": "PENDING", "5_3": "PENDING",
                                       "6": "CANCELLED", "7_2": "PENDING", "7_4": "PENDING", "7_5": "PENDING",
                                       "8_0": "COMPLETED"}


def test_profile_errors_say_what_is_valid(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Did you mean 'local'"):
        slurm_executor.ClusterProfile.load("locl")
    with pytest.raises(ConfigError, match="Did you mean 'partition'"):
        slurm_executor.ClusterProfile.from_dict("x", {"defaults": {"time_min": 5, "partiton": "gpu"}})
    with pytest.raises(ConfigError, match="time_min"):
        slurm_executor.ClusterProfile.from_dict("x", {"defaults": {"partition": "gpu"}})
    with pytest.raises(ConfigError, match="unknown key 'defence_nam'"):
        slurm_executor.ClusterProfile.from_dict("x", {"defaults": {"time_min": 5}, "rules": [
            {"match": {"defence_nam": "carso"}, "set": {"time_min": 9}}]})
    for name in slurm_executor.available_profiles():  # the shipped profiles load
        assert slurm_executor.ClusterProfile.load(name).defaults["time_min"] > 0


def test_dry_run_prints_the_submission(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(slurm_executor, "cluster_max_array_size", lambda: None)
    assert run_main(["grid=tiny", "executor=slurm", "dry_run=true", "slurm.profile=example_gpu_cluster",
                     f"results_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "SLURM submission with profile example_gpu_cluster: 2 arrays, 6 tasks, at most 32 GPU-hours" in out
    assert not (tmp_path / "tiny").exists()  # a dry run writes nothing


def test_without_slurm_tools_the_error_says_how_to_get_them(planned, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    plan_path, plan, levels, cells, profile_path = planned
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="slurm/local_cluster/install.sh"):
        make_executor(tmp_path, profile_path).run(plan_path, levels, cells)


def test_executor_hooks_check_the_device_here_unless_the_work_runs_on_the_cluster() -> None:
    from bench.executors.debug import DebugExecutor
    from bench.executors.local import LocalExecutor
    from bench.options import RunOptions

    absent = RunOptions(device="cuda:99")  # no machine this runs on has a hundredth GPU
    for local in (DebugExecutor, LocalExecutor):
        with pytest.raises(ConfigError, match="cuda:99"):
            local.check_device(absent)
    assert slurm_executor.SlurmExecutor.check_device(absent) is None  # the nodes have their own devices


def test_status_asks_every_executor_for_its_jobs(planned, tmp_path: Path) -> None:
    """The status table shows the SLURM job book's jobs whatever executor the plan names; without a book there
    are no jobs and no note."""
    from bench.status import executor_jobs

    plan_path, plan, levels, cells, profile_path = planned
    assert executor_jobs(plan, plan_path) == ({}, [])
    with mocked_slurm():
        make_executor(tmp_path, profile_path).run(plan_path, levels, cells)
    book = JobBook.for_plan(plan_path)
    jobs, _ = executor_jobs(dataclasses.replace(plan, options=plan.options.replace(executor="debug")), plan_path)
    assert {key: view.job_id for key, view in jobs.items()} == {key: book.latest(key)["job_id"] for key in book.jobs}
    assert all(view.attempts == 1 and view.log == book.latest(key)["stderr"] for key, view in jobs.items())
