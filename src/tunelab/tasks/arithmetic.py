"""The arithmetic task: compare final answers as numbers, with diagnostics that show why answers fail.

The final number of a text: after the last "=" the first number there (so "3x + 5 = 20, x = 5" gives 5
and "-6797.66 - 280.27 = -7077.93" gives -7077.93); with no "=" the last number in the text. Read as
numbers:

* digits 0-9 and full-width digits (digits of other scripts are not read); a decimal point, full-width too;
  scientific notation ("1.5e3"); fractions written without spaces ("3/4" = 0.75; "3 / 4" is an expression);
* digit groups of three joined by one separator — ",", "，" (full-width comma), a space, a no-break, thin or
  narrow no-break space ("-7,077.93", "7 077.93", "1 000 000") — only when every group after the first
  has three digits, the first one to three, and all separators of the number are the same character;
  otherwise each digit run is a number of its own ("1,2" is 1 and 2, "12,34,567" is 12, 34 and 567);
* a sign from the dash family — "-", "‐" (U+2010), "‑" (U+2011), "‒" (U+2012), "–" (U+2013), "−" (U+2212),
  "﹣", "－" — directly before the number or separated by one space ("- 7077.93"). A dash is a sign unless
  the previous non-blank character ends an operand (a digit, ")", "]" or "%"): in "10 - 3" and "10 -3"
  the last number is 3.

Numbers are bounded so that no answer can break grading: at most MAX_DIGITS significant digits, a magnitude
between 10^-MAX_EXPONENT and 10^(MAX_EXPONENT+1), a denominator of at most MAX_DIGITS digits ("0e99999"
is 0). A final number outside those bounds ("1e9999999", "1e-100000000", a thousand-digit run) is *out of
range*: a wrong answer whose pred_value is its text cut to 32 characters, never an exception or a giant
string. A reference out of range is a data error.

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
* out_of_range: the final number is out of range (see above); only sign_ok and format_ok can hold.
A prediction without a number is wrong on every diagnostic (pred_value None), never an error.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

from tunelab.data.synthetic.arithmetic import format_number
from tunelab.data.examples import Example
from tunelab.errors import TunelabError
from tunelab.metrics.prediction_files import match_predictions, read_prediction_file
from tunelab.records import iter_records, require_str
from tunelab.tasks.registry import Task, register_task

MAX_DIGITS = 200    # significant digits of a number (and digits of a denominator)
MAX_EXPONENT = 200  # |adjusted exponent|: 1e-200 ≤ |x| < 1e201

_NORMALISE = str.maketrans({
    **{chr(0xFF10 + i): str(i) for i in range(10)},  # full-width digits
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2212\ufe63\uff0d", "-"),  # the dash family (see above)
    "\uff0e": ".", "\uff1d": "=", "\uff05": "%", "\uff0f": "/", "\uff0b": "+",
})
_SPACES = "\x20\u00a0\u2009\u202f"  # a space, no-break, thin and narrow no-break space
_SEPARATORS = ",\uff0c" + _SPACES

# One match is a sign (maybe an operator) and a cluster of digit runs joined by single separators, with the
# decimals, exponent and denominator of its last run; `_numbers` decides whether the runs form one number.
# No quantifier can give back what the next element needs, so matching is linear in the text's length; the
# cluster's repetition is possessive, so a long cluster keeps no backtracking state either.
_NUMBER = re.compile(rf"""
    (?:(?P<minus>-)[{_SPACES}]?)?
    (?<![0-9.])
    (?:(?P<int>[0-9]+(?:[{_SEPARATORS}][0-9]+)*+)(?:\.(?P<frac>[0-9]+))? | \.(?P<frac_only>[0-9]+))
    (?:[eE](?P<exp>[-+]?[0-9]+))?
    (?:/(?P<den>[1-9][0-9]*)(?![0-9.]))?
