"""`logits_at` / `last_logits` pass `logits_to_keep` by the forward's signature, read once a class: a model
without it is scored on every position and the kept ones selected; a TypeError inside a model is its own error,
never a silent second forward."""

from __future__ import annotations

import pytest
import torch

from tunelab.decoding.forward import last_logits, logits_at, takes_logits_to_keep


class _Out:
    def __init__(self, logits):
        self.logits = logits


class NoKeep(torch.nn.Module):
    calls = 0

    def forward(self, input_ids, attention_mask=None):
        type(self).calls += 1
        return _Out(torch.arange(input_ids.numel() * 3, dtype=torch.float32).reshape(*input_ids.shape, 3))


class Broken(torch.nn.Module):
    calls = 0

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
        type(self).calls += 1
        raise TypeError("a bug inside the model")


def test_a_forward_without_logits_to_keep_is_scored_everywhere_and_selected():
    ids = torch.zeros(2, 4, dtype=torch.long)
    keep = torch.tensor([[False, True, False, True], [True, False, False, False]])
    assert not takes_logits_to_keep(NoKeep())
    got = logits_at(NoKeep(), ids, torch.ones_like(ids), keep)
    full = torch.arange(24, dtype=torch.float32).reshape(2, 4, 3)
    torch.testing.assert_close(got, full[keep])
    torch.testing.assert_close(last_logits(NoKeep(), input_ids=ids), full[:, -1])


def test_a_type_error_inside_the_model_is_raised_once_not_retried():
    Broken.calls = 0
    assert takes_logits_to_keep(Broken())
    with pytest.raises(TypeError, match="a bug inside the model"):
        last_logits(Broken(), input_ids=torch.zeros(1, 2, dtype=torch.long))
    assert Broken.calls == 1


def test_transformers_causal_lms_and_peft_wrappers_take_it():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    assert takes_logits_to_keep(model)
    assert takes_logits_to_keep(get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])))
