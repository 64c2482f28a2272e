"""The `adaptive` attack: exact robust accuracy on linear models (never undercut), members skipped with their
reason, an escalation path that is recorded and bounded, a stopping rule that stops on re-scoring noise (an exact
sign test under common draws) and settings validated before any work. Budgets are tiny: a linear model needs few
steps. The per-example superset of `aa` and `randaa` is tests/test_adaptive_superset.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_attacks_exact import EPS, linear_problem
from torch import nn

import attacks
from attacks.adaptive_stop import paired_rescore, seeded_score
from attacks.exact_tests import binomial_upper_tail, sign_test
from bench.benchmarks.toys import BernoulliModel, LinearClassifier, exact_robust_correct, robust_radius

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"apgd_steps": 20, "pgd_steps": 20, "fab_steps": 10, "target_classes": 3, "square_queries": 200, "eot": 2,
        "selection_draws": 4}


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_adaptive_reaches_the_exact_robust_accuracy_and_never_undercuts_it(norm):
    torch.manual_seed(0)
    model, weight, bias, x, y = linear_problem(norm)
    exact = exact_robust_correct(weight, bias, x, y, EPS[norm], norm)
    attack = attacks.build("adaptive", eps=EPS[norm], norm=norm, **TINY)
    x_adv = attack(model, x, y)
    with torch.no_grad():
        robust = model(x_adv).argmax(1) == y
    assert not bool((exact & ~robust).any()), "adaptive broke a provably robust point"
    assert int(robust.sum()) == int(exact.sum())
    report = json.loads(json.dumps(attack.last_report))  # JSON-serialisable, as the record stores it
    assert report["accuracy"] == pytest.approx(float(exact.float().mean()))
    assert report["members"] == ["aa", "apgd_ce", "apgd_dlr", "pgd_eot"] and report["skipped"] == {}
    assert report["cascade"] == {"aa": ["apgd-ce", "apgd-t", "fab-t", "square"]}
    path = report["path"]
    assert [p["kind"] for p in path[:2]] == ["cascade", "members"]
    # the cascade reaches the optimum: the members' round breaks nothing new and the rule stops there
    assert path[1]["newly_broken"] == 0 and len(path) == 2 and report["stopped"].startswith("converged")
    assert all(p["budget"]["eot"] == 1 for p in path)  # a deterministic model never pays for EOT
    assert attack.counts["backward_examples"] > 0  # the members' passes are counted as the attack's


def test_escalation_doubles_the_budget_of_members_that_still_break_points_and_is_bounded():
    # PGD from each example's worst point with a fixed step of eps/4: 1 step reaches eps/4, the next round's 2 steps
    # from there 3 eps/4, the 4 after that eps; this problem's robust radii are spread over all three ranges
    torch.manual_seed(0)
    model, weight, bias, x, y = linear_problem("Linf")
    eps = EPS["Linf"]
    radius = robust_radius(weight, bias, x, y, "Linf")
    assert all(bool(((radius > eps * lo) & (radius < eps * hi)).any()) for lo, hi in ((0, .25), (.25, .75), (.75, 1)))
    attack = attacks.build("adaptive", eps=eps, members=["pgd_eot"], pgd_steps=1, pgd_step_size=eps / 4,
                           max_escalations=2)
    x_adv = attack(model, x, y)
    report = attack.last_report
    assert [p["budget"]["pgd_steps"] for p in report["path"]] == [1, 2, 4]
    assert [p["kind"] for p in report["path"]] == ["members", "escalation", "escalation"]
    assert all(p["members"]["pgd_eot"]["start"] == "worst" for p in report["path"])
    assert report["stopped"] == "max_escalations reached"
    accuracies = [report["clean_accuracy"]] + [p["accuracy"] for p in report["path"]]
    assert all(a > b for a, b in zip(accuracies, accuracies[1:], strict=False)), accuracies
    with torch.no_grad():
        robust = model(x_adv).argmax(1) == y
    assert torch.equal(robust, exact_robust_correct(weight, bias, x, y, eps, "Linf"))


def test_members_that_cannot_run_are_skipped_with_their_reason():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(3)
    model = LinearClassifier(torch.randn(2, 16, generator=generator), torch.zeros(2)).eval()
    x = 0.3 + 0.4 * torch.rand(12, 1, 4, 4, generator=generator)
    y = model(x).argmax(1)
    attack = attacks.build("adaptive", eps=0.5, norm="L2", max_escalations=0, **TINY)
    x_adv = attack(model, x, y)
    report = attack.last_report
    assert set(report["skipped"]) == {"apgd_dlr", "aa:apgd-t,square"}
    assert "at least 3 classes" in report["skipped"]["apgd_dlr"]
    assert report["cascade"] == {"aa": ["apgd-ce", "fab-t"]}
    exact = exact_robust_correct(model.weight.detach(), model.bias.detach(), x, y, 0.5, "L2")
    assert torch.equal(model(x_adv).argmax(1) == y, exact)
    stochastic = attacks.build("adaptive", members=["fab_t", "bpda_eot", "pgd"])
    with pytest.raises(ValueError, match="no member of adaptive can run"):
        stochastic(BernoulliModel(), torch.tensor([[0.5, 0.0]]), torch.tensor([0]))


def test_the_sign_test_is_the_exact_binomial_tail():
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 0) == pytest.approx(1 / 32)
    assert sign_test(9, 3) == pytest.approx(sum(math.comb(12, k) for k in range(9, 13)) / 2**12)
    assert binomial_upper_tail(3, 10, 0.1) == pytest.approx(1 - sum(math.comb(10, k) * 0.1**k * 0.9 ** (10 - k)
                                                                    for k in range(3)))


def test_paired_rescoring_gives_unchanged_points_the_same_draws():
    # BernoulliModel: each draw is correct with the probability in column 0, whatever else; under common draws
    # an unchanged point scores exactly the same, and a point made surely wrong is newly broken
    torch.manual_seed(0)
    n = 200
    before = torch.stack([torch.full((n,), 0.5), torch.zeros(n)], 1)
    after = before.clone()
    after[:20, 0] = 0.0
    y = torch.zeros(n, dtype=torch.long)
    model = BernoulliModel()
    rate, _, evidence = paired_rescore(model, y, before, after, draws=8, seed=11)
    assert torch.equal(rate[20:], seeded_score(model, before, y, 8, 11)[0][20:])
    assert evidence.changed == 20 and evidence.broken == 20 and evidence.worsened == 0
    assert evidence.p_value == pytest.approx(2.0**-20) and evidence.productive(1, 0.05, stochastic=True)


class CoinFlip(nn.Module):
    """Two classes whose logits are fresh N(0, 1) noise on every pass, plus a negligible slope in the input."""

    stochastic = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1e-3 * x.flatten(1)[:, :2] + torch.randn(x.shape[0], 2)


def test_on_pure_noise_the_rule_stops_after_the_first_round():
    # every draw is a coin flip and eps is too small to move it: nothing any member finds is real, so the rule
    # sees only re-scoring noise and does not escalate
    torch.manual_seed(1)
    n = 300
    x, y = torch.full((n, 1, 2, 2), 0.5), torch.zeros(n, dtype=torch.long)
    attack = attacks.build("adaptive", eps=1e-6, members=["pgd_eot"], pgd_steps=2, eot=2, selection_draws=4)
    attack(CoinFlip(), x, y)
    report = attack.last_report
    first = report["path"][0]
    assert len(report["path"]) == 1 and report["stopped"].startswith("converged"), report["stopped"]
    assert first["changed"] > 50 and first["p_value"] > 0.05  # many noisy "improvements", none significant


def test_settings_are_validated_and_defaults_are_full_strength():
    attack = attacks.build("adaptive")
    assert (attack.apgd_steps, attack.pgd_steps, attack.eot, attack.square_queries, attack.target_classes,
            attack.fab_steps, attack.max_escalations, attack.min_new, attack.alpha) == (
                100, 100, 20, 5000, 9, 100, 2, 1, 0.05)
    assert attack.members is None
    with pytest.raises(ValueError, match="members="):
        attacks.build("adaptive", members=["apgd_ce", "fab"])
    with pytest.raises(ValueError, match="at most one AutoAttack cascade"):
        attacks.build("adaptive", members=["aa", "randaa"])
    with pytest.raises(ValueError, match="target='end_to_end'"):
        attacks.build("adaptive", target="classifier")
    with pytest.raises(ValueError, match="alpha"):
        attacks.build("adaptive", alpha=1.5)
    with pytest.raises(ValueError, match="min_new must be >= 1"):
        attacks.build("adaptive", min_new=0)
    with pytest.raises(ValueError, match="max_escalations must be >= 0"):
        attacks.build("adaptive", max_escalations=-1)
    with pytest.raises(ValueError, match="unknown setting"):
        attacks.build("adaptive", tolerance=0.01)


def test_every_member_is_a_registry_name_and_apgd_t_runs_one_target_alone():
    from attacks.adaptive import MEMBERS

    assert set(MEMBERS) <= set(attacks.names()) and {"apgd_t", "fab_t"} <= set(MEMBERS)
    with pytest.raises(ValueError, match="first_target must be in"):
        attacks.build("apgd_t", first_target=4, target_classes=3)
    torch.manual_seed(0)
    model, weight, bias, x, y = linear_problem("Linf")
    second = attacks.build("apgd_t", eps=EPS["Linf"], apgd_steps=10, target_classes=2, first_target=2, seed=1)
    both = attacks.build("apgd_t", eps=EPS["Linf"], apgd_steps=10, target_classes=2, seed=1)
    second(model, x, y)
    both(model, x, y)
    # one target's APGD run costs 10 steps per attacked point; the pair runs the first target on all points too
    assert second.counts["backward_examples"] < both.counts["backward_examples"]
