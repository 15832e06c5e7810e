"""Hostile input for every grader and reader: no text a model (or a broken file) holds makes `tunelab grade`
raise, hang or balloon. Each answer is graded (a counted wrong answer) and each bad file is one clear error
line naming it, exit 2. Seeded, so a failure reproduces; every test takes a few seconds."""

from __future__ import annotations

import json
import random
import time
import tracemalloc
from decimal import Decimal
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.data.synthetic.arithmetic import format_number
from tunelab.data.examples import Example
from tunelab.errors import TunelabError
from tunelab.tasks.arithmetic import MAX_DIGITS, MAX_EXPONENT, grade_arithmetic, summarize_arithmetic
from tunelab.tasks.choice import choice_examples
from tunelab.tasks.registry import get_task

DASHES = ["-", "\u2010", "\u2011", "\u2012", "\u2013", "\u2212", "\ufe63", "\uff0d"]
SEPARATORS = [",", "\uff0c", " ", "\u00a0", "\u2009", "\u202f"]
ATOMS = [
    *"0123456789", "١٢٣", "𝟕", "²", "１２", "⑦", "五", "½",  # digits of other scripts and look-alikes
    ".", "..", ",", "，", " ", "  ", "\u2009", "\u202f", "\u00a0", *DASHES, "\u2014", "e", "E", "e-", "E+",
    "+", "/", "%", "=", "＝", "(", ")", "[", "]", "√", "x", "A", "B", "(C)", "answer", "Answer: ", "答案是",
    "答案：", "选", "。", "!", "\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\x1c", "\u2028", "\u200b",
    "\ufeff", "\U0010ffff", "\ud800", "\udfff", "🙂", "NaN", "inf", "yes", "no", "not duplicate", "是", "\\", '"', "{", "}",
]


def _piece(rng: random.Random) -> str:
    """One hostile fragment: an atom, or a long run, a wild exponent, a deep fraction, a fake grouping."""
    r = rng.random()
    if r < 0.55:
        return rng.choice(ATOMS)
    if r < 0.62:
        return rng.choice("0123456789") * rng.randint(1, 3000)
    if r < 0.72:
        exponent = str(rng.randint(0, 10 ** rng.randint(1, 40)))
        return f"{rng.randint(0, 99)}{rng.choice('eE')}{rng.choice(['', '-', '+'])}{exponent}"
    if r < 0.78:
        return "0." + "0" * rng.randint(0, 400) + "1"
    if r < 0.86:
        sep = rng.choice(SEPARATORS)
        return str(rng.randint(0, 9999)) + "".join(sep + "0" * rng.choice([1, 2, 3, 3, 3, 4])
                                                   for _ in range(rng.randint(1, 30)))
    if r < 0.92:
        return f"{rng.randint(1, 10 ** 6)}/" + rng.choice("123456789") * rng.randint(1, 400)
    return rng.choice(["-", "=", " ", ",", ".", "e", "(", "A"]) * rng.randint(2, 2000)


def hostile(rng: random.Random) -> str:
    return "".join(_piece(rng) for _ in range(rng.randint(1, 12)))


def hostile_line(rng: random.Random) -> str:
    """A hostile text that fits on one line of a UTF-8 prediction file (no line break, no lone surrogate)."""
    return hostile(rng).replace("\n", " ").replace("\r", " ").replace("\ud800", "").replace("\udfff", "")


