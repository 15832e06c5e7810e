"""The judge for data with known answers: an answer is right or wrong against the reference, and the right one
wins (both right or both wrong: a tie). No model is asked, so a CPU run needs no large judge and the verdict
cannot be talked into anything.

`numeric`: the final number of the answer equals the reference's (`tunelab.tasks.arithmetic.grade_arithmetic`,
the arithmetic task's own grader: Chinese and English forms, fractions, a relative tolerance for rounded
values). `exact`: the texts are equal once Unicode-normalised (NFKC), case-folded and with whitespace collapsed.
"""

from __future__ import annotations

import re
import unicodedata

from tunelab.judge.verdicts import A, B, TIE


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().casefold()


def is_right(answer: str, reference: str, match: str = "numeric") -> bool:
    if match == "exact":
        return _normal(answer) == _normal(reference)
    from tunelab.tasks.arithmetic import grade_arithmetic
    return bool(grade_arithmetic(answer, reference)["correct"])


def judge_by_reference(answer_a: str, answer_b: str, reference: str, match: str = "numeric") -> str:
    right_a, right_b = is_right(answer_a, reference, match), is_right(answer_b, reference, match)
    return A if right_a and not right_b else B if right_b and not right_a else TIE
