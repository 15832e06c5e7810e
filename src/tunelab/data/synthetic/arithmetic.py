"""Competition-format arithmetic problems: generate them, or subsample a large competition file.

A record is `{"id", "problem", "solution", "kind"}`, e.g.
`{"problem": "计算 -6797.66 - 280.27 等于多少？", "solution": "-6797.66 - 280.27 = -7077.93"}`;
the solution echoes the expression and ends with the final answer (percent answers end with "%").

Number conventions, chosen to follow the competition's records and to keep grading unambiguous:

* Results are computed exactly (fractions.Fraction, shown as decimal.Decimal). Sums, differences,
  products and powers are always exact. A quotient, square root, average or percentage whose exact
  value needs more than `decimals` fractional digits is rounded ROUND_HALF_UP (halves away from zero)
  to `decimals` places, and only then the problem says so ("（结果保留2位小数）" /
  "Round the result to 2 decimal places.").
* Results are normalised: no trailing fractional zeros, no decimal point for whole numbers, never "-0"
  (format_number). Operands keep their places: with `fixed_decimals` every decimal operand shows
  exactly `decimals` places ("12.50"); otherwise each has 1..`decimals` places and a non-zero last digit.
* A negative first operand is written bare ("-6797.66 - 280.27"); a later negative operand, and a
  negative base of a power, is parenthesised ("12 - (-5)", "(-3)^3"). Operators are ASCII + - * / ^,
  and √ for square roots.
* `signed` makes operands of the int_*, dec_*, power, average and equation kinds negative half of the
  time; sqrt radicands and percent kinds stay non-negative.
* `show_work: signs` writes one more step into the solutions of sums and differences (int_add, int_sub,
  dec_add, dec_sub): the problem reduced to one sum or difference of unsigned numbers, the larger first,
  "4.72 + (-7.15) = -(7.15 - 4.72) = -2.43", "-1.85 - 2.56 = -(1.85 + 2.56) = -4.41"; a problem already in
  that form ("2.71 - 1.80 = 0.91") keeps its one step. A small model gets signs right and digits wrong, and
  the reduction leaves it one kind of digit work. `show_work: columns` then works each difference column by
  column, right to left, a borrowed digit shown with its 10 added, before the answer:
  "4.72 + (-7.15) = -(7.15 - 4.72) (5-2=3 11-7=4 6-4=2) = -2.43" — borrows are where the digits go wrong.
  `show_work: digits` works sums too, and writes each column's digits before deciding: "7+8=15 9+4+1=14" (a
  carry shown as "+1"), "5-2=3 1-7<0 11-7=4 7-4-1=2" (a column that lent writes "-1", one that must borrow says
  "<0" and works again with 10 added). The columns form asks the borrow before the digit below it is written
  — the first token of "11-7" —, which is where a 135 M model's differences went wrong (two thirds of its misses).
  `show_work: compare` is `digits` with one more step where signs are opposite: the two numbers as unsigned, in
  the problem's order, compared digit by digit from the left before the larger is put first,
  "-6.73 + 5.23 (6.73 vs 5.23: 6>5) = -(6.73 - 5.23) (…)", "6.73 vs 6.85: 6=6 7<8" — with `digits` every miss
  left to a 135 M model was that order ("-6.73 + 5.23 = 5.23 - 6.73"), decided on the first token after "=".
  Graders read the number after the last "=", so the answer is unchanged; the problems drawn are the same
  with and without it.
"""

from __future__ import annotations

import operator
import random
from dataclasses import dataclass, fields
from decimal import Decimal
from fractions import Fraction
from math import isqrt
from pathlib import Path
from typing import Any, Callable

from tunelab.errors import TunelabError
from tunelab.records import iter_records, write_json, write_jsonl

LANGS = ("zh", "en", "mix")
WORK = ("none", "signs", "columns", "digits", "compare")

