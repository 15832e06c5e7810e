"""Multiple-choice questions as training data (issue 55): the generated stage-2 rehearsal questions, option
shuffling that moves the answer with its option and balances the letters, the answer's style, and a recipe
whose training rows are what the `choice` task grades."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from tunelab.cli import main
from tunelab.data.choice_rows import choice_training
from tunelab.data.formats import LETTERS, choice_prompt
from tunelab.data.synthetic.choice import generate
from tunelab.data.synthetic.reading import EN, EN_FACTS, ZH, ZH_FACTS
from tunelab.data.sources import load_source, training_examples
from tunelab.errors import TunelabError
from tunelab.recipe import SourceConfig
from tunelab.recipe.loader import validate_recipe
from tunelab.records import write_jsonl
from tunelab.tasks.choice import choice_examples, extract_choice
from tunelab.tasks.registry import get_task


def _fact_of(question: str, lang: str) -> tuple[str, str]:
    """(fact type, person) a generated question asks about, read back with the generator's own sentences."""
    facts = ZH_FACTS if lang == "zh" else EN_FACTS
    asked = question.rsplit("\n", 1)[1].split("：" if lang == "zh" else ": ", 1)[1]
    for fact, (_, q) in facts.items():
        m = re.fullmatch(re.escape(q).replace(re.escape("{n}"), "(.+)"), asked)
        if m:
            return fact, m.group(1)
    raise AssertionError(f"no fact asks {asked!r}")


def _passage_value(passage: str, fact: str, person: str, lang: str) -> list[str]:
    """The values the passage states for the person's fact (a value is a word of the fact's list, or a number:
    "最喜欢{v}" also begins "最喜欢的颜色是…")."""
    sentence = (ZH_FACTS if lang == "zh" else EN_FACTS)[fact][0]
    words = ZH if lang == "zh" else EN
    value = r"\d+" if fact in ("age", "books") else "|".join(map(re.escape, words[fact]))
    pattern = re.escape(sentence).replace(re.escape("{n}"), re.escape(person)).replace(re.escape("{v}"), f"({value})")
    return re.findall(pattern, passage)


@pytest.mark.parametrize("options", [2, 4, 6])
def test_generated_questions_are_right_and_their_distractors_of_the_same_type(options):
    records = generate(400, seed=5, options=options)
    for rec in records:
        lang = rec["lang"]
        passage = rec["question"].split("\n")[1]
        fact, person = _fact_of(rec["question"], lang)
        assert _passage_value(passage, fact, person, lang) == [rec["choices"][rec["answer"]]], rec
        words = ZH if lang == "zh" else EN
        assert len(set(rec["choices"])) == options == len(rec["choices"])
        for c in rec["choices"]:  # every option a value of the asked type: only reading tells them apart
            assert c.isdigit() if fact in ("age", "books") else c in words[fact], (c, rec)
    in_passage = sum(c in r["question"] for r in records for i, c in enumerate(r["choices"]) if i != r["answer"])
    assert in_passage > 0.3 * len(records) * (options - 1)  # most distractors are read from the passage itself


def test_generated_letters_are_balanced_and_seeded():
    records = generate(1001, seed=2)
    counts = Counter(r["answer"] for r in records)
    assert max(counts.values()) - min(counts.values()) <= 1 and set(counts) == {0, 1, 2, 3}
    assert records == generate(1001, seed=2) and records != generate(1001, seed=3)
    assert {r["lang"] for r in generate(50, seed=1, lang="zh")} == {"zh"}
    assert set(Counter(r["lang"] for r in records)) == {"zh", "en"}


def _names(passage: str, lang: str) -> set[str]:
    return {n for n in (ZH if lang == "zh" else EN)["name"] if n in passage}


