"""The speed benchmark's bookkeeping: paired ratios, their median and range, the warm-up, the alternating order, and
the arithmetic (FLOP) ratio its CARSO rows report as their floor."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.benchmarks.speed import Row, Timing, arithmetic_ratio, digits_carso, main, measure, summary


def test_summary_is_the_median_of_paired_ratios_with_their_range():
    pairs = [(Timing(wall=2.0, cpu=1.0), Timing(wall=1.0, cpu=1.0)),
             (Timing(wall=9.0, cpu=3.0), Timing(wall=3.0, cpu=2.0)),
             (Timing(wall=1.0, cpu=2.0), Timing(wall=4.0, cpu=4.0))]
    harness, reference, ratio, spread = summary(pairs, "cpu")
    assert (harness, reference) == (2.0, 2.0)
    assert ratio == pytest.approx(1.0)  # ratios 1.0, 1.5, 0.5: the median pair, not median / median
    assert spread == "0.50-1.50"
    assert summary(pairs, "wall")[2] == pytest.approx(2.0)  # wall ratios 2.0, 3.0, 0.25


def test_measure_warms_up_then_alternates_which_side_runs_first_and_keeps_the_pairs_apart():
    calls: list[str] = []
    row = Row("row", harness=lambda: calls.append("harness"), reference=lambda: calls.append("reference"))
    times = measure([row], repeats=3, sync=lambda: None)
    warm_up = ["harness", "reference"]  # once each, untimed
    assert calls == warm_up + ["harness", "reference", "reference", "harness", "harness", "reference"]
    assert len(times["row"]) == 3 and all(isinstance(t, Timing) for pair in times["row"] for t in pair)


def test_arithmetic_ratio_counts_the_flops_of_each_forward():
    x = torch.rand(5, 64)
    narrow, wide = nn.Linear(64, 10), nn.Linear(64, 30)
    twice = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    assert arithmetic_ratio(wide, narrow, x) == pytest.approx(3.0)  # 2 * B * 64 * 30 vs 2 * B * 64 * 10
    assert arithmetic_ratio(twice, narrow, x) == pytest.approx((64 * 64 + 64 * 10) / (64 * 10))


def test_carso_arithmetic_is_at_least_its_classifier_passes():
    """CARSO's forward classifies N reconstructions and captures the representation with one more classifier
    pass, so its FLOPs are at least (N + 1) classifier forwards; the purifier's compressors and decoder add more."""
    carso, classifier = digits_carso(torch.device("cpu"), samples=4)
    ratio = arithmetic_ratio(carso, classifier, torch.rand(3, 1, 32, 32))
    assert 4 + 1 < ratio < 4 + 1 + 6


def test_a_negative_paper_batch_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--carso-paper-batch", "-5"])
    assert exit_info.value.code == 2
    assert "--carso-paper-batch must be >= 0 (0 skips that row), got -5" in capsys.readouterr().err