COMPUTE = {
    "zh": ["计算 {e} 等于多少？", "{e} 的结果是多少？", "{e} 等于多少？", "请计算：{e}"],
    "en": ["Calculate {e}.", "What is {e}?", "Compute {e}.", "Evaluate {e}."],
}
POWER = {
    "zh": COMPUTE["zh"] + ["{a} 的 {n} 次方是多少？"],
    "en": COMPUTE["en"] + ["What is {a} to the power of {n}?"],
}
SQRT = {
    "zh": COMPUTE["zh"] + ["{n} 的平方根是多少？", "求 {n} 的算术平方根。"],
    "en": COMPUTE["en"] + ["What is the square root of {n}?", "Find the square root of {n}."],
}
AVERAGE = {
    "zh": ["求 {list_zh} 的平均数。", "{list_zh} 的平均值是多少？", "计算 {list_zh} 的平均数。"],
    "en": ["What is the average of {list_en}?", "Find the mean of {list_en}.",
           "Calculate the average of {list_en}."],
}
PERCENT_OF = {
    "zh": ["{b} 的 {p}% 是多少？", "求 {b} 的 {p}%。", "计算 {b} 的 {p}%。"],
    "en": ["What is {p}% of {b}?", "Calculate {p}% of {b}.", "Find {p}% of {b}."],
}
WHAT_PERCENT = {  # the part {a} always comes before the whole {b}, so the problem reads back unambiguously
    "zh": ["{a} 是 {b} 的百分之几？", "{a} 占 {b} 的百分之多少？"],
    "en": ["{a} is what percent of {b}?", "Express {a} as a percentage of {b}."],
}
EQUATION = {
    "zh": ["解方程 {eq}", "解方程：{eq}，求 x。", "已知 {eq}，求 x 的值。"],
    "en": ["Solve the equation {eq}.", "Solve for x: {eq}", "Find x if {eq}."],
}
ROUND_NOTE = {"zh": "（结果保留{n}位小数）", "en": " Round the result to {n} decimal places."}


