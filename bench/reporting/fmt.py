"""How numbers look in every table: accuracies with 95% intervals and n, differences, eps values."""

from __future__ import annotations

import math

MISSING = "–"


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def accuracy(value: float | None, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if is_number(value) else MISSING


def interval(ci: tuple[float, float] | list[float] | None, digits: int = 3) -> str:
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else ""


def accuracy_ci(value: float | None, ci: tuple[float, float] | list[float] | None, n: int | None = None) -> str:
    """'0.692 [0.642, 0.737] n=360': the estimate, its 95% Wilson interval and the number of examples."""
    if not is_number(value):
        return MISSING
    parts = [accuracy(value)]
    if ci:
        parts.append(interval(ci))
    if n is not None:
        parts.append(f"n={n}")
    return " ".join(parts)


def signed(value: float, digits: int = 3) -> str:
    rounded = round(value, digits)
    return f"{0.0 if rounded == 0 else rounded:+.{digits}f}"  # never '-0.000'


def eps(value: float | None) -> str:
    """0.15 -> '0.15', 8/255 -> '8/255', 0.95 -> '0.95'."""
    if not is_number(value):
        return MISSING
    short = f"{value:g}"
    if len(short) <= 5:
        return short
    steps = value * 255
    if abs(steps - round(steps)) < 1e-6 and 0 < round(steps) <= 255:
        return f"{round(steps)}/255"
    return f"{value:.4g}"


def seconds(value: float | None) -> str:
    return f"{value:.1f}" if is_number(value) else MISSING
