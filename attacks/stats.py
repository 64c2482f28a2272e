"""The Wilson score interval of an accuracy: the evaluation protocol reports it with every accuracy.

Also the exact one-sided binomial tail that the attacks' statistical stopping rules use.
Comparisons of two accuracies (paired intervals, McNemar) are the harness's: bench/stats.py.
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


def binomial_upper_tail(successes: int, trials: int, p: float = 0.5) -> float:
    """P(X >= successes) for X ~ Binomial(trials, p): the exact one-sided p-value of `successes` in `trials`."""
    if trials < 0 or not 0 <= p <= 1:
        raise ValueError(f"need trials >= 0 and p in [0, 1], got trials={trials}, p={p}")
    return min(1.0, sum(math.comb(trials, k) * p**k * (1 - p) ** (trials - k)
                        for k in range(max(successes, 0), trials + 1)))
