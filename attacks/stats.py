"""The Wilson score interval of an accuracy: the evaluation protocol reports it with every accuracy.

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