def mega_lines(rng: random.Random) -> list[str]:
    """1 MB answers built to hit quadratic or exponential paths of regexes and number conversion."""
    mb = 1_000_000
    chars = "".join(ATOMS)
    return [
        "1" * mb,
        "1," + "234," * (mb // 4) + "5678",
        "1 " * (mb // 2),
        "- " * (mb // 2) + "5",
        "1e" + "9" * mb,
        "0." + "0" * mb + "1",
        "=" * mb,
        "答案" + " " * mb + "B",
        "答案" + " " * mb + "。",
        "answer" + " " * mb + ":",
        "answer a " * (mb // 9),
        "I choose" + " " * mb + "?",
        "A " * (mb // 2),
        "." * mb + "x",
        "1.2" * (mb // 3),
        "9/" * (mb // 2),
        "\u2028" * mb,
        "".join(rng.choice(chars) for _ in range(mb)),
    ]


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


# --- arithmetic: the number reader ---------------------------------------------------------------

GOLDS = ["-6797.66 - 280.27 = -7077.93", "45 / 180 = 25%", "= 0", "1 / 3 = 0.33", "= 1e-5", "12 + (-5) = 7"]
KEYS = {"correct", "pred_value", "gold_value", "format_ok", "sign_ok", "within_tol", "digit_acc",
        "out_of_range", "kind"}
LONGEST_VALUE = MAX_DIGITS + MAX_EXPONENT + 3  # digits, leading zeros of a tiny value, "-0."


def _check_graded(g: dict) -> None:
    assert set(g) == KEYS
    assert g["pred_value"] is None or len(g["pred_value"]) <= LONGEST_VALUE
    assert 0.0 <= g["digit_acc"] <= 1.0
    if g["out_of_range"]:
        assert not g["correct"] and not g["within_tol"] and g["pred_value"] and len(g["pred_value"]) <= 33
    if g["correct"]:
        assert g["within_tol"] and g["sign_ok"] and g["digit_acc"] > 0


def test_arithmetic_grades_thousands_of_hostile_answers():
    rng = random.Random(8)
    slowest = 0.0
    for i in range(3000):
        text = hostile(rng)
        g, seconds = _timed(grade_arithmetic, text, GOLDS[i % len(GOLDS)], "k")
        _check_graded(g)
        value = None if g["pred_value"] is None or g["out_of_range"] else Decimal(g["pred_value"])
        assert value is None or (not value or -MAX_EXPONENT <= value.adjusted() <= MAX_EXPONENT)
        try:  # as a reference, the text holds a number in range or is a one-line data error
            grade_arithmetic("5", text)
        except TunelabError as e:
            assert "\n" not in str(e) and len(str(e)) < 300
        slowest = max(slowest, seconds)
    assert slowest < 0.5, f"one short answer took {slowest:.2f} s"


def test_arithmetic_reads_numbers_however_they_are_written():
    """Random values written with any dash, a spaced sign, any valid digit grouping, in any sentence."""
    rng = random.Random(80)
    frames = ["{}", "= {}", "答案是 {}", "The answer is {}.", "x = {}。", "{} ", "-6797.66 - 280.27 = {}",
              "结果：{}", "(check: 1 + 1 is 2) so the answer is {}"]
    for _ in range(2000):
        integer = str(rng.randint(0, 10 ** rng.randint(1, 15)))
        fraction = "".join(rng.choice("0123456789") for _ in range(rng.choice([0, 0, 1, 2, 6])))
        value = Decimal(integer + ("." + fraction if fraction else ""))
        written = integer
        if len(integer) > 3 and rng.random() < 0.6:
            sep, head = rng.choice(SEPARATORS), len(integer) % 3 or 3
            written = sep.join([integer[:head]] + [integer[i:i + 3] for i in range(head, len(integer), 3)])
        if fraction:
            written += "." + fraction
        if rng.random() < 0.5 and value:
            value = -value
            written = rng.choice(DASHES) + rng.choice(["", "", " ", "\u00a0", "\u2009", "\u202f"]) + written
        text = rng.choice(frames).format(written)
        g = grade_arithmetic(text, f"= {format_number(value)}")
        assert Decimal(g["pred_value"]) == value, text
        assert g["correct"] and g["sign_ok"] and g["digit_acc"] == 1.0, text


def _peak_memory_of(fn, *args):
    """(result, seconds, peak bytes above the start) of one call. On Linux the peak is the process's resident
    high-water mark (reset through /proc/self/clear_refs, free heap handed back first so that reused memory is not
    hidden): the call runs at full speed, so it is timed in the same run. Elsewhere tracemalloc over a second call,
    which slows allocation ~10x and so is not timed."""
    import ctypes
    import gc
    import os
    try:
        clear_refs = os.open("/proc/self/clear_refs", os.O_WRONLY)
    except OSError:
        out, seconds = _timed(fn, *args)
        tracemalloc.start()
        try:
            fn(*args)
            return out, seconds, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    try:
        gc.collect()
        getattr(ctypes.CDLL(None), "malloc_trim", lambda pad: 0)(0)  # glibc: free heap back to the system
        os.write(clear_refs, b"5")  # VmHWM := VmRSS
    finally:
        os.close(clear_refs)
    start = _proc_status("VmRSS")
    out, seconds = _timed(fn, *args)
    return out, seconds, _proc_status("VmHWM") - start


def _proc_status(key: str) -> int:
    """A memory figure of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/self/status")


def test_the_peak_memory_instrument_sees_an_allocation():
    """The instrument below would pass any grader if it saw nothing: 100 MB written inside the call are seen."""
    _, _, peak = _peak_memory_of(lambda: len(bytearray(100_000_000).replace(b"\0", b"x")))
    assert 100_000_000 <= peak < 400_000_000, peak


def test_arithmetic_one_megabyte_answers_take_bounded_time_and_memory():
    rng = random.Random(81)
    for text in mega_lines(rng):
        g, seconds, peak = _peak_memory_of(grade_arithmetic, text, GOLDS[0])
        _check_graded(g)
        label = repr(text[:20])
        assert seconds < 5, f"{label}…: {seconds:.1f} s"
        assert peak < 40 * len(text.encode("utf-8", "surrogatepass")) + 10_000_000, f"{label}…: peak {peak / 1e6:.0f} MB"


# --- the grade verbs on files --------------------------------------------------------------------

SQUAD_GOLD = {"version": "1.1", "data": [{"title": "t", "paragraphs": [
    {"context": "Denver Broncos won Super Bowl 50 in 2016.",
     "qas": [{"id": "q1", "question": "Who won?", "answers": [{"text": "Denver Broncos"}]},
             {"id": "q2", "question": "When?", "answers": [{"text": "2016"}, {"text": "in 2016"}]}]},
    {"context": "北京是中国的首都，人口约2189万。",
     "qas": [{"id": "q3", "question": "首都是哪里？", "answers": [{"text": "北京"}]}]}]}]}
CHOICE_GOLD = [{"id": f"c{i}", "question": q, "A": a, "B": b, "C": "3.14", "D": "以上都不对", "answer": ans}
               for i, (q, a, b, ans) in enumerate([("Capital of France?", "Paris", "London", "A"),
                                                   ("1 + 1 = ?", "2", "11", "B"),
                                                   ("哪个是水果？", "苹果", "石头", "C")])]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    """JSONL with ASCII escapes, so lone surrogates reach the reader as the "\\ud800" escapes they would be."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _grade(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["grade", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _verb_files(d: Path) -> dict[str, tuple[list[str], Path, Path]]:
    """Each verb's extra flags, a valid prediction file and a valid gold file."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "squad_gold.json").write_text(json.dumps(SQUAD_GOLD, ensure_ascii=False), encoding="utf-8")
    (d / "squad_pred.json").write_text(json.dumps({"q1": "Broncos", "q2": "2016", "q3": "北京"}),
                                       encoding="utf-8")
    _write_jsonl(d / "arith_gold.jsonl", [{"id": str(i), "solution": g} for i, g in enumerate(GOLDS[:3])])
    (d / "arith_pred.txt").write_text("-7077.93\n25%\n= 0\n", encoding="utf-8")
    _write_jsonl(d / "choice_gold.jsonl", CHOICE_GOLD)
    (d / "choice_pred.txt").write_text("A\n答案是B\nthe answer is (C)\n", encoding="utf-8")
    (d / "glue_gold.txt").write_text("1\n0\n1\n", encoding="utf-8")
    (d / "glue_pred.txt").write_text("1\nno\nacceptable\n", encoding="utf-8")
    return {"arithmetic": ([], d / "arith_pred.txt", d / "arith_gold.jsonl"),
            "squad": (["--scorer", "all"], d / "squad_pred.json", d / "squad_gold.json"),
            "choice": ([], d / "choice_pred.txt", d / "choice_gold.jsonl"),
            "glue": (["--task", "CoLA"], d / "glue_pred.txt", d / "glue_gold.txt")}


def _broken_files(d: Path) -> list[Path]:
    """Files no reader should accept, nor crash on."""
    d.mkdir(parents=True, exist_ok=True)
    contents: dict[str, bytes | str] = {
        "empty.json": "", "blank.jsonl": " \n\t\n", "bom.jsonl": "\ufeff",
        "binary.jsonl": bytes(range(256)), "bad_utf8.txt": b"1\n\xff\xfe\n", "surrogate_bytes.txt": b"\xed\xa0\x80\n",
        "deep.json": "[" * 200_000, "deep_line.jsonl": '{"prediction": ' + "[" * 200_000 + "\n",
        "deep_object.json": '{"a": ' * 100_000,
        "huge_int.jsonl": '{"prediction": 1' + "0" * 5000 + ', "solution": 1' + "0" * 5000 + "}\n",
        "huge_int_array.json": '[{"solution": 1' + "0" * 5000 + "}]",
        "surrogate.jsonl": '{"id": "0", "prediction": "\\ud800", "solution": "\\udfff 3", "question": "\\ud800", '
                           '"A": "\\ud800", "B": "b", "answer": "A", "output": "\\ud800", "instruction": "x"}\n',
        "nan.jsonl": '{"prediction": NaN, "solution": Infinity, "question": -Infinity, "A": NaN, "B": 1e999, '
                     '"answer": NaN, "output": NaN}\n',
        "not_objects.json": "[1, 2, 3]", "scalar.json": "42", "null.json": "null", "string.json": '"x"',
        "wrong_types.jsonl": '{"prediction": [1], "solution": {}, "question": true, "A": null, "id": [], '
                             '"answer": 1.5, "output": false, "data": 3}\n',
        "nul.txt": "\x00\x00\n\x00", "controls.txt": "".join(map(chr, range(32))) + "\n",
        "big_line.jsonl": '{"prediction": "' + "7" * 5_000_000 + '", "solution": "= 1"}\n',
        "squad_shapes.json": '{"data": [{"paragraphs": [{"context": 1, "qas": "x"}]}]}',
        "squad_answers.json": '{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "q1", "question": "q", '
                              '"answers": [{"text": 5}]}]}]}]}',
        "glue_bad.tsv": "a\tb\n\x00\t\t\t\n", "glue_header.txt": "index\tprediction\n",
        # valid shapes whose text is built to make a regex backtrack
        "choice_spaces.jsonl": json.dumps({"instruction": "Q\nA. x" + " " * 200_000 + "y\nB. z", "output": "A"}),
        "prompt_markers.jsonl": json.dumps({"conversations": [{"from": "human", "value": "### Instruction:\n" * 50_000},
                                                              {"from": "gpt", "value": "1"}]}),
    }
    paths = []
    for name, content in contents.items():
        path = d / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        paths.append(path)
    (d / "a_directory").mkdir(exist_ok=True)
    return paths + [d / "a_directory", d / "missing.json"]


def _assert_clean(rc: int, out: str, err: str, path: Path) -> None:
    assert rc in (0, 2), (path.name, rc)
    if rc == 2:
        assert err.startswith("tunelab: error: ") and err.count("\n") == 1, (path.name, err[:300])
        assert path.name in err, (path.name, err[:300])
        assert len(err) < 1000, (path.name, len(err))
    else:
        assert not err and out


def test_every_grade_verb_names_a_broken_file_in_one_line(tmp_path, capsys):
    verbs = _verb_files(tmp_path / "ok")
    for path in _broken_files(tmp_path / "bad"):
        for verb, (flags, pred, gold) in verbs.items():
            for argv in (["--pred", str(path), "--gold", str(gold)], ["--pred", str(pred), "--gold", str(path)]):
                (rc, out, err), seconds = _timed(_grade, capsys, verb, *flags, *argv)
                _assert_clean(rc, out, err, path)
                assert seconds < 10, (verb, path.name, seconds)


def test_every_grade_verb_counts_hostile_answers(tmp_path, capsys):
    """Hundreds of hostile answers in each verb's prediction format: exit 0, every answer counted."""
    rng = random.Random(82)
    answers = [hostile_line(rng) for _ in range(300)] + [line.replace("\n", " ") for line in mega_lines(rng)[:4]]
    n = len(answers)

    gold = _write_jsonl(tmp_path / "arith_gold.jsonl", [{"solution": GOLDS[i % len(GOLDS)]} for i in range(n)])
    pred = tmp_path / "arith_pred.jsonl"
    pred.write_text("".join(json.dumps({"prediction": a}, ensure_ascii=False) + "\n" for a in answers),
                    encoding="utf-8")  # U+2028, U+0085 and friends stay raw inside the JSON strings
    (rc, out, err), seconds = _timed(_grade, capsys, "arithmetic", "--pred", str(pred), "--gold", str(gold),
                                     "--json")
    assert rc == 0, err
    expected = summarize_arithmetic([grade_arithmetic(a, GOLDS[i % len(GOLDS)]) for i, a in enumerate(answers)])
    assert json.loads(out) == json.loads(json.dumps(expected)) and seconds < 30
    plain = tmp_path / "arith_pred.txt"
    plain.write_text("\n".join(answers) + "\n", encoding="utf-8")
    rc, out, err = _grade(capsys, "arithmetic", "--pred", str(plain), "--gold", str(gold), "--json")
    assert rc == 0 and json.loads(out)["n"] == n, err

    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": "Denver Broncos 北京 2016 50%", "qas": [
            {"id": f"q{i}", "question": "?", "answers": [{"text": ["Denver Broncos", "北京", "2016 年", "50%"][i % 4]}]}
            for i in range(n)]}]}]}
    (tmp_path / "squad.json").write_text(json.dumps(squad), encoding="utf-8")
    (tmp_path / "squad_pred.json").write_text(json.dumps({f"q{i}": a for i, a in enumerate(answers)}),
                                              encoding="utf-8")
    (rc, out, err), seconds = _timed(_grade, capsys, "squad", "--pred", str(tmp_path / "squad_pred.json"),
                                     "--gold", str(tmp_path / "squad.json"), "--scorer", "all", "--json")
    assert rc == 0, err
    for result in json.loads(out)["scorers"].values():
        assert 0 <= result["exact_match"] <= 100 and 0 <= result["f1"] <= 100 and result["missing"] == 0
    assert seconds < 30

    choice = _write_jsonl(tmp_path / "choice.jsonl", [{**CHOICE_GOLD[i % 3], "id": f"c{i}"} for i in range(n)])
    (rc, out, err), seconds = _timed(_grade, capsys, "choice", "--pred", str(plain), "--gold", str(choice),
                                     "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["n"] == n and 0 <= s["accuracy"] <= 1 and sum(s["by_rule"].values()) + s["unparsed"] == n
    assert seconds < 30

    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{i % 2}\n" for i in range(n)), encoding="utf-8")
    (rc, out, err), seconds = _timed(_grade, capsys, "glue", "--task", "QQP", "--pred", str(plain), "--gold",
                                     str(labels), "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["n"] == n and sum(s["confusion"].values()) == n and seconds < 30


def test_unicode_line_breaks_inside_an_answer_keep_it_one_answer(tmp_path, capsys):
    """U+2028, U+0085 and "\x1c" are line breaks to str.splitlines, not to a prediction file (nor to JSONL
    written with ensure_ascii=False, which leaves them raw)."""
    gold = _write_jsonl(tmp_path / "gold.jsonl", [{"solution": "= 3"}, {"solution": "= 17"}, {"solution": "= 25%"}])
    answers = ["= 3\u2028", "x\x85= 17", "\x1c25%\u2029"]
    jsonl = tmp_path / "pred.jsonl"
    jsonl.write_text("".join(json.dumps({"prediction": a}, ensure_ascii=False) + "\n" for a in answers),
                     encoding="utf-8")
    plain = tmp_path / "pred.txt"
    plain.write_text("\r\n".join(answers) + "\r\n", encoding="utf-8")
    for pred in (jsonl, plain):
        rc, out, err = _grade(capsys, "arithmetic", "--pred", str(pred), "--gold", str(gold), "--json")
        assert rc == 0 and json.loads(out)["accuracy"] == 1.0, err


def test_a_lone_surrogate_is_a_one_line_error_naming_file_line_and_field(tmp_path, capsys):
    gold = _write_jsonl(tmp_path / "gold.jsonl", [{"solution": "= 3"}, {"solution": "= 4", "kind": "\ud800"}])
    pred = tmp_path / "pred.txt"
    pred.write_text("3\n4\n", encoding="utf-8")
    rc, _, err = _grade(capsys, "arithmetic", "--pred", str(pred), "--gold", str(gold))
    assert rc == 2 and err.count("\n") == 1 and "gold.jsonl:2, field 'kind'" in err and "surrogate" in err


def test_glue_rubric_reports_a_hostile_config_instead_of_crashing(tmp_path, capsys):
    flags, pred, gold = _verb_files(tmp_path / "ok")["glue"]
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    for config in (b"[" * 200_000, b'{"a": 1' + b"0" * 5000 + b"}", b"\xff\xfe{}"):
        (model / "config.json").write_bytes(config)
        rc, out, err = _grade(capsys, "glue", *flags, "--pred", str(pred), "--gold", str(gold), "--model-dir",
                              str(model))
        assert rc == 0 and "config.json does not parse" in out and "0.0 / 20" in out, err


# --- the tasks' graders and readers (the `tunelab eval` path) ------------------------------------

EXAMPLES = {
    "arithmetic": Example("a", "1 + 2?", "1 + 2 = 3", kind="int_add"),
    "squad": Example("s", "Read…", "Denver Broncos", answers=["Denver Broncos", "Broncos"]),
    "reading": Example("r", "阅读…", "北京"),
    "rougel": Example("g", "问题", "北京是中国的首都"),
    "choice": choice_examples([{"question": "Capital of France?", "choices": ["Paris", "London"], "answer": 0}])[0],
    "cola": Example("l", "Is it acceptable?", "1"),
    "qqp": Example("q", "Same question?", "0"),
}


def test_task_graders_survive_hostile_generations():
    rng = random.Random(83)
    texts = [hostile(rng) for _ in range(300)] + mega_lines(rng)[:6]
    for name, example in EXAMPLES.items():
        task = get_task(name)
        for text in texts:
            g, seconds = _timed(task.grade, text, example)
            assert isinstance(g, dict) and "correct" in g, name
            assert seconds < 5, (name, repr(text[:20]), seconds)


@pytest.mark.parametrize("task", ["arithmetic", "squad", "reading", "rougel", "choice", "cola", "qqp", "ppl",
                                  "continuation"])
def test_task_readers_name_a_broken_file(tmp_path, task):
    for path in _broken_files(tmp_path):
        try:
            examples = get_task(task).load_examples(path)
        except TunelabError as e:
            message = str(e)
            assert "\n" not in message and len(message) < 1000 and path.name in message, (task, path.name, message)
        else:
            assert isinstance(examples, list), (task, path.name)
