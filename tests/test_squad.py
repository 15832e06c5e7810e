"""SQuAD: the three scorers on hand-written cases, the reader, the task and `tunelab grade squad`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.eval.qa_metrics import (em_f1, em_f1_cmrc, em_f1_mindformers, em_f1_official, first_line,
                                     jieba_like_tokens, normalize_official, tokens_cmrc, tokens_mindformers)
from tunelab.tasks.registry import get_task
from tunelab.tasks.squad import read_squad, read_squad_questions, score_squad

# --- official ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pred, gold, em, f1", [
    ("The Eiffel Tower", "Eiffel Tower", 1.0, 1.0),           # article dropped
    ("in 1889", "1889", 0.0, 2 / 3),                           # P 1/2, R 1
    ("Paris!", "paris", 1.0, 1.0),                             # punctuation and case
    ("an apple, a pear", "apple pear", 1.0, 1.0),
    ("Denver Broncos", "Broncos", 0.0, 2 / 3),
    ("the the the", "the", 1.0, 0.0),                          # both normalise to "" (v1.1: EM 1, F1 0)
    ("Santa Clara, California", "Levi's Stadium", 0.0, 0.0),
    ("theatre", "the atre", 0.0, 0.0),                         # "the" only as a whole word
    ("1,000", "1000", 1.0, 1.0),                               # ',' is punctuation
    ("rock-and-roll", "rock and roll", 0.0, 0.0),              # '-' removed, not split
])
def test_official_cases(pred, gold, em, f1):
    assert em_f1_official(pred, gold) == (em, pytest.approx(f1))


def test_official_normalisation():
    assert normalize_official("  The  Quick, (brown) fox!  ") == "quick brown fox"


def test_official_max_over_golds():
    golds = ["Denver Broncos", "Broncos", "the Broncos"]
    assert em_f1("Broncos", golds, "official") == (1.0, 1.0)
    em, f1 = em_f1("the Broncos team", golds, "official")
    assert em == 0.0 and f1 == pytest.approx(2 / 3)  # best: vs "Broncos" (P 1/2, R 1)


# --- cmrc ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pred, gold, em, f1", [
    ("郑州市", "郑州市", 1.0, 1.0),
    ("郑州市。", "郑州市", 1.0, 1.0),        # '。' is in the CMRC2018 punctuation set
    ("郑州", "郑州市", 0.0, 0.8),            # LCS 2: P 1, R 2/3
    ("北京.", "北京", 0.0, 0.8),             # ASCII '.' is NOT in the set: a token, and EM fails
    ("北大", "北京大学", 0.0, 1 / 3),        # longest common *contiguous* run: 1 token
    ("《红楼梦》", "红楼梦", 1.0, 1.0),
    ("2008年", "2008 年", 0.0, 1.0),         # EM keeps inner spaces; tokens are the same
    ("上海", "北京", 0.0, 0.0),
])
def test_cmrc_cases(pred, gold, em, f1):
    assert em_f1_cmrc(pred, gold) == (em, pytest.approx(f1))


def test_cmrc_tokens():
    assert tokens_cmrc("MindSpore是2019年发布的") == ["mindspore", "是", "2019", "年", "发", "布", "的"]
    assert tokens_cmrc("pi is 3.14, ok") == ["pi", "is", "3.14", ",", "ok"]
    assert tokens_cmrc("a-b：c") == ["abc"]  # the set is deleted before segmentation, joining the run


def test_auto_picks_cmrc_for_chinese_gold():
    assert em_f1("郑州", "郑州市") == em_f1_cmrc("郑州", "郑州市")
    assert em_f1("in 1889", "1889") == em_f1_official("in 1889", "1889")


# --- mindformers ---------------------------------------------------------------------------------


def test_mindformers_documented_example():
    """EmF1Metric's docstring: these two pairs give F1 75.0 and Em 50.0."""
    pairs = [("I love Beijing, because it's beautiful", "I love Beijing."), ("Hello world。", "Hello world")]
    scores = [em_f1_mindformers(p, g) for p, g in pairs]
    assert scores[0] == (0.0, pytest.approx(0.5)) and scores[1] == (1.0, 1.0)


