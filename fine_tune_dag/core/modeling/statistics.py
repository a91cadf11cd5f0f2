"""Uncertainty for small test sets: seeded bootstrap intervals and paired win rates.

With a few dozen test items a difference of a few points can be noise; every comparison in the
report carries a 95% interval computed by resampling the items (the same seed gives the same interval).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_mean(values: Sequence[float], samples: int = 1000, seed: int = 0, confidence: float = 0.95) -> Interval:
    """The mean with a percentile bootstrap interval."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(samples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return Interval(float(data.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail)))


def paired_outcomes(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True) -> list[float]:
    """Per item: 1 when `a` beats `b`, 0.5 on a tie, 0 when it loses."""
    sign = 1 if higher_is_better else -1
    return [1.0 if sign * (x - y) > 0 else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True)]


def win_rate(
    a: Sequence[float], b: Sequence[float], higher_is_better: bool = True, samples: int = 1000, seed: int = 0
) -> Interval:
    """How often `a` beats `b` on the same items (ties count half), with a bootstrap interval."""
    return bootstrap_mean(paired_outcomes(a, b, higher_is_better), samples, seed)
