"""Evaluation statistics shared by experiments: success rates with Wilson intervals."""
from __future__ import annotations

import math


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple:
    """The Wilson score interval (95% by default) of k successes in n trials."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def rate_cell(k: int, n: int) -> str:
    """'k/n = p% [lo%, hi%]' for tables."""
    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} = {k / max(n, 1):.0%} [{lo:.0%}, {hi:.0%}]"
