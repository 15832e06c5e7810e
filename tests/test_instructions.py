"""The instructions task (IFEval-style verifiable instructions): every checker on hand-written English and Chinese
answers that follow and break it, the Chinese rules (words, sentences, commas, script), strict against loose, IFEval's
own checks transcribed (`ifeval_reference`) agreeing on generated answers, argument and file errors naming file, line
and field, the shipped set, the task's numbers, and `tunelab eval --tasks instructions` without data."""

from __future__ import annotations

import json
import random

import pytest

from ifeval_reference import REFERENCE
from ifeval_reference import loose_variants as reference_loose_variants
from tunelab.data.examples import Example
from tunelab.errors import TunelabError
from tunelab.metrics.instruction_checks import (KINDS, count_words, is_language, loose_variants, parse_instruction,
                                                split_sentences)
from tunelab.tasks.registry import get_task

LT, AL = "less than", "at least"

# (language of the answer's prompt, kind, args, answers that follow it, answers that break it)
CASES = [
    ("en", "keywords:existence", {"keywords": ["park", "book"]},
     ["I read a Book in the park."], ["I read a novel in the park."]),
    ("zh", "keywords:existence", {"keywords": ["健康", "快乐"]}, ["运动让我健康又快乐。"], ["运动让我很开心。"]),
    ("en", "keywords:frequency", {"keyword": "water", "frequency": 2, "relation": AL},
     ["Water is wet; drink water."], ["Water is wet."]),
    ("zh", "keywords:frequency", {"keyword": "秋", "frequency": 2, "relation": AL},
     ["秋天来了，秋风很凉。"], ["秋天来了。"]),
    ("zh", "keywords:frequency", {"keyword": "跑步", "frequency": 3, "relation": LT},
     ["我喜欢跑步，跑步很好。"], ["跑步，跑步，还是跑步。"]),
    ("en", "keywords:forbidden_words", {"forbidden_words": ["click", "button"]},
     ["Press it to choose things; clicking is fine."], ["Just click it.", "Press the BUTTON."]),
    ("zh", "keywords:forbidden_words", {"forbidden_words": ["冷", "雪"]},
     ["冬天很安静，大家都穿得很厚。"], ["冬天很冷。", "下雪了"]),
    ("zh", "keywords:forbidden_words", {"forbidden_words": ["cat", "禁止"]},
     ["concatenate 是一个词。", "这里可以停车。"], ["我的cat很好。", "这里不禁止停车。"]),
    ("en", "keywords:letter_frequency", {"letter": "o", "let_frequency": 5, "let_relation": AL},
     ["Oh, the moon looks good tonight."], ["The sun is bright."]),
    ("zh", "keywords:letter_frequency", {"letter": "A", "let_frequency": 2, "let_relation": AL},
     ["我喜欢 banana 和 papaya。"], ["我喜欢香蕉。"]),
    ("en", "language:response_language", {"language": "en"},
     ["Beijing is the capital of China.", "42"], ["北京是中国的首都。"]),
    ("zh", "language:response_language", {"language": "zh"},
     ["北京是中国的首都，我很喜欢用Python。"], ["Beijing is the capital of China.", "東京はきれいな町です。"]),
    ("en", "length_constraints:number_sentences", {"num_sentences": 3, "relation": AL},
     ["Leaves need light. In autumn there is less. So they turn red!"],
     ["Leaves turn red in autumn. It is pretty.", "Mr. Smith paid 3.14 dollars at example.com. He smiled."]),
    ("zh", "length_constraints:number_sentences", {"num_sentences": 3, "relation": LT},
     ["地图是世界的缩影。它告诉我们方向！"], ["地图很有用。它很小。它很方便？"]),
    ("en", "length_constraints:number_paragraphs", {"num_paragraphs": 2},
     ["Cats are calm.\n***\nDogs are loyal."], ["Cats are calm.\n\nDogs are loyal.", "A cat.\n***\n***\nA dog."]),
    ("zh", "length_constraints:number_paragraphs", {"num_paragraphs": 2},
     ["长城很长。\n***\n长城很古老。"], ["长城很长。长城很古老。"]),
    ("en", "length_constraints:number_words", {"num_words": 10, "relation": LT},
     ["A sunrise paints the sea gold."],
     ["The sun rises slowly over the calm blue sea, painting everything gold."]),
    ("zh", "length_constraints:number_words", {"num_words": 10, "relation": LT},
     ["春天的公园很美。", "我用Python写了3个程序"], ["春天的公园里开满了花，小朋友们在草地上玩耍。"]),
    ("en", "length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2,
                                                           "first_word": "However"},
     ["Trees are tall.\n\nHowever, some are short."],
     ["Trees are tall.\n\nBut some are short.", "Trees are tall. However, some are short."]),
    ("zh", "length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2,
                                                           "first_word": "总之"},
     ["大海很大。\n\n总之，我爱大海。", "大海很大。\n\n“总之，我爱大海。”"],
     ["大海很大。\n\n我爱大海，总之。", "大海很大。总之我爱它。"]),
    ("en", "detectable_content:number_placeholders", {"num_placeholders": 2},
     ["Happy birthday, [name]! See you at [place]."], ["Happy birthday, [name]!"]),
    ("zh", "detectable_content:number_placeholders", {"num_placeholders": 2},
     ["[姓名]您好，请于[日期]参加。"], ["您好，请准时参加。"]),
    ("en", "detectable_content:postscript", {"postscript_marker": "P.S."},
     ["Thanks!\n\nP.S. See you soon."], ["Thanks! See you soon."]),
    ("en", "detectable_content:postscript", {"postscript_marker": "P.P.S"},
     ["Hi.\nP. P. S. bring cake"], ["Hi.\nP.S. bring cake"]),
    ("zh", "detectable_content:postscript", {"postscript_marker": "附言："},
     ["我明天请假一天。\n附言：作业已交。"], ["我明天请假一天。附注：作业已交。"]),
    ("en", "detectable_format:number_bullet_lists", {"num_bullets": 3},
     ["* water\n* tea\n- juice"], ["* water\n* tea", "**Drinks**\n* water\n* tea"]),
    ("zh", "detectable_format:number_bullet_lists", {"num_bullets": 3},
     ["* 苹果\n* 香蕉\n* 橙子"], ["1. 苹果\n2. 香蕉\n3. 橙子"]),
    ("en", "detectable_format:constrained_response", {}, ["My answer is yes. Exercise helps."], ["Yes, it is."]),
    ("zh", "detectable_format:constrained_response", {}, ["My answer is no. 因为太累了。"], ["我的答案是肯定的。"]),
    ("en", "detectable_format:number_highlighted_sections", {"num_highlights": 2},
     ["I love *spring* and **summer**."], ["I love *spring*.", "I love ** and * *."]),
    ("zh", "detectable_format:number_highlighted_sections", {"num_highlights": 2},
     ["我喜欢*春天*和*秋天*。"], ["我喜欢春天和秋天。"]),
    ("en", "detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     ["Section 1\nBoil water.\nSection 2\nAdd tea."], ["Boil water, then add tea."]),
    ("zh", "detectable_format:multiple_sections", {"section_spliter": "部分", "num_sections": 2},
     ["部分 1\n烧水。\n部分 2\n放茶叶。"], ["第一部分：烧水。第二部分：放茶叶。"]),
    ("en", "detectable_format:json_format", {},
     ['{"a": 1}', '```json\n{"a": 1}\n```'], ['Here it is: {"a": 1}']),
    ("zh", "detectable_format:json_format", {}, ['{"天气": "晴"}'], ["天气：晴"]),
    ("en", "detectable_format:json_keys", {"keys": ["title", "author"]},
     ['{"title": "Dune", "author": "Herbert", "year": 1965}'], ['{"title": "Dune"}', '["title", "author"]']),
    ("zh", "detectable_format:json_keys", {"keys": ["书名", "理由"]},
     ['```json\n{"书名": "活着", "理由": "感人"}\n```'], ['{"书名": "活着"}']),
    ("en", "detectable_format:numbered_list", {"num_items": 3},
     ["1. Dig a hole.\n2. Drop the seed.\n3) Water it."],
     ["1. Dig.\n2. Drop.", "1.5 million seeds\n2. Drop.\n3. Water."]),
    ("zh", "detectable_format:numbered_list", {"num_items": 3},
     ["1、早睡\n2、多运动\n3．多喝水"], ["早睡、多运动、多喝水"]),
    ("en", "detectable_format:number_headings", {"num_headings": 2},
     ["# Tea\nCalm.\n## Coffee\nStrong."], ["# Tea\nCalm.", "#Tea\n#Coffee"]),
    ("zh", "detectable_format:number_headings", {"num_headings": 2},
     ["# 咖啡的历史\n很久。\n# 咖啡的种类\n很多。"], ["咖啡的历史很久。"]),
    ("en", "detectable_format:title", {}, ["<<Rain>>\nDrops fall."], ["Rain\nDrops fall.", "<< >>\nDrops."]),
    ("zh", "detectable_format:title", {}, ["<<月光>>\n月亮圆又圆。"], ["《月光》\n月亮圆又圆。"]),
    ("en", "combination:two_responses", {},
     ["Read a book.\n******\nBake cookies."], ["Read a book.\n******\nRead a book.", "Read.\n******\n******\nBake."]),
    ("zh", "combination:two_responses", {}, ["去公园散步。\n******\n在家看电影。"], ["去公园散步，或者在家看电影。"]),
    ("en", "combination:repeat_prompt", {"prompt_to_repeat": "Why do cats purr?"},
     ["why do cats purr? Cats purr when happy."], ["Cats purr when happy."]),
    ("zh", "combination:repeat_prompt", {"prompt_to_repeat": "天空为什么是蓝色的？"},
     ["天空为什么是蓝色的？因为光的散射。"], ["因为光的散射。"]),
    ("en", "startend:end_checker", {"end_phrase": "Thank you so much!"},
     ["Could you water my plants? thank you so much!", '"Please water them. Thank you so much!"'],
     ["Thank you so much! See you."]),
    ("zh", "startend:end_checker", {"end_phrase": "生日快乐！"}, ["祝你天天开心，生日快乐！"], ["生日快乐！祝你开心。"]),
    ("en", "startend:start_checker", {"start_phrase": "In short"},
     ['"In short, a volcano is a mountain."'], ["A volcano, in short, is a mountain."]),
    ("zh", "startend:start_checker", {"start_phrase": "我认为"}, ["我认为早睡早起身体好。"], ["早睡早起身体好，我认为。"]),
    ("en", "startend:quotation", {}, ['"Bubbles is a good name."'],
     ["Bubbles is a good name.", '"Bubbles" is a good name.']),
    ("zh", "startend:quotation", {}, ["“熊猫是中国的国宝。”", '"熊猫很可爱。"'], ["熊猫是中国的国宝。", "“熊猫是国宝。"]),
    ("en", "change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": AL},
     ["You CAN do it. NEVER give up!"], ["You can do it. Never give up!", "The WELL-KNOWN rule."]),
    ("zh", "change_case:capital_word_frequency", {"capital_frequency": 1, "capital_relation": AL},
     ["一定要注意安全，STOP！"], ["一定要注意安全！"]),
    ("en", "change_case:english_capital", {}, ["BIKES MAKE YOU FREE!"], ["Bikes make you FREE!"]),
    ("zh", "change_case:english_capital", {}, ["BE CAREFUL WHEN CROSSING THE ROAD."], ["过马路要小心！CAREFUL"]),
    ("en", "change_case:english_lowercase", {}, ["taste as you cook."], ["Taste as you cook."]),
    ("zh", "change_case:english_lowercase", {}, ["my favorite color is blue."], ["我最喜欢蓝色。", "我最喜欢blue。"]),
    ("en", "punctuation:no_comma", {}, ["A rainbow is light split into colors."], ["Red, orange and yellow."]),
    ("zh", "punctuation:no_comma", {}, ["读书使人进步。"], ["读书，使人进步。", "苹果、香蕉"]),
]


