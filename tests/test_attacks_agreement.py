"""The harness's attacks against the reference tools run directly, on the same small CNN and inputs.

`aa` / `randaa` against pyautoattack's AutoAttack (standard / rand), `pgd` against the Adversarial Robustness
Toolbox's PGD (the `dev` extra installs it; the two tests skip without it), `pgd_eot` against the same PGD (identical
on a deterministic model, where EOT averages equal gradients), batched EOT against looped EOT,
and the fixes for pyautoattack's handling of stochastic defences (RNG re-seeding, one-draw decisions).
Budgets are reduced on both sides alike (FAB 20 steps, Square 300 queries, EOT 2).
"""

from __future__ import annotations

import pytest
import torch

import attacks
from attacks.eot import eot_gradient
from attacks.protocol import summarise_draws
from bench.benchmarks.toys import NoisyDefence, TinyCNN, fit_classifier, toy_task

EPS = 0.1
N = 100


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(digits8_data):
    train_x, train_y, test_x, test_y = digits8_data
    return train_x, train_y, test_x[:N], test_y[:N]


@pytest.fixture(scope="module")
def cnn(digits8_cnn):
    return digits8_cnn


@pytest.fixture(scope="module")
def noisy(data, one_torch_thread):
    torch.manual_seed(0)
    defence = NoisyDefence(TinyCNN(), toy_task(), NoisyDefence.Params(sigma=0.3))
    fit_classifier(defence.classifier, data[0], data[1], epochs=10, seed=0, transform=defence.purify)
    return defence.eval()


def robust_count(model, x_adv, y) -> int:
    with torch.no_grad():
        return int((model(x_adv).argmax(1) == y).sum())


def direct_autoattack(model, x, y, version: str, **budget):
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, norm="Linf", eps=EPS, version=version, device="cpu", seed=0)
    adversary.verbose = False
    adversary.fab.n_iter = budget.get("fab_steps", adversary.fab.n_iter)
    adversary.square.n_queries = budget.get("square_queries", adversary.square.n_queries)
    adversary.apgd.eot_iter = budget.get("eot", adversary.apgd.eot_iter)
    return adversary.run_standard_evaluation(x, y, batch_size=500)[0]


def test_aa_agrees_with_pyautoattack_standard(cnn, data):
    _, _, x, y = data
    direct = robust_count(cnn, direct_autoattack(cnn, x, y, "standard", fab_steps=20, square_queries=300), y)
    torch.manual_seed(0)
    ours = robust_count(cnn, attacks.build("aa", eps=EPS, fab_steps=20, square_queries=300)(cnn, x, y), y)
    assert abs(ours - direct) <= 3, (ours, direct)
    assert ours < robust_count(cnn, x, y) - 10  # the attack does something


def test_randaa_agrees_with_pyautoattack_rand(cnn, data):
    _, _, x, y = data
    direct = robust_count(cnn, direct_autoattack(cnn, x, y, "rand", eot=2), y)
    torch.manual_seed(0)
    ours = robust_count(cnn, attacks.build("randaa", eps=EPS, eot=2)(cnn, x, y), y)
    assert abs(ours - direct) <= 3, (ours, direct)


def test_randaa_on_a_stochastic_defence_attacks_every_point_and_is_no_weaker(noisy, data):
    _, _, x, y = data
    draws = 8
    torch.manual_seed(0)
    direct_adv = direct_autoattack(noisy, x, y, "rand", eot=2)
    torch.manual_seed(0)
    ours_adv = attacks.build("randaa", eps=EPS, eot=2)(noisy, x, y)
    torch.manual_seed(1)
    clean = summarise_draws(attacks.evaluate_correctness(noisy, x, y, draws))
    direct = summarise_draws(attacks.evaluate_correctness(noisy, direct_adv, y, draws))
    ours = summarise_draws(attacks.evaluate_correctness(noisy, ours_adv, y, draws))
    # pyautoattack hands back the clean x for points its one noisy draw judged misclassified or robust
    untouched_direct = ((direct_adv - x).flatten(1).abs().amax(1) == 0) & (clean["single"] > 0)
    untouched_ours = ((ours_adv - x).flatten(1).abs().amax(1) == 0) & (clean["single"] > 0)
    assert int(untouched_direct.sum()) > 0
    assert int(untouched_ours.sum()) == 0
    assert ours["single"].mean() <= direct["single"].mean() + 0.02, (ours["single"].mean(), direct["single"].mean())
    assert ours["majority"].mean() <= direct["majority"].mean() + 0.03


