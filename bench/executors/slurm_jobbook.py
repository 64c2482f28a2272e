"""The SLURM job book (bench.layout: results/<grid>/.plan/jobs.json): every job submitted per stage or cell;
`collect_finished_jobs`, which gives jobs that died without a word (killed, out of time or memory) a failed
record pointing at their logs; and `job_views`, the latest job of each stage and cell for bench.status.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import layout, records
from bench.executors.base import JobView
from bench.executors.slurm_queue import query_job_states, state_word
from bench.plan import Plan
from defences.atomic import write_json_atomic


class JobBook:
    """Every job submitted for a grid: per stage or cell key, its attempts (latest last), and the arrays."""

    def __init__(self, path: Path):
        self.path = Path(path)
        raw = records.read_json(self.path) or {}
        self.jobs: dict[str, list[dict[str, Any]]] = raw.get("jobs", {})
        self.arrays: list[dict[str, Any]] = raw.get("arrays", [])

    @classmethod
    def for_plan(cls, plan_path: Path) -> JobBook:
        """The book beside a plan file (both under the grid's .plan/ folder)."""
        return cls(layout.job_book_path(layout.grid_dir_of_plan(plan_path)))

    def latest(self, key: str) -> dict[str, Any] | None:
        attempts = self.jobs.get(key)
        return attempts[-1] if attempts else None

    def latest_job_ids(self) -> list[str]:
        return [job["job_id"] for job in map(self.latest, self.jobs) if job]

    def add_array(self, array: dict[str, Any], tasks: dict[str, dict[str, Any]]) -> None:
        self.arrays.append(array)
        for key, job in tasks.items():
            self.jobs.setdefault(key, []).append(job)

    def save(self) -> None:
        write_json_atomic(self.path, {"arrays": self.arrays, "jobs": self.jobs})


def _death_note(job: dict[str, Any], job_state: str) -> str:
    return (f"SLURM job {job['job_id']} ended in state {job_state} without writing a result (killed, out of "
            f"time or memory, or lost with its node); see its log {job.get('stderr')} (and {job.get('stdout')})")


def _job_details(job: dict[str, Any], job_state: str) -> dict[str, Any]:
    return {"log": job.get("stderr"), "stdout": job.get("stdout"), "slurm_job_id": job["job_id"],
            "slurm_state": job_state}


def _record_death(plan: Plan, key: str, job: dict[str, Any], job_state: str) -> str:
    """What an ended job left ('done' / 'failed'); when nothing, write a failed record or failed.json."""
    if key in plan.stages:
        stage = plan.stages[key]
        found = layout.stage_file_state(stage.artifact_dir)
        if found is None:
            write_json_atomic(layout.stage_failed_path(stage.artifact_dir), records.stage_failure(
                stage, _death_note(job, job_state), **_job_details(job, job_state), failed_at=time.time()))
        return found or "failed"
    cell = plan.cell(key)
    path = layout.record_path(plan, cell)
    found = records.record_status(path, cell.key)
    if found is None:
        write_json_atomic(path, records.failed_record(
            records.cell_fields(cell), _death_note(job, job_state), **_job_details(job, job_state),
            finished_at=time.time()))
    return found or "failed"


def collect_finished_jobs(plan: Plan, book: JobBook, states: dict[str, str] | None = None) -> dict[str, str]:
    """Give every ended job that left no result a failed record (cells) or failed.json (stages).

    Returns key -> 'done' / 'failed' / 'running' / 'pending' for every key that has a job in the book.
    """
    if states is None:
        states = query_job_states(book.latest_job_ids())
    cells = {cell.key for cell in plan.cells}
    outcome: dict[str, str] = {}
    for key in book.jobs:
        job = book.latest(key)
        if job is None or (key not in plan.stages and key not in cells):
            continue
        job_state = states.get(job["job_id"], "UNKNOWN")
        word = state_word(job_state)
        outcome[key] = word if word != "ended" else _record_death(plan, key, job, job_state)
    return outcome


def job_views(book: JobBook, states: dict[str, str]) -> dict[str, JobView]:
    """The latest job of every stage and cell in the book, with its state in `states` (job id -> SLURM state)."""
    views = {}
    for key, attempts in book.jobs.items():
        if attempts:
            job = attempts[-1]
            state = states.get(job["job_id"])
            views[key] = JobView(job_id=job["job_id"], state=state, word=state_word(state), attempts=len(attempts),
                                 log=job.get("stderr"))
    return views
