"""The `adaptive` attack: exact robust accuracy on linear models (never undercut), no worse than its best member
on a stochastic model, members skipped with their reason, and an escalation path that is recorded, bounded and
stops once the worst case no longer falls. Budgets are tiny: a linear model needs few steps."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_attacks_exact import EPS, SHAPE, linear_problem

import attacks
from attacks.protocol import evaluate_correctness
from bench.benchmarks.toys import LinearClassifier, NoisyDefence, exact_robust_correct, robust_radius, toy_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"apgd_steps": 20, "pgd_steps": 20, "square_queries": 200, "eot": 2, "selection_draws": 4}


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_adaptive_reaches_the_exact_robust_accuracy_and_never_undercuts_it(norm):
    torch.manual_seed(0)
    model, weight, bias, x, y = linear_problem(norm)
    exact = exact_robust_correct(weight, bias, x, y, EPS[norm], norm)
    attack = attacks.build("adaptive", eps=EPS[norm], norm=norm, max_escalations=3, **TINY)
    x_adv = attack(model, x, y)
    with torch.no_grad():
        robust = model(x_adv).argmax(1) == y
    assert not bool((exact & ~robust).any()), "adaptive broke a provably robust point"
    assert int(robust.sum()) == int(exact.sum())
    report = json.loads(json.dumps(attack.last_report))  # JSON-serialisable, as the record stores it
    assert report["accuracy"] == pytest.approx(float(exact.float().mean()))
    assert report["skipped"] == {"bpda_eot": "the defence has no purifier (BPDA would be pgd_eot again)"}
    assert report["members"] == ["apgd_ce", "apgd_dlr", "pgd_eot", "square"]
    # nothing can fall below the exact optimum: escalation stops after one doubling that changed nothing
    path = report["path"]
    assert report["stopped"].startswith("converged") and len(path) <= 3
    assert path[-2]["accuracy"] - path[-1]["accuracy"] <= attack.tolerance
    assert [p["budget"]["apgd_steps"] for p in path] == [20 * 2**r for r in range(len(path))]
    assert all(p["budget"]["eot"] == 1 for p in path)  # a deterministic model never pays for EOT
    assert attack.counts["backward_examples"] > 0  # the members' passes are counted as the attack's


def test_escalation_doubles_the_budget_while_accuracy_falls_and_is_bounded():
    # PGD alone with a fixed step of eps/4 from 1 step: each doubling of the steps reaches twice as far
    # (eps/4, eps/2, eps), and this problem's robust radii are spread over all three ranges
    torch.manual_seed(0)
    model, weight, bias, x, y = linear_problem("Linf")
    eps = EPS["Linf"]
    radius = robust_radius(weight, bias, x, y, "Linf")
    assert all(bool(((radius > eps * lo) & (radius < eps * hi)).any()) for lo, hi in ((0, .25), (.25, .5), (.5, 1)))
    attack = attacks.build("adaptive", eps=eps, members=["pgd_eot"], pgd_steps=1, pgd_step_size=eps / 4,
                           tolerance=0.0, max_escalations=2)
    x_adv = attack(model, x, y)
    report = attack.last_report
    assert [p["budget"]["pgd_steps"] for p in report["path"]] == [1, 2, 4]
    assert report["stopped"] == "max_escalations reached"
    accuracies = [report["clean_accuracy"]] + [p["accuracy"] for p in report["path"]]
    assert all(a > b for a, b in zip(accuracies, accuracies[1:], strict=False)), accuracies
    with torch.no_grad():
        robust = model(x_adv).argmax(1) == y
    assert not bool((exact_robust_correct(weight, bias, x, y, eps, "Linf") & ~robust).any())


def test_members_that_cannot_run_are_skipped_with_their_reason():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(3)
    model = LinearClassifier(torch.randn(2, 16, generator=generator), torch.zeros(2)).eval()
    x = 0.3 + 0.4 * torch.rand(12, 1, 4, 4, generator=generator)
    y = model(x).argmax(1)
    attack = attacks.build("adaptive", eps=0.5, norm="L2", max_escalations=0, **TINY)
    x_adv = attack(model, x, y)
    skipped = attack.last_report["skipped"]
    assert set(skipped) == {"apgd_dlr", "bpda_eot", "square"}
    assert "at least 3 classes" in skipped["apgd_dlr"] and "5x5" in skipped["square"]
    exact = exact_robust_correct(model.weight.detach(), model.bias.detach(), x, y, 0.5, "L2")
    assert torch.equal(model(x_adv).argmax(1) == y, exact)
    with pytest.raises(ValueError, match="no member of adaptive can run"):
        attacks.build("adaptive", eps=0.5, members=["apgd_dlr"])(model, x, y)


def test_on_a_stochastic_model_adaptive_is_no_worse_than_its_best_member():
    torch.manual_seed(0)
    linear, _, _, x, y = linear_problem("Linf")
    defence = NoisyDefence(linear, toy_task(side=SHAPE[-1], num_classes=4), NoisyDefence.Params(sigma=0.1)).eval()
    eps, judge_draws = EPS["Linf"], 32
    adaptive = attacks.build("adaptive", eps=eps, max_escalations=0, **TINY)

    def accuracy(x_adv: torch.Tensor) -> float:
        return evaluate_correctness(defence, x_adv, y, judge_draws).float().mean().item()

    combined = accuracy(adaptive(defence, x, y))
    assert adaptive.last_report["draws"] == 4 and adaptive.last_report["path"][0]["budget"]["eot"] == 2
    assert "bpda_eot" in adaptive.last_report["members"]  # the noise is a purifier
    members = {}
    for name in adaptive.last_report["members"]:
        budget = adaptive.round_budget(0, stochastic=True)
        members[name] = accuracy(adaptive.build_member(name, budget, seed=1, draws=4)(defence, x, y))
    # one standard error of a 40-example, 32-draw mean is at most 0.5 / sqrt(40 * 32) ~ 0.014
    slack = 3 * 0.5 / math.sqrt(x.shape[0] * judge_draws)
    assert combined <= min(members.values()) + slack, (combined, members)
    assert adaptive.round_budget(1, stochastic=True)["eot"] == 4  # escalation doubles EOT for it


def test_settings_are_validated_and_defaults_are_full_strength():
    attack = attacks.build("adaptive")
    assert (attack.apgd_steps, attack.pgd_steps, attack.eot, attack.square_queries, attack.max_escalations,
            attack.tolerance) == (100, 100, 20, 5000, 2, 0.01)
    assert attack.members == ["apgd_ce", "apgd_dlr", "pgd_eot", "bpda_eot", "square"]
    with pytest.raises(ValueError, match="members="):
        attacks.build("adaptive", members=["apgd_ce", "fab"])
    with pytest.raises(ValueError, match="target='end_to_end'"):
        attacks.build("adaptive", target="classifier")
    with pytest.raises(ValueError, match="max_escalations and tolerance must be >= 0"):
        attacks.build("adaptive", tolerance=-0.1)
    with pytest.raises(ValueError, match="pgd_steps must be >= 1"):
        attacks.build("adaptive", pgd_steps=0)