@pytest.mark.parametrize("lang,kind,args,follow,break_", CASES, ids=[f"{c[1]}-{c[0]}" for c in CASES])
def test_each_checker_on_answers_that_follow_and_break_it(lang, kind, args, follow, break_):
    inst = parse_instruction({"kind": kind, "args": args})
    for answer in follow:
        assert inst.follows(answer), answer
        assert inst.follows_loosely(loose_variants(answer)), answer
    for answer in break_:
        assert not inst.follows(answer), answer


def test_every_kind_is_tested_in_both_languages_and_there_are_at_least_15():
    assert len(KINDS) >= 15
    assert {(c[0], c[1]) for c in CASES} == {(lang, kind) for kind in KINDS for lang in ("en", "zh")}
    assert {k for k, v in KINDS.items() if v.origin == "tunelab"} == {
        "detectable_format:numbered_list", "detectable_format:json_keys", "detectable_format:number_headings",
        "startend:start_checker"}


def test_chinese_words_sentences_and_script():
    assert count_words("Hello, world! 你好 2024年") == 6  # Hello world 你 好 2024 年
    assert count_words("well-known rock_n_roll") == 3  # IFEval's \w+: the hyphen splits, the underscore joins
    assert split_sentences("你好。今天天气好吗？好的！！ 走吧") == ["你好。", "今天天气好吗？", "好的！！", "走吧"]
    assert split_sentences("他说：“我来了。”然后走了。") == ["他说：“我来了。”", "然后走了。"]
    assert split_sentences("J. K. Rowling wrote it, e.g. in 1997. Dr. Who? Yes...") == [
        "J. K. Rowling wrote it, e.g. in 1997.", "Dr. Who?", "Yes..."]
    assert split_sentences("Steps:\n1. Boil water.\n2. Add tea.") == ["Steps:\n1. Boil water.", "2. Add tea."]
    assert split_sentences("...") == [] and split_sentences("") == []
    assert is_language("Python是一种编程语言。", "zh") and not is_language("Python是一种编程语言。", "en")
    assert is_language("こんにちは、世界。", "ja") and not is_language("こんにちは、世界。", "zh")
    assert is_language("안녕하세요", "ko") and is_language("Ça va très bien.", "en")
    assert is_language("3 + 4 = 7", "zh") and is_language("3 + 4 = 7", "en")  # no letters: langdetect fails, passes


