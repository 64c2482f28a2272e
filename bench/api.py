"""The harness from Python (a notebook, a script): run a grid, evaluate one defence with one attack, load results.

- `run_grid(grid, results_dir=..., **options)` composes, validates, plans and executes a grid exactly as
  `python -m bench.run` does (in this process), then returns its records as a DataFrame. Bad input raises the
  same `ConfigError` the command line prints, before any work.
- `evaluate(defence, attack, images, labels, ...)` runs the runner's own per-batch evaluation on tensors you
  hold and returns a record with a grid cell's result fields (per-example draw matrices, accuracies with 95%
  Wilson intervals judged robust <= clean, pass counts, budget, randomness audit for stochastic models).
- `fit_defence(name, scenario, workdir=...)` and `evaluation_examples(scenario, n)`: a defence built and fitted
  as a training stage does it, and the test examples the scenario's cells evaluate, for `evaluate`.
- `load_results(folder)` reads every valid cell record under a grid folder or a results root into a DataFrame,
  one row per record, with a `grid` column. It only reads: invalid files are skipped with a warning.
- `load_adversarials(where, cell=...)` reads the adversarial examples a cell saved (`eval.save_adversarials`):
  points, test-split indices, labels and the per-example clean and robust draw matrices (bench.adversarials).

Import from `bench.api`: bench/__init__.py does not re-export these, because it belongs to the code fingerprint
of every stage and cell (bench.fingerprint counts parent packages), so importing the API there would make
every record depend on this file. Nothing here computes a grid's result: the runner's modules do.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    import pandas as pd

    from attacks.base import Attack
    from bench.adversarials import SavedAdversarials
    from bench.options import EvalOptions

LOG = logging.getLogger("bench.api")
COLUMNS = [
    "grid", "scenario", "defence", "defence_name", "attack", "attack_name", "target", "norm", "eps", "seed", "n",
    "draws", "decision", "stochastic", "status", "clean_acc", "clean_ci_low", "clean_ci_high", "robust_acc",
    "robust_ci_low", "robust_ci_high", "robust_acc_single", "robust_acc_majority", "robust_acc_worst",
    "attack_budget", "forward_examples", "backward_examples", "attack_seconds", "wall_seconds", "error", "key",
    "settings_key", "git_commit", "git_dirty", "results_dir", "path",
]


# --- running a grid -------------------------------------------------------------------------------------

def run_grid(grid: str | Path = "demo", **options: Any) -> pd.DataFrame:
    """Run a grid as `python -m bench.run grid=GRID key=value ...` would, in this process; its records as a frame.

    `options` are the command line's keys: run options (`results_dir`, `artifacts_dir`, `executor`,
    `n_examples`, `threads`, `dry_run`, ...) as keywords; dotted keys (`defences.at.epochs`,
    `attacks.pgd.steps`, `eval.batch_size`, `local.max_parallel`) through a dict:
    `run_grid("demo", results_dir="out", **{"attacks.pgd.steps": 5})`. Values are Python values (a list for
    `seeds`). Everything is checked before any work; a bad key or value raises `bench.config.ConfigError` with
    the command line's message. The run's summary (`ran`, `done`, `failed`, ...) is in `frame.attrs["summary"]`.
    """
    from bench.config import compose_pairs
    from bench.logs import configure_logging
    from bench.run import run
    from bench.runtime import configure_threads

    config = compose_pairs([("grid", str(grid)), *((key, _plain(value)) for key, value in options.items())])
    configure_logging(config.run_options.log_level)
    configure_threads(config.run_options.threads)
    summary = run(config)
    folder = config.results_dir()  # after the run: smoke mode moves it
    frame = load_results(folder) if folder.is_dir() else _empty_frame()  # a dry run may write nothing
    frame.attrs["summary"] = summary
    return frame


def _plain(value: Any) -> Any:
    """A value as the command line would give it: a path as its text, a tuple as a list."""
    if isinstance(value, Path):
        return str(value)
    return [_plain(item) for item in value] if isinstance(value, tuple) else value


def command_line(grid: str | Path, options: dict[str, Any]) -> list[str]:
    """The `key=value` arguments of `bench.run` that run_grid(grid, **options) amounts to (values written as
    JSON, which YAML reads as the same values: strings stay strings, None becomes null)."""
    return [f"grid={json.dumps(str(grid))}"] + [
        f"{key}={json.dumps(str(value) if isinstance(value, Path) else value)}" for key, value in options.items()]


# --- a defence and test examples of a scenario -------------------------------------------------------------

def fit_defence(name: str, scenario: str = "digits", *, workdir: str | Path, seed: int = 0,
                device: str = "auto", fit: bool = True, data_dir: str | None = None, model_dir: str | None = None,
                **settings: Any) -> nn.Module:
    """Build defence `name` for `scenario` as a grid's training stage does and fit it (unless fit=False).

    Settings are the defence class's defaults, then the scenario's `defence_defaults`, then `settings`,
    checked as a grid entry's are (ConfigError). The classifier comes from the scenario's source; training
    checkpoints go to `workdir`. Returns the defence in eval mode.
    """
    import defences
    from attacks.seeding import derive_seed, seed_everything
    from bench.config import load_scenario
    from bench.grid import _resolve_defence
    from bench.options import RunOptions
    from bench.runtime import resolve_device
    from bench.training_stage import load_split, make_classifier
    from defences.base import FitContext

    task_scenario = load_scenario(scenario)
    resolved_name, params = _resolve_defence({"name": name, **settings}, task_scenario.defence_defaults,
                                             f"defences.{name}")
    run_on = resolve_device(device)
    seed_everything(derive_seed(seed, "init", name))
    run_options = RunOptions.from_dict({"model_dir": model_dir} if model_dir else {})
    classifier, provenance = make_classifier(task_scenario, run_options)
    defence = defences.build(resolved_name, classifier=classifier, task=task_scenario.task(), **params).to(run_on)
    if fit:
        ctx = FitContext(device=run_on, seed=seed, workdir=Path(workdir), log=LOG,
                         classifier_pretrained=bool(provenance.get("pretrained")))
        defence.fit(load_split(task_scenario, "train", data_dir), ctx)
    return defence.eval()


def evaluation_examples(scenario: str = "digits", n: int = 100,
                  data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(index, images, labels): the first n of the scenario's fixed test permutation, the examples every grid
    cell of that scenario evaluates (index: positions in the test split)."""
    from bench.config import load_scenario
    from bench.evaluate import evaluation_subset

    return evaluation_subset(load_scenario(scenario), n, data_dir)


