"""Sampled answers in evaluation (`samples: k`): pass@k by Chen et al.'s unbiased estimator, checked against its
definition (exact binomials, and every k-subset counted) and against the HumanEval code's numpy formula; majority
vote as lm-eval's maj@k counts it; k draws a prompt in one decoding call, each prompt's draws its own whatever
shares the batch; and the tasks, flags and report that carry them."""

from __future__ import annotations

import itertools
import json
import math
import random
from fractions import Fraction

import numpy as np
import pytest

from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.metrics.sampled import majority_right, pass_at_k, sampled_metrics


def _definition(n: int, c: int, k: int) -> Fraction:
    """1 - C(n-c, k) / C(n, k), exactly."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def _humaneval(n: int, c: int, k: int) -> float:
    """human-eval's `estimate_pass_at_k` for one problem (openai/human-eval, execution.py)."""
    if n - c < k:
        return 1.0
    return 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1))


def test_pass_at_k_is_its_definition_and_the_reference_formula():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                got = pass_at_k(n, c, k)
                assert got == pytest.approx(float(_definition(n, c, k)), abs=1e-12), (n, c, k)
                assert got == pytest.approx(_humaneval(n, c, k), abs=1e-12), (n, c, k)
    rng = random.Random(0)
    for _ in range(500):  # large n, where the binomials themselves would overflow a float
        n = rng.randint(1, 400)
        c, k = rng.randint(0, n), rng.randint(1, n)
        assert pass_at_k(n, c, k) == pytest.approx(_humaneval(n, c, k), abs=1e-12)
        assert pass_at_k(n, c, k) == pytest.approx(float(_definition(n, c, k)), abs=1e-12)
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)


