"""A new defence and a new attack in one module each, from a package outside the harness, with no central edit:
smoke mode scales them, the GPU-hour estimate prices them, the report's decomposition treats the purifier as one
and the keys include their modules, all from what the two classes declare.

The package lives in a temporary folder on sys.path; the defence is named `package.module:Class` in the grid, the
attack both that way and through a `bench.attacks` entry point. Also: the passes per image the built-in attacks
declare for the estimate (`Attack.passes_per_image`) are the passes they make, counted.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import textwrap

import pytest
import torch

import attacks
from bench import smoke
from bench.benchmarks.toys import LinearClassifier, QuantisingDefence, toy_task
from bench.config import compose
from bench.executors.calibration import estimate_eval_hours
from bench.grid import expand
from bench.reporting import decomposition, headline
from bench.reporting.collect import collect
from bench.run import main, prepare, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PACKAGE = "toy_components"
DEFENCE_MODULE = '''
"""A toy purifier: the classifier behind a quantiser; `rounds` stands for a budget, `levels` for a size."""
from dataclasses import dataclass

import torch

from attacks.base import Budget
from defences.base import Defence


@dataclass
class ToyParams:
    levels: int = 16
    rounds: int = 500
    epochs: int = 30


class ToyPurifier(Defence):
    Params = ToyParams
    has_purifier = True
    cost_kind = "atop"
    smoke_budget = {"epochs": 1, "rounds": Budget(2)}

    def purify(self, x):
        top = self.params.levels - 1
        return torch.round(x * top) / top

    def fit(self, train, ctx):
        return {"epochs": self.params.epochs, "rounds": self.params.rounds}
'''
ATTACK_MODULE = '''
"""A toy BPDA attack: `iterations` gradient-sign steps through the purifier's identity-gradient approximation."""
from dataclasses import dataclass

import torch

from attacks.base import Attack, Budget, project
from attacks.bpda import IdentityGradientPurifier


@dataclass
class ToyBPDA(Attack):
    smoke_budget = {"iterations": Budget(1)}
    through_bpda = True

    iterations: int = 1000

    def surface(self, model):
        return IdentityGradientPurifier(model)

    def passes_per_image(self):
        return float(self.iterations)

    def perturb(self, model, x, y):
        x_adv = x.clone()
        for _ in range(self.iterations):
            x_adv.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = project(x_adv.detach() + self.eps / 4 * grad.sign(), x, self.eps, self.norm)
        return x_adv
'''
UNDECLARED_MODULE = '''
"""Attacks that declare no smoke budget: one with the conventional budget names, one with another integer."""
from dataclasses import dataclass

from attacks.gradient import FGSM


@dataclass
class Conventional(FGSM):
    smoke_budget = None
    steps: int = 100
    eot: int = 20


@dataclass
class Unconventional(FGSM):
    smoke_budget = None
    iterations: int = 1000
