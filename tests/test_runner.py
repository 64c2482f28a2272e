"""The runner end to end on a tiny digits grid: records, resume, failures recorded as failures, executors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.config import compose
from bench.records import REQUIRED_FIELDS, load_records, validate_record
from bench.run import run


def _records(tmp_path: Path, grid: str = "tiny_test") -> dict[str, dict]:
    return {r["key"]: r for r in load_records(tmp_path / "results" / grid / "cells")}


def test_tiny_grid_records_resume_and_report(tmp_path, tiny_grid):
    summary = run(compose(tiny_grid()))
    assert summary == {**summary, "done": 4, "failed": 0, "pending": 0}
    records = _records(tmp_path)
    assert len(records) == 4
    for record in records.values():
        assert validate_record(record) == [], record.get("error")
        assert set(REQUIRED_FIELDS) <= set(record)
        assert record["status"] == "done" and record["n_examples"] == 24
        n = record["n_examples"]
        assert len(record["per_example"]["index"]) == n == len(record["robust_correct"])
        assert record["robust_acc"] == pytest.approx(sum(record["robust_correct"]) / n)
        low, high = record["robust_ci"]
        assert low <= record["robust_acc"] <= high
        assert record["robust_acc"] <= record["clean_acc"] + 1e-9 or record["attack_name"] == "fgsm"
        assert record["counts"]["backward_examples"] > 0
        assert record["attack_settings"]["eps"] == 0.15
    # the four cells share two training stages; both artifacts exist once
    artifacts = list((tmp_path / "artifacts" / "digits").glob("*/defence.json"))
    assert len(artifacts) == 2
    assert (tmp_path / "results" / "tiny_test" / "summary.md").exists()
    assert (tmp_path / "results" / "tiny_test" / "summary.csv").exists()

    # a second run skips every finished cell and leaves the records untouched
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "results" / "tiny_test" / "cells").glob("*.json")}
    again = run(compose(tiny_grid()))
    assert again["ran"] == 0 and again["done"] == 4
    assert mtimes == {p: p.stat().st_mtime_ns for p in mtimes}

    # a new attack setting runs one new cell per defence and reuses the fitted defences
    stage_mtimes = {p: p.stat().st_mtime_ns for p in artifacts}
    third = run(compose(tiny_grid() + ["attacks.pgd.steps=4"]))
    assert third["ran"] == 2
    assert stage_mtimes == {p: p.stat().st_mtime_ns for p in artifacts}


def test_collapsed_training_fails_its_cells_and_retry_keeps_history(tmp_path, tiny_grid):
    def only_at(grid):
        grid["defences"]["at"].update(collapse_factor=1.5, lr=1.0e4)
        grid["blocks"][0].update(defences=["at"], attacks=["fgsm"])

    summary = run(compose(tiny_grid(only_at)))
    assert summary["failed"] == 1 and summary["done"] == 0
    (record,) = _records(tmp_path).values()
    assert record["status"] == "failed"
    assert "TrainingCollapsed" in record["error"] or "has no finished artifact" in record["error"]
    assert "robust_acc" not in record  # a failed cell is never a result
    failed_stage = next((tmp_path / "artifacts" / "digits").glob("*/failed.json"))
    assert "TrainingCollapsed" in json.loads(failed_stage.read_text())["error"]

    # fixing the recipe changes the stage key: a new cell is run and the failed record stays on disk
    def fixed(grid):
        only_at(grid)
        grid["defences"]["at"].update(lr=0.05, collapse_factor=0.0)

    summary = run(compose(tiny_grid(fixed)))
    assert summary["done"] == 1
    # retrying the same failed cell archives its old record instead of overwriting it
    run(compose(tiny_grid(only_at)))
    history = list((tmp_path / "results" / "tiny_test" / "cells" / "history").glob("*.json"))
    assert len(history) == 1 and json.loads(history[0].read_text())["status"] == "failed"


def test_local_executor_matches_in_process(tmp_path, tiny_grid):
    def small(grid):
        grid["blocks"][0].update(defences=["standard"], attacks=["pgd"])

    run(compose(tiny_grid(small) + ["executor=local", f"local.jobs_dir={tmp_path / 'jobs'}"]))
    local = next(iter(_records(tmp_path).values()))
    assert local["status"] == "done", local.get("error")
    logs = list((tmp_path / "jobs" / "local").glob("*_log.out"))
    assert len(logs) == 2  # one job for the training stage, one for the cell

    other = tmp_path / "in_process"
    other.mkdir()
    args = [a.replace(str(tmp_path / "results"), str(other / "results")) for a in tiny_grid(small)]
    run(compose(args))
    debug = next(iter(load_records(other / "results" / "tiny_test" / "cells")))
    assert debug["per_example"]["robust_draws"] == local["per_example"]["robust_draws"]
    assert debug["clean_acc"] == local["clean_acc"]
