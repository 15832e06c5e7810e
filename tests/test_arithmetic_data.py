"""The arithmetic generator: exact answers, both languages, difficulty options, reproducibility, CLI."""

from __future__ import annotations

import json
import re
from decimal import ROUND_HALF_UP, Context, Decimal
from fractions import Fraction
from math import isqrt

import pytest

from tunelab.cli import main
from tunelab.data.synthetic.arithmetic import KINDS, generate, subsample
from tunelab.errors import TunelabError
from tunelab.records import write_jsonl

ALL_KINDS = ["int_add", "int_sub", "int_mul", "int_div", "dec_add", "dec_sub", "dec_mul", "dec_div",
             "power", "sqrt", "average", "percent", "equation"]
NUM = re.compile(r"-?\d+(?:\.\d+)?")
NOTE = re.compile(r"（结果保留(\d+)位小数）| Round the result to (\d+) decimal places\.")
CJK = re.compile(r"[\u4e00-\u9fff]")
HIGH = Context(prec=120)


def _round(value: Fraction, places: int) -> Decimal:
    exact = HIGH.divide(Decimal(value.numerator), Decimal(value.denominator))
    return exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def _terminates_within(value: Fraction, places: int) -> bool:
    return (value * 10 ** places).denominator == 1


def _expected(rec: dict) -> tuple[Fraction | Decimal, int | None]:
    """Recompute the answer from the problem text alone; returns (exact value, rounding places or None)."""
    problem = rec["problem"]
    note = NOTE.search(problem)
    places = int(note.group(1) or note.group(2)) if note else None
    text = NOTE.sub("", problem)
    nums = [Fraction(Decimal(x)) for x in NUM.findall(text)]
    kind = rec["kind"]
    if kind.endswith("_add"):
        return nums[0] + nums[1], places
    if kind.endswith("_sub"):
        return nums[0] - nums[1], places
    if kind.endswith("_mul"):
        return nums[0] * nums[1], places
    if kind.endswith("_div"):
        return nums[0] / nums[1], places
    if kind == "power":
        return nums[0] ** int(nums[1]), places
    if kind == "sqrt":
        n = int(nums[0])
        root = isqrt(n)
        if places is None:
            assert root * root == n, rec
            return Fraction(root), None
        return HIGH.sqrt(Decimal(n)), places
    if kind == "average":
        return sum(nums) / len(nums), places
    if kind == "percent":
        pct = re.search(r"(\d+)%", text)
        if pct:  # p% of b
            p = Fraction(int(pct.group(1)))
            b = next(x for x in nums if x != p) if nums[0] != nums[1] else nums[0]
            return b * p / 100, places
        return 100 * nums[0] / nums[1], places
    if kind == "equation":
        m = re.search(r"(-?\d*)x ([+-]) (\d+) = (-?\d+)", text)
        a = {"": 1, "-": -1}.get(m.group(1)) or int(m.group(1))
        b = int(m.group(3)) * (1 if m.group(2) == "+" else -1)
        x = Fraction(int(m.group(4)) - b, a)
        assert x.denominator == 1, rec
        return x, places
    raise AssertionError(f"untested kind {kind}")


def _answer(solution: str) -> Decimal:
    return Decimal(solution.rsplit("=", 1)[1].strip().rstrip("%"))


def test_kinds_registry_has_exactly_the_competition_kinds():
    assert list(KINDS) == ALL_KINDS


@pytest.mark.parametrize("options", [{}, {"int_digits": 6, "decimals": 3, "fixed_decimals": True},
                                     {"int_digits": 1, "decimals": 1, "signed": False}])
def test_every_solution_matches_an_independent_recomputation(options):
    records = generate(1300, seed=11, **options)
    assert {r["kind"] for r in records} == set(ALL_KINDS)
    for rec in records:
        value, places = _expected(rec)
        answer = _answer(rec["solution"])
        if places is None:
            assert isinstance(value, Fraction) and Fraction(answer) == value, rec
        else:
            assert answer == _round(value, places) if isinstance(value, Fraction) else \
                answer == value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP), rec
            if isinstance(value, Fraction):  # the note appears only when rounding was really needed
                assert not _terminates_within(value, places), rec


