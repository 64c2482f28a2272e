"""Where things live on disk: the one owner of the results and artifacts folder layout.

    <results_dir>/<grid>/
        .plan/plan.json                the latest plan (bench.status and bench.report read it)
        .plan/plan-<content key>.json  the plan a run's jobs read (a concurrent run cannot change it under them)
        .plan/jobs.json                the SLURM job book
        cells/<record name>            one record per cell (bench.records owns the format)
        cells/<record name>.partial    the batches an interrupted evaluation saved
        cells/<record name>.lock       the lock of a cell at work
        cells/history/, cells/quarantine/   older attempts, and files that are not valid records
        diagnostics/<scenario>.<defence>.<attack>.s<seed>.json
        adversarials/<record name less .json>.safetensors   a cell's saved final points (eval.save_adversarials)
        adversarials/<...>.partial/batch-<b>.safetensors     the points of the batches an interrupted run saved
        adversarials/history/                                 files set aside instead of overwritten
        summary.md, summary.csv, index.html, tables/, figures/   the report (bench.report)
    <results_dir>/smoke/, <artifacts_dir>/smoke/   the same folders of a `smoke=true` run
    <artifacts_dir>/<scenario>/<defence>-s<seed>-<key>/   one training stage's artifact
        defence.json (written last by `defences.base.Defence.save`: the stage is done), failed.json,
        progress-<phase>.pt (a fit's resumable checkpoints, removed once the stage is done)
    <jobs_dir>/local/, <jobs_dir>/slurm/<grid>/<job id>/    the executors' job logs

Every module asks this one for a path or for "is this stage done"; none spells a name of its own.
"""

from __future__ import annotations

from pathlib import Path

from bench.plan import EvalCell, Plan
from defences.base import METADATA_FILE, PROGRESS_FILE

PLAN_DIR = ".plan"
LATEST_PLAN = "plan.json"
JOB_BOOK = "jobs.json"
CELLS = "cells"
HISTORY = "history"
QUARANTINE = "quarantine"
DIAGNOSTICS = "diagnostics"
ADVERSARIALS = "adversarials"
STAGE_DONE = METADATA_FILE  # defences.base.Defence.save writes it last: the stage is done
STAGE_FAILED = "failed.json"
SMOKE = "smoke"
TABLES = "tables"  # the report's files, relative to the grid's folder (the report links them so)
FIGURES = "figures"
SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
REPORT_PAGE = "index.html"
PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
JOB_ID_PLACEHOLDER = "%j"  # submitit's (and SLURM's) stand-in for the job id in a job's paths


# --- a grid's results folder ------------------------------------------------------------------------------

def grid_dir(results_dir: str | Path, grid: str) -> Path:
    return Path(results_dir) / grid


def plan_dir(grid_folder: Path) -> Path:
    return Path(grid_folder) / PLAN_DIR


def latest_plan_path(grid_folder: Path) -> Path:
    return plan_dir(grid_folder) / LATEST_PLAN


def plan_snapshot_path(grid_folder: Path, content_key: str) -> Path:
    return plan_dir(grid_folder) / f"plan-{content_key}.json"


def job_book_path(grid_folder: Path) -> Path:
    return plan_dir(grid_folder) / JOB_BOOK


def cells_dir(grid_folder: Path) -> Path:
    return Path(grid_folder) / CELLS


def diagnostics_dir(grid_folder: Path) -> Path:
    return Path(grid_folder) / DIAGNOSTICS


def diagnostics_path(grid_folder: Path, cell: EvalCell) -> Path:
    """The diagnostics file of a cell (bench.diagnose writes it, the report reads the folder)."""
    return diagnostics_dir(grid_folder) / f"{cell.scenario}.{cell.defence_key}.{cell.attack_key}.s{cell.seed}.json"


def grid_dir_of_plan(plan_path: str | Path) -> Path:
    """The grid's folder of a plan file in its .plan/ folder."""
    return Path(plan_path).parent.parent


def smoke_dir(folder: str | Path) -> Path:
    """Where a smoke run puts what would go in `folder` (results or artifacts): never mixed with real ones."""
    return Path(folder) / SMOKE


# --- the report ---------------------------------------------------------------------------------------------

def report_tables_dir(grid_folder: Path) -> Path:
    return Path(grid_folder) / TABLES


def report_figures_dir(grid_folder: Path) -> Path:
    return Path(grid_folder) / FIGURES


