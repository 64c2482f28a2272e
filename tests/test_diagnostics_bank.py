"""The diagnostics bank: healthy models (plain and adversarially trained linear models, MLPs and CNNs over seeds, two
stochastic ones) raise no flag at all, and each broken toy raises the flag that names how it breaks evaluation
(a noisy non-differentiable purifier: only with Square-EOT).
Models come from bench/benchmarks/diagnostic_toys.py, fitted once per session. Also the known false alarm: one
example that only Square breaks is not evidence that the black box beats the white box."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attacks
from attacks.diagnostic_evidence import Rule, paired_flag
from bench.benchmarks import diagnostic_toys as toys
from bench.benchmarks.toys import NoisyDefence, QuantisingDefence, TinyCNN, digits8, fit_classifier, toy_task

N = 80
BUDGET = {"steps": 10, "square_queries": 300, "eps_points": 2}
STOCHASTIC = {"eot": 2, "draws": 3}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def examples(data: str = "digits8", n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = toys.task_data(data, "test")
    return x[:n], y[:n]


def white_box_accuracy(report) -> float:
    return report.flags["black_box_beats_white_box"].evidence["white_box_accuracy"]


@pytest.mark.parametrize("spec", toys.HEALTHY, ids=lambda spec: spec.name)
def test_a_healthy_model_raises_no_flag(spec):
    x, y = examples(spec.data)
    report = attacks.diagnose(toys.healthy_model(spec), x, y, eps=spec.eps, **BUDGET)
    assert report.raised == [], report.summary()
    assert white_box_accuracy(report) < report.curves["eps"]["acc"][0]  # the attack does break examples


PLAIN_CNN = toys.Healthy("cnn", "digits8", False, 0, 0.05)
AT_CNN = toys.Healthy("cnn", "digits8", True, 0, 0.1)


@pytest.mark.parametrize("make", [
    lambda: NoisyDefence(toys.healthy_model(PLAIN_CNN), toy_task(), NoisyDefence.Params(sigma=0.1)),
    lambda: toys.NoisyEnsemble(toys.healthy_model(AT_CNN), "logit_mean", copies=4, sigma=0.05),
], ids=["noise-plain-cnn", "logit-mean-ensemble-at-cnn"])
def test_a_healthy_stochastic_model_raises_no_flag(make):
    x, y = examples()
    report = attacks.diagnose(make().eval(), x, y, eps=0.1, **BUDGET, **STOCHASTIC)
    assert report.stochastic and report.raised == [], report.summary()


def test_the_known_false_alarm_one_point_only_square_breaks_is_not_evidence():
    """A plain CNN (8 channels) on the easy prototype task, 128 examples, eps 0.05, the default budget: the white-box
    attack breaks far more examples than Square. The old rule raised `black_box_beats_white_box` on a single example
    only Square broke; the sign test weighs it against the examples only the white box broke."""
    spec = toys.Healthy("cnn", "prototypes", False, 3, 0.05)
    x, y = examples("prototypes", 128)
    report = attacks.diagnose(toys.healthy_model(spec), x, y, eps=0.05)
    flag = report.flags["black_box_beats_white_box"]
    assert not flag.raised, report.summary()
    counts = flag.evidence["counts"]
    assert counts["white_box_only"] > 10 * max(counts["black_box_only"], 1)
    assert flag.evidence["p_value"] > 0.5 and flag.evidence["alpha"] == 0.01
    assert report.raised == [], report.summary()


def test_the_sign_test_decides_black_box_flags_by_counts():
    rule = Rule(alpha=0.01, min_count=5)

    def decide(black_only: int, white_only: int) -> bool:
        more = torch.tensor([True] * black_only + [False] * white_only)
        return paired_flag(rule, "t", more, ~more, "black_box_only", "white_box_only")[0]

    assert not decide(1, 0) and not decide(1, 62)  # the false alarm: one point is not evidence
    assert not decide(6, 0)   # 0.5^6 = 0.016 >= alpha
    assert decide(7, 0)       # 0.5^7 = 0.0078 < alpha
    assert not decide(12, 6)  # P(X >= 12 | 18, 1/2) = 0.12
    assert decide(20, 3)


# --- broken toys ------------------------------------------------------------------------------------------

def fit_through(transform, seed: int = 0, model: nn.Module | None = None) -> nn.Module:
    """A TinyCNN trained on digits8 through `transform` (the defence it will sit behind)."""
    train_x, train_y = digits8("train")
    torch.manual_seed(seed)
    return fit_classifier(model or TinyCNN(), train_x, train_y, epochs=10, seed=seed, transform=transform)


def behind(defence_class, params) -> nn.Module:
    """`defence_class` around a TinyCNN trained through its purifier."""
    defence = defence_class(TinyCNN(), toy_task(), params)
    fit_through(defence.purify, model=defence.classifier)
    return defence.eval()


def test_quantised_input_is_flagged_for_zero_gradients():
    """Rounding the pixels to 5 levels has derivative 0 everywhere, yet the model's output changes within the
    eps-ball (a pixel near a rounding threshold moves to the next level): every input gradient is exactly zero on
    a model that is not flat, which is what `zero_or_nonfinite_gradients` names. PGD then cannot move at all,
    so its accuracy stays at the clean one even at eps 0.95."""
    defence = behind(QuantisingDefence, QuantisingDefence.Params(levels=5))
    x, y = examples()
    report = attacks.diagnose(defence, x, y, eps=0.15, **BUDGET)
    flag = report.flags["zero_or_nonfinite_gradients"]
    assert flag.raised and flag.evidence["counts"]["evidence"] == flag.evidence["counts"]["zero_margin_gradient"] == N
    assert report.flags["not_below_chance_at_large_eps"].raised


def test_saturated_logits_are_flagged_for_ce_masking():
    """log_softmax(1e5 * logits) predicts what the classifier predicts, but its softmax is saturated: cross-entropy
    is exactly 0 with an exactly zero gradient on every confident point, while the margin loss sees the slope
    (scaled by 1e5). The CE attack fails where the margin attack succeeds, on the same examples and budget:
    `loss_masking_ce_vs_margin` with CE the masked loss is the right name (the zero CE gradients are the cause)."""
    x, y = examples()
    report = attacks.diagnose(toys.ScaledLogits(toys.healthy_model(AT_CNN)).eval(), x, y, eps=0.1, **BUDGET)
    flag = report.flags["loss_masking_ce_vs_margin"]
    assert flag.raised and flag.evidence["masked_loss"] == "ce", flag.evidence
    assert flag.evidence["counts"]["only_ce_breaks"] == 0
    gradients = report.flags["zero_or_nonfinite_gradients"].evidence["counts"]
    assert gradients["zero_ce_gradient"] > N // 2 and gradients["zero_margin_gradient"] == 0


def test_noise_with_a_majority_vote_is_flagged_for_zero_gradients():
    """A hard vote over noisy copies outputs vote shares: piecewise constant in the input, so no gradient reaches
    it (exactly zero), although the shares change within the eps-ball and from pass to pass. Gradient attacks
    with any number of EOT samples stay where they start: `zero_or_nonfinite_gradients`."""
    sigma = 0.3
    vote = toys.NoisyVote(fit_through(lambda v: v + sigma * torch.randn_like(v)), sigma=sigma).eval()
    x, y = examples()
    report = attacks.diagnose(vote, x, y, eps=0.1, **BUDGET, **STOCHASTIC)
    flag = report.flags["zero_or_nonfinite_gradients"]
    assert flag.raised and flag.evidence["counts"]["zero_margin_gradient"] == N, flag.evidence
    assert flag.evidence["fraction"] > 0.3


def test_a_non_differentiable_purifier_is_flagged_black_box_beats_white_box():
    """Feature squeezing (bit-depth reduction to 4 levels, then a 3x3 median) behind purify/classify: the gradient
    through the purifier is zero, so the white-box attack breaks nothing beyond the clean errors, while Square,
    which never asks for a gradient, breaks many of the same examples: `black_box_beats_white_box` is the flag
    that says the white-box number cannot be trusted (zero gradients are its cause, and are flagged too)."""
    defence = behind(toys.SqueezingDefence, toys.SqueezingDefence.Params(levels=4))
    x, y = examples()
    report = attacks.diagnose(defence, x, y, eps=0.15, **BUDGET)
    flag = report.flags["black_box_beats_white_box"]
    assert flag.raised and flag.evidence["counts"]["white_box_only"] == 0, flag.evidence
    assert flag.evidence["counts"]["black_box_only"] >= 10
    assert report.flags["zero_or_nonfinite_gradients"].raised


def test_a_noisy_non_differentiable_purifier_is_flagged_by_square_with_eot():
    """Noise then feature squeezing: the white-box attack gets zero gradients, and plain Square, which judges each
    query by one noisy pass, is misled by the noise. Square-EOT (the diagnostics' default on stochastic models:
    each query judged by the mean margin of 4 draws, the same forward budget) breaks far more, and the flag is
    raised (measured: plain Square 0.76 black-box accuracy, not significant; Square-EOT 0.36, 42 examples against
    1)."""
    defence = behind(toys.NoisySqueezingDefence, toys.NoisySqueezingDefence.Params(levels=4, sigma=0.1))
    x, y = examples()
    report = attacks.diagnose(defence, x, y, eps=0.15, **BUDGET, **STOCHASTIC)
    flag = report.flags["black_box_beats_white_box"]
    assert report.budget["square_eot"] == 4 and flag.evidence["square_eot"] == 4
    assert flag.raised and flag.evidence["counts"]["black_box_only"] >= 20, flag.evidence
    torch.manual_seed(0)
    plain = attacks.diagnose(defence, x, y, eps=0.15, **BUDGET, **STOCHASTIC, square_eot=1)
    plain_accuracy = plain.flags["black_box_beats_white_box"].evidence["black_box_accuracy"]
    assert plain_accuracy > flag.evidence["black_box_accuracy"] + 0.15, (plain_accuracy, flag.evidence)


def test_double_exponential_aggregation_is_flagged_for_ce_masking():
    """CARSO's double exponential over noisy copies turns a few units of logit into an extremely peaked
    distribution: cross-entropy saturates (zero gradient on most points) while the margin of the aggregated
    log-probabilities still has a slope. Same examples, budget and EOT: the CE attack leaves accuracy far higher,
    which is `loss_masking_ce_vs_margin` with CE masked."""
    x, y = examples()
    model = toys.DoubleExpEnsemble(toys.healthy_model(PLAIN_CNN)).eval()
    report = attacks.diagnose(model, x, y, eps=0.1, **BUDGET, **STOCHASTIC)
    flag = report.flags["loss_masking_ce_vs_margin"]
    assert flag.raised and flag.evidence["masked_loss"] == "ce", flag.evidence
    assert flag.evidence["p_value"] < flag.evidence["alpha"] and flag.evidence["intervals_disjoint"]