def test_solution_format_echoes_the_expression():
    for rec in generate(300, seed=5):
        assert set(rec) == {"id", "problem", "solution", "kind"}
        assert re.search(r"= -?\d+(\.\d+)?%?$", rec["solution"]), rec
        assert not re.search(r"-0(?![.\d])", rec["solution"]), rec  # never "-0"
        assert not re.search(r"= -?\d+\.\d*0%?$", rec["solution"]), rec  # no trailing zeros


def test_negative_later_operands_are_parenthesised():
    records = generate(400, seed=2, kinds=["int_sub", "dec_add"])
    assert any(re.search(r"[-+] \(-\d", r["solution"]) for r in records)
    assert any(r["solution"].startswith("-") for r in records)
    for r in records:
        lhs = r["solution"].rsplit("=", 1)[0]
        assert not re.search(r"[-+] -\d", lhs), r


def test_deterministic_per_seed():
    assert generate(200, seed=3) == generate(200, seed=3)
    assert generate(200, seed=3) != generate(200, seed=4)
    assert [r["id"] for r in generate(3)] == ["arith-000000", "arith-000001", "arith-000002"]


def test_mix_has_both_languages_and_single_languages_are_pure():
    mixed = generate(400, seed=1, lang="mix")
    zh = [r for r in mixed if CJK.search(r["problem"])]
    assert 100 < len(zh) < 300
    for kind in ALL_KINDS:
        langs = {bool(CJK.search(r["problem"])) for r in generate(60, seed=1, kinds=[kind])}
        assert langs == {True, False}, kind
    assert all(CJK.search(r["problem"]) for r in generate(200, seed=1, lang="zh"))
    assert not any(CJK.search(r["problem"]) for r in generate(200, seed=1, lang="en"))
    phrasings = {NUM.sub("N", NOTE.sub("", r["problem"]).replace("(", "").replace(")", ""))
                 for r in generate(300, seed=1, kinds=["int_add"])}
    assert len(phrasings) >= 6  # several phrasings per language


def _operands(rec: dict) -> list[Decimal]:
    return [Decimal(x) for x in NUM.findall(rec["solution"].rsplit("=", 1)[0])]


BINARY = [k for k in ALL_KINDS if k.startswith(("int_", "dec_"))]


@pytest.mark.parametrize("digits", [1, 2, 5])
def test_int_digits_bounds_operands(digits):
    records = generate(600, seed=9, kinds=BINARY, int_digits=digits)
    operands = [abs(x) for r in records for x in _operands(r)]
    assert all(x < 10 ** digits for x in operands)
    assert max(operands) >= 10 ** (digits - 1)  # the bound is reached, not just respected


def test_decimals_and_fixed_decimals():
    def places(x: Decimal) -> int:
        return max(0, -x.as_tuple().exponent)

    fixed = [x for r in generate(300, seed=4, kinds=["dec_add", "dec_sub", "dec_mul", "dec_div"],
                                 decimals=3, fixed_decimals=True) for x in _operands(r)]
    assert {places(x) for x in fixed} == {3}
    free = [x for r in generate(300, seed=4, kinds=["dec_add"], decimals=3) for x in _operands(r)]
    assert {places(x) for x in free} == {1, 2, 3}


def test_unsigned_has_no_negative_operands():
    records = generate(500, seed=6, signed=False)
    for r in records:
        assert all(x >= 0 for x in _operands(r)), r
    assert any(x < 0 for r in generate(500, seed=6) for x in _operands(r))


def test_unknown_kind_lists_known_kinds():
    with pytest.raises(TunelabError) as e:
        generate(5, kinds=["int_add", "modulo"])
    assert "modulo" in str(e.value) and "int_add" in str(e.value) and "equation" in str(e.value)
    assert [r["kind"] for r in generate(5, kinds="power,sqrt")] != []


@pytest.mark.parametrize("options, field", [({"digits": 3}, "digits"), ({"int_digits": 0}, "int_digits"),
                                            ({"decimals": "2"}, "decimals"), ({"signed": "yes"}, "signed")])