""", re.X)
_SEPARATOR = re.compile(f"[{_SEPARATORS}]")
_GROUPED = re.compile(rf"[0-9]{{1,3}}([{_SEPARATORS}])[0-9]{{3}}(?:\1[0-9]{{3}})*+")  # "7,077", "1 000 000"; possessive: a
# failed match keeps no backtracking frame per group (a 1 MB cluster of 250,000 groups held 40 MB of them)
_RUN = re.compile("[0-9]+")

_REL_TOL = Decimal("1e-9")


@dataclass
class _Number:
    start: int  # span of the number, sign included when it is a sign
    end: int
    negative: bool
    digits: str     # integer digits, separators removed
    frac: str = ""  # digits after the decimal point
    exp: str = ""   # exponent as written ("-3", "+12")
    den: str = ""   # denominator of a fraction
    written: str = ""  # the final number's text as written, cut to 32 characters (set by `_final`)

    @property
    def approx(self) -> bool:
        """From a fraction or scientific notation: compared with a relative tolerance."""
        return bool(self.exp or self.den)

    def value(self) -> Decimal | None:
        """The exact value, or None when it is out of range (see the module docstring)."""
        digits = (self.digits + self.frac).lstrip("0")
        exponent = -len(self.frac)
        if self.exp:
            written = self.exp.lstrip("+-").lstrip("0") or "0"
            if len(written) > 9:  # far beyond any bound; int() of it could be slow or refused
                return Decimal(0) if not digits else None
            exponent += -int(written) if self.exp.startswith("-") else int(written)
        significant = digits.rstrip("0")
        exponent += len(digits) - len(significant)
        if not significant:
            return Decimal(0)
        if len(significant) > MAX_DIGITS or not -MAX_EXPONENT <= len(significant) - 1 + exponent <= MAX_EXPONENT:
            return None
        value = Decimal(f"{significant}E{exponent}")
        if self.den:
            if len(self.den) > MAX_DIGITS:
                return None
            ratio = Fraction(value) / int(self.den)
            value = Decimal(ratio.numerator) / Decimal(ratio.denominator)
            if not -MAX_EXPONENT <= value.adjusted() <= MAX_EXPONENT:
                return None
        return value.copy_negate() if self.negative else value


def _operand_before(text: str, i: int) -> bool:
    """Whether the last non-blank character before position `i` ends an operand (then a '-' is an operator)."""
    while i > 0 and text[i - 1].isspace():
        i -= 1
    return i > 0 and (text[i - 1].isdigit() or text[i - 1] in ")]%")


def _numbers(text: str, pos: int = 0) -> Iterator[_Number]:
    """Numbers of an already normalised text from `pos` on, with a '-' read as sign or operator."""
    for m in _NUMBER.finditer(text, pos):
        negative = bool(m["minus"]) and not _operand_before(text, m.start())
        tail = {"frac": m["frac"] or m["frac_only"] or "", "exp": m["exp"] or "", "den": m["den"] or ""}
        cluster = m["int"]
        if cluster is None or _GROUPED.fullmatch(cluster) or not _SEPARATOR.search(cluster):
            start = m.start() if negative else m.start("int" if cluster is not None else "frac_only")
            yield _Number(start, m.end(), negative, _SEPARATOR.sub("", cluster or ""), **tail)
            continue
        # Not a valid grouping: every digit run is a number; the sign goes to the first, the tail to the last.
        base = m.start("int")
        previous = None
        for run in _RUN.finditer(cluster):
            if previous is not None:
                yield previous
            start = m.start() if negative and previous is None else base + run.start()
            previous = _Number(start, base + run.end(), negative and previous is None, run.group())
        previous.end = m.end()
        previous.frac, previous.exp, previous.den = tail["frac"], tail["exp"], tail["den"]
        yield previous


def _final(text: str) -> _Number | None:
    text = text.translate(_NORMALISE)
    eq = text.rfind("=")
    if eq >= 0:
        last = next(_numbers(text, eq + 1), None)
    else:
        last = None
        for last in _numbers(text):
            pass
    if last is not None:
        last.written = _clip(text[last.start:min(last.end, last.start + 33)])
    return last


def _clip(text: str, limit: int = 32) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _shape(text: str) -> str:
    """Text with every number replaced by '#', whitespace removed and a final full stop dropped."""
    text = text.translate(_NORMALISE)
    out, pos = io.StringIO(), 0     # not a list of pieces: a 1 MB answer can hold 250,000 numbers
    for n in _numbers(text):
        out.write(text[pos:n.start])
        out.write("#")
        pos = n.end
    out.write(text[pos:])
    return re.sub(r"\s+", "", out.getvalue()).rstrip(".。")


def _gold(reference: str) -> tuple[_Number, Decimal] | str:
    """The reference's final number and its value, or why it has none (a reference is data: callers raise)."""
    found = _final(reference)
    if found is None:
        return "the solution has no number"
    value = found.value()
    if value is None:
        return (f"the solution's number {_clip(repr(found.written), 40)} is out of range (more than {MAX_DIGITS} significant "
                f"digits, or beyond 1e±{MAX_EXPONENT})")
    return found, value


