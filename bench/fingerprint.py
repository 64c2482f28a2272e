"""What computed a result: digests of the code and of the input files behind a training stage or a cell.

Stage and cell keys include these fingerprints, so a result is reused only when the code and the files that
produced it are unchanged. The boundary:

- **Code** is the source of every project module in the import closure (imports anywhere in a module, lazy
  ones included) of the modules that produce the result, for a stage: the defence class's module (a user
  module included), `defences.base` (and through it the seeding, `attacks.seeding`, and the registry's
  `coerce_params`, which builds the settings), the classifier zoo, the data loaders, scenarios, `bench.runtime`
  and the stage runner `bench.training_stage` (and through it `bench.options`, whose `EvalOptions.draws_for`
  picks each cell's number of draws); for a cell: the attack class's module, `attacks` core (base,
  protocol, losses) and the evaluation protocol in `bench.evaluate` (plus, through the stage key, everything
  of its stage). Parent packages' `__init__` files count.
- **Attacks built by name** are followed too: an attack (or a defence) that builds others through the
  registry (`attacks.build(name)`, e.g. `adaptive`'s members) lists their names in its `registry_members`;
  each name is resolved as `attacks.build` resolves it (a built-in, a `bench.attacks` entry point or a
  `package.module:Class`) and the module of the class it gives joins the roots, with the closure of that
  module and the class's own `registry_members`, recursively.
- Modules that only plan, run, lock, record, report, log progress or diagnose results (NOT_RESULT_CODE) are
  outside the boundary: changing the report never invalidates a result. tests/test_fingerprint_coverage.py
  runs every registered attack and defence under an execution tracer and checks that every project module
  that runs is inside the fingerprint or is one of those, excluded there with the reason it cannot change a
  number.
- **Inputs** are the content hashes (SHA-256, cached by path, size and mtime) of a `file:` classifier's weights,
  a RobustBench checkpoint in model_dir, and the dataset's files under the data root: the folders its
  description names (`bench.data.base.DatasetInfo.folders`, a required field, so no dataset is left out), those
  of more than MAX_HASHED_FILES files (the image-folder datasets) by a manifest of relative paths and sizes.
  scikit-learn's bundled digits are covered by the package versions in each record instead.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

from attacks.registry import UnknownNameError
from bench.hashing import file_digest

PROJECT_PACKAGES = ("attacks", "defences", "bench")
NOT_RESULT_CODE = (
    "bench.reporting", "bench.report", "bench.status", "bench.run", "bench.diagnose", "bench.executors",
    "bench.jobs", "attacks.progress", "bench.records", "defences.atomic", "bench.config", "bench.grid",
    "bench.benchmarks", "bench.validation", "bench.hashing", "bench.fingerprint", "bench.locks",
    "attacks.diagnostics", "bench.layout", "bench.logs", "bench.planfile",
    "bench.conffiles", "bench.plan",
)
STAGE_ROOTS = ("defences.base", "bench.zoo", "bench.data", "bench.scenarios", "bench.runtime", "bench.training_stage")
CELL_ROOTS = ("attacks.base", "attacks.protocol", "attacks.losses", "bench.evaluate")
MAX_HASHED_FILES = 64


def _excluded(module: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in NOT_RESULT_CODE)


@functools.cache
def _module_file(module: str) -> str | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError, AttributeError):
        return None
    origin = getattr(spec, "origin", None) if spec else None
    return origin if origin and origin.endswith(".py") else None


def _read_source(path: str) -> bytes:
    return Path(path).read_bytes()


def _imports(module: str, path: str, source: bytes) -> set[str]:
    """Modules a module's source imports (absolute names; `from a import b` gives a and a.b)."""
    found: set[str] = set()
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def code_closure(roots: tuple[str, ...]) -> dict[str, str]:
    """`{relative file: sha256}` for the project modules the roots import, transitively."""
    return dict(_code_closure(tuple(sorted(set(roots)))))


