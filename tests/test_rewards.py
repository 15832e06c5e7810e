"""GRPO rewards (`tunelab.eval.rewards`): every task with a grader is a reward (its own `grade`, 1.0 when
correct), hostile completions get 0 and never crash it, the format and length terms equal TRL's
`think_format_reward` and `get_soft_overlong_punishment`, and a user's reward function that misbehaves is one
located TunelabError naming the function and the completion that caused it."""

from __future__ import annotations

import sys

import pytest
import torch

from tunelab.data.examples import Example
from tunelab.errors import TunelabError
from tunelab.eval.rewards import build_rewards, load_function
from tunelab.tasks.registry import task_names
from tunelab.train.methods.grpo_loss import group_advantages, zero_variance_groups

# one example every generate-mode task can grade: the right answer is "1" for all of them
ANY_TASK = Example(id="e1", instruction="问题：一加零等于几？ question", output="1", choices=["1", "2"], label=0,
                   answers=["1"])
HOSTILE = ["", " ", "\n\n", "9" * 200_000, "字" * 100_000, " ".join(["x"] * 100_000), "9e99999999", "NaN", "inf",
           "-0", "٣٣", "0x2F", "2/0", "0/0", "--", "∞", "\x00\x07\ufffd", "十九", "答案：B", "[[[[((((",
           "2" * 5000 + "e-99999", "=" * 1000, "２", "B. 2", "not duplicate"]


def test_every_task_with_a_grader_is_a_reward_and_hostile_completions_score_zero():
    names = task_names(lambda cls: "generate" in cls.modes)
    assert {"arithmetic", "choice", "cola", "qqp", "reading", "squad", "rougel"} <= set(names)
    completions = ["1"] + HOSTILE
    # instructions grades what its examples ask (their `meta`), not a reference answer: "1" obeys "say 1"
    structured = {"instructions": Example(id="i1", instruction="Say 1.", output="", meta={
        "instructions": [{"kind": "keywords:existence", "args": {"keywords": ["1"]}}]})}
    # forms grades an answer's form, not its content: "NaN" is one word as "1" is, so a hostile completion may
    # comply; it must still be scored (0 or 1, an empty one 0), never crash
    one_word = Example(id="f1", instruction="Say 1.", output="", meta={
        "checks": [{"kind": "words", "args": {"count": 1, "relation": "exactly"}}]})
    for name in names:
        reward = build_rewards([{"task": name}])
        example = one_word if name == "forms" else structured.get(name, ANY_TASK)
        scores = reward.score(["prompt 提示"] * len(completions), completions, [example] * len(completions))
        if name == "forms":
            got = [row[0] for row in scores]
            assert got[0] == 1.0 and set(got) <= {0.0, 1.0} and got[1:4] == [0.0] * 3, got
            continue
        assert [row[0] for row in scores] == [1.0] + [0.0] * len(HOSTILE), name
    with pytest.raises(TunelabError, match="grades no generated text") as e:
        build_rewards([{"task": "ppl"}])
    assert e.value.field == "rewards.0.task"


def test_task_rewards_are_the_graders_verdicts():
    arithmetic = Example(id="a1", instruction="计算 12+7", output="19")
    choice = Example(id="c1", instruction="中国的首都是？", output="A", choices=["北京", "上海", "广州", "深圳"],
                     label=0)
    cola = Example(id="g1", instruction="Is this sentence acceptable? 这句话通顺吗？", output="1")
    cases = [
        ("arithmetic", arithmetic, {"19": 1.0, "答案是 19。": 1.0, "12+7 = 19": 1.0, "１９": 1.0, "19.0": 1.0,
                                    "18": 0.0, "十九": 0.0, "19 = 20": 0.0, "19/1": 1.0, "约 20": 0.0}),
        ("choice", choice, {"A": 1.0, "答案：A": 1.0, "北京": 1.0, "The answer is (A).": 1.0, "B": 0.0,
                            "上海": 0.0, "答案是（C）": 0.0, "我不知道": 0.0}),
        ("cola", cola, {"1": 1.0, "acceptable": 1.0, "是的": 1.0, "0": 0.0, "unacceptable": 0.0, "不是": 0.0,
                        "maybe": 0.0}),
    ]
    for name, example, expected in cases:
        reward = build_rewards([{"task": name}])
        scores = reward.score(["p"] * len(expected), list(expected), [example] * len(expected))
        assert dict(zip(expected, (row[0] for row in scores))) == expected, name
    # another number the grader gives, as it gives it
    digits = build_rewards([{"task": "arithmetic", "field": "digit_acc", "name": "digits"}])
    assert digits.names == ["digits"]
    assert digits.score(["p", "p"], ["18", "19"], [arithmetic] * 2) == [[0.5], [1.0]]
    with pytest.raises(TunelabError, match="grades no 'f9'") as e:
        build_rewards([{"task": "arithmetic", "field": "f9"}]).score(["p"], ["1"], [arithmetic])
    assert e.value.field == "rewards.0.field"
    with pytest.raises(TunelabError, match="not a number") as e:  # a graded field that is not a number
        build_rewards([{"task": "choice", "field": "rule"}]).score(["p"], ["A"], [choice])
    # the task's complaint about its own data names the example
    bad_gold = Example(id="broken-7", instruction="计算", output="nineteen")
    with pytest.raises(TunelabError, match="example 'broken-7'"):
        build_rewards([{"task": "arithmetic"}]).score(["p"], ["19"], [bad_gold])
    with pytest.raises(TunelabError) as e:
        build_rewards([{"task": "squad", "options": {"scorer": "bleu"}}])
    assert e.value.field == "rewards.0.options.scorer"


