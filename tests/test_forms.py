"""The forms task (issue 68 item 1): every check on English and Chinese answers that keep and lose the form (a list of
so many distinct items, a letter, so many sentences or words, the asked language, no loop), the forms read from a
request's words, the shipped prompts, a user file and its errors naming file, line and field, the task's numbers,
and an evaluation of a tiny model judged for retention against itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.data.examples import Example
from tunelab.errors import TunelabError
from tunelab.metrics.form_checks import KINDS, parse_check
from tunelab.metrics.form_requests import chinese_number, requested_checks
from tunelab.metrics.letter_form import letter_parts
from tunelab.metrics.list_items import item_heads, list_items
from tunelab.metrics.repetition import MAX_REPEATED_SHARE, PROSE_SHARE, before_loop, repeated_share
from tunelab.tasks.registry import get_task, ships_examples

TINY_BASE = Path(__file__).resolve().parents[1] / "models" / "tiny-base"
DATA = Path(__file__).resolve().parents[1] / "src" / "tunelab" / "tasks" / "data"

EN_LETTER = ("Dear Aunt May,\n\nThank you so much for the beautiful scarf you knitted for me. The colors are lovely "
             "and it is so warm. I wore it to school today and everyone asked where I got it.\n\nWith love,\nEmma")
EN_NOTE = "Hi Sam,\n\nDon't forget to pick up milk on your way home tonight, we are all out.\n\nThanks!\nAlex"
EN_EMAIL = ("Subject: One more day for my homework\n\nDear Mr. Smith,\n\nI am writing to ask whether I could hand in "
            "my history homework on Friday instead of Thursday. I was ill for two days this week.\n\n"
            "Best regards,\n[Your Name]")
ZH_LETTER = ("亲爱的王阿姨：\n\n您好！非常感谢您这几天帮我照顾小猫。我出差的时候一直很担心它，知道有您在，我就放心了。\n\n"
             "此致\n敬礼！\n\n小李\n2024年5月3日")
ZH_NOTE = "小王：\n我今晚要加班，大概十点以后才能回来，不用等我吃饭了。\n小李\n5月3日"
ZH_EMAIL = "**尊敬的张老师：**\n\n您好！我今天发烧了，想请假一天，明天的作业我会按时补交。给您添麻烦了。\n\n祝好\n学生 李华"
EN_LOOP = "Thank you for the scarf. " * 20
ZH_LOOP = "谢谢你帮我照顾小猫。" * 20
EN_PROSE = ("Weather is what the air is like at a given time and place: sunny or rainy, hot or cold, calm or windy. "
            "Climate is the average of the weather in a region over many years, usually thirty or more. A city may "
            "have a rainy day in a dry season; that is weather. That the city is usually dry in summer is its climate.")
ZH_PROSE = ("天气和气候是两个不同的概念。天气是指某个地方在短时间内的大气状况，比如今天是晴天还是下雨，气温是多少度。"
            "气候是指一个地区多年来天气的平均状况，比如北京的气候是夏天炎热多雨，冬天寒冷干燥。简单来说，天气变化很快，"
            "而气候是长期的规律。")

# (language of the prompt, kind, args, answers that keep the form, answers that lose it)
CASES = [
    ("en", "list_items", {"count": 3},
     ["1. Banana\n2. Lemon\n3. Pineapple", "Three yellow fruits are bananas, lemons, and pineapples.",
      "Sure! Here you go:\n- **Banana**: sweet\n  - soft and easy to peel\n- Lemon\n- Mango",
      "Here are three:\nBanana\nLemon\nStarfruit",
      "There are many, such as bananas, lemons and mangoes, which are sweet."],
     ["Banana is a yellow fruit.", "Apple, Orange, Orange", "1. Bananas are sweet.\n2. Banana is yellow.\n3. Lemon",
      "1. Banana\n2. Lemon", "Bananas, lemons, mangoes and pineapples.", "Luna, Kael and Luna."]),
    ("zh", "list_items", {"count": 3},
     ["1. 香蕉\n2. 柠檬\n3. 菠萝", "黄色的水果有香蕉、柠檬和菠萝，它们都很好吃。", "好的，香蕉，柠檬，芒果。",
      "三种黄色的水果：\n1、香蕉：很甜\n2、柠檬：很酸\n3、菠萝：很香"],
     ["香蕉、香蕉、香蕉", "香蕉是一种黄色的水果。", "1、香蕉\n2、柠檬", "1. 北京\n2. 北京\n3. 上海", "香蕉、柠檬、芒果和菠萝。"]),
    ("zh", "list_items", {"count": 2}, ["苹果和香蕉。", "推荐《小王子》和《夏洛的网》。"], ["苹果。", "苹果和苹果。"]),
    ("en", "letter", {}, [EN_LETTER, EN_NOTE, EN_EMAIL, EN_LETTER + "\n\nI hope you have a good day.\n" * 10],
     [EN_LOOP, "Dear Anna,\n" + EN_LOOP, "Dear Anna, thanks for the scarf. Best, Tom",
      "Thank you for the lovely scarf!\nI love it.\nEmma", "Dear Anna,\n\nThanks!\nTom",
      "Dear Anna,\n\nShelter from the sun, the rain and the snow for a while.\nShelter"]),
    ("zh", "letter", {}, [ZH_LETTER, ZH_NOTE, ZH_EMAIL],
     [ZH_LOOP, "亲爱的妈妈：\n" + "祝你母亲节快乐，" * 30, "谢谢你帮我照顾小猫！🌟🌟🌟", "亲爱的妈妈：\n谢谢！\n小红"]),
    ("en", "sentences", {"count": 1, "relation": "exactly"},
     ["Sleep lets the body and the brain rest and repair themselves.", "Mr. Lee said sleep is vital, e.g. for memory."],
     ["Sleep is vital. It restores us.", ""]),
    ("zh", "sentences", {"count": 1, "relation": "exactly"}, ["长城是中国古代修建的一道很长的城墙。"], ["长城很长。它很古老。"]),
    ("en", "sentences", {"count": 2, "relation": "exactly"},
     ["The moon circles the Earth. It shines with the sun's light."], ["The moon circles the Earth."]),
    ("zh", "sentences", {"count": 2, "relation": "at most"}, ["秋天到了。树叶黄了。", "秋天很美。"], ["秋天到了。树叶黄了。天凉了。"]),
    ("en", "words", {"count": 50, "relation": "at least"}, [EN_PROSE], ["Trees give us shade and clean air."]),
    ("zh", "words", {"count": 50, "relation": "at least"}, [ZH_PROSE], ["我的家乡很美。"]),
    ("en", "words", {"count": 20, "relation": "at most"}, ["An umbrella keeps you dry in the rain."], [EN_PROSE]),
    ("zh", "words", {"count": 30, "relation": "at most"}, ["雨伞可以挡雨，也可以遮阳。"], [ZH_PROSE]),
    ("en", "language", {"language": "en"}, ["The sky is blue.", "Python是一种 programming language that is easy."],
     ["天空是蓝色的。", "Python是一种编程语言。"]),
    ("zh", "language", {"language": "zh"}, ["北京是中国的首都，我喜欢用Python。", ZH_PROSE],
     ["I'm sorry, as a text-based AI I cannot write letters.", "東京はきれいな町です。"]),
    ("en", "repetition", {}, [EN_PROSE, EN_LETTER, "1. Banana\n2. Lemon\n3. Pineapple", "Yes."],
     [EN_LOOP, EN_LETTER + "\n\nI hope you have a wonderful day too." * 20, "Shelter from the sun,\n" * 30]),
    ("zh", "repetition", {}, [ZH_PROSE, ZH_LETTER, ZH_NOTE],
     [ZH_LOOP, "感谢邻居帮我照顾小猫！" + "🌟" * 60, "苏范" * 100, "考试前很紧张怎么办？\n\n" * 20,
      "".join(f"{i}. **猫**\n" for i in range(1, 40))]),
]


@pytest.mark.parametrize("lang,kind,args,keep,lose", CASES, ids=[f"{c[1]}-{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_check_on_answers_that_keep_and_lose_the_form(lang, kind, args, keep, lose):
    check = parse_check({"kind": kind, "args": args})
    for answer in keep:
        assert check.judge(answer)[0], answer
    for answer in lose:
        assert not check.judge(answer)[0], answer


def test_every_kind_is_tested_in_both_languages():
    assert {(c[0], c[1]) for c in CASES} == {(lang, kind) for kind in KINDS for lang in ("en", "zh")}


def test_the_items_a_list_holds_and_what_makes_two_one():
    assert item_heads(list_items("Apple, Orange, Orange")) == ["apple", "orange", "orange"]
    assert item_heads(list_items("1. **Berries**: small\n2. Tomatoes - red\n3. The apple (green)")) == [
        "berry", "tomato", "apple"]
    assert item_heads(list_items("好的，黄色的水果有香蕉、柠檬和菠萝，它们都很好吃。")) == ["香蕉", "柠檬", "菠萝"]
    assert item_heads(list_items("1. 北京：中国的首都\n2. 上海是最大的城市\n3. 广州")) == ["北京", "上海", "广州"]
    assert list_items("") == [] and len(list_items("Bananas.")) == 1
    # numbered lines win over bullets, and sub-points under an item are not items
    assert item_heads(list_items("1. Tea\n   - green\n   - black\n2. Coffee\n3. Juice")) == ["tea", "coffee", "juice"]
    assert check_items("1. Luna (Alec)\n2. Kael (Alec)\n3. Luna (Alec)", 3) == {"items": 3, "distinct_items": 2}


def check_items(answer: str, count: int) -> dict:
    return parse_check({"kind": "list_items", "args": {"count": count}}).judge(answer)[1]


def test_the_parts_of_a_letter():
    assert letter_parts(EN_LETTER).is_letter and letter_parts(ZH_LETTER).is_letter
    parts = letter_parts(EN_EMAIL)
    assert (parts.greeting, parts.sign_off) == (1, 3) and parts.body_words >= 20  # after a Subject: line
    assert letter_parts(EN_LOOP).greeting is None
    looped = letter_parts("Dear Anna,\n" + EN_LOOP)
    assert looped.greeting == 0 and looped.sign_off is None and not looped.is_letter


def test_the_repeated_share_of_prose_and_of_loops():
    for prose in (EN_PROSE, ZH_PROSE, EN_LETTER, ZH_LETTER):
        assert repeated_share(prose) < 0.1
    for loop in (EN_LOOP, ZH_LOOP):
        assert repeated_share(loop) > 0.9
    assert repeated_share("thank you, THANK you! " * 4) == repeated_share("thank you " * 8) == 1.0
    assert repeated_share("one two three four") == 0.0 and repeated_share("") == 0.0
    # a numbered list that names one thing over and over loops, whatever its numbers
    assert repeated_share("".join(f"{i}. Seyala\n" for i in range(1, 30))) == 1.0
    # a letter that then says its last line over and over: the form is kept, the answer loops
    assert repeated_share(EN_LETTER + "\n\nI hope you have a wonderful day too." * 20) > MAX_REPEATED_SHARE



def test_what_a_loop_leaves_before_it():
    """A looping answer keeps its start up to where the loop begins, at a line, sentence or clause end, in either
    language; an answer that does not loop is kept whole; one that loops from its first words keeps nothing."""
    for whole in (EN_PROSE, ZH_PROSE, EN_LETTER, ZH_LETTER, "1. Banana\n2. Lemon\n3. Pineapple", ""):
        assert before_loop(whole) == whole
    en = before_loop(EN_LETTER + "\n\nI hope you have a wonderful day too." * 20)
    assert en.startswith(EN_LETTER) and en.count("wonderful day") <= 1
    zh = before_loop(ZH_PROSE + "你可以看到，" * 30)
    assert zh.startswith(ZH_PROSE) and zh.count("你可以看到") <= 1
    listed = before_loop("Here are some hobbies:\n\n1. **Cooking**: a fun hobby you can do at home.\n\n"
                         + "".join(f"{i}. **Fishing**: a fun hobby you can do at home.\n\n" for i in range(2, 20)))
    assert "Cooking" in listed and listed.count("Fishing") <= 1
    for looped in (EN_LOOP, ZH_LOOP, "1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1.1"):
        assert len(before_loop(looped)) < len(looped) / 4
    for text in (EN_LETTER + "\n\nThank you again." * 30, ZH_LETTER + "谢谢您！" * 40):
        assert repeated_share(text) > MAX_REPEATED_SHARE >= PROSE_SHARE >= repeated_share(before_loop(text))


@pytest.mark.parametrize("prompt,checks", [
    ("List three yellow fruits.", [{"kind": "list_items", "args": {"count": 3}}]),
    ("Name 5 rivers in Africa.", [{"kind": "list_items", "args": {"count": 5}}]),
    ("Give me twelve ideas for a party.", [{"kind": "list_items", "args": {"count": 12}}]),
    ("Name a few birds.", []),
    ("Give me two sentences about rain.", [{"kind": "sentences", "args": {"count": 2, "relation": "exactly"}}]),
    ("列出五个中国的城市。", [{"kind": "list_items", "args": {"count": 5}}]),
    ("三种适合夏天的饮料", [{"kind": "list_items", "args": {"count": 3}}]),
    ("推荐两本书。", [{"kind": "list_items", "args": {"count": 2}}]),
    ("列举十五种动物。", [{"kind": "list_items", "args": {"count": 15}}]),
    ("Write a short note to my neighbor.", [{"kind": "letter", "args": {}}]),
    ("写一封感谢信。", [{"kind": "letter", "args": {}}]),
    ("给客户写一封邮件。", [{"kind": "letter", "args": {}}]),
    ("写一条微信短信给妈妈。", []),
    ("In one sentence, what is rain?", [{"kind": "sentences", "args": {"count": 1, "relation": "exactly"}}]),
    ("用一句话介绍熊猫。", [{"kind": "sentences", "args": {"count": 1, "relation": "exactly"}}]),
    ("Explain tides in fewer than 30 words.", [{"kind": "words", "args": {"count": 29, "relation": "at most"}}]),
    ("Describe a cat in at least 40 words.", [{"kind": "words", "args": {"count": 40, "relation": "at least"}}]),
    ("介绍你的家乡，不少于五十字。", [{"kind": "words", "args": {"count": 50, "relation": "at least"}}]),
    ("用100字以内说说春天。", [{"kind": "words", "args": {"count": 100, "relation": "at most"}}]),
    ("Why is the sky blue?", []),
])
def test_the_forms_a_request_asks_for(prompt, checks):
    assert requested_checks(prompt) == checks
    for spec in checks:
        parse_check(spec)


def test_chinese_numerals():
    assert [chinese_number(t) for t in ("一", "两", "十", "十五", "二十", "五十三", "一百", "三百零五")] == [
        1, 2, 10, 15, 20, 53, 100, 305]
    assert chinese_number("三四") is None and chinese_number("个") is None and chinese_number("") is None


def _prompts(name: str) -> set[str]:
    return {json.loads(line)["prompt"] for line in (DATA / name).read_text(encoding="utf-8").splitlines()}


def test_the_shipped_set():
    task = get_task("forms")
    examples = task.default_examples()
    assert ships_examples(type(task)) and len(examples) == 52
    assert len({e.id for e in examples}) == len({e.instruction for e in examples}) == len(examples)
    assert sum(e.kind == "en" for e in examples) == sum(e.kind == "zh" for e in examples) == 26
    for e in examples:  # each asks what its words ask, and is judged for its language and loops besides
        kinds = [spec["kind"] for spec in e.meta["checks"]]
        assert e.meta["checks"][:-2] == requested_checks(e.instruction), e.id
        assert kinds[-2:] == ["language", "repetition"] and e.meta["checks"][-2]["args"] == {"language": e.kind}
        for i, spec in enumerate(e.meta["checks"]):
            parse_check(spec, f"checks.{i}")
    used = {(e.kind, spec["kind"]) for e in examples for spec in e.meta["checks"]}
    assert used == {(lang, kind) for kind in KINDS for lang in ("en", "zh")}
    # prompts apart from the ones the replay trains on and base_agreement scores, and from the instructions task's
    prompts = {e.instruction for e in examples}
    assert not prompts & _prompts("general_prompts.jsonl") and not prompts & _prompts("instructions.jsonl")


def test_the_replayed_form_requests_are_apart_from_the_judged_ones():
    """`data.replay.prompts: [forms]`: 112 form requests (lists, letters and notes, sentence and word counts,
    stories), half of them Chinese, replayed with the base's answers; none is a prompt this task judges, that
    base_agreement scores or replays, or that the instructions task asks, and each is one the form requests
    recognise as asking for a form or is an open request in its language."""
    from tunelab.pipeline.self_replay import FORM_REPLAY_FILE, FORMS, _prompts as replay_prompts
    examples = replay_prompts(FORMS, None, None, None, None, "data.replay.prompts.0")
    assert len(examples) == 112 and sum(e.kind == "zh" for e in examples) == 56
    assert FORM_REPLAY_FILE.parent == DATA
    prompts = {e.instruction for e in examples}
    assert len(prompts) == 112
    for other in ("forms.jsonl", "general_prompts.jsonl", "instructions.jsonl"):
        assert not prompts & _prompts(other), other
    asked = [e for e in examples if requested_checks(e.instruction)]
    assert len(asked) >= 96 and {e.kind for e in asked} == {"en", "zh"}


def _write(tmp_path, rows, name="forms.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def test_a_user_file(tmp_path):
    path = _write(tmp_path, [
        {"id": "a", "prompt": "List three birds."},  # checks read from the words
        {"prompt": "用一句话介绍熊猫。"},
        {"prompt": "用英文列出三种水果。", "language": "en",
         "checks": [{"kind": "list_items", "args": {"count": 3}}]},
        {"prompt": "Say hello.", "checks": [{"kind": "repetition"}]}])
    examples = get_task("forms").load_examples(path)
    assert [(e.id, e.kind) for e in examples] == [("a", "en"), ("2", "zh"), ("3", "en"), ("4", "en")]
    assert [[s["kind"] for s in e.meta["checks"]] for e in examples] == [
        ["list_items", "language", "repetition"], ["sentences", "language", "repetition"],
        ["list_items", "language", "repetition"], ["repetition", "language"]]
    assert examples[2].meta["checks"][1]["args"] == {"language": "en"}
    assert get_task("forms").grade("1. Apple\n2. Banana\n3. Cherry", examples[2])["correct"]


@pytest.mark.parametrize("row,field,message", [
    ("{not json", None, "malformed JSON"),
    ({"checks": []}, "prompt", "missing field"),
    ({"prompt": "  "}, "prompt", "empty prompt"),
    ({"prompt": "hi", "checks": {"kind": "letter"}}, "checks", "expected a list"),
    ({"prompt": "hi", "checks": [{"kind": "letter"}, {"kind": "list_item", "args": {"count": 3}}]}, "checks.1.kind",
     "did you mean list_items?"),
    ({"prompt": "hi", "checks": [{"args": {}}]}, "checks.0.kind", "missing field"),
    ({"prompt": "hi", "checks": ["letter"]}, "checks.0.kind", "expected an object"),
    ({"prompt": "hi", "checks": [{"kind": "list_items", "args": {"count": 0}}]}, "checks.0.args.count", "at least 1"),
    ({"prompt": "hi", "checks": [{"kind": "list_items"}]}, "checks.0.args.count", "missing argument"),
    ({"prompt": "hi", "checks": [{"kind": "words", "args": {"count": 5, "relation": "less than"}}]},
     "checks.0.args.relation", "expected one of"),
    ({"prompt": "hi", "checks": [{"kind": "letter", "args": {"count": 1}}]}, "checks.0.args.count", "no argument"),
    ({"prompt": "hi", "checks": [{"kind": "language", "args": {"language": "fr"}}]}, "checks.0.args.language",
     "unknown language"),
    ({"prompt": "hi", "checks": [{"kind": "letter", "args": [1]}]}, "checks.0.args", "expected an object"),
    ({"id": "first", "prompt": "hi"}, "id", "earlier prompt"),
    ({"prompt": "hi", "language": "fr"}, "language", "unknown language"),
])
def test_a_bad_line_is_one_error_naming_file_line_and_field(tmp_path, row, field, message):
    path = _write(tmp_path, [{"id": "first", "prompt": "List three birds."}, row])
    with pytest.raises(TunelabError) as e:
        get_task("forms").load_examples(path)
    assert (e.value.file, e.value.line, e.value.field) == (str(path), 2, field)
    assert message in e.value.message and "\n" not in str(e.value)


def _example(ident, lang, *specs):
    checks = [{"kind": k, "args": a} for k, a in specs]
    return Example(id=ident, instruction="p", output="", kind=lang, meta={"checks": checks})


def test_grade_and_summarize():
    task = get_task("forms")
    three = ("list_items", {"count": 3})
    graded = [
        task.grade("1. Banana\n2. Lemon\n3. Pineapple", _example("1", "en", three, ("language", {"language": "en"}),
                                                                 ("repetition", {}))),
        task.grade("香蕉、柠檬、柠檬", _example("2", "zh", three, ("language", {"language": "zh"}), ("repetition", {}))),
        task.grade(ZH_LOOP, _example("3", "zh", ("letter", {}), ("language", {"language": "zh"}), ("repetition", {}))),
    ]
    assert graded[1] == {"correct": False, "kinds": ["list_items", "language", "repetition"],
                         "passed": [False, True, True], "language": "zh", "items": 3, "distinct_items": 2,
                         "repeated_share": 0.0}
    assert graded[2]["passed"] == [False, True, False] and graded[2]["repeated_share"] > 0.9
    out = task.summarize(graded)
    assert out["n"] == 3 and out["prompt_level_acc"] == pytest.approx(1 / 3)
    assert out["check_level_acc"] == pytest.approx(6 / 9)
    assert out["repeated_share"] == pytest.approx(graded[2]["repeated_share"] / 3)
    assert out["by_check"]["list_items"] == {"n": 2, "acc": 0.5} and out["by_check"]["letter"] == {"n": 1, "acc": 0.0}
    assert out["by_language"]["zh"]["prompt_level_acc"] == 0.0 and out["by_language"]["en"]["check_level_acc"] == 1.0
    for blank in ("", "  \n"):  # an empty answer keeps no form, however lenient the check
        assert task.grade(blank, _example("4", "en", ("repetition", {})))["passed"] == [False]
    with pytest.raises(TunelabError, match="no checks"):
        task.grade("x", Example(id="e", instruction="q", output=""))


def test_the_runner_generates_the_tasks_length_and_records_what_retention_judges(tmp_path, monkeypatch):
    from tunelab.data.templates import PromptTemplate
    from tunelab.decoding.embedded import Completion
    from tunelab.eval import runner
    asked = {}

    def fake_generation(model, tokenizer, prompts, max_new_tokens, batch_size, desc):
        asked["max_new_tokens"] = max_new_tokens
        return [Completion(text, "stop") for text in (EN_LETTER, ZH_LOOP)]

    monkeypatch.setattr(runner, "complete_batched_for", fake_generation)
    examples = [e for e in get_task("forms").default_examples() if e.id in ("en-008", "zh-008")]
    out = runner.evaluate_examples(None, None, PromptTemplate("alpaca"), "forms", examples, tmp_path,
                                   max_new_tokens=32)
    assert asked["max_new_tokens"] == 320
    assert out["prompt_level_acc"] == 0.5 and out["primary_metric"] == "prompt_level_acc"
    assert out["retained_by"] == {"prompt_level_acc": 100.0, "check_level_acc": 100.0}
    rows = [json.loads(line) for line in (tmp_path / "forms.predictions.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in rows] == [[True, True, True], [False, True, False]]
    with pytest.raises(TunelabError) as e:
        get_task("forms").configure(max_new_tokens=0)
    assert e.value.field == "max_new_tokens"


def test_a_tiny_model_evaluated_and_judged_against_itself(tmp_path):
    """Through `tunelab.eval.evaluate` with a baseline: the shipped prompts in the model's template, graded, and the
    retention of both headline metrics (a base scoring near 0 cannot be judged against, and says so)."""
    from tunelab.eval.evaluate import evaluate
    from tunelab.recipe import validate_eval
    config = validate_eval({"tasks": [{"task": "forms", "ability": True, "limit": 4,
                                       "options": {"max_new_tokens": 24}}], "batch_size": 4})
    doc, out = evaluate(TINY_BASE, config, tmp_path / "e", baseline=str(TINY_BASE))
    res = doc["results"][next(iter(doc["results"]))]["forms"]
    assert res["n"] == 4 and set(res["by_language"]) == {"en", "zh"} and 0 <= res["prompt_level_acc"] <= 1
    rows = [json.loads(line) for line in (out / "forms.predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["en-001", "zh-001", "en-002", "zh-002"]
    assert all(r["kinds"] == ["list_items", "language", "repetition"] for r in rows)
    judged = doc["retention"][next(iter(doc["retention"]))]["metrics"]
    assert set(judged) == {"forms.prompt_level_acc", "forms.check_level_acc"}
    for entry in judged.values():
        assert entry["tuned"] == entry["base"] and (entry["retained"] is None or entry["retained"] == 1.0)