def test_pass_at_k_is_the_share_of_k_subsets_holding_a_right_answer():
    for right in ([True, False, False, True, False], [False] * 4, [True] * 3, [False, True, False, False, False, False]):
        n, c = len(right), sum(right)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            share = sum(any(right[i] for i in s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(share, abs=1e-12)


def test_pass_at_k_refuses_what_it_cannot_estimate():
    for n, c, k in ((4, 5, 1), (4, 1, 5), (4, 1, 0), (4, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_majority_vote_ties_to_the_first_sampled_and_skips_no_answer():
    assert majority_right(["7", "8", "7", None], [True, False, True, False])
    assert not majority_right(["8", "7", "7", "8"], [False, True, True, False])   # a tie: "8" was sampled first
    assert majority_right([None, None, "3"], [False, False, True])                 # no answer is no vote
    assert not majority_right([None, None], [False, False])
    m = sampled_metrics([[True, False, False], [False, False, False]], [["1", "2", "2"], ["5", None, "5"]])
    assert m == {"pass@1": pytest.approx(1 / 6), "pass@2": pytest.approx(1 / 3), "pass@3": 0.5, "maj@3": 0.0}
    assert "maj@2" not in sampled_metrics([[True, False]], None)
    with pytest.raises(ValueError):
        sampled_metrics([[True], [True, False]], None)


# --- the decoding call --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def loaded(tiny_base):
    from tunelab.model.loading import load_for_inference
    return load_for_inference(str(tiny_base))


def test_k_draws_a_prompt_are_its_own_whatever_shares_the_batch(loaded):
    from tunelab.decoding.embedded import complete_batched, sample_batched
    model, tok = loaded
    prompts = ["12 + 30 =", "What is 7 - 9?", "Tell me a story about a cat"]
    drawn = sample_batched(model, tok, prompts, 4, temperature=1.5, seed=3, max_new_tokens=12, batch_size=16,
                           progress=False)
    assert [len(d) for d in drawn] == [4, 4, 4]
    assert len({c.text for d in drawn for c in d}) > 3  # drawn, not four copies of one answer
    alone = sample_batched(model, tok, prompts[1:2], 4, temperature=1.5, seed=3, max_new_tokens=12, batch_size=3,
                           progress=False)
    assert alone[0] == drawn[1]                      # another batch size, without the other prompts: the same
    other = sample_batched(model, tok, prompts[1:2], 4, temperature=1.5, seed=4, max_new_tokens=12, batch_size=3,
                           progress=False)
    assert other[0] != drawn[1]                      # the seed decides
    greedy = complete_batched(model, tok, prompts, 12, progress=False)
    cold = sample_batched(model, tok, prompts, 2, temperature=1e-6, max_new_tokens=12, progress=False)
    assert [[c.text for c in d] for d in cold] == [[g.text] * 2 for g in greedy]


# --- evaluation -----------------------------------------------------------------------------------------------

ARITHMETIC = {"generate": "arithmetic", "count": 16, "seed": 5,
              "options": {"kinds": ["int_add", "int_sub"], "int_digits": 2}}


def test_eval_reports_pass_at_k_and_majority_beside_the_greedy_score(tiny_base, tmp_path):
    from tunelab.eval.evaluate import evaluate
    from tunelab.recipe import validate_eval
    from tunelab.tasks.arithmetic import grade_arithmetic
    config = validate_eval({"tasks": [{"task": "arithmetic", "source": ARITHMETIC}], "samples": 6,
                            "temperature": 1.2, "max_new_tokens": 16, "batch_size": 8})
    doc, out = evaluate(tiny_base, config, tmp_path / "e")
    res = doc["results"][next(iter(doc["results"]))]["arithmetic"]
    assert res["sampled"] == 6 and res["temperature"] == 1.2 and {f"pass@{j}" for j in range(1, 7)} <= set(res)
    rows = [json.loads(line) for line in (out / "arithmetic.predictions.jsonl").read_text().splitlines()]
    assert all(len(r["samples"]) == len(r["samples_correct"]) == 6 for r in rows)
    # recomputed from the rows: each sample regraded, pass@1 the mean share, pass@6 the share with any right
    right = [[grade_arithmetic(s, r["reference"])["correct"] for s in r["samples"]] for r in rows]
    assert right == [r["samples_correct"] for r in rows]
    assert res["pass@1"] == pytest.approx(sum(sum(x) / 6 for x in right) / len(rows))
    assert res["pass@6"] == pytest.approx(sum(any(x) for x in right) / len(rows))
    assert 0 < res["pass@6"] and all(res[f"pass@{j}"] <= res[f"pass@{j + 1}"] for j in range(1, 6))
    votes = [[grade_arithmetic(s, r["reference"])["pred_value"] for s in r["samples"]] for r in rows]
    assert res["maj@6"] == pytest.approx(sum(majority_right(v, x) for v, x in zip(votes, right)) / len(rows))
    assert res["accuracy"] == sum(bool(r["correct"]) for r in rows) / len(rows)  # the greedy score, as before

    from tunelab.report import checkpoint_cell
    cell = checkpoint_cell(res)
    assert cell.startswith(f"{100 * res['accuracy']:.1f}%") and "pass@1" in cell and "pass@6" in cell
    assert "maj@6" in cell


def test_samples_a_task_cannot_judge_are_one_clear_error(tiny_base, tmp_path, capsys):
    from tunelab.eval.sets import eval_sets
    from tunelab.recipe import validate_eval
    cases = [
        ({"tasks": [{"task": "reading", "source": {"generate": "reading", "count": 4}, "samples": 4}]},
         "eval.tasks.0.samples", "task 'reading' scores answers by degree"),
        ({"tasks": [{"task": "reading", "source": {"generate": "reading", "count": 4}}], "samples": 4},
         "eval.samples", "none of the tasks (reading) says right or wrong"),
        ({"tasks": [{"task": "choice", "source": {"path": str(tmp_path / "c.jsonl")}, "mode": "loglik",
                     "samples": 2}]}, "eval.tasks.0.samples", "answers are sampled in generate mode"),
        ({"tasks": [{"task": "arithmetic", "source": ARITHMETIC, "temperature": 0.7}]}, "eval.tasks.0.temperature",
         "sets how answers are sampled"),
    ]
    (tmp_path / "c.jsonl").write_text(json.dumps({"question": "2+2?", "choices": ["3", "4"], "answer": 1}) + "\n",
                                      encoding="utf-8")
    for raw, field, message in cases:
        with pytest.raises(TunelabError) as e:
            eval_sets(validate_eval(raw))
        assert e.value.field == field and e.value.message.startswith(message), (field, e.value)
    # eval-wide samples go to the tasks that can take them, the others run as before
    sets = eval_sets(validate_eval({"tasks": [{"task": "reading", "source": {"generate": "reading", "count": 4}},
                                              {"task": "arithmetic", "source": ARITHMETIC}],
                                    "samples": 3, "top_p": 0.9}))
    assert sets["reading"].sampling is None and sets["arithmetic"].sampling.samples == 3
    assert sets["arithmetic"].sampling.top_p == 0.9
    # from the command line the flag is named
    assert main(["eval", "--model", str(tiny_base), "--tasks", "instructions", "--limit", "2", "--samples", "0",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--samples" in capsys.readouterr().err


def test_the_eval_command_prints_pass_at_k_columns(tiny_base, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_base), "--tasks", "knowledge", "--limit", "3", "--samples", "2",
                 "--max-new-tokens", "6", "--out", str(tmp_path / "k")]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.split(" | ")[1:] == ["knowledge.accuracy", "knowledge.pass@1", "knowledge.pass@2"]


# --- verified preference pairs ------------------------------------------------------------------------------

def test_prefs_from_samples_pair_a_right_and_a_wrong_answer_of_each_problem(tmp_path, capsys):
    rows = [
        {"id": "p1", "problem": "What is 2 + 3?", "samples": ["5", "6", "5", "4"],
         "samples_correct": [True, False, True, False]},
        {"id": "p2", "problem": "What is 9 - 1?", "samples": ["8", "8"], "samples_correct": [True, True]},
        {"id": "p3", "problem": "7 - 9 = ?", "samples": ["2", "3"], "samples_correct": [False, False]},
        {"id": "p4", "problem": "Pick one", "input": "A. x\nB. y", "samples": ["A", "B", "B"],
         "samples_correct": [False, True, True]},
    ]
    path = tmp_path / "arithmetic.predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "prefs"
    assert main(["data", "prefs", "--from-samples", str(path), "--per-problem", "2", "--out", str(out),
                 "--val-fraction", "0"]) == 0
    pairs = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    got = sorted((p["prompt"], p["chosen"], p["rejected"]) for p in pairs)
    assert got == sorted([("What is 2 + 3?", "5", "6"), ("What is 2 + 3?", "5", "4"), ("Pick one\nA. x\nB. y", "B", "A")])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == {"all samples right": 1, "no sample right": 1} and summary["pairs"] == 3
    assert summary["sampled_problems"] == 4 and "4 sampled problems read, 3 preference pairs" in capsys.readouterr().out
    assert all(p["pass_rate"] in (0.5, 2 / 3) for p in pairs)
    # a predictions file written without --samples is named as such
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"id": "x", "problem": "q", "prediction": "a"}) + "\n", encoding="utf-8")
    assert main(["data", "prefs", "--from-samples", str(plain), "--out", str(tmp_path / "p2")]) == 2
    err = capsys.readouterr().err
    assert f"{plain}:1" in err and "samples" in err and "--samples" in err


def test_samples_become_pairs_dpo_trains_on(tiny_base, tmp_path):
    """Sampled by the evaluation, judged by the grader, paired, then trained by DPO: the whole verified-DPO path
    on the tiny model."""
    from tunelab.eval.evaluate import evaluate
    from tunelab.recipe import load_recipe, validate_eval
    from tunelab.train.loop import train
    config = validate_eval({"tasks": [{"task": "arithmetic", "source": ARITHMETIC}], "samples": 6,
                            "temperature": 1.2, "max_new_tokens": 16, "batch_size": 8})
    _, out = evaluate(tiny_base, config, tmp_path / "e")
    assert main(["data", "prefs", "--from-samples", str(out / "arithmetic.predictions.jsonl"), "--out",
                 str(tmp_path / "prefs"), "--val-fraction", "0"]) == 0
    from conftest import write_recipe
    path = write_recipe(tmp_path, "vdpo", model={"preset": None, "from_scratch": None, "tokenizer_vocab_size": None,
                                                 "path": str(tiny_base)},
                        data={"train": [{"path": str(tmp_path / "prefs" / "train.jsonl")}]},
                        lora={"enabled": True, "rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                        train={"method": "dpo", "max_steps": 2, "batch_size": 2, "log_every": 1,
                               "num_checkpoints": 1})
    summary = train(load_recipe(path))
    assert summary["steps"] == 2
