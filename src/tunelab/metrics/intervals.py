"""How sure an accuracy's change is: the change between two models graded on the same items (paired: the items both
got right or both got wrong say nothing about the change), its interval and McNemar's p.

On 200 problems a point is 2 answers and a 95 % interval is ~±6 points; a gain is a gain when its paired interval
lies above 0. These are what a reader of a report needs before believing "+3 points" — and what a user needs before
spending an RL run on a gain the evaluation cannot see.

`paired_change`: the difference of paired proportions, (b − c) / n with b the items only the second model got right
and c those only the first did, its Wald interval with the paired variance (Agresti, *Categorical Data Analysis*,
10.1.1: var = ((b + c) − (b − c)² / n) / n²), and McNemar's exact two-sided p-value, the binomial test of b against
b + c discordant items at 1/2 (equal to `scipy.stats.binomtest(b, b + c).pvalue`: tests/test_intervals.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


@dataclass(frozen=True)
class PairedChange:
    """The second model's accuracy minus the first's on the same `n` items, with its 95 % interval (0-1) and
    McNemar's exact p-value; `gained` items only the second got right, `lost` those only the first did."""

    n: int
    gained: int
    lost: int
    change: float
    low: float
    high: float
    p_value: float


def paired_change(first: list[bool], second: list[bool], z: float = Z95) -> PairedChange:
    """How much better `second` is than `first`, graded on the same items in the same order."""
    if len(first) != len(second):
        raise ValueError(f"{len(first)} items against {len(second)}: a paired change needs the same items")
    n = len(first)
    if n == 0:
        raise ValueError("a paired change needs at least one item")
    gained = sum(1 for a, b in zip(first, second) if b and not a)
    lost = sum(1 for a, b in zip(first, second) if a and not b)
    change = (gained - lost) / n
    half = z * math.sqrt(max(0.0, (gained + lost) - (gained - lost) ** 2 / n)) / n
    return PairedChange(n, gained, lost, change, change - half, change + half, mcnemar_p(gained, lost))


def mcnemar_p(gained: int, lost: int) -> float:
    """McNemar's exact test: two-sided p-value of `gained` against `lost` discordant items under no change."""
    m = gained + lost
    if m == 0:
        return 1.0
    k = min(gained, lost)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m
    return min(1.0, 2 * tail)
