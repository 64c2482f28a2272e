"""Attacks against models with a closed-form answer: linear classifiers under Linf and L2.

For a linear model the exact robust correctness is known (bench/benchmarks/toys.py: the margin to each class falls at
rate eps * ||w_y - w_j||_dual). Inputs sit far enough inside [0, 1] that the optimal perturbation of every
class stays in the box, so the box never binds and the closed form is the true answer. No point lies within
10% of its robust radius of eps, so "reaching the exact value" does not hinge on a last rounding step.
The attacks must reach the exact robust accuracy within one example, never break a provably robust point,
and always return points inside the threat model.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import attacks
from attacks.base import ThreatModelViolation, check_threat_model, lp_norms
from bench.benchmarks.toys import LinearClassifier, exact_robust_correct, robust_radius
from defences.base import Defence

CLASSES, SHAPE, N = 4, (1, 6, 6), 40  # 6x6: pyautoattack's L2 Square needs images of at least 5x5
EPS = {"Linf": 0.12, "L2": 0.6}
BOX_MARGIN = {"Linf": 0.13, "L2": 0.3}  # inputs in [m, 1 - m]; checked: optimal perturbations stay in the box

# Reduced budgets (the defaults are the papers'; a linear model needs few steps).
BUDGETS = {
    "aa": {"apgd_steps": 30, "fab_steps": 30, "square_queries": 300},
    "apgd_ce": {"apgd_steps": 30},
    "apgd_dlr": {"apgd_steps": 30},
    "pgd": {"steps": 20},
    "cw": {"steps": 30},
    "randaa": {"apgd_steps": 20, "eot": 2},
    "pgd_eot": {"steps": 20, "eot": 2, "step_size": None},
    "bpda_eot": {"steps": 20, "eot": 2},
    "square": {"square_queries": 300},
    "fgsm": {},
}
EXACT = ("aa", "apgd_ce", "apgd_dlr", "pgd")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def linear_problem(norm: str, seed: int = 0):
    """A 4-class linear model, N points (labels = its clean predictions) none near its robust radius."""
    generator = torch.Generator().manual_seed(seed)
    dim = int(torch.tensor(SHAPE).prod())
    weight = torch.randn(CLASSES, dim, generator=generator)
    bias = 0.1 * torch.randn(CLASSES, generator=generator)
    eps, margin = EPS[norm], BOX_MARGIN[norm]
    kept_x, kept_y = [], []
    while sum(len(x) for x in kept_x) < N:
        x = margin + (1 - 2 * margin) * torch.rand(200, *SHAPE, generator=generator)
        y = (x.flatten(1) @ weight.T + bias).argmax(1)
        radius = robust_radius(weight, bias, x, y, norm)
        keep = (radius - eps).abs() > 0.1 * eps
        kept_x.append(x[keep])
        kept_y.append(y[keep])
    x, y = torch.cat(kept_x)[:N], torch.cat(kept_y)[:N]
    return LinearClassifier(weight, bias).eval(), weight, bias, x, y


def optimal_perturbations_stay_in_box(weight, x, y, eps, norm) -> bool:
    diffs = weight[y][:, None, :] - weight[None, :, :]                      # (B, C, D)
    directions = diffs.sign() if norm == "Linf" else diffs / diffs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    deltas = -eps * directions
    moved = x.flatten(1)[:, None, :] + deltas
    return bool(((moved >= 0) & (moved <= 1)).all())


@pytest.fixture(scope="module", params=["Linf", "L2"])
def problem(request):
    norm = request.param
    model, weight, bias, x, y = linear_problem(norm)
    exact = exact_robust_correct(weight, bias, x, y, EPS[norm], norm)
    return {"norm": norm, "model": model, "weight": weight, "bias": bias, "x": x, "y": y, "exact": exact}


def test_the_problem_is_well_posed(problem):
    exact = problem["exact"]
    assert optimal_perturbations_stay_in_box(problem["weight"], problem["x"], problem["y"], EPS[problem["norm"]],
                                             problem["norm"])
    assert 0.2 * N <= int(exact.sum()) <= 0.8 * N, "the eps should leave some points robust and break others"


def test_closed_form_matches_a_brute_force_search_on_a_two_dimensional_model():
    # 2 inputs, 3 classes: search the whole Linf ball on a fine grid (box not binding at x = 0.5)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    bias = torch.zeros(3)
    x = torch.tensor([[0.5 + 0.05, 0.5 - 0.02], [0.5 + 0.2, 0.5 - 0.1]])
    y = torch.tensor([0, 0])
    offsets = torch.linspace(-0.1, 0.1, 201)
    grid = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), -1).reshape(-1, 2)
    for i in range(2):
        predictions = ((x[i] + grid) @ weight.T + bias).argmax(1)
        assert bool((predictions == y[i]).all()) == bool(exact_robust_correct(weight, bias, x[i:i + 1], y[i:i + 1],
                                                                              0.1, "Linf"))


@pytest.mark.parametrize("name", EXACT)
def test_attack_reaches_the_exact_robust_accuracy(problem, name):
    torch.manual_seed(0)
    attack = attacks.build(name, eps=EPS[problem["norm"]], norm=problem["norm"], **BUDGETS[name])
    x_adv = attack(problem["model"], problem["x"], problem["y"])
    with torch.no_grad():
        robust = problem["model"](x_adv).argmax(1) == problem["y"]
    exact = problem["exact"]
    # never undercut: no provably robust point is ever broken
    assert not bool((exact & ~robust).any()), f"{name} broke a provably robust point"
    # reach the exact value within one example
    assert int(robust.sum()) - int(exact.sum()) <= 1, (name, int(robust.sum()), int(exact.sum()))


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_every_attack_stays_in_the_threat_model(problem, name):
    torch.manual_seed(1)
    norm, eps = problem["norm"], EPS[problem["norm"]]
    model = problem["model"]
    if name == "bpda_eot":  # BPDA needs purify/classify: the base Defence, whose purifier is the identity
        from bench.benchmarks.toys import toy_task

        model = Defence(model, toy_task(side=SHAPE[-1], num_classes=CLASSES), None).eval()
    x = problem["x"].clone()
    x[:5] = x[:5].round()  # some points on the box corners: the box must bind there
    attack = attacks.build(name, eps=eps, norm=norm, **BUDGETS[name])
    x_adv = attack(model, x, problem["y"])
    check_threat_model(x, x_adv, eps, norm)
    assert float(lp_norms(x_adv - x, norm).max()) <= eps * (1 + 1e-5)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert attack.counts["forward_examples"] > 0


def test_an_attack_that_leaves_the_ball_is_stopped():
    @dataclasses.dataclass
    class Cheat(attacks.Attack):
        def perturb(self, model, x, y):
            return (x + 2 * self.eps).clamp(0, 1)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    with pytest.raises(ThreatModelViolation, match="exceeds eps"):
        Cheat(eps=0.1)(model, torch.full((2, 1, 4, 4), 0.5), torch.zeros(2, dtype=torch.long))


def test_registry_has_every_attack_with_clear_errors():
    expected = {"aa", "randaa", "apgd_ce", "apgd_dlr", "pgd_eot", "bpda_eot", "fgsm", "pgd", "cw", "square"}
    assert expected <= set(attacks.names())
    with pytest.raises(ValueError, match="unknown setting"):
        attacks.build("pgd_eot", eot_iter=3)
    with pytest.raises(ValueError, match="target='end_to_end'"):
        attacks.build("bpda_eot", target="classifier")
    with pytest.raises(ValueError, match="unknown AutoAttack component"):
        attacks.build("aa", attacks=["apgd-xx"])
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        attacks.build("pgd_eot", max_batch=0)


def test_papers_default_budgets():
    pgd_eot = attacks.build("pgd_eot")
    assert (pgd_eot.steps, pgd_eot.alpha, pgd_eot.eot, pgd_eot.random_start, pgd_eot.loss) == \
        (200, 0.007, 20, False, "ce")
    randaa = attacks.build("randaa")
    assert (randaa.attacks, randaa.apgd_steps, randaa.eot, randaa.apgd_restarts) == \
        (["apgd-ce", "apgd-dlr"], 100, 20, 1)
    aa = attacks.build("aa")
    assert (aa.attacks, aa.apgd_steps, aa.target_classes, aa.square_queries, aa.eot) == \
        (["apgd-ce", "apgd-t", "fab-t", "square"], 100, 9, 5000, 1)
    assert attacks.build("cw").steps == 100 and attacks.build("cw").loss == "margin"
    assert attacks.build("square").square_queries == 5000


def test_bpda_straight_through_is_the_purified_value_with_the_identity_gradient():
    from attacks.base import straight_through

    x = torch.rand(3, 1, 2, 2, requires_grad=True)
    purified = torch.rand(3, 1, 2, 2)
    out = straight_through(x, purified)
    assert torch.equal(out, purified)
    upstream = torch.randn_like(out)
    grad, = torch.autograd.grad(out, x, upstream)
    assert torch.equal(grad, upstream)
    # k copies per input, copy-major (k*B, ...) or stacked (k, B, ...): each copy's gradient flows to its input
    copies = torch.rand(2 * 3, 1, 2, 2)
    upstream = torch.randn(2 * 3, 1, 2, 2)
    grad, = torch.autograd.grad(straight_through(x, copies), x, upstream)
    assert torch.allclose(grad, upstream[:3] + upstream[3:])
    grad, = torch.autograd.grad(straight_through(x, copies.view(2, 3, 1, 2, 2)), x, upstream.view(2, 3, 1, 2, 2))
    assert torch.allclose(grad, upstream[:3] + upstream[3:])
    with pytest.raises(ValueError, match="purify returned shape"):
        straight_through(x, torch.rand(3, 1, 3, 3))


@pytest.mark.parametrize("name", ["fgsm", "pgd", "cw", "pgd_eot", "bpda_eot"])
def test_every_gradient_attack_takes_each_loss_and_rejects_others(problem, name):
    for loss in ("ce", "margin", "dlr"):
        assert attacks.build(name, loss=loss).loss == loss
    with pytest.raises(ValueError, match="loss='hinge' is not valid; valid: ce, margin, dlr"):
        attacks.build(name, loss="hinge")
    two_classes = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 2))
    if name == "bpda_eot":
        from bench.benchmarks.toys import toy_task

        two_classes = Defence(two_classes, toy_task(side=6, num_classes=2), None)
    attack = attacks.build(name, eps=0.1, loss="dlr", **({"steps": 1} if name != "fgsm" else {}))
    with pytest.raises(ValueError, match="loss='dlr' needs at least 3 classes, the model has 2"):
        attack(two_classes, problem["x"][:4], torch.zeros(4, dtype=torch.long))


def test_margin_and_dlr_reach_the_exact_robust_accuracy_too(problem):
    for loss in ("margin", "dlr"):
        torch.manual_seed(0)
        attack = attacks.build("pgd", eps=EPS[problem["norm"]], norm=problem["norm"], steps=20, loss=loss)
        x_adv = attack(problem["model"], problem["x"], problem["y"])
        with torch.no_grad():
            robust = problem["model"](x_adv).argmax(1) == problem["y"]
        assert not bool((problem["exact"] & ~robust).any())
        assert int(robust.sum()) - int(problem["exact"].sum()) <= 1, (loss, int(robust.sum()))
