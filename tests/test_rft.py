"""Rejection-sampling fine-tuning (`train.method: rft`): which answers a micro-batch keeps (distinct, ended,
accepted, at most `keep` a prompt, the hardest prompts' first under `max_answers`), that the step trains on those
answers only with exactly fine-tuning's loss, and that a real run logs its samples, plots them and resumes after
kill -9 to the unbroken run's weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import lora_sections, sigkill_after_a_checkpoint, write_recipe
from test_grpo_run import metrics_lines, run_train

from tunelab.runs import list_checkpoints
from tunelab.train.methods.rft import kept_answers

REWARDS_PY = '''
def even(prompts, completions, **columns):
    """An arbitrary verdict the test can recompute: right when the answer has an even number of characters."""
    return [float(len(c) % 2 == 0) for c in completions]
'''


def test_kept_answers_cap_each_prompt_and_take_the_hardest_prompts_first():
    accepted = [[0, 1, 2, 3], [], [8], [12, 13]]  # prompt 2 solved once, prompt 3 twice, prompt 0 four times
    assert kept_answers(accepted, keep=2, max_answers=None) == [(2, 8), (3, 12), (0, 0), (3, 13), (0, 1)]
    assert kept_answers(accepted, keep=1, max_answers=None) == [(2, 8), (3, 12), (0, 0)]
    assert kept_answers(accepted, keep=4, max_answers=2) == [(2, 8), (3, 12)]  # the easy prompt's answers wait
    assert kept_answers(accepted, keep=4, max_answers=5) == [(2, 8), (3, 12), (0, 0), (3, 13), (0, 1)]
    assert kept_answers([[], []], keep=2, max_answers=None) == []


def _loss_model(tiny_base: Path, tmp_path: Path, **settings):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.eval.rewards import build_rewards
    from tunelab.recipe.train import RFTConfig
    from tunelab.train.methods.rft import RFTLossModel
    (tmp_path / "r.py").write_text(REWARDS_PY, encoding="utf-8")
    spec = RFTConfig(num_generations=6, max_completion_length=12, temperature=1.0,
                     rewards=[{"function": "r.py:even"}], **settings)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    return RFTLossModel(model, spec, tokenizer, build_rewards(spec.rewards, base_dir=tmp_path), seed=0,
                        max_len=96), tokenizer


def _prompts(tokenizer, n: int):
    from tunelab.data.examples import Example
    from tunelab.train.methods.own_samples import PromptRow
    return [PromptRow(tokenizer(f"### Instruction:\n{i} + {i + 3} =\n\n### Response:\n")["input_ids"],
                      Example(id=f"p{i}", instruction=f"{i} + {i + 3} =", output=str(2 * i + 3))) for i in range(n)]


@pytest.mark.parametrize("packed", [False, True])
def test_the_step_trains_on_the_accepted_answers_only_with_fine_tunings_loss(tiny_base, tmp_path, packed):
    from tunelab.data.packing import IGNORE
    loss_model, tokenizer = _loss_model(tiny_base, tmp_path, keep=2)
    drawn = {}
    real = loss_model._sample

    def sample(prompts, seeds, step):
        draws = real(prompts, seeds, step)
        drawn["completions"] = draws.completions
        return draws
    loss_model._sample = sample
    rows = _prompts(tokenizer, 4)
    loss_model.lay_out(packed=packed, flat=False)  # as the training setup tells it
    batch = loss_model.rollout(rows, step=0, rank=0, micro=0, device=torch.device("cpu"))
    completions, stops = drawn["completions"], loss_model.stops

    def right(c):
        text = tokenizer.decode([t for t in c if t not in stops], skip_special_tokens=True)
        return bool(c) and c[-1] in stops and len(text) % 2 == 0
    want = []  # (prompt, answer) by the rule: distinct accepted answers, at most 2 a prompt, the hardest first
    for p in range(4):
        seen = []
        for c in completions[p * 6:(p + 1) * 6]:
            if right(c) and c not in seen:
                seen.append(c)
        want.append(seen)
    assert any(want), "the test needs some accepted answers"
    assert any(len(w) < 6 for w in want), "and some rejected ones"
    # the labelled spans of the batch are exactly the kept answers
    labels = batch["labels"]
    spans = []
    for row in labels.tolist():
        span = []
        for t in row + [IGNORE]:
            if t != IGNORE:
                span.append(t)
            elif span:
                spans.append(span)
                span = []
    kept = [w[:2] for w in want]
    assert sorted(map(tuple, spans)) == sorted(tuple(c) for w in kept for c in w)
    assert batch["items"] == sum(len(s) for s in spans)
    # the loss is plain cross-entropy over those answers' tokens, each answer after its own prompt
    loss_model.eval()
    got = loss_model(**{k: v for k, v in batch.items() if k not in ("items", "tokens")},
                     num_items_in_batch=batch["items"])
    total = torch.zeros((), dtype=torch.float64)
    for p, answers in enumerate(kept):
        for c in answers:
            ids = torch.tensor([rows[p].prompt_ids + c])
            logits = loss_model.model(input_ids=ids).logits[0, len(rows[p].prompt_ids) - 1:-1].double()
            total += torch.nn.functional.cross_entropy(logits, torch.tensor(c), reduction="sum")
    torch.testing.assert_close(got.double(), total / batch["items"], atol=1e-5, rtol=1e-5)
    line = loss_model.take_metrics()
    assert line["frac_prompts_solved"] == sum(1 for w in want if w) / 4
    assert line["answers_trained"] == sum(len(k) for k in kept) / 4


def test_a_batch_with_nothing_accepted_trains_on_nothing(tiny_base, tmp_path):
    loss_model, tokenizer = _loss_model(tiny_base, tmp_path, accept=2.0)  # no answer reaches 2
    batch = loss_model.rollout(_prompts(tokenizer, 3), step=0, rank=0, micro=0, device=torch.device("cpu"))
    assert batch["items"] == 0 and batch["tokens"] == 0
    loss = loss_model(**{k: v for k, v in batch.items() if k not in ("items", "tokens")}, num_items_in_batch=1)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert loss_model.take_metrics()["frac_accepted"] == 0.0


def test_replayed_rows_are_trained_as_they_are_beside_the_accepted_answers_and_never_sampled(tiny_base, tmp_path):
    """`data.replay` in an rft run: `prompt_rows` gives each replayed example its whole sample; the rollout samples
    only the other prompts and trains the replayed answers' labelled tokens with the accepted ones."""
    from types import SimpleNamespace

    from tunelab.data.examples import Example
    from tunelab.data.packing import IGNORE
    from tunelab.data.templates import PromptTemplate
    from tunelab.train.methods.own_samples import prompt_rows
    loss_model, tokenizer = _loss_model(tiny_base, tmp_path, keep=2)
    examples = [Example(id=f"p{i}", instruction=f"{i} + {i + 3} =", output=str(2 * i + 3)) for i in range(3)]
    examples.insert(1, Example(id="r0", instruction="Name a colour.", output="Blue is a colour.",
                               meta={"replay": "self"}))
    recipe = SimpleNamespace(data=SimpleNamespace(max_seq_len=96, loss_on="assistant"))
    rows, cut = prompt_rows(recipe, examples, tokenizer, PromptTemplate("alpaca").bind(tokenizer), 12)
    assert cut == 0 and [r.replayed is not None for r in rows] == [False, True, False, False]
    replayed = rows[1].replayed
    answer = [t for t in replayed.labels if t != IGNORE]
    assert tokenizer.decode(answer, skip_special_tokens=True).strip() == "Blue is a colour."
    assert replayed.input_ids[:len(rows[1].prompt_ids)] == rows[1].prompt_ids
    asked = []
    real = loss_model._sample

    def sample(prompts, seeds, step):
        asked.extend(prompts)
        return real(prompts, seeds, step)
    loss_model._sample = sample
    loss_model.lay_out(packed=True, flat=False)
    batch = loss_model.rollout(rows, step=0, rank=0, micro=0, device=torch.device("cpu"))
    assert asked == [r.prompt_ids for r in rows if r.replayed is None for _ in range(6)]
    labels = [t for row in batch["labels"].tolist() for t in row if t != IGNORE]
    assert len(labels) == batch["items"] and batch["items"] >= len(answer) - 1
    flat = batch["labels"].tolist()
    assert any(row[i:i + len(answer) - 1] == answer[1:] for row in flat for i in range(len(row)))
    line = loss_model.take_metrics()
    assert line["replayed"] == 1.0 and "frac_accepted" in line
    # a micro-batch of replayed rows only samples nothing and still trains
    asked.clear()
    batch = loss_model.rollout([rows[1]], step=1, rank=0, micro=0, device=torch.device("cpu"))
    assert asked == [] and batch["items"] > 0 and batch["tokens"] > 0
    assert "frac_accepted" not in loss_model.take_metrics()


