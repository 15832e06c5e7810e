"""The arithmetic task: compare final answers as numbers, with diagnostics that show why answers fail.

The final number of a text: after the last "=" the first number there (so "3x + 5 = 20, x = 5" gives 5
and "-6797.66 - 280.27 = -7077.93" gives -7077.93); with no "=" the last number in the text. Full-width
digits and signs, Unicode minus, ASCII-comma thousands separators ("-7,077.93"), a trailing full stop,
fractions written without spaces ("3/4" = 0.75; "3 / 4" is an expression) and scientific notation
("1.5e3") are read. A "-" directly before a digit is a sign unless the previous non-blank character ends
an operand (a digit, ")", "]" or "%"): in "10 - 3" and "10 -3" the last number is 3.

Percentages are compared as written: "25%" reads as 25, so it equals a reference "25%" (and "25") but
not "0.25". The percent kinds write their references as percents, so the model is asked to do the same.

Values are compared exactly (Decimal, so 7077.930 == 7077.93); only values from fractions or scientific
notation get a relative tolerance of 1e-9. Diagnostics per item:

* format_ok: the prediction has the reference's shape: equal after every number is replaced by "#", all
  whitespace is removed and a final "." or "。" is dropped ("-6797.66 - 280.27 = -7077.93" → "#-#=#").
* sign_ok: the signs agree (zero counts as non-negative).
* within_tol: |pred − gold| ≤ max(1, 1% of |gold|).
* digit_acc: share of digit positions that agree, the two answers aligned at the decimal point
  (7077.93 vs 7076.93 → 5/6); positions present in only one answer count as wrong.
A prediction without a number is wrong on every diagnostic (pred_value None), never an error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

from tunelab.data.arithmetic import format_number
from tunelab.data.examples import Example
from tunelab.data.records import iter_records, require_str
from tunelab.eval.prediction_files import match_predictions, read_prediction_file
from tunelab.errors import TunelabError
from tunelab.tasks.registry import Task, register_task

_NORMALISE = str.maketrans({
    **{chr(0xFF10 + i): str(i) for i in range(10)},  # full-width digits
    "\u2212": "-", "\uff0d": "-", "\ufe63": "-",  # Unicode, full-width and small minus signs
    "\uff0e": ".", "\uff1d": "=", "\uff05": "%", "\uff0f": "/", "\uff0b": "+",
})

_NUMBER = re.compile(r"""
    (?P<minus>-)?
    (?<![\d.])
    (?P<num>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)
    (?:[eE](?P<exp>[-+]?\d+))?
    (?:/(?P<den>[1-9]\d*)(?![\d.]))?
