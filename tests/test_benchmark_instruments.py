"""The instruments the benchmarks measure with (issue 43): `--model` resolution, model FLOPs per token, the matmul
ceiling, the split of tunelab's training step, and llama.cpp decoding several sequences at once.

The benchmark scripts run as `python benchmarks/bench_*.py`, with their directory on sys.path; these tests import
their modules the same way. Tiny models only, no network.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
TINY_BASE = ROOT / "models" / "tiny-base"


def micro_llama(tied: bool):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=tied)
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("tied", [True, False])
def test_model_flops_count_matmul_weights_by_their_role(tied):
    """2·N for decoding and 6·N for full training, N every weight but an untied input embedding; under LoRA the
    frozen weights count 4 and the adapter's 6 (and 2 each when decoding with it unmerged)."""
    from peft import LoraConfig, get_peft_model

    from common import decode_flops_per_token, train_flops_per_token
    model = micro_llama(tied)
    total = sum(p.numel() for p in model.parameters())
    n = total if tied else total - 100 * 32  # an untied input embedding is a lookup
    assert decode_flops_per_token(model) == 2 * n
    assert train_flops_per_token(model) == 6 * n
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    adapter = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert adapter == 2 * 2 * (4 * 32 + 32 * 4)  # 2 layers × q, v × (A + B)
    assert train_flops_per_token(lora) == 4 * n + 6 * adapter
    head = 100 * 32  # the vocabulary head (the embedding when tied) counts only where a label needs its logits
    assert train_flops_per_token(lora, head_share=0.25) == 4 * (n - head) + 4 * head * 0.25 + 6 * adapter
    assert decode_flops_per_token(lora) == 2 * (n + adapter)  # an unmerged adapter's matmuls run when sampling


def test_heldout_loss_is_the_models_own_loss_over_every_answer_token():
    """bench_train's held-out loss (every setup's trained model scored by it) equals transformers' own loss on the
    same right-padded batch, and weighs tokens alike across batches of unequal length."""
    import random
    from types import SimpleNamespace

    import torch

    from bench_train import heldout_loss
    model = micro_llama(tied=True)
    rng = random.Random(0)
    rows = []
    for _ in range(7):
        n, prompt = rng.randint(4, 12), rng.randint(1, 3)
        ids = [rng.randrange(100) for _ in range(n)]
        rows.append(SimpleNamespace(input_ids=ids, labels=[-100] * prompt + ids[prompt:]))
    width = max(len(r.input_ids) for r in rows)
    pad = lambda xs, v: xs + [v] * (width - len(xs))  # noqa: E731
    with torch.no_grad():
        hf = model(input_ids=torch.tensor([pad(r.input_ids, 0) for r in rows]),
                   attention_mask=torch.tensor([pad([1] * len(r.input_ids), 0) for r in rows]),
                   labels=torch.tensor([pad(r.labels, -100) for r in rows])).loss.item()
    assert heldout_loss(model, rows, batch=len(rows)) == pytest.approx(hf, rel=1e-5)
    assert heldout_loss(model, rows, batch=3) == pytest.approx(hf, rel=1e-5)  # token-weighted, not batch-weighted
    assert model.training  # left as it was found


def test_matmul_ceiling_measures_both_precisions_and_keeps_the_thread_count():
    import torch

    from common import ceiling_text, matmul_ceiling, utilisation, utilisation_text
    before = torch.get_num_threads()
    ceiling = matmul_ceiling(64, 1, rounds=2)
    assert torch.get_num_threads() == before
    assert ceiling["size"] == 64 and ceiling["threads"] == 1
    assert ceiling["fp32_gflops"] > 0 and ceiling["bf16_gflops"] > 0
    assert "64²" in ceiling_text(ceiling)
    use = utilisation(1e9, 2.0, {"fp32_gflops": 8.0, "bf16_gflops": 16.0, "size": 64, "threads": 1})
    assert use["model_gflops"] == 2.0 and use["share_of_fp32_ceiling"] == 0.25 and use["share_of_bf16_ceiling"] == 0.125
    assert "25.0% of the fp32 ceiling" in utilisation_text(use)
    assert "12.5% of the bf16 ceiling" in utilisation_text(use, "bf16")
    no_bf16 = utilisation(1e9, 2.0, {"fp32_gflops": 8.0, "bf16_gflops": 0.0, "size": 64, "threads": 1})
    assert no_bf16["share_of_bf16_ceiling"] is None   # a CPU without bf16 kernels: no share, no division by zero
    assert "no bf16 matmul kernels" in utilisation_text(no_bf16, "bf16")