'''
DEFENCE = f"{PACKAGE}.toy_purifier:ToyPurifier"
ATTACK = f"{PACKAGE}.toy_bpda:ToyBPDA"
ENTRY_POINT = "toy_bpda"


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """The package on sys.path, its attack also registered as the `bench.attacks` entry point `toy_bpda`."""
    folder = tmp_path / "plugins" / PACKAGE
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    for name, source in (("toy_purifier", DEFENCE_MODULE), ("toy_bpda", ATTACK_MODULE),
                         ("undeclared", UNDECLARED_MODULE)):
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(folder.parent))
    original = importlib.metadata.entry_points
    point = importlib.metadata.EntryPoint(ENTRY_POINT, ATTACK, "bench.attacks")
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [point] if kw.get("group") == "bench.attacks" else original(**kw))
    yield
    for name in [name for name in sys.modules if name.startswith(PACKAGE)]:
        del sys.modules[name]


def toy_grid(grid: dict) -> None:
    grid["defences"] = {"standard": {"name": "standard", "epochs": 1}, "toy": {"name": DEFENCE}}
    grid["attacks"] = {"toy_path": {"name": ATTACK, "iterations": 100}, "toy_entry": {"name": ENTRY_POINT},
                       "fgsm": {"name": "fgsm"}}
    grid["blocks"] = [{"name": "b", "scenarios": ["digits"], "defences": ["standard", "toy"],
                       "attacks": ["toy_path", "toy_entry", "fgsm"]}]


def test_smoke_mode_scales_them_by_their_own_declarations(toy_package, tiny_grid):
    plan = prepare(compose(tiny_grid(toy_grid) + ["smoke=true"]))
    (stage,) = [s for s in plan.stages.values() if s.defence_key == "toy"]
    assert (stage.params["epochs"], stage.params["rounds"], stage.params["levels"]) == (1, smoke.shrink(500, 2), 16)
    iterations = {c.attack_key: c.attack_params["iterations"] for c in plan.cells if c.attack_key != "fgsm"}
    assert iterations == {"toy_path": 2, "toy_entry": 3}  # 100 and 1000 shrunk from floor 1: still two budgets


def test_the_gpu_hour_estimate_prices_them_by_their_declarations(toy_package, tiny_grid):
    plan = expand(compose(tiny_grid(toy_grid)))
    calibration = {"per_image_seconds": {"atop/pgd_eot": 8000.0}}  # 2 s a pass: pgd_eot's default is 4000 passes
    toy = {c.attack_key: c for c in plan.cells if c.defence_key == "toy"}
    for key, passes in (("toy_path", 100), ("toy_entry", 1000), ("fgsm", 1)):
        hours, uncovered = estimate_eval_hours(plan, [toy[key].key], calibration)
        assert hours == pytest.approx(toy[key].n_examples * 2.0 * passes / 3600) and not uncovered
    standard = [c for c in plan.cells if c.defence_key == "standard"]
    hours, uncovered = estimate_eval_hours(plan, [c.key for c in standard], calibration)
    assert hours == 0 and sorted(uncovered) == sorted(c.label for c in standard)  # no at/ measurement given


def test_the_keys_include_their_modules_and_change_with_them(toy_package, tiny_grid, edited_source):
    args = tiny_grid(toy_grid)
    plan = expand(compose(args))
    (stage,) = [s for s in plan.stages.values() if s.defence_key == "toy"]
    assert "toy_purifier.py" in stage.fingerprint["stage_code"]
    before = {c.label: c.key for c in plan.cells}
    assert all("toy_bpda.py" in c.fingerprint["code"] for c in plan.cells if c.attack_key.startswith("toy_"))
    edited_source("toy_bpda.py")
    after = {c.label: c.key for c in expand(compose(args)).cells}
    changed = {label.split("/")[2] for label in before if before[label] != after[label]}
    assert changed == {"toy_path", "toy_entry"}
    edited_source("toy_purifier.py")
    changed = {label.split("/")[1] for label, key in after.items()
               if key != {c.label: c.key for c in expand(compose(args)).cells}[label]}
    assert changed == {"toy"}


def test_the_report_decomposes_the_toy_purifier_from_its_records(toy_package, tiny_grid, tmp_path):
    summary = run(compose(tiny_grid(toy_grid) + ["smoke=true", "report=false", "threads=1"]))
    assert summary["done"] == 6 and summary["failed"] == 0
    results = tmp_path / "results" / "smoke" / "tiny_test"
    records = [json.loads(p.read_text()) for p in (results / "cells").glob("*.json")]
    expected = {(d, a, d == "toy", a.startswith("toy_")) for d in ("standard", "toy")
                for a in ("toy_path", "toy_entry", "fgsm")}
    assert {(r["defence"], r["attack"], r["has_purifier"], r["through_bpda"]) for r in records} == expected
    table = decomposition.decomposition_table(headline.headlines(collect(results)))
    (row,) = table.rows  # the toy purifier has a row, the standard classifier none
    columns = dict(zip(table.columns, row, strict=True))
    assert columns["defence"] == "toy" and columns["classifier-only"] == "not run"
    assert "toy_path" in columns["BPDA"] and "toy_entry" in columns["BPDA"] and "fgsm" not in columns["BPDA"]
    assert columns["end-to-end"].endswith("(fgsm)")


def undeclared_grid(attack: str):
    def edit(grid: dict) -> None:
        grid["defences"] = {"standard": {"name": "standard", "epochs": 1}}
        grid["attacks"] = {"mine": {"name": f"{PACKAGE}.undeclared:{attack}"}}
        grid["blocks"] = [{"name": "b", "scenarios": ["digits"], "defences": ["standard"], "attacks": ["mine"]}]
    return edit


def test_a_component_that_declares_nothing_gets_the_default_or_is_refused(toy_package, tiny_grid, tmp_path, capsys):
    plan = prepare(compose(tiny_grid(undeclared_grid("Conventional")) + ["smoke=true"]))
    (cell,) = plan.cells
    assert (cell.attack_params["steps"], cell.attack_params["eot"]) == (2, 2)  # the default: 100 and 20 shrunk
    code = main(tiny_grid(undeclared_grid("Unconventional")) + ["smoke=true", "dry_run=true"])
    error = capsys.readouterr().err
    assert code == 2 and "attacks.mine:" in error and "iterations=1000" in error and "smoke_budget" in error
    assert not (tmp_path / "results" / "smoke").exists()  # refused before any work


@pytest.mark.parametrize(("name", "settings"), [
    ("fgsm", {}), ("pgd", {"steps": 7, "restarts": 2}), ("cw", {"steps": 5}), ("pgd_eot", {"steps": 3, "eot": 4}),
    ("bpda_eot", {"steps": 3, "eot": 2}), ("apgd_ce", {"apgd_steps": 10, "eot": 2}), ("apgd_dlr", {"apgd_steps": 10})])
def test_the_built_in_attacks_declare_the_passes_they_make(name, settings):
    """`passes_per_image` against the backward passes counted (attacks.base.PassCounter), on points that no step
    breaks (eps 1e-6), so that no attack stops early; APGD also takes the gradient of its starting point."""
    generator = torch.Generator().manual_seed(0)
    classifier = LinearClassifier(torch.randn(4, 64, generator=generator), torch.zeros(4))
    model = QuantisingDefence(classifier.eval(), toy_task(side=8, num_classes=4), QuantisingDefence.Params()).eval()
    x = torch.rand(6, 1, 8, 8, generator=generator)
    with torch.no_grad():
        y = model(x).argmax(1)
    attack = attacks.build(name, eps=1e-6, **settings)
    attack(model, x, y)
    counted, declared = attack.counts["backward_examples"] / len(x), attack.passes_per_image()
    if name.startswith("apgd"):
        assert counted == declared + settings.get("eot", 1)
    else:
        assert counted == declared
