"""Uncertainty on held-out notes: one clustered bootstrap for every interval the report, the registry and the
gate show.

Passages and Q&A items of one note are not independent (same subject, same day, same mood), so resampling
items treats four notes as if they were forty and every interval comes out too narrow. The unit resampled is
the note: a bootstrap draw takes notes with replacement and keeps all of each drawn note's items. Two
contenders scored on the same items are compared *paired*: the statistic is their per-item difference, so
what the items share cancels. A statistic is a ratio of sums (a token-weighted NLL, a mean, a share), so one
routine serves all of them. The same seed gives the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

SAMPLES = 2000
# With fewer notes a bootstrap has nothing to resample: its interval would be the point itself.
MIN_CLUSTERS = 2


@dataclass(frozen=True)
class Interval:
    """A point estimate, its 95% interval, and how many notes (clusters) and items it rests on."""

    value: float
    low: float
    high: float
    notes: int = 0
    items: int = 0

    def __str__(self) -> str:
        if math.isnan(self.value):
            return "—"
        if math.isnan(self.low):
            return f"{self.value:.3f} [no interval: {self.notes} note{'s' * (self.notes != 1)}]"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    @property
    def decided(self) -> bool:
        """Whether there is an interval at all (enough notes to resample)."""
        return not (math.isnan(self.low) or math.isnan(self.high))

    def below(self, threshold: float = 0.0) -> bool:
        """The whole interval below `threshold`: beyond noise, not on the point estimate."""
        return self.decided and self.high < threshold

    def above(self, threshold: float = 0.0) -> bool:
        return self.decided and self.low > threshold

    @property
    def counts(self) -> str:
        return f"{self.notes} notes, {self.items} items"


NO_ITEMS = Interval(math.nan, math.nan, math.nan)


def clustered_ratio(
    numerators: Sequence[float],
    denominators: Sequence[float],
    clusters: Sequence[Hashable],
    samples: int = SAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """sum(numerators) / sum(denominators) with a percentile bootstrap interval that resamples clusters.

    A draw takes as many clusters as there are, with replacement (a multinomial count per cluster), and sums
    their items: the per-cluster sums are all a draw needs, so thousands of draws cost a matrix product."""
    top = np.asarray(numerators, dtype=float)
    bottom = np.asarray(denominators, dtype=float)
    if top.size == 0:
        return NO_ITEMS
    if not (top.size == bottom.size == len(clusters)):
        raise ValueError(f"{top.size} numerators, {bottom.size} denominators and {len(clusters)} clusters differ")
    index, labels = pd.factorize(pd.Series(list(clusters), dtype=object))
    count = len(labels)
    top_sums = np.bincount(index, weights=top, minlength=count)
    bottom_sums = np.bincount(index, weights=bottom, minlength=count)
    value = float(top.sum() / bottom.sum()) if bottom.sum() else math.nan
    if count < MIN_CLUSTERS or math.isnan(value):
        return Interval(value, math.nan, math.nan, count, int(top.size))
    rng = np.random.default_rng(seed)
    drawn = rng.multinomial(count, np.full(count, 1.0 / count), size=samples)
    statistics = (drawn @ top_sums) / np.maximum(drawn @ bottom_sums, np.finfo(float).tiny)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(statistics, [tail, 100 - tail])
    return Interval(value, float(low), float(high), count, int(top.size))


def clustered_mean(
    values: Sequence[float], clusters: Sequence[Hashable], samples: int = SAMPLES, seed: int = 0
) -> Interval:
    """The mean over items (a share, for 0/1 values), its interval resampling clusters."""
    return clustered_ratio(values, np.ones(len(values)), clusters, samples, seed)


def paired_difference(
    mine: Sequence[float],
    theirs: Sequence[float],
    clusters: Sequence[Hashable],
    weights: Sequence[float] | None = None,
    samples: int = SAMPLES,
    seed: int = 0,
) -> Interval:
    """sum(mine − theirs) / sum(weights) over the same items (weights: tokens, for a per-token NLL gap; else
    one per item), resampling clusters: negative means `mine` is lower."""
    difference = np.asarray(mine, dtype=float) - np.asarray(theirs, dtype=float)
    per = np.ones(len(difference)) if weights is None else np.asarray(weights, dtype=float)
    return clustered_ratio(difference, per, clusters, samples, seed)


def paired_outcomes(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True) -> list[float]:
    """Per item: 1 when `a` beats `b`, 0.5 on a tie, 0 when it loses."""
    sign = 1 if higher_is_better else -1
    return [1.0 if sign * (x - y) > 0 else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True)]


def win_rate(
    a: Sequence[float],
    b: Sequence[float],
    clusters: Sequence[Hashable],
    higher_is_better: bool = True,
    samples: int = SAMPLES,
    seed: int = 0,
) -> Interval:
    """How often `a` beats `b` on the same items (ties count half), resampling clusters."""
    return clustered_mean(paired_outcomes(a, b, higher_is_better), clusters, samples, seed)