def test_model_option_reads_a_path_as_tunelab_does_and_a_missing_gguf_is_one_line(capsys, monkeypatch):
    from common import resolve_model, run_main
    from tunelab.errors import TunelabError
    assert resolve_model(str(TINY_BASE)) == str(TINY_BASE)
    with pytest.raises(TunelabError) as e:
        resolve_model("no_such_package_here/model.Q4_1.gguf")
    assert e.value.field == "--model"

    monkeypatch.setattr(sys, "argv", ["bench_x.py"])
    assert run_main(lambda: resolve_model("no_such_package_here/model.Q4_1.gguf")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bench_x.py: error: ") and "GGUF file not found" in err


def test_step_split_times_every_part_and_leaves_training_unchanged(make_recipe):
    """The split covers each step, restores the loop's functions, and the run's losses are those of a run
    without it."""
    import json

    from step_split import StepSplit, split_text
    from tunelab.recipe import load_recipe
    from tunelab.train import step
    from tunelab.train.loop import train
    originals = (step._micro_batches, step._forward_backward, step._optimizer_step)

    def run(name: str) -> list[float]:
        recipe = load_recipe(make_recipe(name, data={"train": [{"generate": "arithmetic", "count": 64, "seed": 1}]},
                                         train={"max_steps": 3, "batch_size": 2, "log_every": 1,
                                                "num_checkpoints": 1}))
        train(recipe)
        lines = (recipe.run_dir / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["loss"] for x in lines if "loss" in json.loads(x)]

    with StepSplit() as split:
        timed = run("timed")
    assert (step._micro_batches, step._forward_backward, step._optimizer_step) == originals
    assert len(split.steps) == 3
    assert all(s["forward"] > 0 and s["backward"] > 0 and s["optimizer"] > 0 and s["data"] > 0 for s in split.steps)
    median = split.median(skip=1)
    assert set(median) == {"data", "forward", "backward", "optimizer"}
    assert "forward" in split_text(median, sum(median.values()) * 2) and "other" in split_text(median, 1.0)
    assert run("plain") == timed


def test_llama_cpp_decodes_several_sequences_at_once_as_tunelab_does(tmp_path):
    """Batched greedy decoding in llama.cpp (the F32 export, F32 cache) gives each prompt the ids tunelab's engine
    gives it, three sequences at once and one at a time."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    import torch

    from llama_cpp_batched import BatchedGreedy
    from tunelab.convert.export import export_gguf_dir
    from tunelab.decoding.embedded import decode_rows
    from tunelab.decoding.stops import pad_token_id, stop_token_ids
    from tunelab.model.loading import load_for_inference
    model, tokenizer = load_for_inference(str(TINY_BASE), dtype="float32")
    stops = stop_token_ids(model, tokenizer)
    prompts = ["3 + 4 = ", "Question: what is 12 - 5?\nAnswer:", "The capital of the story's country is"]
    rows = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        expected, _ = decode_rows(model, rows, 12, stops, pad_token_id(tokenizer, stops), batch_size=1)
    path = export_gguf_dir(str(TINY_BASE), tmp_path / "gguf", "f32").path
    per_sequence = max(map(len, rows)) + 16
    together = BatchedGreedy(path, 3, per_sequence, threads=1, f32_cache=True, batch_tokens=16)  # prefill in chunks
    alone = BatchedGreedy(path, 1, per_sequence, threads=1, f32_cache=True)
    try:
        assert together.generate(rows, 12, set(stops)) == expected
        assert [alone.generate([r], 12, set(stops))[0] for r in rows] == expected
        assert together.generate(rows, 12, set(stops)) == expected  # the cache is cleared between calls
        with pytest.raises(ValueError):
            alone.generate(rows, 12, set(stops))
    finally:
        together.close()
        alone.close()
    assert any(len(x) > 1 for x in expected)


@pytest.mark.parametrize("chat", [False, True])
def test_bench_grpo_gives_trl_the_prompts_tunelabs_grpo_run_samples_from(chat, tiny_base, tmp_path):
    """bench_grpo hands TRL prompt texts; they must tokenise to exactly the prompts tunelab's GRPO run encodes
    (`sampling.prompt_rows`, `template: auto`) — tunelab's template for a model it made, the chat template (a ChatML one
    here, SmolLM2's) for a chat model — on every one of 300 generated problems, Chinese and English."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from bench_grpo import problems, prompt_texts
    from test_chat_template import CHATML
    from tunelab.data.templates import PromptTemplate
    from tunelab.train.methods.own_samples import prompt_rows
    model = tiny_base
    tokenizer = AutoTokenizer.from_pretrained(model)
    if chat:  # a chat model: the same tokenizer with ChatML's tokens and template, no template tunelab saved
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tokenizer.chat_template = CHATML
        model = tmp_path / "chat"
        tokenizer.save_pretrained(model)
        tokenizer = AutoTokenizer.from_pretrained(model)
    examples = problems(4000)[:300]
    texts = prompt_texts(str(model), tokenizer, examples)
    assert len(texts) == len(examples) and ("<|im_start|>assistant\n" in next(iter(texts))) == chat
    recipe = SimpleNamespace(data=SimpleNamespace(max_seq_len=512),  # room: tiny-base spells ChatML out long
                             train=SimpleNamespace(grpo=SimpleNamespace(max_completion_length=24)))
    rows, cut = prompt_rows(recipe, examples, tokenizer, PromptTemplate("auto").resolve(tokenizer, model),
                            recipe.train.grpo.max_completion_length)
    assert cut == 0
    assert [r.prompt_ids for r in rows] == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
