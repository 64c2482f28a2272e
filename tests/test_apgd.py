"""The harness's APGD (attacks.apgd) against pyautoattack's, and its batched EOT against the EOT loop.

On deterministic models (a small CNN and a 10-class linear model on 8x8 digits) the same seed must give
pyautoattack's iterates exactly: the highest-loss point, the last misclassified point and the best loss, for
CE, DLR and targeted DLR under Linf and L2. Dropping misclassified points early must not change the other
points' iterates. Batched EOT must give the loop's iterates on a deterministic model and the loop's statistics
on a stochastic one.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from attacks.apgd import APGD, checkpoint_lengths, eot_estimate
from bench.benchmarks.toys import LinearClassifier, NoisyDefence, TinyCNN, fit_classifier, toy_task

N = 100
EPS = {"Linf": 0.1, "L2": 0.8}
STEPS = 25

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.determinism]


@pytest.fixture(scope="module")
def data(digits8_data):
    train_x, train_y, test_x, test_y = digits8_data
    return train_x, train_y, test_x[:N], test_y[:N]


@pytest.fixture(scope="module")
def models(data, digits8_cnn, one_torch_thread):
    torch.manual_seed(1)
    linear = LinearClassifier(torch.zeros(10, 64), torch.zeros(10))
    fit_classifier(linear, data[0], data[1], epochs=10, seed=0)
    return {"cnn": digits8_cnn, "linear": linear}


@pytest.fixture(scope="module")
def noisy(data, one_torch_thread):
    torch.manual_seed(0)
    defence = NoisyDefence(TinyCNN(), toy_task(), NoisyDefence.Params(sigma=0.3))
    fit_classifier(defence.classifier, data[0], data[1], epochs=5, seed=0, transform=defence.purify)
    return defence.eval()


def reference_run(model, x, y, norm, loss, eot=1, y_target=None):
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    if loss == "dlr-targeted":
        reference = APGDAttack_targeted(model, n_iter=STEPS, norm=norm, eps=EPS[norm], eot_iter=eot, device="cpu")
        reference.y_target = y_target
    else:
        reference = APGDAttack(model, n_iter=STEPS, norm=norm, eps=EPS[norm], loss=loss, eot_iter=eot, device="cpu")
    reference.init_hyperparam(x)
    torch.manual_seed(0)
    with warnings.catch_warnings():  # pyautoattack warns about points with zero DLR gradient
        warnings.simplefilter("ignore")
        return reference.attack_single_run(x, y)


def targets_for(model, x):
    with torch.no_grad():
        return model(x).sort(dim=1)[1][:, -2]


@pytest.mark.parametrize("model_name", ["cnn", "linear"])
@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("loss", ["ce", "dlr", "dlr-targeted"])
def test_same_iterates_as_pyautoattack(models, data, model_name, norm, loss):
    model = models[model_name]
    _, _, x, y = data
    y_target = targets_for(model, x) if loss == "dlr-targeted" else None
    highest, still_correct, best_loss, last_wrong = reference_run(model, x, y, norm, loss, y_target=y_target)
    torch.manual_seed(0)
    ours = APGD(eps=EPS[norm], norm=norm, steps=STEPS, loss=loss).run(model, x, y, y_target)
    assert torch.equal(ours.highest_loss.x, highest)
    assert torch.equal(ours.least_correct.x, last_wrong)
    assert torch.equal(ours.best_loss, best_loss)
    assert torch.equal(ours.least_correct.correct_rate > 0, still_correct)
    assert 5 < int(still_correct.sum()) < N - 5  # neither everything nor nothing broken: a real comparison


def test_dropping_misclassified_points_changes_no_other_iterate(models, data):
    # float64: dropping points shrinks the batch, and in float32 a convolution's result depends on the batch size
    # in the last bits (which APGD's loss comparisons can amplify); the iterates agree up to rounding
    _, _, x, y = data
    x, model = x.double(), copy.deepcopy(models["cnn"]).double()
    torch.manual_seed(0)
    full = APGD(eps=0.1, steps=STEPS).run(model, x, y)
    torch.manual_seed(0)
    early = APGD(eps=0.1, steps=STEPS, stop_when_misclassified=True).run(model, x, y)
    robust = full.least_correct.correct_rate > 0
    assert torch.equal(early.least_correct.correct_rate > 0, robust)
    assert 5 < int(robust.sum()) < N - 5  # points of both kinds
    torch.testing.assert_close(early.highest_loss.x[robust], full.highest_loss.x[robust], atol=1e-12, rtol=0)
    broken = ~robust
    with torch.no_grad():  # a dropped point's candidate is misclassified, and its recorded margin is its own
        logits = model(early.least_correct.x[broken])
    assert (logits.argmax(1) != y[broken]).all()
    assert (early.least_correct.margin[broken] > 0).all()


def test_eot_on_a_deterministic_model_matches_pyautoattacks_eot_loop(models, data):
    _, _, x, y = data
    model = models["cnn"]
    highest, still_correct, best_loss, last_wrong = reference_run(model, x, y, "Linf", "ce", eot=3)
    torch.manual_seed(0)
    # max_batch = N: one copy per pass, each pass the reference's batch of N, so both run the same kernels on the
    # same shapes and their gradient sums agree bit for bit (3N stacked copies would sum in another order)
    ours = APGD(eps=0.1, steps=STEPS, eot=3, max_batch=N).run(model, x, y)
    assert torch.equal(ours.highest_loss.x, highest)
    assert torch.equal(ours.least_correct.x, last_wrong)
    assert torch.equal(ours.least_correct.correct_rate > 0, still_correct)
    # our loss is the running mean of the three copies' equal losses, exactly l; the reference keeps the last copy's
    assert torch.equal(ours.best_loss, best_loss)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_batched_eot_gives_the_loops_iterates_on_a_deterministic_model(models, data, norm):
    # float64: in float32 a convolution's result depends on the batch size in the last bits, and APGD's loss
    # comparisons (a new best loss?) amplify such bits into other iterates; batching itself changes nothing
    _, _, x, y = data
    x, y = x[:30].double(), y[:30]
    model = copy.deepcopy(models["cnn"]).double()
    runs = []
    for max_batch in (30, 7, 90):  # the loop (one copy per pass), split by examples, all copies at once
        torch.manual_seed(0)
        runs.append(APGD(eps=EPS[norm], norm=norm, steps=STEPS, eot=3, max_batch=max_batch).run(model, x, y))
    for run in runs[1:]:
        # sums of three equal gradients in another order: equal up to rounding
        assert torch.allclose(run.highest_loss.x, runs[0].highest_loss.x, atol=1e-12, rtol=0)
        assert torch.allclose(run.best_loss, runs[0].best_loss, atol=1e-10, rtol=0)
        assert torch.equal(run.least_correct.correct_rate, runs[0].least_correct.correct_rate)


def test_batched_eot_gives_the_loops_statistics_on_a_stochastic_model(noisy, data):
    _, _, x, y = data
    x, y = x[:20], y[:20]
    torch.manual_seed(0)
    looped = eot_estimate(noisy, x, y, eot=400, loss="ce", max_batch=20)
    batched = eot_estimate(noisy, x, y, eot=400, loss="ce", max_batch=8000)
    # each per-example rate is a mean of 400 draws: standard error <= 0.025, so 0.03 on the mean of 20
    assert (looped.correct_rate - batched.correct_rate).abs().mean() < 0.03
    assert 0.2 < looped.correct_rate.mean() < 0.95  # the noise makes the points uncertain, so the test can fail
    cosine = torch.nn.functional.cosine_similarity(looped.grad.flatten(1), batched.grad.flatten(1)).mean()
    assert cosine > 0.8
    torch.manual_seed(0)
    one_pass = eot_estimate(noisy, x.repeat(2, 1, 1, 1), y.repeat(2), eot=1, loss="ce")
    assert not torch.equal(one_pass.loss[:20], one_pass.loss[20:])  # copies in one pass draw their own noise


def test_checkpoints_follow_the_paper():
    # p_0 = 0, p_1 = 0.22, p_j+1 = p_j + max(p_j - p_j-1 - 0.03, 0.06): intervals of 22, 19, 16, ... down to 6 steps
    assert checkpoint_lengths(100) == (22, 3, 6)
    assert checkpoint_lengths(10) == (2, 1, 1)


@pytest.mark.parametrize("bad", [{"norm": "L0"}, {"l1_schedule": True}, {"loss": "margin"}, {"steps": 0},
                                 {"max_batch": 0}])
def test_bad_settings_are_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        APGD(eps=0.1, **bad)
