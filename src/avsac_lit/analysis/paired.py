"""Paired comparisons over seeds, and the verdict on a claim of the paper.

Two rows of a table that were run with the same seeds are compared seed by seed: the differences
d_i = ours_i - other_i remove what a seed does to both (its data order, its initial weights), so
their spread is the comparison's own noise. The 95 % confidence interval of their mean uses the t
distribution with n - 1 degrees of freedom (the seeds are few and their spread is estimated).

A claim is the sign the paper's own numbers give the difference (``report.paper`` of the table).
Its verdict: *supported* when the interval lies wholly on the paper's side of 0, *contradicted*
when it lies wholly on the other side, *unresolved* when it spans 0 (or fewer than 2 seeds are
shared). For an unresolved claim, the interval's half-width is the smallest difference these
seeds could have resolved: a mean that far from 0, with the same spread, would have excluded it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

SUPPORTED, CONTRADICTED, UNRESOLVED = "supported", "contradicted", "unresolved"


def t_within(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with ``df`` (a whole number) degrees of freedom, from the finite
    series that exist for whole degrees of freedom (Abramowitz and Stegun 26.7.3-4)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2 == 1:
        term, total = 1.0, 0.0
        for k in range(1, (df - 1) // 2 + 1):  # cos, (2/3) cos^3, (2 4)/(3 5) cos^5, ...
            term = math.cos(theta) if k == 1 else term * (2 * k - 2) / (2 * k - 1) * cos2
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * total)
    term, total = 1.0, 1.0
    for k in range(1, df // 2):  # 1, (1/2) cos^2, (1 3)/(2 4) cos^4, ...
        term *= (2 * k - 1) / (2 * k) * cos2
        total += term
    return math.sin(theta) * total


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided critical value: P(|T| < t) = ``confidence`` (t = 4.303 for 95 % and 2
    degrees of freedom), by bisection."""
    low, high = 0.0, 1.0
    while t_within(high, df) < confidence:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if t_within(middle, df) < confidence else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class PairedDifference:
    """The mean of paired differences with its confidence interval (``low``, ``high``: None for
    fewer than 2 pairs)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2


def paired_difference(ours: dict, other: dict, confidence: float = 0.95) -> PairedDifference | None:
    """``ours - other`` over the seeds both have (dicts seed -> value); None if they share none."""
    shared = sorted(set(ours) & set(other), key=str)
    differences = [ours[seed] - other[seed] for seed in shared]
    if not differences:
        return None
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return PairedDifference(mean, None, None, 1)
    half = t_quantile(confidence, len(differences) - 1) * statistics.stdev(differences)
    half /= math.sqrt(len(differences))
    return PairedDifference(mean, mean - half, mean + half, len(differences))


def verdict(difference: PairedDifference, paper_difference: float) -> str:
    """Supported, contradicted or unresolved: where the interval lies against the sign of the
    paper's difference (a paper difference of 0 claims no order: unresolved)."""
    if difference.low is None or paper_difference == 0:
        return UNRESOLVED
    sign = 1.0 if paper_difference > 0 else -1.0
    low, high = sorted((sign * difference.low, sign * difference.high))
    if low > 0:
        return SUPPORTED
    if high < 0:
        return CONTRADICTED
    return UNRESOLVED
