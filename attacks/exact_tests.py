"""Exact binomial tests, for the diagnostics' flags (attacks/diagnostic_evidence.py) and the report's paired
comparisons (bench/stats.py, bench/reporting/headline.py): `binomial_upper_tail` (one-sided test against a rate),
`sign_test` (one-sided, on discordant pairs), `mcnemar_exact` (two-sided, on discordant pairs) and
`fisher_greater` (one-sided, two rates of K draws each).

Kept apart from attacks/stats.py, which the evaluation protocol imports: this module is outside every result's
code fingerprint (bench/fingerprint.py), so changing a test never invalidates a result.
"""

from __future__ import annotations

import math


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


def fisher_greater(first: int, first_n: int, second: int, second_n: int) -> float:
    """One-sided Fisher exact test that the first rate (`first` of `first_n`) exceeds the second (`second` of
    `second_n`): P(X >= first) for X hypergeometric, the first group's share of the first + second successes.

    Valid under the null of equal rates whatever that rate is (conditioning on the total removes it); exact
    integer arithmetic.
    """
    if not (0 <= first <= first_n and 0 <= second <= second_n):
        raise ValueError(f"need 0 <= successes <= trials, got {first}/{first_n} and {second}/{second_n}")
    total = first + second
    tail = sum(math.comb(first_n, k) * math.comb(second_n, total - k)
               for k in range(first, min(first_n, total) + 1) if total - k <= second_n)
    return tail / math.comb(first_n + second_n, total)