def summary_md_path(grid_folder: Path) -> Path:
    return Path(grid_folder) / SUMMARY_MD


def summary_csv_path(grid_folder: Path) -> Path:
    return Path(grid_folder) / SUMMARY_CSV


def report_page_path(grid_folder: Path) -> Path:
    return Path(grid_folder) / REPORT_PAGE


def record_path(plan: Plan, cell: EvalCell) -> Path:
    """The record file of a planned cell."""
    return cells_dir(grid_dir(plan.options.results_dir, plan.grid)) / cell.record_name


def adversarials_path(plan: Plan, cell: EvalCell) -> Path:
    """The saved final points of a planned cell (named, like its record, by the cell's key)."""
    folder = Path(grid_dir(plan.options.results_dir, plan.grid)) / ADVERSARIALS
    return folder / (cell.record_name.removesuffix(".json") + ".safetensors")


def points_missing(plan: Plan, cell: EvalCell) -> bool:
    """Whether a cell that saves its adversarial examples lacks their file (a done record then needs a run)."""
    return cell.eval.save_adversarials and not adversarials_path(plan, cell).is_file()


def adversarials_partial_dir(points: Path) -> Path:
    """Where an evaluation saving `points` keeps each finished batch's points until the cell is done."""
    return points.with_name(points.name.removesuffix(".safetensors") + PARTIAL_SUFFIX)


def partial_path(record: Path) -> Path:
    return record.with_name(record.name + PARTIAL_SUFFIX)


def lock_path(path: Path) -> Path:
    """The lock file beside a record, or beside a stage's artifact folder."""
    return path.with_name(path.name + LOCK_SUFFIX)


def aside_dir(record: Path, kind: str) -> Path:
    """cells/history/ or cells/quarantine/ for a file in cells/."""
    if kind not in (HISTORY, QUARANTINE):
        raise ValueError(f"kind={kind!r} is not valid; valid: {HISTORY}, {QUARANTINE}")
    return record.parent / kind


def is_record_candidate(path: Path) -> bool:
    """Whether a file in cells/ should be a record (not a folder, a temporary file, a partial result or a lock)."""
    return not (path.is_dir() or path.name.startswith(".") or path.name.endswith((PARTIAL_SUFFIX, LOCK_SUFFIX)))


# --- a training stage's artifact folder ------------------------------------------------------------------

def stage_done_path(artifact_dir: str | Path) -> Path:
    return Path(artifact_dir) / STAGE_DONE


def stage_failed_path(artifact_dir: str | Path) -> Path:
    return Path(artifact_dir) / STAGE_FAILED


def stage_is_done(artifact_dir: str | Path) -> bool:
    return stage_done_path(artifact_dir).exists()


def stage_file_state(artifact_dir: str | Path) -> str | None:
    """'done', 'failed' or None (not run yet) from what a stage's artifact folder holds."""
    if stage_is_done(artifact_dir):
        return "done"
    return "failed" if stage_failed_path(artifact_dir).exists() else None


def stage_progress_files(artifact_dir: str | Path) -> list[Path]:
    """The resumable checkpoints a fit left in its folder (defences.base.FitContext.checkpoint_path)."""
    return sorted(Path(artifact_dir).glob(PROGRESS_FILE.format(phase="*")))


def stage_artifact_dir(artifacts_dir: str | Path, scenario: str, defence_key: str, seed: int, key: str) -> Path:
    return Path(artifacts_dir) / scenario / f"{defence_key}-s{seed}-{key}"


# --- job logs -----------------------------------------------------------------------------------------------

def local_jobs_dir(jobs_dir: str | Path) -> Path:
    return Path(jobs_dir) / "local"


def slurm_jobs_dir(jobs_dir: str | Path) -> Path:
    """SLURM job folders go under <this>/<grid>/<job id>/ (resolved: the jobs run from the submission folder)."""
    return Path(jobs_dir).resolve() / "slurm"


def slurm_grid_jobs_dir(jobs_dir: str | Path, grid: str) -> Path:
    """The folder of a grid's SLURM jobs."""
    return slurm_jobs_dir(jobs_dir) / grid


def slurm_job_folder(jobs_dir: str | Path, grid: str) -> Path:
    """One SLURM job's folder, as submitit takes it (`%j`: SLURM puts the job id in)."""
    return slurm_grid_jobs_dir(jobs_dir, grid) / JOB_ID_PLACEHOLDER
