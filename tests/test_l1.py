"""The L1 threat model: its exact projection, the sparse steepest ascent, l1-APGD against pyautoattack's, and the
exact L1 robust accuracy of linear models (box included) that the L1 attacks must reach and never go below.

A linear model's worst L1 perturbation inside the box is, per class, a fractional knapsack solved greedily
(bench.benchmarks.toys.l1_best_gain, checked here against scipy's LP solver), so the exact robust accuracy is
known. Every attack's output must lie in the L1 ball intersected with [0, 1] (measured exactly, in float64), its
robust accuracy can never be below the exact one, and on the binary linear model, where every loss's gradient
points along the same w_1 - w_0, PGD, PGD+EOT, FAB-T and `aa` reach it example for example.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import attacks
from attacks.apgd import APGD
from attacks.base import ThreatModelViolation, check_threat_model, lp_norms
from attacks.l1 import l1_rounding, l1_steepest_ascent, project_l1
from bench.benchmarks.toys import LinearClassifier, fit_classifier, l1_best_gain, l1_robust_slack

N = 100
STEPS = 25

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.determinism]


@pytest.fixture(scope="module")
def data(digits8_data):
    train_x, train_y, test_x, test_y = digits8_data
    return train_x, train_y, test_x[:N], test_y[:N]


@pytest.fixture(scope="module")
def linear(data, one_torch_thread):
    """A 10-class and a binary (digits 0-4 against 5-9) linear model on the 8x8 digits."""
    train_x, train_y = data[0], data[1]
    models = {}
    for name, classes, labels in (("ten", 10, train_y), ("binary", 2, (train_y >= 5).long())):
        torch.manual_seed(1)
        model = LinearClassifier(torch.zeros(classes, 64), torch.zeros(classes))
        models[name] = fit_classifier(model, train_x, labels, epochs=10, seed=0)
    return models


def labels_for(name: str, y: torch.Tensor) -> torch.Tensor:
    return (y >= 5).long() if name == "binary" else y


def exact_robust(model, x, y, eps):
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    return clean & (l1_robust_slack(model.weight.detach(), model.bias.detach(), x, y, eps) > 0)


def bisection_projection(point, x, eps):
    """The projection by bisection on the threshold, in float64: an independent reference."""
    delta, centre = (point - x).flatten(1).double(), x.flatten(1).double()
    room = torch.where(delta > 0, 1 - centre, centre)

    def size(lam):
        return torch.minimum((delta.abs() - lam[:, None]).clamp_min(0), room)

    low, high = torch.zeros(delta.shape[0], dtype=torch.float64), delta.abs().amax(1)
    for _ in range(100):
        middle = (low + high) / 2
        over = size(middle).sum(1) > eps
        low, high = torch.where(over, middle, low), torch.where(over, high, middle)
    lam = torch.where(size(torch.zeros_like(low)).sum(1) > eps, high, torch.zeros_like(high))
    return centre + delta.sign() * size(lam)


@pytest.mark.parametrize("eps", [0.3, 2.0, 10.0, 200.0])
def test_projection_is_the_exact_one_onto_the_ball_and_box(data, eps):
    x = data[2]
    torch.manual_seed(0)
    point = x + 0.7 * torch.randn_like(x)
    projected = project_l1(point, x, eps)
    radius = eps - l1_rounding(x)
    reference = bisection_projection(point, x, radius)
    torch.testing.assert_close(projected.flatten(1).double(), reference, atol=1e-6, rtol=0)
    assert projected.min() >= 0 and projected.max() <= 1
    assert float(lp_norms(projected.double() - x.double(), "L1").max()) <= eps  # exactly, once stored in float32
    again = project_l1(projected, x, eps)
    torch.testing.assert_close(again, projected, atol=1e-6, rtol=0)  # a point of the set stays (up to rounding)


def test_projection_agrees_with_pyautoattacks(data):
    from pyautoattack.autopgd_base import L1_projection

    x = data[2]
    torch.manual_seed(0)
    noise = torch.randn_like(x)
    for eps in (0.5, 3.0):
        theirs = (x + noise + L1_projection(x, noise, eps)).clamp(0, 1)
        # ours has radius eps - l1_rounding(x) (3.8e-6 here) and a float64 threshold; theirs sums the 2d = 128
        # breakpoints' gaps cumulatively in float32 (up to 128 * 2**-24 = 7.6e-6 off): the points agree to 2e-5
        assert (project_l1(x + noise, x, eps) - theirs).abs().max() <= 2e-5


def test_steepest_ascent_skips_coordinates_the_box_blocks():
    grad = torch.tensor([[3.0, -2.0, 1.0, 0.5, 0.0]])
    point = torch.tensor([[1.0, 0.5, 0.2, 0.5, 0.5]])  # the largest coordinate cannot rise: it is at 1
    one = l1_steepest_ascent(grad, point, 0.0)
    assert torch.equal(one, torch.tensor([[0.0, -1.0, 0.0, 0.0, 0.0]]))
    three = l1_steepest_ascent(grad, point, 0.6)  # 3 coordinates: the movable ones of largest |grad|
    torch.testing.assert_close(three, torch.tensor([[0.0, -2.0, 1.0, 0.5, 0.0]]) / 3.5)
    assert three.abs().sum() == pytest.approx(1.0)


def test_greedy_gain_is_the_linear_programs_optimum():
    scipy_optimize = pytest.importorskip("scipy.optimize")
    torch.manual_seed(0)
    direction, x = torch.randn(6, 12, dtype=torch.float64), torch.rand(6, 12, dtype=torch.float64)
    x[:, :4] = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)  # coordinates the box blocks one way
    for eps in (0.2, 1.5, 20.0):
        gain, move = l1_best_gain(direction, x, eps)
        for row in range(6):
            # d = u - v with u, v >= 0: max c.(u - v) s.t. sum(u + v) <= eps, 0 <= u <= 1 - x, 0 <= v <= x
            c, centre = direction[row].numpy(), x[row].numpy()
            result = scipy_optimize.linprog(
                -torch.cat([direction[row], -direction[row]]).numpy(), A_ub=[[1.0] * 24], b_ub=[eps],
                bounds=[(0, 1 - v) for v in centre] + [(0, v) for v in centre], method="highs")
            assert -result.fun == pytest.approx(gain[row].item(), abs=1e-9)
            assert float(c @ move[row].numpy()) == pytest.approx(gain[row].item(), abs=1e-12)
        moved = x + move
        assert (move.abs().sum(1) <= eps + 1e-12).all() and (moved >= -1e-12).all() and (moved <= 1 + 1e-12).all()


def shared_geometry(monkeypatch):
    """pyautoattack's l1-APGD with our projection, and its support count without its projection's rounding
    residue (its x + y + delta leaves coordinates it zeroed at ~1e-8 and counts them as support)."""
    import pyautoattack.autopgd_base as reference

    monkeypatch.setattr(reference, "L1_projection", lambda x, y, eps: project_l1(x + y, x, eps) - (x + y))
    monkeypatch.setattr(reference, "L0_norm", lambda delta: (delta.abs() > 1e-6).flatten(1).sum(-1))
    return reference


def reference_l1_run(reference, model, x, y, eps, loss, schedule):
    attack = reference.APGDAttack(model, n_iter=STEPS, norm="L1", eps=eps, loss=loss, device="cpu",
                                  use_largereps=schedule)
    attack.init_hyperparam(x)
    torch.manual_seed(0)
    with warnings.catch_warnings():  # pyautoattack warns about points with zero DLR gradient
        warnings.simplefilter("ignore")
        if not schedule:
            return attack.attack_single_run(x, y)
        first = [math.ceil(0.3 * STEPS)] * 2
        return attack.decr_eps_pgd(x, y, [3 * eps, 2 * eps, eps], [*first, STEPS - sum(first)])


@pytest.mark.parametrize("model_name", ["cnn", "linear"])
@pytest.mark.parametrize("schedule", [False, True])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_l1_apgd_follows_pyautoattacks_iterates(monkeypatch, data, digits8_cnn, linear, model_name, schedule, loss):
    # With the same projection and support count both run the same algorithm on arithmetic that differs only in
    # how the projected point is summed (x + y + (p - x - y) there, p here: one rounding); a loss comparison or a
    # top-k threshold that this rounding flips sends an example along another path, so a few may part
    reference = shared_geometry(monkeypatch)
    model = digits8_cnn if model_name == "cnn" else linear["ten"]
    _, _, x, y = data
    highest, still_correct, _, last_wrong = reference_l1_run(reference, model, x, y, 1.0, loss, schedule)
    torch.manual_seed(0)
    ours = APGD(eps=1.0, norm="L1", steps=STEPS, loss=loss, l1_schedule=schedule).run(model, x, y)
    apart = ((ours.highest_loss.x - highest).abs().flatten(1).amax(1) > 1e-5).sum()
    assert apart <= 3
    assert ((ours.least_correct.correct_rate > 0) != still_correct).sum() <= 1
    assert 5 < int(still_correct.sum()) < N - 5  # points of both kinds: a real comparison


def test_l1_apgd_without_the_shared_geometry_finds_as_much(data, digits8_cnn):
    # pyautoattack's own projection: its rounding residue counts as support, so the sparsity adapts differently
    from pyautoattack.autopgd_base import APGDAttack

    _, _, x, y = data
    reference = APGDAttack(digits8_cnn, n_iter=STEPS, norm="L1", eps=1.0, device="cpu")
    reference.init_hyperparam(x)
    torch.manual_seed(0)
    _, still_correct, _, _ = reference.attack_single_run(x, y)
    torch.manual_seed(0)
    ours = APGD(eps=1.0, norm="L1", steps=STEPS).run(digits8_cnn, x, y)
    assert abs(int((ours.least_correct.correct_rate > 0).sum()) - int(still_correct.sum())) <= 2


def robust_after(attack, model, x, y):
    torch.manual_seed(0)
    x_adv = attack(model, x, y)
    assert float(lp_norms(x_adv.double() - x.double(), "L1").max()) <= attack.eps * (1 + 1e-6)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


BINARY_ATTACKS = {
    "pgd": {"steps": 100, "loss": "margin"},
    "pgd_eot": {"steps": 100, "eot": 1, "loss": "margin"},
    "fab_t": {"fab_steps": 20},
    "aa": {"attacks": ["apgd-ce", "fab-t"], "apgd_steps": 20, "fab_steps": 20},  # APGD-T needs 4 classes
}


@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("name", sorted(BINARY_ATTACKS))
def test_l1_attacks_reach_the_exact_robust_accuracy_of_a_binary_linear_model(data, linear, name, eps):
    model, (_, _, x, y) = linear["binary"], data
    y = labels_for("binary", y)
    exact = exact_robust(model, x, y, eps)
    robust = robust_after(attacks.build(name, eps=eps, norm="L1", **BINARY_ATTACKS[name]), model, x, y)
    assert torch.equal(robust, exact)
    assert 5 < int(exact.sum()) < N - 5


@pytest.mark.parametrize("name", ["apgd_ce", "square", "randaa", "fgsm"])
def test_no_l1_attack_goes_below_the_exact_robust_accuracy(data, linear, name):
    # l1-APGD alone (AutoAttack's, with its sign steps) may stop short on a few points, Square and FGSM more:
    # none can break a point that is exactly robust, and every output is in the ball and the box
    model, (_, _, x, y) = linear["binary"], data
    y = labels_for("binary", y)
    budget = {"square": {"square_queries": 50},
              "randaa": {"apgd_steps": 10, "eot": 1, "attacks": ["apgd-ce"]}}.get(name, {})
    exact = exact_robust(model, x, y, 1.0)
    robust = robust_after(attacks.build(name, eps=1.0, norm="L1", **budget), model, x, y)
    assert not (exact & ~robust).any()


def test_l1_autoattack_reaches_the_exact_robust_accuracy_of_a_ten_class_linear_model(data, linear):
    model, (_, _, x, y) = linear["ten"], data
    exact = exact_robust(model, x, y, 1.0)
    aa = attacks.build("aa", eps=1.0, norm="L1", apgd_steps=20, fab_steps=20, square_queries=20)
    assert torch.equal(robust_after(aa, model, x, y), exact)
    assert 5 < int(exact.sum()) < N - 5


def test_l1_autoattack_takes_autoattacks_l1_settings():
    aa, rand = attacks.build("aa", eps=1.0, norm="L1"), attacks.build("randaa", eps=1.0, norm="L1")
    assert (aa.apgd_restarts, aa.target_classes, aa.fab_target_classes, aa.apgd_l1_schedule) == (5, 5, 9, True)
    assert (rand.apgd_restarts, rand.eot, rand.apgd_l1_schedule) == (1, 20, False)
    linf = attacks.build("aa", eps=0.1)
    assert (linf.apgd_restarts, linf.target_classes, linf.fab_target_classes, linf.apgd_l1_schedule) == (1, 9, 9, False)
    given = attacks.build("aa", eps=1.0, norm="L1", apgd_restarts=2, target_classes=3)
    assert (given.apgd_restarts, given.target_classes, given.fab_target_classes) == (2, 3, 3)
    assert attacks.build("aa", eps=1.0, norm="L1", apgd_steps=2).apgd_l1_schedule is False  # a stage per step


@pytest.mark.parametrize(("name", "settings", "message"), [
    ("pgd", {"norm": "Linf", "l1_top": 0.1}, "l1_top=0.1 applies to norm L1 only"),
    ("pgd_eot", {"norm": "L1", "l1_top": 1.5}, "l1_top must be in"),
    ("aa", {"norm": "Linf", "apgd_l1_schedule": True}, "apgd_l1_schedule .* needs norm L1"),
    ("aa", {"norm": "L1", "apgd_steps": 2, "apgd_l1_schedule": True}, "apgd_steps >= 3"),
    ("pgd", {"norm": "L0"}, "valid: Linf, L2, L1"),
])
def test_bad_l1_settings_are_named(name, settings, message):
    with pytest.raises(ValueError, match=message):
        attacks.build(name, eps=1.0, **settings)


def test_the_threat_model_check_measures_l1():
    x = torch.full((2, 1, 4, 4), 0.5)
    inside = x.clone()
    inside[:, :, 0, :2] += 0.5  # L1 size 1.0 exactly
    check_threat_model(x, inside, 1.0, "L1")
    outside = inside.clone()
    outside[:, :, 1, 0] += 0.01
    with pytest.raises(ThreatModelViolation, match="L1 perturbation 1.01"):
        check_threat_model(x, outside, 1.0, "L1")


def test_the_l1_scenario_is_the_digits_one_under_l1():
    from bench.config import load_scenario

    digits, l1 = load_scenario("digits"), load_scenario("digits_l1")
    assert (l1.norm, l1.eps) == ("L1", 8.0)
    assert (l1.dataset, l1.classifier, l1.defence_defaults) == (digits.dataset, digits.classifier,
                                                                digits.defence_defaults)
