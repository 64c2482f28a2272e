"""Wilson intervals, Newcombe paired intervals, exact McNemar p-values and the exact binomial tests against published
and scipy values."""

from __future__ import annotations

import pytest

from attacks.exact_tests import binomial_upper_tail, sign_test
from attacks.stats import wilson_interval
from bench.stats import mcnemar_exact, newcombe_paired_interval, paired_comparison, spread


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


# Newcombe (1998), Statistics in Medicine 17:2635, Table II, method 10, for the four example tables (a, b, c, d)
@pytest.mark.parametrize("table, expected", [
    ((36, 12, 2, 0), (0.0569, 0.3404)),
    ((263, 21, 15, 3), (-0.0199, 0.0603)),
    ((2, 1, 1, 8), (-0.2348, 0.2348)),
    ((0, 0, 0, 20), (-0.1611, 0.1611)),
])
def test_newcombe_paired_interval_matches_the_papers_table(table, expected):
    assert newcombe_paired_interval(*table) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("b, c", [(0, 0), (0, 5), (3, 9), (12, 2), (40, 55), (1, 1)])
def test_mcnemar_exact_is_scipys_two_sided_binomial_test(b, c):
    from scipy.stats import binomtest

    expected = 1.0 if b + c == 0 else binomtest(min(b, c), b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def test_paired_comparison_of_zero_one_vectors_counts_the_table():
    first = [1, 1, 1, 1, 0, 0, 1, 0, 1, 1]
    second = [1, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    result = paired_comparison(first, second)
    assert (result.both, result.first_only, result.second_only, result.neither) == (2, 5, 0, 3)
    assert result.exact and result.n == 10
    assert result.difference == pytest.approx(0.5)
    assert result.p_value == pytest.approx(2 * 0.5**5)        # all 5 discordant pairs one way: 2 / 32
    assert result.ci == pytest.approx(newcombe_paired_interval(2, 5, 0, 3))
    assert result.ci[0] > 0                                    # the interval excludes no difference


def test_paired_comparison_of_rates_uses_expected_counts():
    # an example right half the time against one always right: 0.5 expected 'second only' pairs
    result = paired_comparison([0.5, 1.0], [1.0, 1.0])
    assert (result.both, result.first_only, result.second_only, result.neither) == (1.5, 0.0, 0.5, 0.0)
    assert not result.exact and result.difference == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="same examples"):
        paired_comparison([1.0], [1.0, 0.0])


def test_spread_over_seeds():
    result = spread([0.5, 0.7, 0.6])
    assert (result.mean, result.low, result.high) == pytest.approx((0.6, 0.5, 0.7))
    assert result.sd == pytest.approx(0.1)
    assert spread([0.3]).sd == 0.0


@pytest.mark.parametrize(("k", "n", "p"), [(3, 10, 0.1), (0, 5, 0.3), (13, 128, 0.1), (50, 100, 0.5),
                                           (700, 2000, 0.3), (10, 10, 0.5), (11, 10, 0.5), (1, 4, 0.0)])
def test_binomial_upper_tail_is_the_exact_one_sided_binomial_test(k, n, p):
    binomtest = pytest.importorskip("scipy.stats").binomtest
    expected = binomtest(k, n, p, alternative="greater").pvalue if 0 <= k <= n else 0.0
    assert binomial_upper_tail(k, n, p) == pytest.approx(expected, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(("more", "fewer"), [(0, 0), (1, 0), (7, 0), (1, 62), (12, 6), (20, 3)])
def test_sign_test_is_the_one_sided_binomial_test_at_one_half(more, fewer):
    binomtest = pytest.importorskip("scipy.stats").binomtest
    expected = binomtest(more, more + fewer, 0.5, alternative="greater").pvalue if more + fewer else 1.0
    assert sign_test(more, fewer) == pytest.approx(expected, rel=1e-12)
    assert sign_test(7, 0) == 0.5**7 and sign_test(0, 5) == 1.0