@dataclass(frozen=True)
class Options:
    """Difficulty knobs; they are recipe settings, so each is validated with a message naming it."""

    int_digits: int = 4         # max digits of an operand's integer part
    decimals: int = 2           # decimal places of dec_* operands, and rounding places of inexact results
    signed: bool = True         # allow negative operands
    fixed_decimals: bool = False  # every decimal operand has exactly `decimals` places
    show_work: str = "none"     # signs: sums/differences reduced to unsigned ones; columns: and borrows shown;
                                # digits: every column of sums and differences, its digits before its decision;
                                # compare: digits, opposite signs' numbers compared before the larger is put first

    def __post_init__(self):
        for name, lo, hi in (("int_digits", 1, 18), ("decimals", 1, 10)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise TunelabError(f"expected an integer from {lo} to {hi}, got {value!r}", field=name)
        for name in ("signed", "fixed_decimals"):
            if not isinstance(getattr(self, name), bool):
                raise TunelabError(f"expected true or false, got {getattr(self, name)!r}", field=name)
        if self.show_work not in WORK:
            raise TunelabError(f"expected one of {', '.join(WORK)}, got {self.show_work!r}", field="show_work")


@dataclass
class _Item:
    """One generated problem before its phrasing (and language) is chosen."""

    phrasings: dict[str, list[str]]
    slots: dict[str, str]
    solution: str
    rounded: bool = False


# --- numbers -------------------------------------------------------------------------------------

def format_number(value: Decimal) -> str:
    """Fixed-point text without trailing fractional zeros and never '-0' (exact: no context rounding)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _to_decimal(value: Fraction, places: int) -> tuple[Decimal, bool]:
    """Exact decimal of `value` if it terminates within `places` digits, else rounded ROUND_HALF_UP.

    Integer arithmetic throughout, so there is no double rounding; the flag says whether it rounded.
    """
    scaled = abs(value) * 10 ** places
    q, r = divmod(scaled.numerator, scaled.denominator)
    if 2 * r >= scaled.denominator:
        q += 1
    sign = "-" if value < 0 and q else ""
    return Decimal(f"{sign}{q}E-{places}"), r != 0


def _sqrt(n: int, places: int) -> tuple[Decimal, bool]:
    """√n rounded ROUND_HALF_UP to `places` (exact when n is a perfect square), by integer square roots."""
    scaled = n * 10 ** (2 * places)
    s = isqrt(scaled)
    rounded = s * s != scaled
    if 4 * scaled >= (2 * s + 1) ** 2:  # √scaled ≥ s + ½
        s += 1
    return Decimal(f"{s}E-{places}"), rounded


def _magnitude(rng: random.Random, digits: int, low: int = 0) -> int:
    """A non-negative integer of 1..`digits` digits, each length equally likely, so small and large mix."""
    d = rng.randint(1, digits)
    return rng.randint(max(low, 10 ** (d - 1) if d > 1 else 0), 10 ** d - 1)


def _sign(rng: random.Random, o: Options) -> int:
    return -1 if o.signed and rng.random() < 0.5 else 1


def _int(rng: random.Random, o: Options) -> Decimal:
    return Decimal(_sign(rng, o) * _magnitude(rng, o.int_digits))


def _dec(rng: random.Random, o: Options) -> Decimal:
    places = o.decimals if o.fixed_decimals else rng.randint(1, o.decimals)
    frac = rng.randrange(10 ** places)
    if not o.fixed_decimals:  # a non-zero last digit, so the operand really has `places` places
        frac = frac - frac % 10 + rng.randint(1, 9)
    units = _sign(rng, o) * (_magnitude(rng, o.int_digits) * 10 ** places + frac)
    return Decimal(f"{units}E-{places}")


def _show(x: Decimal, first: bool = True) -> str:
    """An operand as written: later negative operands are parenthesised, '12 - (-5)'."""
    text = format(x, "f")
    return text if first or x >= 0 else f"({text})"


def _expr(op: str, *operands: Decimal) -> str:
    return f" {op} ".join(_show(x, i == 0) for i, x in enumerate(operands))


# --- kinds ---------------------------------------------------------------------------------------

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _unsigned(op: str, a: Decimal, b: Decimal) -> tuple[str, tuple[str, Decimal, Decimal]]:
    """`a op b` (op + or -) as one operation on unsigned numbers, the larger first, its sign outside; and
    that operation, as (its operator, its two numbers).

    Same signs add ("-(1.85 + 2.56)"), opposite signs subtract the smaller magnitude from the larger
    ("-(7.15 - 4.72)"); a tie subtracts from the positive one, so a zero result never reads "-(…)".
    Operands keep their written places ("9.10", not "9.1").
    """
    x, y = a, (b if op == "+" else -b)
    if (x >= 0) == (y >= 0):
        first, second, inner_op, negative = x, y, "+", x < 0
    else:
        first, second = (x, y) if abs(x) > abs(y) or (abs(x) == abs(y) and x > 0) else (y, x)
        inner_op, negative = "-", first < 0
    inner = f"{format(abs(first), 'f')} {inner_op} {format(abs(second), 'f')}"
    return f"-({inner})" if negative else inner, (inner_op, abs(first), abs(second))


def _places(p: Decimal, q: Decimal) -> tuple[list[int], list[int]]:
    """The digits of p and q, right to left, aligned to the finer place and padded to the longer with zeros; the
    decimal point left out."""
    places = max(0, -p.as_tuple().exponent, -q.as_tuple().exponent)
    def digits(x: Decimal) -> str:
        return format(x.quantize(Decimal(1).scaleb(-places)), "f").replace(".", "")
    width = max(len(digits(p)), len(digits(q)))
    return [int(d) for d in reversed(digits(p).zfill(width))], [int(d) for d in reversed(digits(q).zfill(width))]


def _columns(p: Decimal, q: Decimal) -> str:
    """p - q (p ≥ q ≥ 0) one column at a time, right to left: "11-7=4" where the column borrowed, "6-4=2"
    where the one before lent. Every column of p as written to the finer place is worked, units "0" included."""
    steps, lent = [], 0
    for upper, lower in zip(*_places(p, q)):
        upper -= lent
        lent = int(upper < lower)
        upper += 10 * lent
        steps.append(f"{upper}-{lower}={upper - lower}")
    return " ".join(steps)


def _digit_columns(op: str, p: Decimal, q: Decimal) -> str:
    """p op q (op + or -, p ≥ q ≥ 0 for -) one column at a time, right to left, each column's digits as written
    before what it does with them: "7+8=15", "9+4+1=14" after a carry; "5-2=3", "7-4-1=2" after a lend, and a
    column that must borrow "1-7<0 11-7=4" ("0-3-1<0 10-3-1=6" after a lend): the two digits always first, where
    the problem has them, the carry or lend after."""
    steps, carry = [], 0
    for upper, lower in zip(*_places(p, q)):
        if op == "+":
            total = upper + lower + carry
            steps.append(f"{upper}+{lower}+1={total}" if carry else f"{upper}+{lower}={total}")
            carry = int(total >= 10)
            continue
        head = f"{upper}-{lower}-1" if carry else f"{upper}-{lower}"
        digit = upper - carry - lower
        steps.append(f"{head}<0 1{head}={digit + 10}" if digit < 0 else f"{head}={digit}")
        carry = int(digit < 0)
    return " ".join(steps)


def _comparison(x: Decimal, y: Decimal) -> str:
    """|x| against |y| in that order, digit by digit from the left (aligned, the shorter padded with zeros) up to the
    first that differs: "6.73 vs 5.23: 6>5", "6.73 vs 6.85: 6=6 7<8"; every digit "=" for a tie."""
    upper, lower = (reversed(d) for d in _places(abs(x), abs(y)))
    steps = []
    for u, v in zip(upper, lower):
        steps.append(f"{u}{'=' if u == v else '>' if u > v else '<'}{v}")
        if u != v:
            break
    return f"{format(abs(x), 'f')} vs {format(abs(y), 'f')}: {' '.join(steps)}"


def _worked(op: str, a: Decimal, b: Decimal, show_work: str) -> list[str]:
    """The steps of `a op b` before its answer: the expression (`compare`: with its numbers compared, where their
    signs differ), then for a sum or difference with `show_work` the unsigned operation where it reads otherwise
    (`_unsigned`), followed by its columns (`columns`: a difference's; `digits`, `compare`: a sum's or a
    difference's)."""
    e = _expr(op, a, b)
    steps = [e]
    if show_work != "none" and op in "+-":
        reduced, (inner_op, p, q) = _unsigned(op, a, b)
        if show_work == "compare" and inner_op == "-":  # the order is decided after the numbers are compared
            steps[0] += f" ({_comparison(a, b if op == '+' else -b)})"
        if reduced != e:
            steps.append(reduced)
        if show_work == "columns" and inner_op == "-":  # the work follows the operation it works out
            steps[-1] += f" ({_columns(p, q)})"
        elif show_work in ("digits", "compare"):
            steps[-1] += f" ({_digit_columns(inner_op, p, q)})"
    return steps


def _binary(op: str, operand: Callable[[random.Random, Options], Decimal]):
    """A kind `a op b`. Sums, differences and products of operands with ≤ `decimals` places have
    ≤ 2·`decimals` places, so converting them with that many places is exact."""
    def gen(rng: random.Random, o: Options) -> _Item:
        a, b = operand(rng, o), operand(rng, o)
        value, _ = _to_decimal(OPS[op](Fraction(a), Fraction(b)), 2 * o.decimals)
        steps = _worked(op, a, b, o.show_work)
        return _Item(COMPUTE, {"e": _expr(op, a, b)}, " = ".join(steps + [format_number(value)]))
    return gen


def _divide(a: Decimal, b: Decimal, o: Options) -> _Item:
    value, rounded = _to_decimal(Fraction(a) / Fraction(b), o.decimals)
    e = _expr("/", a, b)
    return _Item(COMPUTE, {"e": e}, f"{e} = {format_number(value)}", rounded)


def _nonzero(rng: random.Random, o: Options, operand: Callable[[random.Random, Options], Decimal]) -> Decimal:
    while (x := operand(rng, o)) == 0:
        pass
    return x


def _int_div(rng: random.Random, o: Options) -> _Item:
    """Half the time an exact quotient (a = b·q within the digit limit), otherwise any a / b."""
    b = _nonzero(rng, o, _int)
    if rng.random() < 0.5:
        q = rng.randint(1, (10 ** o.int_digits - 1) // int(abs(b)))
        return _divide(b * q * _sign(rng, o), b, o)
    return _divide(_int(rng, o), b, o)


def _dec_div(rng: random.Random, o: Options) -> _Item:
    return _divide(_dec(rng, o), _nonzero(rng, o, _dec), o)


def _power(rng: random.Random, o: Options) -> _Item:
    """Bases get half the digit budget so results stay readable: 99^4 at the default 4 digits."""
    base = _sign(rng, o) * rng.randint(2, 10 ** max(1, o.int_digits // 2) - 1)
    n = rng.randint(2, 4)
    a = _show(Decimal(base), first=False)
    e = f"{a}^{n}"
    return _Item(POWER, {"e": e, "a": a, "n": str(n)}, f"{e} = {base ** n}")


def _sqrt_kind(rng: random.Random, o: Options) -> _Item:
    """Half perfect squares (exact roots), half any radicand (rounded roots)."""
    if rng.random() < 0.5:
        n = rng.randint(0, isqrt(10 ** o.int_digits - 1)) ** 2
    else:
        n = _magnitude(rng, o.int_digits)
    value, rounded = _sqrt(n, o.decimals)
    e = f"√{n}"
    return _Item(SQRT, {"e": e, "n": str(n)}, f"{e} = {format_number(value)}", rounded)


def _average(rng: random.Random, o: Options) -> _Item:
    xs = [_int(rng, o) for _ in range(rng.randint(3, 6))]
    value, rounded = _to_decimal(Fraction(int(sum(xs)), len(xs)), o.decimals)
    shown = [format(x, "f") for x in xs]
    slots = {"list_zh": "、".join(shown), "list_en": ", ".join(shown[:-1]) + " and " + shown[-1]}
    return _Item(AVERAGE, slots, f"({_expr('+', *xs)}) / {len(xs)} = {format_number(value)}", rounded)


def _percent(rng: random.Random, o: Options) -> _Item:
    """Either p% of b (a plain number) or what percent a is of b (answer written as a percent)."""
    b = _magnitude(rng, o.int_digits, low=1)
    if rng.random() < 0.5:
        p = rng.randint(1, 100)
        value, _ = _to_decimal(Fraction(b * p, 100), 2)
        return _Item(PERCENT_OF, {"b": str(b), "p": str(p)}, f"{b} * {p}% = {format_number(value)}")
    a = rng.randint(0, b)
    value, rounded = _to_decimal(Fraction(100 * a, b), o.decimals)
    return _Item(WHAT_PERCENT, {"a": str(a), "b": str(b)}, f"{a} / {b} = {format_number(value)}%", rounded)


def _equation(rng: random.Random, o: Options) -> _Item:
    """a·x + b = c with an integer solution x; |a| has at most two digits."""
    a = _sign(rng, o) * rng.randint(1, 10 ** min(2, o.int_digits) - 1)
    x = int(_int(rng, o))
    b = _sign(rng, o) * _magnitude(rng, o.int_digits, low=1)
    coef = {1: "", -1: "-"}.get(a, str(a))
    eq = f"{coef}x {'+' if b > 0 else '-'} {abs(b)} = {a * x + b}"
    return _Item(EQUATION, {"eq": eq}, f"{eq}, x = {x}")


KINDS: dict[str, Callable[[random.Random, Options], _Item]] = {
    "int_add": _binary("+", _int),
    "int_sub": _binary("-", _int),
    "int_mul": _binary("*", _int),
    "int_div": _int_div,
    "dec_add": _binary("+", _dec),
    "dec_sub": _binary("-", _dec),
    "dec_mul": _binary("*", _dec),
    "dec_div": _dec_div,
    "power": _power,
    "sqrt": _sqrt_kind,
    "average": _average,
    "percent": _percent,
    "equation": _equation,
}


# --- public API ----------------------------------------------------------------------------------

def _check_kinds(kinds: list[str] | str | None) -> list[str]:
    """Kinds may come from YAML as a list or from the CLI as 'a,b'; unknown names list the known ones."""
    if kinds is None:
        return list(KINDS)
    names = [k.strip() for k in (kinds.split(",") if isinstance(kinds, str) else kinds)]
    for k in names or [""]:
        if k not in KINDS:
            raise TunelabError(f"unknown kind '{k}' (known: {', '.join(KINDS)})", field="kinds")
    return names


def _options(options: dict[str, Any]) -> Options:
    known = [f.name for f in fields(Options)]
    for name in options:
        if name not in known:
            raise TunelabError(f"unknown arithmetic option '{name}' (known: kinds, lang, {', '.join(known)})",
                               field=name)
    return Options(**options)


def generate(count: int, seed: int = 0, kinds: list[str] | None = None, lang: str = "mix",
             **options: Any) -> list[dict]:
    """`count` problems drawn uniformly over `kinds`; the same arguments always give the same list."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise TunelabError(f"expected a non-negative integer, got {count!r}", field="count")
    if lang not in LANGS:
        raise TunelabError(f"unknown language '{lang}' (choose from {', '.join(LANGS)})", field="lang")
    names = _check_kinds(kinds)
    opts = _options(options)
    rng = random.Random(seed)
    out = []
    for i in range(count):
        kind = rng.choice(names)
        item = KINDS[kind](rng, opts)
        lg = rng.choice(("zh", "en")) if lang == "mix" else lang
        problem = rng.choice(item.phrasings[lg]).format(**item.slots)
        if item.rounded:
            problem += ROUND_NOTE[lg].format(n=opts.decimals)
        out.append({"id": f"arith-{i:06d}", "problem": problem, "solution": item.solution, "kind": kind})
    return out


def subsample(path: str | Path, count: int, seed: int) -> list[dict]:
    """`count` records picked reproducibly (same seed, same picks), kept whole and in file order.

    Entrants train on e.g. 90k of the 800k competition problems; the file may be in any record format.
    """
    records = [rec for _, rec in iter_records(path)]
    if count < 0 or count > len(records):
        raise TunelabError(f"cannot take {count} records: the file has {len(records)}", file=path)
    picks = sorted(random.Random(seed).sample(range(len(records)), count))
    return [records[i] for i in picks]


def write_records(path: str | Path, records: list[dict]) -> None:
    """Write a .json array or .jsonl file, chosen by the suffix so the user states the format once."""
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        write_jsonl(path, records)
    elif suffix == ".json":
        write_json(path, records)
    else:
        raise TunelabError("output must end in .json (array) or .jsonl", file=path)
