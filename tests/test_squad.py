"""SQuAD: the three scorers on hand-written cases, the reader, the task and its `scorer` setting, retention
with a chosen scorer, and `tunelab grade squad`. (tests/test_qa_scorers.py compares each scorer with its
reference script on generated strings.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.metrics.qa_metrics import (em_f1, em_f1_cmrc, em_f1_mindformers, em_f1_official, first_line,
                                     normalize_official, tokens_cmrc, tokens_mindformers)
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
    # nltk.word_tokenize: contractions split, a sentence's final period cut, an abbreviation's kept
    assert tokens_cmrc("I can't. Mr. Li说") == ["i", "ca", "n't", ".", "mr.", "li", "说"]


def test_auto_picks_cmrc_for_chinese_gold():
    assert em_f1("郑州", "郑州市") == em_f1_cmrc("郑州", "郑州市")
    assert em_f1("in 1889", "1889") == em_f1_official("in 1889", "1889")


# --- mindformers ---------------------------------------------------------------------------------


def test_mindformers_documented_example():
    """EmF1Metric's docstring: these two pairs give F1 75.0 and Em 50.0."""
    pairs = [("I love Beijing, because it's beautiful", "I love Beijing."), ("Hello world。", "Hello world")]
    scores = [em_f1_mindformers(p, g) for p, g in pairs]
    assert scores[0] == (0.0, pytest.approx(0.5)) and scores[1] == (1.0, 1.0)


def test_mindformers_and_official_disagree_on_ordinary_answers():
    """The issue's example: the organisers' EmF1Metric keeps the article, the period and the spaces."""
    assert em_f1_official("The Denver Broncos.", "Denver Broncos") == (1.0, 1.0)
    assert em_f1_mindformers("The Denver Broncos.", "Denver Broncos") == (0.0, pytest.approx(2 / 3))


def test_mindformers_counts_spaces_as_tokens():
    assert tokens_mindformers("in 1889") == ["in", " ", "1889"]
    assert em_f1_mindformers("in 1889", "1889") == (0.0, pytest.approx(0.5))  # cmrc: 2/3
    assert em_f1_cmrc("in 1889", "1889") == (0.0, pytest.approx(2 / 3))


def test_first_line_rule():
    assert first_line("  Denver Broncos\nThe answer is Denver.") == "Denver Broncos"


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
    assert s[task.primary_metric] == pytest.approx(50.0) and s["n"] == 2 and s["scorer"] == "auto"
    # EmF1Metric against "in 1889" ([in, ' ', 1889]): "1889" has P 1, R 1/3; "no idea" shares the space token
    assert s["mindformers_f1"] == pytest.approx(100 * (0.5 + 1 / 3) / 2)


