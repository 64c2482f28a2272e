"""SLURM executor: training stages and evaluation cells as submitit array jobs on a cluster.

`python -m bench.run grid=NAME executor=slurm slurm.profile=NAME [wait=false]`
- Resources come from a cluster profile (NAME: slurm/profiles/NAME.yaml here, else the shipped
  bench/conf/slurm_profile/NAME.yaml; or a path): defaults for every job, a
  `train` and an `eval` section, and `rules` that change resources for matching jobs (a defence, an attack).
- Jobs with the same resources form one array; arrays are cut below the cluster's MaxArraySize. Training
  levels go first (a stage on a base stage waits for the base's array); evaluation arrays wait for every
  training array with `afterany`, so a failed stage still lets its cells record a failure that points at it.
- Jobs are `submitit.helpers.Checkpointable`: on a timeout or preemption signal submitit requeues them and
  they resume from the per-epoch / per-batch progress files. Pickles hold the plan's path and a key only.
- Every job id goes into the grid's job book (bench.executors.slurm_jobbook; bench.status shows it). A later run
  does not submit again what is still queued or running; it waits for it. Ctrl-C while waiting asks whether to cancel.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from attacks.progress import Progress
from attacks.registry import closest_hint
from bench import layout
from bench.conffiles import CONF_DIR, ConfigError
from bench.executors.base import Executor, JobView
from bench.executors.slurm_jobbook import JobBook, collect_finished_jobs, job_views
from bench.executors.slurm_queue import query_job_states, state_word
from bench.jobs import CellJob, StageJob
from bench.options import ExecutorOptions, RunOptions
from bench.plan import Plan
from bench.planfile import read_plan

LOG = logging.getLogger("bench.executors")
# The shipped profiles are package data (bench/conf/slurm_profile/, installed with the package); a user's own go in
# slurm/profiles/ under the working directory (looked at first) or anywhere, named by path.
PROFILE_DIR = CONF_DIR / "slurm_profile"
USER_PROFILE_DIR = Path("slurm") / "profiles"
RESOURCE_KEYS = ("partition", "account", "qos", "gpus_per_node", "cpus_per_task", "mem_gb", "time_min",
                 "constraint", "exclusive", "setup", "sbatch", "signal_delay_s")
PROFILE_KEYS = ("description", "defaults", "train", "eval", "rules")
MATCH_KEYS = ("kind", "scenario", "defence", "defence_name", "attack", "attack_name")
DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's default MaxArraySize


# --- cluster profiles -------------------------------------------------------------------------------------

def available_profiles() -> list[str]:
    return sorted({p.stem for folder in (USER_PROFILE_DIR, PROFILE_DIR) for p in folder.glob("*.yaml")})


def profile_path(name_or_path: str) -> Path:
    """A .yaml/.yml path as given; a name: slurm/profiles/NAME.yaml in the working directory if there is one,
    else the shipped bench/conf/slurm_profile/NAME.yaml."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    user = USER_PROFILE_DIR / f"{name_or_path}.yaml"
    return user if user.is_file() else PROFILE_DIR / f"{name_or_path}.yaml"


def _check_resources(resources: Any, where: str) -> dict[str, Any]:
    if resources is None:
        return {}
    if not isinstance(resources, dict):
        raise ConfigError(f"{where} must be a mapping of resources ({', '.join(RESOURCE_KEYS)})")
    for key, value in resources.items():
        if key not in RESOURCE_KEYS:
            raise ConfigError(f"{where}: unknown resource {key!r}. {closest_hint(key, RESOURCE_KEYS)}")
        if key == "setup" and not (isinstance(value, list) and all(isinstance(line, str) for line in value)):
            raise ConfigError(f"{where}.setup must be a list of shell lines")
        if key == "sbatch" and not isinstance(value, dict):
            raise ConfigError(f"{where}.sbatch must map sbatch option names to values, e.g. {{reservation: x}}")
        if key in ("gpus_per_node", "cpus_per_task", "time_min", "signal_delay_s") and value is not None and (
                not isinstance(value, int) or value < 0):
            raise ConfigError(f"{where}.{key}={value!r} must be a whole number >= 0")
    return dict(resources)