def test_strict_and_loose():
    """Loose forgives what IFEval's loose check forgives: a first or last line, and `*` markup."""
    def verdicts(kind, args, answer):
        inst = parse_instruction({"kind": kind, "args": args})
        return inst.follows(answer), inst.follows_loosely(loose_variants(answer))

    assert verdicts("detectable_format:json_format", {}, 'Sure, here it is:\n{"a": 1}') == (False, True)
    assert verdicts("detectable_format:json_keys", {"keys": ["书名"]}, '好的：\n{"书名": "活着"}') == (False, True)
    assert verdicts("startend:quotation", {}, '**"Hello there."**') == (False, True)
    assert verdicts("startend:quotation", {}, "好的，以下是回答：\n“熊猫是国宝。”") == (False, True)
    assert verdicts("startend:end_checker", {"end_phrase": "Thank you!"},
                    "Please water my plants. Thank you!\nBest, Ann") == (False, True)
    assert verdicts("punctuation:no_comma", {}, "Sure, here you go:\nA rainbow is light.") == (False, True)
    assert verdicts("startend:start_checker", {"start_phrase": "我认为"}, "**我认为**早睡好。") == (False, True)
    assert verdicts("punctuation:no_comma", {}, "A, B\nC, D\nE, F") == (False, False)
    for blank in ("", "  \n "):  # an empty answer follows nothing, however lenient the instruction
        assert verdicts("punctuation:no_comma", {}, blank) == (False, False)
    assert loose_variants("first\n*mid*\nlast") == ["first\n*mid*\nlast", "first\nmid\nlast", "*mid*\nlast",
                                                    "first\n*mid*", "*mid*", "mid\nlast", "first\nmid", "mid"]


