"""Training for real: a from-scratch run and a LoRA run on the tiny base, checked through the artefacts a user
relies on (checkpoints that load with plain transformers/peft, the saved prompt template, metrics, the loss
curve), plus the refusals: no silent overwrite of a run, and a clear stop on a NaN/inf loss or gradient."""

from __future__ import annotations

import hashlib
import json
import logging
import math

import pytest
import torch
from conftest import lora_sections

from tunelab.cli import main
from tunelab.data.sources import training_examples
from tunelab.data.templates import TEMPLATE_FILE, PromptTemplate, load_template
from tunelab.errors import TunelabError
from tunelab.recipe import load_recipe
from tunelab.runs import list_checkpoints
from tunelab.train.checkpoints import checkpoint_steps
from tunelab.train.plots import read_metrics

PROMPTS = ["计算 12 * 3 等于多少？", "What is 7 * 8?", "Compute 45 + 17.", "请计算：-6 * 9", "Alice lives in Paris."]


def _snapshot(run_dir) -> dict:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_checkpoint_steps_are_evenly_spaced():
    assert checkpoint_steps(100, 5) == [20, 40, 60, 80, 100]
    assert checkpoint_steps(30, 5) == [6, 12, 18, 24, 30]
    assert checkpoint_steps(3, 5) == [1, 2, 3]
    assert checkpoint_steps(7, 1) == [7]


# --- from scratch (the shared session run: micro Llama, 30 steps, full fine-tune) --------------------------

def test_from_scratch_run_writes_five_evenly_spaced_loadable_checkpoints(scratch_run):
    from transformers import AutoModelForCausalLM
    run_dir, summary = scratch_run["run_dir"], scratch_run["summary"]
    ckpts = list_checkpoints(run_dir)
    assert [c.name for c in ckpts] == [f"step-{s:06d}" for s in (6, 12, 18, 24, 30)]
    assert summary["checkpoints"] == [str(c) for c in ckpts]
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    for c in ckpts:
        assert json.loads((c / "state.json").read_text())["step"] == int(c.name.split("-")[1])
        assert not (c / "adapter").exists()
    model = AutoModelForCausalLM.from_pretrained(ckpts[-1] / "model")
    assert sum(p.numel() for p in model.parameters()) == summary["total_params"] == summary["trainable_params"]
    for p in model.parameters():
        assert torch.isfinite(p).all()


