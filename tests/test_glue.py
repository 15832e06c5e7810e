"""GLUE CoLA/QQP: TSV reading, pre_data files, the strict label parser, MCC/F1, the rubric and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tunelab.cli import main
from tunelab.data.examples import Example
from tunelab.data.glue import INSTRUCTIONS, read_glue_tsv, to_records, write_pre_data
from tunelab.errors import TunelabError
from tunelab.tasks.glue import (check_model_dir, check_pre_data, confusion, f1_positive, glue_metrics, matthews,
                                parse_label, rubric)
from tunelab.tasks.registry import get_task

COLA_ROWS = [
    ("gj04", "1", "", "Our friends won't buy this analysis, let alone the next one we propose."),
    ("gj04", "1", "", "One more pseudo generalization and I'm giving up."),
    ("gj04", "0", "*", "They drank the pub."),
    ("gj04", "1", "", "The sailors rode the breeze clear of the rocks."),
    ("gj04", "0", "*", "The more we study verbs, the crazier they get the."),
    ("cj99", "1", "", "He said \"hello\" to everyone."),
    ("cj99", "0", "*", "Him and me is going."),
    ("cj99", "1", "", "Day by day the facts are getting murkier."),
    ("cj99", "0", "*", "Who does John visit Sally because he likes?"),
    ("cj99", "1", "", "I wonder who John met."),
]
QQP_HEADER = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
QQP_ROWS = [
    ("1", "11", "12", "How do I learn Python?", "What is the best way to learn Python?", "1"),
    ("2", "13", "14", "Why is the sky blue?", "How tall is Everest?", "0"),
    ("3", "15", "16", "What is AI?", "What is artificial intelligence?", "1"),
    ("4", "17", "18", "Is coffee healthy?", "Where is Paris?", "0"),
]


def _tsv(path, rows, header=None, newline="\n"):
    lines = ([header] if header else []) + ["\t".join(r) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((newline.join(lines) + newline).encode("utf-8"))
    return path


@pytest.fixture
def cola_dir(tmp_path):
    d = tmp_path / "glue" / "CoLA"
    _tsv(d / "train.tsv", COLA_ROWS)
    _tsv(d / "dev.tsv", COLA_ROWS[:3], newline="\r\n")
    return d


@pytest.fixture
def qqp_dir(tmp_path):
    d = tmp_path / "glue" / "QQP"
    _tsv(d / "train.tsv", QQP_ROWS, QQP_HEADER)
    _tsv(d / "dev.tsv", [(r[0], r[3], r[4]) for r in QQP_ROWS[:2]], "id\tquestion1\tquestion2")  # no labels
    return d


# --- reading TSVs --------------------------------------------------------------------------------


def test_cola_has_no_header(cola_dir):
    rows = read_glue_tsv(cola_dir / "train.tsv", "cola")
    assert len(rows) == 10 and rows[0].label == "1" and rows[2].label == "0"
    assert rows[5].text_a == 'He said "hello" to everyone.'  # quotes are not TSV quoting
    dev = read_glue_tsv(cola_dir / "dev.tsv", "CoLA")  # CRLF line ends
    assert [r.text_a for r in dev] == [r[3] for r in COLA_ROWS[:3]]


def test_cola_test_file_has_header_and_no_labels(tmp_path):
    path = _tsv(tmp_path / "test.tsv", [("0", "Bill whistled past the house."), ("1", "The car honked.")],
                "index\tsentence")
    rows = read_glue_tsv(path, "CoLA")
    assert [r.label for r in rows] == [None, None] and rows[1].text_a == "The car honked." and rows[1].id == "1"


def test_qqp_header(qqp_dir):
    rows = read_glue_tsv(qqp_dir / "train.tsv", "QQP")
    assert len(rows) == 4 and rows[0].text_b == "What is the best way to learn Python?" and rows[1].label == "0"
    dev = read_glue_tsv(qqp_dir / "dev.tsv", "qqp")
    assert [r.label for r in dev] == [None, None] and dev[0].text_a == "How do I learn Python?"


def test_wrong_column_count_names_file_line_and_expected(tmp_path):
    path = _tsv(tmp_path / "train.tsv", COLA_ROWS[:2] + [("gj04", "1", "a sentence without a mark column")])
    with pytest.raises(TunelabError) as e:
        read_glue_tsv(path, "CoLA")
    assert e.value.file == str(path) and e.value.line == 3
    assert "expected 4" in e.value.message and "found 3" in e.value.message and "sentence" in e.value.message
    qqp = _tsv(tmp_path / "qqp.tsv", [QQP_ROWS[0], QQP_ROWS[1][:5]], QQP_HEADER)
    with pytest.raises(TunelabError) as e:
        read_glue_tsv(qqp, "QQP")
    assert e.value.line == 3 and "expected 6" in e.value.message and "is_duplicate" in e.value.message


def test_qqp_without_header_and_bad_label(tmp_path):
    with pytest.raises(TunelabError, match="header"):
        read_glue_tsv(_tsv(tmp_path / "a.tsv", QQP_ROWS), "QQP")
    with pytest.raises(TunelabError) as e:
        read_glue_tsv(_tsv(tmp_path / "b.tsv", [("gj04", "x", "", "A sentence.")]), "CoLA")
    assert e.value.field == "label" and e.value.line == 1
    with pytest.raises(TunelabError, match="unknown GLUE task"):
        read_glue_tsv(tmp_path / "b.tsv", "SST-2")


# --- pre_data ------------------------------------------------------------------------------------


def test_write_pre_data(cola_dir, tmp_path):
    out = tmp_path / "pre_data"
    result = write_pre_data("cola", cola_dir.parent, out, limit=8, seed=3, val_fraction=0.25)
    assert (result["train"], result["val"], result["dev"]) == (6, 2, 3)
    folder = out / "CoLA"
    train = json.loads((folder / "CoLA_train.json").read_text(encoding="utf-8"))
    val = json.loads((folder / "CoLA_val.json").read_text(encoding="utf-8"))
    dev = json.loads((folder / "CoLA_dev.json").read_text(encoding="utf-8"))
    assert all(set(r) == {"instruction", "input", "output"} for r in train + val + dev)
    assert train[0]["instruction"] == INSTRUCTIONS["CoLA"] and {r["output"] for r in train + val} <= {"0", "1"}
    sentences = {r["input"] for r in train + val}
    assert len(sentences) == 8 and sentences <= {r[3] for r in COLA_ROWS}
    assert [r["output"] for r in dev] == ["1", "1", "0"]
    again = write_pre_data("CoLA", cola_dir, tmp_path / "again", limit=8, seed=3, val_fraction=0.25)
    assert json.loads((tmp_path / "again/CoLA/CoLA_train.json").read_text(encoding="utf-8")) == train
    assert again["train"] == 6 and check_pre_data(out, "CoLA") == []


def test_write_pre_data_qqp_unlabelled_dev_and_instruction(qqp_dir, tmp_path, capsys):
    out = tmp_path / "pre"
    assert main(["data", "glue", "--task", "QQP", "--data-dir", str(qqp_dir), "--out", str(out), "--seed", "1",
                 "--instruction", "Same question? 1 or 0."]) == 0
    assert "no labels" in capsys.readouterr().out
    dev = json.loads((out / "QQP/QQP_dev.json").read_text(encoding="utf-8"))
    assert dev[0] == {"instruction": "Same question? 1 or 0.",
                      "input": "Question 1: How do I learn Python?\nQuestion 2: What is the best way to learn "
                               "Python?", "output": ""}
    val = json.loads((out / "QQP/QQP_val.json").read_text(encoding="utf-8"))
    assert len(val) == 1 and val[0]["output"] in ("0", "1")  # 10% of 4 rows, at least one


def test_data_glue_errors(tmp_path, capsys):
    assert main(["data", "glue", "--task", "CoLA", "--data-dir", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    d = tmp_path / "CoLA"
    _tsv(d / "train.tsv", COLA_ROWS)
    assert main(["data", "glue", "--task", "CoLA", "--data-dir", str(d), "--out", str(tmp_path / "o")]) == 2
    assert "dev.tsv" in capsys.readouterr().err


# --- labels and metrics --------------------------------------------------------------------------


@pytest.mark.parametrize("text, task, label", [
    ("1", "CoLA", 1), ("0", "CoLA", 0), (" 1.\n", "CoLA", 1), ("acceptable", "CoLA", 1),
    ("Unacceptable", "CoLA", 0), ("yes", "QQP", 1), ("No, they differ.", "QQP", 0), ("是", "QQP", 1),
    ("否", "CoLA", 0), ("是的", "QQP", 1), ("不是", "QQP", 0), ("duplicate", "QQP", 1),
    ("not duplicate", "QQP", 0), ("not_duplicate", "QQP", 0), ("Answer: 1", "CoLA", 1), ("答案：0", "QQP", 0),
    ("\"1\"", "CoLA", 1), ("1 (acceptable)", "CoLA", 1), ("Ｙｅｓ", "QQP", 1),
    ("", "CoLA", None), ("maybe", "CoLA", None), ("The sentence is fine", "CoLA", None),
    ("duplicate", "CoLA", None), ("acceptable", "QQP", None), ("10", "CoLA", None), ("nope", "QQP", None),
    ("not", "QQP", None),
])
def test_parse_label(text, task, label):
    assert parse_label(text, task) == label


def test_mcc_and_f1_on_a_hand_case():
    preds, golds = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    c = confusion(list(zip(preds, golds)))
    assert c == {"tp": 2, "fp": 1, "tn": 1, "fn": 1}
    assert matthews(c) == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))
    assert f1_positive(c) == pytest.approx(2 / 3)
    m = glue_metrics(preds, golds, "CoLA")
    assert m["accuracy"] == pytest.approx(0.6) and "mcc" in m and "f1" not in m
    assert matthews(confusion([(1, 1), (0, 0)])) == 1.0
    assert matthews(confusion([(1, 1), (1, 0)])) == 0.0  # an empty column: 0 by convention


def test_unparsed_counts_as_wrong():
    m = glue_metrics([1, None, 0], [1, 0, 0], "QQP")
    assert m["unparsed"] == 1 and m["accuracy"] == pytest.approx(2 / 3)
    assert m["confusion"] == {"tp": 1, "fp": 1, "tn": 1, "fn": 0} and m["f1"] == pytest.approx(2 / 3)


def test_tasks():
    cola, qqp = get_task("cola"), get_task("qqp")
    ex = Example(id="x", instruction=INSTRUCTIONS["CoLA"], input="They drank the pub.", output="0")
    graded = [cola.grade("0", ex), cola.grade("acceptable", ex), cola.grade("hmm", ex)]
    assert [g["correct"] for g in graded] == [True, False, False] and graded[2]["unparsed"]
    s = cola.summarize(graded)
    assert s[cola.primary_metric] == pytest.approx(1 / 3) and s["unparsed"] == 1 and "mcc" in s
    assert "f1" in qqp.summarize([qqp.grade("yes", Example("y", "", "1"))])
    with pytest.raises(TunelabError):
        cola.grade("1", Example("z", "", "perhaps"))


def test_records_and_task_examples(qqp_dir, cola_dir):
    recs = to_records("QQP", read_glue_tsv(qqp_dir / "train.tsv", "QQP"))
    assert recs[0]["output"] == "1" and recs[0]["input"].startswith("Question 1: How do I learn Python?\n")
    examples = get_task("cola").load_examples(cola_dir / "train.tsv")
    assert len(examples) == 10 and examples[2].output == "0" and examples[2].input == "They drank the pub."
    with pytest.raises(TunelabError, match="no labels"):
        get_task("qqp").load_examples(qqp_dir / "dev.tsv")


# --- rubric and the CLI --------------------------------------------------------------------------


def test_check_model_dir(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    assert any("config.json" in p for p in check_model_dir(model))
    (model / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    (model / "training_args.bin").write_bytes(b"x")
    assert any("no weight file" in p for p in check_model_dir(model))
    (model / "model.safetensors").write_bytes(b"")
    assert any("no weight file" in p for p in check_model_dir(model))  # empty files do not count
    (model / "model.safetensors").write_bytes(b"weights")
    assert check_model_dir(model) == []
    (model / "config.json").write_text("{broken", encoding="utf-8")
    assert any("does not parse" in p for p in check_model_dir(model))
    assert check_model_dir(tmp_path / "missing") != []


def test_check_pre_data_problems(tmp_path):
    folder = tmp_path / "pre_data" / "CoLA"
    folder.mkdir(parents=True)
    (folder / "CoLA_train.json").write_text(json.dumps([{"instruction": "i", "input": "s", "output": "1"}]))
    problems = check_pre_data(tmp_path / "pre_data", "CoLA")
    assert len(problems) == 1 and "CoLA_dev.json is missing" in problems[0]
    (folder / "CoLA_dev.json").write_text(json.dumps([{"instruction": "i", "output": ""}]))
    assert any("'input'" in p for p in check_pre_data(folder, "CoLA"))


def test_rubric():
    assert rubric(0.8, [], []) == {"pre_data": 10, "model": 20, "accuracy": pytest.approx(56.0),
                                   "total": pytest.approx(86.0), "pre_data_problems": [], "model_problems": []}
    r = rubric(0.5, ["missing"], None)
    assert r["pre_data"] == 0 and r["model"] is None and r["total"] == pytest.approx(35.0)


def test_cli_grade_glue_with_rubric(cola_dir, tmp_path, capsys):
    pre = tmp_path / "pre_data"
    write_pre_data("CoLA", cola_dir, pre, seed=0)
    model = tmp_path / "saved"
    model.mkdir()
    (model / "config.json").write_text("{}", encoding="utf-8")
    (model / "adapter_model.safetensors").write_bytes(b"w")
    gold = tmp_path / "ANSWERS.txt"
    gold.write_text("1\n0\n1\n1\n0\n", encoding="utf-8")
    pred = tmp_path / "result_CoLA.txt"
    pred.write_text("1\n0\nacceptable\n0\nI am not sure\n", encoding="utf-8")
    args = ["grade", "glue", "--task", "CoLA", "--pred", str(pred), "--gold", str(gold)]
    assert main(args + ["--pre-data", str(pre), "--model-dir", str(model), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["accuracy"] == pytest.approx(0.6) and data["unparsed"] == 1 and data["unparsed_lines"] == [5]
    # confusion with the unparsed gold-0 answer counted as 1: tp 2, fn 1, tn 1, fp 1
    assert data["mcc"] == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))
    assert data["rubric"]["total"] == pytest.approx(10 + 20 + 70 * 0.6)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "mcc" in out and "not checked" in out and "42.0 / 70" in out and "(lines 5)" in out


def test_cli_grade_glue_qqp_gold_formats(qqp_dir, tmp_path, capsys):
    pred = tmp_path / "result_QQP.txt"
    pred.write_text("index\tprediction\n0\t1\n1\t0\n2\t0\n3\t0\n", encoding="utf-8")
    assert main(["grade", "glue", "--task", "qqp", "--pred", str(pred), "--gold", str(qqp_dir / "train.tsv"),
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["accuracy"] == 0.75 and data["f1"] == pytest.approx(2 / 3) and "mcc" not in data
    pred.write_text("1\n0\n", encoding="utf-8")
    assert main(["grade", "glue", "--task", "QQP", "--pred", str(pred), "--gold", str(qqp_dir / "train.tsv")]) == 2
    assert "2 predictions" in capsys.readouterr().err
    bad_gold = tmp_path / "gold.txt"
    bad_gold.write_text("1\nmaybe\n", encoding="utf-8")
    assert main(["grade", "glue", "--task", "QQP", "--pred", str(pred), "--gold", str(bad_gold)]) == 2
    assert f"{bad_gold}:2" in capsys.readouterr().err


def test_blank_last_prediction_is_kept(tmp_path, capsys):
    gold = tmp_path / "gold.txt"
    gold.write_text("1\n0\n", encoding="utf-8")
    pred = tmp_path / "pred.txt"
    pred.write_text("1\n\n", encoding="utf-8")  # the model said nothing for the second sentence
    assert main(["grade", "glue", "--task", "CoLA", "--pred", str(pred), "--gold", str(gold), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unparsed"] == 1


def test_grade_glue_starts_without_torch(tmp_path):
    gold = tmp_path / "gold.txt"
    gold.write_text("1\n0\n", encoding="utf-8")
    code = ("import sys; import tunelab.cli as c; "
            f"rc = c.main(['grade', 'glue', '--task', 'CoLA', '--pred', {str(gold)!r}, '--gold', {str(gold)!r}]); "
            "print('HEAVY', [m for m in ('torch', 'transformers', 'peft', 'numpy') if m in sys.modules]); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout and "100.00%" in proc.stdout
