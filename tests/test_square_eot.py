"""Square with EOT (attacks/square.py) against plain Square on a noisy linear toy whose expected accuracy at any
point, and its minimum over the eps-ball, are closed forms (bench/benchmarks/toys.py: noisy_linear_toy).

The final points are judged exactly (the probability that one draw classifies them correctly), and also by K = 64
seeded draws; Square-EOT must be better per example by an exact one-sided sign test, not by one noisy pass.
"""

from __future__ import annotations

import pytest
import torch

import attacks
from attacks.exact_tests import sign_test
from attacks.protocol import evaluate_correctness
from attacks.square import per_draw_margins, square_steps
from bench.benchmarks.toys import LinearClassifier, noisy_linear_accuracy, noisy_linear_optimum, noisy_linear_toy

EPS, SIGMA, N, QUERIES = 0.05, 0.1, 100, 1000


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)
    return noisy_linear_toy(N, SIGMA, seed=0)


def run_square(defence, x, y, eot: int, seed: int = 3) -> tuple[torch.Tensor, attacks.Attack]:
    attack = attacks.build("square", eps=EPS, square_queries=QUERIES, eot=eot, seed=seed)
    torch.manual_seed(1)
    return attack(defence, x, y), attack


def test_square_eot_beats_plain_square_on_the_noisy_linear_toy(toy):
    defence, x, y = toy
    plain, plain_attack = run_square(defence, x, y, eot=1)
    eot, eot_attack = run_square(defence, x, y, eot=8)
    exact_plain, exact_eot = noisy_linear_accuracy(defence, plain, y), noisy_linear_accuracy(defence, eot, y)
    optimum = noisy_linear_optimum(defence, x, y, EPS)
    assert bool((exact_plain >= optimum - 1e-6).all() and (exact_eot >= optimum - 1e-6).all())  # the closed form holds
    better, worse = int((exact_eot < exact_plain - 1e-6).sum()), int((exact_eot > exact_plain + 1e-6).sum())
    assert sign_test(better, worse) < 1e-3, (better, worse)
    assert exact_plain.mean() - exact_eot.mean() > 0.3  # measured: 0.754 -> 0.190 (optimum 0.007)
    torch.manual_seed(5)  # K seeded draws judge both sets of points the same way
    judged_plain = evaluate_correctness(defence, plain, y, draws=64).float().mean(0)
    judged_eot = evaluate_correctness(defence, eot, y, draws=64).float().mean(0)
    assert judged_plain.mean() - judged_eot.mean() > 0.3
    # the same forward budget: square_queries passes per example for the search (plus the first point's draws and
    # the selection's 2 x 8); Square-EOT spends all of it, plain Square stops at its first misclassified draw
    search = {name: a.counts["forward_examples"] - 2 * 8 * N for name, a in (("plain", plain_attack),
                                                                              ("eot", eot_attack))}
    assert search["eot"] / N == pytest.approx(QUERIES + 8, abs=1) and search["plain"] < 0.1 * N * QUERIES


def test_one_draw_is_plain_square_bit_for_bit(toy):
    defence, x, y = toy
    explicit, _ = run_square(defence, x, y, eot=1)
    attack = attacks.build("square", eps=EPS, square_queries=QUERIES, seed=3, square_eot=1, eot=5)
    torch.manual_seed(1)
    assert torch.equal(explicit, attack(defence, x, y))  # square_eot overrides eot


def test_per_draw_margins_are_independent_draws_in_any_chunking(toy):
    defence, x, y = toy
    torch.manual_seed(0)
    margins = per_draw_margins(defence, x[:10], y[:10], eot=400, max_batch=7)
    model = defence.classifier
    d = model.weight[y[:10]] - model.weight[1 - y[:10]]
    clean = (x[:10].flatten(1) * d).sum(1)
    # the mean margin estimates the noise-free margin; its spread is sigma ||d||
    assert torch.allclose(margins.mean(0), clean.detach(), atol=4 * SIGMA * d.norm(dim=1).max().item() / 20)
    assert torch.allclose(margins.std(0), SIGMA * d.norm(dim=1).detach(), rtol=0.2)


def test_square_eot_on_a_deterministic_model_is_plain_square():
    generator = torch.Generator().manual_seed(0)
    model = LinearClassifier(torch.randn(3, 36, generator=generator), torch.zeros(3)).eval()
    x = 0.3 + 0.4 * torch.rand(20, 1, 6, 6, generator=generator)
    y = model(x).argmax(1)
    results = []
    for eot in (1, 4):
        torch.manual_seed(1)
        results.append(attacks.build("square", eps=0.1, square_queries=100, eot=eot, seed=3)(model, x, y))
    assert torch.equal(*results)


def test_the_query_budget_counts_forward_passes():
    assert square_steps(5000, 1) == 5000 and square_steps(5000, 4) == 1250
    with pytest.raises(ValueError, match="counts forward passes per example"):
        attacks.build("square", square_queries=3, eot=4)
    with pytest.raises(ValueError, match="square_eot"):
        attacks.build("square", square_eot=0)


def test_randaa_and_adaptive_run_square_eot_on_stochastic_models(toy):
    defence, x, y = toy
    alone, _ = run_square(defence, x, y, eot=8)
    randaa = attacks.build("randaa", eps=EPS, attacks=["square"], eot=8, square_queries=QUERIES, seed=3)
    torch.manual_seed(1)
    assert torch.equal(alone, randaa(defence, x, y))  # randaa's Square component judges queries by its eot draws
    exact = {}
    for square_eot in (1, 8):
        adaptive = attacks.build("adaptive", eps=EPS, members=["square"], square_queries=QUERIES,
                                 square_eot=square_eot, seed=3, max_escalations=0)
        torch.manual_seed(1)
        exact[square_eot] = noisy_linear_accuracy(defence, adaptive(defence, x, y), y)
    better, worse = int((exact[8] < exact[1] - 1e-6).sum()), int((exact[8] > exact[1] + 1e-6).sum())
    assert sign_test(better, worse) < 1e-3, (better, worse)
    with pytest.raises(ValueError, match="counts forward passes per example"):
        attacks.build("adaptive", square_queries=2, square_eot=4)
