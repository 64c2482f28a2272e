"""The code fingerprint covers what runs: every registered attack and defence is run on a toy under an execution
tracer, and every project module whose code ran must be inside that component's fingerprint (`cell_code` for an
attack, `stage_code` for a defence), or be named in EXCLUDED with the reason it cannot change a number.

Also: attacks built by name (`registry_members`: built-ins, entry points, `package.module:Class` names, members of
members) are followed, so that editing a member of `adaptive`, `aa` or `randaa` changes those cells' keys and
marks a finished cell stale; and NOT_RESULT_CODE names only modules that exist.

Two modules that run everywhere are inside the fingerprints rather than excluded, since a number depends on
them: attacks/registry.py (it resolves which class a name runs, and `coerce_params` builds its settings) and
bench/options.py (`EvalOptions.draws_for` picks the number of draws that judge each example).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch._dynamo  # noqa: F401 (torch.optim imports it on first use: here, where it is not traced)
from test_contracts import DEFENCE_TASK, small_classifier, small_settings
from test_integrity import keys, valid_record

import attacks
import defences
from bench import smoke
from bench.benchmarks.toys import LinearClassifier, QuantisingDefence, toy_task
from bench.conffiles import ConfigError
from bench.config import compose
from bench.data.base import ImageSplit
from bench.evaluate import run_eval_cell
from bench.fingerprint import CELL_ROOTS, NOT_RESULT_CODE, STAGE_ROOTS, cell_code, code_closure, stage_code
from bench.grid import expand
from bench.layout import record_path
from bench.run import main as run_main
from bench.training_stage import run_training_stage
from defences.atomic import write_json_atomic
from defences.base import FitContext

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(attacks.__file__).resolve().parent.parent
PROJECT = ("attacks", "defences", "bench")
# Project modules that run inside a component but are outside every fingerprint, and why no number depends on them.
EXCLUDED = {
    "attacks/progress.py": "logs progress lines (counts, rate, ETA); nothing an attack or a defence computes reads "
                           "them back",
    "defences/atomic.py": "writes bytes already computed to a temporary file and renames it into place; a "
                          "checkpoint is read back by safetensors and json, not through it",
}
# The test model: it lives in bench/benchmarks (outside every fingerprint: no run uses it); in a run the model
# under attack is a registered defence, whose code is in the stage fingerprint each cell key includes.
MODEL_FILE = "bench/benchmarks/toys.py"
CLASSES, SIDE, POINTS = 4, 8, 12  # DLR needs 3 classes, APGD-T 4, pyautoattack's L2 Square 5x5 images


@contextlib.contextmanager
def executed_project_files() -> Iterator[set[str]]:
    """Collects the project files (as the fingerprints name them: attacks/apgd.py) whose code runs in the block,
    in this thread and in threads started meanwhile."""
    codes: set = set()

    def profile(frame, event, arg):
        if event == "call":
            codes.add(frame.f_code)

    found: set[str] = set()
    previous = sys.getprofile()
    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        yield found
    finally:
        sys.setprofile(previous)
        threading.setprofile(None)
        found.update(filter(None, (_project_file(code.co_filename) for code in codes)))


def _project_file(filename: str) -> str | None:
    try:
        relative = Path(filename).resolve().relative_to(ROOT)
    except ValueError:
        return None
    return relative.as_posix() if relative.parts[0] in PROJECT and relative.suffix == ".py" else None


# --- attacks ---------------------------------------------------------------------------------------------------

def purifying_problem() -> tuple[QuantisingDefence, torch.Tensor, torch.Tensor]:
    """A linear classifier behind a quantising purifier (a defence with a purifier, for BPDA and adaptive's
    bpda_eot member; its zero gradient leaves points for every later member), and points it classifies
    correctly."""
    generator = torch.Generator().manual_seed(0)
    classifier = LinearClassifier(torch.randn(CLASSES, SIDE * SIDE, generator=generator) / 8, torch.zeros(CLASSES))
    model = QuantisingDefence(classifier.eval(), toy_task(SIDE, num_classes=CLASSES),
                              QuantisingDefence.Params(levels=16)).eval()
    x = 0.2 + 0.6 * torch.rand(POINTS, 1, SIDE, SIDE, generator=generator)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def run_attack(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               **settings) -> tuple[attacks.Attack, set]:
    """Build attack `name` at the smoke budget (as bench.evaluate builds a cell's; `settings` on top) and run it,
    traced."""
    budget = {**smoke.attack_budget({"name": name}), **settings}
    torch.manual_seed(0)
    with executed_project_files() as ran:
        attack = attacks.build(name, eps=0.1, **budget)
        attack(model, x, y)
    return attack, ran


def unexplained_attack_files(attack: attacks.Attack, model: torch.nn.Module, ran: set[str]) -> set[str]:
    """Files that ran outside the cell's key: an attack module outside the attack's fingerprint (it must not
    rely on the defence's), or any other outside the attack's and the model's fingerprints."""
    code = set(cell_code(type(attack)))
    model_side = set(stage_code(type(model))) | {MODEL_FILE}
    return {path for path in ran - code - set(EXCLUDED) if path.startswith("attacks/") or path not in model_side}


@pytest.mark.parametrize("name", attacks.names())
def test_every_module_an_attack_runs_is_in_its_cell_fingerprint(name):
    model, x, y = purifying_problem()
    attack, ran = run_attack(name, model, x, y)
    assert _project_file(sys.modules[type(attack).__module__].__file__) in ran
    assert not sorted(unexplained_attack_files(attack, model, ran)), f"{name} ran code outside its cell key"


def test_adaptive_runs_its_members_and_the_import_closure_alone_misses_them():
    """The coverage test can fail: what adaptive runs by name is outside its module's import closure."""
    model, x, y = purifying_problem()
    # every member module: the cascade (apgd, autoattack), the classifier-only transfer (gradient), PGD+EOT (eot)
    # and BPDA+EOT (bpda); the deterministic defaults leave out the purifier members
    # 100 PGD steps (the smoke budget's 2 steps of 2.5 eps / 2 break every point of the linear classifier by transfer,
    # and nothing would be left for BPDA+EOT and PGD+EOT)
    attack, ran = run_attack("adaptive", model, x, y, members=["aa", "pgd", "bpda_eot", "pgd_eot"], pgd_steps=100)
    members = {"attacks/apgd.py", "attacks/autoattack.py", "attacks/eot.py", "attacks/bpda.py", "attacks/gradient.py"}
    assert members <= ran and members <= set(cell_code(type(attack)))
    assert attack.last_report["members"] == list(attack.members) and not attack.last_report["skipped"]
    imports_only = set(code_closure((type(attack).__module__, *CELL_ROOTS)))
    # adaptive's own modules import the cascade's (autoattack, apgd, eot, gradient) for its settings; BPDA+EOT is
    # reached only by name
    assert "attacks/bpda.py" not in imports_only


# --- defences --------------------------------------------------------------------------------------------------

def fit_save_load(name: str, settings: dict, folder: Path) -> None:
    """What a training stage and a cell do with a defence: build, fit, save; build again, load, classify."""
    defence = defences.build(name, classifier=small_classifier(0), task=DEFENCE_TASK, **settings)
    generator = torch.Generator().manual_seed(0)
    train = ImageSplit(images=torch.rand(8, 1, 16, 16, generator=generator), labels=torch.arange(8) % 3)
    ctx = FitContext(device=torch.device("cpu"), seed=0, workdir=folder, log=logging.getLogger("coverage"),
                     classifier_pretrained=True)
    defence.save(folder, {"fit": defence.fit(train, ctx)})
    loaded = defences.build(name, classifier=small_classifier(1), task=DEFENCE_TASK, **settings)
    loaded.load(folder)
    with torch.no_grad():
        loaded.eval()(train.images[:4])


@pytest.mark.parametrize("name", defences.names())
def test_every_module_a_defence_runs_is_in_its_stage_fingerprint(name, tmp_path):
    settings = small_settings(name)
    with executed_project_files() as ran:
        fit_save_load(name, settings, tmp_path)
    cls = defences.REGISTRY.get_class(name)
    assert _project_file(sys.modules[cls.__module__].__file__) in ran
    assert not sorted(ran - set(stage_code(cls)) - set(EXCLUDED)), f"{name} ran code outside its stage key"


def test_no_defence_builds_attacks_by_name_yet_a_declared_one_is_followed():
    """The built-in defences import the attacks they train with; a defence declaring a member gets its module."""
    assert all(not defences.REGISTRY.get_class(name).registry_members for name in defences.names())
    standard = defences.REGISTRY.get_class("standard")
    declaring = type("TrainsWithEOT", (standard,), {"registry_members": ("pgd_eot",),
                                                    "__module__": standard.__module__})
    assert "attacks/eot.py" not in stage_code(standard) and "attacks/eot.py" in stage_code(declaring)


# --- the harness: a training stage and a cell as a job runs them ----------------------------------------------

# Harness modules that run in a stage or a cell outside both fingerprints, and why no number depends on them
# (the job wrapper, bench.jobs, reads the plan and sets logging and the thread count before these run).
HARNESS_EXCLUDED = {
    **EXCLUDED,
    "bench/grid.py": "the planner: every setting it resolves (scenario, defence, attack, eval options, seed) is "
                     "in the keys it computes",
    "bench/plan.py": "plan data (stages, cells, plan.json's format): the planner puts every setting in the keys",
    "bench/layout.py": "where artifacts and records live (paths)",
    "bench/locks.py": "work locks: which process runs a stage or a cell, not what it computes",
    "bench/logs.py": "the name of the job's log file",
    "bench/records.py": "puts the fields bench.evaluate computed into a record, writes and reads it",
}


def test_a_stage_and_a_cell_run_by_the_harness_stay_inside_their_keys(tiny_grid):
    args = tiny_grid(user_grid("fgsm")) + ["smoke=true"]
    plan = expand(compose(args))
    (stage,), (cell,) = plan.stages.values(), plan.cells
    with executed_project_files() as stage_ran:
        assert run_training_stage(plan, stage.key) == "done"
    with executed_project_files() as cell_ran:
        assert run_eval_cell(plan, cell) == "done"
    assert {"bench/training_stage.py", "bench/smoke.py", "defences/standard.py"} <= stage_ran
    assert {"bench/evaluate.py", "attacks/gradient.py", "bench/options.py"} <= cell_ran
    assert not sorted(stage_ran - set(stage.fingerprint["stage_code"]) - set(HARNESS_EXCLUDED)), "stage"
    cell_key_code = set(cell.fingerprint["code"]) | set(cell.fingerprint["stage_code"])
    assert not sorted(cell_ran - cell_key_code - set(HARNESS_EXCLUDED)), "cell"


# --- the boundary's names --------------------------------------------------------------------------------------

@pytest.mark.parametrize("module", NOT_RESULT_CODE + STAGE_ROOTS + CELL_ROOTS)
def test_every_name_of_the_boundary_is_an_existing_module(module):
    assert importlib.util.find_spec(module) is not None, f"{module} names no module"


def test_every_declared_member_of_every_registered_attack_resolves():
    for name in attacks.names():
        for member in attacks.REGISTRY.get_class(name).registry_members:
            assert member in attacks.names(), f"{name} declares {member!r}, which is not a registered attack"


# --- members: a member's edit changes the key of every cell that runs it ---------------------------------------

ENSEMBLES = ("adaptive", "aa", "randaa")
# (file edited, the attacks whose cells it changes): each edit on top of the previous ones
MEMBER_EDITS = (
    ("attacks/bpda.py", {"adaptive"}),
    ("attacks/apgd.py", {"adaptive", "aa", "randaa"}),
    ("attacks/eot.py", {"adaptive", "aa", "randaa"}),
    ("attacks/autoattack.py", {"adaptive", "aa", "randaa"}),
    ("attacks/gradient.py", {"adaptive", "aa", "randaa", "pgd"}),
    ("attacks/adaptive.py", {"adaptive"}),
)


def ensembles_grid(grid: dict) -> None:
    grid["defences"] = {"standard": {"name": "standard", "epochs": 1}}
    grid["attacks"] = {name: {"name": name} for name in ENSEMBLES} | {"pgd": {"name": "pgd", "steps": 2}}
    grid["blocks"] = [{"name": "b", "scenarios": ["digits"], "defences": ["standard"],
                       "attacks": [*ENSEMBLES, "pgd"]}]


def changed_cells(before: dict[str, str], after: dict[str, str]) -> set[str]:
    changed = {name for name in before if before[name] != after[name]}
    assert "stage standard" not in changed  # no member is in the standard defence's stage code
    return {name.rpartition("/")[2] for name in changed}


def test_editing_any_member_changes_the_keys_of_exactly_the_cells_that_run_it(tiny_grid, edited_source):
    before = keys(expand(compose(tiny_grid(ensembles_grid))))
    for path, expected in MEMBER_EDITS:
        edited_source(path)
        after = keys(expand(compose(tiny_grid(ensembles_grid))))
        assert changed_cells(before, after) == expected, path
        before = after


def dry_run_line(args: list[str], capsys, cell_label: str) -> tuple[str, str]:
    assert run_main(args + ["dry_run=true"]) == 0
    lines = capsys.readouterr().out.splitlines()
    index = next(i for i, text in enumerate(lines) if cell_label in text)
    return lines[index], lines[index + 1] if index + 1 < len(lines) else ""


def test_a_finished_adaptive_cell_is_stale_once_a_member_changes(tiny_grid, edited_source, capsys):
    args = tiny_grid(ensembles_grid)
    plan = expand(compose(args))
    cell = next(c for c in plan.cells if c.attack_key == "adaptive")
    write_json_atomic(record_path(plan, cell), valid_record(cell))
    line, _ = dry_run_line(args, capsys, "digits/standard/adaptive")
    assert "[done]" in line
    edited_source("attacks/apgd.py")
    line, reason = dry_run_line(args, capsys, "digits/standard/adaptive")
    assert "[stale]" in line and "attacks/apgd.py" in reason


# --- user attacks that build others by name --------------------------------------------------------------------

USER_PACKAGE = "fingerprint_user_attacks"
USER_MODULE = """
from dataclasses import dataclass

import attacks
from attacks.base import Attack


@dataclass
class APGDByName(Attack):
    registry_members = ("apgd_ce",)
    steps: int = 2

    def perturb(self, model, x, y):
        return attacks.build("apgd_ce", eps=self.eps, norm=self.norm, apgd_steps=self.steps, seed=0)(model, x, y)


@dataclass
class AdaptiveByName(Attack):
    registry_members = ("adaptive",)


@dataclass
class EntryPointByName(Attack):
    registry_members = ("user_entry_attack",)


@dataclass
class Misdeclared(Attack):
    registry_members = ("no_such_attack",)
"""


@pytest.fixture(scope="module")
def user_attacks(tmp_path_factory) -> Iterator[str]:
    """A user package with attacks that build others by name; yields its module's name."""
    folder = tmp_path_factory.mktemp("user")
    (folder / USER_PACKAGE).mkdir()
    (folder / USER_PACKAGE / "__init__.py").write_text("")
    (folder / USER_PACKAGE / "by_name.py").write_text(textwrap.dedent(USER_MODULE))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        yield f"{USER_PACKAGE}.by_name"
    for name in [name for name in sys.modules if name.startswith(USER_PACKAGE)]:
        del sys.modules[name]


def test_a_user_attack_given_as_a_path_runs_only_code_inside_its_fingerprint(user_attacks):
    model, x, y = purifying_problem()
    attack, ran = run_attack(f"{user_attacks}:APGDByName", model, x, y)
    code = cell_code(type(attack))
    assert "by_name.py" in code and {"attacks/apgd.py", "attacks/autoattack.py"} <= ran & set(code)
    assert not sorted(unexplained_attack_files(attack, model, ran))


def test_members_of_members_and_entry_points_are_followed(user_attacks, monkeypatch):
    adaptive = attacks.REGISTRY.get_class(f"{user_attacks}:AdaptiveByName")
    assert {"attacks/adaptive.py", "attacks/bpda.py", "attacks/apgd.py"} <= set(cell_code(adaptive))
    by_entry_point = attacks.REGISTRY.get_class(f"{user_attacks}:EntryPointByName")
    with pytest.raises(ValueError, match="'user_entry_attack' by name .* does not resolve: unknown attack"):
        cell_code(by_entry_point)
    original = importlib.metadata.entry_points
    point = importlib.metadata.EntryPoint("user_entry_attack", f"{user_attacks}:AdaptiveByName", "bench.attacks")
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [point] if kw.get("group") == "bench.attacks" else original(**kw))
    assert {"attacks/adaptive.py", "attacks/bpda.py", "by_name.py"} <= set(cell_code(by_entry_point))


def user_grid(attack: str):
    def edit(grid: dict) -> None:
        grid["defences"] = {"standard": {"name": "standard", "epochs": 1}}
        grid["attacks"] = {"mine": {"name": attack}}
        grid["blocks"] = [{"name": "b", "scenarios": ["digits"], "defences": ["standard"], "attacks": ["mine"]}]
    return edit


def test_a_member_edit_changes_a_user_attacks_key(user_attacks, tiny_grid, edited_source):
    args = tiny_grid(user_grid(f"{user_attacks}:APGDByName"))
    before = keys(expand(compose(args)))
    edited_source("attacks/apgd.py")
    after = keys(expand(compose(args)))
    assert changed_cells(before, after) == {"mine"}
    edited_source("attacks/bpda.py")  # not a member of this attack
    assert keys(expand(compose(args))) == after


def test_a_declared_member_that_does_not_resolve_is_a_grid_error(user_attacks, tiny_grid):
    with pytest.raises(ConfigError, match=r"attacks\.mine: .*Misdeclared builds attack 'no_such_attack' by name"):
        expand(compose(tiny_grid(user_grid(f"{user_attacks}:Misdeclared"))))