def test_mindformers_counts_spaces_as_tokens():
    assert tokens_mindformers("in 1889") == ["in", " ", "1889"]
    assert em_f1_mindformers("in 1889", "1889") == (0.0, pytest.approx(0.5))  # cmrc: 2/3
    assert em_f1_cmrc("in 1889", "1889") == (0.0, pytest.approx(2 / 3))


def test_first_line_rule():
    assert first_line("  Denver Broncos\nThe answer is Denver.") == "Denver Broncos"


def test_jieba_emulation_matches_jieba():
    jieba = pytest.importorskip("jieba")
    jieba.setLogLevel(60)
    for text in ["hello world", "i love beijing, because it's beautiful", "3.14 and 50% e.g. c++ c#",
                 "  two  spaces\tx", "don't", "café", "version 2.0.1", "abc++d", "r&d at&t", "a%b-c_d"]:
        assert jieba_like_tokens(text) == list(jieba.cut(text)), text


# --- reading SQuAD files -------------------------------------------------------------------------

SQUAD = {"version": "1.1", "data": [
    {"title": "t1", "paragraphs": [
        {"context": "The Eiffel Tower was finished in 1889 in Paris.",
         "qas": [{"id": "q1", "question": "When was the tower finished?",
                  "answers": [{"text": "in 1889", "answer_start": 30}, {"text": "1889", "answer_start": 33}]},
                 {"id": "q2", "question": "Where is it?", "answers": [{"text": "Paris", "answer_start": 41}]}]},
        {"context": "Denver Broncos won Super Bowl 50.",
         "qas": [{"id": "q3", "question": "Who won?",
                  "answers": [{"text": "Denver Broncos", "answer_start": 0}, {"text": "Broncos", "answer_start": 7}]}]},
    ]},
    {"title": "t2", "paragraphs": [
        {"context": "郑州市是河南省的省会。",
         "qas": [{"id": "q4", "question": "河南的省会是哪里？", "answers": [{"text": "郑州市", "answer_start": 0}]}]},
    ]},
]}


@pytest.fixture
def squad_file(tmp_path):
    path = tmp_path / "dev-v1.1.json"
    path.write_text(json.dumps(SQUAD, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def test_read_squad(squad_file):
    examples = read_squad(squad_file)
    assert [e.id for e in examples] == ["q1", "q2", "q3", "q4"]
    q1 = examples[0]
    assert q1.output == "in 1889" and q1.answers == ["in 1889", "1889"] and q1.kind == "squad-en"
    assert "The Eiffel Tower was finished" in q1.instruction and "When was the tower finished?" in q1.instruction
    assert examples[3].kind == "squad-zh" and "问题：河南的省会是哪里？" in examples[3].instruction


def test_read_squad_mindformers_selection(squad_file):
    examples = read_squad(squad_file, mindformers=True)
    assert [e.id for e in examples] == ["q1", "q3", "q4"]      # first question of each paragraph
    assert examples[0].answers == ["in 1889"]                  # and its first answer only


def _bad(tmp_path, mutate):
    doc = json.loads(json.dumps(SQUAD))
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return path


def test_missing_answers_names_file_id_and_field(tmp_path):
    path = _bad(tmp_path, lambda d: d["data"][0]["paragraphs"][0]["qas"][1].pop("answers"))
    with pytest.raises(TunelabError) as e:
        read_squad_questions(path)
    assert e.value.file == str(path) and e.value.field == "answers" and "'q2'" in e.value.message
    assert e.value.line is not None and '"q2"' in path.read_text().splitlines()[e.value.line - 1]


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("data"), "data"),
    (lambda d: d["data"][0]["paragraphs"][0].pop("context"), "context"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(answers=[]), "answers"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][0].update(answers=[{"answer_start": 0}]), "answers"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][1].update(id="q1"), "id"),
])
def test_bad_squad_files(tmp_path, mutate, field):
    with pytest.raises(TunelabError) as e:
        read_squad_questions(_bad(tmp_path, mutate))
    assert e.value.field == field


