"""Multiple choice: reading both record shapes, prompts, letter extraction, grading and the CLI.

(Log-likelihood scoring against lm-eval's acc/acc_norm: tests/test_choice_loglik.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tunelab.cli import main
from tunelab.data.formats import choice_prompt, read_examples
from tunelab.errors import TunelabError
from tunelab.records import write_json, write_jsonl
from tunelab.scoring import competition_score
from tunelab.tasks.choice import choice_examples, extract_choice
from tunelab.tasks.registry import get_task

EN = {"id": "e1", "question": "What is the capital of France?", "A": "London", "B": "Paris", "C": "Rome",
      "D": "Vitamin C", "answer": "B"}
ZH = {"question": "河南的省会是哪里？", "choices": ["北京", "郑州", "上海", "广州"], "answer": 1}
OPTS = ["cat sat on the mat", "Paris", "北京", "Vitamin C"]


@pytest.fixture
def questions(tmp_path):
    path = tmp_path / "mc.jsonl"
    write_jsonl(path, [EN, ZH, {**EN, "id": "e3", "answer": "d"}, {**ZH, "id": "z4", "answer": "0"}])
    return path


def test_read_both_shapes(questions):
    items = read_examples(questions, "choice")
    assert [i.id for i in items] == ["e1", "mc-1", "e3", "z4"]
    assert items[0].choices == ["London", "Paris", "Rome", "Vitamin C"] and items[0].label == 1
    assert items[0].output == "B" and items[0].kind == "choice-en"
    assert items[1].choices[1] == "郑州" and items[1].label == 1 and items[1].kind == "choice-zh"  # index 1
    assert items[2].label == 3 and items[3].label == 0           # lower-case letter, index string
    assert read_examples(questions) == items                    # the auto format knows question records


@pytest.mark.parametrize("rec, field", [
    ({"question": "q", "A": "x", "B": "y"}, "answer"),
    ({"question": "q", "A": "x", "B": "y", "answer": "C"}, "answer"),
    ({"question": "q", "choices": ["x", "y"], "answer": 2}, "answer"),
    ({"question": "q", "choices": ["x", "y"], "answer": "maybe"}, "answer"),
    ({"question": "q", "A": "x", "answer": "A"}, "B"),
    ({"question": "q", "answer": "A"}, "choices"),
    ({"question": "q", "choices": "xy", "answer": "A"}, "choices"),
    ({"A": "x", "B": "y", "answer": "A"}, "question"),
    ({"question": "q", "choices": ["x", "y"], "answer": -1}, "answer"),
    ({"question": "q", "choices": ["x", "y"], "answer": "9" * 5000}, "answer"),
    ({"question": "q", "choices": ["x", "y"], "answer": 1.0}, "answer"),
    ({"question": "q", "choices": ["x", ["y"]], "answer": 0}, "choices[1]"),
    ({"question": "q", "choices": ["x", "\ud800"], "answer": 0}, "choices[1]"),   # a lone surrogate
    ({"question": "q", "choices": ["x"] * 1_000_000, "answer": 0}, "choices"),
])
def test_bad_records(tmp_path, rec, field):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (EN, rec)), encoding="utf-8")  # \ud800 escaped
    with pytest.raises(TunelabError) as e:
        read_examples(path, "choice")
    assert e.value.field == field and e.value.line == 2 and e.value.file == str(path)


def test_prompts_are_language_aware():
    en = choice_prompt(EN["question"], ["London", "Paris"])
    assert en.splitlines() == ["The following is a multiple-choice question. Answer with the letter of the "
                               "correct option.", "What is the capital of France?", "A. London", "B. Paris"]
    zh = choice_prompt(ZH["question"], ZH["choices"])
    assert zh.startswith("以下是一道单项选择题") and "\nB. 郑州\n" in zh
    assert choice_prompt("2 + 2 = ?", ["3", "4"], lang="zh").startswith("以下是")


def test_options_are_data_not_prompt_lines():
    # a question that itself holds option-like lines, and options with newlines, full-width text and spaces:
    # the prompt is only rendered; the options travel as written
    rec = {"question": "Which line?\nA. not an option\nB. nor this", "answer": "C",
           "choices": ["cat sat\non the mat", "Ｐａｒｉｓ，…", " 5 ㎏ ", "Vitamin C"]}
    ex = choice_examples([rec])[0]
    assert ex.choices == rec["choices"] and ex.label == 2 and ex.output == "C"
    assert ex.instruction == choice_prompt(rec["question"], rec["choices"])
    assert ex.instruction.endswith("\nA. cat sat\non the mat\nB. Ｐａｒｉｓ，…\nC. 5 ㎏\nD. Vitamin C")
    task = get_task("choice")
    assert task.grade("答案：C", ex)["correct"] and task.grade("Ｐａｒｉｓ", ex)["pred"] == "B"


def test_an_example_without_options_is_an_error(tmp_path):
    path = tmp_path / "old.json"  # an alpaca file that only has the rendered prompt
    write_json(path, [{"instruction": choice_prompt("q", ["x", "y"]), "input": "", "output": "A"}])
    task = get_task("choice")
    with pytest.raises(TunelabError, match="has no options") as e:
        task.load_examples(path)
    assert e.value.file == str(path) and e.value.field == "choices"
    with pytest.raises(TunelabError, match="has no options"):
        task.grade("A", read_examples(path, "alpaca")[0])


@pytest.mark.parametrize("text, letter, rule", [
    ("答案：B", "B", "marker"),
    ("答案是C", "C", "marker"),
    ("正确答案为（C）", "C", "marker"),         # full-width brackets
    ("选B", "B", "marker"),
    ("我选择 D", "D", "marker"),
    ("The answer is (C)", "C", "marker"),
    ("Answer: c.", "C", "marker"),
    ("A cat sat down, so the answer is D", "D", "marker"),  # the marker beats the leading "A"
    ("B. Paris", "B", "leading"),
    ("B", "B", "leading"),
    ("Ｂ", "B", "leading"),                    # full-width letter
    ("(B)", "B", "leading"),
    ("B 北京", "B", "leading"),
    ("B是正确的", "B", "leading"),
    ("A is correct", "A", "leading"),
    ("A cat sat on the mat", "A", "leading"),  # "A" + option A's own text
    ("选项C", "C", "mention"),
    ("I pick option D", "D", "marker"),
    ("It must be option D", "D", "mention"),
    ("Paris", "B", "text"),
    ("paris.", "B", "text"),
    ("Vitamin C", "D", "text"),                # the option's text, not the letter C inside it
    ("I think it is Paris", "B", "contains"),
    ("A dog is an animal. B", "B", "letter"),  # the article "A" is skipped
    ("the answer is a dog", None, "unparsed"),
    ("A dog", None, "unparsed"),
    ("no idea", None, "unparsed"),
    ("", None, "unparsed"),
])
def test_extract_choice(text, letter, rule):
    assert extract_choice(text, OPTS) == (letter, rule)


def test_only_the_questions_letters_count():
    assert extract_choice("答案：E", ["x", "y", "z", "w"]) == (None, "unparsed")
    assert extract_choice("答案：E", ["a", "b", "c", "d", "e"]) == ("E", "marker")
    assert extract_choice("C") == ("C", "leading")  # no options: A–D


def test_contains_prefers_the_option_that_holds_the_others():
    assert extract_choice("郑州市", ["郑州", "郑州市", "上海"]) == ("B", "text")
    assert extract_choice("应该是郑州市吧", ["郑州", "郑州市", "上海"]) == ("B", "contains")
    assert extract_choice("郑州 or 上海", ["郑州", "郑州市", "上海"]) == (None, "unparsed")


def test_alpaca_records_with_options_grade_directly(tmp_path, questions):
    items = read_examples(questions, "choice")
    path = tmp_path / "train.json"
    write_json(path, alpaca_choice_records(items, answer_style="letter_text"))
    task = get_task("choice")
    examples = task.load_examples(path)
    assert [(e.id, e.choices, e.label, e.kind) for e in examples] == [(e.id, e.choices, e.label, e.kind)
                                                                      for e in items]
    assert examples[1].output == "B. 郑州"
    graded = [task.grade(p, ex) for p, ex in zip(["答案：B", "郑州", "C", "no idea"], examples)]
    assert [g["correct"] for g in graded] == [True, True, False, False]
    summary = task.summarize(graded)
    assert summary["accuracy"] == 0.5 and summary["unparsed"] == 1 and summary["by_rule"]["text"] == 1


def test_choice_examples():
    ex = choice_examples([ZH])[0]
    assert ex.output == "B" and ex.kind == "choice-zh" and ex.instruction.endswith("D. 广州")
    forced = choice_examples([ZH], lang="en")[0]
    assert forced.instruction.startswith("The following") and forced.kind == "choice-en"
    assert forced.choices == ex.choices and forced.label == ex.label


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_ids_and_ratio(tmp_path, questions, capsys):
    pred = tmp_path / "pred.jsonl"
    write_jsonl(pred, [{"id": "z4", "prediction": "A. 北京"}, {"id": "e1", "prediction": "The answer is B"},
                       {"id": "e3", "prediction": "huh"}, {"id": "mc-1", "prediction": "选B"}])
    write_jsonl(questions, [EN, {**ZH, "id": "mc-1"}, {**EN, "id": "e3", "answer": "d"},
                            {**ZH, "id": "z4", "answer": "0"}])
    assert main(["grade", "choice", "--pred", str(pred), "--gold", str(questions), "--ratio", "0.001",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["accuracy"] == 0.75 and data["unparsed"] == 1
    assert data["stage2_score"] == pytest.approx(competition_score("stage2", 0.75, 0.001))
    assert main(["grade", "choice", "--pred", str(pred), "--gold", str(questions), "--ratio", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "75.00%" in out and "stage2" in out and "unparsed" in out


def test_cli_plain_lines_and_mismatch(tmp_path, questions, capsys):
    pred = tmp_path / "pred.txt"
    pred.write_text("B\n郑州\nD\nA\n", encoding="utf-8")
    assert main(["grade", "choice", "--pred", str(pred), "--gold", str(questions)]) == 0
    assert "100.00%" in capsys.readouterr().out
    pred.write_text("B\n", encoding="utf-8")
    assert main(["grade", "choice", "--pred", str(pred), "--gold", str(questions)]) == 2
    assert "1 predictions" in capsys.readouterr().err


def test_cli_gold_from_training_records(tmp_path, questions, capsys):
    odd = {"id": "n1", "question": "Which?", "choices": ["one\ntwo", "３．５㎏", "…"], "answer": 1}
    gold = tmp_path / "train.jsonl"
    write_jsonl(gold, alpaca_choice_records(read_examples(questions, "choice") + choice_examples([odd])))
    pred = tmp_path / "pred.jsonl"
    write_jsonl(pred, [{"id": i, "prediction": p} for i, p in
                       [("e1", "B"), ("mc-1", "郑州"), ("e3", "D"), ("z4", "B"), ("n1", "3.5kg")]])
    assert main(["grade", "choice", "--pred", str(pred), "--gold", str(gold), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n"] == 5 and data["accuracy"] == 0.8 and data["by_rule"]["text"] == 2
    write_jsonl(gold, [{"instruction": choice_prompt("q", ["x", "y"]), "input": "", "output": "A"}])
    write_jsonl(pred, [{"prediction": "A"}])
    assert main(["grade", "choice", "--pred", str(pred), "--gold", str(gold)]) == 2
    err = capsys.readouterr().err
    assert f"{gold}:1, field 'choices'" in err and "Traceback" not in err


def test_grade_choice_starts_without_torch(tmp_path, questions):
    pred = tmp_path / "pred.txt"
    pred.write_text("B\nB\nD\nA\n", encoding="utf-8")
    code = ("import sys; import tunelab.cli as c; "
            f"rc = c.main(['grade', 'choice', '--pred', {str(pred)!r}, '--gold', {str(questions)!r}]); "
            "print('HEAVY', [m for m in ('torch', 'transformers', 'peft', 'numpy') if m in sys.modules]); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout and "100.00%" in proc.stdout


def alpaca_choice_records(examples, answer_style="letter"):
    """Alpaca records of questions that carry their options and answer (a file the choice task grades directly),
    the output in `answer_style` as a recipe's choice source trains it."""
    from tunelab.data.choice_rows import choice_continuations
    from tunelab.data.formats import LETTERS
    return [{"id": ex.id, "instruction": ex.instruction, "input": ex.input,
             "output": choice_continuations(ex.choices, answer_style)[ex.label], "choices": ex.choices,
             "answer": LETTERS[ex.label], "kind": ex.kind} for ex in examples]