FRAGMENTS = ["Sure, here it is:", "* tea", "- sun", "**bold** words", "*note*", "***", "******", "Section 1",
             "Section 2", "P.S. see you", "p. p. s later", "P.P.S", "<<Title>>", "<< >>", "[name]", "[ ]",
             '{"a": 1}', "```json", "```", "[1, 2]", "However, it rains.", "however", "Sure.", '"', "\"Quoted.\"",
             "Why is the sky blue?", "why is the sky blue? because", "Any other questions?", "My answer is yes.",
             "My answer is maybe", "tea", "Park", "the", "The sun is hot", "a cat", "sunny", "teapot", "eee",
             "x, y", "", " ", "Section3", "sure", "'Sure' she said"]


def _generated_answers(n: int) -> list[str]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        parts = rng.choices(FRAGMENTS, k=rng.randint(1, 6))
        text = "".join(p + rng.choice(["\n", "\n\n", " ", "", "\n***\n"]) for p in parts)
        out.append(rng.choice(["", '"', " "]) + text + rng.choice(["", '"', "\n", "*"]))
    return out


def test_the_checks_ifeval_shares_agree_with_its_own_code_strict_and_loose():
    """On English answers built from the pieces the checks look for, every kind IFEval shares (and can run without
    NLTK's punkt model or langdetect) gives IFEval's verdict, strict and loose."""
    answers = _generated_answers(400)
    for kind, (reference, arg_sets) in REFERENCE.items():
        for args in arg_sets:
            inst = parse_instruction({"kind": kind, "args": args})
            followed = 0
            for answer in answers:
                strict = bool(answer.strip()) and reference(answer, **args)
                loose = any(v.strip() and reference(v, **args) for v in reference_loose_variants(answer))
                assert inst.follows(answer) == strict, (kind, args, answer)
                assert inst.follows_loosely(loose_variants(answer)) == loose, (kind, args, answer)
                followed += strict
            assert 0 < followed < len(answers), (kind, args, followed)  # the answers tell following from not


