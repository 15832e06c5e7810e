"""A paired change's p-value against scipy's binomial test on many inputs, and its interval's variance against a
direct computation from its definition."""

from __future__ import annotations

import random

import pytest
from scipy import stats  # requirements-dev.txt

from tunelab.metrics.intervals import mcnemar_p, paired_change


def test_mcnemars_exact_p_equals_scipys_binomial_test():
    rng = random.Random(1)
    cases = [(0, 0), (0, 1), (5, 5), (30, 10), (3, 0)] + [(rng.randint(0, 300), rng.randint(0, 300))
                                                          for _ in range(200)]
    for gained, lost in cases:
        want = 1.0 if gained + lost == 0 else stats.binomtest(gained, gained + lost, 0.5).pvalue
        assert mcnemar_p(gained, lost) == pytest.approx(want, rel=1e-9, abs=1e-300), (gained, lost)


def test_the_paired_change_and_its_variance_from_their_definitions():
    rng = random.Random(2)
    for _ in range(200):
        n = rng.randint(1, 600)
        first = [rng.random() < 0.7 for _ in range(n)]
        second = [a if rng.random() < 0.8 else not a for a in first]
        got = paired_change(first, second)
        # the per-item differences d_i = second_i - first_i: mean and the variance of their mean (1/n, as Wald)
        d = [int(b) - int(a) for a, b in zip(first, second)]
        mean = sum(d) / n
        var = sum((x - mean) ** 2 for x in d) / n / n
        assert got.change == pytest.approx(sum(second) / n - sum(first) / n, abs=1e-12)
        assert got.change == pytest.approx(mean, abs=1e-12)
        half = 1.959963984540054 * var ** 0.5
        assert (got.low, got.high) == pytest.approx((mean - half, mean + half), abs=1e-12)
        assert got.gained - got.lost == sum(d)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same items"):
        paired_change([True], [True, False])
    with pytest.raises(ValueError, match="at least one item"):
        paired_change([], [])
