"""Records written by the harness: robust never above clean per example (even against an attack that helps the
model), the adaptive attack's report per batch, and the randomness audit of a stochastic defence."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attacks.base import Attack, project
from bench.config import compose
from bench.records import load_records
from bench.run import run


@dataclass
class Helpful(Attack):
    """Gradient DESCENT on the cross-entropy: moves misclassified points back to their class (test only)."""

    steps: int = 5

    def perturb(self, model, x, y):
        x_adv = x.clone()
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            grad, = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
            x_adv = project(x_adv.detach() - self.eps / 2 * grad.sign(), x, self.eps, self.norm)
        return x_adv


def grid(edit):
    def change(grid: dict) -> None:
        grid["defences"] = {"standard": {"name": "standard", "epochs": 1},
                            "noisy": {"name": "bench.benchmarks.toys:NoisyDefence", "base": "standard", "sigma": 0.3}}
        grid["attacks"] = {"helpful": {"name": "test_record_protocol:Helpful"},
                           "adaptive": {"name": "adaptive", "apgd_steps": 3, "pgd_steps": 3, "square_queries": 20,
                                        "eot": 2, "selection_draws": 2, "max_escalations": 1, "target_classes": 2}}
        grid["eval"] = {"batch_size": 12, "stochastic_draws": 3}
        grid["blocks"] = [{"name": "b", "scenarios": ["digits"], "defences": ["noisy"],
                           "attacks": ["helpful", "adaptive"]}]
        edit(grid)
    return change


def test_records_keep_robust_below_clean_and_carry_the_attack_report_and_audit(tmp_path, tiny_grid):
    summary = run(compose(tiny_grid(grid(lambda g: None))))
    assert summary["done"] == 2 and summary["failed"] == 0
    records = {(r["defence"], r["attack"]): r for r in load_records(tmp_path / "results" / "tiny_test" / "cells")}

    helped = records[("noisy", "helpful")]
    clean, robust = helped["per_example"]["clean_draws"], helped["per_example"]["robust_draws"]
    assert any(sum(r) > sum(c) for c, r in zip(clean, robust, strict=True)), "the attack should fix wrong points"
    for record in records.values():
        for rule in ("single", "majority", "worst"):
            assert record[f"robust_acc_{rule}"] <= record[f"clean_acc_{rule}"]
        assert all(r <= c for r, c in zip(record["robust_correct"], record["clean_correct"], strict=True))

    adaptive = records[("noisy", "adaptive")]
    reports = adaptive["attack_report"]
    assert len(reports) == 2  # 24 examples in batches of 12
    assert all(r["draws"] == 2 and 2 <= len(r["path"]) <= 3 and r["stopped"] for r in reports)
    assert reports[0]["path"][0]["kind"] == "cascade" and list(reports[0]["path"][0]["members"]) == ["randaa"]
    assert reports[0]["path"][1]["budget"] == {"apgd_steps": 3, "fab_steps": 100, "pgd_steps": 3,
                                               "pgd_step_size": 2.5 * 0.15 / 3, "square_queries": 20, "eot": 2}
    assert "attack_report" not in helped
    audit = adaptive["randomness_audit"]
    assert audit["clean"]["n"] == 24 and audit["clean"]["draws"] == 3
    assert 0 <= audit["clean"]["pair_disagreement"] <= audit["clean"]["non_unanimous"] <= 1
