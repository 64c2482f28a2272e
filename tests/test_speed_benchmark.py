"""The speed benchmark's bookkeeping: paired ratios, their median and range, the warm-up, the alternating order."""

from __future__ import annotations

import pytest

from bench.benchmarks.speed import Row, Timing, measure, summary


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