# --- evaluating one defence with one attack ---------------------------------------------------------------

def evaluate(defence: nn.Module, attack: Attack | str, images: torch.Tensor, labels: torch.Tensor, *,
             seed: int = 0, settings_key: str = "", index: Iterable[int] | None = None,
             device: str | torch.device | None = None, batch_size: int | None = None, draws: int | None = None,
             stochastic_draws: int | None = None, decision: str | None = None,
             **attack_settings: Any) -> dict[str, Any]:
    """Attack `defence` on (images, labels) and return a record with a grid cell's result fields.

    `defence`: a fitted `defences.Defence` or any `nn.Module` from [0, 1] images to logits (one with a true
    `stochastic` attribute is judged from `stochastic_draws` forward passes per example); it is put in eval
    mode, on `device` (default: where its parameters are). `attack`: a built `attacks.Attack`, or a registry
    name built with `attack_settings` (`evaluate(model, "pgd", x, y, eps=0.15, steps=10)`). `batch_size`,
    `draws`, `stochastic_draws` and `decision` are the grid's `eval.` settings, with the same defaults.
    Batch b is seeded with derive_seed(seed, settings_key, b), as a grid cell seeds its batches with its
    seed and settings key: pass a record's `seed` and `settings_key` (and its `per_example.index`) to
    reproduce it.

    The record holds status, stochastic, draws, decision, clean/robust accuracies (`*_acc`, `*_ci`, per rule
    `*_acc_single|majority|worst`, per example `*_correct`, robust judged <= clean), `per_example` (index,
    label, clean_draws, robust_draws, perturbation), counts, attack name/settings/budget/eps/norm/target,
    `attack_report` and `randomness_audit` where the runner has them, timings and provenance. It is not a
    cell record (bench.records.CellRecord): it has no cell identity (key, grid, scenario, defence entry).
    """
    from bench import records
    from bench.evaluate import attack_batches, result_fields

    attack = _built_attack(attack, attack_settings)
    settings = eval_settings(batch_size=batch_size, draws=draws, stochastic_draws=stochastic_draws,
                             decision=decision)
    images, labels, index_list = _checked_examples(images, labels, index)
    run_on = _device_of(defence, device)
    defence = defence.to(run_on).eval()
    stochastic = bool(getattr(defence, "stochastic", False))
    n_draws = settings.draws_for(stochastic)
    started = time.time()
    label = f"evaluate {type(defence).__name__} / {attack.registry_name or type(attack).__name__}"
    batches = attack_batches(defence, attack, images, labels, n_draws, run_on, batch_size=settings.batch_size,
                             seed=seed, settings_key=settings_key, label=label)
    fields = {**_provenance(attack, seed, settings, settings_key, started), "defence_name": type(defence).__name__,
              "defence_params": defence.settings() if callable(getattr(defence, "settings", None)) else {}}
    record = records.done_record(
        fields, result_fields(batches, index_list, labels, stochastic, n_draws, settings.decision))
    from bench.runtime import hardware_summary

    record.update(wall_seconds=time.time() - started, hardware=hardware_summary(run_on), finished_at=time.time())
    return record