def test_people_sets_how_many_people_a_passage_names_and_so_where_the_distractors_come_from():
    default = generate(300, seed=7)
    assert default == generate(300, seed=7, people=[2, 4])  # the default's questions are unchanged by the setting
    for people, fewest, most in ((1, 1, 1), ([1, 2], 1, 2), (3, 3, 3)):
        records = generate(300, seed=7, people=people)
        named = [len(_names(r["question"].split("\n")[1], r["lang"])) for r in records]
        assert min(named) == fewest and max(named) == most, (people, Counter(named))
        for rec in records:
            fact, person = _fact_of(rec["question"], rec["lang"])
            assert _passage_value(rec["question"].split("\n")[1], fact, person, rec["lang"]) == [rec["choices"][rec["answer"]]]
    # one person: no wrong option is stated in the passage (words checked; a number may sit inside another one)
    alone = generate(300, seed=7, people=1)
    assert not any(c in r["question"].split("\n")[1] for r in alone for i, c in enumerate(r["choices"])
                   if i != r["answer"] and not c.isdigit())


@pytest.mark.parametrize("settings,field", [({"colour": 1}, "colour"), ({"options": 7}, "options"),
                                            ({"options": True}, "options"), ({"lang": "fr"}, "lang"),
                                            ({"people": 0}, "people"), ({"people": [3, 2]}, "people"),
                                            ({"people": [1, 7]}, "people"), ({"people": "2"}, "people")])
def test_bad_generator_settings_name_the_setting(settings, field):
    with pytest.raises(TunelabError) as e:
        generate(3, **settings)
    assert e.value.field == field


def _questions(n: int, right: int = 1) -> list[dict]:
    """Questions whose answer is always under the same letter: what shuffling is for."""
    return [{"id": f"q{i}", "question": f"Which word is number {i}?",
             "choices": [f"wrong-{i}-a", f"right-{i}", f"wrong-{i}-b", f"wrong-{i}-c"][:4], "answer": right}
            for i in range(n)]


def test_shuffling_moves_the_answer_with_its_option_and_balances_the_letters():
    examples = choice_examples(_questions(203) + [{"question": "二选一？", "choices": ["对", "错"], "answer": 0}])
    out = choice_training(examples, shuffle_options=True, answer_style="letter", seed=4)
    for before, after in zip(examples, out):
        assert after.choices[after.label] == before.choices[before.label]           # the answer followed its option
        assert sorted(after.choices) == sorted(before.choices)
        assert after.output == LETTERS[after.label]
        assert after.instruction == choice_prompt(before.meta["question"], after.choices)  # rendered again
        assert after.id == before.id and after.kind == before.kind
    letters = Counter(ex.output for ex in out[:203])
    assert max(letters.values()) - min(letters.values()) <= 1 and set(letters) == set("ABCD")
    assert out[203].instruction.startswith("以下是一道单项选择题") and out[203].choices[out[203].label] == "对"
    again = choice_training(examples, shuffle_options=True, answer_style="letter", seed=4)
    assert [e.instruction for e in again] == [e.instruction for e in out]
    assert [e.choices for e in choice_training(examples, True, "letter", seed=5)] != [e.choices for e in out]
    assert examples[0].choices[1] == "right-0" and examples[0].label == 1          # the input is left alone


def test_answer_style_writes_the_letter_and_the_option():
    examples = choice_examples(_questions(3))
    out = choice_training(examples, shuffle_options=False, answer_style="letter_text", seed=0)
    assert [e.output for e in out] == ["B. right-0", "B. right-1", "B. right-2"]
    assert [e.instruction for e in out] == [e.instruction for e in examples]
    first = choice_training(examples, shuffle_options=False, answer_style="text_letter", seed=0)
    assert [e.output for e in first] == ["right-0 (B)", "right-1 (B)", "right-2 (B)"]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_grader_reads_every_text_first_answer_as_its_letter(lang):
    """A model taught `text_letter` writes "金鱼 (D)": the grader must read D for every option of every generated
    question, whatever the option's text (names, numbers, cities, colours in both languages)."""
    task = get_task("choice")
    examples = choice_examples(generate(800, seed=9, lang=lang, people=[1, 6]))
    for ex in choice_training(examples, shuffle_options=True, answer_style="text_letter", seed=3):
        for i, option in enumerate(ex.choices):
            graded = task.grade(f"{option} ({LETTERS[i]})", ex)
            assert (graded["pred"], graded["rule"]) == (LETTERS[i], "own"), (option, ex.choices)
        assert task.grade(ex.output, ex)["correct"]