def test_format_term_equals_trl_think_format_reward():
    trl_rewards = pytest.importorskip("trl.rewards")
    completions = ["<think>\n想一想 reasoning\n</think>\n答案是 19", "<think>no end", "answer first <think>x</think>",
                   "<think>a</think><think>b</think>", "", "<think></think>", "<think>\n\n</think>\n\n\n",
                   "<THINK>x</THINK>", "<think>x</think>" + "y" * 10_000]
    pattern = r"^<think>(?!.*<think>)(.*?)</think>.*$"  # TRL's think_format_reward's own pattern
    ours = [row[0] for row in build_rewards([{"format": pattern}]).score([""] * len(completions), completions)]
    theirs = trl_rewards.think_format_reward([[{"content": c}] for c in completions])
    assert ours == theirs and 0.0 in ours and 1.0 in ours
    with pytest.raises(TunelabError, match="not a regular expression") as e:
        build_rewards([{"task": "arithmetic"}, {"format": "(unclosed"}])
    assert e.value.field == "rewards.1.format"


def test_length_term_equals_trl_soft_overlong_punishment():
    trl_rewards = pytest.importorskip("trl.rewards")
    ids = [[7] * n for n in range(0, 45)]
    for max_tokens, cache in ((32, 8), (16, 0), (40, 39)):
        reward = build_rewards([{"length": {"max_tokens": max_tokens, "cache": cache}, "weight": 0.5}])
        ours = [row[0] for row in reward.score([""] * len(ids), ["x"] * len(ids), completion_ids=ids)]
        assert ours == trl_rewards.get_soft_overlong_punishment(max_tokens, cache)(ids)
        assert reward.weights == [0.5] and min(ours) == -1.0 and max(ours) == 0.0
    with pytest.raises(ValueError, match="completion_ids"):
        reward.score(["p"], ["x"])
    with pytest.raises(TunelabError, match="cache < max_tokens"):
        build_rewards([{"length": {"max_tokens": 8, "cache": 8}}])


USER_REWARDS = '''
import math

def brevity(prompts, completions, **columns):
    """Shorter is better; reads a column to prove they arrive."""
    assert columns["kind"] == ["add"] * len(completions)
    return [1.0 / (1 + len(ids)) for ids in columns["completion_ids"]]

def picky(prompts, completions, **kwargs):
    return [1.0 if "对" in c else 0.0 if "错" not in c else 1 / 0 for c in completions]

def nan_on_chinese(prompts, completions, **kwargs):
    return [math.nan if any("\\u4e00" <= ch <= "\\u9fff" for ch in c) else 1.0 for c in completions]

def too_few(prompts, completions, **kwargs):
    return [1.0] * (len(completions) - 1)

def words(prompts, completions, **kwargs):
    return ["1.0" if c else 0.0 for c in completions]

def none_for_empty(prompts, completions, **kwargs):
    return [None if not c else 1 for c in completions]

def infinite(prompts, completions, **kwargs):
    return [float("inf")] * len(completions)

def generator(prompts, completions, **kwargs):
    return (1.0 for _ in completions)

def flags(prompts, completions, **kwargs):
    return [c.startswith("<think>") for c in completions]

NOT_CALLABLE = 3
'''


