"""GRPO's packed layout (`train.grpo_groups`: each group's prompt once, its completions after it, no padding)
gives the padded layout's numbers — TRL's rows, which `tests/test_grpo_loss.py` checks against TRL itself: the
same log-probability and entropy of every scored completion token, and the same LoRA gradients, on tiny random
Llama and Qwen2 models with a random adapter, under the 4-D mask of sdpa and eager attention and laid end to end
under tunelab's CPU attention; with prompts of different lengths, empty and one-token completions, and rows whose
completion is masked out (a truncated one under `mask_truncated_completions`). Models the layout cannot serve
exactly (soft-capped logits, absolute positions) are left to the padded layout."""

from __future__ import annotations

import random

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Gemma2Config, GPT2Config, LlamaConfig, Qwen2Config

from tunelab.model.kernels.attention import use_cpu_attention
from tunelab.train.methods.grpo_loss import collate_completions, completion_token_logps
from tunelab.train.methods.grpo_groups import backbone_and_head, pack_groups, packed_completion_logps

VOCAB, PAD, EOS = 97, 0, 1
G = 4


def tiny(kind: str, attention: str):
    small = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    config = {"llama": lambda: LlamaConfig(**small, rope_theta=10000.0),
              "qwen2": lambda: Qwen2Config(**small)}[kind]()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                             init_lora_weights=False))  # random B: the adapter changes the logits
    if attention == "tunelab_cpu":
        assert use_cpu_attention(model.get_base_model())
    else:
        model.get_base_model().set_attn_implementation(attention)
    return model.eval()


def rollouts(seed: int, groups: int = 3):
    """Prompts of 3-12 tokens, each with G completions of 0-9 tokens (some ending in EOS, some cut)."""
    rng = random.Random(seed)
    prompts, completions = [], []
    for _ in range(groups):
        prompt = [rng.randrange(2, VOCAB) for _ in range(rng.randint(3, 12))]
        for _ in range(G):
            body = [rng.randrange(2, VOCAB) for _ in range(rng.choice([0, 1, 2, 5, 9]))]
            prompts.append(prompt)
            completions.append(body + [EOS] if rng.random() < 0.7 else body)
    return prompts, completions


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("attention, flat", [("sdpa", False), ("eager", False),
                                             pytest.param("tunelab_cpu", True, marks=pytest.mark.patched),
                                             pytest.param("tunelab_cpu", False, marks=pytest.mark.patched)])
@pytest.mark.parametrize("mask_truncated", [False, True])
def test_packed_groups_give_the_padded_rows_log_probs_entropies_and_gradients(kind, attention, flat,
                                                                               mask_truncated):
    model = tiny(kind, attention)
    parts = backbone_and_head(model)
    assert parts is not None
    for seed in range(3):
        prompts, completions = rollouts(seed + 10 * mask_truncated)
        padded = collate_completions(prompts, completions, PAD, [EOS], mask_truncated)
        mask = padded["completion_mask"]
        packed = pack_groups(prompts, completions, mask, G, PAD, flat)
        weights = torch.randn(mask.shape)  # a loss that weighs every token differently

        want, want_entropy = completion_token_logps(model, padded["prompt_ids"], padded["prompt_mask"],
                                              padded["completion_ids"], mask, temperature=0.7, entropy=True)
        (want * weights).sum().backward()
        want_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        got, got_entropy = packed_completion_logps(parts, packed, tuple(mask.shape), temperature=0.7, entropy=True)
        (got * weights).sum().backward()
        got_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()

        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(got_entropy, want_entropy, atol=2e-5, rtol=1e-5)
        assert (got[mask == 0] == 0).all() and (got[mask == 1] < 0).all()
        assert got_grads.keys() == want_grads.keys() and want_grads
        for name in want_grads:
            torch.testing.assert_close(got_grads[name], want_grads[name], atol=1e-5, rtol=1e-4)
        # the layout holds each prompt once and no padding: fewer positions than TRL's rows
        positions = packed["input_ids"].numel() if flat else int((packed["position_ids"] >= 0).sum())
        assert packed["input_ids"].numel() < padded["prompt_ids"].numel() + padded["completion_ids"].numel()
        assert positions > 0


def test_models_the_packed_layout_cannot_serve_exactly_keep_the_padded_one():
    def plain(config, attention="sdpa"):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config, attn_implementation=attention)
    softcapped = Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=1.5)
    absolute = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2)
    assert backbone_and_head(plain(softcapped, "eager")) is None
    assert backbone_and_head(plain(absolute)) is None
    flash = plain(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2))
    flash.config._attn_implementation = "flash_attention_2"  # takes no 4-D mask (set by hand: no GPU here)
    assert backbone_and_head(flash) is None


def test_a_group_whose_rows_answer_different_prompts_is_refused():
    prompts, completions = rollouts(0)
    prompts[1] = prompts[1] + [5]
    mask = collate_completions(prompts, completions, PAD, [EOS])["completion_mask"]
    with pytest.raises(ValueError, match="do not answer one prompt"):
        pack_groups(prompts, completions, mask, G, PAD, flat=True)
