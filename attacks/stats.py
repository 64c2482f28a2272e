"""The Wilson score interval of an accuracy (the evaluation protocol reports it with every accuracy) and the exact
binomial tests that the diagnostics (attacks/diagnostics.py) and the report's paired comparisons decide by:
`binomial_upper_tail` (one-sided test against a rate), `sign_test` (one-sided, discordant pairs) and
`mcnemar_exact` (two-sided, discordant pairs).

Paired intervals and spreads over seeds are the harness's: bench/stats.py.
"""

from __future__ import annotations

import math

Z_95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (95% by default).

    `successes` may be fractional (a mean over several stochastic draws times n); the interval then
    treats it as n Bernoulli trials at that rate, which is what a reader of the table assumes.
    """
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # floating-point rounding can put the bound a hair inside p at p = 0 or 1: the interval always holds p
    return (max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p)))


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact up to floating point (terms summed in log space, so n may be large).

    The one-sided exact binomial test: the p-value of k successes in n trials against the null rate p.
    """
    if n < 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"need n >= 0 and p in [0, 1], got n={n}, p={p}")
    if k <= 0:
        return 1.0
    if k > n or p == 0.0:
        return 0.0
    if p == 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def sign_test(more: int, fewer: int) -> float:
    """One-sided exact sign test on discordant pairs: P(X >= more), X ~ Binomial(more + fewer, 1/2).

    Small when `more` (say, the examples only the black-box attack breaks) clearly outnumber `fewer` (those only
    the white-box attack breaks); exact integer arithmetic.
    """
    more, fewer = int(more), int(fewer)
    if more < 0 or fewer < 0:
        raise ValueError(f"discordant counts must be >= 0, got {more} and {fewer}")
    n = more + fewer
    return sum(math.comb(n, i) for i in range(more, n + 1)) / 2**n if more else 1.0


def mcnemar_exact(first_only: int, second_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (first right / second wrong, and vice versa).

    Under the null both kinds of discordant pair are equally likely: P = min(1, 2 P(X <= min(b, c))) with
    X ~ Binomial(b + c, 1/2), the same as scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue.
    """
    b, c = int(first_only), int(second_only)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b} and {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)
