"""Registries: helpful errors, and user classes given as package.module:ClassName without editing the harness."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

import attacks
import defences
from attacks.registry import UnknownNameError
from bench.config import compose
from bench.run import run
from defences.base import Task

TASK = Task("digits", 1, 32, 32, 10, (0.3,), (0.3,), "Linf", 0.1)


def test_unknown_defence_lists_valid_names():
    with pytest.raises(UnknownNameError, match=r"unknown defence 'standrad'.*Valid: .*at.*Did you mean 'standard'"):
        defences.build("standrad", classifier=torch.nn.Identity(), task=TASK)


def test_unknown_parameter_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown setting\(s\) 'epoch'.*Did you mean 'epochs'"):
        defences.build("at", classifier=torch.nn.Identity(), task=TASK, epoch=3)
    with pytest.raises(ValueError, match=r"'stepz'.*Did you mean 'steps'"):
        attacks.build("pgd", stepz=3)


def test_attack_settings_are_complete_and_named():
    attack = attacks.build("pgd", eps=0.1, steps=7)
    settings = attack.settings()
    assert settings["name"] == "pgd" and settings["steps"] == 7 and settings["eps"] == 0.1
    assert {"norm", "target", "restarts", "random_start", "step_size"} <= set(settings)


def test_bad_import_path_is_explained():
    with pytest.raises(UnknownNameError, match="cannot import module 'no_such_module'"):
        attacks.build("no_such_module:Thing")
    with pytest.raises(UnknownNameError, match="has no attribute 'Nope'"):
        attacks.build("attacks.gradient:Nope")


def test_user_defence_and_attack_run_in_a_grid(tmp_path, monkeypatch, tiny_grid):
    (tmp_path / "my_plugins.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        import torch
        from attacks.base import Attack
        from defences.standard import StandardTraining

        class Shifted(StandardTraining):
            """A user defence: the standard classifier behind a fixed brightness shift."""
            def purify(self, x):
                return (x * 0.9 + 0.05).clamp(0, 1)

        @dataclass
        class NoiseAttack(Attack):
            """A user attack: a random corner of the Linf ball."""
            def perturb(self, model, x, y):
                return (x + self.eps * torch.randn_like(x).sign()).clamp(0, 1)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_plugins", None)

    def edit(grid):
        grid["defences"] = {"mine": {"name": "my_plugins:Shifted", "epochs": 1}}
        grid["attacks"] = {"noise": {"name": "my_plugins:NoiseAttack"}}
        grid["blocks"][0].update(defences=["mine"], attacks=["noise"])

    summary = run(compose(tiny_grid(edit)))
    assert summary["done"] == 1 and summary["failed"] == 0