def rft_recipe(tmp_path: Path, base: Path, steps: int = 8, checkpoints: int = 2) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "r.py").write_text(REWARDS_PY, encoding="utf-8")
    sections = lora_sections(base, max_steps=steps, batch_size=4, log_every=2, num_checkpoints=checkpoints)
    sections["lora"]["dropout"] = 0.0
    sections["data"] = {"max_seq_len": 96, "train": [
        {"generate": "arithmetic", "count": 64, "seed": 3, "options": {"kinds": ["int_add"], "int_digits": 1}}]}
    sections["train"].update(method="rft", lr=1e-2, rft={
        "num_generations": 4, "max_completion_length": 16, "temperature": 1.0, "keep": 2,
        "rewards": [{"function": "r.py:even"}]})
    return write_recipe(tmp_path, "rft", **sections, report_to=[])


def test_an_rft_run_logs_its_samples_and_a_killed_one_resumes_to_the_unbroken_runs_weights(tmp_path, tiny_base):
    unbroken = rft_recipe(tmp_path / "a", tiny_base)
    assert run_train(unbroken) == 0
    run_a = tmp_path / "a" / "runs" / "rft"
    lines = metrics_lines(run_a)
    assert [x["step"] for x in lines] == [2, 4, 6, 8]
    for key in ("loss", "reward", "frac_accepted", "frac_prompts_solved", "answers_trained", "rewards/even/mean",
                "completions/mean_length"):
        assert all(key in x for x in lines), key
    assert all(0 <= x["answers_trained"] <= 2 for x in lines)
    assert any(x["frac_accepted"] > 0 for x in lines)
    assert (run_a / "rft.png").stat().st_size > 10_000
    assert json.loads((run_a / "train_summary.json").read_text())["steps"] == 8

    path = rft_recipe(tmp_path / "b", tiny_base)
    run_b = tmp_path / "b" / "runs" / "rft"
    sigkill_after_a_checkpoint([sys.executable, "-m", "tunelab.cli", "train", str(path)], path.parent, run_b)
    assert run_train(path, "--resume") == 0
    got = metrics_lines(run_b)
    assert [g["step"] for g in got] == [w["step"] for w in lines]
    for g, w in zip(got, lines):
        for key in ("loss", "frac_accepted", "answers_trained"):
            assert g[key] == pytest.approx(w[key], abs=1e-6), (g["step"], key)
    a = torch.load(list_checkpoints(run_b)[-1] / "trainer_state.pt", weights_only=False)["trainable"]
    b = torch.load(list_checkpoints(run_a)[-1] / "trainer_state.pt", weights_only=False)["trainable"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
