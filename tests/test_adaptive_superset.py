"""Per example, with the same budget and seed, `adaptive` is never less successful than `aa` on a deterministic
model and than `randaa` on a stochastic one.

Deterministic (the session's tiny digits CNN at eps 0.1, where AutoAttack breaks about half the points): adaptive
runs `aa`'s cascade first, exactly (its result with only the cascade is `aa`'s, tensor for tensor), so every point
`aa` breaks adaptive breaks too, judged by one forward pass.

Stochastic (Gaussian noise in front of the same CNN): one draw decides nothing, so both results are judged with
common random numbers: the same seeded draws of the noise for both batches (`seeded_score`: same seed, same
shapes, hence the same noise at every example). An example whose point is the same in both results then scores
exactly the same, and the comparison is not noise there. Where adaptive's point differs, it replaced randaa's only
where under 4 x selection_draws common draws (its final check) no more draws classified it correctly: re-scored
under exactly those draws (the selection statistic), adaptive is never worse, example by example. An independent
judge can still disagree by chance where two points are about as good: the paired difference of 64 common draws
has a standard deviation of at most sqrt(64 / 2) ~ 5.7 draws, so there the test asks that no example be worse by
more than 3 of those and that adaptive be better on the sum.
"""

from __future__ import annotations

import copy

import pytest
import torch

import attacks
from attacks.adaptive import FINAL_CHECK_DRAWS
from attacks.adaptive_stop import seeded_score
from attacks.seeding import derive_seed
from bench.benchmarks.toys import NoisyDefence, toy_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPS, N, JUDGE_DRAWS = 0.1, 48, 64
BUDGET = {"eps": EPS, "apgd_steps": 10, "target_classes": 3, "fab_steps": 10, "square_queries": 100}
STOCHASTIC_BUDGET = {"eps": EPS, "apgd_steps": 10, "eot": 2, "selection_draws": 4}


@pytest.fixture(scope="module")
def problem(digits8_cnn, digits8_data):
    model = copy.deepcopy(digits8_cnn)
    _, _, test_x, test_y = digits8_data
    return model, test_x[:N], test_y[:N]


def run(name: str, model, x, y, caller_seed: int, **settings) -> tuple[torch.Tensor, object]:
    attack = attacks.build(name, **settings)
    torch.manual_seed(caller_seed)  # the harness seeds the RNG per batch before every attack
    return attack(model, x, y), attack


@pytest.mark.parametrize("seed", [3, None])
def test_on_a_deterministic_model_adaptive_breaks_every_point_aa_breaks(problem, seed):
    model, x, y = problem
    reference, _ = run("aa", model, x, y, 0, seed=seed, **BUDGET)
    cascade_only, _ = run("adaptive", model, x, y, 0, seed=seed, members=["aa"], **BUDGET)
    assert torch.equal(cascade_only, reference)  # the cascade is aa's, seed derivation included
    result, adaptive = run("adaptive", model, x, y, 0, seed=seed, pgd_steps=10, **BUDGET)
    with torch.no_grad():
        aa_robust, adaptive_robust = model(reference).argmax(1) == y, model(result).argmax(1) == y
    assert not bool((adaptive_robust & ~aa_robust).any()), "an example aa breaks survived adaptive"
    assert 0.2 < aa_robust.float().mean() < 0.8  # the comparison has points on both sides
    report = adaptive.last_report
    assert report["members"] == ["aa", "apgd_ce", "apgd_dlr", "pgd_eot"] and report["path"][0]["kind"] == "cascade"
    assert report["accuracy"] == pytest.approx(adaptive_robust.float().mean().item())


def test_on_a_stochastic_model_adaptive_is_no_less_successful_than_randaa_under_common_draws(problem):
    model, x, y = problem
    defence = NoisyDefence(model, toy_task(), NoisyDefence.Params(sigma=0.2)).eval()
    reference, _ = run("randaa", defence, x, y, 1, seed=5, **STOCHASTIC_BUDGET)
    cascade_only, _ = run("adaptive", defence, x, y, 1, seed=5, members=["randaa"], **STOCHASTIC_BUDGET)
    assert torch.equal(cascade_only, reference)  # the cascade is randaa's, on the caller's RNG as randaa alone
    result, adaptive = run("adaptive", defence, x, y, 1, seed=5, pgd_steps=10, square_queries=100,
                           target_classes=3, **STOCHASTIC_BUDGET)
    assert adaptive.last_report["members"] == ["randaa", "pgd", "bpda_eot", "pgd_eot", "apgd_t", "square"]
    randaa_rate, _ = seeded_score(defence, reference, y, JUDGE_DRAWS, seed=99)
    adaptive_rate, _ = seeded_score(defence, result, y, JUDGE_DRAWS, seed=99)
    same = (result == reference).flatten(1).all(1)
    assert torch.equal(adaptive_rate[same], randaa_rate[same])  # common draws: no noise where the points agree
    worse = (adaptive_rate - randaa_rate) * JUDGE_DRAWS
    assert worse.max() <= 3 * (JUDGE_DRAWS / 2) ** 0.5, worse  # within 3 sd of the paired judge's noise
    assert adaptive_rate.sum() < randaa_rate.sum()  # and better in all: the further members do break points
    assert 0 < int(same.sum()) < N
    # the selection statistic: the final check's own common draws, re-run: per example, never worse
    check_seed = derive_seed(adaptive.last_report["seed"], "adaptive-final") % 2**31
    check_draws = FINAL_CHECK_DRAWS * STOCHASTIC_BUDGET["selection_draws"]
    assert adaptive.last_report["final_check"]["draws"] == check_draws
    checked_randaa, _ = seeded_score(defence, reference, y, check_draws, check_seed)
    checked_adaptive, _ = seeded_score(defence, result, y, check_draws, check_seed)
    assert bool((checked_adaptive <= checked_randaa).all())
