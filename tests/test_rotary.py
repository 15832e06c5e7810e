"""The copy-free rotary embedding: bit for bit transformers' own, only where it is, only while decoding."""

from __future__ import annotations

import importlib
import sys
import threading

import pytest
import torch

from tunelab.model.kernels import rotary

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


@pytest.mark.patched
def test_fast_rotary_is_scoped_and_counted_and_its_gradients_are_transformers_own():
    model, module, own, ids, expected = _llama_and_its_logits()
    with rotary.fast_rotary(model):
        swapped = module.apply_rotary_pos_emb
        assert swapped is not own and swapped.__wrapped__ is own
        with rotary.fast_rotary(model):             # nested (the server and a scorer, say): still one swap
            assert module.apply_rotary_pos_emb is swapped
        assert module.apply_rotary_pos_emb is swapped
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, expected)
    assert module.apply_rotary_pos_emb is own

    def loss_and_grads(scoped: bool):
        model.zero_grad(set_to_none=True)
        if scoped:
            with rotary.fast_rotary(model):
                loss = model(input_ids=ids, labels=ids).loss
        else:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()                              # outside the block, as the training loop does
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    ref_loss, ref_grads = loss_and_grads(False)
    loss, grads = loss_and_grads(True)
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(grads[n], g) for n, g in ref_grads.items())


@pytest.mark.parametrize("arch", STANDARD)
def test_rotary_gradients_equal_autograd_through_the_architectures_own(arch):
    own = _module(arch).apply_rotary_pos_emb
    g = torch.Generator().manual_seed(2)
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(2, 6, 4, 64, generator=g).to(dtype).transpose(1, 2)
        k = torch.randn(2, 6, 2, 64, generator=g).to(dtype).transpose(1, 2)
        angles = torch.randn(2, 6, 32, generator=g) * 50
        cos, sin = torch.cat([angles, angles], -1).cos().to(dtype), torch.cat([angles, angles], -1).sin().to(dtype)
        upstream = (torch.randn(2, 4, 6, 64, generator=g).to(dtype), torch.randn(2, 2, 6, 64, generator=g).to(dtype))

        def grads(fn):
            qq, kk = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
            torch.autograd.backward(fn(qq, kk, cos, sin), upstream)
            return qq.grad, kk.grad
        for theirs, ours in zip(grads(own), grads(lambda *a: rotary._Rotary.apply(*a, 1))):
            assert torch.equal(ours, theirs)


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


@pytest.mark.patched
def test_the_exactness_check_holds_when_first_asked_inside_inference_mode():
    """The serving engine decodes under `torch.inference_mode()`: when the first fast_rotary of a process is entered
    there, the check (which runs a backward pass) must still see transformers' function as exact. It used to fail
    there and remember False for the whole process, so a server never took the fast path."""
    model, module, own, _, _ = _llama_and_its_logits()
    rotary._verified.pop(own, None)
    with torch.inference_mode(), rotary.fast_rotary(model):
        assert module.apply_rotary_pos_emb is not own
    assert rotary._verified[own] is True