@pytest.mark.parametrize("spec,field,message", [
    ({"kind": "punctuation:nocomma"}, "instructions.1.kind", "did you mean punctuation:no_comma?"),
    ({"args": {}}, "instructions.1.kind", "missing field"),
    ("no_comma", "instructions.1.kind", "expected an object"),
    ({"kind": "length_constraints:number_words", "args": {"relation": AL}}, "instructions.1.args.num_words",
     "missing argument"),
    ({"kind": "length_constraints:number_words", "args": {"num_words": "40", "relation": AL}},
     "instructions.1.args.num_words", "expected a whole number"),
    ({"kind": "length_constraints:number_words", "args": {"num_words": 0, "relation": AL}},
     "instructions.1.args.num_words", "at least 1"),
    ({"kind": "length_constraints:number_words", "args": {"num_words": 40, "relation": "at most"}},
     "instructions.1.args.relation", "expected one of"),
    ({"kind": "length_constraints:number_words", "args": {"num_word": 40, "relation": AL}},
     "instructions.1.args.num_word", "takes no argument 'num_word'"),
    ({"kind": "keywords:existence", "args": {"keywords": "tea"}}, "instructions.1.args.keywords", "list"),
    ({"kind": "keywords:letter_frequency", "args": {"letter": "ab", "let_frequency": 2, "let_relation": AL}},
     "instructions.1.args.letter", "single letter"),
    ({"kind": "language:response_language", "args": {"language": "fr"}}, "instructions.1.args.language",
     "cannot be told by script"),
    ({"kind": "language:response_language", "args": {"language": "xx"}}, "instructions.1.args.language",
     "unknown language"),
    ({"kind": "length_constraints:nth_paragraph_first_word",
      "args": {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "so"}}, "instructions.1.args", "past"),
    ({"kind": "punctuation:no_comma", "args": ["x"]}, "instructions.1.args", "expected an object"),
])
def test_a_bad_instruction_is_one_error_naming_file_line_and_field(spec, field, message):
    with pytest.raises(TunelabError) as e:
        parse_instruction(spec, "instructions.1", file="mine.jsonl", line=7)
    assert (e.value.file, e.value.line, e.value.field) == ("mine.jsonl", 7, field)
    assert message in e.value.message
    assert "\n" not in str(e.value) and str(e.value).startswith(f"mine.jsonl:7, field '{field}': ")


