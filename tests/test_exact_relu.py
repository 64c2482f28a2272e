"""Attacks against small trained ReLU networks whose exact Linf robust accuracy comes from an exact solver.

The bank (tests/fixtures/exact_relu, written by bench/benchmarks/exact_relu.py): plain and adversarially
trained 10-class networks on 8x8 digits (MLPs of one and two hidden layers, a small CNN), 100 points each, and
per point the verdict of a mixed-integer programme over the point's eps-box within [0, 1]: `robust` (the
solver's lower bound on the margin is above the tolerance), `breakable` (with the solver's counterexample) or
`borderline` (too close to 0 to claim; left out). L2 has exact answers only for linear models (a MILP cannot
express an L2 ball): tests/test_attacks_exact.py.

Claims, with each attack built by `attacks.build` at its default budget and seed 0:
- the fixtures hold on this CPU: every stored counterexample is inside its box and misclassified by the float32
  network, and the solver reproduces stored margins;
- every attack's points lie inside the exact box (up to float32 rounding), and no attack ever breaks a
  verified-robust point (that would be a bug in the threat-model check or in the network evaluation);
- `aa` and `adaptive` reach the exact robust accuracy within one example. At full budget they cost 5-20 s of
  CPU per network (one thread), so the default run checks them on the `FULL_BUDGET` networks (one trained
  plainly, one adversarially; about 25 s together) and `-m slow` on the other three.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from bench.benchmarks.exact_relu import (
    BankEntry,
    affine_layers,
    float32_margins,
    load_bank,
    minimise_margin,
    run_attack,
)

BANK = Path(__file__).resolve().parent / "fixtures" / "exact_relu"
NETWORKS = ("mlp32_plain", "mlp32_at", "mlp32x16_plain", "mlp32x16_at", "cnn_at")
FULL_BUDGET = ("mlp32_at", "mlp32x16_plain")  # aa and adaptive at full budget in the default run
CHEAP = ("apgd_ce", "apgd_dlr", "pgd")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bank() -> dict[str, BankEntry]:
    return {entry.spec.name: entry for entry in load_bank(BANK)}


def test_the_bank_is_well_posed(bank):
    assert tuple(bank) == NETWORKS
    assert sum(path.stat().st_size for path in BANK.iterdir()) < 1_000_000
    for name, entry in bank.items():
        counts = {kind: int(entry.mask(kind).sum()) for kind in ("robust", "breakable", "borderline")}
        assert counts["borderline"] <= 3, (name, counts)
        assert 20 <= counts["robust"] <= 80, (name, counts)  # the eps leaves a mix of robust and breakable points
        assert len(set(entry.y.tolist())) == 10


@pytest.mark.parametrize("network", NETWORKS)
def test_every_counterexample_is_in_the_box_and_misclassified_by_the_float32_network(bank, network):
    entry = bank[network]
    breakable = entry.mask("breakable")
    points = torch.tensor([r["counterexample"] for r in entry.records if r["verdict"] == "breakable"],
                          dtype=torch.float32).view(-1, *entry.x.shape[1:])
    x = entry.x[breakable]
    distance = (points.double() - x.double()).abs().amax()
    assert float(distance) <= entry.spec.eps and float(points.min()) >= 0 and float(points.max()) <= 1
    assert bool((float32_margins(entry.model, points, entry.y[breakable]) < 0).all())
    assert bool((float32_margins(entry.model, entry.x[entry.mask("robust")], entry.y[entry.mask("robust")]) > 0).all())


def test_the_solver_reproduces_stored_margins(bank):
    entry = bank["mlp32_plain"]
    layers = affine_layers(entry.model)
    for kind in ("robust", "breakable"):
        i = int(entry.mask(kind).nonzero()[0])
        solution = minimise_margin(layers, entry.x[i].flatten().double().numpy(), int(entry.y[i]), entry.spec.eps)
        assert solution.margin == pytest.approx(entry.records[i]["margin"], abs=1e-4)


def test_the_solver_matches_a_brute_force_search_on_a_two_input_network():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():  # steep enough that the minima lie inside the boxes, not only on their corners
        model[0].weight.mul_(8), model[0].bias.mul_(3), model[2].weight.mul_(2)
    layers = affine_layers(model, shape=(2,))
    grid = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, 401)] * 2, indexing="ij"), -1).reshape(-1, 2)
    for x, label, eps in [((0.5, 0.5), 0, 0.3), ((0.3, 0.6), 1, 0.2), ((0.9, 0.2), 2, 0.35)]:
        centre = torch.tensor(x)
        inside = grid[((grid - centre).abs() <= eps + 1e-9).all(1)]  # the box within [0, 1], grid step 0.0025
        brute = float(float32_margins(model, inside, torch.full((len(inside),), label)).min())
        solution = minimise_margin(layers, centre.double().numpy(), label, eps)
        assert brute - 0.01 <= solution.margin <= brute + 1e-5  # below every grid point, and the grid comes close
        assert solution.bound <= solution.margin + 1e-6
        found = float(float32_margins(model, torch.from_numpy(solution.point).float()[None], torch.tensor([label])))
        assert found == pytest.approx(solution.margin, abs=1e-4)
        assert float((torch.from_numpy(solution.point) - centre.double()).abs().max()) <= eps + 1e-7


def check_against_exact(entry: BankEntry, name: str, x_adv: torch.Tensor) -> int:
    """Assert `name`'s points lie in the exact boxes (up to float32 rounding) and break no verified-robust point;
    return how many breakable points `name` left robust."""
    excess = float(((x_adv.double() - entry.x.double()).abs() - entry.spec.eps).max())
    assert excess <= 1e-6 and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1, (name, excess)
    robust = float32_margins(entry.model, x_adv, entry.y) > 0
    broken_robust = (entry.mask("robust") & ~robust).nonzero().squeeze(1).tolist()
    assert not broken_robust, f"{name} broke verified-robust points {broken_robust} of {entry.spec.name}"
    return int((entry.mask("breakable") & robust).sum())


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("name", CHEAP)
def test_no_attack_breaks_a_verified_robust_point(bank, network, name):
    check_against_exact(bank[network], name, run_attack(name, bank[network])[0])


def full_budget_check(bank: dict[str, BankEntry], network: str, name: str) -> None:
    entry = bank[network]
    missed = check_against_exact(entry, name, run_attack(name, entry)[0])
    exact = int(entry.mask("robust").sum())
    assert missed <= 1, f"{name} on {network}: {exact + missed} robust of the claimed points, exact {exact}"


@pytest.mark.parametrize("network", FULL_BUDGET)
@pytest.mark.parametrize("name", ["aa", "adaptive"])
def test_full_budget_attack_reaches_the_exact_robust_accuracy(bank, network, name):
    full_budget_check(bank, network, name)


# A finding, not a tolerance: at its default budget AutoAttack misses 2 of cnn_at's 64 breakable points (seed 0:
# points 13 and 33, optimal margins -0.42 and -0.09; seed 1: 13 and 53). Five APGD restarts break point 13; 1000
# APGD steps or 20000 Square queries break neither. adaptive's further members (APGD-CE and APGD-DLR with
# `member_restarts` random restarts after the cascade) break both, so it carries no marker. Not strict: the day
# aa reaches the exact value here the marker goes.
HARD_FOR_AUTOATTACK = pytest.mark.xfail(reason="aa misses 2 breakable points of cnn_at at default budget",
                                        strict=False)


@pytest.mark.slow
@pytest.mark.parametrize("network, name", [
    pytest.param(network, name, marks=HARD_FOR_AUTOATTACK) if (network, name) == ("cnn_at", "aa") else (network, name)
    for network in sorted(set(NETWORKS) - set(FULL_BUDGET)) for name in ("aa", "adaptive")])
def test_full_budget_attack_reaches_the_exact_robust_accuracy_on_every_network(bank, network, name):
    full_budget_check(bank, network, name)