def reference_pgd(model, x, y, alpha: float, steps: int, random_start: bool) -> torch.Tensor:
    """Linf PGD (cross-entropy, sign steps) from the Adversarial Robustness Toolbox, on the whole batch at once."""
    evasion = pytest.importorskip("art.attacks.evasion", reason="the reference PGD needs the dev extra (ART)")
    from art.estimators.classification import PyTorchClassifier

    estimator = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                  nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    attack = evasion.ProjectedGradientDescentPyTorch(estimator, norm="inf", eps=EPS, eps_step=alpha, max_iter=steps,
                                                     num_random_init=int(random_start), batch_size=x.shape[0],
                                                     verbose=False)
    return torch.from_numpy(attack.generate(x.numpy(), y=y.numpy()))


def test_pgd_agrees_with_the_reference_pgd(cnn, data):
    _, _, x, y = data
    torch.manual_seed(0)
    direct = robust_count(cnn, reference_pgd(cnn, x, y, alpha=EPS / 4, steps=20, random_start=True), y)
    torch.manual_seed(0)
    ours = robust_count(cnn, attacks.build("pgd", eps=EPS, steps=20)(cnn, x, y), y)
    assert abs(ours - direct) <= 3, (ours, direct)


@pytest.mark.determinism
@pytest.mark.parametrize("eot", [1, 3])
def test_pgd_eot_equals_the_reference_pgd_on_a_deterministic_model(cnn, data, eot):
    _, _, x, y = data
    x, y = x[:40], y[:40]
    reference = reference_pgd(cnn, x, y, alpha=0.007, steps=15, random_start=False)
    # max_batch = 40: one EOT copy per pass, each the reference's batch of 40, so every gradient comes from the same
    # kernels on the same shapes, and a sum of eot equal gradients has their sign: the same iterates. (All copies in
    # one pass would sum in another order, and a last-bit difference can flip a near-zero sign.) The step and the
    # projection may round differently (a fused multiply-add on one side): 1e-6 covers that, not another step
    ours = attacks.build("pgd_eot", eps=EPS, steps=15, eot=eot, max_batch=40)(cnn, x, y)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)
    assert robust_count(cnn, ours, y) == robust_count(cnn, reference, y) < robust_count(cnn, x, y)


@pytest.mark.determinism
def test_batched_eot_gradient_equals_the_loop(cnn, data):
    _, _, x, y = data
    x, y = x[:10], y[:10]
    single = eot_gradient(cnn, x, y, eot=1).grad
    for max_batch in (1, 7, 10, 30, 1000):  # split by examples, by copies, and all at once
        estimate = eot_gradient(cnn, x, y, eot=3, max_batch=max_batch)
        assert torch.allclose(estimate.grad, 3 * single, rtol=1e-4, atol=1e-6), max_batch
        assert estimate.correct.shape == (3, 10) and estimate.loss.shape == (3, 10)


def test_eot_samples_are_independent_draws(noisy, data):
    _, _, x, y = data
    torch.manual_seed(0)
    estimate = eot_gradient(noisy, x[:20], y[:20], eot=4, loss="ce", max_batch=80)
    assert not torch.allclose(estimate.loss[0], estimate.loss[1])


@pytest.mark.determinism
def test_autoattack_leaves_the_callers_rng_stream_alone_and_is_reproducible(noisy, data):
    _, _, x, y = data
    x, y = x[:20], y[:20]
    attack = attacks.build("randaa", eps=EPS, apgd_steps=5, eot=2)
    after = []
    results = []
    for seed in (1, 2, 1):
        torch.manual_seed(seed)
        results.append(attack(noisy, x, y))
        after.append(torch.rand(4))
    assert torch.equal(results[0], results[2])  # the same caller seed: the same attack
    assert not torch.equal(results[0], results[1])  # another caller seed: other defence randomness
    assert not torch.equal(after[0], after[1])  # not reset to a state fixed by the attack's own seed



@pytest.mark.parametrize("name, extra_passes", [("apgd_ce", 0), ("apgd_dlr", 0), ("aa", 1)])
def test_on_a_deterministic_model_the_driver_scores_nothing_twice(cnn, data, name, extra_passes):
    """Every forward pass without a gradient is the clean scoring pass (n examples), the class-count probe (1)
    and, for APGD-T, its targets (n): APGD's candidates are judged from APGD's own passes."""
    _, _, x, y = data
    components = {"attacks": ["apgd-ce", "apgd-t"]} if name == "aa" else {}  # FAB and Square: gradient-free passes
    attack = attacks.build(name, eps=EPS, apgd_steps=10, **components)
    attack(cnn, x, y)
    counts = attack.counts
    assert counts["forward_examples"] - counts["backward_examples"] == N + 1 + extra_passes * N
