"""The knowledge task: normalisation and containment on hand-written English and Chinese answers, the shipped
set, user files' errors, the summary, and the way the CLI and the runner reach it (no model: fast)."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import pytest

from tunelab.errors import TunelabError
from tunelab.tasks.knowledge import SHIPPED, find_answer, grade_knowledge, normalize, read_knowledge
from tunelab.tasks.registry import get_task, ships_examples


def found(answer: str, prediction: str) -> bool:
    return find_answer(normalize(answer), normalize(prediction)) is not None


@pytest.mark.parametrize("text, expected", [
    ("The capital is PARIS!", "capital is paris"),
    ("ＰＡＲＩＳ，Ｆｒａｎｃｅ", "paris france"),            # full-width letters and comma
    ("答案是：北京。", "答案是 北京"),                       # Chinese punctuation is a boundary, as in English
    ("约 365 天", "约365天"),                                # spaces beside CJK text dropped
    ("答案是七，一周有七天", "答案是七 一周有七天"),          # a punctuation mark stays a boundary
    ("列奥纳多·达·芬奇", "列奥纳多达芬奇"),                  # the name dot
    ("Xi'an, Newton’s", "xian newtons"),                     # apostrophes, straight and curly
    ("π is 3.14159; 1,000 g", "π is 3.14159 1,000 g"),       # a number's own "." and "," kept
    ("It is 7. Or 8, maybe", "it is 7 or 8 maybe"),          # ... and only there
    ("H₂O  at\t100℃", "h2o at 100 c"),                       # NFKC: subscripts, ℃ is °C
    ("  An apple a day  ", "apple day"),                     # English articles
])
def test_normalize(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize("answer, prediction, expected", [
    ("Paris", "The capital of France is Paris.", True),
    ("Paris", "It is London.", False),
    ("Paris", "She was a Parisian painter.", False),       # not inside a word
    ("Everest", "Mount Everest, 8,849 m.", True),
    ("mammal", "Whales are mammals.", True),               # an English plural
    ("Newton", "Newton's laws of motion", True),
    ("7", "There are 7 continents.", True),
    ("7", "There are 17 of them.", False),                 # a number is not inside another
    ("7", "About 7.5 on average.", False),
    ("7", "答案是7个。", True),                             # a digit beside CJK text
    ("100", "It boils at 1000 degrees.", False),
    ("100", "水在100℃沸腾。", True),
    ("七", "一周有七天。", True),
    ("七", "一共有十七个。", False),                         # nor a Chinese numeral inside a Chinese number
    ("七", "大约七十种。", False),
    ("十二", "一年有十二个月", True),
    ("十二", "二十二", False),
    ("北京", "中国的首都是北京。", True),                    # Chinese: a substring
    ("北京", "南京是江苏的省会。", False),
    ("达芬奇", "《蒙娜丽莎》是达·芬奇画的。", True),
    ("Paris", "ＰＡＲＩＳ。", True),                          # full-width
    ("H2O", "水的化学式是 H₂O。", True),
    ("carbon dioxide", "Plants absorb carbon-dioxide.", True),
    ("1,000", "There are 1,000 grams in a kilogram.", True),
    ("1,000", "One million is 1,000,000.", False),
    ("Beijing", "Beijing是中国的首都", True),
])
def test_containment(answer, prediction, expected):
    assert found(answer, prediction) is expected


def test_the_answer_mentioned_first_decides():
    accepted, rejected = ["Canberra", "堪培拉"], ["Sydney", "Melbourne"]
    assert grade_knowledge("Canberra, not Sydney.", accepted, rejected) == {
        "correct": True, "matched": "Canberra", "rejected": None}
    assert grade_knowledge("Sydney, Melbourne or Canberra", accepted, rejected) == {
        "correct": False, "matched": "Canberra", "rejected": "Sydney"}
    assert grade_knowledge("It is Sydney.", accepted, rejected) == {
        "correct": False, "matched": None, "rejected": "Sydney"}
    assert grade_knowledge("I don't know.", accepted, rejected) == {"correct": False, "matched": None, "rejected": None}
    assert grade_knowledge("澳大利亚的首都是堪培拉。", accepted, rejected)["matched"] == "堪培拉"
    # the longer of two answers at one place: 水蒸气 is not 水, 东京都 is 东京
    assert not grade_knowledge("水蒸气", ["水"], ["水蒸气"])["correct"]
    assert grade_knowledge("会变成水，水再蒸发成水蒸气", ["水"], ["水蒸气"])["correct"]
    assert grade_knowledge("东京都", ["东京"], ["京都"])["correct"]
    assert not grade_knowledge("小熊猫", ["大熊猫", "熊猫"], ["小熊猫"])["correct"]


def test_the_shipped_set():
    examples = get_task("knowledge").default_examples()
    assert len(examples) >= 100
    languages = [e.kind for e in examples]
    assert set(languages) == {"en", "zh"} and min(languages.count("en"), languages.count("zh")) >= 0.4 * len(examples)
    assert len({e.id for e in examples}) == len(examples)
    assert len({normalize(e.instruction) for e in examples}) == len(examples)  # no question twice
    assert {e.meta["topic"] for e in examples} >= {"geography", "astronomy", "science", "people", "culture"}
    for e in examples:
        assert e.answers and e.output == e.answers[0], e.id
        question = normalize(e.instruction)
        for answer in e.answers + e.meta["rejected"]:  # echoing the question never decides
            assert find_answer(normalize(answer), question) is None, (e.id, answer)
        for answer in e.answers:  # each alias alone is right, each rejected answer alone wrong
            assert grade_knowledge(answer, e.answers, e.meta["rejected"])["correct"], (e.id, answer)
        for answer in e.meta["rejected"]:
            assert not grade_knowledge(answer, e.answers, e.meta["rejected"])["correct"], (e.id, answer)


def write(tmp_path, *lines: str):
    path = tmp_path / "facts.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_user_file(tmp_path):
    path = write(tmp_path, json.dumps({"question": "What is 2 + 2?", "answers": ["4", "four"], "topic": "sums"}),
                 json.dumps({"id": "q2", "question": "月亮绕着什么转？", "answers": ["地球"], "rejected": ["太阳"]}),
                 json.dumps({"question": "Capital of Peru?", "answers": ["Lima"], "language": "EN"}))
    a, b, c = get_task("knowledge").load_examples(path)
    assert (a.id, a.instruction, a.output, a.answers, a.kind, a.meta) == (
        "knowledge-1", "What is 2 + 2?", "4", ["4", "four"], "en", {"topic": "sums", "rejected": []})
    assert (b.id, b.kind, b.meta) == ("q2", "zh", {"topic": "", "rejected": ["太阳"]})  # language from the text
    assert c.kind == "en"


@pytest.mark.parametrize("line, field, message", [
    ('{"question": "Q?", "answers": ["Ans"]', None, "malformed JSON"),
    ('{"answers": ["Ans"]}', "question", "missing field"),
    ('{"question": "  ", "answers": ["Ans"]}', "question", "empty"),
    ('{"question": ["Q?"], "answers": ["Ans"]}', "question", "expected a string"),
    ('{"question": "Q?"}', "answers", "missing field"),
    ('{"question": "Q?", "answers": []}', "answers", "empty"),
    ('{"question": "Q?", "answers": "A"}', "answers", "expected a list"),
    ('{"question": "Q?", "answers": ["Ans", "?!"]}', "answers.1", "empty after normalisation"),
    ('{"question": "Q?", "answers": ["Ans", "The"]}', "answers.1", "'The', empty after normalisation"),
    ('{"question": "Q?", "answers": ["Ans", 7]}', "answers.1", "a int, not a string"),
    ('{"question": "Q?", "answers": ["Ans"], "rejected": [""]}', "rejected.0", "empty after normalisation"),
    ('{"question": "Q?", "answers": ["Ans"], "id": ""}', "id", "empty"),
    ('{"question": "Q?", "answers": ["Ans"], "id": "q1"}', "id", "also the id of line 1"),
])
def test_a_bad_line_is_named(tmp_path, line, field, message):
    path = write(tmp_path, '{"id": "q1", "question": "Fine?", "answers": ["yes"]}', line)
    with pytest.raises(TunelabError) as e:
        read_knowledge(path)
    assert (e.value.file, e.value.line, e.value.field) == (str(path), 2, field)
    assert message in e.value.message


def test_summary_numbers():
    task = get_task("knowledge")
    graded = [task.grade(p, e) for p, e in zip(
        ["Paris.", "London", "北京", "上海"],
        [ex("Capital of France?", ["Paris"], "en", "geo"), ex("Capital of Japan?", ["Tokyo"], "en", "geo"),
         ex("中国的首都？", ["北京"], "zh", "geo"), ex("水的化学式？", ["H2O"], "zh", "science")])]
    assert [g["correct"] for g in graded] == [True, False, True, False]
    assert task.summarize(graded) == {
        "n": 4, "accuracy": 0.5,
        "by_language": {"en": {"n": 2, "accuracy": 0.5}, "zh": {"n": 2, "accuracy": 0.5}},
        "by_topic": {"geo": {"n": 3, "accuracy": 2 / 3}, "science": {"n": 1, "accuracy": 0.0}}}
    untopical = [task.grade("Paris", ex("Capital of France?", ["Paris"], "en", ""))]
    assert task.summarize(untopical) == {"n": 1, "accuracy": 1.0, "by_language": {"en": {"n": 1, "accuracy": 1.0}}}
    assert task.summarize([])["accuracy"] == 0.0


def ex(question, answers, language, topic):
    from tunelab.data.examples import Example
    return Example(id=question, instruction=question, output=answers[0], answers=answers, kind=language,
                   meta={"topic": topic, "rejected": []})


def test_the_task_and_its_setting():
    task = get_task("knowledge")
    assert (task.ability, task.primary_metric, task.retention_metrics, task.modes) == (
        True, "accuracy", {"accuracy": 100.0}, ("generate",))
    assert ships_examples(type(task)) and task.max_new_tokens == 48
    assert task.configure(max_new_tokens=64).max_new_tokens == 64
    for bad in (0, -1, "many", True):
        with pytest.raises(TunelabError) as e:
            get_task("knowledge").configure(max_new_tokens=bad)
        assert e.value.field == "max_new_tokens"


def test_eval_without_data_uses_the_shipped_set_and_its_length(monkeypatch, tmp_path):
    """`tunelab eval MODEL --tasks knowledge` needs no --data; the runner asks for the task's 48 tokens, not the
    evaluation's 32, and records what retention judges."""
    from tunelab.cli.eval import config_from_flags
    from tunelab.eval import runner
    from tunelab.eval.sets import eval_sets
    args = argparse.Namespace(tasks="knowledge", data=[], limit=3, mode=None, options=[], segmentation=None,
                              window=None, stride=None, batch_size=8, max_new_tokens=32, retention_threshold=0.9,
                              retention_min_base=5.0, device=None, precision="auto", samples=None,
                              temperature=1.0, top_p=1.0, sample_seed=0)
    es = eval_sets(config_from_flags(args))["knowledge"]
    assert es.source == "tunelab:knowledge" and [e.id for e in es.examples] == ["en-001", "zh-001", "en-002"]
    asked = {}

    def complete(model, tokenizer, prompts, max_new_tokens, batch_size, desc):
        asked.update(prompts=prompts, max_new_tokens=max_new_tokens)
        return [SimpleNamespace(text=t, finish_reason="stop") for t in ("Paris.", "是上海。", "Tokyo, not Kyoto")]

    monkeypatch.setattr(runner, "complete_batched_for", complete)
    template = SimpleNamespace(render_prompt=lambda example, shots: example.instruction)
    out = runner.evaluate_examples(None, None, template, es.task, es.examples, tmp_path, max_new_tokens=32)
    assert asked == {"prompts": [e.instruction for e in es.examples], "max_new_tokens": 48}
    assert out["accuracy"] == pytest.approx(2 / 3) and out["retained_by"] == {"accuracy": 100.0}
    rows = [json.loads(line) for line in (tmp_path / "knowledge.predictions.jsonl").read_text().splitlines()]
    assert [(r["correct"], r["matched"], r["rejected"]) for r in rows] == [
        (True, "Paris", None), (False, None, "上海"), (True, "Tokyo", None)]