def _write(tmp_path, rows, name="set.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def test_a_user_file_in_tunelab_or_ifeval_shape(tmp_path):
    task = get_task("instructions")
    path = _write(tmp_path, [
        {"id": "a", "prompt": "Say hi without commas.", "instructions": [{"kind": "punctuation:no_comma"}]},
        {"prompt": "用少于20个字介绍你自己。", "instructions": [
            {"kind": "length_constraints:number_words", "args": {"num_words": 20, "relation": LT}}]},
        {"key": 1001, "prompt": "Write a riddle. Use at least 2 placeholders.",  # IFEval's own, HF nulls kept
         "instruction_id_list": ["detectable_content:number_placeholders", "punctuation:no_comma"],
         "kwargs": [{"num_placeholders": 2, "num_words": None}, {}]}])
    examples = task.load_examples(path)
    assert [(e.id, e.kind) for e in examples] == [("a", "en"), ("2", "zh"), ("1001", "en")]
    assert examples[2].meta["instructions"] == [
        {"kind": "detectable_content:number_placeholders", "args": {"num_placeholders": 2}},
        {"kind": "punctuation:no_comma", "args": {}}]
    assert task.grade("A [thing] in a [place]", examples[2])["correct"]


@pytest.mark.parametrize("row,field,message", [
    ("{not json", None, "malformed JSON"),
    ({"instructions": [{"kind": "punctuation:no_comma"}]}, "prompt", "missing field"),
    ({"prompt": "hi"}, "instructions", "missing field"),
    ({"prompt": "hi", "instructions": []}, "instructions", "non-empty list"),
    ({"prompt": "hi", "instructions": [{"kind": "punctuation:no_comma"},
                                       {"kind": "length_constraints:number_words", "args": {"num_words": -1}}]},
     "instructions.1.args.num_words", "at least 1"),
    ({"prompt": "hi", "instruction_id_list": ["startend:quotation", "keywords:unknown"], "kwargs": [{}, {}]},
     "instruction_id_list.1", "unknown instruction kind"),
    ({"prompt": "hi", "instruction_id_list": ["length_constraints:number_words"],
      "kwargs": [{"num_words": 5, "relation": "more than"}]}, "kwargs.0.relation", "expected one of"),
    ({"prompt": "hi", "instruction_id_list": ["startend:quotation"], "kwargs": []}, "kwargs", "one per"),
    ({"id": "first", "prompt": "hi", "instructions": [{"kind": "startend:quotation"}]}, "id", "earlier prompt"),
])
def test_a_bad_line_is_one_error_naming_file_line_and_field(tmp_path, row, field, message):
    first = {"id": "first", "prompt": "Hello.", "instructions": [{"kind": "startend:quotation"}]}
    path = _write(tmp_path, [first, row])
    with pytest.raises(TunelabError) as e:
        get_task("instructions").load_examples(path)
    assert (e.value.file, e.value.line, e.value.field) == (str(path), 2, field)
    assert message in e.value.message


def test_the_shipped_set():
    examples = get_task("instructions").default_examples()
    assert len(examples) >= 150 and len({e.id for e in examples}) == len(examples)
    assert len({e.instruction for e in examples}) == len(examples)
    by_language = {lang: sum(e.kind == lang for e in examples) for lang in ("en", "zh")}
    assert sum(by_language.values()) == len(examples) and min(by_language.values()) >= 0.45 * len(examples)
    uses = [spec["kind"] for e in examples for spec in e.meta["instructions"]]
    assert set(uses) == set(KINDS) and len(set(uses)) >= 15
    assert min(uses.count(kind) for kind in KINDS) >= 5
    assert all(1 <= len(e.meta["instructions"]) <= 3 for e in examples)
    for e in examples:  # each followable within the task's 160 tokens by a small model: no long answers asked for
        for spec in e.meta["instructions"]:
            inst = parse_instruction(spec)
            if inst.args.get("relation") == AL:
                assert inst.args.get("num_words", 0) <= 30 and inst.args.get("num_sentences", 0) <= 4, e.id
            assert inst.args.get("num_words", 0) <= 80, e.id


def _example(ident, lang, *specs):
    return Example(id=ident, instruction="p", output="", kind=lang,
                   meta={"instructions": [{"kind": k, "args": a} for k, a in specs]})


def test_grade_and_summarize_give_ifevals_four_numbers_and_the_breakdowns():
    task = get_task("instructions")
    no_comma, quoted = ("punctuation:no_comma", {}), ("startend:quotation", {})
    few = ("length_constraints:number_words", {"num_words": 5, "relation": LT})
    graded = [
        task.grade('"Hello there."', _example("1", "en", no_comma, quoted)),  # both followed
        task.grade('Sure, here:\n"Hi, you."', _example("2", "en", no_comma, quoted)),  # commas always; loosely quoted
        task.grade("你好，世界。", _example("3", "zh", no_comma)),  # broken
        task.grade("**你好世界**", _example("4", "zh", few, no_comma)),  # both followed
    ]
    assert graded[1] == {"correct": False, "loose_correct": False, "kinds": ["punctuation:no_comma",
                         "startend:quotation"], "strict": [False, False], "loose": [False, True], "language": "en"}
    out = task.summarize(graded)
    assert out["n"] == 4 and out["prompt_level_strict_acc"] == 0.5 and out["prompt_level_loose_acc"] == 0.5
    assert out["inst_level_strict_acc"] == 4 / 7 and out["inst_level_loose_acc"] == 5 / 7
    assert out["by_kind"]["punctuation:no_comma"] == {"n": 4, "strict_acc": 0.5, "loose_acc": 0.5}
    assert out["by_kind"]["startend:quotation"] == {"n": 2, "strict_acc": 0.5, "loose_acc": 1.0}
    assert out["by_language"]["zh"] == {"prompt_level_strict_acc": 0.5, "inst_level_strict_acc": 2 / 3,
                                        "prompt_level_loose_acc": 0.5, "inst_level_loose_acc": 2 / 3, "n": 2}
    assert task.summarize([])["prompt_level_strict_acc"] == 0.0
    with pytest.raises(TunelabError, match="no instructions"):
        task.grade("x", Example(id="e", instruction="q", output=""))


def test_the_runner_generates_160_tokens_and_records_what_retention_judges(tmp_path, monkeypatch):
    from tunelab.data.templates import PromptTemplate
    from tunelab.decoding.embedded import Completion
    from tunelab.eval import runner
    asked = {}

    def fake_generation(model, tokenizer, prompts, max_new_tokens, batch_size, desc):
        asked["max_new_tokens"] = max_new_tokens
        return [Completion('"Hello there."', "stop") for _ in prompts]

    monkeypatch.setattr(runner, "complete_batched_for", fake_generation)
    examples = [_example("1", "en", ("startend:quotation", {})), _example("2", "zh", ("punctuation:no_comma", {}))]
    out = runner.evaluate_examples(None, None, PromptTemplate("alpaca"), "instructions", examples, tmp_path,
                                   max_new_tokens=32)
    assert asked["max_new_tokens"] == 160
    assert out["prompt_level_strict_acc"] == 1.0 and out["primary_metric"] == "prompt_level_strict_acc"
    assert out["retained_by"] == {"prompt_level_strict_acc": 100.0, "inst_level_strict_acc": 100.0}
    rows = [json.loads(line) for line in (tmp_path / "instructions.predictions.jsonl").read_text().splitlines()]
    assert [r["strict"] for r in rows] == [[True], [True]]
    with pytest.raises(TunelabError) as e:
        get_task("instructions").configure(max_new_tokens=0)
    assert e.value.field == "max_new_tokens"


def test_tunelab_eval_runs_the_shipped_set_without_data():
    from tunelab.cli import build_parser
    from tunelab.cli.eval import config_from_flags
    from tunelab.eval.sets import eval_sets
    args = build_parser().parse_args(["eval", "--model", "m", "--tasks", "instructions", "--limit", "3",
                                      "--option", "instructions.max_new_tokens=96"])
    sets = eval_sets(config_from_flags(args))
    assert len(sets["instructions"].examples) == 3 and sets["instructions"].source == "tunelab:instructions"
    assert sets["instructions"].task.max_new_tokens == 96