def eval_settings(**given: Any) -> EvalOptions:
    """The grid's `eval.` settings (bench.options.EvalOptions): its defaults with the given values that are not
    None, checked as the command line checks them (ConfigError naming the key, the value and what is valid)."""
    from bench.conffiles import ConfigError
    from bench.options import EvalOptions
    from bench.validation import SettingError

    try:
        return EvalOptions.from_dict({key: value for key, value in given.items() if value is not None})
    except SettingError as error:
        raise ConfigError(str(error)) from error


def _built_attack(attack: Attack | str, settings: dict[str, Any]) -> Attack:
    import attacks

    if isinstance(attack, str):
        return attacks.build(attack, **settings)
    if settings:
        raise TypeError(f"attack settings {sorted(settings)} are given with an attack that is already built; "
                        f"pass the attack's name instead, or build it with them")
    if not isinstance(attack, attacks.Attack):
        raise TypeError(f"attack must be an attacks.Attack or a registry name, got {type(attack).__name__}")
    return attack


def _checked_examples(images: torch.Tensor, labels: torch.Tensor,
                      index: Iterable[int] | None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    images, labels = torch.as_tensor(images).float(), torch.as_tensor(labels).long()
    if images.dim() < 2 or images.shape[0] != labels.shape[0] or labels.dim() != 1:
        raise ValueError(f"images (N, C, H, W) and labels (N,) must cover the same examples; got shapes "
                         f"{tuple(images.shape)} and {tuple(labels.shape)}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(f"images must lie in [0, 1]; got values in [{images.min():.4g}, {images.max():.4g}]")
    index_list = list(range(len(labels))) if index is None else [int(i) for i in index]
    if len(index_list) != len(labels):
        raise ValueError(f"index has {len(index_list)} entries for {len(labels)} examples")
    return images, labels, index_list


def _device_of(model: nn.Module, device: str | torch.device | None) -> torch.device:
    from bench.runtime import resolve_device

    if device is not None:
        return resolve_device(str(device))
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _provenance(attack: Attack, seed: int, settings: EvalOptions, settings_key: str,
                started: float) -> dict[str, Any]:
    from bench.records import SCHEMA_VERSION
    from bench.runtime import git_state, package_versions

    commit, dirty = git_state()
    attack_settings = attack.settings()
    return {"schema_version": SCHEMA_VERSION, "settings_key": settings_key or None,
            "attack_name": attack_settings["name"], "attack_settings": attack_settings,
            "attack_budget": attack.budget(), "target": attack_settings.get("target"),
            "eps": attack_settings.get("eps"), "norm": attack_settings.get("norm"), "seed": int(seed),
            "eval_settings": settings.to_dict(), "git_commit": commit, "git_dirty": dirty,
            "packages": package_versions(),
            "host": socket.gethostname(), "started_at": started}


# --- loading results ---------------------------------------------------------------------------------------

def load_results(folder: str | Path) -> pd.DataFrame:
    """Every valid cell record under `folder` as a DataFrame, one row per record (columns: COLUMNS).

    `folder` is one grid's results folder (results/demo) or a root holding several (results/, searched at
    any depth for `cells/` folders). Only the records in cells/ are read (not cells/history/ or
    cells/quarantine/). Each file is validated against the record schema (bench.records.validate_record); a
    file that is not a valid record is skipped with a warning and nothing is moved, written or unpickled.
    """
    import pandas as pd

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist (or is not a folder)")
    rows = [_row(record, path) for cells in _cells_folders(root) for path, record in _valid_records(cells)]
    return pd.DataFrame(rows, columns=COLUMNS)


def load_adversarials(where: str | Path, cell: str | None = None, seed: int = 0) -> SavedAdversarials:
    """The adversarial examples a cell saved: `where` is the .safetensors file, the cell's record (the file
    beside it is read), or a grid's results folder with `cell="<scenario>/<defence>/<attack>"` (and `seed`).

    Returns a bench.adversarials.SavedAdversarials (`points`, `index`, `labels`, `clean_draws`, `robust_draws`,
    `metadata`). Only tensors and strings are read (safetensors): nothing is unpickled. Raises ValueError
    when there is no such file, when a folder holds several for that cell (older keys: pass the file), or when
    the file is not one the harness wrote."""
    from bench import adversarials, layout

    path = Path(where)
    if path.suffix == ".json":
        path = path.parent.parent / layout.ADVERSARIALS / (path.name.removesuffix(".json") + ".safetensors")
    elif path.is_dir():
        if cell is None or len(cell.split("/")) != 3:
            raise ValueError(f"{path} is a folder: name the cell as cell='<scenario>/<defence>/<attack>'")
        pattern = ".".join(cell.split("/")) + f".s{seed}.*.safetensors"
        found = sorted((path / layout.ADVERSARIALS).glob(pattern))
        if len(found) != 1:
            raise ValueError(f"{path}: {len(found)} saved files for cell {cell} seed {seed}"
                             + (f" ({', '.join(p.name for p in found)}): pass one of them" if found else ""))
        path = found[0]
    return adversarials.load(path)


def _empty_frame() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame([], columns=COLUMNS)


def _cells_folders(root: Path) -> list[Path]:
    """The cells/ folder of a grid folder, or those of every grid under a results root."""
    from bench import layout

    if layout.cells_dir(root).is_dir():
        return [layout.cells_dir(root)]
    return sorted(path for path in root.rglob(layout.CELLS)
                  if path.is_dir() and layout.CELLS not in path.relative_to(root).parts[:-1])


def _valid_records(cells: Path) -> list[tuple[Path, dict[str, Any]]]:
    from bench.records import read_json, validate_record

    found = []
    for path in sorted(cells.glob("*.json")):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            record = read_json(path)
        except (OSError, ValueError, UnicodeDecodeError) as error:
            warnings.warn(f"skipped {path}: {error}", stacklevel=3)
            continue
        problems = validate_record(record)
        if problems:
            warnings.warn(f"skipped {path}: not a valid cell record ({'; '.join(problems[:4])})", stacklevel=3)
            continue
        found.append((path, record))
    return found


def _row(record: dict[str, Any], path: Path) -> dict[str, Any]:
    from bench.records import commit_and_dirty

    done = record["status"] == "done"
    clean_ci = record.get("clean_ci") if done else None
    robust_ci = record.get("robust_ci") if done else None
    counts = record.get("counts") or {}
    commit, dirty = commit_and_dirty(record)
    error_lines = [line.strip() for line in str(record.get("error") or "").splitlines() if line.strip()]
    return {
        **{name: record.get(name) for name in ("grid", "scenario", "defence", "attack", "seed", "status", "key",
                                               "settings_key", "attack_budget")},
        "defence_name": record.get("defence_name", record["defence"]),
        "attack_name": record.get("attack_name", record["attack"]),
        **{name: record.get(name, (record.get("attack_settings") or {}).get(name))
           for name in ("target", "norm", "eps")},
        "n": record.get("n_examples"), "draws": record.get("draws"), "decision": record.get("decision"),
        "stochastic": record.get("stochastic"),
        **{name: record.get(name) if done else None
           for name in ("clean_acc", "robust_acc", "robust_acc_single", "robust_acc_majority", "robust_acc_worst",
                        "attack_seconds")},
        "clean_ci_low": clean_ci[0] if clean_ci else None, "clean_ci_high": clean_ci[1] if clean_ci else None,
        "robust_ci_low": robust_ci[0] if robust_ci else None, "robust_ci_high": robust_ci[1] if robust_ci else None,
        "forward_examples": counts.get("forward_examples"), "backward_examples": counts.get("backward_examples"),
        "wall_seconds": record.get("wall_seconds"), "error": error_lines[-1] if error_lines else None,
        "git_commit": commit, "git_dirty": dirty, "results_dir": str(path.parent.parent), "path": str(path),
    }
