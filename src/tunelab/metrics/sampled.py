"""Measures over k sampled answers a prompt: pass@k and majority vote.

pass@k is the chance that at least one of k answers is right. From n ≥ k samples of which c are right, the
unbiased estimator of Chen et al. 2021 (the HumanEval paper) is 1 − C(n−c, k) / C(n, k): the chance that k drawn
from the n without replacement are all wrong, subtracted from one. It is computed as the paper's code computes it,
the product 1 − ∏ᵢ (1 − k / i) for i in n−c+1 … n, which never forms the binomials (they overflow a float at
n in the hundreds). Averaged over prompts it is the headroom a reinforcement-learning run can hope to turn into
first answers: pass@1 is what a sampled answer scores, pass@k what the best of k does.

Majority vote (lm-eval's maj@k, self-consistency of Wang et al. 2022) answers with the most frequent extracted
answer of the k, ties to the one sampled first (as `collections.Counter.most_common` orders them); an answer
nothing could be extracted from casts no vote.
"""

from __future__ import annotations

from collections import Counter
from typing import Hashable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate of one prompt with `c` right answers among `n` sampled."""
    if not (1 <= k <= n and 0 <= c <= n):
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a right answer
        return 1.0
    all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        all_wrong *= 1.0 - k / i
    return 1.0 - all_wrong


def majority_right(votes: Sequence[Hashable | None], right: Sequence[bool]) -> bool:
    """Whether the most frequent answer among `votes` (None: no answer) is right; `right[i]` is the verdict on
    sample i. No vote at all is wrong."""
    counts = Counter(v for v in votes if v is not None)
    if not counts:
        return False
    winner = counts.most_common(1)[0][0]
    return bool(right[next(i for i, v in enumerate(votes) if v == winner)])


def sampled_metrics(right: Sequence[Sequence[bool]], votes: Sequence[Sequence[Hashable | None]] | None) -> dict:
    """Over prompts, each with its k samples' verdicts (and extracted answers, for the vote): pass@1 … pass@k
    (fractions 0–1, keyed `pass@j`) and, with `votes`, `maj@k`."""
    if not right:
        return {}
    k = len(right[0])
    if any(len(r) != k for r in right):
        raise ValueError("every prompt needs the same number of samples")
    out = {f"pass@{j}": sum(pass_at_k(k, sum(map(bool, r)), j) for r in right) / len(right)
           for j in range(1, k + 1)}
    if votes is not None:
        out[f"maj@{k}"] = sum(majority_right(v, r) for v, r in zip(votes, right)) / len(right)
    return out
