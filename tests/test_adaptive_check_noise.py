"""The headline's "broken by others, not by adaptive" on stochastic defences (bench/reporting/headline.py): only
differences beyond draw noise count. Attacks equally strong by construction (every attack's K draws of an example
are Bernoulli with one shared rate) give 0, although their single-draw rates differ and the old expected shortfall
is large; a genuinely stronger other attack is counted, example by example."""

from __future__ import annotations

import itertools
import math

import torch
from test_report_headline import cell, grid_of

from attacks.exact_tests import fisher_greater
from bench.reporting import headline

K = 8


def rates(q: torch.Tensor, generator: torch.Generator) -> list[float]:
    """Single-draw rates of K Bernoulli(q) draws per example, as a record under `decision: single` holds them."""
    return (torch.rand(K, q.numel(), generator=generator) < q).float().mean(0).tolist()


def cells_for(adaptive_q: torch.Tensor, other_q: dict[str, torch.Tensor], seed: int) -> list:
    generator = torch.Generator().manual_seed(seed)
    clean = [1.0] * adaptive_q.numel()
    made = [cell("atop", "adaptive", clean, rates(adaptive_q, generator), name="adaptive", draws=K)]
    return made + [cell("atop", name, clean, rates(q, generator), draws=K) for name, q in other_q.items()]


def test_equally_strong_attacks_give_no_false_alarm():
    generator = torch.Generator().manual_seed(0)
    for seed, n in ((1, 50), (2, 200)):
        q = torch.rand(n, generator=generator)
        for shared in (q, torch.full((n,), 0.5)):  # 0.5: the rate where draws differ most
            cells = cells_for(shared, {"pgd_eot": shared, "randaa": shared, "bpda_eot": shared}, seed)
            check = headline.headlines(grid_of(cells))[0].adaptive_check
            assert check.missed == 0 and not check.exact
            assert check.expected > 0.05 * n  # the shortfall the old column counted: draw noise, minimum of 4 estimates
            assert check.text().startswith(f"0 of {n} beyond noise")


def test_a_genuinely_stronger_other_attack_is_counted():
    n = 50
    adaptive_q = torch.full((n,), 0.9)
    adaptive_q[:10] = 1.0
    stronger = adaptive_q.clone()
    stronger[:10] = 0.0  # on 10 examples pgd_eot breaks every draw and adaptive none; elsewhere equally strong
    check = headline.headlines(grid_of(cells_for(adaptive_q, {"pgd_eot": stronger, "randaa": adaptive_q}, 3)))[0]
    check = check.adaptive_check
    assert (check.missed, check.by_attack) == (10, {"pgd_eot": 10, "randaa": 0})
    assert check.chance < 0.01 and check.text().startswith(f"10 of {n} beyond noise (pgd_eot 10; ")


def test_the_per_example_test_holds_its_level_at_every_rate():
    """Exactly: for two attacks of one rate q, P(Fisher p <= level) <= level for every q (K = 8 draws each)."""
    level = 0.01 / 3
    for q in (i / 100 for i in range(101)):
        pmf = [math.comb(K, k) * q**k * (1 - q) ** (K - k) for k in range(K + 1)]
        alarm = sum(pmf[a] * pmf[b] for a, b in itertools.product(range(K + 1), repeat=2)
                    if a > b and fisher_greater(a, K, b, K) <= level)
        assert alarm <= level
    assert fisher_greater(8, 8, 0, 8) == 1 / math.comb(16, 8)