def test_from_scratch_metrics_loss_curve_and_summary(scratch_run):
    run_dir, summary = scratch_run["run_dir"], scratch_run["summary"]
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 31))  # log_every: 1
    assert all(set(r) >= {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"} for r in rows)
    losses = [r["loss"] for r in rows]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses  # it learns
    assert summary["final_loss"] == losses[-1]
    assert summary["steps"] == 30 and summary["world_size"] == 1 and summary["samples"] == 500
    assert json.loads((run_dir / "train_summary.json").read_text())["final_loss"] == summary["final_loss"]
    png = run_dir / "loss.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_logged_lr_is_the_lr_the_step_used(scratch_run):
    from tunelab.train.setup import lr_lambda
    rows = read_metrics(scratch_run["run_dir"] / "metrics.jsonl")
    tc = scratch_run["recipe"].train
    f = lr_lambda(30, max(1, int(tc.warmup_ratio * 30)), tc.min_lr_ratio)
    assert [r["lr"] for r in rows] == pytest.approx([tc.lr * f(s) for s in range(30)])


def test_saved_tokenizer_renders_prompts_like_the_template(scratch_run):
    from transformers import AutoTokenizer
    model_dir = list_checkpoints(scratch_run["run_dir"])[-1] / "model"
    assert (model_dir / TEMPLATE_FILE).exists()
    template = load_template(model_dir)
    assert template == PromptTemplate("alpaca")
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert tok.chat_template
    for x in PROMPTS:
        chat = tok.apply_chat_template([{"role": "user", "content": x}], tokenize=False, add_generation_prompt=True)
        assert chat == template.render(x)


@pytest.mark.parametrize("prefix, cot", [("You are an expert in mathematics.", True), ("系统：\n", False)])
def test_chat_template_matches_render_with_prefix_and_cot(prefix, cot):
    """The chat template saved with every checkpoint, for the template variants a recipe can choose."""
    from tunelab.model.tokenizer import train_bpe_tokenizer
    for name in ("alpaca", "plain", "qa"):
        t = PromptTemplate(name, prefix, cot)
        tok = train_bpe_tokenizer(["some text 123 中文"], 300, chat_template=t.chat_template())
        for x in PROMPTS + ["it's a \\ back'slash"]:
            chat = tok.apply_chat_template([{"role": "user", "content": x}], tokenize=False,
                                           add_generation_prompt=True)
            assert chat == t.render(x)


def test_second_train_into_the_same_run_exits_2_and_leaves_it_untouched(scratch_run, capsys):
    run_dir = scratch_run["run_dir"]
    before = _snapshot(run_dir)
    rc = main(["train", str(scratch_run["recipe_path"])])
    err = capsys.readouterr().err
    assert rc == 2
    assert "already exists" in err and "--resume" in err and err.count("\n") == 1
    assert _snapshot(run_dir) == before


def test_epoch_based_bf16_run(make_recipe, monkeypatch):
    """No max_steps: the step count comes from epochs and the packed row count; bf16 autocast trains and
    checkpoints keep float32 weights (bf16 forced: on a CPU where bf16 is slower than fp32 the run would train in fp32)."""
    from transformers import AutoModelForCausalLM

    from tunelab.model import device
    from tunelab.train.loop import train
    monkeypatch.setattr(device, "cpu_matmul_race", lambda width=256: device.MatmulRace(width, 100.0, 300.0))
    # peak_tflops given: without it the run times bf16 matmuls for MFU, emulated on a CPU where bf16 does not pay
    # (~15 s a matmul on an AVX2 host); MFU is not what this test is about
    recipe = load_recipe(make_recipe("epochs", data={"train": [{"generate": "arithmetic", "count": 120}]},
                                     train={"max_steps": None, "epochs": 2, "batch_size": 2, "precision": "bf16",
                                            "num_checkpoints": 2, "peak_tflops": 1.0}))
    summary = train(recipe)
    assert summary["steps"] == 2 * summary["rows_per_epoch"] // 2
    rows = read_metrics(recipe.run_dir / "metrics.jsonl")
    assert rows[-1]["epoch"] == pytest.approx(summary["steps"] * 2 / summary["rows_per_epoch"], abs=1e-4)
    assert all(math.isfinite(r["loss"]) for r in rows) and rows[-1]["loss"] < rows[0]["loss"]
    model = AutoModelForCausalLM.from_pretrained(list_checkpoints(recipe.run_dir)[-1] / "model")
    assert next(model.parameters()).dtype == torch.float32
    assert summary["precision"] == "bf16"


def test_rows_that_fill_no_last_step_are_named_once_at_the_start(make_recipe, caplog):
    """13 unpacked rows an epoch, 4 a step: 3 steps, and the 13th row is not trained on. The step count stays
    (a run's numbers do not change); the start-up notes say how many rows are left out and what changes it."""
    from tunelab.train.loop import train
    from tunelab.train.setup import count_steps
    recipe = load_recipe(make_recipe("partial", data={"packing": False,
                                                      "train": [{"generate": "arithmetic", "count": 13}]},
                                     train={"max_steps": None, "epochs": 1, "batch_size": 4, "num_checkpoints": 1}))
    caplog.set_level(logging.INFO, logger="tunelab")  # the start-up notes are logged (the CLI prints them)
    summary = train(recipe)
    assert (summary["rows_per_epoch"], summary["steps"]) == (13, 3)
    out = caplog.text
    assert out.count("not trained on") == 1
    assert ("note: rows not trained on: 1 of the 13 of 1 epoch, too few to fill a last step of 4 rows; "
            "train.batch_size and train.grad_accum") in out
    tc = recipe.train
    assert count_steps(tc.model_copy(update={"epochs": 2}), 13, 4) == (6, 2)
    assert count_steps(tc.model_copy(update={"grad_accum": 13}), 13, 13) == (1, 0)  # a multiple: no note
    assert count_steps(tc.model_copy(update={"max_steps": 5}), 13, 4) == (5, 0)  # max_steps is taken as given
    assert count_steps(tc, 3, 4) == (1, 0)  # fewer rows than a step: one step, on rows the stream wraps to


def test_interrupted_checkpoint_write_is_not_a_checkpoint(tmp_path):
    """A kill while a checkpoint is written leaves `step-N.tmp`; it must never be resumed from or evaluated."""
    for name in ("step-000010", "step-000020.tmp", "step-000030"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        (tmp_path / "checkpoints" / name / "state.json").write_text("{}")
    (tmp_path / "checkpoints" / "step-000040").mkdir()  # no state.json: unfinished
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000010", "step-000030"]


# --- LoRA on the tiny base -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_run(tiny_base, tmp_path_factory):
    from conftest import write_recipe

    from tunelab.train.loop import train
    path = write_recipe(tmp_path_factory.mktemp("lora"), "lora",
                        **lora_sections(tiny_base, max_steps=20, log_every=3, save_merged=True))
    recipe = load_recipe(path)
    base_before = (tiny_base / "model.safetensors").read_bytes()
    summary = train(recipe)
    assert (tiny_base / "model.safetensors").read_bytes() == base_before  # the base is never written
    return {"recipe": recipe, "summary": summary, "run_dir": recipe.run_dir}


def test_lora_run_checkpoints_and_metrics(lora_run, tiny_base):
    run_dir, summary = lora_run["run_dir"], lora_run["summary"]
    ckpts = list_checkpoints(run_dir)
    assert [c.name for c in ckpts] == [f"step-{s:06d}" for s in (4, 8, 12, 16, 20)]
    for c in ckpts:
        assert (c / "adapter" / "adapter_config.json").exists() and (c / "model" / "config.json").exists()
        assert (c / "adapter" / TEMPLATE_FILE).exists() and (c / "model" / TEMPLATE_FILE).exists()
    cfg = json.loads((ckpts[-1] / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_base) and cfg["r"] == 4
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [3, 6, 9, 12, 15, 18, 20]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert 0 < summary["trainable_params"] < summary["total_params"] / 10
    assert (run_dir / "loss.png").exists()


def test_lora_adapter_loads_with_plain_peft_and_merged_model_generates_the_same(lora_run, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.decoding.embedded import generate_batched
    ckpt = list_checkpoints(lora_run["run_dir"])[-1]
    tok = AutoTokenizer.from_pretrained(ckpt / "adapter")
    template = load_template(ckpt / "adapter")
    prompts = [template.render(p) for p in PROMPTS]

    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), ckpt / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(ckpt / "model").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())

    enc = tok(prompts[:1], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        la, lm, lb = (m(**enc).logits for m in (adapted, merged, base))
    torch.testing.assert_close(lm, la, atol=1e-4, rtol=1e-4)
    assert (la - lb).abs().max() > 1e-3  # the adapter did change the model

    adapted_out = generate_batched(adapted, tok, prompts, max_new_tokens=10, progress=False)
    merged_out = generate_batched(merged, tok, prompts, max_new_tokens=10, progress=False)
    assert merged_out == adapted_out
    # the adapter learned its task: the trained answers are likelier under it than under the base (the weak tiny
    # base and a 20-step adapter may well write the same greedy text)
    def answer_nll(model, examples):
        total = 0.0
        for e in examples:
            prompt = tok(template.render(e.instruction), add_special_tokens=False)["input_ids"]
            answer = tok(e.output, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + answer])
            with torch.no_grad():
                total += float(model(input_ids=ids, labels=torch.tensor([[-100] * len(prompt) + answer])).loss)
        return total / len(examples)

    examples = training_examples(lora_run["recipe"])[:20]
    assert answer_nll(adapted, examples) < answer_nll(base, examples) - 0.05  # 3.28 vs 3.44 nats a token


# --- NaN / inf stops -------------------------------------------------------------------------------------

def _poison(monkeypatch, from_step: int, where: str):
    """From optimizer step `from_step` on (1 micro-batch per step), make the logits (loss) or gradients NaN."""
    from tunelab.train import loop
    orig = loop.build_model_and_tokenizer
    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        if calls["n"] < from_step or not torch.is_grad_enabled():
            return output
        if where == "loss":
            return output * float("nan")
        output.register_hook(lambda g: g * float("inf"))
        return output

    def patched(*args, **kwargs):
        model, tok = orig(*args, **kwargs)
        model.lm_head.register_forward_hook(hook)
        return model, tok
    monkeypatch.setattr(loop, "build_model_and_tokenizer", patched)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_nan_stops_with_clear_error_and_keeps_last_good_checkpoint(make_recipe, monkeypatch, where):
    from tunelab.train.loop import train
    recipe = load_recipe(make_recipe("nan", train={"max_steps": 10}))
    _poison(monkeypatch, 6 if where == "loss" else 4, where)
    with pytest.raises(TunelabError) as e:
        train(recipe)
    bad_step, good = (6, 4) if where == "loss" else (4, 2)
    msg = str(e.value)
    assert f"step {bad_step}" in msg and "train.lr" in msg and f"step-{good:06d}" in msg
    assert ("loss became nan" in msg) if where == "loss" else ("gradient" in msg)
    ckpts = list_checkpoints(recipe.run_dir)
    assert [c.name for c in ckpts] == [f"step-{s:06d}" for s in range(2, good + 1, 2)]
    from safetensors.torch import load_file
    weights = load_file(ckpts[-1] / "model" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    rows = read_metrics(recipe.run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, bad_step)) and all(math.isfinite(r["loss"]) for r in rows)


def test_absurd_lr_stops_cleanly_through_the_cli(make_recipe, capsys):
    """With an absurd learning rate (and clipping off) the weights blow up within a few steps: the run ends
    with exit 2 and the error as the last thing on the terminal, not a traceback or a useless model."""
    path = make_recipe("hot", train={"max_steps": 30, "lr": 1e8, "warmup_ratio": 0.0, "max_grad_norm": 1e9})
    rc = main(["train", str(path)])
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert rc == 2 and last.startswith("tunelab: error:") and "train.lr" in last and "Traceback" not in err


def test_a_run_that_failed_during_setup_can_be_started_again(tmp_path, tiny_base, capsys):
    """A mistake found only while building the run (here a LoRA target that matches nothing) must not leave
    a directory that blocks the corrected recipe with 'already exists'."""
    from conftest import write_recipe
    sections = lora_sections(tiny_base, max_steps=2)
    bad = {**sections, "lora": {**sections["lora"], "target_modules": "qproj"}}
    path = write_recipe(tmp_path, "setup", **bad)
    assert main(["train", str(path)]) == 2
    assert "matches no module" in capsys.readouterr().err
    path = write_recipe(tmp_path, "setup", **sections)
    assert main(["train", str(path)]) == 0
    assert len(list_checkpoints(load_recipe(path).run_dir)) == 2
    # a run that has trained (checkpoints or metrics) is never overwritten
    assert main(["train", str(path)]) == 2


def test_a_run_that_failed_during_setup_does_not_keep_a_stale_tokenizer(make_recipe):
    """From scratch, the BPE tokenizer is trained into the run directory; the corrected recipe (other data)
    must get a tokenizer trained on its own data, not the failed attempt's."""
    from transformers import AutoTokenizer

    from tunelab.data.sources import load_source
    from tunelab.model.tokenizer import train_bpe_tokenizer
    from tunelab.train.loop import train
    recipe = load_recipe(make_recipe("tok", lora={"enabled": True, "target_modules": "qproj"}))
    with pytest.raises(TunelabError, match="matches no module"):
        train(recipe)
    assert (recipe.run_dir / "tokenizer" / "tokenizer.json").exists()
    fixed = load_recipe(make_recipe("tok", data={"train": [{"generate": "reading", "count": 200, "seed": 3}]},
                                    train={"max_steps": 2}))
    train(fixed)
    t = PromptTemplate("alpaca")
    expected = train_bpe_tokenizer((t.render(e.instruction, e.input) + e.output
                                    for e in load_source(fixed.data.train[0])), 400)
    assert AutoTokenizer.from_pretrained(fixed.run_dir / "tokenizer").get_vocab() == expected.get_vocab()
