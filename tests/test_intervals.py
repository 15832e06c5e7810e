"""An accuracy's interval and a paired change's, against scipy's Wilson interval and binomial test on many
inputs, and the paired variance against a direct computation from its definition."""

from __future__ import annotations

import random

import pytest

from tunelab.metrics.intervals import mcnemar_p, paired_change, wilson

stats = pytest.importorskip("scipy.stats")


def test_wilson_equals_scipys_on_many_counts():
    rng = random.Random(0)
    cases = [(0, 1), (1, 1), (0, 200), (200, 200), (141, 200), (1, 3)] + [
        (rng.randint(0, n), n) for n in (rng.randint(1, 2000) for _ in range(300))]
    for right, n in cases:
        ci = stats.binomtest(right, n).proportion_ci(0.95, method="wilson")
        assert wilson(right, n) == pytest.approx((ci.low, ci.high), abs=1e-12), (right, n)


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
    with pytest.raises(ValueError):
        wilson(3, 2)
    with pytest.raises(ValueError):
        wilson(0, 0)