@dataclass
class ClusterProfile:
    """A cluster's resources for jobs: defaults, per kind (train / eval), and rules for matching jobs."""

    name: str
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    rules: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, name_or_path: str) -> ClusterProfile:
        path = profile_path(name_or_path)
        if not path.exists():
            where = path if path.parent != PROFILE_DIR else f"{USER_PROFILE_DIR / path.name} and {path}"
            raise ConfigError(f"unknown SLURM profile {name_or_path!r} (looked for {where}). "
                              f"{closest_hint(str(name_or_path), available_profiles())} A path to a .yaml works too.")
        raw = yaml.safe_load(path.read_text()) or {}
        return cls.from_dict(path.stem, raw, where=str(path))

    @classmethod
    def from_dict(cls, name: str, raw: dict[str, Any], where: str = "profile") -> ClusterProfile:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must hold a mapping with keys {', '.join(PROFILE_KEYS)}")
        unknown = sorted(set(raw) - set(PROFILE_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}. {closest_hint(unknown[0], PROFILE_KEYS)}")
        rules = raw.get("rules") or []
        for index, rule in enumerate(rules):
            if not isinstance(rule, dict) or set(rule) != {"match", "set"}:
                raise ConfigError(f"{where}: rules[{index}] must have exactly 'match' and 'set'")
            for key in rule["match"]:
                if key not in MATCH_KEYS:
                    raise ConfigError(f"{where}: rules[{index}].match: unknown key {key!r}. "
                                      f"{closest_hint(key, MATCH_KEYS)}")
            _check_resources(rule["set"], f"{where}: rules[{index}].set")
        if not isinstance((raw.get("defaults") or {}).get("time_min"), int):
            raise ConfigError(f"{where}: defaults.time_min (the wall-clock limit of a job, in minutes) is required")
        return cls(name=name, description=str(raw.get("description", "")),
                   defaults=_check_resources(raw.get("defaults"), f"{where}: defaults"),
                   train=_check_resources(raw.get("train"), f"{where}: train"),
                   eval=_check_resources(raw.get("eval"), f"{where}: eval"), rules=rules)

    def resources(self, labels: dict[str, Any]) -> dict[str, Any]:
        """Resources of one job, from its labels (kind, scenario, defence, defence_name, attack, attack_name)."""
        resolved = {**self.defaults, **(self.train if labels["kind"] == "train" else self.eval)}
        for rule in self.rules:
            if all(_matches(labels.get(key), wanted) for key, wanted in rule["match"].items()):
                resolved.update(rule["set"])
        return {k: v for k, v in resolved.items() if v is not None and v != [] and v != {}}


def _matches(value: Any, wanted: Any) -> bool:
    return value in wanted if isinstance(wanted, list) else value == wanted


def submitit_parameters(resources: dict[str, Any]) -> dict[str, Any]:
    """A profile's resources as submitit SlurmExecutor parameters (sbatch options)."""
    parameters: dict[str, Any] = {}
    for key in ("partition", "account", "qos", "gpus_per_node", "cpus_per_task", "constraint", "exclusive",
                "setup", "signal_delay_s"):
        if key in resources:
            parameters[key] = resources[key]
    if "time_min" in resources:
        parameters["time"] = int(resources["time_min"])
    if "mem_gb" in resources:
        parameters["mem"] = f"{int(round(float(resources['mem_gb']) * 1024))}M"
    if resources.get("sbatch"):
        parameters["additional_parameters"] = {str(k).replace("_", "-"): v for k, v in resources["sbatch"].items()}
    return parameters


# --- grouping work into arrays ----------------------------------------------------------------------------

@dataclass
class ArraySpec:
    """One sbatch array: its kind, stage level (evaluation comes after every level), resources, keys."""

    kind: str
    level: int
    resources: dict[str, Any]
    keys: list[str]


def job_labels(plan: Plan, kind: str, key: str) -> dict[str, Any]:
    if kind == "train":
        stage = plan.stages[key]
        return {"kind": kind, "scenario": stage.scenario, "defence": stage.defence_key,
                "defence_name": stage.defence_name}
    cell = next(c for c in plan.cells if c.key == key)
    return {"kind": kind, "scenario": cell.scenario, "defence": cell.defence_key, "defence_name": cell.defence_name,
            "attack": cell.attack_key, "attack_name": cell.attack_name}


def plan_arrays(plan: Plan, stage_levels: list[list[str]], cells: list[str], profile: ClusterProfile,
                max_array_size: int) -> list[ArraySpec]:
    """Group jobs by (kind, level, resources) and cut each group into arrays of at most max_array_size."""
    if max_array_size < 1:
        raise ConfigError(f"slurm.max_array_size={max_array_size} must be >= 1")
    work = [("train", level, key) for level, keys in enumerate(stage_levels) for key in keys]
    work += [("eval", len(stage_levels), key) for key in cells]
    groups: dict[tuple[str, int, str], list[str]] = {}
    resources_of: dict[str, dict[str, Any]] = {}
    for kind, level, key in work:
        resources = profile.resources(job_labels(plan, kind, key))
        signature = json.dumps(resources, sort_keys=True)
        resources_of[signature] = resources
        groups.setdefault((kind, level, signature), []).append(key)
    arrays = []
    for (kind, level, signature), keys in groups.items():
        for start in range(0, len(keys), max_array_size):
            arrays.append(ArraySpec(kind, level, resources_of[signature], keys[start:start + max_array_size]))
    return sorted(arrays, key=lambda a: (a.kind != "train", a.level))


def cluster_max_array_size() -> int | None:
    """MaxArraySize from `scontrol show config`, or None when no cluster answers."""
    try:
        text = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else None


# --- the executor -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SlurmOptions(ExecutorOptions):
    """conf/executor/slurm.yaml's options (its comments say what each does)."""

    conf_name: ClassVar[str] = "slurm"
    profile: str
    jobs_dir: str
    array_parallelism: int
    max_array_size: int | None
    max_num_timeout: int
    poll_s: float
    calibration: str | None


class SlurmExecutor(Executor):
    """SLURM executor: training stages and evaluation cells as submitit array jobs on a cluster."""

    Options = SlurmOptions
    options: SlurmOptions

    def __init__(self, options: SlurmOptions | dict[str, Any] | None = None,
                 run_options: RunOptions | dict[str, Any] | None = None):
        super().__init__(options, run_options)
        self.profile = ClusterProfile.load(self.options.profile)
        self.wait = self.run_options.wait
        self.submitted_arrays: list[str] = []

    @classmethod
    def check_device(cls, run_options: RunOptions) -> None:
        """Nothing to check here: the work runs on the cluster's nodes, whatever this machine has."""

    @classmethod
    def collect_finished(cls, plan: Plan) -> None:
        """Jobs an earlier run submitted that died without a word (killed, out of time or memory) get a failed
        record or failed.json pointing at their logs."""
        jobs_file = layout.job_book_path(layout.grid_dir(plan.options.results_dir, plan.grid))
        if jobs_file.exists():
            collect_finished_jobs(plan, JobBook(jobs_file))

    @classmethod
    def job_views(cls, plan: Plan, plan_path: Path) -> tuple[dict[str, JobView], str | None]:
        """The job book's latest job of every stage and cell, in the state SLURM gives it now."""
        book = JobBook.for_plan(plan_path)
        latest = book.latest_job_ids()
        states = query_job_states(latest)
        note = None
        if latest and all(state == "UNKNOWN" for state in states.values()):
            note = (f"SLURM knows none of the {len(latest)} recorded jobs (no squeue/sacct here, or accounting is "
                    "off); states come from the files alone")
        return job_views(book, states), note

    def max_array_size(self) -> int:
        """Tasks per array: the option's cap, never above the cluster's MaxArraySize (indices start at 0)."""
        cluster = cluster_max_array_size()
        chosen = self.options.max_array_size
        limits = [int(v) for v in (cluster, chosen) if v is not None]
        return min(limits) if limits else DEFAULT_MAX_ARRAY_SIZE

    def describe(self, plan: Plan, stage_levels: list[list[str]], cells: list[str]) -> str:
        """What a submission would be: arrays, tasks and resources (for dry runs)."""
        arrays = plan_arrays(plan, stage_levels, cells, self.profile, self.max_array_size())
        gpu_hours = sum(len(a.keys) * a.resources.get("gpus_per_node", 0) * a.resources["time_min"] / 60
                        for a in arrays)
        lines = [f"SLURM submission with profile {self.profile.name}: {len(arrays)} arrays, "
                 f"{sum(len(a.keys) for a in arrays)} tasks, at most {gpu_hours:.0f} GPU-hours requested"]
        for array in arrays:
            shown = {k: v for k, v in array.resources.items() if k != "setup"}
            lines.append(f"  {array.kind}[{array.level}] {len(array.keys):>5} tasks  "
                         f"{json.dumps(shown, sort_keys=True)}")
        if self.options.calibration:
            lines.append(self._calibrated_estimate(plan, arrays, cells))
        return "\n".join(lines)

    def _calibrated_estimate(self, plan: Plan, arrays: list[ArraySpec], cells: list[str]) -> str:
        """GPU-hours of the evaluation cells from measured costs (bench/executors/calibration.py)."""
        from bench.executors.calibration import estimate_eval_hours, load_calibration

        path = str(self.options.calibration)
        eval_hours, uncovered = estimate_eval_hours(plan, cells, load_calibration(path))
        train_hours = sum(len(a.keys) * a.resources.get("gpus_per_node", 0) * a.resources["time_min"] / 60
                          for a in arrays if a.kind == "train")
        text = (f"calibrated estimate ({path}): {eval_hours:.1f} GPU-hours for {len(cells) - len(uncovered)} "
                f"evaluation cells, plus at most {train_hours:.0f} GPU-hours of training at the profile's time "
                f"limits (training is not calibrated)")
        if uncovered:
            text += f"; {len(uncovered)} cells not covered by the calibration, e.g. {uncovered[:3]}"
        return text

    def run(self, plan_path: Path, stage_levels: list[list[str]], cells: list[str]) -> dict[str, Any]:
        plan_path = Path(plan_path).resolve()
        plan = read_plan(plan_path)
        book = JobBook.for_plan(plan_path)
        in_flight = self._in_flight(book, [k for level in stage_levels for k in level] + cells)
        if in_flight:
            LOG.info("%d stages/cells already have a queued or running job; waiting for those instead of "
                     "submitting again", len(in_flight))
        todo_levels = [[k for k in level if k not in in_flight] for level in stage_levels]
        todo_cells = [k for k in cells if k not in in_flight]
        arrays = plan_arrays(plan, todo_levels, todo_cells, self.profile, self.max_array_size())
        # training job ids by stage level: a level waits for the levels below it, evaluation for all of them
        training_jobs: dict[int, list[str]] = {}
        for level, keys in enumerate(stage_levels):
            training_jobs[level] = [in_flight[k] for k in keys if k in in_flight]
        for array in arrays:
            before = [job for level, jobs in training_jobs.items() if level < array.level for job in jobs]
            dependency = f"afterany:{':'.join(before)}" if before else None
            array_id = self._submit_array(plan, plan_path, book, array, dependency)
            if array.kind == "train":
                training_jobs.setdefault(array.level, []).append(array_id)
        watched = {key: book.latest(key)["job_id"] for key in
                   list(in_flight) + [k for array in arrays for k in array.keys]}
        if not self.wait:
            LOG.info("submitted %d arrays (%d tasks); not waiting. `python -m bench.status grid=%s` shows them; "
                     "a later bench.run collects", len(arrays), sum(len(a.keys) for a in arrays), plan.grid)
            return {key: "submitted" for key in watched}
        return self._wait(plan, book, watched)

    # --- submission ---------------------------------------------------------------------------------------
    def _in_flight(self, book: JobBook, keys: list[str]) -> dict[str, str]:
        jobs = {key: book.latest(key)["job_id"] for key in keys if book.latest(key)}
        states = query_job_states(list(jobs.values()))
        return {key: job for key, job in jobs.items() if state_word(states.get(job)) != "ended"}

    def _executor(self, plan: Plan, array: ArraySpec, dependency: str | None):
        import submitit

        try:
            executor = submitit.SlurmExecutor(folder=layout.slurm_job_folder(self.options.jobs_dir, plan.grid),
                                              max_num_timeout=self.options.max_num_timeout)
        except RuntimeError as error:  # no srun on PATH
            raise ConfigError(f"executor=slurm needs SLURM's client tools (srun, sbatch) on PATH: {error} For a "
                              "local test cluster run slurm/local_cluster/install.sh and start.sh.") from error
        parameters = submitit_parameters(array.resources)
        extra = dict(parameters.pop("additional_parameters", {}))
        extra.setdefault("chdir", os.getcwd())  # the plan's artifact and results paths are relative to it
        executor.update_parameters(job_name=f"bench-{plan.grid}-{array.kind}{array.level}",
                                   array_parallelism=self.options.array_parallelism, additional_parameters=extra,
                                   **parameters)
        if dependency:
            executor.update_parameters(dependency=dependency)
        return executor

    def _submit_array(self, plan: Plan, plan_path: Path, book: JobBook, array: ArraySpec,
                      dependency: str | None) -> str:
        executor = self._executor(plan, array, dependency)
        job_class = StageJob if array.kind == "train" else CellJob
        with executor.batch():
            jobs = [executor.submit(job_class(str(plan_path), key)) for key in array.keys]
        array_id = jobs[0].job_id.split("_")[0]
        self.submitted_arrays.append(array_id)
        now = time.time()
        book.add_array({"array_id": array_id, "kind": array.kind, "level": array.level, "tasks": len(jobs),
                        "resources": array.resources, "dependency": dependency, "submitted_at": now},
                       {key: {"job_id": job.job_id, "array_id": array_id, "kind": array.kind, "submitted_at": now,
                              "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
                        for key, job in zip(array.keys, jobs, strict=True)})
        book.save()
        LOG.info("submitted %s array %s: %d tasks%s (logs under %s)", array.kind, array_id, len(jobs),
                 f", after {dependency}" if dependency else "",
                 layout.slurm_grid_jobs_dir(self.options.jobs_dir, plan.grid))
        return array_id

    # --- waiting --------------------------------------------------------------------------------------------
    def _wait(self, plan: Plan, book: JobBook, watched: dict[str, str]) -> dict[str, Any]:
        progress = Progress(f"slurm {plan.grid}", len(watched), LOG, every_s=60.0, unit="jobs")
        try:
            while True:
                states = query_job_states(list(watched.values()))
                finished = [key for key, job in watched.items() if state_word(states.get(job)) == "ended"]
                if len(finished) > progress.done:
                    progress.update(len(finished) - progress.done)
                if len(finished) == len(watched):
                    break
                time.sleep(self.options.poll_s)
        except KeyboardInterrupt:
            self._offer_cancel(plan)
            raise
        outcome = collect_finished_jobs(plan, book, states)
        return {key: outcome.get(key, "failed") for key in watched}

    def _offer_cancel(self, plan: Plan) -> None:
        ids = self.submitted_arrays
        if not ids:
            return
        answer = ""
        if sys.stdin is not None and sys.stdin.isatty():
            try:
                answer = input(f"\ncancel the {len(ids)} SLURM array job(s) this run submitted "
                               f"({', '.join(ids)})? [y/N] ")
            except EOFError:
                answer = ""
        if answer.strip().lower() in ("y", "yes"):
            subprocess.run(["scancel", *ids], check=False)
            LOG.info("cancelled %s", ", ".join(ids))
        else:
            LOG.info("jobs %s keep running: `python -m bench.status grid=%s` shows them, a later "
                     "`python -m bench.run grid=%s executor=slurm` collects them", ", ".join(ids), plan.grid,
                     plan.grid)