def test_bad_options_name_the_option(options, field):
    with pytest.raises(TunelabError) as e:
        generate(5, **options)
    assert e.value.field == field and field in str(e.value)


def test_bad_lang_and_count():
    with pytest.raises(TunelabError, match="fr"):
        generate(5, lang="fr")
    with pytest.raises(TunelabError, match="count"):
        generate(-1)


def test_subsample_is_reproducible_subset_with_all_fields(tmp_path):
    path = tmp_path / "big.jsonl"
    records = [dict(r, extra=i) for i, r in enumerate(generate(300, seed=1))]
    write_jsonl(path, records)
    a = subsample(path, 40, seed=5)
    assert a == subsample(path, 40, seed=5)
    assert a != subsample(path, 40, seed=6)
    assert len({r["id"] for r in a}) == 40
    assert all(r in records for r in a)
    assert [r["extra"] for r in a] == sorted(r["extra"] for r in a)  # file order kept
    with pytest.raises(TunelabError) as e:
        subsample(path, 301, seed=0)
    assert "300" in str(e.value) and "big.jsonl" in str(e.value)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_cli_writes_generated_file(tmp_path, capsys, suffix):
    out = tmp_path / f"train{suffix}"
    rc = main(["data", "arithmetic", "--out", str(out), "--count", "25", "--seed", "2",
               "--kinds", "int_add,percent", "--lang", "en"])
    assert rc == 0
    text = out.read_text(encoding="utf-8")
    got = json.loads(text) if suffix == ".json" else [json.loads(ln) for ln in text.splitlines()]
    assert got == generate(25, seed=2, kinds=["int_add", "percent"], lang="en")
    summary = capsys.readouterr().out
    assert summary.count("\n") == 1 and "25" in summary and "int_add" in summary and "percent" in summary


def test_cli_subsamples_from_file(tmp_path, capsys):
    src, out = tmp_path / "all.json", tmp_path / "some.jsonl"
    main(["data", "arithmetic", "--out", str(src), "--count", "50"])
    assert main(["data", "arithmetic", "--out", str(out), "--count", "10", "--from", str(src)]) == 0
    assert [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines()] == subsample(src, 10, 0)


def test_cli_list_kinds(tmp_path, capsys):
    assert main(["data", "arithmetic", "--list-kinds"]) == 0  # as the README writes it: no --out
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ALL_KINDS
    assert main(["data", "arithmetic", "--out", str(tmp_path / "x.json"), "--list-kinds"]) == 0
    assert not (tmp_path / "x.json").exists()


