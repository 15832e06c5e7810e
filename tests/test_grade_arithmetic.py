"""Arithmetic grading: final-number extraction, numeric comparison, diagnostics and the grade CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import pytest

from tunelab.cli import main
from tunelab.data.examples import Example
from tunelab.records import write_json, write_jsonl
from tunelab.tasks.arithmetic import grade_arithmetic, summarize_arithmetic
from tunelab.tasks.registry import get_task

GOLD = "-6797.66 - 280.27 = -7077.93"


def final_number(text: str) -> Decimal | None:
    """The number the grader read as `text`'s final answer (its `pred_value`); None when it found none or the
    number is out of range."""
    g = grade_arithmetic(text, "= 0")
    return None if g["pred_value"] is None or g["out_of_range"] else Decimal(g["pred_value"])


@pytest.mark.parametrize("text, value", [
    ("= -7077.93", "-7077.93"),
    ("答案是 -7077.930", "-7077.93"),
    ("-7,077.93", "-7077.93"),
    ("-6797.66 - 280.27 = -7,077.93", "-7077.93"),
    ("\u22127077.93", "-7077.93"),           # Unicode minus
    ("\uff0d7077.93", "-7077.93"),           # full-width minus
    ("１２", "12"),                            # full-width digits
    ("6 + 6 ＝ １２。", "12"),
    ("= 5.", "5"),
    ("3/4", "0.75"),
    ("答案：-3/4", "-0.75"),
    ("1.5e3", "1500"),
    ("2.5E-2", "0.025"),
    ("25%", "25"),
    ("45 / 180 = 25%", "25"),
    ("x = 5", "5"),
    ("3x + 5 = 20, x = 5", "5"),
    (GOLD, "-7077.93"),
    ("10 - 3", "3"),                            # binary minus, no '='
    ("10 -3", "3"),
    ("(-5) - 2", "2"),
    ("The answer is -5", "-5"),
    ("12 + (-5) = 7 (check: 7 + 5 = 12)", "12"),  # the first number after the LAST "="
    ("= .5", "0.5"),
    ("√144 = 12", "12"),
    # the dash family, and a sign separated by one space
    ("\u20107077.93", "-7077.93"),          # hyphen
    ("\u20117077.93", "-7077.93"),          # non-breaking hyphen
    ("\u20127077.93", "-7077.93"),          # figure dash
    ("\u20137077.93", "-7077.93"),          # en dash
    ("\ufe637077.93", "-7077.93"),          # small hyphen-minus
    ("- 7077.93", "-7077.93"),
    ("= - 7077.93", "-7077.93"),
    ("答案是 \u2212 7077.93", "-7077.93"),
    ("-\u00a07077.93", "-7077.93"),
    ("-  7077.93", "7077.93"),               # two spaces: not a sign
    ("10 \u2013 3", "3"),                     # an en dash between operands is an operator
    ("1\u20135", "5"),
    ("10 \u2212 3", "3"),
    # digit groups
    ("7 077.93", "7077.93"),
    ("7\u2009077.93", "7077.93"),            # thin space
    ("7\u202f077.93", "7077.93"),            # narrow no-break space
    ("7\u00a0077.93", "7077.93"),            # no-break space
    ("-7 077.93", "-7077.93"),
    ("- 7 077.93", "-7077.93"),
    ("1 000 000", "1000000"),
    ("1,234,567.5", "1234567.5"),
    ("1，234", "1234"),                        # full-width comma
    ("= 12,345", "12345"),
    ("1,2", "2"),                              # not a grouping: two numbers
    ("= 1,2", "1"),
    ("12,34,567", "567"),
    ("= 12,34,567", "12"),
    ("= 1,234,5678", "1"),
    ("= 1234,567", "1234"),                   # a first group of four digits
    ("= 1,234 567", "1"),                     # separators differ
    ("= 1 2 3", "1"),
    ("5, 6", "6"),
    ("= 7 0.5", "7"),
    ("1.2.3", "1.2"),
    # bounds
    ("0e99999999999", "0"),
    ("= 0.0e-99999999999999", "0"),
    ("1e200", "1e200"),
    ("1e-200", "1e-200"),
    ("9" * 200, "9" * 200),
    ("1." + "0" * 5000, "1"),                 # trailing zeros are not significant
    ("0" * 5000 + "7", "7"),
    ("1" + "0" * 200, "1e200"),
])
def test_the_final_number_is_read(text, value):
    assert final_number(text) == Decimal(value)


@pytest.mark.parametrize("text", ["1e9999999", "1e-100000000", "1e-999999999", "1e201", "1e-201", "9" * 201,
                                  "1" + "0" * 201, "1e" + "9" * 5000, "-1e" + "9" * 5000, "1/" + "9" * 201,
                                  "1e-200/3", "0." + "0" * 200 + "1"])
def test_out_of_range_is_none(text):
    assert final_number(text) is None


@pytest.mark.parametrize("pred, written, sign_ok", [
    ("1e9999999", "1e9999999", True),
    ("= -1e-100000000", "-1e-100000000", False),
    ("答案是 " + "7" * 100_000, "7" * 32 + "…", True),
    ("-1e" + "9" * 100_000, "-1e" + "9" * 29 + "…", False),
])
def test_out_of_range_prediction_is_a_counted_wrong_answer(pred, written, sign_ok):
    g = grade_arithmetic(pred, "1 + 2 = 3")
    assert g == {"correct": False, "pred_value": written, "gold_value": "3", "format_ok": False,
                 "sign_ok": sign_ok, "within_tol": False, "digit_acc": 0.0, "out_of_range": True, "kind": ""}
    assert summarize_arithmetic([g])["out_of_range"] == 1.0


def test_out_of_range_keeps_the_shape():
    assert grade_arithmetic("1 + 2 = 1e999999", "1 + 2 = 3")["format_ok"] is True


def test_long_exact_values_are_not_rounded():
    big = "123456789012345678901234567890123"  # beyond Decimal's default 28-digit context
    assert grade_arithmetic(big, f"= {big}")["correct"] is True
    g = grade_arithmetic("-" + big[:-1] + "4", f"= -{big}")
    assert g["correct"] is False and g["pred_value"] == "-" + big[:-1] + "4"
    assert g["digit_acc"] == pytest.approx(32 / 33)


@pytest.mark.parametrize("text", ["", "no idea", "x = ?", "答案是：", "= abc"])
def test_no_number_is_none(text):
    assert final_number(text) is None


@pytest.mark.parametrize("pred, gold, correct", [
    ("-6797.66 - 280.27 = -7077.93", GOLD, True),
    ("答案是 -7077.930", GOLD, True),         # trailing zero
    ("-7,077.93", GOLD, True),
    ("\u22127077.93", GOLD, True),
    ("\uff0d7077.93", GOLD, True),
    ("= -7077.93.", GOLD, True),
    ("-7077.9", GOLD, False),
    ("7077.93", GOLD, False),
    ("１２", "7 + 5 = 12", True),
    ("3/4", "3 / 4 = 0.75", True),
    ("1.5e3", "1000 + 500 = 1500", True),
    ("7.5e-1", "0.75", True),
    ("1/3", "1 / 3 = 0.33", False),            # the competition wants the rounded value
    ("0.333333333333", "1/3", True),          # relative tolerance only for fraction/scientific values
    ("0.3333", "1/3", False),
    ("25%", "45 / 180 = 25%", True),          # percent answers compare as written
    ("25", "45 / 180 = 25%", True),
    ("0.25", "45 / 180 = 25%", False),
    ("3x + 5 = 20, x = 5", "3x + 5 = 20, x = 5", True),
    ("x = 5", "3x + 5 = 20, x = 5", True),
    ("x = -5", "3x + 5 = 20, x = 5", False),
    ("0", "-3 + 3 = 0", True),
    ("- 7077.93", GOLD, True),
    ("\u20137077.93", GOLD, True),
    ("\u20107077.93", GOLD, True),
    ("-7 077.93", GOLD, True),
    ("-7\u2009077.93", GOLD, True),
    ("-7\u202f077.93", GOLD, True),
    ("-7，077.93", GOLD, True),
    ("-70,77.93", GOLD, False),               # not a grouping: the last number is 77.93
    ("= 1,000", "1000", True),
    ("= 1,00,0", "1000", False),
    ("1e9999999", "1e9999999 is too big; = 5", False),
])
def test_correctness(pred, gold, correct):
    assert grade_arithmetic(pred, gold)["correct"] is correct


@pytest.mark.parametrize("pred", ["", "I don't know.", "= ?"])
def test_no_number_prediction_is_wrong_not_an_error(pred):
    g = grade_arithmetic(pred, GOLD, "dec_sub")
    assert g == {"correct": False, "pred_value": None, "gold_value": "-7077.93", "format_ok": False,
                 "sign_ok": False, "within_tol": False, "digit_acc": 0.0, "out_of_range": False,
                 "kind": "dec_sub"}


def test_diagnostics_near_miss():
    g = grade_arithmetic("-6797.66 - 280.27 = -7076.93", GOLD)
    assert g["correct"] is False and g["pred_value"] == "-7076.93" and g["gold_value"] == "-7077.93"
    assert g["format_ok"] and g["sign_ok"] and g["within_tol"]
    assert g["digit_acc"] == pytest.approx(5 / 6)


def test_diagnostics_sign_flip_bare_answer():
    g = grade_arithmetic("7077.93", GOLD)
    assert not g["format_ok"] and not g["sign_ok"] and not g["within_tol"]
    assert g["digit_acc"] == 1.0


@pytest.mark.parametrize("pred, gold, format_ok", [
    ("-6797.66-280.27=-7077.93", GOLD, True),        # whitespace-insensitive
    ("-6797.66 - 280.27 = -7077.93。", GOLD, True),   # final full stop ignored
    ("-6797.66 + 280.27 = -7077.93", GOLD, False),    # different operator
    ("The answer is -7077.93", GOLD, False),
    ("45 / 180 = 25", "45 / 180 = 25%", False),      # the % is part of the shape
    ("12 - (-5) = 17", "12 - (-5) = 17", True),
    ("12 - 5 = 17", "12 - (-5) = 17", False),
])
def test_format_ok(pred, gold, format_ok):
    assert grade_arithmetic(pred, gold)["format_ok"] is format_ok


@pytest.mark.parametrize("pred, gold, sign_ok", [
    ("0", "0", True), ("-3", "0", False), ("0", "-1", False), ("-2", "-1", True), ("5", "2", True),
])
def test_sign_ok(pred, gold, sign_ok):
    assert grade_arithmetic(pred, gold)["sign_ok"] is sign_ok


@pytest.mark.parametrize("pred, gold, within", [
    ("-7100", "-7077.93", True),      # |diff| 22.07 ≤ 1% of 7077.93
    ("-7200", "-7077.93", False),     # 122.07 > 70.78
    ("1.4", "0.5", True),             # small numbers: absolute tolerance 1
    ("1.6", "0.5", False),
])
def test_within_tol(pred, gold, within):
    assert grade_arithmetic(pred, gold)["within_tol"] is within


@pytest.mark.parametrize("pred, gold, acc", [
    ("7077.93", "7077.93", 1.0), ("7076.93", "7077.93", 5 / 6), ("2.5", "12.5", 2 / 3),
    ("12.25", "12.5", 2 / 4), ("-12", "12", 1.0), ("99", "1", 0.0),
])
def test_digit_acc(pred, gold, acc):
    assert grade_arithmetic(pred, gold)["digit_acc"] == pytest.approx(acc)


def test_summarize_rates_and_by_kind():
    graded = [grade_arithmetic("= 3", "1 + 2 = 3", "int_add"),
              grade_arithmetic("1 + 2 = 4", "1 + 2 = 3", "int_add"),
              grade_arithmetic("no", "2 * 3 = 6", "int_mul"),
              grade_arithmetic("2 * 3 = 6", "2 * 3 = 6")]
    s = summarize_arithmetic(graded)
    assert s["n"] == 4 and s["accuracy"] == 0.5 and s["no_number"] == 0.25
    assert s["format_ok"] == 0.5 and s["sign_ok"] == 0.75 and s["within_tol"] == 0.75
    assert s["digit_acc"] == pytest.approx((1 + 0 + 0 + 1) / 4)
    assert set(s["by_kind"]) == {"int_add", "int_mul"}
    assert s["by_kind"]["int_add"]["n"] == 2 and s["by_kind"]["int_add"]["accuracy"] == 0.5
    assert s["by_kind"]["int_mul"]["no_number"] == 1.0
    by_list = summarize_arithmetic(graded, kinds=["a", "b", "a", "b"])["by_kind"]
    assert by_list["a"]["n"] == 2 and by_list["a"]["no_number"] == 0.5 and by_list["b"]["accuracy"] == 0.5
    assert summarize_arithmetic([])["accuracy"] == 0.0


def test_task_plugin():
    task = get_task("arithmetic")
    assert task.primary_metric == "accuracy" and task.default_format == "competition"
    g = task.grade("= 17", Example("x", "What is 12 - (-5)?", "12 - (-5) = 17", kind="int_sub"))
    assert g["correct"] and g["kind"] == "int_sub"
    assert task.summarize([g])["by_kind"]["int_sub"]["accuracy"] == 1.0


# --- CLI -----------------------------------------------------------------------------------------

GOLD_RECORDS = [
    {"id": "a", "problem": "1 + 2?", "solution": "1 + 2 = 3", "kind": "int_add"},
    {"id": "b", "problem": "12 - (-5)?", "solution": "12 - (-5) = 17", "kind": "int_sub"},
    {"id": "c", "problem": "45 是 180 的百分之几？", "solution": "45 / 180 = 25%", "kind": "percent"},
]


@pytest.fixture
def gold(tmp_path):
    path = tmp_path / "gold.json"
    write_json(path, GOLD_RECORDS)
    return path


def _grade(pred, gold, *extra) -> int:
    return main(["grade", "arithmetic", "--pred", str(pred), "--gold", str(gold), *extra])


def test_cli_matches_by_id(tmp_path, gold, capsys):
    pred = tmp_path / "pred.jsonl"
    write_jsonl(pred, [{"id": "c", "prediction": "45 / 180 = 25%"}, {"id": "a", "prediction": "1 + 2 = 3"},
                       {"id": "b", "prediction": "12 - (-5) = 7"}])
    assert _grade(pred, gold, "--json") == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n"] == 3 and s["accuracy"] == pytest.approx(2 / 3)
    assert s["by_kind"]["int_sub"]["accuracy"] == 0.0 and s["by_kind"]["percent"]["accuracy"] == 1.0


def test_cli_matches_plain_text_by_order(tmp_path, gold, capsys):
    pred = tmp_path / "pred.txt"
    pred.write_text("= 3\n\nI think 25%\n\n", encoding="utf-8")  # a blank line inside is an empty answer
    assert _grade(pred, gold) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "66.67%" in out and "33.33%" in out
    for name in ("format_ok", "sign_ok", "within_tol", "digit_acc", "no_number", "int_add", "percent"):
        assert name in out


def test_cli_jsonl_without_ids_matches_by_order(tmp_path, gold, capsys):
    pred = tmp_path / "pred.jsonl"
    write_jsonl(pred, [{"prediction": "3"}, {"prediction": "17"}, {"prediction": "25%"}])
    assert _grade(pred, gold, "--json") == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0


@pytest.mark.parametrize("preds", [
    [{"id": "a", "prediction": "3"}, {"id": "b", "prediction": "17"}],                        # too few
    [{"id": "a", "prediction": "3"}, {"id": "b", "prediction": "17"},
     {"id": "z", "prediction": "1"}],                                                         # id c missing
    [{"prediction": "3"}] * 4,                                                                # too many
])
def test_cli_mismatch_is_an_error_naming_files_and_counts(tmp_path, gold, capsys, preds):
    pred = tmp_path / "pred.jsonl"
    write_jsonl(pred, preds)
    assert _grade(pred, gold) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pred.jsonl" in err and "gold.json" in err
    assert f"{len(preds)} predictions" in err and "3 answers" in err


def test_cli_gold_out_of_range_names_line(tmp_path, capsys):
    gold = tmp_path / "gold.jsonl"
    write_jsonl(gold, [{"solution": "3"}, {"solution": "= 1e999999"}])
    pred = tmp_path / "pred.txt"
    pred.write_text("3\n4\n", encoding="utf-8")
    assert _grade(pred, gold) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gold.jsonl:2, field 'solution'" in err and "out of range" in err


def test_cli_counts_out_of_range_answers(tmp_path, gold, capsys):
    pred = tmp_path / "pred.txt"
    pred.write_text("= 3\n1e9999999\n= 1e-100000000%\n", encoding="utf-8")
    assert _grade(pred, gold, "--json") == 0
    s = json.loads(capsys.readouterr().out)
    assert s["accuracy"] == pytest.approx(1 / 3) and s["out_of_range"] == pytest.approx(2 / 3)
    assert s["no_number"] == 0.0
    assert _grade(pred, gold) == 0
    assert "out_of_range" in capsys.readouterr().out


def test_cli_gold_without_number_names_line(tmp_path, capsys):
    gold = tmp_path / "gold.jsonl"
    write_jsonl(gold, [{"solution": "3"}, {"solution": "unknown"}])
    pred = tmp_path / "pred.txt"
    pred.write_text("3\n4\n", encoding="utf-8")
    assert _grade(pred, gold) == 2
    assert "gold.jsonl:2, field 'solution'" in capsys.readouterr().err


def test_grade_cli_does_not_import_torch_and_starts_fast(tmp_path, gold):
    pred = tmp_path / "pred.txt"
    pred.write_text("3\n17\n25%\n", encoding="utf-8")
    code = ("import sys; import tunelab.cli as c; "
            f"rc = c.main(['grade', 'arithmetic', '--pred', {str(pred)!r}, '--gold', {str(gold)!r}]); "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'numpy') if m in sys.modules]; "
            "print('HEAVY', heavy); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout and "100.00%" in proc.stdout


def test_grades_the_json_lines_of_tunelab_generate(tmp_path, capsys):
    """`tunelab generate RUN --file gold.jsonl --json` then `tunelab grade arithmetic --pred` on its output: lines
    put back in prompt order; several samples a prompt (`-n 2`) are refused, not graded as if one."""
    gold = tmp_path / "gold.jsonl"
    write_jsonl(gold, [{"problem": "1.5 + 1 =?", "solution": "2.5"}, {"problem": "计算 2 - 3", "solution": "-1"}])
    line = {"finish_reason": "stop", "error": None, "prompt_tokens": 5, "completion_tokens": 3}
    pred = tmp_path / "samples.jsonl"
    write_jsonl(pred, [{"prompt_index": 1, "sample": 1, "prompt": "计算 2 - 3", "text": "2 - 3 = -1", **line},
                       {"prompt_index": 0, "sample": 1, "prompt": "1.5 + 1 =?", "text": "1.5 + 1 = 2.6", **line}])
    assert main(["grade", "arithmetic", "--pred", str(pred), "--gold", str(gold), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 0.5
    write_jsonl(pred, [{"prompt_index": 0, "sample": s, "prompt": "p", "text": "2.5", **line} for s in (1, 2)])
    assert main(["grade", "arithmetic", "--pred", str(pred), "--gold", str(gold)]) == 2
    assert "several samples a prompt" in capsys.readouterr().err
