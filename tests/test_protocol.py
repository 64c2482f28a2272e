"""The evaluation protocol for stochastic defences: K-draw correctness and its single / majority / worst-of-K
summaries, against exact hand-computed values and the binomial formulas for a model with a known per-draw
success rate."""

from __future__ import annotations

import math

import pytest
import torch

import attacks
from attacks.protocol import (
    merge_audits,
    randomness_audit,
    record_accuracies,
    robust_given_clean,
    score_points,
    summarise_draws,
    worst_case_over_attacks,
)
from bench.benchmarks.toys import BernoulliModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def bernoulli_inputs(rates: list[float], per_rate: int, num_classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.tensor(rates).repeat_interleave(per_rate)
    labels = torch.arange(q.numel()) % num_classes
    return torch.stack([q, labels.float()], dim=1), labels


def majority_probability(q: float, draws: int) -> float:
    """P(more than half of `draws` independent draws are correct), each correct with probability q."""
    return sum(math.comb(draws, k) * q**k * (1 - q) ** (draws - k) for k in range(draws // 2 + 1, draws + 1))


def test_summaries_of_a_hand_written_draw_matrix():
    correct = torch.tensor([[1, 1, 0, 0, 1],
                            [1, 0, 1, 0, 1],
                            [1, 1, 0, 0, 0],
                            [1, 0, 1, 0, 1]], dtype=torch.bool)  # 4 draws, 5 examples
    summary = summarise_draws(correct)
    assert summary["single"].tolist() == [1.0, 0.5, 0.5, 0.0, 0.75]
    assert summary["majority"].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]  # 2 of 4 is a tie: not a majority
    assert summary["worst"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("draws", [1, 4, 5])
def test_known_per_draw_rates_give_the_binomial_single_majority_and_worst_values(draws):
    rates, per_rate = [0.2, 0.55, 0.9], 3000
    x, y = bernoulli_inputs(rates, per_rate)
    correct = attacks.evaluate_correctness(BernoulliModel(), x, y, draws=draws, chunk_size=1000)
    assert correct.shape == (draws, x.shape[0]) and correct.dtype == torch.bool
    summary = summarise_draws(correct)
    for index, q in enumerate(rates):
        part = slice(index * per_rate, (index + 1) * per_rate)
        expected = {"single": q, "majority": majority_probability(q, draws), "worst": q**draws}
        for rule, value in expected.items():
            measured = summary[rule][part].mean().item()
            # the per-example values are independent across examples: 4.5 standard errors of their mean
            variance = q * (1 - q) / draws if rule == "single" else value * (1 - value)
            assert abs(measured - value) <= 4.5 * math.sqrt(variance / per_rate) + 1e-9, (rule, q, measured, value)


def test_draws_are_independent_forward_passes():
    x, y = bernoulli_inputs([0.5], 400)
    correct = attacks.evaluate_correctness(BernoulliModel(), x, y, draws=6)
    # identical rows would mean one draw copied K times; independent draws agree on about half the examples
    agreement = (correct[0] == correct[1:]).float().mean().item()
    assert 0.4 < agreement < 0.6


@pytest.mark.determinism
def test_deterministic_model_chunked_equals_unchunked():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    x, y = torch.rand(37, 3, 2, 2), torch.randint(0, 4, (37,))
    whole = attacks.evaluate_correctness(model, x, y, draws=2)
    chunked = attacks.evaluate_correctness(model, x, y, draws=2, chunk_size=5)
    # chunks of 5 and the whole batch of 37 may sum the logits in other orders (last bits); the decisions are
    # equal because no example's top two logits are within 1e-4 of each other, far above float32 rounding
    with torch.no_grad():
        top2 = model(x).topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-4
    assert torch.equal(whole, chunked)
    assert torch.equal(whole[0], model(x).argmax(1) == y)


def test_bad_arguments_are_clear_errors():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x, y = torch.rand(3, 1, 2, 2), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="draws must be >= 1"):
        attacks.evaluate_correctness(model, x, y, draws=0)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        attacks.evaluate_correctness(model, x, y, chunk_size=0)
    with pytest.raises(ValueError, match="2 labels"):
        attacks.evaluate_correctness(model, x, y[:2])


def test_score_points_rate_and_margin():
    logits = torch.tensor([[2.0, 0.5, 0.0], [0.0, 1.0, 3.0]])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Identity())
    rate, margin = score_points(model, logits, torch.tensor([0, 1]), draws=3)
    assert rate.tolist() == [1.0, 0.0]
    assert margin.tolist() == [-1.5, 2.0]  # best other minus true


def test_worst_case_over_attacks_is_the_per_example_minimum():
    first = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 0]], dtype=torch.bool)   # rates 1, 1, .5, .5
    second = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)  # rates 1, .5, 1, 1
    combined = worst_case_over_attacks([first, second])
    assert combined["single"].tolist() == [1.0, 0.5, 0.5, 0.5]
    assert combined["majority"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert combined["worst"].tolist() == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="different numbers of examples"):
        worst_case_over_attacks([first, second[:, :3]])