def test_cli_without_out_is_one_line_error(capsys):
    assert main(["data", "arithmetic", "--count", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunelab: error: --out is required") and err.count("\n") == 1


@pytest.mark.parametrize("out, argv", [("x.json", ["--kinds", "nope"]), ("x.txt", []),
                                       ("x.json", ["--from", "missing.json"])])
def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys, out, argv):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "arithmetic", "--out", out, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunelab: error:") and err.count("\n") == 1


def test_the_cli_makes_the_same_problems_as_the_quickstart_recipe(tmp_path, capsys):
    """`tunelab data arithmetic` takes every generator option a recipe's `options:` does, so the quickstart's
    training data can be made for another tool: the same records, byte for byte."""
    import json
    from pathlib import Path

    from tunelab.cli import main
    from tunelab.data.sources import generate_records
    from tunelab.recipe import load_recipe
    quickstart = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    source = load_recipe(quickstart, check_data=False).data.train[0]
    assert source.options == {"kinds": ["dec_add", "dec_sub"], "int_digits": 1, "decimals": 2,
                              "fixed_decimals": True}
    out = tmp_path / "train.jsonl"
    assert main(["data", "arithmetic", "--out", str(out), "--count", "300", "--seed", str(source.seed),
                 "--kinds", "dec_add,dec_sub", "--int-digits", "1", "--decimals", "2", "--fixed-decimals"]) == 0
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert written == generate_records(source.model_copy(update={"count": 300}))[0]
    assert main(["data", "arithmetic", "--out", str(out), "--int-digits", "0"]) == 2
    assert "--int-digits: expected an integer from 1 to 18" in capsys.readouterr().err
    assert main(["data", "arithmetic", "--out", str(out), "--from", str(out), "--no-signed"]) == 2
    assert "--signed applies to generated problems, not to --from" in capsys.readouterr().err


def _steps(solution: str) -> list[str]:
    return solution.split(" = ")


def test_show_work_signs_reduces_to_one_unsigned_operation_with_the_same_answer():
    """The step is checked by recomputing it: unsigned operands, the larger first in a difference, its value the
    answer's; the problems drawn and the answers are those of `show_work: none`."""
    kinds = ["int_add", "int_sub", "dec_add", "dec_sub", "dec_mul", "power"]
    for options in ({}, {"int_digits": 1, "decimals": 2, "fixed_decimals": True}, {"signed": False}):
        plain = generate(1500, seed=21, kinds=kinds, **options)
        worked = generate(1500, seed=21, kinds=kinds, show_work="signs", **options)
        assert [r["problem"] for r in worked] == [r["problem"] for r in plain]
        assert [_answer(r["solution"]) for r in worked] == [_answer(r["solution"]) for r in plain]
        reduced = 0
        for rec, ref in zip(worked, plain):
            steps = _steps(rec["solution"])
            if rec["kind"] not in ("int_add", "int_sub", "dec_add", "dec_sub") or len(steps) == 2:
                assert rec["solution"] == ref["solution"], rec
                if len(steps) == 2 and rec["kind"] in ("int_add", "int_sub", "dec_add", "dec_sub"):
                    a, op, b = steps[0].split(" ")  # already unsigned, the larger first
                    assert not a.startswith("-") and not b.startswith("(") and (op == "+" or Decimal(a) >= Decimal(b))
                continue
            reduced += 1
            assert steps[0] == _steps(ref["solution"])[0] and len(steps) == 3, rec
            m = re.fullmatch(r"(-\()?(\d+(?:\.\d+)?) ([+-]) (\d+(?:\.\d+)?)(\))?", steps[1])
            assert m and bool(m[1]) == bool(m[5]), rec
            a, b = Decimal(m[2]), Decimal(m[4])
            value = a + b if m[3] == "+" else a - b
            assert m[3] == "+" or a >= b, rec
            assert (-value if m[1] else value) == _answer(rec["solution"]), rec
            assert not (m[1] and value == 0), rec  # never "-(x - x)"
            # the operands are the problem's own, as written
            assert sorted([m[2], m[4]]) == sorted(x.strip("()-") for x in re.findall(r"\(?-?[\d.]+\)?",
                                                                                    steps[0])), rec
        assert reduced > (0 if options.get("signed") is False else 300)


@pytest.mark.parametrize("expr, solution", [
    ("4.72 + (-7.15)", "4.72 + (-7.15) = -(7.15 - 4.72) = -2.43"),
    ("-1.85 - 2.56", "-1.85 - 2.56 = -(1.85 + 2.56) = -4.41"),
    ("-6.62 + 7.77", "-6.62 + 7.77 = 7.77 - 6.62 = 1.15"),
    ("9.10 - (-0.50)", "9.10 - (-0.50) = 9.10 + 0.50 = 9.6"),
    ("-3.00 + 3.00", "-3.00 + 3.00 = 3.00 - 3.00 = 0"),
    ("2.71 - 1.80", "2.71 - 1.80 = 0.91"),
    ("-12 - (-12)", "-12 - (-12) = 12 - 12 = 0"),
])
def test_show_work_signs_examples(expr, solution):
    from tunelab.data.synthetic.arithmetic import _worked
    a, op, b = re.fullmatch(r"(-?[\d.]+) ([+-]) \(?(-?[\d.]+)\)?", expr).groups()
    assert " = ".join(_worked(op, Decimal(a), Decimal(b), "signs")) + " = " + solution.rsplit(" = ", 1)[1] == solution


def test_show_work_is_graded_on_its_answer_and_a_bad_value_names_the_option(tmp_path, capsys):
    from tunelab.tasks.arithmetic import grade_arithmetic
    for work in ("signs", "columns", "digits", "compare"):
        for rec, ref in zip(generate(200, seed=3, kinds=["dec_add", "dec_sub"], show_work=work),
                            generate(200, seed=3, kinds=["dec_add", "dec_sub"])):
            assert grade_arithmetic(rec["solution"], ref["solution"])["correct"], rec
            assert grade_arithmetic(rec["solution"], rec["solution"])["format_ok"], rec
    with pytest.raises(TunelabError) as e:
        generate(5, show_work="all")
    assert e.value.field == "show_work" and "none, signs, columns, digits" in str(e.value)
    out = tmp_path / "w.jsonl"
    assert main(["data", "arithmetic", "--out", str(out), "--count", "40", "--seed", "3",
                 "--kinds", "dec_add,dec_sub", "--show-work", "signs"]) == 0
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert written == generate(40, seed=3, kinds=["dec_add", "dec_sub"], show_work="signs")
    assert main(["data", "arithmetic", "--out", str(out), "--show-work", "steps"]) == 2
    assert capsys.readouterr().err.startswith("tunelab: error: --show-work: expected one of none, signs, columns, digits")


def _worked_both_ways(work: str, like: str):
    """For each option set the worked forms are checked on, the same 800 sums and differences with `work` shown and
    with `like` (the form it extends), paired."""
    kinds = ["int_add", "int_sub", "dec_add", "dec_sub"]
    for options in ({}, {"int_digits": 1, "decimals": 2, "fixed_decimals": True}):
        yield list(zip(generate(800, seed=8, kinds=kinds, show_work=work, **options),
                       generate(800, seed=8, kinds=kinds, show_work=like, **options)))


def test_show_work_columns_works_each_difference_right_to_left():
    """Recomputed from the problem: one step per column of the larger number as written (units "0" included),
    each column's digit less what the column before borrowed, plus 10 where it must borrow; the steps' digits read
    right to left are the difference. Sums keep the signs step only."""
    for pairs in _worked_both_ways("columns", "signs"):
        worked = 0
        for rec, ref in pairs:
            m = re.fullmatch(r"(.*) \(([\d=\- ]+)\)( = [-\d.]+)", rec["solution"])
            if not m:
                assert rec["solution"] == ref["solution"] and " - " not in _steps(ref["solution"])[-2], rec
                continue
            assert m[1] + m[3] == ref["solution"], rec
            worked += 1
            p, q = (Decimal(x) for x in re.search(r"([\d.]+) - ([\d.]+)\)?$", m[1]).groups())
            places = max(0, -p.as_tuple().exponent, -q.as_tuple().exponent)
            top = format(p, "f").replace(".", "") + "0" * (places + p.as_tuple().exponent)
            bottom = str(int(q.scaleb(places))).zfill(len(top))
            steps = [tuple(map(int, re.fullmatch(r"(\d+)-(\d)=(\d)", s).groups())) for s in m[2].split(" ")]
            assert len(steps) == len(top), rec
            borrow = 0
            for (upper, lower, digit), t, b in zip(steps, reversed(top), reversed(bottom)):
                assert lower == int(b) and upper - lower == digit, rec
                lends = int(int(t) - borrow < lower)
                assert upper == int(t) - borrow + 10 * lends, rec
                borrow = lends
            assert borrow == 0 and int("".join(str(d) for *_, d in reversed(steps))) == (p - q).scaleb(places), rec
        assert worked > 250


@pytest.mark.parametrize("solution", [
    "4.72 + (-7.15) = -(7.15 - 4.72) (5-2=3 11-7=4 6-4=2) = -2.43",
    "2.71 - 1.80 (1-0=1 17-8=9 1-1=0) = 0.91",
    "-0.50 + 0.58 = 0.58 - 0.50 (8-0=8 5-5=0 0-0=0) = 0.08",
    "9.10 - (-0.50) = 9.10 + 0.50 = 9.6",
    "1000 - 1 (10-1=9 9-0=9 9-0=9 0-0=0) = 999",
])
def test_show_work_columns_examples(solution):
    from tunelab.data.synthetic.arithmetic import _worked
    expr = re.split(r" \((?=\d)", solution.split(" = ")[0])[0]  # the work starts with a digit, "(-7.15)" does not
    a, op, b = re.fullmatch(r"(-?[\d.]+) ([+-]) \(?(-?[\d.]+)\)?", expr).groups()
    steps = _worked(op, Decimal(a), Decimal(b), "columns")
    assert " = ".join(steps) + " = " + solution.rsplit(" = ", 1)[1] == solution


def test_show_work_digits_works_each_column_from_its_digits():
    """Recomputed from the problem: the unsigned operation of `signs`, then one step per column of the longer
    number, right to left, each naming the two digits as written and the carry or lend from the column before;
    a difference that goes below zero says "<0" and works again with 10 added; the steps' last digits read right to
    left (a sum's last carry in front) are the answer."""
    for pairs in _worked_both_ways("digits", "signs"):
        borrowed = carried = 0
        for rec, ref in pairs:
            m = re.fullmatch(r"(.*) \(([\d=+<\- ]+)\)( = [-\d.]+)", rec["solution"])
            assert m and m[1] + m[3] == ref["solution"], rec
            p, op, q = re.search(r"([\d.]+) ([+-]) ([\d.]+)\)?$", m[1]).groups()
            p, q = Decimal(p), Decimal(q)
            places = max(0, -p.as_tuple().exponent, -q.as_tuple().exponent)
            top, bottom = (format(x, "f").replace(".", "") + "0" * (places + x.as_tuple().exponent) for x in (p, q))
            width = max(len(top), len(bottom))
            steps = re.findall(r"(\d)([+-])(\d)([+-]1)?(<0 1\d-\d(?:-1)?)?=(\d+)", m[2])
            assert " ".join("".join(s[:5]) + "=" + s[5] for s in steps) == m[2], rec
            assert len(steps) == width, rec
            carry, out = 0, []
            for (upper, sign, lower, one, below, result), t, b in zip(
                    steps, reversed(top.zfill(width)), reversed(bottom.zfill(width))):
                assert (upper, lower, sign, bool(one)) == (t, b, op, bool(carry)), rec
                value = int(t) + int(b) + carry if op == "+" else int(t) - int(b) - carry
                assert bool(below) == (value < 0) and (not below or below == f"<0 1{t}{sign}{b}{one}"), rec
                assert int(result) == value + 10 * (value < 0), rec
                borrowed += value < 0
                carried += op == "+" and value >= 10
                carry = int(value >= 10) if op == "+" else int(value < 0)
                out.append(result[-1])
            total = int(("1" if carry else "") + "".join(reversed(out)))
            assert total == ((p + q) if op == "+" else (p - q)).scaleb(places), rec
        assert borrowed > 150 and carried > 150


@pytest.mark.parametrize("solution", [
    "4.72 + (-7.15) = -(7.15 - 4.72) (5-2=3 1-7<0 11-7=4 7-4-1=2) = -2.43",
    "-8.40 + 3.01 = -(8.40 - 3.01) (0-1<0 10-1=9 4-0-1=3 8-3=5) = -5.39",
    "-8.97 + (-7.29) = -(8.97 + 7.29) (7+9=16 9+2+1=12 8+7+1=16) = -16.26",
    "9.10 - (-0.50) = 9.10 + 0.50 (0+0=0 1+5=6 9+0=9) = 9.6",
    "1000 - 1 (0-1<0 10-1=9 0-0-1<0 10-0-1=9 0-0-1<0 10-0-1=9 1-0-1=0) = 999",
    "0.73 + 9.20 (3+0=3 7+2=9 0+9=9) = 9.93",
])
def test_show_work_digits_examples(solution):
    from tunelab.data.synthetic.arithmetic import _worked
    expr = re.split(r" \((?=\d)", solution.split(" = ")[0])[0]
    a, op, b = re.fullmatch(r"(-?[\d.]+) ([+-]) \(?(-?[\d.]+)\)?", expr).groups()
    assert " = ".join(_worked(op, Decimal(a), Decimal(b), "digits")) + " = " + solution.rsplit(" = ", 1)[1] == solution


def test_show_work_compare_orders_opposite_signs_after_comparing_them():
    """`compare` is `digits` with the numbers of every difference of magnitudes compared first: unsigned, in the
    problem's order, digit by digit from the left up to the first that differs; the relation found is the order the
    reduction then puts them in. Same-signed sums are `digits` unchanged; the answer is graded as ever."""
    from tunelab.tasks.arithmetic import grade_arithmetic
    for pairs in _worked_both_ways("compare", "digits"):
        compared = 0
        for rec, ref in pairs:
            assert grade_arithmetic(rec["solution"], ref["solution"])["correct"], rec
            m = re.search(r" \(([\d.]+) vs ([\d.]+): ((?:\d[=<>]\d ?)+)\)", rec["solution"])
            if not m:
                assert rec["solution"] == ref["solution"] and " + " in re.split(r" \(\d", ref["solution"])[-2], rec
                continue
            compared += 1
            assert rec["solution"].replace(m[0], "", 1) == ref["solution"], rec
            x, y = Decimal(m[1]), Decimal(m[2])
            expr = re.split(r" \((?=\d)", rec["solution"])[0]  # the work starts with a digit, "(-1)" does not
            assert [abs(Decimal(n)) for n in re.findall(r"-?[\d.]+", expr)] == [x, y], rec
            pairs = m[3].split()
            assert all(p[1] == "=" for p in pairs[:-1]) and (pairs[-1][1] != "=" or x == y), rec
            width = max(len(format(v, "f").split(".")[0]) for v in (x, y))
            places = max(0, -x.as_tuple().exponent, -y.as_tuple().exponent)
            left, right = (format(v, f"0{width + places + bool(places)}.{places}f").replace(".", "") for v in (x, y))
            assert [p[0] + p[2] for p in pairs] == [u + v for u, v in zip(left, right)][:len(pairs)], rec
            larger = x if x > y or (x == y and not expr.startswith("-")) else y
            reduced = re.search(r"= -?\(?([\d.]+) - ", rec["solution"]) or re.match(r"([\d.]+) - ", expr)
            assert Decimal(reduced[1]) == larger, rec
        assert compared > 300


@pytest.mark.parametrize("solution", [
    "-6.73 + 5.23 (6.73 vs 5.23: 6>5) = -(6.73 - 5.23) (3-3=0 7-2=5 6-5=1) = -1.5",
    "4.72 + (-7.15) (4.72 vs 7.15: 4<7) = -(7.15 - 4.72) (5-2=3 1-7<0 11-7=4 7-4-1=2) = -2.43",
    "6.73 - 6.85 (6.73 vs 6.85: 6=6 7<8) = -(6.85 - 6.73) (5-3=2 8-7=1 6-6=0) = -0.12",
    "2.71 - 1.80 (2.71 vs 1.80: 2>1) (1-0=1 7-8<0 17-8=9 2-1-1=0) = 0.91",
    "-0.50 + 0.50 (0.50 vs 0.50: 0=0 5=5 0=0) = 0.50 - 0.50 (0-0=0 5-5=0 0-0=0) = 0",
    "1000 - 1 (1000 vs 1: 1>0) (0-1<0 10-1=9 0-0-1<0 10-0-1=9 0-0-1<0 10-0-1=9 1-0-1=0) = 999",
    "-8.97 + (-7.29) = -(8.97 + 7.29) (7+9=16 9+2+1=12 8+7+1=16) = -16.26",
])
def test_show_work_compare_examples(solution):
    from tunelab.data.synthetic.arithmetic import _worked
    a, op, b = re.match(r"(-?[\d.]+) ([+-]) \(?(-?[\d.]+)\)?", solution).groups()
    assert " = ".join(_worked(op, Decimal(a), Decimal(b), "compare")) + " = " + solution.rsplit(" = ", 1)[1] == solution
