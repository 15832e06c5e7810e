"""Win / tie / loss of model A against model B over judged prompts, and how sure that is.

Each prompt is judged in both orders (A shown first, then B shown first), so a judge that prefers whichever
answer it reads first cancels out: A wins a prompt only when both orders say A, and orders that disagree are a
tie (FastChat's MT-bench pairwise rule). A judge reply that names no verdict is a tie too, and is counted
apart (`unjudged`) so that a broken judge shows instead of passing for a run of ties.

The score is A's win rate counting a tie as half a win; its 95 % interval is a percentile bootstrap over the
prompts (2,000 resamples, a fixed seed: the same judgments give the same interval).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

A, B, TIE = "A", "B", "tie"


def combine(first: str | None, second: str | None) -> str:
    """The verdict of one prompt from its two orders' verdicts, each already in A/B terms (None: no verdict)."""
    if first is None or second is None or first != second:
        return TIE
    return first


@dataclass
class Tally:
    wins: int = 0
    ties: int = 0
    losses: int = 0
    unjudged: int = 0  # prompts where the judge named no verdict in some order (counted as ties)
    inconsistent: int = 0  # prompts whose two orders disagreed (counted as ties)
    right_a: int = 0  # the programmatic judge: answers right against the reference, each side
    right_b: int = 0
    scores: list[float] = field(default_factory=list)

    def add(self, verdict: str, unjudged: bool = False, inconsistent: bool = False) -> None:
        if verdict == A:
            self.wins += 1
            self.scores.append(1.0)
        elif verdict == B:
            self.losses += 1
            self.scores.append(0.0)
        else:
            self.ties += 1
            self.scores.append(0.5)
        self.unjudged += unjudged
        self.inconsistent += inconsistent

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def win_rate(self) -> float:
        """A's wins plus half its ties, over every judged prompt."""
        return sum(self.scores) / self.n if self.n else float("nan")

    def interval(self, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
        """The percentile bootstrap interval of the win rate."""
        if not self.n:
            return float("nan"), float("nan")
        rng = random.Random(seed)
        means = sorted(sum(rng.choices(self.scores, k=self.n)) / self.n for _ in range(resamples))
        lo = means[int((1 - level) / 2 * resamples)]
        hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
        return lo, hi

    def summary(self) -> dict:
        lo, hi = self.interval()
        return {"prompts": self.n, "wins": self.wins, "ties": self.ties, "losses": self.losses,
                "unjudged": self.unjudged, "inconsistent": self.inconsistent, "win_rate": self.win_rate,
                "ci95": [lo, hi], "right_a": self.right_a, "right_b": self.right_b}