def _digit_acc(pred: Decimal, gold: Decimal) -> float:
    """Share of agreeing digit positions, integer parts right-aligned and fractions left-aligned."""
    (pi, _, pf), (gi, _, gf) = (format_number(v.copy_abs()).partition(".") for v in (pred, gold))
    width_i, width_f = max(len(pi), len(gi)), max(len(pf), len(gf))
    a = pi.rjust(width_i) + pf.ljust(width_f)
    b = gi.rjust(width_i) + gf.ljust(width_f)
    return sum(x == y != " " for x, y in zip(a, b)) / len(a)


def grade_arithmetic(prediction: str, reference: str, kind: str = "") -> dict[str, Any]:
    """Grade one answer; the reference must hold a number in range (it is data, so that is a user error)."""
    gold = _gold(reference)
    if isinstance(gold, str):
        raise TunelabError(f"{gold}: {_clip(repr(reference), 80)}", field="solution")
    gold_number, g = gold
    pred = _final(prediction)
    result = {"correct": False, "pred_value": None, "gold_value": format_number(g), "format_ok": False,
              "sign_ok": False, "within_tol": False, "digit_acc": 0.0, "out_of_range": False, "kind": kind}
    if pred is None:
        return result
    p = pred.value()
    if p is None:
        result.update(pred_value=pred.written, out_of_range=True,
                      format_ok=_shape(prediction) == _shape(reference), sign_ok=pred.negative == (g < 0))
        return result
    if pred.approx or gold_number.approx:
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


_RATES = ("accuracy", "format_ok", "sign_ok", "within_tol", "digit_acc", "no_number", "out_of_range")


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
        "out_of_range": mean(bool(g.get("out_of_range")) for g in graded),
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
    right_or_wrong = True
    vote = "pred_value"
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
        problem = _gold(item["solution"])
        if isinstance(problem, str):
            raise TunelabError(problem, file=path, line=line, field="solution")
        gold.append(item)
    return gold


def format_grade_report(summary: dict[str, Any], pred: Path, gold: Path) -> str:
    """`grade_arithmetic_files`' summary as `tunelab grade arithmetic` prints it: the rates, then by kind."""
    n = summary["n"]
    lines = [f"arithmetic: {n} answers, {pred} against {gold}"]
    lines += [f"  {name:<13}{summary[name]:8.2%}" for name in _RATES]
    if summary["by_kind"]:
        width = max(len("kind"), *(len(k) for k in summary["by_kind"]))
        lines.append(f"  {'kind':<{width}} {'n':>6}" + "".join(f"{r:>11}" for r in _RATES))
        for kind, s in summary["by_kind"].items():
            lines.append(f"  {kind:<{width}} {s['n']:>6}" + "".join(f"{s[r]:>11.2%}" for r in _RATES))
    return "\n".join(lines)


def grade_arithmetic_files(pred: str | Path, gold: str | Path) -> dict[str, Any]:
    """`tunelab grade arithmetic`: a prediction file against competition gold, matched by id or by order; the
    summary of `summarize_arithmetic`. No model involved, so it imports nothing heavy and starts at once."""
    pred_path, gold_path = Path(pred), Path(gold)
    golds = _read_gold(gold_path)
    predictions = match_predictions(read_prediction_file(pred_path), golds, pred_path, gold_path)
    return summarize_arithmetic([grade_arithmetic(p, g["solution"], g["kind"]) for p, g in zip(predictions, golds)])