def test_worst_case_over_attacks_includes_the_clean_judgement():
    attack = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)  # rates 1, 1, 1, .5
    clean = torch.tensor([[1, 0, 1, 1], [1, 0, 0, 1]], dtype=torch.bool)   # rates 1, 0, .5, 1
    combined = worst_case_over_attacks([attack], clean=clean)
    assert combined["single"].tolist() == [1.0, 0.0, 0.5, 0.5]
    assert combined["worst"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert worst_case_over_attacks([clean, attack])["single"].tolist() == combined["single"].tolist()


def test_robust_given_clean_is_the_per_rule_minimum_with_clean():
    clean = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 1, 1]], dtype=torch.bool)   # 3 draws, 4 examples
    robust = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 1]], dtype=torch.bool)  # fresh draws, luckier
    combined = robust_given_clean(clean, robust)
    # never clean-correct: not robust, however the adversarial draws went
    assert combined["single"].tolist() == pytest.approx([0.0, 2 / 3, 2 / 3, 2 / 3])
    assert combined["majority"].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert combined["worst"].tolist() == [0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="same examples"):
        robust_given_clean(clean, robust[:, :3])


@pytest.mark.parametrize("decision", ["single", "majority", "worst"])
def test_record_accuracies_never_show_robust_above_clean(decision):
    generator = torch.Generator().manual_seed(1)
    clean = (torch.rand(200, 5, generator=generator) < 0.6).int()   # [B, draws], as records store them
    robust = (torch.rand(200, 5, generator=generator) < 0.7).int()  # raw robust often above clean
    raw = summarise_draws(robust.T.bool())[decision] > summarise_draws(clean.T.bool())[decision]
    assert bool(raw.any()), "the raw draws must contain examples that look more robust than clean"
    fields = record_accuracies(clean, robust, decision)
    assert all(r <= c for r, c in zip(fields["robust_correct"], fields["clean_correct"], strict=True))
    for rule in ("single", "majority", "worst"):
        assert fields[f"robust_acc_{rule}"] <= fields[f"clean_acc_{rule}"]
    assert fields["robust_acc"] == pytest.approx(sum(fields["robust_correct"]) / 200)
    assert fields["clean_acc"] == pytest.approx(summarise_draws(clean.T.bool())[decision].mean().item())
    low, high = fields["robust_ci"]
    assert low <= fields["robust_acc"] <= high
    with pytest.raises(ValueError, match="decision='best'"):
        record_accuracies(clean, robust, "best")


def test_randomness_audit_of_hand_written_predictions():
    clean = torch.tensor([[0, 1, 2], [0, 1, 2], [0, 2, 2], [0, 2, 1]])       # 4 draws, 3 examples
    adversarial = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 2], [1, 1, 3]])
    audit = randomness_audit(torch.nn.Identity(), clean, adversarial, torch.zeros(3, 1), torch.zeros(3, 1))
    # pairs of 4 draws: 6; example 1 splits 2-2 (4 differing pairs), example 2 splits 3-1 (3), example 3 all differ
    assert audit["clean"] == {"n": 3, "draws": 4, "pair_disagreement": pytest.approx((0 + 4 / 6 + 3 / 6) / 3),
                              "non_unanimous": pytest.approx(2 / 3)}
    assert audit["adversarial"]["pair_disagreement"] == pytest.approx((0 + 0 + 1) / 3)
    assert audit["adversarial"]["non_unanimous"] == pytest.approx(1 / 3)
    assert randomness_audit(torch.nn.Identity(), clean[:1], adversarial[:1], torch.zeros(3, 1),
                            torch.zeros(3, 1)) is None  # one draw: nothing to audit
    merged = merge_audits([audit, None, {"clean": {"n": 1, "draws": 4, "pair_disagreement": 1.0, "non_unanimous": 1.0},
                                         "adversarial": {"n": 1, "draws": 4, "pair_disagreement": 0.0,
                                                         "non_unanimous": 0.0}}])
    assert merged["clean"]["n"] == 4
    assert merged["clean"]["pair_disagreement"] == pytest.approx((3 * audit["clean"]["pair_disagreement"] + 1) / 4)
    assert merge_audits([None]) is None


def test_randomness_audit_of_a_model_with_known_disagreement():
    # BernoulliModel: right with probability q, else the next class; two draws differ with probability 2q(1-q)
    q, n, draws = 0.7, 4000, 3
    x, y = bernoulli_inputs([q], n)
    predictions = attacks.protocol.predict_draws(BernoulliModel(), x, draws)
    audit = randomness_audit(BernoulliModel(), predictions, predictions, x, x)
    assert audit["clean"]["pair_disagreement"] == pytest.approx(2 * q * (1 - q), abs=0.02)
    assert audit["clean"]["non_unanimous"] == pytest.approx(1 - q**3 - (1 - q) ** 3, abs=0.02)
