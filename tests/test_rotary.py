"""The copy-free rotary embedding: bit for bit transformers' own, only where it is, only while decoding."""

from __future__ import annotations

import importlib
import sys
import threading

import pytest
import torch

from tunelab.model import rotary

STANDARD = ["llama", "qwen2", "mistral", "gemma2"]


def _module(arch: str):
    return importlib.import_module(f"transformers.models.{arch}.modeling_{arch}")


@pytest.mark.parametrize("arch", STANDARD)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_equals_the_architectures_own_bit_for_bit(arch, dtype):
    own = _module(arch).apply_rotary_pos_emb
    g = torch.Generator().manual_seed(1)
    for batch, heads, kv_heads, length, dim in [(3, 4, 4, 7, 64), (2, 8, 2, 1, 32), (1, 2, 1, 33, 128)]:
        # q/k as the attention makes them: a transposed view of the projection, not contiguous
        q = torch.randn(batch, length, heads, dim, generator=g).to(dtype).transpose(1, 2)
        k = torch.randn(batch, length, kv_heads, dim, generator=g).to(dtype).transpose(1, 2)
        angles = torch.randn(batch, length, dim // 2, generator=g) * 50
        emb = torch.cat([angles, angles], -1)
        cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
        for theirs, ours in zip(own(q, k, cos, sin), rotary.rotary(q, k, cos, sin)):
            assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).eval()


def _llama_and_its_logits():
    """A tiny Llama, its modeling module and that module's own rotary function, inputs and their logits."""
    model = _tiny_llama()
    module = sys.modules[type(model).__module__]
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    return model, module, module.apply_rotary_pos_emb, ids, expected


def test_fast_rotary_is_scoped_counted_and_leaves_autograd_to_transformers():
    model, module, own, ids, expected = _llama_and_its_logits()
    with rotary.fast_rotary(model):
        swapped = module.apply_rotary_pos_emb
        assert swapped is not own and swapped.__wrapped__ is own
        with rotary.fast_rotary(model):             # nested (the server and a scorer, say): still one swap
            assert module.apply_rotary_pos_emb is swapped
        assert module.apply_rotary_pos_emb is swapped
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, expected)
        # with autograd recording, transformers' function runs: the gradient is transformers' own
        calls = []
        original_rotary = rotary.rotary
        rotary.rotary = lambda *a, **k: calls.append(1) or original_rotary(*a, **k)
        try:
            model(input_ids=ids).logits.sum().backward()
            assert calls == []
            with torch.no_grad():
                model(input_ids=ids)
            assert calls == [1]
        finally:
            rotary.rotary = original_rotary
    assert module.apply_rotary_pos_emb is own


def test_fast_rotary_leaves_other_functions_alone():
    """A module whose function is not the standard rotation (or that has none) keeps its own."""
    model = _tiny_llama()
    module = sys.modules[type(model).__module__]
    own = module.apply_rotary_pos_emb

    def interleaved(q, k, cos, sin, unsqueeze_dim=1):   # another convention: pairs (0,1), (2,3), ...
        return q * 2, k * 2
    module.apply_rotary_pos_emb = interleaved
    try:
        with rotary.fast_rotary(model):
            assert module.apply_rotary_pos_emb is interleaved
    finally:
        module.apply_rotary_pos_emb = own

    from transformers import GPT2Config, GPT2LMHeadModel
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with rotary.fast_rotary(gpt2):
        pass
    assert not hasattr(sys.modules[type(gpt2).__module__], "apply_rotary_pos_emb")


def test_fast_rotary_from_threads_restores_the_original():
    model, module, own, ids, expected = _llama_and_its_logits()
    failures = []

    def work():
        for _ in range(20):
            with rotary.fast_rotary(model), torch.no_grad():
                if not torch.equal(model(input_ids=ids).logits, expected):
                    failures.append(1)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and module.apply_rotary_pos_emb is own
