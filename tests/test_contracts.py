"""Contracts every registered attack and defence keeps, parametrised over the registries (as timm tests its models).

A name registered later (built in, or through an entry point) is picked up here without editing this file.
Budgets are the smoke mode's (bench/smoke.py: minimal steps, one epoch on a few images), architectures the
smallest of their kind, so that the whole file runs in well under a minute on a CPU.

Attacks: the output stays in the eps-ball (its own norm, checked here independently of the attack's check)
and in [0, 1] with the input's shape and dtype; the same seed gives the same output on a deterministic model;
on a stochastic model no point is left unattacked as "already broken" when K draws of the judge find it
correct every time; settings() builds the same attack again through the registry.
Defences: built with the smallest settings on a 16x16, 3-class task, fitted for one step, saved and loaded
with identical outputs (seeded for stochastic ones), and `stochastic` is true exactly when two passes differ.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import attacks
import defences
from attacks.base import Attack, lp_norms
from attacks.protocol import evaluate_correctness
from bench import smoke
from bench.benchmarks.toys import LinearClassifier, NoisyDefence, toy_task
from bench.data.base import ImageSplit
from bench.zoo import build_architecture
from defences.base import FitContext, Task

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATTACKS = attacks.names()
DEFENCES = defences.names()
THREATS = [("Linf", 0.1), ("L2", 0.5), ("L1", 1.0)]
TOLERANCE = 1e-5
# 4 classes (AutoAttack's targeted APGD needs 4), 8x8 inputs (pyautoattack's L2 Square needs 5x5 at least)
CLASSES, SIDE, POINTS = 4, 8, 16
JUDGE_DRAWS, JUDGE_POINTS, NOISE = 8, 200, 0.1
# Architecture sizes for the defences whose defaults are paper-sized (budgets come from bench/smoke.py).
SMALL_SIZES: dict[str, dict[str, Any]] = {
    "carso": {"fcrepr": 32, "fjoint": 8, "decoder_channels": [16, 16, 8, 8, 4]},
    "atop": {"generator_width": 4, "generator_stages": 1, "discriminator_width": 4},
}
DEFENCE_TASK = Task("contract", channels=1, height=16, width=16, num_classes=3, mean=(0.5,), std=(0.25,),
                    norm="Linf", eps=0.1)


# --- attacks ----------------------------------------------------------------------------------------------

def linear_problem(points: int = POINTS, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A linear classifier (as a defence, so that every attack surface exists) and points it classifies
    correctly, inside [0.2, 0.8] so that the box does not bind for the smallest perturbations."""
    generator = torch.Generator().manual_seed(seed)
    classifier = LinearClassifier(torch.randn(CLASSES, SIDE * SIDE, generator=generator) / 8, torch.zeros(CLASSES))
    model = defences.build("standard", classifier=classifier.eval(), task=toy_task(SIDE, num_classes=CLASSES))
    x = 0.2 + 0.6 * torch.rand(points, 1, SIDE, SIDE, generator=generator)
    with torch.no_grad():
        y = classifier(x).argmax(1)
    return model.eval(), x, y


def cheap_attack(name: str, **settings: Any) -> Attack:
    """Attack `name` at the smoke mode's budget (steps, EOT, queries shrunk; restarts 1), with `settings`."""
    return attacks.build(name, **{**smoke.attack_budget({"name": name}), **settings})


