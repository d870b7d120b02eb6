"""Paired differences over seeds and the verdict rules (avsac_lit.analysis.paired), against
hand-computed cases."""

from __future__ import annotations

import math

import pytest

from avsac_lit.analysis.paired import (
    CONTRADICTED,
    SUPPORTED,
    UNRESOLVED,
    PairedDifference,
    paired_difference,
    t_quantile,
    verdict,
)


@pytest.mark.parametrize(
    ("df", "critical"),
    # Two-sided 95 % critical values of Student's t, as printed in statistics tables.
    [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (5, 2.5706), (9, 2.2622), (30, 2.0423)],
)
def test_the_t_quantile_matches_the_printed_tables(df, critical):
    assert t_quantile(0.95, df) == pytest.approx(critical, abs=5e-5)


def test_a_paired_difference_by_hand():
    # Table 5's 6 against 2 layers, as the issue gives them: differences -0.9, -2.1, -3.4.
    ours, other = {1: 70.1, 2: 64.9, 3: 63.3}, {1: 71.0, 2: 67.0, 3: 66.7}
    d = paired_difference(ours, other)
    mean = (-0.9 - 2.1 - 3.4) / 3  # -2.1333
    sd = math.sqrt(((-0.9 - mean) ** 2 + (-2.1 - mean) ** 2 + (-3.4 - mean) ** 2) / 2)
    half = 4.302653 * sd / math.sqrt(3)
    assert d.n == 3 and d.mean == pytest.approx(mean)
    assert (d.low, d.high) == pytest.approx((mean - half, mean + half), abs=1e-5)
    assert d.half_width == pytest.approx(half, abs=1e-5)


def test_only_the_seeds_both_rows_have_are_paired():
    d = paired_difference({1: 5.0, 2: 7.0, 4: 100.0}, {1: 4.0, 2: 5.0, 3: -100.0})
    assert (d.n, d.mean) == (2, 1.5)
    assert paired_difference({1: 1.0}, {2: 1.0}) is None
    single = paired_difference({1: 3.0}, {1: 1.0})
    assert (single.n, single.mean, single.low) == (1, 2.0, None)


@pytest.mark.parametrize(
    ("low", "high", "paper", "expected"),
    [
        (0.5, 2.0, +1.0, SUPPORTED),  # wholly on the paper's side (ours better)
        (-2.0, -0.5, -1.0, SUPPORTED),  # the paper says ours is worse, and it is
        (-2.0, -0.5, +1.0, CONTRADICTED),
        (0.5, 2.0, -1.0, CONTRADICTED),
        (-0.5, 2.0, +1.0, UNRESOLVED),  # spans 0
        (0.0, 2.0, +1.0, UNRESOLVED),  # touching 0 is not excluding it
        (0.5, 2.0, 0.0, UNRESOLVED),  # the paper claims no order
    ],
)
def test_the_verdict_rules(low, high, paper, expected):
    difference = PairedDifference(mean=(low + high) / 2, low=low, high=high, n=3)
    assert verdict(difference, paper) == expected


def test_one_seed_gives_no_verdict():
    assert verdict(PairedDifference(mean=5.0, low=None, high=None, n=1), 1.0) == UNRESOLVED