@functools.lru_cache(maxsize=64)
def _code_closure(roots: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    tops = set(PROJECT_PACKAGES) | {root.split(".")[0] for root in roots}
    todo, seen, digests = list(roots), set(), {}
    while todo:
        module = todo.pop()
        if module in seen or _excluded(module) or module.split(".")[0] not in tops:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is None:
            continue
        source = _read_source(path)
        digests[_display_path(path)] = hashlib.sha256(source).hexdigest()[:16]
        todo.extend(_imports(module, path, source))
        todo.extend(_parents(module))
    return tuple(sorted(digests.items()))


def _display_path(path: str) -> str:
    """A module's path relative to the folder of its top-level package (attacks/gradient.py)."""
    parts = Path(path).parts
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] in PROJECT_PACKAGES:
            return "/".join(parts[index:])
    return Path(path).name


def stage_code(defence_class: type) -> dict[str, str]:
    """The code fingerprint of a training stage of `defence_class` (its base stage's is added by the planner)."""
    return code_closure((*component_modules(defence_class), *STAGE_ROOTS))


def cell_code(attack_class: type) -> dict[str, str]:
    """The code fingerprint of a cell of `attack_class` (its stage's fingerprint is added by the planner)."""
    return code_closure((*component_modules(attack_class), *CELL_ROOTS))


def component_modules(component: type) -> tuple[str, ...]:
    """The module of `component` and those of the attacks it builds by name (`registry_members`), resolved as
    `attacks.build` resolves them (built-ins, `bench.attacks` entry points, `package.module:Class`), and so on
    for their own members."""
    import attacks

    modules, todo, seen = set(), [component], set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        modules.add(cls.__module__)
        names = getattr(cls, "registry_members", ())
        if isinstance(names, str) or not all(isinstance(name, str) for name in names):
            raise TypeError(f"{_class_path(cls)}.registry_members must be a tuple of attack names, got {names!r}")
        for name in names:
            try:
                todo.append(attacks.REGISTRY.get_class(name))
            except (ImportError, TypeError, ValueError) as error:
                raise UnknownNameError(f"{_class_path(cls)} builds attack {name!r} by name (registry_members), "
                                       f"which does not resolve: {error}") from error
    return tuple(sorted(modules))


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


# --- input files --------------------------------------------------------------------------------------

def stage_inputs(scenario: Any, options: dict[str, Any]) -> dict[str, str]:
    """`{file or folder: digest}` of the files a stage reads: classifier weights and the dataset."""
    inputs: dict[str, str] = {}
    kind, _, target = scenario.classifier.partition(":")
    if kind == "file":
        inputs[f"classifier:{target}"] = _digest_or_absent(Path(target).expanduser())
    elif kind == "robustbench":
        model_dir = Path(options.get("model_dir") or "models")
        checkpoint = model_dir / (scenario.robustbench_dataset or "cifar10") / scenario.norm / f"{target}.pt"
        inputs[f"robustbench:{target}"] = _digest_or_absent(checkpoint)
    inputs.update(dataset_inputs(scenario.dataset, options.get("data_dir")))
    return inputs


def _digest_or_absent(path: Path) -> str:
    return file_digest(path) if path.is_file() else "absent"


def dataset_inputs(dataset: str, data_dir: str | None) -> dict[str, str]:
    """`{data:<folder>: digest}` of the folders the dataset's description names (`DatasetInfo.folders`)."""
    from bench.data.catalog import dataset_info, default_root

    root = Path(data_dir).expanduser() if data_dir else default_root()
    inputs = {}
    for folder_name in dataset_info(dataset).folders:
        folder = root / folder_name
        if folder.is_dir():
            inputs[f"data:{folder_name}"] = folder_digest(folder)
    return inputs


@functools.lru_cache(maxsize=32)
def _folder_digest(folder: str, stamp: tuple[int, int]) -> str:
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("."))
    digest = hashlib.sha256()
    if len(files) <= MAX_HASHED_FILES:
        for path in files:
            digest.update(f"{path.relative_to(folder)}:{file_digest(path)}\n".encode())
    else:
        for path in files:
            digest.update(f"{path.relative_to(folder)}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def folder_digest(folder: Path) -> str:
    stat = os.stat(folder)
    return _folder_digest(str(folder.resolve()), (stat.st_mtime_ns, stat.st_ino))


def changes(old: dict[str, str] | None, new: dict[str, str]) -> list[str]:
    """Names whose digests differ between two fingerprints (added and removed ones included)."""
    old = old or {}
    return sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))
