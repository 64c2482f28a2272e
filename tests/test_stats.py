"""Wilson intervals against textbook values, and the interval always holding its point estimate."""

from __future__ import annotations

import pytest

from bench.stats import wilson_interval


@pytest.mark.parametrize("successes, n, expected", [
    (0, 10, (0.0, 0.27753)),
    (5, 10, (0.23659, 0.76341)),
    (81, 100, (0.72221, 0.87485)),
])
def test_wilson_matches_reference_values(successes, n, expected):
    low, high = wilson_interval(successes, n)
    assert (low, high) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("n", [1, 7, 60, 360, 10000])
def test_interval_holds_the_estimate_at_the_extremes(n):
    for successes in (0, n):
        low, high = wilson_interval(successes, n)
        assert low <= successes / n <= high
        assert 0.0 <= low <= high <= 1.0


def test_no_examples_means_no_information():
    assert wilson_interval(0, 0) == (0.0, 1.0)