""", re.X)

_REL_TOL = Decimal("1e-9")


@dataclass
class _Number:
    value: Decimal
    approx: bool  # from a fraction or scientific notation
    start: int    # span of the number, sign included when it is a sign
    end: int


def _numbers(text: str, pos: int = 0) -> Iterator[_Number]:
    """Numbers of an already normalised text from `pos` on, with a '-' read as sign or operator."""
    for m in _NUMBER.finditer(text, pos):
        before = text[:m.start()].rstrip()
        negative = bool(m["minus"]) and not (before and (before[-1].isdigit() or before[-1] in ")]%"))
        value = Decimal(m["num"].replace(",", "") + (f"e{m['exp']}" if m["exp"] else ""))
        if m["den"]:
            ratio = Fraction(value) / int(m["den"])
            value = Decimal(ratio.numerator) / Decimal(ratio.denominator)
        yield _Number(-value if negative else value, bool(m["exp"] or m["den"]),
                      m.start() if negative else m.start("num"), m.end())


def _final(text: str) -> _Number | None:
    text = text.translate(_NORMALISE)
    eq = text.rfind("=")
    if eq >= 0:
        return next(_numbers(text, eq + 1), None)
    last = None
    for last in _numbers(text):
        pass
    return last


def extract_final_number(text: str) -> Decimal | None:
    """The final numeric answer of `text` (see the module docstring), or None when it has none."""
    found = _final(text)
    return None if found is None else found.value


def _shape(text: str) -> str:
    """Text with every number replaced by '#', whitespace removed and a final full stop dropped."""
    text = text.translate(_NORMALISE)
    parts, pos = [], 0
    for n in _numbers(text):
        parts += [text[pos:n.start], "#"]
        pos = n.end
    parts.append(text[pos:])
    return re.sub(r"\s+", "", "".join(parts)).rstrip(".。")


def _digit_acc(pred: Decimal, gold: Decimal) -> float:
    """Share of agreeing digit positions, integer parts right-aligned and fractions left-aligned."""
    (pi, _, pf), (gi, _, gf) = (format_number(abs(v)).partition(".") for v in (pred, gold))
    width_i, width_f = max(len(pi), len(gi)), max(len(pf), len(gf))
    a = pi.rjust(width_i) + pf.ljust(width_f)
    b = gi.rjust(width_i) + gf.ljust(width_f)
    return sum(x == y != " " for x, y in zip(a, b)) / len(a)


def grade_arithmetic(prediction: str, reference: str, kind: str = "") -> dict[str, Any]:
    """Grade one answer; the reference must contain a number (it is data, so that is a user error)."""
    gold = _final(reference)
    if gold is None:
        raise TunelabError(f"reference has no number: {reference!r}", field="solution")
    pred = _final(prediction)
    result = {"correct": False, "pred_value": None, "gold_value": format_number(gold.value),
              "format_ok": False, "sign_ok": False, "within_tol": False, "digit_acc": 0.0, "kind": kind}
    if pred is None:
        return result
    p, g = pred.value, gold.value
    if pred.approx or gold.approx:
        correct = abs(p - g) <= _REL_TOL * max(abs(p), abs(g))
    else:
        correct = p == g
    result.update(
        correct=correct,
        pred_value=format_number(p),
        format_ok=_shape(prediction) == _shape(reference),
        sign_ok=(p < 0) == (g < 0),
        within_tol=abs(p - g) <= max(Decimal(1), abs(g) / 100),
        digit_acc=_digit_acc(p, g),
    )
    return result


_RATES = ("accuracy", "format_ok", "sign_ok", "within_tol", "digit_acc", "no_number")


def _rates(graded: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(graded)

    def mean(values) -> float:
        return sum(values) / n if n else 0.0

    return {
        "n": n,
        "accuracy": mean(bool(g["correct"]) for g in graded),
        "format_ok": mean(bool(g["format_ok"]) for g in graded),
        "sign_ok": mean(bool(g["sign_ok"]) for g in graded),
        "within_tol": mean(bool(g["within_tol"]) for g in graded),
        "digit_acc": mean(float(g["digit_acc"]) for g in graded),
        "no_number": mean(g["pred_value"] is None for g in graded),
    }


def summarize_arithmetic(graded: list[dict[str, Any]], kinds: list[str] | None = None) -> dict[str, Any]:
    """Rates (fractions 0–1) over all items and per kind.

    An item's kind is `kinds[i]` when that parallel list is given, else its own "kind" field; items
    without a kind count only in the totals.
    """
    if kinds is not None and len(kinds) != len(graded):
        raise TunelabError(f"{len(kinds)} kinds given for {len(graded)} graded items")
    labels = kinds if kinds is not None else [g.get("kind", "") for g in graded]
    groups: dict[str, list[dict[str, Any]]] = {}
    for label, g in zip(labels, graded):
        if label:
            groups.setdefault(label, []).append(g)
    return {**_rates(graded), "by_kind": {k: _rates(v) for k, v in sorted(groups.items())}}


@register_task
class ArithmeticTask(Task):
    """Competition arithmetic: the final number of the model's answer against the solution's."""

    name = "arithmetic"
    primary_metric = "accuracy"
    default_format = "competition"

    def grade(self, prediction: str, example: Example) -> dict[str, Any]:
        return grade_arithmetic(prediction, example.output, example.kind)

    def summarize(self, graded: list[dict[str, Any]]) -> dict[str, Any]:
        return summarize_arithmetic(graded)


# --- `tunelab grade arithmetic` ------------------------------------------------------------------

def _read_gold(path: Path) -> list[dict[str, Any]]:
    gold = []
    for line, rec in iter_records(path):
        item = {"solution": require_str(rec, "solution", path, line),
                "id": require_str(rec, "id", path, line) if "id" in rec else None,
                "kind": require_str(rec, "kind", path, line) if "kind" in rec else ""}
        if _final(item["solution"]) is None:
            raise TunelabError("the solution has no number", file=path, line=line, field="solution")
        gold.append(item)
    return gold


def _report(summary: dict[str, Any], pred: Path, gold: Path) -> str:
    n = summary["n"]
    lines = [f"arithmetic: {n} answers, {pred} against {gold}"]
    lines += [f"  {name:<11}{summary[name]:8.2%}" for name in _RATES]
    if summary["by_kind"]:
        width = max(len("kind"), *(len(k) for k in summary["by_kind"]))
        lines.append(f"  {'kind':<{width}} {'n':>6}" + "".join(f"{r:>11}" for r in _RATES))
        for kind, s in summary["by_kind"].items():
            lines.append(f"  {kind:<{width}} {s['n']:>6}" + "".join(f"{s[r]:>11.2%}" for r in _RATES))
    return "\n".join(lines)


def cli_grade(args) -> int:
    """`tunelab grade arithmetic`: no model involved, so it imports nothing heavy and starts at once."""
    pred_path, gold_path = Path(args.pred), Path(args.gold)
    gold = _read_gold(gold_path)
    predictions = match_predictions(read_prediction_file(pred_path), gold, pred_path, gold_path)
    graded = [grade_arithmetic(p, g["solution"], g["kind"]) for p, g in zip(predictions, gold)]
    summary = summarize_arithmetic(graded)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(_report(summary, pred_path, gold_path))
    return 0