def test_user_function_rewards_and_their_errors(tmp_path):
    (tmp_path / "my_rewards.py").write_text(USER_REWARDS, encoding="utf-8")
    prompts = ["计算 2+3=", "计算 2+3=", "What is 2+3?", "What is 2+3?"]
    completions = ["5", "对，是 5", "错了 it is 6", ""]
    examples = [Example(id=f"x{i}", instruction=p, output="5", kind="add") for i, p in enumerate(prompts)]
    ids = [[5], [9, 9, 5], [1, 2, 3, 4], []]

    def score(name: str):
        return build_rewards([{"function": f"my_rewards.py:{name}"}], base_dir=tmp_path).score(
            prompts, completions, examples, ids)

    assert score("brevity") == [[0.5], [0.25], [0.2], [1.0]]
    assert score("flags") == [[0.0]] * 4  # booleans are numbers
    for name, message in [
        ("picky", "reward 'picky' raised ZeroDivisionError: division by zero on prompt 'What is 2+3?', "
                  "completion '错了 it is 6'"),
        ("nan_on_chinese", "reward 'nan_on_chinese' returned nan for prompt '计算 2+3=', completion '对，是 5'"),
        ("too_few", "reward 'too_few' returned 3 values for 4 completions"),
        ("words", "reward 'words' returned \"'1.0'\" (str), not a number, for prompt '计算 2+3=', completion '5'"),
        ("none_for_empty", "reward 'none_for_empty' returned 'None' (NoneType), not a number, for prompt "
                           "'What is 2+3?', completion ''"),
        ("infinite", "reward 'infinite' returned inf for prompt '计算 2+3=', completion '5'"),
        ("generator", "reward 'generator' returned generator, not a list of 4 numbers"),
    ]:
        with pytest.raises(TunelabError) as e:
            score(name)
        assert message in str(e.value), (name, str(e.value))
        assert e.value.field == "rewards.0.function"
    # a huge completion is shown cut, with its length
    with pytest.raises(TunelabError, match=r"completion '错错错.*… \(100000 characters\)"):
        build_rewards([{"function": "my_rewards.py:picky"}], base_dir=tmp_path).score(["p"], ["错" * 100_000])

    # importable modules too, and every way of naming a function wrongly
    sys.path.insert(0, str(tmp_path))
    try:
        assert load_function("my_rewards:brevity").__name__ == "brevity"
        for spec, message in [("my_rewards:missing", "'my_rewards' has no 'missing'"),
                              ("my_rewards:NOT_CALLABLE", "is a int, not a function"),
                              ("no_such_module_xyz:f", "no module named 'no_such_module_xyz'"),
                              ("brevity", "expected 'module:function'"), ("gone.py:f", "file not found")]:
            with pytest.raises(TunelabError, match=message):
                load_function(spec, tmp_path)
    finally:
        sys.path.remove(str(tmp_path))
    (tmp_path / "broken.py").write_text("def f(prompts, completions, **kw):\n    return [1.0 for c in completions\n",
                                        encoding="utf-8")
    with pytest.raises(TunelabError) as e:
        load_function("broken.py:f", tmp_path)
    assert e.value.file == str(tmp_path / "broken.py") and e.value.line is not None
    (tmp_path / "raises.py").write_text("raise RuntimeError('needs a GPU')\n", encoding="utf-8")
    with pytest.raises(TunelabError, match="importing it raised RuntimeError: needs a GPU"):
        load_function("raises.py:f", tmp_path)


def test_configuration_errors_name_the_field():
    for entries, field, message in [
        ([], "rewards", "non-empty list"),
        ([{"task": "arithmetic", "format": "x"}], "rewards.0", "exactly one of"),
        ([{"weight": 2}], "rewards.0", "exactly one of"),
        ([{"task": "arithmetic"}, {"task": "nope"}], "rewards.1.task", "unknown task 'nope'"),
        ([{"task": "arithmetic", "wieght": 2}], "rewards.0.wieght", "unknown key 'wieght'"),
        ([{"format": "x", "field": "f1"}], "rewards.0.field", "unknown key 'field'"),
        ([{"task": "arithmetic", "weight": "high"}], "rewards.0.weight", "weight must be a number"),
        ([{"length": {"max_tokens": 10}}], "rewards.0.length", "max_tokens: L, cache: C"),
        ([{"length": {"max_tokens": "10", "cache": 2}}], "rewards.0.length.max_tokens", "whole number"),
        (["arithmetic"], "rewards.0", "expected a mapping"),
    ]:
        with pytest.raises(TunelabError, match=message) as e:
            build_rewards(entries)
        assert e.value.field == field, (entries, e.value.field)


def test_rewards_feed_group_advantages():
    """The terms' scores, (completions, terms), reshaped to (prompts, G, terms) with the reward's weights:
    a group where every completion is right and well-formed has no variance and no advantage."""
    questions = [Example(id="q1", instruction="计算 12+7", output="19"),
                 Example(id="q2", instruction="What is 9*9?", output="81")]
    completions = ["答案是 19", "18", "19", "二十", "81", "= 81", "81", "81"]
    examples = [questions[0]] * 4 + [questions[1]] * 4
    reward = build_rewards([{"task": "arithmetic"}, {"format": r"\d\s*\Z", "weight": 0.1, "name": "ends_in_digit"}])
    scores = reward.score([e.instruction for e in examples], completions, examples)
    assert reward.names == ["arithmetic", "ends_in_digit"] and reward.weights == [1.0, 0.1]
    assert reward.total(scores)[:4] == pytest.approx([1.1, 0.1, 1.1, 0.0])
    rewards = torch.tensor(scores).view(2, 4, 2)
    assert zero_variance_groups(rewards, reward.weights).tolist() == [False, True]
    advantages, metrics = group_advantages(rewards, "group", reward.weights, names=reward.names)
    assert advantages[1].tolist() == [0.0] * 4 and advantages[0, 0] > 0 > advantages[0, 3]
    assert metrics["rewards/arithmetic/mean"] == pytest.approx(6 / 8)