def test_malformed_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"data": [\n', encoding="utf-8")
    with pytest.raises(TunelabError) as e:
        read_squad_questions(path)
    assert "malformed JSON" in e.value.message and e.value.line == 2


# --- scoring prediction files --------------------------------------------------------------------


def test_score_official_missing_id_scores_zero(squad_file):
    questions = read_squad_questions(squad_file)
    preds = {"q1": "1889", "q2": "Paris", "q3": "the Denver Broncos"}  # q4 missing
    r = score_squad(preds, questions, "official")
    assert r["n"] == 4 and r["missing"] == 1
    assert r["exact_match"] == pytest.approx(75.0) and r["f1"] == pytest.approx(75.0)


def test_score_auto_resolves_to_cmrc_for_chinese_data(squad_file):
    r = score_squad({"q4": "郑州"}, read_squad_questions(squad_file), "auto")
    assert r["scorer"] == "cmrc" and r.get("auto") is True
    assert r["f1"] == pytest.approx(80 / 4)


def test_score_mindformers_first_question_first_answer_first_line(squad_file):
    questions = read_squad_questions(squad_file)
    preds = {"q1": "1889\nbecause the tower...",  # matches only the second gold: not used by mindformers
             "q2": "wrong",                       # not the first question of its paragraph: ignored
             "q3": "Denver Broncos\nextra line",  # first line only
             "q4": "郑州市。"}
    r = score_squad(preds, questions, "mindformers")
    assert r["n"] == 3 and r["missing"] == 0
    # q1: "1889" vs "in 1889": tokens [1889] vs [in, ' ', 1889]: P 1, R 1/3 -> F1 0.5
    assert r["exact_match"] == pytest.approx(200 / 3)
    assert r["f1"] == pytest.approx(100 * (0.5 + 1 + 1) / 3)
    official = score_squad(preds, questions, "official")
    # official scores a prediction as given (no first-line rule), and '。' is not ASCII punctuation
    assert official["exact_match"] == 0.0


def test_squad_task(squad_file):
    task = get_task("squad")
    q1 = read_squad(squad_file)[0]
    g = task.grade("1889\nIt was finished in 1889.", q1)
    assert g["correct"] and g["em"] == 1.0 and g["mindformers_em"] == 0.0
    s = task.summarize([g, task.grade("no idea", q1)])
    assert s[task.primary_metric] == pytest.approx(50.0) and s["n"] == 2


# --- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def pred_file(tmp_path):
    path = tmp_path / "pred.json"
    path.write_text(json.dumps({"q1": "in 1889", "q2": "Paris.", "q3": "Broncos", "q4": "郑州"},
                               ensure_ascii=False), encoding="utf-8")
    return path


def test_cli_scorer_all(squad_file, pred_file, capsys):
    assert main(["grade", "squad", "--pred", str(pred_file), "--gold", str(squad_file), "--scorer", "all"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(rows) == {"official", "cmrc", "mindformers"}
    assert rows["official"][1:3] == ["4", "75.00"] and rows["mindformers"][1] == "3"


def test_cli_default_and_json(squad_file, pred_file, capsys):
    assert main(["grade", "squad", "--pred", str(pred_file), "--gold", str(squad_file)]) == 0
    out = capsys.readouterr().out
    assert "exact_match" in out and "cmrc (auto)" in out
    assert main(["grade", "squad", "--pred", str(pred_file), "--gold", str(squad_file), "--scorer", "official",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["scorer"] == "official" and data["exact_match"] == pytest.approx(75.0)


def test_cli_bad_prediction_file(squad_file, tmp_path, capsys):
    bad = tmp_path / "pred.json"
    bad.write_text('{"q1": ["in 1889"]}', encoding="utf-8")
    assert main(["grade", "squad", "--pred", str(bad), "--gold", str(squad_file)]) == 2
    err = capsys.readouterr().err
    assert "tunelab: error:" in err and "q1" in err and len(err.strip().splitlines()) == 1


def test_grade_squad_starts_fast_without_torch(squad_file, pred_file):
    code = ("import sys; import tunelab.cli as c; "
            f"rc = c.main(['grade', 'squad', '--pred', {str(pred_file)!r}, '--gold', {str(squad_file)!r}, "
            "'--scorer', 'all']); "
            "print('HEAVY', [m for m in ('torch', 'transformers', 'peft', 'numpy') if m in sys.modules]); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