@pytest.mark.parametrize("norm, eps", THREATS)
@pytest.mark.parametrize("name", ATTACKS)
def test_attack_output_respects_the_threat_model(name, norm, eps):
    if norm not in attacks.REGISTRY.get_class(name).supported_norms:
        valid = ", ".join(attacks.REGISTRY.get_class(name).supported_norms)
        with pytest.raises(ValueError, match=f"norm='{norm}' is not supported by .*; valid: {valid}$"):
            attacks.build(name, eps=eps, norm=norm)
        return
    model, x, y = linear_problem()
    torch.manual_seed(0)
    x_adv = cheap_attack(name, eps=eps, norm=norm)(model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert lp_norms(x_adv - x, norm).max() <= eps + TOLERANCE
    assert (x_adv != x).any()  # it did attack (every point starts correct)


@dataclass
class LinfOnlyAttack(Attack):
    """An attack that declares it is defined for Linf alone."""

    supported_norms = ("Linf",)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x


def test_an_attack_refuses_a_norm_it_does_not_declare_and_says_which_are_valid():
    LinfOnlyAttack(eps=0.1, norm="Linf")
    for norm in ("L2", "L1"):
        with pytest.raises(ValueError, match=f"norm='{norm}' is not supported by LinfOnlyAttack; valid: Linf$"):
            LinfOnlyAttack(eps=0.1, norm=norm)


@pytest.mark.determinism
@pytest.mark.parametrize("name", ATTACKS)
def test_attack_is_deterministic_under_a_seed(name):
    model, x, y = linear_problem()
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        outputs.append(cheap_attack(name, eps=0.1)(model, x, y))
    assert torch.equal(*outputs)


class WatchedNoisyDefence(NoisyDefence):
    """The noisy linear toy that notes which of its clean points an attack worked on: queried at a perturbed
    input, or asked for the input gradient (in the forward pass and in BPDA's, both of which purify first)."""

    def watch(self, clean: torch.Tensor) -> None:
        self.clean, self.attacked = clean.flatten(1), torch.zeros(clean.shape[0], dtype=torch.bool)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().flatten(1)
        nearest = torch.cdist(rows, self.clean).argmin(1)  # the points lie far apart compared with eps
        self.attacked[nearest[(rows != self.clean[nearest]).any(1) | x.requires_grad]] = True
        return super().purify(x)


def noisy_problem() -> tuple[WatchedNoisyDefence, torch.Tensor, torch.Tensor]:
    """The noisy linear toy: Gaussian input noise in front of the linear classifier, with each clean point's
    single-pass error spread between 0 and 1/2 (a single pass misjudges many points that K draws do not)."""
    model, x, y = linear_problem(JUDGE_POINTS, seed=1)
    noisy = WatchedNoisyDefence(model.classifier, model.task, WatchedNoisyDefence.Params(sigma=NOISE))
    noisy.watch(x)
    return noisy.eval(), x, y


def taken_as_broken(model: WatchedNoisyDefence, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Points the attack never attacked (it took them as broken already) although every one of the judge's K
    draws classifies them correctly."""
    torch.manual_seed(4)
    judge = evaluate_correctness(model, x, y, draws=JUDGE_DRAWS)
    return (~model.attacked & judge.all(0)).nonzero().squeeze(1)


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_on_a_stochastic_model_never_takes_a_k_draw_correct_point_as_broken(name):
    model, x, y = noisy_problem()
    torch.manual_seed(3)
    budget = {k: v for k, v in smoke.attack_budget({"name": name}).items() if k != "selection_draws"}
    if name == "fab_t":  # FAB trusts single passes: it refuses a stochastic model rather than misjudge points
        with pytest.raises(ValueError, match="fab_t needs a deterministic model"):
            attacks.build(name, eps=0.05, **budget)(model, x, y)
        return
    attacks.build(name, eps=0.05, **budget)(model, x, y)
    assert model.attacked.sum() > 0  # the watch works: the attack's queries were seen
    assert taken_as_broken(model, x, y).numel() == 0


@dataclass
class OnePassJudge(Attack):
    """FGSM on the points ONE noisy pass classifies correctly, the others taken as broken: what the contract
    forbids (pyautoattack's driver did this)."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            survivors = (model(x).argmax(1) == y).nonzero().squeeze(1)
        x_adv = x.clone()
        x_adv[survivors] = attacks.build("fgsm", eps=self.eps, norm=self.norm)(model, x[survivors], y[survivors])
        return x_adv


def test_the_k_draw_contract_catches_a_one_pass_judge():
    model, x, y = noisy_problem()
    torch.manual_seed(3)
    OnePassJudge(eps=0.05)(model, x, y)
    assert taken_as_broken(model, x, y).numel() > 0


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_settings_and_budget_round_trip_through_the_registry(name):
    attack = cheap_attack(name, eps=0.05, norm="L2")
    settings = attack.settings()
    assert settings["name"] == name
    again = attacks.build(settings.pop("name"), **settings)
    assert again == attack and again.settings() == attack.settings() and again.budget() == attack.budget()
    assert "eps=0.05" in attack.budget() and "L2" in attack.budget()
    json.dumps(attack.settings())  # records store them as JSON


# --- defences ---------------------------------------------------------------------------------------------

def small_classifier(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_architecture("small_cnn", in_channels=1, num_classes=3, image_size=16, mean=(0.5,), std=(0.25,),
                              channels=(4, 8), hidden=16).eval()


def small_settings(name: str) -> dict[str, Any]:
    """The smoke mode's budget for `name`, its small architecture, and `train: yes` where the defence would
    otherwise take the classifier as pre-trained and fit nothing."""
    valid = {f.name for f in fields(defences.REGISTRY.get_class(name).Params)}
    settings = {**smoke.defence_budget(name), **SMALL_SIZES.get(name, {}), "train": "yes"}
    return {key: value for key, value in settings.items() if key in valid}


def fitted_defence(name: str, workdir: Path) -> nn.Module:
    defence = defences.build(name, classifier=small_classifier(0), task=DEFENCE_TASK, **small_settings(name))
    generator = torch.Generator().manual_seed(0)
    train = ImageSplit(images=torch.rand(8, 1, 16, 16, generator=generator), labels=torch.arange(8) % 3)
    ctx = FitContext(device=torch.device("cpu"), seed=0, workdir=workdir, log=logging.getLogger("contracts"),
                     classifier_pretrained=True)
    summary = defence.fit(train, ctx)
    json.dumps(summary)  # a training stage stores it in defence.json
    return defence.eval()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Each registered defence fitted once for this module (name -> (defence, its artifact folder))."""
    cache: dict[str, tuple[nn.Module, Path]] = {}

    def get(name: str) -> tuple[nn.Module, Path]:
        if name not in cache:
            folder = tmp_path_factory.mktemp(f"defence_{name}")
            defence = fitted_defence(name, folder / "work")
            defence.save(folder / "artifact", {"name": name})
            cache[name] = (defence, folder / "artifact")
        return cache[name]

    return get


def inputs() -> torch.Tensor:
    return torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("name", DEFENCES)
def test_defence_builds_fits_a_step_and_classifies(name, fitted):
    defence, _ = fitted(name)
    with torch.no_grad():
        logits = defence(inputs())
    assert logits.shape == (6, 3) and torch.isfinite(logits).all()
    assert defence.classifier is not None and defence.task == DEFENCE_TASK


@pytest.mark.determinism
@pytest.mark.parametrize("name", DEFENCES)
def test_defence_save_load_round_trip_gives_identical_outputs(name, fitted):
    defence, folder = fitted(name)
    # a classifier saved with the defence must be restored from the file; one that is not comes from outside
    classifier = small_classifier(1) if defence.saves_classifier else defence.classifier
    reloaded = defences.build(name, classifier=classifier, task=DEFENCE_TASK, **small_settings(name))
    reloaded.load(folder)
    reloaded.eval()
    x = inputs()
    with torch.no_grad():
        torch.manual_seed(11)
        expected = defence(x)
        torch.manual_seed(11)
        assert torch.equal(reloaded(x), expected)


@pytest.mark.parametrize("name", DEFENCES)
def test_defence_stochastic_flag_is_honest(name, fitted):
    defence, _ = fitted(name)
    x = inputs()
    with torch.no_grad():
        first, second = defence(x), defence(x)
    assert (not torch.equal(first, second)) == bool(defence.stochastic)


@pytest.mark.parametrize("name", DEFENCES)
def test_defence_settings_round_trip_through_the_registry(name):
    defence = defences.build(name, classifier=small_classifier(0), task=DEFENCE_TASK, **small_settings(name))
    again = defences.build(name, classifier=small_classifier(0), task=DEFENCE_TASK, **defence.settings())
    assert again.settings() == defence.settings()
    json.dumps(defence.settings())  # stage records store them as JSON
