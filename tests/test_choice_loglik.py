"""Log-likelihood multiple choice against lm-evaluation-harness: the continuations are the options exactly as
written, and acc / acc_norm equal lm-eval's on hundreds of generated questions (ties, -inf and NaN
log-likelihoods, full-width text, ellipses, unit symbols, combining marks, newlines)."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from tunelab.data.formats import LETTERS
from tunelab.errors import TunelabError
from tunelab.metrics.loglik import LoglikResult
from tunelab.records import write_json
from tunelab.data.choice_rows import CONTINUATIONS
from tunelab.tasks.choice import choice_examples, first_argmax
from tunelab.tasks.registry import get_task

from test_choice import alpaca_choice_records


def lm_eval_multiple_choice(choices: list[str], results: list[tuple[float, bool]], gold: int) -> dict[str, float]:
    """A faithful copy of lm-evaluation-harness's `ConfigurableTask.process_results` for OUTPUT_TYPE
    "multiple_choice" (lm_eval/api/task.py, commit 4e7e0d47f33bc71070c1d38394bafbb52b117163): the
    single-target branch with an int gold, without mutual information, acc and acc_norm only."""
    lls, is_greedy = zip(*results, strict=True)
    completion_len = np.array([float(len(i)) for i in choices])
    pred = np.argmax(lls)
    pred_norm = np.argmax(lls / completion_len)
    gold = gold if gold < len(choices) else -100
    acc = 1.0 if pred == gold else 0.0
    acc_norm = 1.0 if pred_norm == gold else 0.0
    return {"acc": acc, "acc_norm": acc_norm}


# pieces an option is built from: the text families the old prompt-parsing path got wrong, and plain ones
PIECES = ["Paris", "北京", "郑州市", "cat sat", "Ｐａｒｉｓ", "，", "。", "！", "？", "（注）", "…", "...", "０１２", "12",
          "３．５", "㎏", "㎡", "℃", "½", "e\u0301", "é", "ﬁ", "😀", "\n", "\r\n", "\t", " ", "\u3000", "\u2028",
          "A. ", "B)", "答案：", "Vitamin C", "x²", "−7", "①"]


def _option(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 4)))


def _question(rng: random.Random, i: int) -> dict:
    n = rng.randint(2, 6)
    options = [_option(rng) for _ in range(n)]
    if rng.random() < 0.4:  # the same text under two letters, in two spellings (NFKC-equal, not equal)
        options[rng.randrange(n)] = rng.choice(["Ｐａｒｉｓ", "Paris", "３．５㎏", "3.5kg"])
    rec = {"id": f"q{i}", "question": rng.choice(["哪一个？", "Which one?", "A. is this\nB. a trap?"]),
           "answer": rng.randrange(n)}
    if rng.random() < 0.5:
        rec["choices"] = options
    else:
        rec.update(zip(LETTERS, options))
    return rec


def _logprobs(rng: random.Random, conts: list[str]) -> list[float]:
    """Values that tie often, in both the raw and the per-character comparison."""
    out = []
    for c in conts:
        r = rng.random()
        if r < 0.35:
            out.append(rng.choice([-1.0, -2.0, -3.5, 0.0]))           # raw ties
        elif r < 0.7:
            out.append(-rng.choice([0.5, 1.0, 2.0]) * len(c))           # per-character ties
        elif r < 0.75:
            out.append(-math.inf)
        elif r < 0.77:
            out.append(math.nan)
        else:
            out.append(-rng.uniform(0, 30))
    return out


def _expected_continuations(rec: dict, style: str) -> list[str]:
    options = rec["choices"] if "choices" in rec else [rec[k] for k in LETTERS if k in rec]
    return {"letter": [LETTERS[i] for i in range(len(options))], "text": list(options),
            "letter_text": [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)],
            "text_letter": [f"{o} ({LETTERS[i]})" for i, o in enumerate(options)]}[style]


@pytest.mark.parametrize("style", CONTINUATIONS)
def test_acc_and_acc_norm_equal_lm_eval(style):
    rng = random.Random(f"choice-{style}")
    task = get_task("choice").configure(continuation=style)
    graded, reference = [], []
    ties = differ = 0
    for i in range(400):
        rec = _question(rng, i)
        ex = choice_examples([rec])[0]
        reqs = task.loglik_requests(ex, "PROMPT")
        conts = [c for _, c in reqs]
        assert conts == _expected_continuations(rec, style)  # byte for byte, as written
        assert all(ctx == "PROMPT" for ctx, _ in reqs)
        lls = _logprobs(rng, conts)
        greedy = [rng.random() < 0.5 for _ in conts]
        g = task.grade_loglik([LoglikResult(ll, gr, 1) for ll, gr in zip(lls, greedy)], ex)
        ref = lm_eval_multiple_choice(conts, list(zip(lls, greedy)), rec["answer"])
        assert (float(g["correct"]), float(g["correct_norm"])) == (ref["acc"], ref["acc_norm"]), (rec, lls)
        assert g["gold"] == LETTERS[rec["answer"]] and g["pred"] == LETTERS[int(np.argmax(lls))]
        graded.append(g)
        reference.append(ref)
        norm = [ll / len(c) for ll, c in zip(lls, conts)]
        ties += _top_tie(lls) or _top_tie(norm)
        differ += g["pred"] != g["pred_norm"]
    summary = task.summarize(graded)
    assert summary["acc"] == summary["accuracy"] == np.mean([r["acc"] for r in reference])
    assert summary["acc_norm"] == np.mean([r["acc_norm"] for r in reference])
    assert ties > 40  # the generated cases do exercise ties
    if style == "letter":
        assert differ == 0 and summary["acc_norm"] == summary["acc"]  # one character each
    else:
        assert differ > 30  # the length normalisation does change answers


def _top_tie(values: list[float]) -> bool:
    """Several values share the maximum (NaNs aside)."""
    numbers = [v for v in values if v == v]
    return bool(numbers) and numbers.count(max(numbers)) > 1


@pytest.mark.parametrize("values", [[1.0, 1.0], [-math.inf, -math.inf, -5.0], [-1.0, math.nan, 0.0, math.nan],
                                    [math.nan], [-3.0, -1.0, -1.0], [-0.0, 0.0], [-math.inf, -math.inf]])
def test_first_argmax_is_numpys(values):
    assert first_argmax(values) == int(np.argmax(values))


def test_options_survive_files_exactly(tmp_path):
    """Question file → Examples → training records → Examples again: the scored text never changes."""
    rng = random.Random(7)
    records = [_question(rng, i) for i in range(60)]
    path = tmp_path / "mc.json"
    write_json(path, records)  # a JSON array: U+2028 inside strings stays one record
    task = get_task("choice")
    examples = task.load_examples(path)
    again = tmp_path / "train.json"
    write_json(again, alpaca_choice_records(examples, answer_style="letter_text"))
    first = alpaca_choice_records(examples, answer_style="text_letter")
    trained = task.load_examples(again)
    for style in CONTINUATIONS:
        task.configure(continuation=style)
        for rec, ex, ex2 in zip(records, examples, trained):
            conts = [c for _, c in task.loglik_requests(ex, "p")]
            assert conts == [c for _, c in task.loglik_requests(ex2, "p")] == _expected_continuations(rec, style)
    # the letter_text training target is the letter_text continuation of the gold option
    written = json.loads(again.read_text(encoding="utf-8"))
    assert [w["output"] for w in written] == [_expected_continuations(r, "letter_text")[r["answer"]] for r in records]
    assert [w["output"] for w in first] == [_expected_continuations(r, "text_letter")[r["answer"]] for r in records]


def test_an_empty_option_cannot_be_a_text_continuation():
    ex = choice_examples([{"id": "e", "question": "q", "choices": ["x", ""], "answer": 0}])[0]
    task = get_task("choice")
    assert [c for _, c in task.configure(continuation="letter").loglik_requests(ex, "p")] == ["A", "B"]
    assert [c for _, c in task.configure(continuation="letter_text").loglik_requests(ex, "p")] == ["A. x", "B. "]
    with pytest.raises(TunelabError, match="option B is empty") as e:
        task.configure(continuation="text").loglik_requests(ex, "p")
    assert e.value.field == "continuation" and "'e'" in str(e.value)
    with pytest.raises(TunelabError, match="unknown continuation"):
        get_task("choice").configure(continuation="words")
