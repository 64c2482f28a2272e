"""Confidence intervals and tests for accuracies: paired differences and spread across seeds.

- `wilson_interval` (one accuracy) lives in attacks/stats.py, `mcnemar_exact` in attacks/exact_tests.py, where the
  evaluation protocol and the diagnostics need them (imported here for the report).
- `paired_comparison`: two classifiers (defences, attacks) judged on the SAME examples: the difference of their
  accuracies with Newcombe's hybrid-score interval for paired proportions (Newcombe 1998, "Improved confidence
  intervals for the difference between binomial proportions based on paired data", Statistics in Medicine
  17:2635-2650, method 10: Wilson intervals of the two marginals combined with the phi correlation of the 2x2
  table, no continuity correction) and the exact McNemar p-value (two-sided binomial test of the discordant
  pairs at p = 1/2).
- `spread`: mean, standard deviation and range of one number over several seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from attacks.exact_tests import mcnemar_exact
from attacks.stats import Z_95, wilson_interval


def newcombe_paired_interval(both: float, first_only: float, second_only: float, neither: float,
                             z: float = Z_95) -> tuple[float, float]:
    """Newcombe's method 10 interval for p1 - p2 from a paired 2x2 table (counts may be fractional).

    p1 = (both + first_only) / n, p2 = (both + second_only) / n; each has its Wilson interval (l, u) and
    L = D - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2), U likewise with the other halves,
    where phi is the correlation of the 2x2 table (0 when a margin is empty).
    """
    n = round(both + first_only + second_only + neither)
    if n <= 0:
        return (-1.0, 1.0)
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    l1, u1 = wilson_interval(both + first_only, n, z)
    l2, u2 = wilson_interval(both + second_only, n, z)
    margins = (both + first_only) * (second_only + neither) * (both + second_only) * (first_only + neither)
    phi = (both * neither - first_only * second_only) / math.sqrt(margins) if margins > 0 else 0.0
    difference = p1 - p2
    lower = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return (max(-1.0, difference - lower), min(1.0, difference + upper))


@dataclass(frozen=True)
class PairedComparison:
    """First minus second accuracy on the same n examples, its 95% interval and the McNemar p-value.

    `both`, `first_only`, `second_only`, `neither` form the 2x2 table; they are expected counts (fractional)
    when the inputs are per-example rates, and the p-value then uses the discordant counts rounded.
    """

    n: int
    first_acc: float
    second_acc: float
    both: float
    first_only: float
    second_only: float
    neither: float
    ci: tuple[float, float]
    p_value: float
    exact: bool  # every input was 0 or 1: the table holds counts and the p-value is exact

    @property
    def difference(self) -> float:
        return self.first_acc - self.second_acc


def paired_comparison(first: Sequence[float], second: Sequence[float]) -> PairedComparison:
    """Compare two per-example correctness vectors over the same examples (values in [0, 1]).

    0/1 values (deterministic defences, majority or worst-of-K decisions) give the usual paired table. A
    fractional value is an example's rate of correct single draws; the table then holds the expected counts
    for one independent draw of each per example (sum of x(1-y) etc.), which reduces to the counts for 0/1.
    """
    if len(first) != len(second):
        raise ValueError(f"paired comparison needs the same examples: {len(first)} vs {len(second)} values")
    if not first:
        raise ValueError("paired comparison of no examples")
    if any(not 0.0 <= v <= 1.0 for v in (*first, *second)):
        raise ValueError("per-example correctness must lie in [0, 1]")
    both = sum(x * y for x, y in zip(first, second, strict=True))
    first_only = sum(x * (1 - y) for x, y in zip(first, second, strict=True))
    second_only = sum((1 - x) * y for x, y in zip(first, second, strict=True))
    neither = sum((1 - x) * (1 - y) for x, y in zip(first, second, strict=True))
    exact = all(v in (0.0, 1.0) for v in (*first, *second))
    n = len(first)
    return PairedComparison(
        n=n, first_acc=sum(first) / n, second_acc=sum(second) / n, both=both, first_only=first_only,
        second_only=second_only, neither=neither, ci=newcombe_paired_interval(both, first_only, second_only, neither),
        p_value=mcnemar_exact(round(first_only), round(second_only)), exact=exact)


@dataclass(frozen=True)
class Spread:
    """One number over several seeds: mean, sample standard deviation (0 for one seed), min and max."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)


def spread(values: Sequence[float]) -> Spread:
    if not values:
        raise ValueError("spread of no values")
    return Spread(tuple(float(v) for v in values))