@pytest.mark.parametrize("options", [
    ["A. Lincoln", "G. Washington", "T. Jefferson", "J. Adams"],        # a leading letter and a full stop
    ["答案：A", "答案：C", "选B", "以上都不对"],                            # answer markers in the options
    ["Plan B", "Plan C (option D)", "Plan C", "(A) none of these"],     # named and bracketed letters
    ["x", "x (A)", "x (A) (B)", "y"],                                   # one option's text inside another's
])
def test_a_text_first_answer_is_read_as_its_own_option_whatever_the_texts_hold(options):
    """Competition options can hold what the other rules read as a letter; "text (X)" with X's own text is X."""
    for i, option in enumerate(options):
        assert extract_choice(f"{option} ({LETTERS[i]})", options) == (LETTERS[i], "own")
        assert extract_choice(f"{option}（{LETTERS[i]}）。", options) == (LETTERS[i], "own")  # full width
    assert extract_choice("Plan C (A)", ["Plan B", "Plan C (option D)", "Plan C", "(A) none"])[1] != "own"


def test_a_source_that_is_not_questions_is_refused_naming_the_setting(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    write_jsonl(path, [{"instruction": "hi", "output": "hello"}])
    with pytest.raises(TunelabError) as e:
        load_source(SourceConfig(path=str(path), shuffle_options=True), "data.train.0.")
    assert e.value.field == "data.train.0.shuffle_options" and "alpaca-0" in e.value.message
    with pytest.raises(ValueError, match="not a corpus"):
        SourceConfig(corpus="c", shuffle_options=True)


def _recipe(tmp_path, **source) -> dict:
    return {"name": "mc", "model": {"path": str(tmp_path / "model")},
            "data": {"train": [source]}, "eval": {"tasks": [{"task": "choice", "source": source}]}}


def test_a_recipe_trains_what_the_choice_task_grades(tmp_path):
    path = tmp_path / "mc.jsonl"
    write_jsonl(path, _questions(40, right=2))
    recipe = validate_recipe(_recipe(tmp_path, path=str(path), format="choice", shuffle_options=True, seed=3))
    examples = training_examples(recipe)
    assert Counter(e.output for e in examples) == {"A": 10, "B": 10, "C": 10, "D": 10}
    task = get_task("choice")
    graded = [task.grade(e.output, e) for e in examples]  # the trained answer is what the task counts right
    assert all(g["correct"] and g["rule"] == "leading" for g in graded)
    generated = validate_recipe(_recipe(tmp_path, generate="choice", count=24, seed=8, options={"lang": "en"}))
    examples = training_examples(generated)
    assert len(examples) == 24 and {e.kind for e in examples} == {"choice-en"}
    assert all(task.grade(e.output, e)["correct"] for e in examples)


def test_cli_writes_questions_and_counts_letters(tmp_path, capsys):
    out = tmp_path / "q.jsonl"
    assert main(["data", "choice", "--out", str(out), "--count", "12", "--seed", "1", "--options", "3"]) == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 12 and all(len(r["choices"]) == 3 for r in records)
    assert "right letter A 4, B 4, C 4" in capsys.readouterr().out
    assert get_task("choice").load_examples(out)[0].choices == records[0]["choices"]  # the task reads the file
    assert main(["data", "choice", "--out", str(out), "--options", "9"]) == 2
    assert "--options" in capsys.readouterr().err
    assert main(["data", "choice", "--out", str(out), "--count", "5", "--people", "1"]) == 0
    assert main(["data", "choice", "--out", str(out), "--people", "2-9"]) == 2
    assert "--people" in capsys.readouterr().err