def test_squad_task_scorer_setting(squad_file):
    """`scorer: mindformers` is MindFormers' evaluation: its selection of questions and EmF1Metric's F1/EM
    as the task's f1/exact_match (the numbers retention compares)."""
    task = get_task("squad").configure(scorer="mindformers")
    examples = task.load_examples(squad_file)
    assert [e.id for e in examples] == ["q1", "q3", "q4"] and examples[1].answers == ["Denver Broncos"]
    graded = [task.grade(p, e) for p, e in zip(["in 1889", "The Denver Broncos.\nsecond line", "郑州"], examples)]
    s = task.summarize(graded)
    assert s["scorer"] == "mindformers" and s["n"] == 3 and "mindformers_f1" not in s
    assert s["exact_match"] == pytest.approx(100 / 3)
    assert s["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0.8) / 3)
    official = get_task("squad").configure(scorer="official")
    assert official.grade("The Denver Broncos.", examples[1])["f1"] == 1.0
    assert len(official.load_examples(squad_file)) == 4


def test_squad_scorer_setting_errors(squad_file):
    from tunelab.eval.sets import eval_sets
    from tunelab.recipe import validate_eval
    with pytest.raises(TunelabError) as e:
        get_task("squad").configure(scorer="mindformer")
    assert e.value.field == "scorer" and "mindformers" in e.value.message
    config = validate_eval({"tasks": [{"task": "squad", "source": {"path": str(squad_file)},
                                       "options": {"scorer": "cmrc2018"}}]})
    with pytest.raises(TunelabError) as e:
        eval_sets(config)
    assert e.value.field == "eval.tasks.0.options.scorer"


# --- retention with a chosen scorer --------------------------------------------------------------


def test_retention_names_its_scorer_and_refuses_mixed_scorers():
    from tunelab.eval.retention import retention
    base = {"squad": {"scorer": "mindformers", "f1": 58.59, "exact_match": 43.15}}
    tuned = {"squad": {"scorer": "mindformers", "f1": 55.0, "exact_match": 37.0}}
    r = retention(base, tuned, ["squad"], 0.9)
    assert r["squad.f1"]["scorer"] == "mindformers" and r["squad.f1"]["pass"]
    assert not r["squad.exact_match"]["pass"]  # 37 / 43.15 = 85.7 %
    typed_in = {"squad": {"f1": 58.59, "exact_match": 43.15}}  # a published table names no scorer
    assert retention(typed_in, tuned, ["squad"], 0.9)["squad.f1"]["scorer"] == "mindformers"
    with pytest.raises(TunelabError) as e:
        retention({"squad": {**base["squad"], "scorer": "official"}}, tuned, ["squad"], 0.9)
    assert "official" in e.value.message and "mindformers" in e.value.message and e.value.field == "squad"


def test_retention_over_a_base_near_zero_cannot_judge():
    """The issue's case: a chat model asked in a foreign format scored EM 0 and F1 15.2; the tuned one 80 and
    82.1. That was "100 % PASS" and "540 % PASS"; EM now cannot be judged, F1 is judged."""
    from tunelab.compare import _from_metrics
    from tunelab.eval.retention import describe, overall, retention, verdict
    from tunelab.sweep.objective import constraint_of
    from tunelab.track.names import outcome_metrics
    base = {"reading": {"f1": 15.2, "exact_match": 0.0}}
    tuned = {"reading": {"f1": 82.1, "exact_match": 80.0}}
    r = retention(base, tuned, ["reading"], 0.9)
    em, f1 = r["reading.exact_match"], r["reading.f1"]
    assert em["pass"] is None and em["retained"] is None
    assert verdict(em) == "cannot judge: the base scores 0.00 on reading.exact_match (below 5)"
    assert "PASS" not in describe("reading.exact_match", em) and "%" not in describe("reading.exact_match", em)
    assert f1["pass"] is True and verdict(f1) == "PASS"
    assert overall(r) == "cannot judge" and overall({"a": f1}) == "PASS" and overall({}) is None
    assert overall({**r, "x": {**f1, "pass": False}}) == "FAIL"
    # a base of exactly 0 is never divided by; a stricter floor is the recipe's eval.retention_min_base
    assert retention({"reading": {"f1": 0.0, "exact_match": 0.0}}, tuned, ["reading"], 0.9)["reading.f1"]["pass"] is None
    assert retention(base, tuned, ["reading"], 0.9, min_base=20)["reading.f1"]["pass"] is None
    # every reader of metrics.json: the runs table, the sweep's constraint, the trackers
    metrics = {"retention": r}
    assert _from_metrics(metrics)["retention"] == "cannot judge"
    assert constraint_of(metrics, 0.9) == 0.9 - f1["retained"]  # the judged metric alone constrains
    assert "retention/reading.exact_match/retained" not in outcome_metrics(metrics)


def test_baseline_results_of_another_scorer_stop_before_any_model(squad_file, tmp_path):
    from tunelab.eval.retention import load_baseline
    from tunelab.eval.sets import eval_sets
    from tunelab.recipe import validate_eval
    sets = eval_sets(validate_eval({"tasks": [{"task": "squad", "source": {"path": str(squad_file)},
                                               "options": {"scorer": "mindformers"}}]}))
    earlier = tmp_path / "results.json"
    earlier.write_text(json.dumps({"squad": {"scorer": "auto", "f1": 60.0, "exact_match": 50.0}}), encoding="utf-8")
    with pytest.raises(TunelabError) as e:
        load_baseline(str(earlier), sets, ["squad"], tmp_path, 1, 1)
    assert e.value.file == str(earlier) and "auto" in e.value.message
    earlier.write_text(json.dumps({"squad": {"scorer": "mindformers", "f1": 60.0, "exact_match": 50.0}}),
                       encoding="utf-8")
    assert load_baseline(str(earlier), sets, ["squad"], tmp_path, 1, 1)["results"]["squad"]["f1"] == 60.0
    # results of a tunelab without the setting: auto's f1/em next to mindformers_f1
    earlier.write_text(json.dumps({"squad": {"f1": 60.0, "exact_match": 50.0, "mindformers_f1": 40.0,
                                             "mindformers_exact_match": 20.0}}), encoding="utf-8")
    with pytest.raises(TunelabError) as e:
        load_baseline(str(earlier), sets, ["squad"], tmp_path, 1, 1)
    assert "the auto scorer" in e.value.message


def test_report_and_eval_table_name_the_scorer(capsys):
    from tunelab.cli.eval import print_table
    from tunelab.pipeline.kinds import summary_lines
    from tunelab.report import checkpoint_cell
    ret = {"squad.f1": {"base": 58.59, "tuned": 55.0, "retained": 55.0 / 58.59, "pass": True,
                        "scorer": "mindformers"}}
    metrics = {"score": {"accuracy": 0.7, "formula": "stage1", "value": 0.79}, "best_checkpoint": "step-2",
               "ratio": {"trainable": 10, "total": 1000, "ratio": 0.01}, "retention": ret,
               "train": {"steps": 2, "train_seconds": 1.0, "final_loss": 0.5}}
    assert any(line.startswith("retention squad.f1 (mindformers scorer): 93.9%") for line in summary_lines(metrics))
    assert checkpoint_cell({"f1": 55.0, "exact_match": 37.0, "scorer": "mindformers"}) == "F1 55.0 / EM 37.0 (mindformers)"
    doc = {"results": {"m": {"squad": {"f1": 55.0, "exact_match": 37.0, "scorer": "mindformers"}}}, "best": "m",
           "tasks": {"squad": {"primary_metric": "f1"}}, "retention": {"m": {"metrics": ret, "pass": True}},
           "retention_threshold": 0.9, "baseline": {"source": "base.json"}}
    print_table(doc)
    out = capsys.readouterr().out
    assert "squad.f1 (mindformers)" in out and "squad.f1 (mindformers scorer): 93.9%" in out


def test_competition_recipe_judges_retention_with_mindformers(squad_file, tmp_path):
    """recipes/llama3-8b-math-lora.yaml: the SQuAD entry is an ability scored as the organisers score it."""
    import yaml
    from pathlib import Path
    from tunelab.eval.sets import eval_sets
    from tunelab.recipe import validate_eval
    raw = yaml.safe_load((Path(__file__).parents[1] / "recipes" / "llama3-8b-math-lora.yaml").read_text("utf-8"))
    entry = next(t for t in raw["eval"]["tasks"] if t["task"] == "squad")
    assert entry["ability"] is True and entry["options"] == {"scorer": "mindformers"}
    entry["source"] = {"path": str(squad_file)}
    config = validate_eval({**raw["eval"], "tasks": [entry]})
    es = eval_sets(config)["squad"]
    assert es.task.scorer == "mindformers" and len(es.examples) == 3  # one question per paragraph


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
            "print('HEAVY', [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
